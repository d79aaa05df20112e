// Node leases (launcher/lease.h). The lock is flock(2): it belongs to the open file description, so
// it survives fork into mpirun, is dropped by the kernel when the last process holding it ends, and
// works on local file systems and NFSv4 (as the audit log's lock does). Lease files are never
// unlinked (a release empties the record): unlinking a locked file lets a second launch lock a new
// file of the same name while a third still waits on the old one.
#include "launcher/lease.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <optional>
#include <thread>

#include "common/host.h"
#include "common/json.h"
#include "common/time_util.h"
#include "runtime/tenancy/audit.h"

namespace fjord {
namespace {

std::string LeasePath(const std::string& dir, const std::string& host) { return dir + "/" + host + ".lease"; }

std::string ErrnoText() { return std::strerror(errno); }

// How messages name the node of a lease key: its inventory name from `names` ("no1", and "no1
// (address 10.0.0.1)" for an address key), else the key ("no1", "at address 10.0.0.1").
std::string NodeText(const std::string& key, const LeaseNames* names = nullptr) {
  const bool address = key.starts_with('@');
  if (names != nullptr) {
    if (auto it = names->find(key); it != names->end()) {
      return address ? it->second + " (address " + key.substr(1) + ")" : it->second;
    }
  }
  return address ? "at address " + key.substr(1) : key;
}

// The numeric addresses `name` resolves to (getaddrinfo: /etc/hosts, DNS), each as getnameinfo
// writes it with NI_NUMERICHOST; `numeric_only` accepts a numeric address only (no lookup).
std::vector<std::string> NumericAddresses(const std::string& name, bool numeric_only) {
  std::vector<std::string> out;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = numeric_only ? AI_NUMERICHOST : 0;
  addrinfo* found = nullptr;
  if (name.empty() || ::getaddrinfo(name.c_str(), nullptr, &hints, &found) != 0) return out;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char host[NI_MAXHOST];
    if (::getnameinfo(a->ai_addr, a->ai_addrlen, host, sizeof(host), nullptr, 0, NI_NUMERICHOST) == 0) {
      out.push_back(host);
    }
  }
  ::freeaddrinfo(found);
  return out;
}

std::vector<std::string> SortedUnique(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

// The directory must exist: creating it here would make a lease only this host sees.
Status CheckLeaseDir(const std::string& dir) {
  struct stat st {};
  if (dir.empty() || dir[0] != '/') {
    return InvalidArgument("lease directory \"" + dir +
                           "\" is not an absolute path: set the inventory's lease_dir to a directory every "
                           "launch host mounts at the same path");
  }
  if (::stat(dir.c_str(), &st) != 0) {
    return NotFound(
        "node lease directory " + dir + ": " + ErrnoText() +
        ". Launch leases every node it uses there, so that no two tenants' jobs share a node; the "
        "operator creates it on storage every launch host sees (`install -d -m 1777 " +
        dir +
        "`) or names another with lease_dir in the inventory (docs/SOVEREIGNTY.md, \"Node "
        "leases\"). Nothing was started");
  }
  if (!S_ISDIR(st.st_mode)) {
    return FailedPrecondition("node lease directory " + dir +
                              " is not a directory: fix the inventory's lease_dir. Nothing was started");
  }
  return OkStatus();
}

// The record in an open lease file ("" when empty).
StatusOr<std::string> ReadRecord(int fd, const std::string& path) {
  std::string text(4096, '\0');
  ssize_t n;
  do {
    n = ::pread(fd, text.data(), text.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return FailedPrecondition("cannot read lease " + path + ": " + ErrnoText());
  text.resize(static_cast<size_t>(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return text;
}

// Replaces the record: written over the old one, then cut to length, so a reader sees the old
// record or the new one in full, never a mix of the two.
Status WriteRecord(int fd, const std::string& path, const std::string& text) {
  const std::string line = text.empty() ? "" : text + "\n";
  if (!line.empty() && ::pwrite(fd, line.data(), line.size(), 0) != static_cast<ssize_t>(line.size())) {
    return FailedPrecondition("cannot write lease " + path + ": " + ErrnoText());
  }
  if (::ftruncate(fd, static_cast<off_t>(line.size())) != 0 || ::fsync(fd) != 0) {
    return FailedPrecondition("cannot write lease " + path + ": " + ErrnoText());
  }
  return OkStatus();
}

// Takes the lock of an open lease file without blocking: true when taken. When another process
// holds it, *conflict names the holder from its record. A launch that has just locked may not have
// written its record yet, and a --dry-run peeks with a shared lock for an instant: so before
// calling the holder unknown, look (and try) again briefly.
StatusOr<bool> TryLock(int fd, const std::string& host, const std::string& path, LeaseConflict* conflict) {
  for (int attempt = 0; attempt < 5; ++attempt) {
    int rc;
    do {
      rc = ::flock(fd, LOCK_EX | LOCK_NB);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) return true;
    if (errno != EWOULDBLOCK) {
      return FailedPrecondition("cannot lock node lease " + path + ": " + ErrnoText() +
                                "; the lease directory must be on a file system with working flock "
                                "(local, or NFSv4). Nothing was started");
    }
    *conflict = LeaseConflict();
    conflict->host = host;
    StatusOr<std::string> text = ReadRecord(fd, path);
    if (text.ok() && !text->empty()) {
      if (StatusOr<LeaseRecord> r = ParseLeaseRecord(*text, path); r.ok()) {
        conflict->known = true;
        conflict->holder = *r;
        return false;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// The holder of a lease file, read without locking (for --dry-run): held when a shared lock cannot
// be taken; nullopt when free.
std::optional<LeaseConflict> Peek(int fd, const std::string& host, const std::string& path) {
  if (::flock(fd, LOCK_SH | LOCK_NB) == 0) {
    ::flock(fd, LOCK_UN);
    return std::nullopt;
  }
  LeaseConflict c;
  c.host = host;
  StatusOr<std::string> text = ReadRecord(fd, path);
  if (text.ok() && !text->empty()) {
    if (StatusOr<LeaseRecord> r = ParseLeaseRecord(*text, path); r.ok()) {
      c.known = true;
      c.holder = *r;
    }
  }
  return c;
}

std::string HolderText(const LeaseConflict& c) {
  return c.known ? DescribeHolder(c.holder) : std::string("another launch (its record is not written yet)");
}

std::string ConflictMessage(const LeaseConflict& c, const std::string& dir, const LeaseNames* names) {
  return "node " + NodeText(c.host, names) + " is leased by " + HolderText(c) + " (lease " +
         LeasePath(dir, c.host) + "): a node runs one job at a time, so no two tenants ever share one";
}

}  // namespace

std::string LeaseRecordJson(const LeaseRecord& r) {
  return "{\"tenant\":" + JsonQuote(r.tenant) + ",\"job_sha256\":" + JsonQuote(r.job_sha256) +
         ",\"launch_id\":" + JsonQuote(r.launch_id) + ",\"launch_host\":" + JsonQuote(r.launch_host) +
         ",\"pid\":" + std::to_string(r.pid) + ",\"since\":" + JsonQuote(r.since) +
         ",\"audit_log\":" + JsonQuote(r.audit_log) + "}";
}

StatusOr<LeaseRecord> ParseLeaseRecord(std::string_view text, const std::string& source) {
  FJORD_ASSIGN_OR_RETURN(JsonValue v, ParseJson(text, source));
  if (!v.is_object()) return InvalidArgument(source + ": a lease record is a JSON object");
  LeaseRecord r;
  for (auto [key, out] :
       std::initializer_list<std::pair<const char*, std::string*>>{{"tenant", &r.tenant},
                                                                   {"job_sha256", &r.job_sha256},
                                                                   {"launch_id", &r.launch_id},
                                                                   {"launch_host", &r.launch_host},
                                                                   {"since", &r.since},
                                                                   {"audit_log", &r.audit_log}}) {
    const JsonValue* f = v.Find(key);
    if (f == nullptr || !f->is_string())
      return InvalidArgument(source + ": lease record has no string field \"" + key + "\"");
    *out = f->text();
  }
  const JsonValue* pid = v.Find("pid");
  if (pid == nullptr || !pid->AsInt64())
    return InvalidArgument(source + ": lease record has no integer field \"pid\"");
  r.pid = *pid->AsInt64();
  return r;
}

std::string DescribeHolder(const LeaseRecord& r) {
  return (r.tenant.empty() ? std::string("a job without tenant") : "tenant " + r.tenant) + " (job sha256 " +
         r.job_sha256.substr(0, 16) + ", launch " + r.launch_id + " on " + r.launch_host + ", pid " +
         std::to_string(r.pid) + ") since " + r.since;
}

// ---- NodeLeases ----------------------------------------------------------------------------------

NodeLeases::~NodeLeases() { (void)Release(); }

Status NodeLeases::Release() {
  if (released_) return OkStatus();
  released_ = true;
  // Said before the locks drop, so that this record's time precedes the next holder's lease_acquired.
  if (on_release_ && !fds_.empty()) on_release_(*this);
  Status first;
  for (size_t i = 0; i < fds_.size(); ++i) {
    // Empty the record before unlocking: a lease found unlocked with a record is a crashed launch's.
    Status s = WriteRecord(fds_[i], LeasePath(dir_, hosts_[i]), "");
    if (::flock(fds_[i], LOCK_UN) != 0 && s.ok())
      s = FailedPrecondition("cannot unlock lease of " + hosts_[i]);
    ::close(fds_[i]);
    if (first.ok() && !s.ok()) first = s;
  }
  fds_.clear();
  return first;
}

StatusOr<std::unique_ptr<NodeLeases>> TryAcquireLeases(const std::string& dir,
                                                       const std::vector<std::string>& hosts,
                                                       const LeaseRecord& record, LeaseConflict* conflict,
                                                       const LeaseNames* names) {
  *conflict = LeaseConflict();
  FJORD_RETURN_IF_ERROR(CheckLeaseDir(dir));
  // First every lock; records are touched only once all are held, so a failed attempt changes
  // nothing on disk (a stale record stays for the launch that takes it over).
  std::vector<std::string> sorted = SortedUnique(hosts);
  std::vector<int> fds;
  auto close_all = [&fds] {
    for (int fd : fds) ::close(fd);  // also unlocks
  };
  for (const std::string& host : sorted) {
    const std::string path = LeasePath(dir, host);
    // Not O_CLOEXEC: mpirun inherits the lock, so it lasts as long as the job (see lease.h).
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW, 0664);
    if (fd < 0) {
      close_all();
      return FailedPrecondition("cannot open node lease " + path + ": " + ErrnoText() +
                                "; every user who launches must be able to write the lease directory and "
                                "its files (docs/SOVEREIGNTY.md, \"Node leases\"). Nothing was started");
    }
    fds.push_back(fd);
    StatusOr<bool> locked = TryLock(fd, host, path, conflict);
    if (!locked.ok() || !*locked) {
      close_all();
      if (!locked.ok()) return locked.status();
      return FailedPrecondition(ConflictMessage(*conflict, dir, names));
    }
    (void)::fchmod(fd, 0664);  // other launchers must write it too; fails harmlessly on others' files
  }
  std::unique_ptr<NodeLeases> leases(new NodeLeases());
  leases->dir_ = dir;
  leases->hosts_ = sorted;
  leases->fds_ = fds;
  LeaseRecord mine = record;
  mine.since = UtcNow();
  const std::string line = LeaseRecordJson(mine);
  for (size_t i = 0; i < sorted.size(); ++i) {
    const std::string path = LeasePath(dir, sorted[i]);
    FJORD_ASSIGN_OR_RETURN(std::string old, ReadRecord(fds[i], path));
    if (!old.empty()) {
      StaleLease stale;
      stale.host = sorted[i];
      if (StatusOr<LeaseRecord> r = ParseLeaseRecord(old, path); r.ok()) {
        stale.known = true;
        stale.previous = *r;
      } else {
        stale.problem = r.status().message();
      }
      leases->taken_over_.push_back(std::move(stale));
    }
    FJORD_RETURN_IF_ERROR(WriteRecord(fds[i], path, line));
  }
  return leases;
}

StatusOr<std::unique_ptr<NodeLeases>> AcquireLeases(const std::string& dir,
                                                    const std::vector<std::string>& hosts,
                                                    const LeaseRecord& record, int wait_s,
                                                    const std::function<void(const LeaseConflict&)>& on_wait,
                                                    const LeaseNames* names) {
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  auto backoff = std::chrono::milliseconds(100);
  std::vector<std::string> announced;  // "host\nholder" already passed to on_wait
  for (;;) {
    LeaseConflict conflict;
    StatusOr<std::unique_ptr<NodeLeases>> got = TryAcquireLeases(dir, hosts, record, &conflict, names);
    if (got.ok()) {
      (*got)->waited_seconds_ = elapsed();
      return got;
    }
    if (conflict.host.empty()) return got.status();  // not a conflict: nothing to wait for
    const std::string what = got.status().message();
    if (wait_s < 0) {
      return FailedPrecondition(
          what +
          ". Nothing was started. Wait for it with --wait-for-nodes[=SECONDS], or launch "
          "with an inventory whose allowed nodes are free");
    }
    if (wait_s > 0 && elapsed() >= wait_s) {
      return FailedPrecondition("gave up after waiting " + std::to_string(wait_s) +
                                " s (--wait-for-nodes=" + std::to_string(wait_s) + "): " + what +
                                ". Nothing was started. Wait longer, or launch with an inventory whose "
                                "allowed nodes are free");
    }
    const std::string key = conflict.host + "\n" + HolderText(conflict);
    if (on_wait && std::find(announced.begin(), announced.end(), key) == announced.end()) {
      announced.push_back(key);
      on_wait(conflict);
    }
    auto nap = backoff;
    if (wait_s > 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::duration<double>(wait_s - elapsed()));
      nap = std::max(std::chrono::milliseconds(1), std::min(nap, left));
    }
    std::this_thread::sleep_for(nap);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
  }
}

StatusOr<std::vector<LeaseConflict>> CurrentHolders(const std::string& dir,
                                                    const std::vector<std::string>& hosts) {
  FJORD_RETURN_IF_ERROR(CheckLeaseDir(dir));
  std::vector<LeaseConflict> out;
  for (const std::string& host : SortedUnique(hosts)) {
    const std::string path = LeasePath(dir, host);
    const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) continue;  // never leased
      return FailedPrecondition("cannot open node lease " + path + ": " + ErrnoText());
    }
    if (std::optional<LeaseConflict> c = Peek(fd, host, path)) out.push_back(*c);
    ::close(fd);
  }
  return out;
}

std::vector<std::string> NodeLeaseKeys(const proto::InventoryNode& node) {
  std::string name = node.hostname();
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char ch) { return std::tolower(ch); });
  // A hostname that is itself a numeric address is not cut at its first '.'.
  if (NumericAddresses(name, /*numeric_only=*/true).empty()) name = name.substr(0, name.find('.'));
  std::vector<std::string> keys = {name};
  for (const std::string& a :
       NumericAddresses(node.address().empty() ? node.hostname() : node.address(), false)) {
    keys.push_back("@" + a);
  }
  return SortedUnique(keys);
}

// ---- fjord launch ---------------------------------------------------------------------------------

namespace {

std::string HolderJson(const LeaseConflict& c) { return c.known ? LeaseRecordJson(c.holder) : "null"; }

std::vector<std::string> PlannedHosts(const LaunchPlan& plan) {
  std::vector<std::string> hosts;
  for (const PlacedNode& n : plan.placement.nodes) hosts.push_back(n.node.hostname());
  return hosts;
}

// The inventory name of every lease key of the plan, for messages.
LeaseNames PlannedNames(const LaunchPlan& plan) {
  LeaseNames names;
  for (const PlacedNode& n : plan.placement.nodes) {
    for (const std::string& k : NodeLeaseKeys(n.node)) {
      std::string& name = names[k];
      if (name.empty()) {
        name = n.node.hostname();
      } else if (name != n.node.hostname()) {
        name += "/" + n.node.hostname();
      }
    }
  }
  return names;
}

// Every lease key of every planned node.
std::vector<std::string> PlannedKeys(const LaunchPlan& plan) {
  std::vector<std::string> keys;
  for (const PlacedNode& n : plan.placement.nodes) {
    for (std::string& k : NodeLeaseKeys(n.node)) keys.push_back(std::move(k));
  }
  return SortedUnique(keys);
}

void Warn(const Status& s) {
  if (!s.ok())
    std::fprintf(stderr, "fjord launch: warning: cannot record in the audit log: %s\n", s.message().c_str());
}

}  // namespace

StatusOr<std::unique_ptr<NodeLeases>> LeaseNodesForLaunch(const LaunchPlan& plan,
                                                          const LaunchOptions& options,
                                                          const std::string& launch_id) {
  const std::string dir = plan.lease_dir;
  const std::vector<std::string> hosts = SortedUnique(PlannedHosts(plan));
  const std::vector<std::string> keys = PlannedKeys(plan);
  FJORD_ASSIGN_OR_RETURN(std::shared_ptr<AuditLog> audit,
                         AuditLog::Open(plan.audit_log, "launch@" + ThisHostname()));
  LeaseRecord record;
  record.tenant = plan.policy.tenant;
  record.job_sha256 = plan.job_digest;
  record.launch_id = launch_id;
  record.launch_host = ThisHostname();
  record.pid = ::getpid();
  record.audit_log = plan.audit_log;
  const int wait_s = options.wait_for_nodes_s;
  const LeaseNames names = PlannedNames(plan);
  auto on_wait = [&](const LeaseConflict& c) {
    std::printf("fjord launch: waiting for node %s: leased by %s; %s (--wait-for-nodes)\n",
                NodeText(c.host, &names).c_str(), HolderText(c).c_str(),
                wait_s > 0 ? ("giving up after " + std::to_string(wait_s) + " s").c_str() : "no time limit");
    std::fflush(stdout);
    Warn(audit
             ->Append("lease_waiting", AuditRecord()
                                           .Str("launch_id", launch_id)
                                           .Str("lease_dir", dir)
                                           .Str("node", c.host)
                                           .Raw("holder", HolderJson(c))
                                           .Int("limit_s", wait_s))
             .status());
  };
  StatusOr<std::unique_ptr<NodeLeases>> leases = AcquireLeases(dir, keys, record, wait_s, on_wait, &names);
  if (!leases.ok()) {
    Warn(audit
             ->Append("lease_refused", AuditRecord()
                                           .Str("launch_id", launch_id)
                                           .Str("tenant", plan.policy.tenant)
                                           .Str("job_sha256", plan.job_digest)
                                           .Str("lease_dir", dir)
                                           .Raw("nodes", JsonQuoteList(hosts))
                                           .Raw("lease_keys", JsonQuoteList(keys))
                                           .Str("message", leases.status().message()))
             .status());
    return leases.status();
  }
  std::string taken = "[";
  for (const StaleLease& s : (*leases)->taken_over()) {
    std::fprintf(
        stderr,
        "fjord launch: warning: node %s: took over a stale lease (%s): its launch ended without "
        "releasing it (crashed or killed) and no process holds it any more\n",
        NodeText(s.host, &names).c_str(),
        (s.known ? "left by " + DescribeHolder(s.previous) : "unreadable record: " + s.problem).c_str());
    if (taken.size() > 1) taken += ",";
    taken += "{\"node\":" + JsonQuote(s.host) +
             ",\"previous\":" + (s.known ? LeaseRecordJson(s.previous) : "null") + "}";
  }
  taken += "]";
  std::printf(
      "fjord launch: leased %zu node%s in %s%s\n", hosts.size(), hosts.size() == 1 ? "" : "s", dir.c_str(),
      (*leases)->waited_seconds() >= 0.05
          ? (" after waiting " + std::to_string(static_cast<int>((*leases)->waited_seconds() + 0.5)) + " s")
                .c_str()
          : "");
  Status logged = audit
                      ->Append("lease_acquired",
                               AuditRecord()
                                   .Str("launch_id", launch_id)
                                   .Str("tenant", plan.policy.tenant)
                                   .Str("lease_dir", dir)
                                   .Raw("nodes", JsonQuoteList(hosts))
                                   .Int("waited_ms", static_cast<int64_t>((*leases)->waited_seconds() * 1000))
                                   .Raw("taken_over", taken)
                                   .Raw("lease_keys", JsonQuoteList(keys)))
                      .status();
  if (!logged.ok()) return logged;  // the leases are released on return: nothing unrecorded runs
  (*leases)->set_on_release([audit, launch_id, dir, hosts](const NodeLeases& l) {
    Warn(audit
             ->Append("lease_released", AuditRecord()
                                            .Str("launch_id", launch_id)
                                            .Str("lease_dir", dir)
                                            .Raw("nodes", JsonQuoteList(hosts))
                                            .Raw("lease_keys", JsonQuoteList(l.hosts())))
             .status());
  });
  return leases;
}

std::string DescribeLeases(const LaunchPlan& plan) {
  StatusOr<std::vector<LeaseConflict>> held = CurrentHolders(plan.lease_dir, PlannedKeys(plan));
  if (!held.ok()) return "fjord launch: node leases: " + held.status().message() + "\n";
  if (held->empty())
    return "fjord launch: node leases in " + plan.lease_dir + ": every planned node is free\n";
  std::string out = "fjord launch: node leases in " + plan.lease_dir +
                    " (a launch now would refuse, or wait with --wait-for-nodes):\n";
  const LeaseNames names = PlannedNames(plan);
  for (const LeaseConflict& c : *held)
    out += "  " + NodeText(c.host, &names) + " leased by " + HolderText(c) + "\n";
  return out;
}

}  // namespace fjord
