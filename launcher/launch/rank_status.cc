// Per-rank start and end records (launch/rank_status.h).
#include "launcher/launch/rank_status.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include "common/env.h"
#include "common/file_util.h"
#include "runtime/tenancy/audit.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

struct Self {
  std::mutex mu;
  std::string path;  // "" until RecordRankStart
  int rank = -1;
  std::string host;
  bool ended = false;
};
Self& Me() {
  static Self* self = new Self;  // never destroyed: a signal watcher may record after main returns
  return *self;
}

// One line per field; the detail last, on one line.
Status WriteRecord(const Self& s, const std::string& how, const std::string& detail) {
  std::string text =
      "rank " + std::to_string(s.rank) + "\nhost " + s.host + "\npid " + std::to_string(::getpid()) + "\n";
  if (how == "waiting" && !detail.empty()) {
    std::string missing;
    for (int r : MissingRanksIn(detail)) missing += (missing.empty() ? "" : ",") + std::to_string(r);
    std::string flat = detail;
    std::replace(flat.begin(), flat.end(), '\n', ' ');
    text += "waiting " + flat + "\nmissing " + missing + "\n";
  } else if (!how.empty() && how != "waiting") {
    std::string missing;
    for (int r : MissingRanksIn(detail)) missing += (missing.empty() ? "" : ",") + std::to_string(r);
    std::string flat = detail;
    std::replace(flat.begin(), flat.end(), '\n', ' ');
    text += "ended " + how + "\nmissing " + missing + "\ndetail " + flat + "\n";
  }
  return WriteFileAtomic(s.path, {{text.data(), text.size()}});
}

}  // namespace

void RecordRankStart(int rank, const std::string& host) {
  const std::optional<std::string> dir = GetEnv(kRankStatusDirEnv);
  if (!dir || dir->empty()) return;
  Self& s = Me();
  std::lock_guard<std::mutex> lock(s.mu);
  std::error_code ec;
  fs::create_directories(*dir, ec);
  s.path = *dir + "/rank-" + std::to_string(rank);
  s.rank = rank;
  s.host = host;
  if (Status w = WriteRecord(s, "", ""); !w.ok()) {
    std::fprintf(stderr, "fjord: warning: rank %d cannot write its start record: %s\n", rank,
                 w.message().c_str());
  }
}

void RecordRankEnd(const std::string& how, const std::string& detail) {
  Self& s = Me();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.path.empty() || s.ended) return;
  s.ended = true;
  if (Status w = WriteRecord(s, how, detail); !w.ok()) {
    std::fprintf(stderr, "fjord: warning: rank %d cannot write its end record: %s\n", s.rank,
                 w.message().c_str());
  }
}

std::string RankSignalFile() {
  Self& s = Me();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.path.empty() ? "" : s.path + ".signal";
}

void RecordRankWaiting(const std::string& detail) {
  Self& s = Me();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.path.empty() || s.ended) return;
  if (Status w = WriteRecord(s, "waiting", detail); !w.ok()) {
    std::fprintf(stderr, "fjord: warning: rank %d cannot write its record: %s\n", s.rank,
                 w.message().c_str());
  }
}

std::vector<int> MissingRanksIn(const std::string& text) {
  std::set<int> found;
  // "waiting for rank N (host H)"
  for (size_t at = text.find("waiting for rank "); at != std::string::npos;
       at = text.find("waiting for rank ", at + 1)) {
    found.insert(std::atoi(text.c_str() + at + 17));
  }
  // "ranks not arrived: 1 (host no2: ...), 3 (host se1: ...)" and "ranks not answering within 5 s: 1
  // (host no2)": each number directly followed by " (host" up to the next "; ".
  for (const char* lead : {"ranks not arrived: ", "ranks not answering within "}) {
    for (size_t at = text.find(lead); at != std::string::npos; at = text.find(lead, at + 1)) {
      const size_t end = std::min(text.find("; ", at), text.size());
      for (size_t h = text.find(" (host", at); h < end; h = text.find(" (host", h + 1)) {
        size_t b = h;
        while (b > at && std::isdigit(static_cast<unsigned char>(text[b - 1]))) --b;
        if (b < h) found.insert(std::atoi(text.c_str() + b));
      }
    }
  }
  return {found.begin(), found.end()};
}

StatusOr<std::vector<RankStatus>> ReadRankStatuses(const std::string& dir) {
  std::vector<RankStatus> out;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return out;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with("rank-") || name.find('.') != std::string::npos) continue;
    FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(entry.path().string(), "rank status"));
    RankStatus s;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
      const size_t sp = line.find(' ');
      const std::string key = line.substr(0, sp), value = sp == std::string::npos ? "" : line.substr(sp + 1);
      if (key == "rank") s.rank = std::atoi(value.c_str());
      if (key == "host") s.host = value;
      if (key == "pid") s.pid = std::atol(value.c_str());
      if (key == "ended") s.ended = value;
      if (key == "detail") s.detail = value;
      if (key == "waiting") s.waiting = value;
      if (key == "missing") {
        std::istringstream list(value);
        for (std::string r; std::getline(list, r, ',');) s.missing.push_back(std::atoi(r.c_str()));
      }
    }
    if (s.rank < 0) return FailedPrecondition("rank status " + entry.path().string() + " names no rank");
    if (s.ended.empty()) {  // the signal handler's own record, when the watcher had no time to write
      StatusOr<std::string> sig = ReadWholeFile(entry.path().string() + ".signal", "rank signal record");
      if (sig.ok() && sig->starts_with("signal ")) {
        s.ended = sig->substr(0, sig->find('\n'));
        s.detail = "recorded by the signal handler";
      }
    }
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const RankStatus& a, const RankStatus& b) { return a.rank < b.rank; });
  return out;
}

namespace {

// Failed rank -> the evidence, for a job of `ranks` ranks (the rules of FindFailedNodes).
std::map<int, std::string> FailedRanks(const std::vector<RankStatus>& statuses, int ranks) {
  std::vector<const RankStatus*> by_rank(static_cast<size_t>(ranks), nullptr);
  for (const RankStatus& s : statuses) {
    if (s.rank >= 0 && s.rank < ranks) by_rank[static_cast<size_t>(s.rank)] = &s;
  }
  std::map<int, std::string> why;  // failed rank -> the evidence
  for (const RankStatus& s : statuses) {
    if (s.ended.empty() && s.waiting.empty()) continue;
    const std::string& said = s.ended.empty() ? s.waiting : s.detail;
    for (int m : s.missing) {
      // A note of a rank that did not end (it was stalled when it was killed) names only a peer that
      // did not end through fjord's paths either.
      const RankStatus* named = m >= 0 && m < ranks ? by_rank[static_cast<size_t>(m)] : nullptr;
      if (s.ended.empty() && named != nullptr && !named->ended.empty()) continue;
      if (m >= 0 && m < ranks && m != s.rank && !why.count(m))
        why[m] = "named missing by rank " + std::to_string(s.rank) + " (" + said.substr(0, 160) + ")";
    }
  }
  for (int r = 0; r < ranks; ++r) {
    const RankStatus* s = by_rank[static_cast<size_t>(r)];
    if (s == nullptr) {
      why[r] = "no start record (it never started)";
    } else if (s->ended.empty() && s->waiting.empty()) {
      why[r] = "no end recorded (pid " + std::to_string(s->pid) + " on " + s->host + " ended unseen)";
    } else if (s->ended.empty()) {
      // Stalled, then gone without an end, not even the signal handler's (a teardown's SIGTERM leaves
      // that): killed outright. Its note clears it only when a peer it waited for has no end either.
      bool peer_unseen = false;
      for (int m : s->missing) {
        const RankStatus* named = m >= 0 && m < ranks ? by_rank[static_cast<size_t>(m)] : nullptr;
        peer_unseen = peer_unseen || named == nullptr || named->ended.empty();
      }
      if (!peer_unseen)
        why[r] = "no end recorded (pid " + std::to_string(s->pid) + " on " + s->host +
                 " ended unseen; its last note: " + s->waiting.substr(0, 120) + ")";
    } else if (s->ended == "parent_lost") {
      why[r] = "lost its parent (orted): " + s->detail.substr(0, 160);
    }
  }
  return why;
}

// The nodes of the failed ranks in `why`, `node_of` naming each rank's node ("" when it is unknown),
// in rank order; `nodes`: how many nodes the job ran on. When every node would be marked on a job of
// two or more nodes, none is: the records do not tell which one failed. A job on one node marks it.
FailedNodes NodesOfFailedRanks(const std::map<int, std::string>& why,
                               const std::function<std::string(int)>& node_of, size_t nodes) {
  FailedNodes out;
  std::string unplaced;
  for (const auto& [rank, evidence] : why) {
    const std::string node = node_of(rank);
    if (node.empty()) {
      unplaced += (unplaced.empty() ? "" : "; ") + ("rank " + std::to_string(rank) + ": " + evidence);
      continue;
    }
    out.evidence += std::string(out.evidence.empty() ? "" : "; ") + "rank " + std::to_string(rank) + " (" +
                    node + "): " + evidence;
    if (std::find(out.hosts.begin(), out.hosts.end(), node) == out.hosts.end()) out.hosts.push_back(node);
  }
  if (!unplaced.empty())
    out.evidence += std::string(out.evidence.empty() ? "" : "; ") + unplaced + " (on no node it recorded)";
  if (!out.hosts.empty() && out.hosts.size() == nodes && nodes > 1) {
    out.evidence = "every node's ranks lack an end record (" + out.evidence + ")";
    out.hosts.clear();
  }
  return out;
}

}  // namespace

FailedNodes FindFailedNodes(const std::vector<RankStatus>& statuses, const Placement& placement) {
  // Ranks fill the nodes in placement order, as mpirun --map-by slot places them.
  std::vector<std::string> node_of_rank;
  for (const PlacedNode& n : placement.nodes)
    node_of_rank.insert(node_of_rank.end(), n.ranks, n.node.hostname());
  return NodesOfFailedRanks(
      FailedRanks(statuses, placement.ranks),
      [&](int r) { return static_cast<size_t>(r) < node_of_rank.size() ? node_of_rank[r] : std::string(); },
      placement.nodes.size());
}

FailedNodes FindFailedSlurmNodes(const std::vector<RankStatus>& statuses, int ranks) {
  std::map<int, std::string> node_of_rank;  // as each rank's own record names its node
  std::vector<std::string> all;
  for (const RankStatus& s : statuses) {
    node_of_rank[s.rank] = s.host;
    if (std::find(all.begin(), all.end(), s.host) == all.end()) all.push_back(s.host);
  }
  return NodesOfFailedRanks(
      FailedRanks(statuses, ranks),
      [&](int r) {
        auto it = node_of_rank.find(r);
        return it == node_of_rank.end() ? std::string() : it->second;
      },
      all.size());
}

bool RecordMissingJobEnd(const std::string& audit_path, const std::string& actor, int64_t after_seq,
                         int exit_code, const std::string& cause, const std::string& rank_status_dir,
                         const std::string& who) {
  std::error_code ec;
  if (audit_path.empty() || !fs::exists(audit_path, ec)) return false;
  StatusOr<int64_t> open = JobStartWithoutEnd(audit_path, after_seq);
  if (!open.ok() || *open == 0) {
    if (!open.ok())
      std::fprintf(stderr, "%s: warning: cannot check the job's end record: %s\n", who.c_str(),
                   open.status().message().c_str());
    return false;
  }
  // What rank 0 itself left: its end record, the signal handler's, a stall note, or nothing.
  std::string rank0 = "rank 0 left no record";
  int signal = 0;
  if (StatusOr<std::vector<RankStatus>> st = ReadRankStatuses(rank_status_dir); st.ok()) {
    for (const RankStatus& s : *st) {
      if (s.rank != 0) continue;
      if (s.ended.starts_with("signal ")) signal = std::atoi(s.ended.c_str() + 7);
      rank0 = "rank 0 (pid " + std::to_string(s.pid) + " on " + s.host + ") " +
              (!s.ended.empty()     ? "ended: " + s.ended
               : !s.waiting.empty() ? "was last waiting " + s.waiting.substr(0, 160) + ", then ended unseen"
                                    : std::string("ended unseen (killed outright)"));
    }
  }
  AuditRecord rec;
  rec.Bool("ok", false)
      .Str("error", "the job ended (exit code " + std::to_string(exit_code) +
                        ") before rank 0 recorded its end: " + rank0 + (cause.empty() ? "" : "; " + cause))
      .Int("exit_code", exit_code)
      .Str("recorded_by", who)
      .Int("job_start_seq", *open);
  if (signal != 0) rec.Int("signal", signal);
  StatusOr<std::unique_ptr<AuditLog>> audit = AuditLog::Open(audit_path, actor);
  StatusOr<AuditAnchor> end =
      audit.ok() ? (*audit)->Append("job_end", rec) : StatusOr<AuditAnchor>(audit.status());
  if (!end.ok()) {
    std::fprintf(stderr, "%s: warning: rank 0 recorded no job_end, and neither can %s: %s\n", who.c_str(),
                 who.c_str(), end.status().message().c_str());
    return false;
  }
  std::fprintf(stderr, "%s: rank 0 recorded no job_end (%s): recorded it in %s\n", who.c_str(), rank0.c_str(),
               audit_path.c_str());
  return true;
}

}  // namespace fjord
