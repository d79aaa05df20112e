// Supervising mpirun (launch/supervise.h).
#include "launcher/launch/supervise.h"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <regex>

namespace fjord {
namespace {

using Clock = std::chrono::steady_clock;

void WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // launch's own stderr is gone: the job goes on regardless
    data += n;
    size -= static_cast<size_t>(n);
  }
}

std::string Seconds(Clock::duration d) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", std::chrono::duration<double>(d).count());
  return buf;
}

}  // namespace

std::string FailureCause(const std::string& line) {
  static const std::regex aborts("fjord: rank ([0-9]+) \\(host ([^)]*)\\) aborts the job: (.*)");
  static const std::regex own_prefix("^fjord [a-z]+: error on rank [0-9]+: (fjord: )?");
  static const std::regex signal(
      "process rank ([0-9]+) with PID [0-9]+ on node (\\S+) exited on signal ([0-9]+)( \\(([^)]*)\\))?");
  static const std::regex mpi_abort("MPI_ABORT was invoked on rank ([0-9]+) in communicator");
  std::smatch m;
  if (std::regex_search(line, m, aborts)) {
    return "rank " + m[1].str() + " on host " + m[2].str() +
           " ended the job: " + std::regex_replace(m[3].str(), own_prefix, "");
  }
  if (std::regex_search(line, m, signal)) {
    return "rank " + m[1].str() + " on host " + m[2].str() + " killed by signal " + m[3].str() +
           (m[5].matched ? " (" + m[5].str() + ")" : "");
  }
  if (std::regex_search(line, m, mpi_abort)) return "rank " + m[1].str() + " called MPI_Abort";
  return "";
}

JobOutcome SuperviseChild(pid_t pid, int stderr_fd, const Supervision& s) {
  JobOutcome out;
  std::string line;  // the partial last line of the child's stderr
  bool open = stderr_fd >= 0;
  Clock::time_point failed_at{}, termed_at{}, exited_at{};
  bool failed = false, termed = false, killed = false, exited = false;
  int status = 0;
  for (;;) {
    if (!exited) {
      const pid_t r = ::waitpid(pid, &status, WNOHANG);
      if (r == pid || (r < 0 && errno != EINTR)) {
        if (r < 0) status = W_EXITCODE(1, 0);  // lost: cannot be waited for
        exited = true;
        exited_at = Clock::now();
      }
    }
    // After the child's end, what it wrote is read until EOF or a quiet half second: its daemons
    // may hold the pipe open (a cut-off host's never closes it).
    if (exited && (!open || Clock::now() - exited_at > std::chrono::milliseconds(500))) break;
    if (open) {
      pollfd p{stderr_fd, POLLIN, 0};
      const int n = ::poll(&p, 1, 100);
      if (n > 0) {
        char buf[4096];
        const ssize_t got = ::read(stderr_fd, buf, sizeof(buf));
        if (got > 0) {
          WriteAll(2, buf, static_cast<size_t>(got));
          line.append(buf, static_cast<size_t>(got));
          for (size_t nl; (nl = line.find('\n')) != std::string::npos; line.erase(0, nl + 1)) {
            if (!out.cause.empty()) continue;
            out.cause = FailureCause(line.substr(0, nl));
            if (!out.cause.empty() && !failed) {
              failed = true;
              failed_at = Clock::now();
            }
          }
          if (line.size() > 65536) line.erase(0, line.size() - 65536);  // no newline for long: keep the tail
        } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
          open = false;
        }
      }
    } else {
      ::usleep(100'000);
    }
    if (exited || !failed) continue;
    const Clock::time_point now = Clock::now();
    if (!termed && now - failed_at >= s.grace) {
      termed = true;
      termed_at = now;
      out.ended_by_launch = true;
      std::fprintf(stderr,
                   "fjord launch: mpirun did not end the job within %s after the failure (%s); ending it: "
                   "SIGTERM to its process group\n",
                   Seconds(s.grace).c_str(), out.cause.c_str());
      std::fflush(stderr);
      ::killpg(pid, SIGTERM);
    } else if (termed && !killed && now - termed_at >= s.kill_wait) {
      killed = true;
      std::fprintf(stderr, "fjord launch: mpirun still runs %s after SIGTERM: SIGKILL to its process group\n",
                   Seconds(s.kill_wait).c_str());
      std::fflush(stderr);
      ::killpg(pid, SIGKILL);
    }
  }
  if (stderr_fd >= 0) ::close(stderr_fd);
  if (!line.empty()) WriteAll(2, line.data(), line.size());
  // Whatever of its process group outlived mpirun (the rsh/ssh agents of its daemons) goes with it
  // once launch has ended the job.
  if (out.ended_by_launch) ::killpg(pid, SIGKILL);
  if (failed) out.end_after_s = std::chrono::duration<double>(exited_at - failed_at).count();
  if (WIFEXITED(status)) {
    out.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    out.exit_code = 128 + WTERMSIG(status);
  }
  return out;
}

}  // namespace fjord
