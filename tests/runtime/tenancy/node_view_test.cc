// The node's own files (identity, settings) cannot be faked from a namespace, and the test overrides
// work only where the operator enabled them (docs/SOVEREIGNTY.md, "Node identity", "Test overrides").
// The attacks are made for real: an unprivileged user (nobody) in a user namespace of its own
// (unshare -rm) mounting files over FJORD_SYSCONFDIR, root in a mount namespace of its own doing the
// same, and overrides where the node has no settings that enable them. Each test changes
// FJORD_SYSCONFDIR only inside its own namespaces (its parent is overlaid there, then FJORD_SYSCONFDIR
// gets an empty tmpfs), so the machine's files stay as they are. Needs root; skipped without.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <unistd.h>

#include "tests/runtime/tenancy/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using testing::AuditLines;
using ::testing::HasSubstr;
using testing::RunResult;
using testing::Shell;
using testing::ShellQuote;
using testing::WriteText;

const std::string kSysconfdir = fs::path(kNodeSettingsPath).parent_path().string();
const std::string kIdentityFile = kDefaultNodeIdentityPath;
const std::string kSettingsFile = kNodeSettingsPath;
// Commands run without the overrides the test process may have in its environment.
const std::string kClean = "cd / && env -u FJORD_NODE_IDENTITY -u FJORD_TEST_HOOK ";

class NodeViewTest : public testing::TenancyTest {
 protected:
  void SetUp() override {
    if (::geteuid() != 0)
      GTEST_SKIP() << "needs root (mount namespaces, setpriv); running as uid " << ::geteuid();
    const struct passwd* nobody = ::getpwnam("nobody");
    if (nobody == nullptr) GTEST_SKIP() << "this machine has no user nobody";
    nobody_ = nobody->pw_uid;
    TenancyTest::SetUp();
    ::chmod(dir_.c_str(), 0755);
    // What nobody runs and reads: a copy of fjord, shards, a job of tenant acme (allowed in NO).
    fs::copy_file(FJORD_BINARY, Path("fjord"));
    ::chmod(Path("fjord").c_str(), 0755);
    std::string text;
    for (int i = 0; i < 300; ++i) text += "acme keeps its corpus in Norway, line " + std::to_string(i) + "\n";
    WriteText(Path("input.txt"), text);
    RunResult prep =
        Shell(kClean + Path("fjord") + " prep --input " + Path("input.txt") + " --out " + Path("data"));
    ASSERT_EQ(prep.exit_code, 0) << prep.output;
    WriteText(Path("job.textproto"),
              "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
              "train { micro_batch: 2 steps: 2 lr: 1e-3 }\n"
              "data { train: \"" +
                  Path("data/train_*.bin") +
                  "\" allow_unmanifested: true }\n"
                  "run_dir: \"" +
                  Path("run") +
                  "\"\n"
                  "tenant { id: \"acme\" }\nresidency { allowed_jurisdictions: \"NO\" }\n");
    fs::create_directories(Path("run"));
    ASSERT_EQ(::chown(Path("run").c_str(), nobody_, nobody_), 0);
  }

  // Shell commands that give the current mount namespace an empty FJORD_SYSCONFDIR of its own, owned
  // by (namespace) root with mode 755: its parent is overlaid (layers in the scratch directory, owned
  // by nobody so that nobody's namespace can use them) so that it can be made where it is missing,
  // then it gets a tmpfs.
  std::string FreshSysconfdir() {
    const std::string upper = Path("overlay/upper"), work = Path("overlay/work");
    for (const std::string& d : {upper, work}) {
      fs::create_directories(d);
      EXPECT_EQ(::chown(d.c_str(), nobody_, nobody_), 0);
    }
    const std::string parent = fs::path(kSysconfdir).parent_path().string();
    return "umask 022 && mount -t overlay overlay -o lowerdir=" + parent + ",upperdir=" + upper +
           ",workdir=" + work + " " + parent + " && mkdir -p " + kSysconfdir +
           " && mount -t tmpfs -o mode=755 tmpfs " + kSysconfdir;
  }

  // As root, on a "node" of its own: a pid namespace whose pid 1 (the shell) holds a mount namespace
  // with a fresh FJORD_SYSCONFDIR, in which `setup` runs, then `cmd`. Prints "exit N" for cmd.
  RunResult OnNode(const std::string& setup, const std::string& cmd) {
    return Shell(kClean + "unshare -pfm --mount-proc sh -c " +
                 ShellQuote(FreshSysconfdir() + setup + " && { " + cmd + "; }; echo \"exit $?\""));
  }

  uid_t nobody_ = 0;
};

// The hole: as nobody, unshare -rm and a NO identity mounted over FJORD_SYSCONFDIR look root-owned
// inside the namespace, and tenant acme (NO only) trained on a machine that is not provisioned for it
// at all, with override:false in the audit log. Now the rank gate refuses: not the initial user
// namespace. A faked settings file does not enable the override there either.
TEST_F(NodeViewTest, AnUnprivilegedUserNamespaceCannotFakeTheNodeIdentity) {
  const std::string as_nobody = kClean + "setpriv --reuid=nobody --regid=nogroup --clear-groups ";
  RunResult probe = Shell(as_nobody + "unshare -rm true");
  if (probe.exit_code != 0) {
    GTEST_SKIP() << "unprivileged user namespaces are unavailable here, so there is no attack to try: "
                 << probe.output;
  }
  const std::string fake = Identity("NO", "osl1", "fake");
  const std::string faked = FreshSysconfdir() + " && cp " + fake + " " + kIdentityFile +
                            " && stat -c 'owner %u mode %a' " + kIdentityFile + " && ";
  const std::string train = Path("fjord") + " train " + Path("job.textproto") + " --quiet";
  RunResult r = Shell(as_nobody + "unshare -rm sh -c " + ShellQuote(faked + train));
  // The attack is real: inside its namespace the fake is root's, writable by root only.
  EXPECT_THAT(r.output, HasSubstr("owner 0 mode 644"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("residency gate: cannot establish this node's jurisdiction"));
  EXPECT_THAT(r.output,
              HasSubstr("node identity " + kIdentityFile +
                        " cannot be trusted: this process runs in a user namespace (/proc/self/uid_map "
                        "is \"0 " +
                        std::to_string(nobody_) + " 1\""));
  EXPECT_FALSE(fs::exists(Path("run/metrics.jsonl")));
  const std::vector<std::string> refusals = AuditLines(Path("run/audit.jsonl"), "refusal");
  ASSERT_EQ(refusals.size(), 1u);
  EXPECT_THAT(refusals[0], HasSubstr("runs in a user namespace"));
  EXPECT_TRUE(AuditLines(Path("run/audit.jsonl"), "rank_identity").empty());

  r = Shell(as_nobody + "unshare -rm sh -c " +
            ShellQuote(faked + "echo 'allow_test_overrides: true' > " + kSettingsFile +
                       " && FJORD_NODE_IDENTITY=" + fake + " " + train));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("fjord: error: FJORD_NODE_IDENTITY is set, but test overrides are off on this node "
                        "(node settings " +
                        kSettingsFile + " cannot be trusted: this process runs in a user namespace"));
  EXPECT_FALSE(fs::exists(Path("run/metrics.jsonl")));
}

// Root in a mount namespace of its own (what ip netns exec and systemd's private mounts make) sees the
// node's own identity file, but not one mounted over it, and not its absence.
TEST_F(NodeViewTest, AMountNamespaceOfItsOwnSeesOnlyTheNodesOwnIdentity) {
  const std::string node = " && cp " + Identity("SE", "sto1", "se") + " " + kIdentityFile;
  const std::string prep =
      Path("fjord") + " prep --input " + Path("input.txt") + " --tenant acme --jurisdiction NO --out ";
  const std::string own_tmpfs = "mount -t tmpfs -o mode=755 tmpfs " + kSysconfdir + " && ";

  RunResult r =
      OnNode(node, "unshare -m sh -c " + ShellQuote(own_tmpfs + "cp " + Identity("NO", "osl1", "fake") + " " +
                                                    kIdentityFile + " && " + prep + Path("faked")));
  EXPECT_THAT(r.output, HasSubstr("exit 1"));
  EXPECT_THAT(r.output,
              HasSubstr("node identity " + kIdentityFile +
                        " cannot be trusted: this process runs in a mount namespace of its own, and the "
                        "file it sees there is not the node's own"));
  EXPECT_FALSE(fs::exists(Path("faked")));

  r = OnNode(node, "unshare -m sh -c " + ShellQuote(own_tmpfs + prep + Path("hidden")));
  EXPECT_THAT(r.output, HasSubstr("exit 1"));
  EXPECT_THAT(r.output, HasSubstr("it does not see the node's own file"));
  EXPECT_FALSE(fs::exists(Path("hidden")));

  // The node's own file passes the view check; its SE then keeps tenant acme's NO data off this node.
  r = OnNode(node, "unshare -m " + prep + Path("own"));
  EXPECT_THAT(r.output, HasSubstr("exit 1"));
  EXPECT_THAT(r.output, HasSubstr("jurisdiction SE, site sto1, from " + kIdentityFile +
                                  ") is outside the residency given for tenant acme"));
  // And a node in NO lets it through, from a mount namespace of its own too.
  r = OnNode(" && cp " + Identity("NO", "osl1", "no") + " " + kIdentityFile,
             "unshare -m " + prep + Path("no"));
  EXPECT_THAT(r.output, HasSubstr("exit 0"));
  EXPECT_TRUE(fs::exists(Path("no/manifest.textproto")));
}

// FJORD_NODE_IDENTITY and FJORD_TEST_HOOK are refused, with what to do, unless FJORD_SYSCONFDIR/
// settings.textproto (root's, writable by root only) says allow_test_overrides: true.
// fjord node init on a node of its own: the real FJORD_SYSCONFDIR path (a fresh one in this
// namespace), written so that node show and the gate's reader accept it. Its test root (--root) is a
// test override: refused while the overrides are off, and then nothing is written.
TEST_F(NodeViewTest, NodeInitProvisionsTheNodeAndItsTestRootIsATestOverride) {
  const std::string show_ok =
      " && " + Path("fjord") + " node show && stat -c 'owner %u mode %a' " + kIdentityFile;
  RunResult r = OnNode("", Path("fjord") + " node init --jurisdiction NO --site osl1" + show_ok);
  EXPECT_THAT(r.output, HasSubstr("exit 0")) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord node init: wrote " + kIdentityFile + " (root:root 0644)"));
  EXPECT_THAT(r.output, HasSubstr("the rank gate accepts this identity"));
  EXPECT_THAT(r.output, HasSubstr("owner 0 mode 644"));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("TEST ROOT")));

  const std::string root = Path("testroot");
  r = OnNode("", Path("fjord") + " node init --jurisdiction NO --site osl1 --root " + root);
  EXPECT_THAT(r.output, HasSubstr("exit 1"));
  EXPECT_THAT(r.output, HasSubstr("--root " + root +
                                  " (a test root) is a test override, and test overrides are "
                                  "off on this node (" +
                                  kSettingsFile + " does not say allow_test_overrides: true)"));
  EXPECT_FALSE(fs::exists(root));
  r = OnNode("", Path("fjord") + " node show --root " + root);
  EXPECT_THAT(r.output, HasSubstr("exit 1"));
  EXPECT_THAT(r.output, HasSubstr("is a test override, and test overrides are off"));

  r = OnNode(" && echo 'allow_test_overrides: true' > " + kSettingsFile,
             Path("fjord") + " node init --jurisdiction NO --site osl1 --root " + root);
  EXPECT_THAT(r.output, HasSubstr("exit 0")) << r.output;
  EXPECT_TRUE(fs::exists(root + kIdentityFile));
}

TEST_F(NodeViewTest, TestOverridesAreRefusedUnlessTheOperatorEnablesThem) {
  const std::string prep = "FJORD_NODE_IDENTITY=" + Identity("NO", "osl1") + " " + Path("fjord") +
                           " prep --input " + Path("input.txt") + " --tenant acme --jurisdiction NO --out ";
  const std::string enable = " && echo 'allow_test_overrides: true' > " + kSettingsFile;

  RunResult r = OnNode("", prep + Path("none"));
  EXPECT_THAT(r.output, HasSubstr("exit 1"));
  EXPECT_THAT(
      r.output,
      HasSubstr("fjord: error: FJORD_NODE_IDENTITY is set, but test overrides are off on this node (" +
                kSettingsFile + " does not say allow_test_overrides: true)"));
  EXPECT_THAT(r.output,
              HasSubstr("Unset FJORD_NODE_IDENTITY. On a test node the operator enables them as root: "
                        "echo 'allow_test_overrides: true' > " +
                        kSettingsFile));
  EXPECT_FALSE(fs::exists(Path("none")));

  r = OnNode("", "FJORD_TEST_HOOK=arena_verify_zero " + Path("fjord") + " train " + Path("job.textproto"));
  EXPECT_THAT(r.output, HasSubstr("exit 1"));
  EXPECT_THAT(r.output,
              HasSubstr("fjord: error: FJORD_TEST_HOOK is set, but test overrides are off on this node"));
  EXPECT_FALSE(fs::exists(Path("run/audit.jsonl")));

  r = OnNode(" && echo 'allow_test_overrides: false' > " + kSettingsFile, prep + Path("off"));
  EXPECT_THAT(r.output, HasSubstr("exit 1"));
  EXPECT_THAT(r.output, HasSubstr("does not say allow_test_overrides: true"));

  r = OnNode(enable + " && chmod 666 " + kSettingsFile, prep + Path("loose"));
  EXPECT_THAT(r.output, HasSubstr("exit 1"));
  EXPECT_THAT(r.output,
              HasSubstr("node settings " + kSettingsFile +
                        " is writable by group or others (mode 0666): another user could enable test "
                        "overrides on this node"));

  r = OnNode(enable + " && chown nobody " + kSettingsFile, prep + Path("foreign"));
  EXPECT_THAT(r.output, HasSubstr("exit 1"));
  EXPECT_THAT(r.output,
              HasSubstr(kSettingsFile + " is owned by uid " + std::to_string(nobody_) + ", not root"));

  r = OnNode(" && echo 'allow_test_overides: true' > " + kSettingsFile, prep + Path("typo"));
  EXPECT_THAT(r.output, HasSubstr("exit 1"));
  EXPECT_THAT(r.output,
              HasSubstr(kSettingsFile + ":1:1: Message type \"fjord.proto.NodeSettings\" has no field named "
                                        "\"allow_test_overides\""));
  for (const char* out : {"off", "loose", "foreign", "typo"}) EXPECT_FALSE(fs::exists(Path(out))) << out;

  r = OnNode(enable, prep + Path("on"));
  EXPECT_THAT(r.output, HasSubstr("exit 0"));
  EXPECT_TRUE(fs::exists(Path("on/manifest.textproto")));
}

}  // namespace
}  // namespace fjord
