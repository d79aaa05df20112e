// Audit log appends and verification. The hashed bytes are the written bytes (see audit.h), so
// verification never re-serialises JSON; it only parses a line to read its fields.
#include "runtime/tenancy/audit.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

#include "common/file_util.h"
#include "common/json.h"
#include "common/sha256.h"
#include "common/time_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

const std::string kGenesis(64, '0');
constexpr char kHashKey[] = ",\"hash\":\"";
constexpr size_t kHashSuffixBytes = sizeof(kHashKey) - 1 + 64 + 2;  // ,"hash":"<64>"}

std::string ErrnoText() { return std::strerror(errno); }

bool IsHex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// The fields of one record line that chaining needs.
struct RecordHead {
  int64_t seq = 0;
  std::string hash;
  std::string prev;
};

// LOG.head: the last record, and the record being appended (intent; "" when none).
struct HeadFile {
  int64_t seq = -1;  // -1: the file is missing
  std::string hash;
  std::string intent;
};

// Splits a line into the hashed body and its hash; "" problem when the shape is right.
std::string SplitHash(std::string_view line, std::string* body, std::string* hash) {
  if (line.size() < kHashSuffixBytes + 2 || line.back() != '}' ||
      line.substr(line.size() - kHashSuffixBytes, sizeof(kHashKey) - 1) != kHashKey ||
      line.substr(line.size() - 2, 1) != "\"") {
    return "the record does not end with its \"hash\" field";
  }
  *hash = std::string(line.substr(line.size() - 66, 64));
  if (!IsHex64(*hash)) return "the record's hash is not 64 lower-case hex digits";
  *body = std::string(line.substr(0, line.size() - kHashSuffixBytes)) + "}";
  return "";
}

// Parses a line's seq and hash (no chain checks); "" problem when readable.
std::string ReadRecordHead(std::string_view line, RecordHead* out) {
  std::string body;
  if (std::string p = SplitHash(line, &body, &out->hash); !p.empty()) return p;
  StatusOr<JsonValue> json = ParseJson(line, "record");
  if (!json.ok()) return "not valid JSON (" + json.status().message() + ")";
  const JsonValue* seq = json->Find("seq");
  if (seq == nullptr || !seq->AsInt64()) return "no integer \"seq\" field";
  const JsonValue* prev = json->Find("prev");
  if (prev == nullptr || !prev->is_string()) return "no \"prev\" field";
  out->seq = *seq->AsInt64();
  out->prev = prev->text();
  return "";
}

// Reads "SEQ HASH[ INTENT]\n" from the head file; seq = -1 when it is missing.
StatusOr<HeadFile> ReadHeadFile(const std::string& head_path) {
  std::error_code ec;
  if (!fs::exists(head_path, ec)) return HeadFile{};
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(head_path, "audit head file"));
  std::vector<std::string> words;
  const bool one_line = !text.empty() && text.back() == '\n' && text.find('\n') == text.size() - 1;
  for (size_t at = 0; one_line && at < text.size() - 1;) {
    const size_t space = text.find(' ', at);
    const size_t end = space == std::string::npos ? text.size() - 1 : space;
    words.push_back(text.substr(at, end - at));
    at = end + 1;
  }
  HeadFile head;
  bool ok = one_line && (words.size() == 2 || words.size() == 3) && !words[0].empty() &&
            words[0].size() < 19 && words[0].find_first_not_of("0123456789") == std::string::npos &&
            IsHex64(words[1]) && (words.size() == 2 || IsHex64(words[2]));
  if (ok) {
    head.seq = std::stoll(words[0]);
    head.hash = words[1];
    if (words.size() == 3) head.intent = words[2];
    // Seq 0 exists only as the genesis of a first append in progress.
    ok = head.seq > 0 || (head.hash == kGenesis && !head.intent.empty());
  }
  if (!ok) {
    return DataLoss(
        "audit head file " + head_path +
        " is not \"SEQ HASH\" or \"SEQ HASH NEXT\": it was damaged or edited; keep it and its log "
        "for the auditor, and give the job a new audit_log");
  }
  return head;
}

// The last complete line of the open log ("" for an empty file; the file must end with '\n').
Status ReadLastLine(int fd, const std::string& path, std::string* last) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return FailedPrecondition("cannot stat audit log " + path + ": " + ErrnoText());
  last->clear();
  if (st.st_size == 0) return OkStatus();
  // Read backwards until the start of the last line (or the file start).
  std::string tail;
  off_t pos = st.st_size;
  while (pos > 0 && std::count(tail.begin(), tail.end(), '\n') < 2) {
    const off_t n = std::min<off_t>(pos, 65536);
    pos -= n;
    std::string chunk(static_cast<size_t>(n), '\0');
    if (::pread(fd, chunk.data(), chunk.size(), pos) != n) {
      return FailedPrecondition("cannot read audit log " + path + ": " + ErrnoText());
    }
    tail = chunk + tail;
  }
  if (tail.back() != '\n') {
    return DataLoss(
        "audit log " + path +
        " does not end with a complete record (no final newline): a write was interrupted or the file "
        "was cut; run `fjord audit verify " +
        path +
        "`, keep the file for the auditor and give the job "
        "a new audit_log");
  }
  tail.pop_back();
  const size_t a = tail.rfind('\n');
  *last = a == std::string::npos ? tail : tail.substr(a + 1);
  return OkStatus();
}

Status WriteHead(const std::string& head_path, int64_t seq, const std::string& hash,
                 const std::string& intent) {
  const std::string text = std::to_string(seq) + " " + hash + (intent.empty() ? "" : " " + intent) + "\n";
  return WriteFileAtomic(head_path, {{text.data(), text.size()}}, 0640);
}

// Where a log whose last record is `last` (seq 0: empty) stands against its head: "" when the
// head names that record, or names the one before it with `last` as its intent (an append
// interrupted after writing its record); otherwise what is wrong.
std::string EndProblem(const RecordHead& last, const HeadFile& head, const std::string& head_path) {
  if (head.seq < 0) {
    return last.seq == 0 ? ""
                         : head_path + " is missing: the end of the log cannot be checked (records after " +
                               std::to_string(last.seq) + " may have been deleted)";
  }
  if (head.seq == last.seq && head.hash == last.hash) return "";
  if (head.seq + 1 == last.seq && head.hash == last.prev && head.intent == last.hash) return "";
  if (head.seq > last.seq) {
    return "the log ends at record " + std::to_string(last.seq) + " but " + head_path + " names record " +
           std::to_string(head.seq) + ": the last " + std::to_string(head.seq - last.seq) +
           " record(s) were deleted";
  }
  return "the log's last record (seq " + std::to_string(last.seq) + ") does not match " + head_path +
         " (seq " + std::to_string(head.seq) +
         "): the end of the log was replaced or the head file was edited";
}

}  // namespace

void AuditRecord::Key(std::string_view key) {
  static constexpr std::string_view kReserved[] = {"seq", "time", "actor", "event", "prev", "hash"};
  for (std::string_view r : kReserved) reserved_ |= key == r;
  text_ += ",";
  text_ += JsonQuote(key);
  text_ += ":";
}

AuditRecord& AuditRecord::Str(std::string_view key, std::string_view value) {
  Key(key);
  text_ += JsonQuote(value);
  return *this;
}
AuditRecord& AuditRecord::Int(std::string_view key, int64_t value) {
  Key(key);
  text_ += std::to_string(value);
  return *this;
}
AuditRecord& AuditRecord::Bool(std::string_view key, bool value) {
  Key(key);
  text_ += value ? "true" : "false";
  return *this;
}
AuditRecord& AuditRecord::Raw(std::string_view key, std::string_view json) {
  Key(key);
  text_ += json;
  return *this;
}

std::string AuditHeadPath(const std::string& log_path) { return log_path + ".head"; }

StatusOr<AuditAnchor> ReadAuditHead(const std::string& log_path) {
  FJORD_ASSIGN_OR_RETURN(HeadFile head, ReadHeadFile(AuditHeadPath(log_path)));
  if (head.seq < 1) return AuditAnchor{log_path, 0, ""};
  return AuditAnchor{log_path, head.seq, head.hash};
}

StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& path, std::string actor,
                                                   bool create_parent) {
  if (path.empty()) return InvalidArgument("the audit log path is empty; set audit_log or run_dir");
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !fs::is_directory(parent, ec)) {
    if (!create_parent) {
      return NotFound("audit log " + path + ": directory " + parent.string() + " does not exist");
    }
    fs::create_directories(parent, ec);
    if (ec) {
      return FailedPrecondition("cannot create the directory of audit log " + path + ": " + ec.message() +
                                "; check audit_log / run_dir and permissions");
    }
  }
  return std::unique_ptr<AuditLog>(new AuditLog(path, std::move(actor)));
}

StatusOr<AuditAnchor> AuditLog::Append(std::string_view event, const AuditRecord& fields) {
  if (fields.uses_reserved_key()) {
    return Internal("audit record \"" + std::string(event) +
                    "\" uses a reserved key (seq, time, actor, event, prev, "
                    "hash): a bug in fjord");
  }
  std::lock_guard<std::mutex> lock(mu_);
  Fd fd(::open(path_.c_str(), O_RDWR | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0640));
  if (fd.get() < 0) {
    return FailedPrecondition(
        "cannot open audit log " + path_ + ": " + ErrnoText() +
        "; check that audit_log names a file (not a directory) in a writable directory");
  }
  while (::flock(fd.get(), LOCK_EX) != 0) {
    if (errno != EINTR) return FailedPrecondition("cannot lock audit log " + path_ + ": " + ErrnoText());
  }
  std::string last_line;
  FJORD_RETURN_IF_ERROR(ReadLastLine(fd.get(), path_, &last_line));
  const std::string head_path = AuditHeadPath(path_);
  FJORD_ASSIGN_OR_RETURN(HeadFile head, ReadHeadFile(head_path));
  const std::string refuse_hint = "; run `fjord audit verify " + path_ +
                                  "`, keep the file for the auditor, and give the job a new audit_log";
  RecordHead last{0, kGenesis, ""};
  if (!last_line.empty()) {
    if (std::string p = ReadRecordHead(last_line, &last); !p.empty()) {
      return DataLoss("audit log " + path_ + ": its last record is unreadable (" + p + ")" + refuse_hint);
    }
  } else if (head.seq > 0) {
    return DataLoss("audit log " + path_ + " is empty but " + head_path + " names record " +
                    std::to_string(head.seq) + ": the log was truncated or replaced" + refuse_hint);
  }
  if (std::string p = EndProblem(last, head, head_path); !p.empty()) {
    return DataLoss("audit log " + path_ + ": " + p + refuse_hint);
  }
  const int64_t seq = last.seq + 1;
  std::string body = "{\"seq\":" + std::to_string(seq) + ",\"time\":" + JsonQuote(UtcNow()) +
                     ",\"actor\":" + JsonQuote(actor_) + ",\"event\":" + JsonQuote(event) + fields.text() +
                     ",\"prev\":\"" + last.hash + "\"";
  FJORD_ASSIGN_OR_RETURN(const std::string hash, Sha256Hex(body + "}"));
  const std::string line = body + kHashKey + hash + "\"}\n";
  // The intent first: a record the head did not announce is not fjord's (see audit.h).
  FJORD_RETURN_IF_ERROR(WriteHead(head_path, last.seq, last.hash, hash).WithContext("audit log head"));
  // One write() of the whole line: O_APPEND places it at the end atomically.
  const ssize_t w = ::write(fd.get(), line.data(), line.size());
  if (w != static_cast<ssize_t>(line.size())) {
    return FailedPrecondition("cannot append to audit log " + path_ + ": " +
                              (w < 0 ? ErrnoText() : "short write") + "; check free disk space");
  }
  if (::fsync(fd.get()) != 0)
    return FailedPrecondition("cannot fsync audit log " + path_ + ": " + ErrnoText());
  FJORD_RETURN_IF_ERROR(WriteHead(head_path, seq, hash, "").WithContext("audit log head"));
  return AuditAnchor{path_, seq, hash};
}

StatusOr<AuditAnchor> ParseAuditAnchor(std::string_view text, std::string source) {
  const size_t colon = text.find(':');
  const std::string_view seq = text.substr(0, colon);
  const std::string_view hash = colon == std::string_view::npos ? "" : text.substr(colon + 1);
  if (seq.empty() || seq.size() > 18 || seq.find_first_not_of("0123456789") != std::string_view::npos ||
      seq == "0" || !IsHex64(hash)) {
    return InvalidArgument("anchor '" + std::string(text) +
                           "' is not SEQ:HASH (a record number from 1 and its 64 lower-case hex digits, as "
                           "`fjord launch` prints after \"head\")");
  }
  return AuditAnchor{std::move(source), std::stoll(std::string(seq)), std::string(hash)};
}

StatusOr<int64_t> JobStartWithoutEnd(const std::string& path, int64_t after_seq) {
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, "audit log"));
  int64_t open = 0;
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    StatusOr<JsonValue> json = ParseJson(std::string_view(text.data() + start, end - start), path);
    start = end + 1;
    if (!json.ok() || !json->is_object()) continue;
    const JsonValue* seq = json->Find("seq");
    const JsonValue* event = json->Find("event");
    if (seq == nullptr || event == nullptr || !event->is_string()) continue;
    const int64_t n = seq->AsInt64().value_or(0);
    if (n <= after_seq) continue;
    if (event->text() == "job_start") open = n;
    if (event->text() == "job_end") open = 0;
  }
  return open;
}

StatusOr<AuditVerifyReport> VerifyAuditLog(const std::string& path, const std::vector<AuditAnchor>& anchors) {
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, "audit log"));
  AuditVerifyReport report;
  auto fail = [&](int64_t line_no, const std::string& what) {
    report.ok = false;
    report.bad_line = line_no;
    report.problem = what;
    return report;
  };
  std::vector<std::string> hashes;  // hashes[seq - 1]: each record's hash (line = seq)
  std::vector<std::string> labels;  // "record seq N (event \"E\")"
  RecordHead last{0, kGenesis, ""};
  size_t start = 0;
  int64_t line_no = 0;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    ++line_no;
    if (end == std::string::npos) {
      return fail(line_no,
                  "the last line is incomplete (no newline): a write was interrupted or the file was cut");
    }
    const std::string_view line(text.data() + start, end - start);
    start = end + 1;
    std::string body, hash;
    const std::string where = "record " + std::to_string(last.seq + 1) + " expected here";
    if (std::string p = SplitHash(line, &body, &hash); !p.empty()) {
      return fail(line_no, p + " (" + where + "): the line was edited or inserted by hand");
    }
    StatusOr<JsonValue> json = ParseJson(line, path + " line " + std::to_string(line_no));
    if (!json.ok()) return fail(line_no, "not valid JSON: " + json.status().message());
    const JsonValue* seq = json->Find("seq");
    const JsonValue* prev_field = json->Find("prev");
    const JsonValue* event = json->Find("event");
    if (seq == nullptr || !seq->AsInt64() || prev_field == nullptr || !prev_field->is_string() ||
        event == nullptr || !event->is_string() || json->Find("time") == nullptr ||
        json->Find("actor") == nullptr) {
      return fail(line_no,
                  "a fixed field (seq, time, actor, event, prev) is missing or of the wrong type: the "
                  "record was edited");
    }
    const std::string label =
        "record seq " + std::to_string(*seq->AsInt64()) + " (event \"" + event->text() + "\")";
    FJORD_ASSIGN_OR_RETURN(const std::string body_hash, Sha256Hex(body));
    if (body_hash != hash) {
      return fail(line_no, label +
                               ": its hash does not match its content: the record was edited after it was "
                               "written");
    }
    if (*seq->AsInt64() != last.seq + 1) {
      return fail(line_no, label + " follows record " + std::to_string(last.seq) +
                               ": records were deleted, inserted or reordered here");
    }
    if (prev_field->text() != last.hash) {
      return fail(line_no,
                  label +
                      ": its \"prev\" is not the hash of the record before it: records were deleted, "
                      "inserted or reordered here");
    }
    last = RecordHead{*seq->AsInt64(), hash, prev_field->text()};
    hashes.push_back(hash);
    labels.push_back(label);
    report.records = last.seq;
    report.head_hash = hash;
  }
  // Anchors kept outside the log: a log cut below one, or rewritten, no longer holds its record.
  for (const AuditAnchor& anchor : anchors) {
    const std::string named =
        "anchor " + std::to_string(anchor.seq) + ":" + anchor.hash + " (" + anchor.source + ")";
    if (anchor.seq > last.seq) {
      return fail(0, named + " names record " + std::to_string(anchor.seq) + " but the log ends at record " +
                         std::to_string(last.seq) +
                         ": records were cut off the end (the head file may have been "
                         "rewritten to match), or the log was replaced");
    }
    if (anchor.seq < 1) return fail(0, named + " does not name a record (records start at 1)");
    if (hashes[anchor.seq - 1] != anchor.hash) {
      return fail(anchor.seq, labels[anchor.seq - 1] + " has hash " + hashes[anchor.seq - 1] + " but " +
                                  named + " says otherwise: the log was rewritten at or before this record");
    }
    ++report.anchors;
  }
  const std::string head_path = AuditHeadPath(path);
  StatusOr<HeadFile> head = ReadHeadFile(head_path);
  if (!head.ok()) return fail(0, head.status().message());
  // A record the head neither names nor announced was not appended by fjord.
  if (head->seq >= 0 && head->seq < last.seq && (head->seq == 0 || hashes[head->seq - 1] == head->hash) &&
      (head->seq + 1 != last.seq || head->intent != last.hash)) {
    const int64_t first = head->seq + 1;
    return fail(first,
                labels[first - 1] + " is not covered by " + head_path + " (which names record " +
                    std::to_string(head->seq) +
                    (head->intent.empty() ? std::string(" and no append in progress")
                                          : " and an append of another record") +
                    "): every fjord append announces its record in the head before writing it, so this "
                    "one was added by hand (forged, or copied in); keep the log and its head for the "
                    "auditor and give the job a new audit_log");
  }
  if (std::string p = EndProblem(last, *head, head_path); !p.empty()) return fail(0, p);
  report.ok = true;
  if (!head->intent.empty()) {
    report.problem = head->seq == last.seq
                         ? "an append of record " + std::to_string(last.seq + 1) +
                               " was interrupted before its record was written (nothing is missing)"
                         : "an append was interrupted after writing record " + std::to_string(last.seq) +
                               " and before updating " + head_path +
                               "; the head announced exactly that record";
  }
  return report;
}

}  // namespace fjord
