// Audit log appends and verification. The hashed bytes are the written bytes (see audit.h), so
// verification never re-serialises JSON; it only parses a line to read its fields.
#include "runtime/audit.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <utility>
#include <vector>

#include "runtime/crypto.h"
#include "runtime/file_util.h"
#include "runtime/json.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

const std::string kGenesis(64, '0');
constexpr char kHashKey[] = ",\"hash\":\"";
constexpr size_t kHashSuffixBytes = sizeof(kHashKey) - 1 + 64 + 2;  // ,"hash":"<64>"}

std::string ErrnoText() { return std::strerror(errno); }

std::string UtcNow() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

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
  out->seq = *seq->AsInt64();
  return "";
}

// Reads "SEQ HASH\n" from the head file; nullopt-like (seq = -1) when missing.
StatusOr<RecordHead> ReadHeadFile(const std::string& head_path) {
  std::error_code ec;
  if (!fs::exists(head_path, ec)) return RecordHead{-1, ""};
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(head_path, "audit head file"));
  RecordHead head;
  char hash[65] = {};
  long long seq = 0;
  if (std::sscanf(text.c_str(), "%lld %64s", &seq, hash) != 2 || !IsHex64(hash) || seq < 1) {
    return DataLoss("audit head file " + head_path +
                    " is not \"SEQ HASH\": it was damaged or edited; keep it and its log for the "
                    "auditor, and give the job a new audit_log");
  }
  head.seq = seq;
  head.hash = hash;
  return head;
}

// The last two complete lines of the open log (the file must end with '\n').
Status ReadLastLines(int fd, const std::string& path, std::string* last, std::string* before_last) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return FailedPrecondition("cannot stat audit log " + path + ": " + ErrnoText());
  const off_t size = st.st_size;
  last->clear();
  before_last->clear();
  if (size == 0) return OkStatus();
  // Read backwards until two line starts are found (or the file start).
  std::string tail;
  off_t pos = size;
  int newlines = 0;
  while (pos > 0 && newlines < 3) {
    const off_t n = std::min<off_t>(pos, 65536);
    pos -= n;
    std::string chunk(static_cast<size_t>(n), '\0');
    if (::pread(fd, chunk.data(), chunk.size(), pos) != n) {
      return FailedPrecondition("cannot read audit log " + path + ": " + ErrnoText());
    }
    for (char c : chunk) newlines += c == '\n';
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
  if (a != std::string::npos) {
    const std::string rest = tail.substr(0, a);
    const size_t b = rest.rfind('\n');
    *before_last = b == std::string::npos ? rest : rest.substr(b + 1);
  }
  return OkStatus();
}

Status WriteHead(const std::string& head_path, int64_t seq, const std::string& hash) {
  const std::string text = std::to_string(seq) + " " + hash + "\n";
  return WriteFileAtomic(head_path, {{text.data(), text.size()}});
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

StatusOr<std::string> AuditLog::Append(std::string_view event, const AuditRecord& fields) {
  if (fields.uses_reserved_key()) {
    return Internal("audit record \"" + std::string(event) +
                    "\" uses a reserved key (seq, time, actor, event, prev, "
                    "hash): a bug in fjord");
  }
  std::lock_guard<std::mutex> lock(mu_);
  Fd fd(::open(path_.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640));
  if (fd.get() < 0) {
    return FailedPrecondition(
        "cannot open audit log " + path_ + ": " + ErrnoText() +
        "; check that audit_log names a file (not a directory) in a writable directory");
  }
  while (::flock(fd.get(), LOCK_EX) != 0) {
    if (errno != EINTR) return FailedPrecondition("cannot lock audit log " + path_ + ": " + ErrnoText());
  }
  std::string last, before_last;
  FJORD_RETURN_IF_ERROR(ReadLastLines(fd.get(), path_, &last, &before_last));
  const std::string head_path = AuditHeadPath(path_);
  FJORD_ASSIGN_OR_RETURN(RecordHead head, ReadHeadFile(head_path));
  const std::string refuse_hint = "; run `fjord audit verify " + path_ +
                                  "`, keep the file for the auditor, and give the job a new audit_log";
  RecordHead prev{0, kGenesis};
  if (!last.empty()) {
    if (std::string p = ReadRecordHead(last, &prev); !p.empty()) {
      return DataLoss("audit log " + path_ + ": its last record is unreadable (" + p + ")" + refuse_hint);
    }
    bool head_ok = head.seq == prev.seq && head.hash == prev.hash;
    if (!head_ok && !before_last.empty()) {
      // An append interrupted between its line and its head update leaves the head one behind.
      RecordHead earlier;
      head_ok = ReadRecordHead(before_last, &earlier).empty() && head.seq == earlier.seq &&
                head.hash == earlier.hash && prev.seq == earlier.seq + 1;
    }
    if (!head_ok) {
      return DataLoss(
          "audit log " + path_ + " ends at record " + std::to_string(prev.seq) + " but " + head_path +
          (head.seq < 0 ? std::string(" is missing") : " names record " + std::to_string(head.seq)) +
          ": records were removed or the head file was changed" + refuse_hint);
    }
  } else if (head.seq >= 0) {
    return DataLoss("audit log " + path_ + " is empty but " + head_path + " names record " +
                    std::to_string(head.seq) + ": the log was truncated or replaced" + refuse_hint);
  }
  const int64_t seq = prev.seq + 1;
  std::string body = "{\"seq\":" + std::to_string(seq) + ",\"time\":" + JsonQuote(UtcNow()) +
                     ",\"actor\":" + JsonQuote(actor_) + ",\"event\":" + JsonQuote(event) + fields.text() +
                     ",\"prev\":\"" + prev.hash + "\"";
  const std::string hash = Sha256Hex(body + "}");
  const std::string line = body + kHashKey + hash + "\"}\n";
  // One write() of the whole line: O_APPEND places it at the end atomically.
  const ssize_t w = ::write(fd.get(), line.data(), line.size());
  if (w != static_cast<ssize_t>(line.size())) {
    return FailedPrecondition("cannot append to audit log " + path_ + ": " +
                              (w < 0 ? ErrnoText() : "short write") + "; check free disk space");
  }
  if (::fsync(fd.get()) != 0)
    return FailedPrecondition("cannot fsync audit log " + path_ + ": " + ErrnoText());
  FJORD_RETURN_IF_ERROR(WriteHead(head_path, seq, hash).WithContext("audit log head"));
  return hash;
}

StatusOr<AuditVerifyReport> VerifyAuditLog(const std::string& path) {
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, "audit log"));
  AuditVerifyReport report;
  auto fail = [&](int64_t line_no, const std::string& what) {
    report.ok = false;
    report.bad_line = line_no;
    report.problem = what;
    return report;
  };
  RecordHead prev{0, kGenesis};
  RecordHead before_prev;
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
    const std::string where = "record " + std::to_string(prev.seq + 1) + " expected here";
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
    if (Sha256Hex(body) != hash) {
      return fail(line_no, label +
                               ": its hash does not match its content: the record was edited after it was "
                               "written");
    }
    if (*seq->AsInt64() != prev.seq + 1) {
      return fail(line_no, label + " follows record " + std::to_string(prev.seq) +
                               ": records were deleted, inserted or reordered here");
    }
    if (prev_field->text() != prev.hash) {
      return fail(line_no,
                  label +
                      ": its \"prev\" is not the hash of the record before it: records were deleted, "
                      "inserted or reordered here");
    }
    before_prev = prev;
    prev.seq = *seq->AsInt64();
    prev.hash = hash;
    report.records = prev.seq;
    report.head_hash = hash;
  }
  StatusOr<RecordHead> head = ReadHeadFile(AuditHeadPath(path));
  if (!head.ok()) return fail(0, head.status().message());
  const std::string head_path = AuditHeadPath(path);
  if (head->seq < 0) {
    if (prev.seq == 0) {
      report.ok = true;
      return report;
    }
    return fail(0, head_path + " is missing: the end of the log cannot be checked (records after " +
                       std::to_string(prev.seq) + " may have been deleted)");
  }
  if (head->seq == prev.seq && head->hash == prev.hash) {
    report.ok = true;
    return report;
  }
  if (head->seq == prev.seq - 1 && head->hash == before_prev.hash) {
    // An append interrupted after writing its record and before updating the head.
    report.ok = true;
    report.problem =
        head_path + " lags one record behind (an append was interrupted after writing its record)";
    return report;
  }
  if (head->seq > prev.seq) {
    return fail(0, "the log ends at record " + std::to_string(prev.seq) + " but " + head_path +
                       " names record " + std::to_string(head->seq) + ": the last " +
                       std::to_string(head->seq - prev.seq) + " record(s) were deleted");
  }
  return fail(0, "the log's last record (seq " + std::to_string(prev.seq) + ") does not match " + head_path +
                     " (seq " + std::to_string(head->seq) +
                     "): the end of the log was replaced or the head file "
                     "was edited");
}

}  // namespace fjord
