// `fjord doctor` (doctor.h). Each check is one function that appends rows to the report; the GPU
// libraries are found with dlopen (never linked), so a CPU-only build checks a GPU node too.
#include "launcher/doctor.h"

#include <dlfcn.h>
#include <google/protobuf/util/json_util.h>
#include <mpi.h>
#include <omp.h>
#include <sched.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>

#include "collectives/communicator.h"
#include "common/env.h"
#include "common/host.h"
#include "launcher/cli.h"
#include "launcher/launch/inventory.h"
#include "launcher/version.h"
#include "runtime/model/gpt.h"
#include "runtime/tenancy/tenancy.h"
#include "runtime/train/config.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using Level = proto::DoctorCheck::Level;

class Rows {
 public:
  explicit Rows(proto::DoctorReport* report) : report_(report), host_(ShortHostName(ThisHostname())) {}
  void Add(const std::string& name, Level level, const std::string& detail, const std::string& fix = "") {
    proto::DoctorCheck* c = report_->add_check();
    c->set_host(host_);
    c->set_name(name);
    c->set_level(level);
    c->set_detail(detail);
    if (!fix.empty()) c->set_fix(fix);
  }

 private:
  proto::DoctorReport* report_;
  std::string host_;
};

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs `cmd` through the shell, stderr with stdout; the exit code (-1 when it cannot start).
int Capture(const std::string& cmd, std::string* output) {
  FILE* pipe = ::popen((cmd + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) output->append(buf, n);
  const int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string FindOnPath(const std::string& name) {
  std::string out;
  if (Capture("command -v " + ShellQuote(name), &out) != 0) return "";
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string FirstLine(const std::string& s) {
  std::string line = s.substr(0, s.find('\n'));
  while (!line.empty() && (line.back() == ' ' || line.back() == '\r' || line.back() == ',')) line.pop_back();
  return line;
}

std::string LastLines(const std::string& s, int n) {
  size_t at = s.size();
  for (int i = 0; i <= n && at != std::string::npos && at > 0; ++i) at = s.rfind('\n', at - 1);
  return at == std::string::npos ? s : s.substr(at + 1);
}

std::string Gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

// ---- MPI ---------------------------------------------------------------------------------------

// Started by mpirun or srun, even as a single rank: a doctor rank must not start an mpirun of its own
// inside one (it would inherit the launcher's environment).
bool UnderLauncher(int world_size) {
  return world_size > 1 || GetEnv("OMPI_COMM_WORLD_SIZE") || GetEnv("PMIX_RANK") || GetEnv("SLURM_PROCID");
}

void CheckMpi(Rows& rows, int world_size) {
  char version[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int len = 0;
  MPI_Get_library_version(version, &len);
  std::string library = FirstLine(version);
  library = library.substr(0, library.find(','));  // "Open MPI v4.1.4"
  if (UnderLauncher(world_size)) {
    rows.Add("mpi", proto::DoctorCheck::OK,
             library + "; this rank was started by the launcher, one of " + std::to_string(world_size));
    return;
  }
  const std::string fix =
      "check Open MPI on this node (apt-get install openmpi-bin; mpirun -np 2 hostname); as root mpirun also "
      "needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1";
  const std::string mpirun = FindOnPath("mpirun");
  if (mpirun.empty()) {
    rows.Add("mpi", proto::DoctorCheck::FAIL, library + "; mpirun is not on PATH", fix);
    return;
  }
  std::error_code ec;
  const std::string self = fs::read_symlink("/proc/self/exe", ec).string();
  if (::geteuid() == 0) {  // for the child only: this process starts no other MPI job
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  }
  std::string out;
  const int rc = Capture("timeout 60 " + ShellQuote(mpirun) + " -np 2 --oversubscribe --bind-to none " +
                             ShellQuote(self) + " doctor --mpi-probe",
                         &out);
  const bool both = out.find("mpi probe: rank 0 of 2 ok") != std::string::npos &&
                    out.find("mpi probe: rank 1 of 2 ok") != std::string::npos;
  if (rc == 0 && both) {
    rows.Add("mpi", proto::DoctorCheck::OK,
             library + "; started 2 local ranks, which reduced across each other");
  } else {
    rows.Add("mpi", proto::DoctorCheck::FAIL,
             library + "; " + mpirun + " -np 2 could not run 2 local ranks (exit " + std::to_string(rc) +
                 (rc == 124 ? ", timed out after 60 s" : "") + "): " + LastLines(out, 3),
             fix);
  }
}

// ---- GPUs and their libraries --------------------------------------------------------------------

// dlopen of the first of `names` that loads; null when none does.
void* OpenFirst(std::initializer_list<const char*> names, std::string* found) {
  for (const char* name : names) {
    if (void* h = ::dlopen(name, RTLD_NOW | RTLD_LOCAL)) {
      *found = name;
      return h;
    }
  }
  return nullptr;
}

template <typename F>
F Sym(void* lib, const char* name) {
  return lib == nullptr ? nullptr : reinterpret_cast<F>(::dlsym(lib, name));
}

// What NVML reports (libnvidia-ml.so.1, the driver's own library): the GPU rows. Returns the GPU count.
int CheckGpus(Rows& rows) {
  std::string nvml_name, cuda_name;
  void* nvml = OpenFirst({"libnvidia-ml.so.1"}, &nvml_name);
  void* cuda = OpenFirst({"libcuda.so.1"}, &cuda_name);
  const std::string cpu_fix =
      "nothing on a CPU-only node (fjord trains on CPU ranks there); on a GPU node install the NVIDIA driver";
  if (nvml == nullptr && cuda == nullptr) {
    rows.Add("gpu", proto::DoctorCheck::WARN,
             "no GPU: no NVIDIA driver on this node (neither libcuda.so.1 nor libnvidia-ml.so.1 loads)",
             cpu_fix);
    return 0;
  }
  std::string driver_api = "unknown";
  if (auto get = Sym<int (*)(int*)>(cuda, "cuDriverGetVersion")) {
    int v = 0;
    if (get(&v) == 0) driver_api = std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
  }
  auto init = Sym<int (*)()>(nvml, "nvmlInit_v2");
  auto error = Sym<const char* (*)(int)>(nvml, "nvmlErrorString");
  const int init_rc = init ? init() : -1;
  if (init_rc != 0) {
    const std::string why = init == nullptr ? "libnvidia-ml.so.1 is missing"
                                            : std::string("nvmlInit: ") + (error ? error(init_rc) : "error");
    // 9: NVML_ERROR_DRIVER_NOT_LOADED, the driver's libraries without a device.
    rows.Add("gpu", init_rc == 9 ? proto::DoctorCheck::WARN : proto::DoctorCheck::FAIL,
             "no GPU usable: CUDA driver API " + driver_api + ", " + why,
             init_rc == 9 ? cpu_fix : "check the driver: nvidia-smi; dmesg | grep -i nvrm");
    return 0;
  }
  char driver[96] = "unknown";
  if (auto f = Sym<int (*)(char*, unsigned)>(nvml, "nvmlSystemGetDriverVersion")) f(driver, sizeof(driver));
  unsigned count = 0;
  if (auto f = Sym<int (*)(unsigned*)>(nvml, "nvmlDeviceGetCount_v2")) f(&count);
#ifdef FJORD_HAVE_CUDA
  const bool built_with_cuda = true;
#else
  const bool built_with_cuda = false;
#endif
  rows.Add("gpu driver", count > 0 && !built_with_cuda ? proto::DoctorCheck::WARN : proto::DoctorCheck::OK,
           "NVIDIA driver " + std::string(driver) + ", CUDA driver API " + driver_api + ", " +
               std::to_string(count) + " GPU(s)" +
               (built_with_cuda ? "" : "; this fjord is a CPU-only build"),
           count > 0 && !built_with_cuda ? "install the CUDA build of fjord (package fjord-cuda) on GPU nodes"
                                         : "");
  auto handle_of = Sym<int (*)(unsigned, void**)>(nvml, "nvmlDeviceGetHandleByIndex_v2");
  auto name_of = Sym<int (*)(void*, char*, unsigned)>(nvml, "nvmlDeviceGetName");
  struct Memory {
    unsigned long long total, free, used;
  };
  auto memory_of = Sym<int (*)(void*, Memory*)>(nvml, "nvmlDeviceGetMemoryInfo");
  auto cc_of = Sym<int (*)(void*, int*, int*)>(nvml, "nvmlDeviceGetCudaComputeCapability");
  auto ecc_of = Sym<int (*)(void*, int*, int*)>(nvml, "nvmlDeviceGetEccMode");
  auto persistence_of = Sym<int (*)(void*, int*)>(nvml, "nvmlDeviceGetPersistenceMode");
  for (unsigned i = 0; i < count && handle_of; ++i) {
    void* dev = nullptr;
    const std::string name = "gpu " + std::to_string(i);
    if (handle_of(i, &dev) != 0) {
      rows.Add(name, proto::DoctorCheck::FAIL, "NVML cannot open it",
               "nvidia-smi -i " + std::to_string(i) + " -q");
      continue;
    }
    char model[96] = "?";
    if (name_of) name_of(dev, model, sizeof(model));
    Memory mem{};
    if (memory_of) memory_of(dev, &mem);
    int major = 0, minor = 0, ecc = 0, pending = 0, persistence = 0;
    const bool has_cc = cc_of && cc_of(dev, &major, &minor) == 0;
    const int ecc_rc = ecc_of ? ecc_of(dev, &ecc, &pending) : -1;
    if (persistence_of) persistence_of(dev, &persistence);
    std::string detail = std::string(model) + ", " + Gib(static_cast<double>(mem.total)) +
                         ", compute capability " +
                         (has_cc ? std::to_string(major) + "." + std::to_string(minor) : "?") + ", ECC " +
                         (ecc_rc == 0 ? (ecc ? "on" : "off") : "not supported") + ", persistence mode " +
                         (persistence ? "on" : "off");
    Level level = proto::DoctorCheck::OK;
    std::string fix;
    const std::string idx = std::to_string(i);
    if (has_cc && major < 8) {
      level = proto::DoctorCheck::FAIL;
      fix =
          "fjord's CUDA kernels are built for compute capability 8.0 and 9.0 (CMAKE_CUDA_ARCHITECTURES); "
          "use an A100/H100-class GPU or rebuild for this one";
    } else if (ecc_rc == 0 && !ecc) {
      level = proto::DoctorCheck::WARN;
      fix = "enable ECC: nvidia-smi -i " + idx + " -e 1, then reboot";
    } else if (!persistence) {
      level = proto::DoctorCheck::WARN;
      fix = "enable persistence mode: nvidia-smi -i " + idx + " -pm 1 (or run nvidia-persistenced)";
    }
    rows.Add(name, level, detail, fix);
  }
  if (auto shutdown = Sym<int (*)()>(nvml, "nvmlShutdown")) shutdown();
  return static_cast<int>(count);
}

void CheckGpuLibraries(Rows& rows, int gpus) {
  const Level missing = gpus > 0 ? proto::DoctorCheck::FAIL : proto::DoctorCheck::WARN;
  const std::string why = gpus > 0 ? "this node has GPUs" : "needed on GPU nodes only";
  std::string found;
  void* nccl = OpenFirst({"libnccl.so.2", "libnccl.so"}, &found);
  if (auto get = Sym<int (*)(int*)>(nccl, "ncclGetVersion")) {
    int v = 0;
    get(&v);  // NCCL >= 2.9: major * 10000 + minor * 100 + patch
    rows.Add("nccl", proto::DoctorCheck::OK,
             "NCCL " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
                 std::to_string(v % 100) + " (" + found + ")");
  } else {
    rows.Add("nccl", missing, "libnccl.so.2 not found (" + why + ")",
             "apt-get install libnccl2 (NVIDIA's CUDA repository)");
  }
  void* cublas = OpenFirst({"libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"}, &found);
  if (auto get = Sym<int (*)(int, int*)>(cublas, "cublasGetProperty")) {
    int v[3] = {0, 0, 0};
    for (int i = 0; i < 3; ++i) get(i, &v[i]);  // MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
    rows.Add("cublas", proto::DoctorCheck::OK,
             "cuBLAS " + std::to_string(v[0]) + "." + std::to_string(v[1]) + "." + std::to_string(v[2]) +
                 " (" + found + ")");
  } else {
    rows.Add("cublas", missing, "libcublas.so.13 (or .12, .11) not found (" + why + ")",
             "install the CUDA toolkit's libcublas");
  }
}

// ---- The node ----------------------------------------------------------------------------------

void CheckIdentity(Rows& rows) {
  const NodeInspection inspection = InspectNodeIdentity();
  const std::vector<std::string> warnings = NodeTrustWarnings(inspection, /*user_namespaces=*/false);
  std::string detail;
  if (inspection.node) {
    const proto::NodeIdentity& id = inspection.node->identity;
    detail =
        id.hostname() + " in " + id.jurisdiction() + ", site " + id.site() + " (" + inspection.path + ")";
  } else {
    detail = inspection.path;
  }
  if (!inspection.problems.empty()) {
    std::string why;
    for (const Status& p : inspection.problems) why += "; refused: " + p.message();
    rows.Add("node identity", proto::DoctorCheck::FAIL, detail + why,
             "the rank gate refuses every tenant job here; `fjord node show` lists the reasons; the operator "
             "rewrites the identity as root: fjord node init --jurisdiction CC --site S --force");
    return;
  }
  if (!warnings.empty()) {
    std::string why;
    for (const std::string& w : warnings) why += "; " + w;
    rows.Add("node identity", proto::DoctorCheck::WARN, detail + why,
             "on a tenant node: unset FJORD_NODE_IDENTITY and remove allow_test_overrides from " +
                 std::string(kNodeSettingsPath));
    return;
  }
  rows.Add("node identity", proto::DoctorCheck::OK, detail + "; the rank gate accepts it");
}

void CheckCheckpointSpace(Rows& rows, const std::string& job_path) {
  if (job_path.empty()) {
    rows.Add("checkpoint space", proto::DoctorCheck::WARN, "not checked: no job given",
             "give --job JOB.textproto to check free space where its checkpoints go");
    return;
  }
  StatusOr<proto::JobSpec> job = LoadJobSpec(job_path, {});
  if (!job.ok()) {
    rows.Add("checkpoint space", proto::DoctorCheck::FAIL, job.status().message(), "correct the job spec");
    return;
  }
  const std::string dir = job->checkpoint().dir().empty()
                              ? (fs::path(job->run_dir()) / "checkpoints").string()
                              : job->checkpoint().dir();
  fs::path existing = fs::absolute(dir);
  std::error_code ec;
  while (!fs::exists(existing, ec) && existing.has_parent_path() && existing != existing.parent_path()) {
    existing = existing.parent_path();
  }
  struct statvfs vfs;
  if (::statvfs(existing.c_str(), &vfs) != 0 || ::access(existing.c_str(), W_OK | X_OK) != 0) {
    rows.Add("checkpoint space", proto::DoctorCheck::FAIL,
             dir + ": " + existing.string() + " is not writable here (" + std::strerror(errno) + ")",
             "make the checkpoint directory writable for the job's user, or set checkpoint.dir");
    return;
  }
  const double free = static_cast<double>(vfs.f_bavail) * static_cast<double>(vfs.f_frsize);
  // A checkpoint holds the fp32 weights and both AdamW moments; keep_last + 1 exist while the next
  // one is written (keep_last 0 keeps every one: at least two).
  const double params = static_cast<double>(ParamCount(GptConfig::FromSpec(job->model())));
  const int copies = job->checkpoint().keep_last() > 0 ? job->checkpoint().keep_last() + 1 : 2;
  const double need = params * 4.0 * 3.0 * copies;
  const std::string detail = dir + ": " + Gib(free) + " free on " + existing.string() + "; " +
                             std::to_string(copies) + " checkpoints of " + Gib(params * 12.0) + " need " +
                             Gib(need);
  if (free < need) {
    rows.Add("checkpoint space", proto::DoctorCheck::FAIL, detail,
             "free space there, or point checkpoint.dir at a larger file system");
  } else if (free < 2 * need) {
    rows.Add("checkpoint space", proto::DoctorCheck::WARN, detail,
             "less than twice what the job needs is free");
  } else {
    rows.Add("checkpoint space", proto::DoctorCheck::OK, detail);
  }
}

void CheckLeaseDir(Rows& rows, const std::string& inventory_path) {
  if (inventory_path.empty()) {
    rows.Add("lease dir", proto::DoctorCheck::WARN, "not checked: no inventory given",
             "give --inventory INV.textproto to check its lease_dir (node leases of fjord launch)");
    return;
  }
  StatusOr<proto::Inventory> inventory = LoadInventory(inventory_path);
  if (!inventory.ok()) {
    rows.Add("lease dir", proto::DoctorCheck::FAIL, inventory.status().message(), "correct the inventory");
    return;
  }
  const std::string dir = inventory->lease_dir();
  if (dir.empty()) {
    rows.Add(
        "lease dir", proto::DoctorCheck::WARN, inventory_path + " names no lease_dir",
        "without Slurm, fjord launch keeps tenants off each other's nodes through leases: add lease_dir: "
        "\"DIR\" on storage every launch host sees (docs/SOVEREIGNTY.md, \"Node leases\")");
    return;
  }
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || ::access(dir.c_str(), R_OK | W_OK | X_OK) != 0) {
    rows.Add("lease dir", proto::DoctorCheck::FAIL,
             dir + " (lease_dir of " + inventory_path + ") is " +
                 (fs::exists(dir, ec) ? "not a directory this user can write" : "missing"),
             "mkdir -p " + dir + " on storage every launch host sees, writable by the users who launch jobs");
    return;
  }
  rows.Add("lease dir", proto::DoctorCheck::OK, dir + " (lease_dir of " + inventory_path + ") is writable");
}

void CheckClock(Rows& rows) {
  const std::string fix =
      "run chrony or systemd-timesyncd (apt-get install chrony): audit records and lease times are compared "
      "across nodes";
  std::string out;
  if (!FindOnPath("chronyc").empty() && Capture("chronyc -n -c tracking", &out) == 0) {
    // CSV: ref id, ref name, stratum, ref time, system time offset (s), ..., leap status (last).
    std::vector<std::string> f;
    std::stringstream ss(FirstLine(out));
    for (std::string x; std::getline(ss, x, ',');) f.push_back(x);
    const double offset = f.size() > 4 ? std::atof(f[4].c_str()) : 0;
    const bool synced = !f.empty() && f.back() != "Not synchronised";
    char detail[160];
    std::snprintf(detail, sizeof(detail), "chrony: %s, offset %.6f s",
                  synced ? "synchronised" : "not synchronised", offset);
    rows.Add("clock",
             !synced                   ? proto::DoctorCheck::WARN
             : std::fabs(offset) > 1.0 ? proto::DoctorCheck::FAIL
                                       : proto::DoctorCheck::OK,
             detail, synced && std::fabs(offset) <= 1.0 ? "" : fix);
    return;
  }
  out.clear();
  if (!FindOnPath("timedatectl").empty() &&
      Capture("timedatectl show -p NTPSynchronized --value", &out) == 0) {
    const bool synced = FirstLine(out) == "yes";
    rows.Add("clock", synced ? proto::DoctorCheck::OK : proto::DoctorCheck::WARN,
             std::string("systemd-timesyncd: ") + (synced ? "synchronised" : "not synchronised"),
             synced ? "" : fix);
    return;
  }
  rows.Add("clock", proto::DoctorCheck::WARN,
           "no time synchronisation found (neither chronyc nor timedatectl answers)", fix);
}

void CheckUserNamespaces(Rows& rows) {
  const std::string warning = UnprivilegedUserNamespacesWarning();
  if (warning.empty()) {
    rows.Add("user namespaces", proto::DoctorCheck::OK, "unprivileged user namespaces are disabled");
  } else {
    rows.Add("user namespaces", proto::DoctorCheck::WARN, warning,
             "sysctl -w user.max_user_namespaces=0, and the same in /etc/sysctl.d/");
  }
}

void CheckThreads(Rows& rows) {
  cpu_set_t set;
  const int cores = ::sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  const int omp = omp_get_max_threads();
  const int local = std::max(1, RankInfoFromEnvironment().local_size);
  std::string blas = "OpenBLAS (fjord calls it single-threaded inside OpenMP blocks)";
  if (auto config = reinterpret_cast<const char* (*)()>(::dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    blas = config() + std::string(" (called single-threaded inside OpenMP blocks)");
  }
  const std::string detail = std::to_string(omp) + " OpenMP thread(s) x " + std::to_string(local) +
                             " rank(s) on this node, " + std::to_string(cores) + " core(s) available; " +
                             blas;
  if (omp * local > cores) {
    rows.Add("threads", proto::DoctorCheck::WARN, detail + ": oversubscribed",
             "set OMP_NUM_THREADS=" + std::to_string(std::max(1, cores / local)) +
                 " (cores / ranks per node): spinning OpenMP threads that share a core slow every rank");
  } else {
    rows.Add("threads", proto::DoctorCheck::OK, detail);
  }
}

// The 2-rank probe a lone doctor starts: a reduction across both ranks.
int MpiProbe() {
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptions{std::chrono::seconds(30)});
  if (!comm.ok()) {
    std::fprintf(stderr, "fjord doctor: mpi probe: %s\n", comm.status().message().c_str());
    return 1;
  }
  const int n = (*comm)->size(), r = (*comm)->rank();
  int32_t mine = r + 1, sum = 0;
  Status s = (*comm)->AllReduce(&mine, &sum, 1, DataType::kI32, ReduceOp::kSum);
  const bool ok = s.ok() && sum == n * (n + 1) / 2;
  std::printf("fjord doctor: mpi probe: rank %d of %d %s\n", r, n, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}

const char* LevelName(Level level) {
  return level == proto::DoctorCheck::OK ? "OK" : level == proto::DoctorCheck::WARN ? "WARN" : "FAIL";
}

}  // namespace

proto::DoctorReport CheckThisNode(const DoctorOptions& options, int world_size) {
  proto::DoctorReport report;
  report.set_fjord_version(FjordVersion());
  Rows rows(&report);
  CheckMpi(rows, world_size);
  CheckGpuLibraries(rows, CheckGpus(rows));
  CheckIdentity(rows);
  CheckCheckpointSpace(rows, options.job);
  CheckLeaseDir(rows, options.inventory);
  CheckClock(rows);
  CheckUserNamespaces(rows);
  CheckThreads(rows);
  return report;
}

std::string DoctorTable(const proto::DoctorReport& report) {
  size_t host_w = 4, name_w = 5;
  for (const proto::DoctorCheck& c : report.check()) {
    host_w = std::max(host_w, c.host().size());
    name_w = std::max(name_w, c.name().size());
  }
  auto pad = [](const std::string& s, size_t w) {
    return s + std::string(w > s.size() ? w - s.size() : 0, ' ');
  };
  std::string out = pad("HOST", host_w) + "  " + pad("CHECK", name_w) + "  STATUS  DETAIL / WHAT TO DO\n";
  int counts[3] = {0, 0, 0};
  std::map<std::string, int> hosts;
  for (const proto::DoctorCheck& c : report.check()) {
    ++counts[c.level()];
    ++hosts[c.host()];
    out += pad(c.host(), host_w) + "  " + pad(c.name(), name_w) + "  " + pad(LevelName(c.level()), 6) + "  " +
           c.detail() + "\n";
    if (c.level() != proto::DoctorCheck::OK && !c.fix().empty()) {
      out += std::string(host_w + name_w + 12, ' ') + "-> " + c.fix() + "\n";
    }
  }
  out += "fjord doctor: " + std::to_string(report.check_size()) + " checks on " +
         std::to_string(hosts.size()) + " host(s): " + std::to_string(counts[0]) + " OK, " +
         std::to_string(counts[1]) + " WARN, " + std::to_string(counts[2]) + " FAIL\n";
  return out;
}

int RunDoctor(const DoctorOptions& options) {
  if (options.mpi_probe) return MpiProbe();
  const RankInfo rank = RankInfoFromEnvironment();
  proto::DoctorReport report = CheckThisNode(options, rank.world_size);
  int rank_index = 0;
  if (rank.world_size > 1) {
    StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptions{std::chrono::seconds(120)});
    if (!comm.ok()) {
      std::fprintf(stderr, "fjord doctor: error: %s\n", comm.status().message().c_str());
      return 1;
    }
    rank_index = (*comm)->rank();
    std::string mine;
    report.SerializeToString(&mine);
    StatusOr<std::vector<std::string>> all = AllGatherStrings(**comm, mine);
    if (!all.ok()) {
      std::fprintf(stderr, "fjord doctor: error: %s\n", all.status().message().c_str());
      return 1;
    }
    // One report per host: the first rank's (ranks on one host see the same node).
    proto::DoctorReport merged;
    merged.set_fjord_version(report.fjord_version());
    std::map<std::string, bool> seen;
    for (const std::string& bytes : *all) {
      proto::DoctorReport one;
      one.ParseFromString(bytes);
      if (one.check_size() == 0 || seen[one.check(0).host()]) continue;
      seen[one.check(0).host()] = true;
      merged.mutable_check()->MergeFrom(one.check());
    }
    report = std::move(merged);
  }
  bool failed = false;
  for (const proto::DoctorCheck& c : report.check()) failed |= c.level() == proto::DoctorCheck::FAIL;
  if (rank_index == 0) {
    if (options.json) {
      std::string json;
      google::protobuf::util::JsonPrintOptions print;
      print.add_whitespace = true;
      print.always_print_primitive_fields = true;
      (void)google::protobuf::util::MessageToJsonString(report, &json, print);
      std::fputs(json.c_str(), stdout);
    } else {
      std::fputs(DoctorTable(report).c_str(), stdout);
    }
    std::fflush(stdout);
  }
  return failed ? 1 : 0;
}

void AddDoctorCommand(CLI::App& app) {
  auto options = std::make_shared<DoctorOptions>();
  cli::Command* c = cli::AddCommand(app, "doctor",
                                    "check that this node (under mpirun: every node) is fit for a tenant's "
                                    "job: OK / WARN / FAIL and what to do");
  c->add_option("--inventory", options->inventory, "check the inventory's lease directory")->type_name("INV");
  c->add_option("--job", options->job, "check free space for the job's checkpoints")->type_name("JOB");
  c->add_flag("--json", options->json, "print the report as JSON");
  c->add_flag("--mpi-probe", options->mpi_probe, "")->group("");  // internal: what the MPI check starts
  c->run = [options] { return RunDoctor(*options); };
}

}  // namespace fjord
