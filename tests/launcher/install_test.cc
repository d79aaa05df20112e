// Installing and packaging fjord (CMakeLists.txt "Install", scripts/package.sh). The oracles are
// outside the code under test: git (the commit and version the binary must report), ldd and dpkg -S
// (the packages the binary's libraries come from, which Depends must name), dpkg --print-architecture.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::RunResult;
using testing::Shell;

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string Git(const std::string& args) {
  RunResult r = Shell("git -C " + std::string(FJORD_SOURCE_DIR) + " " + args);
  return r.exit_code == 0 ? Trim(r.output) : "";
}

class InstallTest : public testing::TempDirTest {
 protected:
  InstallTest() : TempDirTest("install_") {}
};

TEST_F(InstallTest, AnInstallRunsFromAnyPrefixAndReportsItsCommit) {
  RunResult r = Shell("cmake --install " + std::string(FJORD_BUILD_DIR) + " --prefix " + Path("a"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  fs::rename(Path("a"), Path("moved"));  // nothing may point back into the install prefix or the build
  const std::string bin = Path("moved/bin/fjord");
  r = Shell(bin + " --version");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string commit = Git("rev-parse HEAD");
  if (!commit.empty()) {
    EXPECT_THAT(r.output, HasSubstr("commit " + commit + "\n"));
    EXPECT_THAT(r.output, HasSubstr("+g" + commit.substr(0, 7)));  // git describe's abbreviation
  }
  EXPECT_THAT(r.output, HasSubstr("fjord "));
  EXPECT_THAT(r.output, HasSubstr("build type "));
  EXPECT_THAT(r.output, HasSubstr("MPI "));
  EXPECT_THAT(r.output, HasSubstr("OpenBLAS "));
  // The installed binary works: help, and a command that reads nothing but its arguments.
  EXPECT_EQ(Shell(bin + " --help").exit_code, 0);
  // No path of the build tree is baked into it.
  EXPECT_NE(Shell("grep -a -q -F " + std::string(FJORD_BUILD_DIR) + " " + bin).exit_code, 0)
      << "the installed binary contains " << FJORD_BUILD_DIR;
  // The usual places (GNUInstallDirs).
  for (const char* f : {"share/fjord/proto/job.proto", "share/fjord/proto/tenancy.proto",
                        "share/doc/fjord/LICENSE", "share/doc/fjord/copyright", "share/doc/fjord/README.md",
                        "share/doc/fjord/SOVEREIGNTY.md", "share/doc/fjord/examples"}) {
    EXPECT_TRUE(fs::exists(Path("moved/") + f)) << f;
  }
}

TEST_F(InstallTest, TheDebianPackageHasComputedDependsTheGitVersionAndTheFiles) {
  // The package of this build: fjord from a CPU-only build, fjord-cuda (conflicting with fjord) from a
  // CUDA build.
#ifdef FJORD_HAVE_CUDA
  const std::string package = "fjord-cuda", other = "fjord";
#else
  const std::string package = "fjord", other = "fjord-cuda";
#endif
  const std::string from = FJORD_BUILD_DIR;
  RunResult r =
      Shell("bash " + std::string(FJORD_SOURCE_DIR) + "/scripts/package.sh " + from + " " + Path("pkg"));
  if (r.exit_code == 77) GTEST_SKIP() << r.output;
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string deb = Trim(r.output.substr(r.output.rfind('\n', r.output.size() - 2) + 1));
  auto field = [&](const std::string& name) { return Trim(Shell("dpkg-deb -f " + deb + " " + name).output); };
  const std::string version = field("Version");
  const std::string arch = Trim(Shell("dpkg --print-architecture").output);
  EXPECT_EQ(field("Package"), package);
  EXPECT_EQ(field("Conflicts"), other);
  EXPECT_EQ(field("Architecture"), arch);
  EXPECT_EQ(fs::path(deb).filename().string(), package + "_" + version + "_" + arch + ".deb");
  const std::string commit = Git("rev-parse HEAD");
  if (!commit.empty()) {
    EXPECT_THAT(version, HasSubstr("g" + commit.substr(0, 7)));
  }
  // The packaged binary reports the same version.
  EXPECT_THAT(
      Shell("dpkg-deb -x " + deb + " " + Path("x") + " && " + Path("x/usr/bin/fjord") + " --version").output,
      HasSubstr("fjord " + version + "\n"));
  // Depends names the package of each library the binary links (as ldd and dpkg -S see them).
  const std::string depends = field("Depends");
  for (const std::string lib : {"libprotobuf", "libmpi", "libcrypto", "libopenblas"}) {
    RunResult pkg = Shell("dpkg -S \"$(readlink -f \"$(ldd " + Path("x/usr/bin/fjord") + " | awk '/" + lib +
                          "/ {print $3; exit}')\")\" | cut -d: -f1 | head -1");
    const std::string name = Trim(pkg.output);
    if (pkg.exit_code != 0 || name.empty() || name.find(' ') != std::string::npos)
      continue;  // not from a package
    // Debian's dependency for it: the package itself, or what its shlibs file says to depend on
    // (libopenblas0-pthread says libopenblas0, any of the OpenBLAS variants).
    const std::string shlibs =
        Shell("dpkg-query --control-show " + name + " shlibs 2>/dev/null | awk '/^" + lib + " / {print $3}'")
            .output;
    const std::string wanted = shlibs.empty() ? name : Trim(shlibs.substr(0, shlibs.find('\n')));
    EXPECT_THAT(depends, HasSubstr(wanted)) << lib << " comes from " << name;
  }
  // Contents: the binary, schemas, docs, examples, copyright; nothing under /etc (identities are per node).
  const std::string files = Shell("dpkg-deb -c " + deb).output;
  for (const char* f :
       {"./usr/bin/fjord", "./usr/share/fjord/proto/job.proto", "./usr/share/doc/fjord/copyright",
        "./usr/share/doc/fjord/SOVEREIGNTY.md", "./usr/share/doc/fjord/examples/"}) {
    EXPECT_THAT(files, HasSubstr(f));
  }
  EXPECT_THAT(files, Not(HasSubstr("./etc/")));
}

}  // namespace
}  // namespace fjord
