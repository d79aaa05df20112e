// `fjord node init` and `fjord node show` (launcher/node_cmd.h) through the binary. init writes into a
// test root (--root DIR, a test override that the CTest fixture enables), never /etc/fjord. The
// identity written is read back with protobuf's own text parser and stat(2); show's verdict is the
// rank gate's (runtime/tenancy InspectNodeIdentity), checked here against files made wrong on purpose.
#include <gmock/gmock.h>
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proto/tenancy.pb.h"
#include "runtime/tenancy/tenancy.h"
#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::ReadText;
using testing::RunFjord;
using testing::RunResult;
using testing::Shell;

std::string Hostname() {
  char buf[256] = {0};
  ::gethostname(buf, sizeof(buf) - 1);
  return buf;
}

class NodeTest : public testing::TempDirTest {
 protected:
  NodeTest() : TempDirTest("node_") {}
  void SetUp() override {
    TempDirTest::SetUp();
    if (::geteuid() != 0) GTEST_SKIP() << "node init is root only; running as uid " << ::geteuid();
    ::chmod(dir_.c_str(), 0755);
    root_ = Path("root");
    identity_ = root_ + kDefaultNodeIdentityPath;
  }
  RunResult Init(const std::string& args) { return RunFjord("node init --root " + root_ + " " + args); }
  std::string root_, identity_;
};

TEST_F(NodeTest, InitWritesARootOwned0644IdentityThatShowAndTheGateAccept) {
  RunResult r = Init("--jurisdiction NO --site osl1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  struct stat st;
  ASSERT_EQ(::stat(identity_.c_str(), &st), 0) << identity_;
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_gid, 0u);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  // Today's schema, read by protobuf's parser (not fjord's): this host, NO, osl1.
  proto::NodeIdentity id;
  const std::string text = ReadText(identity_);
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &id)) << text;
  EXPECT_EQ(id.hostname(), Hostname());
  EXPECT_EQ(id.jurisdiction(), "NO");
  EXPECT_EQ(id.site(), "osl1");
  EXPECT_FALSE(id.provisioned_at().empty());
  // The test root is recorded in the file and in what init printed.
  EXPECT_THAT(text, HasSubstr("TEST ROOT " + root_));
  EXPECT_THAT(id.provisioned_by(), HasSubstr("test root " + root_));
  EXPECT_THAT(r.output, HasSubstr("wrote " + identity_));
  EXPECT_THAT(r.output, HasSubstr("jurisdiction: \"NO\""));
  // The library's strict reader (the gate's checks) accepts it too.
  EXPECT_TRUE(ReadNodeIdentityFile(identity_, /*strict=*/true).ok());
  RunResult show = RunFjord("node show --root " + root_);
  EXPECT_EQ(show.exit_code, 0) << show.output;
  EXPECT_THAT(show.output, HasSubstr("the rank gate accepts this identity"));
  EXPECT_THAT(show.output, HasSubstr("jurisdiction: NO"));
  EXPECT_THAT(show.output, HasSubstr("test root " + root_ + " (--root): the rank gate reads"));
}

TEST_F(NodeTest, InitRefusesToOverwriteWithoutForce) {
  ASSERT_EQ(Init("--jurisdiction NO --site osl1").exit_code, 0);
  const std::string before = ReadText(identity_);
  RunResult again = Init("--jurisdiction SE --site sto1");
  EXPECT_EQ(again.exit_code, 1) << again.output;
  EXPECT_THAT(again.output, HasSubstr("exists; refusing to overwrite the node identity without --force"));
  EXPECT_EQ(ReadText(identity_), before);
  RunResult forced = Init("--jurisdiction SE --site sto1 --force");
  ASSERT_EQ(forced.exit_code, 0) << forced.output;
  proto::NodeIdentity id;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(ReadText(identity_), &id));
  EXPECT_EQ(id.jurisdiction(), "SE");
  EXPECT_EQ(id.site(), "sto1");
}

TEST_F(NodeTest, InitRefusesWhatIsNotAnIsoCodeOrASiteAndWritesNothing) {
  struct Case {
    const char* args;
    const char* message;
  } cases[] = {
      {"--jurisdiction no --site osl1", "--jurisdiction \"no\" is not upper case; write \"NO\""},
      {"--jurisdiction XX --site osl1", "--jurisdiction \"XX\" is not an ISO 3166-1 alpha-2 country code"},
      {"--jurisdiction NOR --site osl1", "has 3 letters"},
      {"--jurisdiction UK --site osl1", "write \"GB\""},
      {"--jurisdiction NO --site 'osl 1'", "--site \"osl 1\" is not a site name"},
      {"--jurisdiction NO", "--jurisdiction CC and --site S are required"},
  };
  for (const Case& c : cases) {
    RunResult r = Init(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(c.message)) << c.args;
    EXPECT_THAT(r.output, HasSubstr("usage: fjord node init"));
  }
  EXPECT_FALSE(std::filesystem::exists(identity_));
}

TEST_F(NodeTest, InitIsRefusedForAnyoneButRoot) {
  // nobody, with the binary it can read and execute: refused before anything is written.
  RunResult r = Shell("setpriv --reuid=65534 --regid=65534 --clear-groups " + std::string(FJORD_BINARY) +
                      " node init --jurisdiction NO --site osl1 --root " + root_);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("must run as root (this is uid 65534)"));
  EXPECT_FALSE(std::filesystem::exists(identity_));
  EXPECT_FALSE(std::filesystem::exists(root_));
}

TEST_F(NodeTest, ShowListsEveryReasonTheGateWouldRefuse) {
  ASSERT_EQ(Init("--jurisdiction NO --site osl1 --hostname elsewhere").exit_code, 0);
  const std::string dir = std::filesystem::path(identity_).parent_path().string();
  ::chmod(identity_.c_str(), 0664);
  ::chmod(dir.c_str(), 0777);
  RunResult r = RunFjord("node show --root " + root_);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("the rank gate refuses this identity:"));
  EXPECT_THAT(r.output, HasSubstr("refused: node identity " + identity_ +
                                  " is writable by group or others (mode 0664)"));
  EXPECT_THAT(r.output,
              HasSubstr("refused: its directory " + dir + " is writable by group or others (mode 0777)"));
  EXPECT_THAT(r.output, HasSubstr("refused: node identity " + identity_ +
                                  " names host \"elsewhere\" but this host is \"" + Hostname() + "\""));
  // The gate's reader refuses it with the first of them.
  StatusOr<LocalNode> read = ReadNodeIdentityFile(identity_, /*strict=*/true);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(), HasSubstr("writable by group or others (mode 0664)"));
  ::chmod(dir.c_str(), 0755);
}

TEST_F(NodeTest, ShowReportsTheGatesViewOfATestOverride) {
  // FJORD_NODE_IDENTITY (allowed by the CTest fixture) naming another host: the gate refuses it, and
  // show says it is an override.
  testing::WriteText(Path("other.textproto"),
                     "hostname: \"otherhost\" jurisdiction: \"NO\" site: \"osl1\"\n");
  RunResult r = Shell("FJORD_NODE_IDENTITY=" + Path("other.textproto") + " " + FJORD_BINARY + " node show");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("(FJORD_NODE_IDENTITY, a test override)"));
  EXPECT_THAT(r.output, HasSubstr("names host \"otherhost\" but this host is \"" + Hostname() + "\""));
  EXPECT_THAT(r.output, HasSubstr("warning: the identity comes from FJORD_NODE_IDENTITY, a test override"));
  EXPECT_THAT(r.output, HasSubstr("warning: test overrides are enabled on this node"));
  // The same file naming this host: accepted, still with the override named.
  testing::WriteText(Path("mine.textproto"),
                     "hostname: \"" + Hostname() + "\" jurisdiction: \"NO\" site: \"osl1\"\n");
  r = Shell("FJORD_NODE_IDENTITY=" + Path("mine.textproto") + " " + FJORD_BINARY + " node show");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("the rank gate accepts this identity"));
  EXPECT_THAT(r.output, Not(HasSubstr("refused:")));
}

}  // namespace
}  // namespace fjord
