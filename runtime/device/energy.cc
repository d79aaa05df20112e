#include "runtime/device/energy.h"

#include <dlfcn.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace fjord {
namespace fs = std::filesystem;

namespace {

// The text of a small sysfs file, or why it cannot be read.
StatusOr<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    const int err = errno;
    return NotFound(path + ": " + std::strerror(err));
  }
  std::stringstream s;
  s << in.rdbuf();
  if (in.bad()) return DataLoss(path + ": read error");
  return s.str();
}

// A decimal count (sysfs: digits and a newline).
StatusOr<uint64_t> ReadCount(const std::string& path, const char* what) {
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path));
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  const bool digits =
      !text.empty() && text.size() <= 20 && text.find_first_not_of("0123456789") == std::string::npos;
  errno = 0;
  const unsigned long long v = digits ? std::strtoull(text.c_str(), nullptr, 10) : 0;
  if (!digits || errno == ERANGE) {
    return DataLoss(path + " holds \"" + text.substr(0, 40) + "\", not a count of " + what);
  }
  return static_cast<uint64_t>(v);
}

// NVML's C interface, the part fjord calls (nvml.h; loaded by name, so no header is needed).
using NvmlDevice = struct nvmlDevice_st*;
using NvmlInit = int (*)();
using NvmlShutdown = int (*)();
using NvmlCount = int (*)(unsigned int*);
using NvmlHandle = int (*)(unsigned int, NvmlDevice*);
using NvmlEnergy = int (*)(NvmlDevice, unsigned long long*);
using NvmlName = int (*)(NvmlDevice, char*, unsigned int);
using NvmlErrorString = const char* (*)(int);

}  // namespace

struct EnergyMeter::Nvml {
  void* lib = nullptr;
  bool initialised = false;
  NvmlShutdown shutdown = nullptr;
  NvmlEnergy energy = nullptr;
  NvmlErrorString error = nullptr;
  std::string Error(int code) const {
    return error != nullptr ? std::string(error(code)) : "NVML error " + std::to_string(code);
  }
  ~Nvml() {
    if (initialised && shutdown != nullptr) shutdown();
    if (lib != nullptr) dlclose(lib);
  }
};

struct EnergyMeter::Counter {
  std::string path;          // RAPL: energy_uj
  uint64_t range_uj = 0;     // RAPL: max_energy_range_uj, where the counter wraps to 0
  NvmlDevice gpu = nullptr;  // NVML: the device (millijoules)
  bool keep = true;
  bool started = false;
  uint64_t last = 0;  // the last raw value (µJ for RAPL, mJ for NVML)
};

std::unique_ptr<EnergyMeter> EnergyMeter::Open(const Options& options) {
  std::unique_ptr<EnergyMeter> m(new EnergyMeter());
  // RAPL: the top-level zones, in name order.
  if (!options.powercap_root.empty()) {
    std::vector<std::string> zones;
    std::error_code ec;
    for (fs::directory_iterator it(options.powercap_root, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      const std::string prefix = "intel-rapl:";
      if (name.rfind(prefix, 0) == 0 && name.size() > prefix.size() &&
          name.find_first_not_of("0123456789", prefix.size()) == std::string::npos) {
        zones.push_back(it->path().string());
      }
    }
    if (ec) m->notes_.push_back("no RAPL counters: " + options.powercap_root + ": " + ec.message());
    std::sort(zones.begin(), zones.end());
    if (!ec && zones.empty()) {
      m->notes_.push_back("no RAPL counters: " + options.powercap_root +
                          " has no intel-rapl:N zone (a virtual machine, or a kernel without powercap)");
    }
    for (const std::string& zone : zones) {
      StatusOr<std::string> name = ReadSmallFile(zone + "/name");
      std::string label = name.ok() ? std::string(name->substr(0, name->find('\n'))) : "?";
      if (label == "psys") continue;  // the platform: it contains the packages
      StatusOr<uint64_t> now = ReadCount(zone + "/energy_uj", "microjoules");
      StatusOr<uint64_t> range = ReadCount(zone + "/max_energy_range_uj", "microjoules");
      if (!now.ok() || !range.ok()) {
        const Status& why = !now.ok() ? now.status() : range.status();
        m->notes_.push_back("RAPL " + label + " not read: " + why.message() +
                            (why.message().find("Permission denied") != std::string::npos
                                 ? " (energy_uj is root-only since Linux 5.10; the operator can grant "
                                   "read access, e.g. with a udev rule)"
                                 : ""));
        continue;
      }
      auto c = std::make_unique<Counter>();
      c->path = zone + "/energy_uj";
      c->range_uj = *range;
      m->keys_.push_back("rapl:" + fs::weakly_canonical(zone, ec).string());
      m->names_.push_back("RAPL " + label + " (" + zone + ")");
      m->counters_.push_back(std::move(c));
    }
  }
  // NVML: the rank's GPU.
  if (options.gpu_slot >= 0 && !options.nvml_library.empty()) {
    auto nvml = std::make_unique<Nvml>();
    nvml->lib = dlopen(options.nvml_library.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (nvml->lib == nullptr) {
      const char* why = dlerror();
      m->notes_.push_back("no GPU energy counter: cannot load " + options.nvml_library + ": " +
                          (why ? why : "dlopen failed") + " (set energy.nvml_library to NVML's path)");
      return m;
    }
    auto sym = [&](const char* name) { return dlsym(nvml->lib, name); };
    auto init = reinterpret_cast<NvmlInit>(sym("nvmlInit_v2"));
    auto count = reinterpret_cast<NvmlCount>(sym("nvmlDeviceGetCount_v2"));
    auto handle = reinterpret_cast<NvmlHandle>(sym("nvmlDeviceGetHandleByIndex_v2"));
    auto gpu_name = reinterpret_cast<NvmlName>(sym("nvmlDeviceGetName"));
    nvml->shutdown = reinterpret_cast<NvmlShutdown>(sym("nvmlShutdown"));
    nvml->energy = reinterpret_cast<NvmlEnergy>(sym("nvmlDeviceGetTotalEnergyConsumption"));
    nvml->error = reinterpret_cast<NvmlErrorString>(sym("nvmlErrorString"));
    if (!init || !count || !handle || !nvml->shutdown || !nvml->energy) {
      m->notes_.push_back("no GPU energy counter: " + options.nvml_library +
                          " lacks nvmlInit_v2, nvmlDeviceGetCount_v2, nvmlDeviceGetHandleByIndex_v2, "
                          "nvmlShutdown or nvmlDeviceGetTotalEnergyConsumption: it is not NVML, or too old");
      return m;
    }
    if (const int rc = init(); rc != 0) {
      m->notes_.push_back("no GPU energy counter: nvmlInit: " + nvml->Error(rc));
      return m;
    }
    nvml->initialised = true;
    unsigned int n = 0;
    if (const int rc = count(&n); rc != 0 || n == 0) {
      m->notes_.push_back("no GPU energy counter: nvmlDeviceGetCount: " +
                          (rc != 0 ? nvml->Error(rc) : std::string("no GPU")));
      return m;
    }
    const unsigned int index = static_cast<unsigned int>(options.gpu_slot) % n;
    auto c = std::make_unique<Counter>();
    unsigned long long mj = 0;
    if (const int rc = handle(index, &c->gpu); rc != 0) {
      m->notes_.push_back("no GPU energy counter: GPU " + std::to_string(index) + ": " + nvml->Error(rc));
      return m;
    }
    if (const int rc = nvml->energy(c->gpu, &mj); rc != 0) {
      m->notes_.push_back("no GPU energy counter: nvmlDeviceGetTotalEnergyConsumption on GPU " +
                          std::to_string(index) + ": " + nvml->Error(rc) +
                          " (it needs a Volta or newer GPU)");
      return m;
    }
    char name[96] = "?";
    if (gpu_name != nullptr) gpu_name(c->gpu, name, sizeof(name));
    m->keys_.push_back("nvml:" + std::to_string(index));
    m->names_.push_back("NVML GPU " + std::to_string(index) + " (" + name + ")");
    m->counters_.push_back(std::move(c));
    m->nvml_ = std::move(nvml);
  }
  return m;
}

EnergyMeter::~EnergyMeter() {
  counters_.clear();
  nvml_.reset();
}

void EnergyMeter::Keep(const std::vector<bool>& keep) {
  for (size_t i = 0; i < counters_.size() && i < keep.size(); ++i) counters_[i]->keep = keep[i];
}

bool EnergyMeter::measuring() const {
  if (failed_) return false;
  return std::any_of(counters_.begin(), counters_.end(), [](const auto& c) { return c->keep; });
}

std::optional<uint64_t> EnergyMeter::Read() {
  if (failed_) return std::nullopt;
  uint64_t total_uj = 0;
  for (size_t i = 0; i < counters_.size(); ++i) {
    Counter& c = *counters_[i];
    if (!c.keep) continue;
    uint64_t now = 0, delta_uj = 0;
    std::string problem;
    if (c.gpu == nullptr) {
      StatusOr<uint64_t> read = ReadCount(c.path, "microjoules");
      if (!read.ok()) {
        problem = read.status().message();
      } else if (*read > c.range_uj) {
        problem = c.path + " = " + std::to_string(*read) + " exceeds max_energy_range_uj " +
                  std::to_string(c.range_uj);
      } else {
        now = *read;
        // The counter wraps to 0 after max_energy_range_uj; windows are far shorter than a wrap
        // period (minutes at full power), so at most one wrap lies between two reads.
        delta_uj = now >= c.last ? now - c.last : c.range_uj - c.last + now;
      }
    } else {
      unsigned long long mj = 0;
      if (const int rc = nvml_->energy(c.gpu, &mj); rc != 0) {
        problem = "nvmlDeviceGetTotalEnergyConsumption: " + nvml_->Error(rc);
      } else if (c.started && mj < c.last) {
        problem = "the GPU energy counter went back from " + std::to_string(c.last) + " to " +
                  std::to_string(mj) + " mJ (driver reloaded?)";
      } else {
        now = mj;
        delta_uj = (now - c.last) * 1000;
      }
    }
    if (!problem.empty()) {
      failed_ = true;
      notes_.push_back(names_[i] + " stopped: " + problem + "; energy is not measured from here on");
      return std::nullopt;
    }
    if (c.started) total_uj += delta_uj;
    c.last = now;
    c.started = true;
  }
  return total_uj;
}

Status KeepFirstOnNode(Communicator& comm, const std::string& host, EnergyMeter& meter) {
  std::string mine = host;
  for (const std::string& key : meter.keys()) mine += "\n" + key;
  FJORD_ASSIGN_OR_RETURN(std::vector<std::string> all, AllGatherStrings(comm, mine));
  std::vector<bool> keep(meter.keys().size(), true);
  for (int r = 0; r < comm.rank() && r < static_cast<int>(all.size()); ++r) {
    std::vector<std::string> lines;
    std::istringstream in(all[r]);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    if (lines.empty() || lines[0] != host) continue;
    for (size_t i = 0; i < keep.size(); ++i) {
      if (std::find(lines.begin() + 1, lines.end(), meter.keys()[i]) != lines.end()) keep[i] = false;
    }
  }
  meter.Keep(keep);
  return OkStatus();
}

namespace {
// One rank's part of a window as it travels (all-gathered as bytes).
struct RankWindow {
  uint64_t measured_uj = 0;
  uint64_t estimated_uj = 0;
  uint32_t state = 0;  // 0: not measured, 1: measured, 2: estimated
  uint32_t pad = 0;
};
}  // namespace

StatusOr<WindowEnergy> SumWindowEnergy(Communicator& comm, std::optional<uint64_t> measured, bool covered,
                                       double rank_power_w, double seconds) {
  RankWindow mine;
  if (covered) {
    mine.state = 1;
    mine.measured_uj = measured.value_or(0);
  } else if (rank_power_w > 0 && seconds > 0) {
    mine.state = 2;
    mine.estimated_uj = static_cast<uint64_t>(std::llround(rank_power_w * seconds * 1e6));
  }
  std::vector<RankWindow> all(static_cast<size_t>(comm.size()));
  if (comm.size() > 1) {
    FJORD_RETURN_IF_ERROR(comm.AllGather(&mine, all.data(), sizeof(RankWindow), DataType::kU8));
  } else {
    all[0] = mine;
  }
  WindowEnergy w;
  w.ranks = comm.size();
  for (const RankWindow& r : all) {
    w.measured_uj += r.measured_uj;
    w.estimated_uj += r.estimated_uj;
    w.measured_ranks += r.state == 1;
    w.estimated_ranks += r.state == 2;
  }
  return w;
}

}  // namespace fjord
