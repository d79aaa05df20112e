// The audit log: an append-only JSON-lines file in which every record carries the SHA-256 of the
// record before it, so that editing, deleting or reordering any record breaks the chain.
//
// One record per line, fields in this order:
//   {"seq":N,"time":"2026-01-31T12:00:00.123Z","actor":"rank0@no1","event":"...",<event fields>,
//    "prev":"<hash of record N-1, or 64 zeros for N = 1>","hash":"<SHA-256 of this line up to prev>"}
// where the hash covers the exact bytes of the line with `,"hash":"..."` removed (the line then
// ends with `"prev":"..."}`). Canonical by construction: we write the bytes we hash and verify
// the bytes we read, so no JSON re-serialisation can disagree.
//
// The end of the chain: a hash chain alone cannot show that its last records were cut off, or
// that one was added by hand. Every append therefore keeps LOG.head, replaced atomically, in step:
//   1. it writes the head "N HASH_N NEXT": record N is the last, and record N+1, whose hash will be
//      NEXT, is being appended (the intent);
//   2. it appends record N+1 (one write, fsync);
//   3. it writes the head "N+1 NEXT".
// So every record in the log was announced in the head before it was written, and a record that
// the head does not name is not fjord's: verification fails at its line. An append interrupted
// after 1 leaves "N HASH_N NEXT" with the log ending at N (nothing was written) or at a record N+1
// whose hash is exactly NEXT (its record was written; no one can make another record with that
// hash); both verify, with a note, and the next append goes on from them. An append onto a log
// whose end does not match its head is refused, so a truncation or forgery cannot be laundered by
// appending after it.
//
// Writers: `fjord launch` and rank 0 of a job append to the same file, possibly at the same time
// (launch's exit record while rank 0 still writes), and a refusing rank appends its own refusal.
// Each Append takes an exclusive flock on the log for read-last-record, head, write, fsync and
// head update. flock works across processes on one host and on NFSv4 clients; see
// docs/SOVEREIGNTY.md.
//
// Anchors: whoever can write the log can also rewrite its head, so cutting records off the end
// (or rewriting the whole chain) together with the head verifies clean. An anchor is a record's
// (seq, hash) kept where the log's writer cannot change it: launch prints its last record's and
// sends it to the system log (syslog), checkpoints record the head in their authenticated tenant
// record (issue 16), operators ship heads to a collector. VerifyAuditLog with anchors fails unless the log
// holds each anchored record with exactly that hash. A full rewrite of a log of which no anchor
// was kept remains undetectable.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fjord {

// A record's seq and hash, kept outside the log to detect its truncation or rewrite; `source`
// says where it came from ("--anchor 12:ab..", "checkpoint run/checkpoints/step_000100") and is
// named when the log does not hold it.
struct AuditAnchor {
  std::string source;
  int64_t seq = 0;
  std::string hash;  // 64 lower-case hex digits
};

// Parses "SEQ:HASH" (what `fjord launch` prints after "head"); `source` goes into the anchor.
// InvalidArgument names the text and the expected form.
StatusOr<AuditAnchor> ParseAuditAnchor(std::string_view text, std::string source);

// The fields of one record after the fixed ones, in insertion order. Keys must not be one of the
// fixed keys (seq, time, actor, event, prev, hash).
class AuditRecord {
 public:
  AuditRecord& Str(std::string_view key, std::string_view value);
  AuditRecord& Int(std::string_view key, int64_t value);
  AuditRecord& Bool(std::string_view key, bool value);
  // `json` must be one valid JSON value (object, array, ...), e.g. built with JsonQuote.
  AuditRecord& Raw(std::string_view key, std::string_view json);
  const std::string& text() const { return text_; }  // ',"k":v' repeated
  bool uses_reserved_key() const { return reserved_; }

 private:
  void Key(std::string_view key);
  std::string text_;
  bool reserved_ = false;
};

class AuditLog {
 public:
  // Opens (creating when missing, mode 0640) the log at `path` for appending as `actor`
  // (e.g. "launch@head", "rank0@no1"). With create_parent, missing parent directories are made;
  // without, a missing parent directory is NotFound (a refusing rank does not create directories
  // on a node it should not be on). Nothing is written until Append.
  static StatusOr<std::unique_ptr<AuditLog>> Open(const std::string& path, std::string actor,
                                                  bool create_parent = true);

  // Appends one record (see the file comment) under an exclusive lock; returns the new record as
  // an anchor (source: the log's path). Refuses to append when the log's last record is
  // unreadable or does not match LOG.head. Thread-safe.
  StatusOr<AuditAnchor> Append(std::string_view event, const AuditRecord& fields = AuditRecord());

  const std::string& path() const { return path_; }
  const std::string& actor() const { return actor_; }

 private:
  AuditLog(std::string path, std::string actor) : path_(std::move(path)), actor_(std::move(actor)) {}
  std::string path_;
  std::string actor_;
  std::mutex mu_;
};

// What `fjord audit verify` found. ok == false names the first broken record.
struct AuditVerifyReport {
  bool ok = false;
  int64_t records = 0;    // records checked before the first problem (all of them when ok)
  std::string head_hash;  // hash of the last good record ("" for an empty log)
  int64_t bad_line = 0;   // 1-based line of the first broken record (0 when ok, or for LOG.head)
  int64_t anchors = 0;    // anchors found in the log with their hash (all of them when ok)
  // ok == false: what is wrong at bad_line and what it means. ok == true: "" or a note (an append
  // was interrupted; see the file comment).
  std::string problem;
};

// Checks every record in order: one JSON object per line, fixed fields present, seq = previous + 1,
// prev = previous hash, hash = SHA-256 of the line; that the log holds every anchor's record with
// the anchor's hash (a log cut below an anchor, or rewritten, fails naming the anchor's source);
// then that the log ends where LOG.head says (a record the head does not cover fails at its line).
// Returns a Status error only when the log cannot be read at all.
StatusOr<AuditVerifyReport> VerifyAuditLog(const std::string& path,
                                           const std::vector<AuditAnchor>& anchors = {});

// The seq of the last `job_start` record after record `after_seq` that no `job_end` follows (0 when
// every such job_start has its job_end, or there is none): a job whose rank 0 was killed before it
// could record the end. Lines that do not parse are passed over (VerifyAuditLog judges them).
StatusOr<int64_t> JobStartWithoutEnd(const std::string& path, int64_t after_seq);

// The head file of a log: path + ".head".
std::string AuditHeadPath(const std::string& log_path);

// The log's head as an anchor (source = log_path): its last complete record as LOG.head names it,
// seq 0 and hash "" when it has none yet (no head file, or a first append in progress). DataLoss
// when the head file is damaged.
StatusOr<AuditAnchor> ReadAuditHead(const std::string& log_path);

}  // namespace fjord
