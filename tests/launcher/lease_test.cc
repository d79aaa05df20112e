// Node leases (launcher/lease.h). The other holder is always a real second process (fork) holding a
// real flock, never a mock; its pid (from fork) is the oracle for whom the messages name. Then
// `fjord launch` itself: refusal, waiting, dry run and the records in the audit log.
#include "launcher/lease.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ReadText;
using testing::WriteText;

LeaseRecord Record(const std::string& tenant) {
  LeaseRecord r;
  r.tenant = tenant;
  r.job_sha256 = std::string(64, tenant.empty() ? '0' : tenant[0] == 'a' ? 'a' : 'b');
  r.launch_id = "launch-" + tenant;
  r.launch_host = "head";
  r.pid = ::getpid();
  r.audit_log = "/runs/" + tenant + "/audit.jsonl";
  return r;
}

// A second process that takes leases, says so on a pipe, and holds them until told to go (or
// until killed). Its pid is the oracle for the record the parent reads.
class Holder {
 public:
  // mode "release": Release() then exit 0 when told; "crash": SIGKILL itself when told.
  Holder(const std::string& dir, std::vector<std::string> hosts, const std::string& tenant,
         const std::string& mode = "release") {
    int ready[2], go[2];
    // Close-on-exec: a process the test starts later (fjord launch) must not keep `go` open.
    EXPECT_EQ(::pipe2(ready, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(go, O_CLOEXEC), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(ready[0]);
      ::close(go[1]);
      LeaseRecord r = Record(tenant);
      r.pid = ::getpid();
      LeaseConflict c;
      StatusOr<std::unique_ptr<NodeLeases>> l = TryAcquireLeases(dir, hosts, r, &c);
      const char ok = l.ok() ? 'y' : 'n';
      (void)!::write(ready[1], &ok, 1);
      char buf;
      (void)!::read(go[0], &buf, 1);  // returns when the parent writes or closes
      if (mode == "crash") ::raise(SIGKILL);
      if (l.ok()) (void)(*l)->Release();
      ::_exit(l.ok() ? 0 : 1);
    }
    ::close(ready[1]);
    ::close(go[0]);
    go_ = go[1];
    char ok = 'n';
    EXPECT_EQ(::read(ready[0], &ok, 1), 1);
    ::close(ready[0]);
    held_ = ok == 'y';
  }
  ~Holder() { Finish(); }
  // Lets the holder release (or crash) and reaps it; returns its wait status.
  int Finish() {
    if (go_ >= 0) {
      ::close(go_);
      go_ = -1;
      ::waitpid(pid_, &status_, 0);
    }
    return status_;
  }
  pid_t pid() const { return pid_; }
  bool held() const { return held_; }

 private:
  pid_t pid_ = -1;
  int go_ = -1;
  int status_ = 0;
  bool held_ = false;
};

class LeaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = "/tmp/fjord_lease_" + std::string(info->name()) + "_" + std::to_string(::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_ + "/leases");
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::string Leases() const { return dir_ + "/leases"; }
  std::string LeaseFile(const std::string& host) const { return Leases() + "/" + host + ".lease"; }
  std::string dir_;
};

TEST(LeaseRecordTest, RoundTripsAndRefusesMalformedRecords) {
  LeaseRecord r = Record("acme");
  r.since = "2026-11-29T01:02:03.456Z";
  r.launch_host = "head \"quoted\"";
  StatusOr<LeaseRecord> back = ParseLeaseRecord(LeaseRecordJson(r), "x.lease");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->tenant, r.tenant);
  EXPECT_EQ(back->job_sha256, r.job_sha256);
  EXPECT_EQ(back->launch_id, r.launch_id);
  EXPECT_EQ(back->launch_host, r.launch_host);
  EXPECT_EQ(back->pid, r.pid);
  EXPECT_EQ(back->since, r.since);
  EXPECT_EQ(back->audit_log, r.audit_log);
  EXPECT_EQ(DescribeHolder(r),
            "tenant acme (job sha256 aaaaaaaaaaaaaaaa, launch launch-acme on head \"quoted\", pid " +
                std::to_string(r.pid) + ") since 2026-11-29T01:02:03.456Z");

  EXPECT_FALSE(ParseLeaseRecord("not json", "x.lease").ok());
  EXPECT_THAT(ParseLeaseRecord("[1]", "x.lease").status().message(),
              HasSubstr("x.lease: a lease record is a JSON"));
  std::string no_pid = LeaseRecordJson(r);
  no_pid.replace(no_pid.find("\"pid\":"), 6, "\"pod\":");
  EXPECT_THAT(ParseLeaseRecord(no_pid, "x.lease").status().message(), HasSubstr("no integer field \"pid\""));
  std::string bad_tenant = LeaseRecordJson(r);
  bad_tenant.replace(bad_tenant.find("\"acme\""), 6, "7");
  EXPECT_THAT(ParseLeaseRecord(bad_tenant, "x.lease").status().message(),
              HasSubstr("no string field \"tenant\""));
}

TEST_F(LeaseTest, AcquireLocksEveryNodeInSortedOrderWritesRecordsAndReleaseEmptiesThem) {
  LeaseConflict c;
  StatusOr<std::unique_ptr<NodeLeases>> l =
      TryAcquireLeases(Leases(), {"no2", "no1", "no2"}, Record("acme"), &c);
  ASSERT_TRUE(l.ok()) << l.status().message();
  EXPECT_THAT((*l)->hosts(), ElementsAre("no1", "no2"));
  EXPECT_TRUE((*l)->taken_over().empty());
  for (const char* host : {"no1", "no2"}) {
    StatusOr<LeaseRecord> r = ParseLeaseRecord(ReadText(LeaseFile(host)), host);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->tenant, "acme");
    EXPECT_EQ(r->pid, ::getpid());
    EXPECT_FALSE(r->since.empty());
    // Another open file description (as another launch has) cannot take the lock.
    const int fd = ::open(LeaseFile(host).c_str(), O_RDONLY);
    EXPECT_NE(::flock(fd, LOCK_EX | LOCK_NB), 0);
    ::close(fd);
  }
  EXPECT_TRUE((*l)->Release().ok());
  EXPECT_TRUE((*l)->Release().ok());  // idempotent
  for (const char* host : {"no1", "no2"}) {
    EXPECT_EQ(ReadText(LeaseFile(host)), "");
    const int fd = ::open(LeaseFile(host).c_str(), O_RDONLY);
    EXPECT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
    ::close(fd);
  }
}

TEST_F(LeaseTest, ConflictNamesNodeAndHolderAndReleasesWhatItTook) {
  Holder other(Leases(), {"no2"}, "globex");
  ASSERT_TRUE(other.held());
  LeaseConflict c;
  StatusOr<std::unique_ptr<NodeLeases>> l =
      TryAcquireLeases(Leases(), {"no3", "no2", "no1"}, Record("acme"), &c);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.host, "no2");
  ASSERT_TRUE(c.known);
  EXPECT_EQ(c.holder.tenant, "globex");
  EXPECT_EQ(c.holder.pid, other.pid());
  EXPECT_THAT(
      l.status().message(),
      HasSubstr("node no2 is leased by tenant globex (job sha256 bbbbbbbbbbbbbbbb, launch launch-globex on "
                "head, pid " +
                std::to_string(other.pid()) + ") since 20"));
  EXPECT_THAT(l.status().message(), HasSubstr(LeaseFile("no2")));
  // no1 (before no2 in sorted order) was taken and given back untouched; no3 was never tried.
  EXPECT_EQ(ReadText(LeaseFile("no1")), "");
  EXPECT_FALSE(fs::exists(LeaseFile("no3")));
  StatusOr<std::unique_ptr<NodeLeases>> no1 = TryAcquireLeases(Leases(), {"no1"}, Record("acme"), &c);
  EXPECT_TRUE(no1.ok()) << no1.status().message();
  // The refusal through AcquireLeases says what to do.
  StatusOr<std::unique_ptr<NodeLeases>> refused =
      AcquireLeases(Leases(), {"no2"}, Record("acme"), -1, nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(),
              HasSubstr("Nothing was started. Wait for it with --wait-for-nodes"));
  EXPECT_EQ(WEXITSTATUS(other.Finish()), 0);
  EXPECT_EQ(ReadText(LeaseFile("no2")), "");  // the holder released: record emptied
}

TEST_F(LeaseTest, SameTenantIsRefusedToo) {
  // A lease is per job, not per tenant: placement does not count slots in use, so two jobs on one
  // node would double-book its GPUs.
  Holder other(Leases(), {"no1"}, "acme");
  ASSERT_TRUE(other.held());
  LeaseConflict c;
  EXPECT_FALSE(TryAcquireLeases(Leases(), {"no1"}, Record("acme"), &c).ok());
  EXPECT_EQ(c.holder.pid, other.pid());
}

TEST_F(LeaseTest, WaitAcquiresOnceTheHolderReleasesAndAnnouncesTheHolderOnce) {
  auto other = std::make_unique<Holder>(Leases(), std::vector<std::string>{"no1"}, "globex");
  ASSERT_TRUE(other->held());
  const pid_t holder = other->pid();
  std::vector<LeaseConflict> waited;
  std::thread release([&] {
    // Release only after the waiter has announced whom it waits for.
    for (int i = 0; i < 500 && waited.empty(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    other->Finish();
  });
  StatusOr<std::unique_ptr<NodeLeases>> l = AcquireLeases(
      Leases(), {"no1"}, Record("acme"), 0, [&](const LeaseConflict& c) { waited.push_back(c); });
  release.join();
  ASSERT_TRUE(l.ok()) << l.status().message();
  ASSERT_EQ(waited.size(), 1u);  // several polls, one announcement
  EXPECT_EQ(waited[0].host, "no1");
  EXPECT_EQ(waited[0].holder.pid, holder);
  EXPECT_EQ(ParseLeaseRecord(ReadText(LeaseFile("no1")), "no1")->tenant, "acme");
  EXPECT_TRUE((*l)->taken_over().empty());  // released properly: no takeover
}

TEST_F(LeaseTest, WaitGivesUpAfterItsLimitWithTheHolderInTheMessage) {
  Holder other(Leases(), {"no1"}, "globex");
  ASSERT_TRUE(other.held());
  StatusOr<std::unique_ptr<NodeLeases>> l = AcquireLeases(Leases(), {"no1"}, Record("acme"), 1, nullptr);
  ASSERT_FALSE(l.ok());
  EXPECT_THAT(l.status().message(),
              HasSubstr("gave up after waiting 1 s (--wait-for-nodes=1): node no1 is leased "
                        "by tenant globex"));
}

TEST_F(LeaseTest, StaleLeaseOfACrashedLaunchIsTakenOver) {
  Holder crashed(Leases(), {"no1", "no2"}, "globex", "crash");
  ASSERT_TRUE(crashed.held());
  const pid_t pid = crashed.pid();
  const int status = crashed.Finish();
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  // Its records remain; its locks went with it. An unreadable record is stale too.
  EXPECT_THAT(ReadText(LeaseFile("no1")), HasSubstr("\"tenant\":\"globex\""));
  WriteText(LeaseFile("no3"), "garbage");
  LeaseConflict c;
  StatusOr<std::unique_ptr<NodeLeases>> l =
      TryAcquireLeases(Leases(), {"no1", "no2", "no3"}, Record("acme"), &c);
  ASSERT_TRUE(l.ok()) << l.status().message();
  const std::vector<StaleLease>& stale = (*l)->taken_over();
  ASSERT_EQ(stale.size(), 3u);
  EXPECT_EQ(stale[0].host, "no1");
  EXPECT_TRUE(stale[0].known);
  EXPECT_EQ(stale[0].previous.pid, pid);
  EXPECT_EQ(stale[0].previous.tenant, "globex");
  EXPECT_EQ(stale[1].previous.pid, pid);
  EXPECT_FALSE(stale[2].known);
  EXPECT_FALSE(stale[2].problem.empty());
  EXPECT_EQ(ParseLeaseRecord(ReadText(LeaseFile("no3")), "no3")->tenant, "acme");
}

// The lease outlives a launch killed with SIGKILL as long as the mpirun it started runs: the
// child inherits the locked descriptor. Here the "mpirun" is `cat` reading a pipe we hold.
TEST_F(LeaseTest, LeaseLastsWhileTheJobsChildRunsEvenIfLaunchIsKilled) {
  int job[2];
  ASSERT_EQ(::pipe2(job, O_CLOEXEC), 0);
  const pid_t launch = ::fork();
  if (launch == 0) {
    LeaseConflict c;
    StatusOr<std::unique_ptr<NodeLeases>> l = TryAcquireLeases(Leases(), {"no1"}, Record("globex"), &c);
    if (!l.ok()) ::_exit(1);
    if (::fork() == 0) {
      ::dup2(job[0], 0);
      ::close(job[0]);
      ::close(job[1]);
      ::execlp("cat", "cat", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::raise(SIGKILL);
  }
  ::close(job[0]);
  int status = 0;
  ::waitpid(launch, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the launch stand-in failed to lease";
  LeaseConflict c;
  StatusOr<std::unique_ptr<NodeLeases>> l = TryAcquireLeases(Leases(), {"no1"}, Record("acme"), &c);
  EXPECT_FALSE(l.ok());
  EXPECT_EQ(c.holder.pid, launch);  // the record still names the (dead) launch
  ::close(job[1]);                  // the "job" ends
  l = AcquireLeases(Leases(), {"no1"}, Record("acme"), 10, nullptr);
  ASSERT_TRUE(l.ok()) << l.status().message();
  ASSERT_EQ((*l)->taken_over().size(), 1u);
  EXPECT_EQ((*l)->taken_over()[0].previous.pid, launch);
}

// Two launchers wanting the same nodes, listed in opposite orders, each taking them 10 times with
// waiting: both finish (no deadlock or livelock) and their holding intervals never overlap.
TEST_F(LeaseTest, ConcurrentLaunchersNeverOverlapAndBothFinish) {
  const std::string trace = dir_ + "/trace";
  std::vector<pid_t> kids;
  for (int k = 0; k < 2; ++k) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::alarm(60);  // a deadlock fails the test instead of hanging it
      std::vector<std::string> hosts = {"no1", "no2", "no3"};
      if (k == 1) std::reverse(hosts.begin(), hosts.end());
      for (int round = 0; round < 10; ++round) {
        StatusOr<std::unique_ptr<NodeLeases>> l =
            AcquireLeases(Leases(), hosts, Record(k ? "globex" : "acme"), 0, nullptr);
        if (!l.ok()) ::_exit(1);
        const int fd = ::open(trace.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        const std::string in = std::to_string(k) + "+\n", out = std::to_string(k) + "-\n";
        (void)!::write(fd, in.data(), in.size());
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        (void)!::write(fd, out.data(), out.size());
        ::close(fd);
        (void)(*l)->Release();
      }
      ::_exit(0);
    }
    kids.push_back(pid);
  }
  for (pid_t pid : kids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  }
  std::istringstream lines(ReadText(trace));
  std::string line, open;
  int pairs = 0;
  while (std::getline(lines, line)) {
    if (line.back() == '+') {
      EXPECT_EQ(open, "") << "launcher " << line[0] << " took the nodes while " << open << " held them";
      open = line.substr(0, 1);
    } else {
      EXPECT_EQ(open, line.substr(0, 1));
      open.clear();
      ++pairs;
    }
  }
  EXPECT_EQ(pairs, 20);
}

TEST_F(LeaseTest, BadLeaseDirectoriesAreClearErrors) {
  LeaseConflict c;
  StatusOr<std::unique_ptr<NodeLeases>> l = TryAcquireLeases(dir_ + "/missing", {"no1"}, Record("acme"), &c);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(l.status().message(), HasSubstr("node lease directory " + dir_ + "/missing: No such file"));
  EXPECT_THAT(l.status().message(), HasSubstr("install -d -m 1777 " + dir_ + "/missing"));
  EXPECT_THAT(l.status().message(), HasSubstr("Nothing was started"));
  EXPECT_TRUE(c.host.empty());
  EXPECT_FALSE(fs::exists(dir_ + "/missing"));  // never created: it would be a lease only this host sees
  WriteText(dir_ + "/file", "");
  EXPECT_THAT(TryAcquireLeases(dir_ + "/file", {"no1"}, Record("acme"), &c).status().message(),
              HasSubstr("is not a directory"));
  EXPECT_THAT(TryAcquireLeases("leases", {"no1"}, Record("acme"), &c).status().message(),
              HasSubstr("\"leases\" is not an absolute path"));
  // AcquireLeases does not wait on errors that are not conflicts.
  EXPECT_EQ(AcquireLeases(dir_ + "/missing", {"no1"}, Record("acme"), 0, nullptr).status().code(),
            StatusCode::kNotFound);
  // A lease path that is a symlink is refused, not followed.
  fs::create_symlink(dir_ + "/file", LeaseFile("no9"));
  EXPECT_THAT(TryAcquireLeases(Leases(), {"no9"}, Record("acme"), &c).status().message(),
              HasSubstr("cannot open node lease " + LeaseFile("no9")));
  EXPECT_EQ(ReadText(dir_ + "/file"), "");
}

TEST_F(LeaseTest, CurrentHoldersNamesHeldNodesOnlyAndTakesNothing) {
  Holder other(Leases(), {"no2"}, "globex");
  ASSERT_TRUE(other.held());
  WriteText(LeaseFile("no3"), LeaseRecordJson(Record("stale")));  // a record without a lock: free
  StatusOr<std::vector<LeaseConflict>> held = CurrentHolders(Leases(), {"no1", "no2", "no3"});
  ASSERT_TRUE(held.ok()) << held.status().message();
  ASSERT_EQ(held->size(), 1u);
  EXPECT_EQ((*held)[0].host, "no2");
  EXPECT_EQ((*held)[0].holder.pid, other.pid());
  EXPECT_FALSE(fs::exists(LeaseFile("no1")));
  EXPECT_EQ(ParseLeaseRecord(ReadText(LeaseFile("no3")), "no3")->tenant, "stale");
}

// A lease path that is a symlink is refused by the dry run's look too (not followed), naming it.
TEST_F(LeaseTest, CurrentHoldersRefusesASymlinkedLease) {
  WriteText(dir_ + "/file", "");
  fs::create_symlink(dir_ + "/file", LeaseFile("no9"));
  StatusOr<std::vector<LeaseConflict>> held = CurrentHolders(Leases(), {"no1", "no9"});
  ASSERT_FALSE(held.ok());
  EXPECT_EQ(held.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(held.status().message(), HasSubstr("cannot open node lease " + LeaseFile("no9") + ": "));
  EXPECT_FALSE(fs::exists(LeaseFile("no1")));
  EXPECT_EQ(ReadText(dir_ + "/file"), "");
}

TEST(LeaseInventoryTest, LeaseDirMustBeAbsolute) {
  StatusOr<proto::Inventory> inv =
      ParseInventory("node { hostname: \"a\" jurisdiction: \"NO\" site: \"s\" }\nlease_dir: \"var/leases\"\n",
                     "inv.textproto");
  ASSERT_FALSE(inv.ok());
  EXPECT_THAT(inv.status().message(), HasSubstr("inv.textproto:2:"));
  EXPECT_THAT(inv.status().message(), HasSubstr("lease_dir \"var/leases\" is not an absolute path"));
  inv = ParseInventory("node { hostname: \"a\" jurisdiction: \"NO\" site: \"s\" }\n", "inv.textproto");
  ASSERT_TRUE(inv.ok());
  EXPECT_EQ(inv->lease_dir(), "/var/lib/fjord/leases");  // the documented default
}

// ---- fjord launch ----------------------------------------------------------------------------------

class LaunchLeaseTest : public LeaseTest {
 protected:
  void SetUp() override {
    LeaseTest::SetUp();
    WriteText(dir_ + "/inv.textproto",
              "node { hostname: \"no1\" address: \"10.0.0.1\" jurisdiction: \"NO\" site: \"osl1\" }\n"
              "node { hostname: \"no2\" address: \"10.0.0.2\" jurisdiction: \"NO\" site: \"osl1\" }\n"
              "lease_dir: \"" +
                  Leases() + "\"\n");
    WriteText(dir_ + "/job.textproto",
              "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 16 vocab_size: 256 }\n"
              "data { train: \"" +
                  dir_ + "/data/train_*.bin\" }\nrun_dir: \"" + dir_ +
                  "/run\"\ntenant { id: \"acme\" }\nresidency { allowed_jurisdictions: \"NO\" }\n");
    // A stand-in for mpirun: reports whether no1's lease is locked while it runs (flock(1) opens
    // its own file description) and copies the record it finds.
    WriteText(dir_ + "/fake-mpirun",
              "#!/bin/sh\nif flock -n " + LeaseFile("no1") +
                  " true; then echo free; else echo locked; fi > " + dir_ + "/seen\ncat " + LeaseFile("no1") +
                  " >> " + dir_ + "/seen\n",
              0755);
  }
  testing::RunResult Launch(const std::string& args) {
    return testing::RunFjord("launch " + dir_ + "/job.textproto --inventory " + dir_ +
                             "/inv.textproto --mpirun " + dir_ + "/fake-mpirun --np 2 " + args);
  }
  std::vector<std::string> Events() {
    std::vector<std::string> out;
    std::istringstream in(ReadText(dir_ + "/run/audit.jsonl"));
    for (std::string line; std::getline(in, line);) {
      const size_t at = line.find("\"event\":\"") + 9;
      out.push_back(line.substr(at, line.find('"', at) - at));
    }
    return out;
  }
};

TEST_F(LaunchLeaseTest, HoldsEveryNodeWhileMpirunRunsAndRecordsIt) {
  testing::RunResult r = Launch("");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord launch: leased 2 nodes in " + Leases()));
  const std::string seen = ReadText(dir_ + "/seen");
  EXPECT_THAT(seen, HasSubstr("locked\n"));
  EXPECT_THAT(seen, HasSubstr("\"tenant\":\"acme\""));
  EXPECT_EQ(ReadText(LeaseFile("no1")), "");  // released after
  EXPECT_EQ(ReadText(LeaseFile("no2")), "");
  EXPECT_THAT(Events(), ElementsAre("lease_acquired", "launch_plan", "lease_released", "launch_exit"));
  EXPECT_THAT(ReadText(dir_ + "/run/audit.jsonl"), HasSubstr("\"nodes\":[\"no1\",\"no2\"],\"waited_ms\":"));
}

TEST_F(LaunchLeaseTest, ALeasedNodeRefusesTheLaunchAndStartsNothing) {
  Holder other(Leases(), {"no2"}, "globex");
  ASSERT_TRUE(other.held());
  testing::RunResult dry = Launch("--dry-run");
  EXPECT_EQ(dry.exit_code, 0) << dry.output;
  EXPECT_THAT(dry.output, HasSubstr("  no2 leased by tenant globex (job sha256 bbbbbbbbbbbbbbbb"));
  testing::RunResult r = Launch("");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord launch: error: node no2 is leased by tenant globex"));
  EXPECT_THAT(r.output, HasSubstr("pid " + std::to_string(other.pid()) + ") since 20"));
  EXPECT_THAT(r.output, HasSubstr("--wait-for-nodes[=SECONDS]"));
  EXPECT_FALSE(fs::exists(dir_ + "/seen"));  // mpirun never ran
  EXPECT_FALSE(fs::exists(dir_ + "/run/launch"));
  EXPECT_THAT(Events(), ElementsAre("lease_refused"));
  EXPECT_THAT(ReadText(dir_ + "/run/audit.jsonl"), HasSubstr("node no2 is leased by tenant globex"));
  EXPECT_EQ(ReadText(LeaseFile("no1")), "");  // no1 was given back

  r = Launch("--wait-for-nodes=1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord launch: waiting for node no2: leased by tenant globex"));
  EXPECT_THAT(r.output, HasSubstr("gave up after waiting 1 s"));
  EXPECT_THAT(Events(), ElementsAre("lease_refused", "lease_waiting", "lease_refused"));
  EXPECT_FALSE(fs::exists(dir_ + "/seen"));
}

TEST_F(LaunchLeaseTest, WaitingLaunchRunsOnceTheNodesAreFree) {
  auto other = std::make_unique<Holder>(Leases(), std::vector<std::string>{"no1"}, "globex");
  ASSERT_TRUE(other->held());
  std::thread release([&] {
    for (int i = 0; i < 500 && ReadText(dir_ + "/run/audit.jsonl").find("lease_waiting") == std::string::npos;
         ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    other->Finish();
  });
  testing::RunResult r = Launch("--wait-for-nodes");
  release.join();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("waiting for node no1: leased by tenant globex"));
  EXPECT_THAT(r.output, HasSubstr("no time limit"));
  EXPECT_THAT(ReadText(dir_ + "/seen"), HasSubstr("locked\n"));
  EXPECT_THAT(Events(),
              ElementsAre("lease_waiting", "lease_acquired", "launch_plan", "lease_released", "launch_exit"));
}

TEST_F(LaunchLeaseTest, StaleTakeoverIsSaidAndAudited) {
  WriteText(LeaseFile("no1"), LeaseRecordJson(Record("globex")));
  testing::RunResult r = Launch("");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("warning: node no1: took over a stale lease (left by tenant globex"));
  EXPECT_THAT(ReadText(dir_ + "/run/audit.jsonl"),
              HasSubstr("\"taken_over\":[{\"node\":\"no1\",\"previous\":{\"tenant\":\"globex\""));
}

TEST_F(LaunchLeaseTest, BadWaitFlagsAndAMissingLeaseDirAreClearErrors) {
  testing::RunResult r = Launch("--wait-for-nodes=0");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--wait-for-nodes=0: give the seconds to wait (1 or more)"));
  r = Launch("--wait-for-nodes=soon");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--wait-for-nodes 'soon' is not a whole number"));
  r = Launch("--wait-for-nodes --slurm");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("under --slurm, Slurm queues the job"));
  fs::remove_all(Leases());
  r = Launch("");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("fjord launch: error: node lease directory " + Leases()));
  EXPECT_FALSE(fs::exists(dir_ + "/seen"));
  EXPECT_THAT(Events(), ElementsAre("lease_refused"));
}

// ---- Lease keys: one node, several names -----------------------------------------------------------

proto::InventoryNode NodeNamed(const std::string& hostname, const std::string& address) {
  proto::InventoryNode n;
  n.set_hostname(hostname);
  n.set_address(address);
  return n;
}

TEST(LeaseKeyTest, KeysAreTheShortLowerCaseNameAndTheResolvedAddresses) {
  EXPECT_THAT(NodeLeaseKeys(NodeNamed("No1.OSL1.example", "127.0.0.1")), ElementsAre("@127.0.0.1", "no1"));
  EXPECT_THAT(NodeLeaseKeys(NodeNamed("no1", "")), ElementsAre("no1"));  // does not resolve here
  EXPECT_THAT(NodeLeaseKeys(NodeNamed("10.0.0.5", "")), ElementsAre("10.0.0.5", "@10.0.0.5"));
  // A name is resolved (/etc/hosts): "localhost" is 127.0.0.1 (and ::1 where listed).
  EXPECT_THAT(NodeLeaseKeys(NodeNamed("gpu-a", "localhost")), ::testing::Contains("@127.0.0.1"));
}

// The launch under test uses a second inventory that names the leased node no1 (10.0.0.1) of the
// first differently; the holder has the leases a launch of the first inventory takes. The refusal
// names the node as the launching inventory names it (and the address it shares).
TEST_F(LaunchLeaseTest, AnotherInventorysNameForALeasedNodeStillConflicts) {
  Holder other(Leases(), NodeLeaseKeys(NodeNamed("no1", "10.0.0.1")), "globex");
  ASSERT_TRUE(other.held());
  const std::string node2 =
      "node { hostname: \"no2\" address: \"10.0.0.2\" jurisdiction: \"NO\" site: \"osl1\" }\n";
  const std::string leases = "lease_dir: \"" + Leases() + "\"\n";
  struct Case {
    std::string node1, refusal;
  } cases[] = {
      // Different hostname text, same address.
      {"node { hostname: \"node-one\" address: \"10.0.0.1\" jurisdiction: \"NO\" site: \"osl1\" }\n",
       "node node-one (address 10.0.0.1) is leased by tenant globex"},
      // The FQDN, in other case, without an address (it does not resolve here).
      {"node { hostname: \"NO1.osl1.example\" jurisdiction: \"NO\" site: \"osl1\" }\n",
       "node NO1.osl1.example is leased by tenant globex"},
  };
  for (const Case& c : cases) {
    WriteText(dir_ + "/inv.textproto", c.node1 + node2 + leases);
    testing::RunResult r = Launch("");
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr(c.refusal)) << c.node1;
    EXPECT_FALSE(fs::exists(dir_ + "/seen"));  // mpirun never ran
  }
  // A node that shares neither name nor address is free.
  WriteText(dir_ + "/inv.textproto",
            "node { hostname: \"no3\" address: \"10.0.0.3\" jurisdiction: \"NO\" site: \"osl1\" }\n" + node2 +
                leases);
  testing::RunResult r = Launch("");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(ReadText(dir_ + "/run/audit.jsonl"),
              HasSubstr("\"lease_keys\":[\"@10.0.0.2\",\"@10.0.0.3\",\"no2\",\"no3\"]"));
}

}  // namespace
}  // namespace fjord
