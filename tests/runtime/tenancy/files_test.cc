// Files fjord writes: atomic writes never write through a symbolic link or file planted at their
// temporary name (old or new scheme), a link at the target is replaced, not followed; files get
// their mode at creation; a tenant's key must belong to the user who runs fjord (or root).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <set>

#include "common/file_util.h"
#include "runtime/tenancy/crypto.h"
#include "tests/runtime/tenancy/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using testing::ReadText;
using testing::WriteText;

class FilesTest : public testing::TenancyTest {
 protected:
  void SetUp() override {
    TenancyTest::SetUp();
    old_umask_ = ::umask(022);  // the oracle's modes below assume it
  }
  void TearDown() override {
    ::umask(old_umask_);
    TenancyTest::TearDown();
  }
  static unsigned ModeOf(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
  }
  mode_t old_umask_ = 022;
};

// The attack of the finding: another user who can write the target's directory (a shared
// checkpoint or export directory) plants PATH.tmp.<pid> -> a file of theirs and waits for the
// writer. Here the pid is known exactly (a child waits until the link is in place); before the
// fix the secret landed in the attacker's file.
TEST_F(FilesTest, AtomicWriteNeverWritesThroughALinkAtThePidTemporaryName) {
  const std::string target = Path("export.safetensors"), stolen = Path("stolen");
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    char c;
    (void)!::read(go[0], &c, 1);
    const std::string secret = "tenant weights";
    ::_exit(WriteFileAtomic(target, {{secret.data(), secret.size()}}, 0600).ok() ? 0 : 1);
  }
  fs::create_symlink(stolen, target + ".tmp." + std::to_string(pid));
  ASSERT_EQ(::write(go[1], "x", 1), 1);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_FALSE(fs::exists(stolen)) << "written through the planted link: " << ReadText(stolen);
  EXPECT_EQ(ReadText(target), "tenant weights");
  EXPECT_EQ(ModeOf(target), 0600u);
  EXPECT_TRUE(fs::is_symlink(target + ".tmp." + std::to_string(pid)));  // left alone
  ::close(go[0]);
  ::close(go[1]);
}

// The temporary name is unpredictable, and whatever sits at the exact name used (a dangling link,
// a link to an existing file, a file) is refused, never opened.
TEST_F(FilesTest, CreateNewFileRefusesAnythingAlreadyAtItsName) {
  std::set<std::string> names;
  for (int i = 0; i < 50; ++i) names.insert(RandomTempName(Path("f")));
  EXPECT_EQ(names.size(), 50u);
  EXPECT_THAT(*names.begin(), MatchesRegex(".*/f\\.tmp\\.[0-9a-f]{16}"));

  WriteText(Path("victim"), "original", 0644);
  fs::create_symlink(Path("victim"), Path("to-file"));
  fs::create_symlink(Path("nowhere/new"), Path("dangling"));
  fs::create_symlink(Path("absent"), Path("to-absent"));
  WriteText(Path("plain"), "kept", 0644);
  for (const char* name : {"to-file", "dangling", "to-absent", "plain"}) {
    StatusOr<Fd> fd = CreateNewFile(Path(name), 0600, "test");
    ASSERT_FALSE(fd.ok()) << name;
    EXPECT_THAT(fd.status().message(), HasSubstr("test: cannot create " + Path(name) + ": File exists"));
    EXPECT_THAT(fd.status().message(), HasSubstr("fjord never writes through one"));
  }
  EXPECT_EQ(ReadText(Path("victim")), "original");
  EXPECT_EQ(ReadText(Path("plain")), "kept");
  EXPECT_FALSE(fs::exists(Path("absent")));
  StatusOr<Fd> fresh = CreateNewFile(Path("fresh"), 0600, "test");
  ASSERT_TRUE(fresh.ok()) << fresh.status().message();
  EXPECT_EQ(ModeOf(Path("fresh")), 0600u);
}

// A link at the target itself is replaced by the new file (rename), never written through.
TEST_F(FilesTest, AtomicWriteReplacesALinkAtTheTarget) {
  WriteText(Path("victim"), "original", 0644);
  fs::create_symlink(Path("victim"), Path("out.json"));
  const std::string text = "new";
  ASSERT_TRUE(WriteFileAtomic(Path("out.json"), {{text.data(), text.size()}}).ok());
  EXPECT_FALSE(fs::is_symlink(Path("out.json")));
  EXPECT_EQ(ReadText(Path("out.json")), "new");
  EXPECT_EQ(ReadText(Path("victim")), "original");
}

// What a rename must not replace: a device or a named pipe. Refused, naming what it is; the node
// stays what it was. (As root, bench's --json /dev/full once replaced the device node.)
TEST_F(FilesTest, AtomicWriteRefusesToReplaceADeviceOrPipe) {
  ASSERT_EQ(::mkfifo(Path("pipe").c_str(), 0600), 0);
  std::vector<std::pair<std::string, std::string>> cases = {{Path("pipe"), "a named pipe"}};
  // A device node of our own (a copy of /dev/null's numbers), never the machine's: needs root.
  if (::mknod(Path("null").c_str(), S_IFCHR | 0600, makedev(1, 3)) == 0)
    cases.push_back({Path("null"), "a character device"});
  const std::string text = "x";
  for (const auto& [path, kind] : cases) {
    const Status s = WriteFileAtomic(path, {{text.data(), text.size()}});
    ASSERT_FALSE(s.ok()) << path;
    EXPECT_THAT(s.message(), HasSubstr("cannot write " + path + ": it is " + kind)) << path;
  }
  EXPECT_TRUE(fs::is_fifo(Path("pipe")));
  if (cases.size() == 2) EXPECT_TRUE(fs::is_character_file(Path("null")));
  for (const auto& e : fs::directory_iterator(dir_)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  }
}

TEST_F(FilesTest, AtomicWriteGivesTheModeAtCreationAndLeavesNoTemporary) {
  const std::string text = "x";
  ASSERT_TRUE(WriteFileAtomic(Path("public"), {{text.data(), text.size()}}).ok());
  EXPECT_EQ(ModeOf(Path("public")), 0644u);
  ASSERT_TRUE(WriteFileAtomic(Path("public"), {{text.data(), text.size()}}, 0600).ok());
  EXPECT_EQ(ModeOf(Path("public")), 0600u);  // a replaced file takes the new mode
  ::umask(077);
  ASSERT_TRUE(WriteFileAtomic(Path("private"), {{text.data(), text.size()}}).ok());
  EXPECT_EQ(ModeOf(Path("private")), 0600u);  // the umask still applies
  for (const auto& e : fs::directory_iterator(dir_)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  }
}

// The key file's owner: mode 0600 keeps others from reading it, but a file owned by another user
// can be replaced by that user with a key they know. Refused, naming the owner and what to do.
TEST_F(FilesTest, AKeyFileOwnedByAnotherUserIsRefusedEvenAtMode0600) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give the key file to another user (chown)";
  const std::string key = Path("acme.key");
  WriteText(key, std::string(64, 'a'), 0600);
  ASSERT_TRUE(LoadEncryptionKey(key, "checkpoint.encryption_key_file").ok());  // root's own: accepted
  ASSERT_EQ(::chown(key.c_str(), 65534, 65534), 0);
  ASSERT_EQ(ModeOf(key), 0600u);
  StatusOr<EncryptionKey> k = LoadEncryptionKey(key, "checkpoint.encryption_key_file");
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(k.status().message(),
              HasSubstr("checkpoint.encryption_key_file: key file " + key +
                        " is owned by uid 65534 (nobody), not by uid 0 (root) who runs fjord"));
  EXPECT_THAT(k.status().message(), HasSubstr("chown 0 " + key));
  // The process's own uid is accepted, whoever it is: as nobody, nobody's key loads.
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
    ::_exit(LoadEncryptionKey(key, "k").ok() ? 0 : 1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

}  // namespace
}  // namespace fjord
