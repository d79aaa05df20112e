// Slurm commands for `fjord launch --slurm`: sinfo for the nodes and their features, sbatch to
// submit, scontrol to follow a job. We read the commands' stable machine-readable forms
// (sinfo -h -o with '|' separators, sbatch --parsable, scontrol -o) rather than linking libslurm,
// whose ABI changes with every Slurm release.
#include "launcher/slurm.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "common/env.h"
#include "common/text.h"
#include "launcher/launch.h"

namespace fjord {
namespace {

std::string Trim(std::string_view s) {
  const size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string_view::npos) return "";
  const size_t b = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(a, b - a + 1));
}

std::string OneLine(const std::string& s) {
  std::string out = Trim(s);
  for (char& c : out) {
    if (c == '\n') c = ' ';
  }
  return out.empty() ? "(nothing)" : out;
}

}  // namespace

CommandOutput RunCaptured(const std::vector<std::string>& argv) {
  CommandOutput out;
  int fds[2];
  if (::pipe(fds) != 0) return {127, std::string("pipe: ") + std::strerror(errno)};
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return {127, std::string("fork: ") + std::strerror(errno)};
  }
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "cannot run %s: %s", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(fds[1]);
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n > 0) {
      out.output.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  out.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return out;
}

// ---- Nodes from sinfo ---------------------------------------------------------------------------

std::vector<std::string> SinfoCommand(const std::string& partition) {
  std::vector<std::string> argv = {"sinfo", "--noheader", "--Node", "--format=%N|%f|%t"};
  if (!partition.empty()) argv.push_back("--partition=" + partition);
  return argv;
}

StatusOr<std::vector<proto::InventoryNode>> ParseSinfoNodes(std::string_view text, int slots) {
  std::vector<proto::InventoryNode> nodes;
  std::set<std::string> seen;
  int line_no = 0;
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string line = Trim(text.substr(start, end - start));
    start = end + 1;
    ++line_no;
    if (line.empty()) continue;
    const size_t a = line.find('|'), b = line.find('|', a == std::string::npos ? a : a + 1);
    if (a == std::string::npos || b == std::string::npos || line.find('|', b + 1) != std::string::npos) {
      return InvalidArgument("sinfo line " + std::to_string(line_no) + " \"" + line +
                             "\" is not NAME|FEATURES|STATE");
    }
    const std::string name = line.substr(0, a), features = line.substr(a + 1, b - a - 1),
                      state = line.substr(b + 1);
    if (name.empty() || state.empty()) {
      return InvalidArgument("sinfo line " + std::to_string(line_no) + " \"" + line +
                             "\" has no node name or state");
    }
    if (!seen.insert(name).second) continue;  // the same node in another partition
    proto::InventoryNode node;
    node.set_hostname(name);
    node.set_slots(slots);
    if (features != "(null)") {
      for (const std::string& f : SplitList(features)) {
        node.add_labels(f);
        if (f.rfind("jurisdiction_", 0) == 0) node.set_jurisdiction(f.substr(13));
        if (f.rfind("site_", 0) == 0) node.set_site(f.substr(5));
      }
    }
    // Compact states: idle, mix, alloc, comp(leting), resv, plnd are usable; a trailing '*' means
    // not responding; drain/drng/down/fail/maint/boot/... are not usable now.
    const bool responding = state.find('*') == std::string::npos;
    std::string base = state;
    while (!base.empty() && !std::isalpha(static_cast<unsigned char>(base.back()))) base.pop_back();
    static const std::set<std::string> kUsable = {"idle", "mix", "alloc", "comp", "resv", "plnd"};
    node.set_drain(!responding || kUsable.count(base) == 0);
    nodes.push_back(std::move(node));
  }
  return nodes;
}

StatusOr<std::vector<proto::InventoryNode>> SlurmNodes(const std::string& partition, int slots) {
  const std::vector<std::string> argv = SinfoCommand(partition);
  // Slurm's commands retry a missing configuration file for a minute before they give up.
  if (const std::optional<std::string> conf = GetEnv("SLURM_CONF");
      conf && access(conf->c_str(), R_OK) != 0) {
    return FailedPrecondition(
        "cannot list Slurm's nodes: SLURM_CONF names " + *conf + ", which cannot be read (" +
        std::strerror(errno) +
        "). Set SLURM_CONF to the cluster's slurm.conf, or unset it to use Slurm's default");
  }
  CommandOutput r = RunCaptured(argv);
  if (r.exit_code != 0) {
    return FailedPrecondition("cannot list Slurm's nodes: `" + CommandLine(argv) + "` exited with " +
                              std::to_string(r.exit_code) + ": " + OneLine(r.output) +
                              ". Check that Slurm's commands are installed and SLURM_CONF names the cluster");
  }
  StatusOr<std::vector<proto::InventoryNode>> nodes = ParseSinfoNodes(r.output, slots);
  if (!nodes.ok()) return nodes.status().WithContext("`" + CommandLine(argv) + "`");
  if (nodes->empty()) {
    return FailedPrecondition("`" + CommandLine(argv) + "` lists no nodes" +
                              (partition.empty() ? std::string() : " in partition " + partition) +
                              ": check the inventory's slurm.partition");
  }
  return nodes;
}

// ---- Jobs -----------------------------------------------------------------------------------

StatusOr<SlurmJob> ParseScontrolJob(std::string_view line) {
  std::map<std::string, std::string> kv;
  const std::string text = Trim(line);
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find(' ', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    start = end + 1;
    const size_t eq = item.find('=');
    if (eq != std::string::npos) kv.emplace(item.substr(0, eq), item.substr(eq + 1));
  }
  if (!kv.count("JobId") || !kv.count("JobState")) {
    return InvalidArgument("scontrol printed \"" + OneLine(text) +
                           "\", not a job record (JobId=... JobState=...)");
  }
  SlurmJob job;
  job.id = kv["JobId"];
  job.state = kv["JobState"];
  job.reason = kv.count("Reason") ? kv["Reason"] : "";
  job.nodelist = kv.count("NodeList") && kv["NodeList"] != "(null)" ? kv["NodeList"] : "";
  job.constraint = kv.count("Features") && kv["Features"] != "(null)" ? kv["Features"] : "";
  static const std::set<std::string> kActive = {
      "PENDING",   "RUNNING",   "SUSPENDED",    "COMPLETING",  "CONFIGURING",   "REQUEUED",    "RESIZING",
      "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"};
  job.finished = kActive.count(job.state) == 0;
  const std::string exit = kv.count("ExitCode") ? kv["ExitCode"] : "0:0";
  const size_t colon = exit.find(':');
  char* end = nullptr;
  const long code = std::strtol(exit.c_str(), &end, 10);
  const long sig = colon == std::string::npos ? 0 : std::strtol(exit.c_str() + colon + 1, nullptr, 10);
  if (end == exit.c_str()) return InvalidArgument("scontrol: ExitCode=" + exit + " is not CODE:SIGNAL");
  job.exit_code = sig != 0 ? 128 + static_cast<int>(sig) : static_cast<int>(code);
  // A job Slurm ended without an exit status of its own (cancelled, timed out, node failure).
  if (job.finished && job.state != "COMPLETED" && job.exit_code == 0) job.exit_code = 1;
  return job;
}

StatusOr<std::string> SubmitSbatch(const std::string& sbatch, const std::string& script) {
  const std::vector<std::string> argv = {sbatch, "--parsable", script};
  CommandOutput r = RunCaptured(argv);
  if (r.exit_code != 0) {
    return FailedPrecondition("Slurm did not accept the job: `" + CommandLine(argv) + "` exited with " +
                              std::to_string(r.exit_code) + ": " + OneLine(r.output));
  }
  // --parsable prints "ID" or "ID;CLUSTER" on its last line (warnings may come first).
  std::string last = Trim(r.output);
  if (const size_t nl = last.rfind('\n'); nl != std::string::npos) last = last.substr(nl + 1);
  const std::string id = last.substr(0, last.find(';'));
  if (id.empty() || id.find_first_not_of("0123456789") != std::string::npos) {
    return FailedPrecondition("`" + CommandLine(argv) + "` printed \"" + OneLine(r.output) +
                              "\" instead of a job id; the job may or may not have been submitted: check "
                              "squeue");
  }
  return id;
}

StatusOr<SlurmJob> QuerySlurmJob(const std::string& id) {
  const std::vector<std::string> argv = {"scontrol", "--oneliner", "show", "job", id};
  CommandOutput r = RunCaptured(argv);
  if (r.exit_code != 0) {
    return FailedPrecondition("`" + CommandLine(argv) + "` exited with " + std::to_string(r.exit_code) +
                              ": " + OneLine(r.output));
  }
  return ParseScontrolJob(r.output);
}

StatusOr<SlurmJob> WaitForSlurmJob(const std::string& id,
                                   const std::function<void(const SlurmJob&)>& on_poll) {
  auto last_ok = std::chrono::steady_clock::now();
  for (;;) {
    StatusOr<SlurmJob> job = QuerySlurmJob(id);
    if (job.ok()) {
      if (job->finished) return job;
      last_ok = std::chrono::steady_clock::now();
      if (on_poll) on_poll(*job);
    } else if (job.status().message().find("Invalid job id") != std::string::npos) {
      return NotFound("Slurm job " + id +
                      " is no longer known to slurmctld (finished longer ago than its MinJobAge?): its "
                      "exit code is lost; see the job's output file");
    } else if (std::chrono::steady_clock::now() - last_ok > std::chrono::seconds(30)) {
      return job.status().WithContext("following Slurm job " + id + " (no answer for 30 s)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

}  // namespace fjord
