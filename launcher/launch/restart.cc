#include "launcher/launch/restart.h"

#include <cstdio>

namespace fjord {

int RunWithRestarts(int max_restarts, const std::function<int(int attempt)>& attempt,
                    const std::function<bool()>& stopped, AuditLog* audit, const std::string& who) {
  for (int k = 0;; ++k) {
    const int code = attempt(k);
    if (code == 0 || stopped()) return code;
    if (k >= max_restarts) {
      if (max_restarts > 0) {
        std::fprintf(stderr,
                     "%s: the job failed (exit %d) after %d restart(s), the most --max-restarts allows\n",
                     who.c_str(), code, k);
      }
      return code;
    }
    std::fprintf(
        stderr,
        "%s: the job failed (exit %d); restart %d of %d from its newest intact checkpoint (--resume)\n",
        who.c_str(), code, k + 1, max_restarts);
    std::fflush(stderr);
    if (audit != nullptr) {
      StatusOr<AuditAnchor> appended = audit->Append("job_restart", AuditRecord()
                                                                        .Int("restart", k + 1)
                                                                        .Int("max_restarts", max_restarts)
                                                                        .Int("failed_exit_code", code));
      if (!appended.ok()) {
        std::fprintf(stderr, "%s: error: cannot record the restart: %s\n", who.c_str(),
                     appended.status().message().c_str());
        return 1;
      }
    }
  }
}

}  // namespace fjord
