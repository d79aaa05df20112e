#include "runtime/device/device.h"

#include <errno.h>
#include <signal.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/check.h"
#include "common/env.h"
#include "common/text.h"

namespace fjord {

#ifdef FJORD_HAVE_CUDA
// runtime/device/device_cuda.cu: visible GPUs, and why there are none (the CUDA error) in *why.
int CudaVisibleDevices(std::string* why);
#endif

namespace {

// Host memory as "device" memory: copies are memcpy, there are no streams.
class CpuDeviceImpl final : public Device {
 public:
  bool is_cuda() const override { return false; }
  const std::string& description() const override { return description_; }
  const Ops& ops() const override { return CpuOps(); }
  const OpContext& context() const override { return context_; }
  void* Allocate(size_t bytes) override {
    void* p = nullptr;
    return posix_memalign(&p, Arena::kAlign, std::max<size_t>(bytes, 1)) == 0 ? p : nullptr;
  }
  void Free(void* p) override { std::free(p); }
  void* AllocateHost(size_t bytes) override { return Allocate(bytes); }
  void FreeHost(void* p) override { std::free(p); }
  void Upload(void* dst, const void* host, size_t bytes) override { Copy(dst, host, bytes); }
  void Download(void* host, const void* src, size_t bytes) override { Copy(host, src, bytes); }
  void Zero(void* dst, size_t bytes) override {
    if (bytes > 0) std::memset(dst, 0, bytes);
  }
  void Synchronize() override {}
  void StageToHost(void* host, const void* src, size_t bytes) override { Copy(host, src, bytes); }
  void OrderAfterCompute(CUstream_st*) override {}

 private:
  static void Copy(void* dst, const void* src, size_t bytes) {
    if (bytes > 0 && dst != src) std::memmove(dst, src, bytes);
  }
  const std::string description_ = "cpu";
  const OpContext context_{};
};

std::string Where(const RankInfo& where) {
  return "rank " + std::to_string(where.rank) + " on host " + (where.host.empty() ? "?" : where.host);
}

}  // namespace

Device& CpuDevice() {
  static CpuDeviceImpl device;
  return device;
}

namespace {

size_t MemAvailableBytes() {
  if (FILE* f = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    unsigned long long kib = 0;
    bool found = false;
    while (!found && std::fgets(line, sizeof(line), f) != nullptr) {
      found = std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1;
    }
    std::fclose(f);
    if (found) return static_cast<size_t>(kib) * 1024;
  }
  struct sysinfo info {};
  if (sysinfo(&info) != 0) return 0;
  return (static_cast<size_t>(info.freeram) + info.bufferram) * info.mem_unit;
}

// The first number in `path` ("max" and unreadable files: SIZE_MAX, no limit).
size_t ReadBytes(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return SIZE_MAX;
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(word.c_str(), &end, 10);
  return errno != 0 || end == word.c_str() ? SIZE_MAX : static_cast<size_t>(v);
}

// `key`'s value in a memory.stat file (0 when absent).
size_t StatBytes(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string k;
  unsigned long long v = 0;
  while (in >> k >> v) {
    if (k == key) return static_cast<size_t>(v);
  }
  return 0;
}

// Where cgroup hierarchies are mounted: v2 (`unified`) and v1's memory controller.
struct CgroupMounts {
  std::string unified, memory_v1;
};
CgroupMounts FindCgroupMounts() {
  CgroupMounts m;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
    std::istringstream fields(line);
    std::string id, parent, dev, root, mountpoint, options, word;
    fields >> id >> parent >> dev >> root >> mountpoint >> options;
    while (fields >> word && word != "-") {
    }
    std::string fstype, source, super;
    fields >> fstype >> source >> super;
    if (fstype == "cgroup2" && m.unified.empty()) m.unified = mountpoint;
    if (fstype == "cgroup" && m.memory_v1.empty()) {
      std::istringstream opts(super);
      std::string opt;
      while (std::getline(opts, opt, ',')) {
        if (opt == "memory") m.memory_v1 = mountpoint;
      }
    }
  }
  return m;
}

// The headroom of the tightest memory cgroup above this process, or nothing (bytes SIZE_MAX).
HostMemory CgroupHeadroom() {
  HostMemory best{SIZE_MAX, ""};
  const CgroupMounts mounts = FindCgroupMounts();
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    // HIERARCHY:CONTROLLERS:PATH; v2 is "0::PATH".
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    const auto consider = [&](size_t limit, size_t used, const std::string& where) {
      if (limit == SIZE_MAX || limit >= (size_t{1} << 62))
        return;  // no limit ("max", or v1's PAGE_COUNTER_MAX)
      const size_t headroom = limit > used ? limit - used : 0;
      if (headroom < best.bytes) {
        best.bytes = headroom;
        best.bound =
            "the memory cgroup " + where + ": limit " + GiBText(limit) + ", " + GiBText(used) + " used";
      }
    };
    if (controllers.empty() && !mounts.unified.empty()) {
      // v2: every ancestor's memory.max binds too.
      for (std::string p = path; !p.empty(); p = p.substr(0, p.rfind('/'))) {
        const std::string dir = mounts.unified + (p == "/" ? "" : p);
        const size_t limit = ReadBytes(dir + "/memory.max");
        if (limit != SIZE_MAX) {
          const size_t current = ReadBytes(dir + "/memory.current");
          // Page cache the kernel reclaims before it kills: file pages, less tmpfs/shm ones.
          const std::string stat = dir + "/memory.stat";
          const size_t file = StatBytes(stat, "file"), shmem = StatBytes(stat, "shmem");
          const size_t reclaimable = file - std::min(file, shmem);
          consider(limit, current == SIZE_MAX ? 0 : current - std::min(current, reclaimable), p);
        }
        if (p == "/") break;
      }
    } else if (!mounts.memory_v1.empty() && ("," + controllers + ",").find(",memory,") != std::string::npos) {
      // v1: memory.stat's hierarchical_memory_limit is the smallest limit over the ancestors.
      const std::string dir = mounts.memory_v1 + (path == "/" ? "" : path);
      const size_t limit = StatBytes(dir + "/memory.stat", "hierarchical_memory_limit");
      const size_t usage = ReadBytes(dir + "/memory.usage_in_bytes");
      const std::string stat = dir + "/memory.stat";
      const size_t cache = StatBytes(stat, "total_cache"), shmem = StatBytes(stat, "total_shmem");
      const size_t reclaimable = cache - std::min(cache, shmem);
      if (limit != 0 && usage != SIZE_MAX) consider(limit, usage - std::min(usage, reclaimable), path);
    }
  }
  return best;
}

}  // namespace

HostMemory AvailableHostMemory() {
  HostMemory host{MemAvailableBytes(), "MemAvailable"};
  HostMemory cgroup = CgroupHeadroom();
  return cgroup.bytes < host.bytes ? cgroup : host;
}

size_t AvailableHostBytes() { return AvailableHostMemory().bytes; }

int CudaDeviceCount() {
#ifdef FJORD_HAVE_CUDA
  std::string why;
  return CudaVisibleDevices(&why);
#else
  return 0;
#endif
}

size_t CudaWorkspaceBytes(int B, int T) {
  const size_t tokens = static_cast<size_t>(std::max(B, 1)) * static_cast<size_t>(std::max(T, 1));
  return (size_t{32} << 20) + 32 * tokens;
}

StatusOr<std::unique_ptr<Device>> CreateDevice(proto::Device requested, const RankInfo& where,
                                               size_t workspace_bytes) {
  if (requested == proto::CPU) return std::unique_ptr<Device>(std::make_unique<CpuDeviceImpl>());
  const std::string what_to_do =
      ": run on a node with a GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES), or set device: AUTO (CUDA "
      "when "
      "a GPU is visible, else the CPU) or device: CPU in the job spec (or --set device=CPU)";
#ifdef FJORD_HAVE_CUDA
  std::string why;
  const int visible = CudaVisibleDevices(&why);
  if (visible > 0) return CreateCudaDevice(where, workspace_bytes);
  if (requested == proto::CUDA) {
    return FailedPrecondition("device: CUDA was asked for, but no usable GPU is visible to " + Where(where) +
                              " (" + why + ")" + what_to_do);
  }
  return std::unique_ptr<Device>(std::make_unique<CpuDeviceImpl>());
#else
  (void)what_to_do;
  if (requested == proto::CUDA) {
    return FailedPrecondition(
        "device: CUDA was asked for, but this fjord was built without CUDA (FJORD_CUDA=OFF), "
        "so " +
        Where(where) +
        " cannot use a GPU: run a build configured with -DFJORD_CUDA=ON "
        "on a GPU node, or set device: AUTO (CUDA when a GPU is visible, else the CPU) or "
        "device: CPU in the job spec (or --set device=CPU)");
  }
  (void)workspace_bytes;
  return std::unique_ptr<Device>(std::make_unique<CpuDeviceImpl>());
#endif
}

// --- Zeroing on the way out -------------------------------------------------------------------------

namespace {

// The host arenas alive now. A slot is claimed by a compare-exchange of its base from nullptr,
// then given its size; it is freed by setting the size to 0, then the base to nullptr, before the
// memory is freed. The signal path reads the base, then the size: at worst it sees a size of 0
// (and zeroes nothing of a slot being claimed or freed), never a size larger than the memory.
struct LiveArena {
  std::atomic<char*> base{nullptr};
  std::atomic<size_t> bytes{0};
  std::atomic<const char*> what{nullptr};  // the Arena's what_ (lives as long as the slot)
};
constexpr int kMaxLiveArenas = 32;
LiveArena g_live[kMaxLiveArenas];
std::atomic<bool> g_verify_on_signal{false};

void Register(char* base, size_t bytes, const char* what) {
  for (LiveArena& slot : g_live) {
    char* expected = nullptr;
    if (slot.base.compare_exchange_strong(expected, base)) {
      slot.what.store(what);
      slot.bytes.store(bytes);
      return;
    }
  }
  // More live arenas than slots: this one is zeroed by Release only (never in practice: a rank
  // has one arena, tests a few).
}

void Unregister(char* base) {
  for (LiveArena& slot : g_live) {
    if (slot.base.load() != base) continue;
    slot.bytes.store(0);
    slot.base.store(nullptr);
    return;
  }
}

// write(2) of a string and of a number: all the signal path may use.
void SafeWrite(const char* text) {
  size_t n = 0;
  while (text[n] != '\0') ++n;
  [[maybe_unused]] const ssize_t w = ::write(STDERR_FILENO, text, n);
}
void SafeWriteNumber(size_t v) {
  char buf[24];
  int i = sizeof(buf) - 1;
  buf[i] = '\0';
  do {
    buf[--i] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v > 0);
  SafeWrite(buf + i);
}

void OnFatalSignal(int sig) {
  ZeroHostArenasNow(sig);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void InstallFatalSignalHandlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGQUIT, SIGHUP, SIGTERM, SIGINT}) {
      struct sigaction old = {};
      if (::sigaction(sig, nullptr, &old) != 0 || old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO))
        continue;
      struct sigaction action = {};
      action.sa_handler = OnFatalSignal;
      sigemptyset(&action.sa_mask);
      action.sa_flags = SA_RESETHAND | SA_NODEFER;
      ::sigaction(sig, &action, nullptr);
    }
  });
}

}  // namespace

void ZeroHostArenasNow(int sig) {
  for (LiveArena& slot : g_live) {
    char* base = slot.base.load();
    if (base == nullptr) continue;
    const size_t bytes = slot.bytes.load();
    volatile uint64_t* words = reinterpret_cast<volatile uint64_t*>(base);  // 256-byte aligned
    for (size_t i = 0; i < bytes / sizeof(uint64_t); ++i) words[i] = 0;
    if (!g_verify_on_signal.load()) continue;
    size_t nonzero = 0;
    const volatile unsigned char* b = reinterpret_cast<const volatile unsigned char*>(base);
    for (size_t i = 0; i < bytes; ++i) nonzero += b[i] != 0;
    SafeWrite("fjord: arena ");
    SafeWrite(slot.what.load() ? slot.what.load() : "?");
    SafeWrite(": zeroed on signal ");
    SafeWriteNumber(static_cast<size_t>(sig));
    SafeWrite(": ");
    SafeWriteNumber(bytes);
    SafeWrite(" bytes read back, ");
    SafeWriteNumber(nonzero);
    SafeWrite(" non-zero\n");
  }
}

// --- Arena --------------------------------------------------------------------------------------

StatusOr<std::unique_ptr<Arena>> Arena::Create(Device& device, size_t bytes, const std::string& what) {
  bytes = Rounded(std::max<size_t>(bytes, 1));
  void* base = device.Allocate(bytes);
  if (base == nullptr) {
    char size[32];
    std::snprintf(size, sizeof(size), "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
    return FailedPrecondition(
        "cannot allocate the " + what + " arena of " + std::to_string(bytes) + " bytes (" + size + ") on " +
        device.description() +
        ": lower train.micro_batch or train.seq_len (and raise train.grad_accum), use a smaller "
        "model, or free the device");
  }
  device.Zero(base, bytes);
  std::unique_ptr<Arena> arena(new Arena(device, base, bytes, what));
  if (!device.is_cuda()) {
    if (TestHook("arena_verify_zero")) g_verify_on_signal.store(true);
    InstallFatalSignalHandlers();
    Register(arena->base_, bytes, arena->what_.c_str());
  }
  return arena;
}

void* Arena::Take(size_t bytes) {
  const size_t rounded = Rounded(std::max<size_t>(bytes, 1));
  FJORD_CHECK(base_ != nullptr && rounded <= capacity_ - used_,
              "the " + what_ + " arena of " + std::to_string(capacity_) + " bytes has " +
                  std::to_string(capacity_ - used_) + " left, " + std::to_string(rounded) + " asked for");
  void* p = base_ + used_;
  used_ += rounded;
  return p;
}

size_t NonZeroBytes(Device& device, const void* src, size_t bytes) {
  constexpr size_t kChunk = size_t{8} << 20;
  std::vector<unsigned char> host(std::min(bytes, kChunk));
  size_t nonzero = 0;
  for (size_t at = 0; at < bytes; at += kChunk) {
    const size_t n = std::min(kChunk, bytes - at);
    device.Download(host.data(), static_cast<const char*>(src) + at, n);
    nonzero += static_cast<size_t>(n - std::count(host.begin(), host.begin() + static_cast<ptrdiff_t>(n), 0));
  }
  return nonzero;
}

Status Arena::Release() {
  if (base_ == nullptr) return OkStatus();
  device_.Zero(base_, capacity_);
  Unregister(base_);  // zeroed; from here the signal path leaves it alone (it is about to be freed)
  Status status;
  if (TestHook("arena_verify_zero")) {
    const size_t nonzero = NonZeroBytes(device_, base_, capacity_);
    std::fprintf(stderr, "fjord: arena %s: %zu bytes zeroed and read back, %zu non-zero\n", what_.c_str(),
                 capacity_, nonzero);
    if (nonzero > 0) {
      status = Internal("the " + what_ + " arena on " + device_.description() + " still holds " +
                        std::to_string(nonzero) + " non-zero bytes after zeroing");
    }
  }
  device_.Free(base_);
  base_ = nullptr;
  return status;
}

Arena::~Arena() {
  const Status s = Release();
  FJORD_CHECK(s.ok(), s.message());
}

}  // namespace fjord
