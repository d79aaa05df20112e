// The audit log: appends chain, and editing, deleting (first, middle, last), reordering,
// duplicating or truncating any record, or changing the head file, is reported at the first broken
// record; an append onto a damaged end is refused; concurrent appenders keep one valid chain.
#include "runtime/tenancy/audit.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/sha.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <sstream>

#include "tests/runtime/tenancy/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::ReadText;
using testing::WriteText;

class AuditTest : public testing::TenancyTest {
 protected:
  std::string log() const { return Path("audit.jsonl"); }

  void Write(int n) {
    StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "test@host");
    ASSERT_TRUE(a.ok()) << a.status().message();
    for (int i = 0; i < n; ++i) {
      auto h = (*a)->Append("event" + std::to_string(i + 1),
                            AuditRecord().Int("i", i).Str("text", "line \"" + std::to_string(i) + "\"\n"));
      ASSERT_TRUE(h.ok()) << h.status().message();
    }
  }
  std::vector<std::string> Lines() const {
    std::vector<std::string> out;
    std::ifstream in(log());
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
  }
  void SetLines(const std::vector<std::string>& lines) const {
    std::string text;
    for (const std::string& l : lines) text += l + "\n";
    WriteText(log(), text);
  }
  AuditVerifyReport Verify(const std::vector<AuditAnchor>& anchors = {}) const {
    StatusOr<AuditVerifyReport> r = VerifyAuditLog(log(), anchors);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? *r : AuditVerifyReport();
  }
};

// The "hash" field of a record line.
std::string HashOf(const std::string& line) { return line.substr(line.size() - 66, 64); }

std::vector<std::string> Words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// A record as someone who knows the format writes it by hand: chained to `prev`, hashed with
// OpenSSL's one-shot SHA256 (independent of fjord's Sha256Hex).
std::string Forge(int seq, const std::string& event, const std::string& prev) {
  const std::string body = "{\"seq\":" + std::to_string(seq) +
                           ",\"time\":\"2026-01-01T00:00:00.000Z\",\"actor\":"
                           "\"rank0@no1\",\"event\":\"" +
                           event + "\",\"prev\":\"" + prev + "\"}";
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(body.data()), body.size(), digest);
  char hex[2 * SHA256_DIGEST_LENGTH + 1];
  for (int i = 0; i < SHA256_DIGEST_LENGTH; ++i) std::snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  return body.substr(0, body.size() - 1) + ",\"hash\":\"" + hex + "\"}";
}

TEST_F(AuditTest, AppendsChainAndVerify) {
  Write(5);
  const std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_THAT(lines[0], HasSubstr("{\"seq\":1,\"time\":\""));
  EXPECT_THAT(lines[0], HasSubstr("\"actor\":\"test@host\",\"event\":\"event1\",\"i\":0"));
  EXPECT_THAT(lines[0], HasSubstr("\"prev\":\"" + std::string(64, '0') + "\""));
  const AuditVerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.problem;
  EXPECT_EQ(r.records, 5);
  EXPECT_EQ(ReadText(log() + ".head"), "5 " + r.head_hash + "\n");
  // Each record's prev is the previous record's hash.
  const std::string h1 = lines[0].substr(lines[0].size() - 66, 64);
  EXPECT_THAT(lines[1], HasSubstr("\"prev\":\"" + h1 + "\""));
}

TEST_F(AuditTest, ReservedKeysAreRefused) {
  StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "t");
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE((*a)->Append("x", AuditRecord().Str("hash", "forged")).ok());
  EXPECT_FALSE(fs::exists(log()));
}

TEST_F(AuditTest, EditingAnyRecordIsDetectedAtThatRecord) {
  Write(4);
  for (int target = 0; target < 4; ++target) {
    std::vector<std::string> lines = Lines();
    const size_t at = lines[target].find("\"i\":" + std::to_string(target));
    lines[target].replace(at, 5, "\"i\":7");
    std::vector<std::string> saved = Lines();
    SetLines(lines);
    const AuditVerifyReport r = Verify();
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.bad_line, target + 1);
    EXPECT_THAT(r.problem, HasSubstr("its hash does not match its content: the record was edited"));
    SetLines(saved);
  }
  EXPECT_TRUE(Verify().ok);
}

TEST_F(AuditTest, DeletingAnyRecordIsDetected) {
  Write(4);
  const std::vector<std::string> original = Lines();
  for (int target = 0; target < 3; ++target) {  // first, middle ones
    std::vector<std::string> lines = original;
    lines.erase(lines.begin() + target);
    SetLines(lines);
    const AuditVerifyReport r = Verify();
    EXPECT_FALSE(r.ok) << "deleted record " << target + 1;
    EXPECT_EQ(r.bad_line, target + 1);
    EXPECT_THAT(r.problem, HasSubstr("records were deleted, inserted or reordered"));
  }
  // The last record: only the head file can tell.
  std::vector<std::string> lines = original;
  lines.pop_back();
  SetLines(lines);
  AuditVerifyReport r = Verify();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.bad_line, 0);
  EXPECT_THAT(r.problem, HasSubstr("the log ends at record 3 but"));
  EXPECT_THAT(r.problem, HasSubstr("names record 4: the last 1 record(s) were deleted"));
  // ...and nothing can be appended after the cut, so the truncation cannot be laundered.
  StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "t");
  auto appended = (*a)->Append("after_cut");
  ASSERT_FALSE(appended.ok());
  EXPECT_THAT(appended.status().message(), HasSubstr("ends at record 3"));
  EXPECT_THAT(appended.status().message(), HasSubstr("the last 1 record(s) were deleted"));
  // Deleting the whole log but keeping its head.
  SetLines({});
  r = Verify();
  EXPECT_FALSE(r.ok);
}

TEST_F(AuditTest, ReorderingAndDuplicatingAreDetected) {
  Write(4);
  std::vector<std::string> lines = Lines();
  std::swap(lines[1], lines[2]);
  SetLines(lines);
  AuditVerifyReport r = Verify();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.bad_line, 2);
  EXPECT_THAT(r.problem, HasSubstr("record seq 3 (event \"event3\") follows record 1"));
  lines = Lines();
  std::swap(lines[1], lines[2]);
  lines.insert(lines.begin() + 2, lines[1]);
  SetLines(lines);
  r = Verify();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.bad_line, 3);
}

TEST_F(AuditTest, HeadFileMissingOrEditedIsReported) {
  Write(3);
  fs::remove(log() + ".head");
  AuditVerifyReport r = Verify();
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.problem, HasSubstr(".head is missing"));
  WriteText(log() + ".head", "3 " + std::string(64, 'a') + "\n");
  r = Verify();
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.problem, HasSubstr("does not match"));
}

// The attack: one well-formed, correctly chained record appended by hand, the head left alone.
// Before the intent protocol, a head one record behind was taken for an interrupted append.
TEST_F(AuditTest, AForgedRecordAppendedWithoutTheHeadFailsAtItsLine) {
  Write(3);
  const std::string head = ReadText(log() + ".head");
  std::vector<std::string> lines = Lines();
  lines.push_back(Forge(4, "export_done", HashOf(lines.back())));
  SetLines(lines);
  EXPECT_EQ(ReadText(log() + ".head"), head);
  const AuditVerifyReport r = Verify();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.bad_line, 4);
  EXPECT_THAT(r.problem, HasSubstr("record seq 4 (event \"export_done\") is not covered by " + log() +
                                   ".head (which names record 3 and no append in progress)"));
  EXPECT_THAT(r.problem, HasSubstr("added by hand"));
  // The same record where an append of another record was announced: still not fjord's.
  WriteText(log() + ".head", "3 " + HashOf(lines[2]) + " " + std::string(64, 'b') + "\n");
  EXPECT_EQ(Verify().bad_line, 4);
  // Nothing is appended after it.
  StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "t");
  auto appended = (*a)->Append("after_forgery");
  ASSERT_FALSE(appended.ok());
  EXPECT_THAT(appended.status().message(), HasSubstr("does not match"));
}

// An append interrupted after writing its record and before its head update leaves the head one
// behind, naming exactly that record as the one in progress: it verifies (with a note) and the
// next append goes on from it.
TEST_F(AuditTest, AnAppendInterruptedAfterItsRecordVerifiesWithANote) {
  Write(3);
  const std::vector<std::string> lines = Lines();
  WriteText(log() + ".head", "2 " + HashOf(lines[1]) + " " + HashOf(lines[2]) + "\n");
  AuditVerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.problem;
  EXPECT_EQ(r.records, 3);
  EXPECT_THAT(r.problem, HasSubstr("an append was interrupted after writing record 3 and before updating"));
  Write(1);
  r = Verify();
  EXPECT_TRUE(r.ok) << r.problem;
  EXPECT_EQ(r.records, 4);
  EXPECT_EQ(r.problem, "");
}

// A real interruption before the record is written: a child whose file-size limit stops the
// log's write (EFBIG) after the head announced the record. The log is intact, the head holds the
// intent, verification passes with a note and the next append writes record 3.
TEST_F(AuditTest, AnAppendInterruptedBeforeItsRecordLeavesTheIntentAndGoesOn) {
  Write(2);
  const std::string before = ReadText(log());
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    const struct rlimit limit = {static_cast<rlim_t>(before.size()), static_cast<rlim_t>(before.size())};
    ::setrlimit(RLIMIT_FSIZE, &limit);
    StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "child");
    auto h = (*a)->Append("never_written");
    ::_exit(h.ok() ? 0 : h.status().message().find("File too large") != std::string::npos ? 3 : 1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 3);
  EXPECT_EQ(ReadText(log()), before);
  const std::vector<std::string> words = Words(ReadText(log() + ".head"));
  ASSERT_EQ(words.size(), 3u);
  EXPECT_EQ(words[0], "2");
  EXPECT_EQ(words[1], HashOf(Lines()[1]));
  AuditVerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.problem;
  EXPECT_THAT(r.problem, HasSubstr("an append of record 3 was interrupted before its record was written"));
  Write(1);
  r = Verify();
  EXPECT_TRUE(r.ok) << r.problem;
  EXPECT_EQ(r.records, 3);
  EXPECT_NE(HashOf(Lines()[2]), words[2]);  // a new record, not the announced one
}

// The head lives beside the log, so cutting records off the end and rewriting the head (or
// deleting both) verifies clean on its own: anchors kept elsewhere catch it, naming their source.
TEST_F(AuditTest, AnchorsDetectTruncationAndRewritesThatTheHeadMisses) {
  Write(5);
  const std::vector<std::string> lines = Lines();
  StatusOr<AuditAnchor> fifth = ParseAuditAnchor("5:" + HashOf(lines[4]), "launch output");
  ASSERT_TRUE(fifth.ok()) << fifth.status().message();
  const std::vector<AuditAnchor> anchors = {{"checkpoint step_2", 2, HashOf(lines[1])}, *fifth};
  AuditVerifyReport r = Verify(anchors);
  EXPECT_TRUE(r.ok) << r.problem;
  EXPECT_EQ(r.anchors, 2);

  // Cut to 3 records, head rewritten to match.
  SetLines({lines.begin(), lines.begin() + 3});
  WriteText(log() + ".head", "3 " + HashOf(lines[2]) + "\n");
  EXPECT_TRUE(Verify().ok);  // what the head alone cannot see
  r = Verify(anchors);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.bad_line, 0);
  EXPECT_EQ(r.anchors, 1);
  EXPECT_THAT(r.problem, HasSubstr("anchor 5:" + HashOf(lines[4]) +
                                   " (launch output) names record 5 but the log "
                                   "ends at record 3: records were cut off the end"));

  // Rewritten from record 2 on, every hash recomputed, head rewritten: the chain holds.
  std::vector<std::string> forged = {lines[0]};
  for (int seq = 2; seq <= 5; ++seq)
    forged.push_back(Forge(seq, "event" + std::to_string(seq), HashOf(forged.back())));
  SetLines(forged);
  WriteText(log() + ".head", "5 " + HashOf(forged[4]) + "\n");
  EXPECT_TRUE(Verify().ok);
  r = Verify(anchors);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.bad_line, 2);
  EXPECT_THAT(r.problem,
              HasSubstr("record seq 2 (event \"event2\") has hash " + HashOf(forged[1]) +
                        " but anchor 2:" + HashOf(lines[1]) + " (checkpoint step_2) says otherwise"));

  // Log and head deleted together (the log recreated empty by the next writer).
  SetLines({});
  fs::remove(log() + ".head");
  EXPECT_TRUE(Verify().ok);
  r = Verify(anchors);
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.problem, HasSubstr("names record 2 but the log ends at record 0"));
}

TEST_F(AuditTest, AnchorsAreParsedStrictly) {
  const std::string h(64, 'a');
  for (const std::string& text :
       {std::string(""), std::string("5"), std::string("5:"), ":" + h, "0:" + h, "x:" + h, "-1:" + h,
        "+5:" + h, "5:" + h.substr(1), "5:" + h + "a", "5:" + h.substr(1) + "A", "5 " + h}) {
    StatusOr<AuditAnchor> a = ParseAuditAnchor(text, "test");
    ASSERT_FALSE(a.ok()) << text;
    EXPECT_THAT(a.status().message(), HasSubstr("is not SEQ:HASH"));
  }
  StatusOr<AuditAnchor> a = ParseAuditAnchor("12:" + std::string(64, 'f'), "src");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->seq, 12);
  EXPECT_EQ(a->source, "src");
}

TEST_F(AuditTest, AppendReturnsTheRecordAsAnAnchor) {
  StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "t");
  ASSERT_TRUE(a.ok());
  (void)(*a)->Append("one");
  StatusOr<AuditAnchor> two = (*a)->Append("two");
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->seq, 2);
  EXPECT_EQ(two->hash, HashOf(Lines()[1]));
  EXPECT_EQ(two->source, log());
  EXPECT_EQ(ReadText(log() + ".head"), "2 " + two->hash + "\n");
}

TEST_F(AuditTest, AppendRefusesALogPathThatIsASymbolicLink) {
  fs::create_symlink(Path("elsewhere.jsonl"), log());
  StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "t");
  ASSERT_TRUE(a.ok());
  auto h = (*a)->Append("x");
  ASSERT_FALSE(h.ok());
  EXPECT_THAT(h.status().message(), HasSubstr("cannot open audit log " + log()));
  EXPECT_FALSE(fs::exists(Path("elsewhere.jsonl")));
}

TEST_F(AuditTest, PartialLastLineIsReportedAndBlocksAppends) {
  Write(2);
  std::string text = ReadText(log());
  WriteText(log(), text + "{\"seq\":3,\"ti");
  AuditVerifyReport r = Verify();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.bad_line, 3);
  EXPECT_THAT(r.problem, HasSubstr("incomplete"));
  StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "t");
  EXPECT_FALSE((*a)->Append("x").ok());
}

TEST_F(AuditTest, ConcurrentAppendersFromManyProcessesKeepOneChain) {
  constexpr int kProcs = 4, kEach = 25;
  std::vector<pid_t> kids;
  for (int p = 0; p < kProcs; ++p) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "proc" + std::to_string(p));
      int bad = 0;
      for (int i = 0; i < kEach; ++i)
        bad += !(a.ok() && (*a)->Append("tick", AuditRecord().Int("i", i)).ok());
      ::_exit(bad == 0 ? 0 : 1);
    }
    kids.push_back(pid);
  }
  for (pid_t pid : kids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  const AuditVerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.problem;
  EXPECT_EQ(r.records, kProcs * kEach);
}

TEST_F(AuditTest, OpenWithoutCreatingParentRefusesAMissingDirectory) {
  StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(Path("run/audit.jsonl"), "rank1@se1", false);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(Path("run")));
}

TEST_F(AuditTest, AppendRefusesADamagedHeadFileAndWritesNothing) {
  Write(2);
  const std::string before = ReadText(log());
  WriteText(log() + ".head", "two " + std::string(64, 'a') + "\n");
  StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "t");
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto h = (*a)->Append("x");
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(h.status().message(),
              HasSubstr("audit head file " + log() +
                        ".head is not \"SEQ HASH\" or \"SEQ HASH NEXT\": it was damaged or edited"));
  EXPECT_THAT(h.status().message(),
              HasSubstr("keep it and its log for the auditor, and give the job a new audit_log"));
  EXPECT_EQ(ReadText(log()), before);
  const AuditVerifyReport r = Verify();
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.problem, HasSubstr("is not \"SEQ HASH\" or"));
}

TEST_F(AuditTest, AppendRefusesAnUnreadableLastRecordAndWritesNothing) {
  Write(2);
  std::vector<std::string> lines = Lines();
  lines.back() = "{\"time\":\"now\"}";  // a complete line without "seq"
  SetLines(lines);
  const std::string before = ReadText(log());
  StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "t");
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto h = (*a)->Append("x");
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(h.status().message(), HasSubstr("audit log " + log() + ": its last record is unreadable ("));
  EXPECT_THAT(h.status().message(), HasSubstr("run `fjord audit verify " + log() + "`"));
  EXPECT_THAT(h.status().message(), HasSubstr("give the job a new audit_log"));
  EXPECT_EQ(ReadText(log()), before);
}

TEST_F(AuditTest, AppendRefusesATruncatedLogWhoseHeadNamesARecord) {
  Write(3);
  WriteText(log(), "");
  StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "t");
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto h = (*a)->Append("x");
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(h.status().message(),
              HasSubstr("audit log " + log() + " is empty but " + log() + ".head names record 3"));
  EXPECT_THAT(h.status().message(), HasSubstr("the log was truncated or replaced"));
  EXPECT_THAT(h.status().message(), HasSubstr("give the job a new audit_log"));
  EXPECT_EQ(ReadText(log()), "");
}

TEST_F(AuditTest, AppendToALogPathThatIsADirectoryIsRefused) {
  fs::create_directories(log());
  StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "t");
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto h = (*a)->Append("x");
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(h.status().message(), HasSubstr("cannot open audit log " + log() + ": Is a directory"));
  EXPECT_THAT(h.status().message(), HasSubstr("check that audit_log names a file (not a directory)"));
  EXPECT_FALSE(fs::exists(log() + ".head"));
}

}  // namespace
}  // namespace fjord
