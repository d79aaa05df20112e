#include "common/host.h"

#include <limits.h>
#include <unistd.h>

namespace fjord {

std::string ThisHostname() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "unknown-host";
  return buf;
}

std::string ShortHostName(std::string_view host) { return std::string(host.substr(0, host.find('.'))); }

}  // namespace fjord
