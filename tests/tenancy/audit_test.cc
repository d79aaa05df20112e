// The audit log: appends chain, and editing, deleting (first, middle, last), reordering,
// duplicating or truncating any record, or changing the head file, is reported at the first broken
// record; an append onto a damaged end is refused; concurrent appenders keep one valid chain.
#include "runtime/audit.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "tests/tenancy/test_util.h"

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
      StatusOr<std::string> h =
          (*a)->Append("event" + std::to_string(i + 1),
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
  AuditVerifyReport Verify() const {
    StatusOr<AuditVerifyReport> r = VerifyAuditLog(log());
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? *r : AuditVerifyReport();
  }
};

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
  EXPECT_THAT(ReadText(log() + ".head"), HasSubstr("5 " + r.head_hash));
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
  StatusOr<std::string> appended = (*a)->Append("after_cut");
  ASSERT_FALSE(appended.ok());
  EXPECT_THAT(appended.status().message(), HasSubstr("ends at record 3"));
  EXPECT_THAT(appended.status().message(), HasSubstr("records were removed"));
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

TEST_F(AuditTest, HeadFileMissingEditedOrLaggingByOne) {
  Write(3);
  const std::string head = ReadText(log() + ".head");
  fs::remove(log() + ".head");
  AuditVerifyReport r = Verify();
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.problem, HasSubstr(".head is missing"));
  WriteText(log() + ".head", "3 " + std::string(64, 'a') + "\n");
  r = Verify();
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.problem, HasSubstr("does not match"));
  // An append interrupted between its record and its head update: still a valid log, and the next
  // append goes on from it.
  const std::vector<std::string> lines = Lines();
  const std::string h2 = lines[1].substr(lines[1].size() - 66, 64);
  WriteText(log() + ".head", "2 " + h2 + "\n");
  r = Verify();
  EXPECT_TRUE(r.ok) << r.problem;
  EXPECT_THAT(r.problem, HasSubstr("lags one record behind"));
  Write(1);
  r = Verify();
  EXPECT_TRUE(r.ok) << r.problem;
  EXPECT_EQ(r.records, 4);
  (void)head;
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
  StatusOr<std::string> h = (*a)->Append("x");
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(h.status().message(),
              HasSubstr("audit head file " + log() + ".head is not \"SEQ HASH\": it was damaged or edited"));
  EXPECT_THAT(h.status().message(),
              HasSubstr("keep it and its log for the auditor, and give the job a new audit_log"));
  EXPECT_EQ(ReadText(log()), before);
  const AuditVerifyReport r = Verify();
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.problem, HasSubstr("is not \"SEQ HASH\""));
}

TEST_F(AuditTest, AppendRefusesAnUnreadableLastRecordAndWritesNothing) {
  Write(2);
  std::vector<std::string> lines = Lines();
  lines.back() = "{\"time\":\"now\"}";  // a complete line without "seq"
  SetLines(lines);
  const std::string before = ReadText(log());
  StatusOr<std::unique_ptr<AuditLog>> a = AuditLog::Open(log(), "t");
  ASSERT_TRUE(a.ok()) << a.status().message();
  StatusOr<std::string> h = (*a)->Append("x");
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
  StatusOr<std::string> h = (*a)->Append("x");
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
  StatusOr<std::string> h = (*a)->Append("x");
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(h.status().message(), HasSubstr("cannot open audit log " + log() + ": Is a directory"));
  EXPECT_THAT(h.status().message(), HasSubstr("check that audit_log names a file (not a directory)"));
  EXPECT_FALSE(fs::exists(log() + ".head"));
}

}  // namespace
}  // namespace fjord
