// Where a rank's tensors live and its ops run: the CPU (host memory, kernels/cpu) or one CUDA GPU
// (device memory, kernels/cuda, a compute stream and a communication stream), and the memory
// arena every runtime buffer is carved from.
//
// Design: the model, the optimizer and the gradient reducer are written once against Device and
// Arena. The CPU device's "device memory" is host memory, so the arena, the copies and the
// staging paths run (and are tested) on machines without a GPU; the CUDA device
// (runtime/device/device_cuda.cu, built with FJORD_HAVE_CUDA) implements the same calls on a GPU.
//
// Ordering on CUDA: ops are enqueued on the compute stream and return at once. Upload, Download
// and Zero are synchronous for the host and ordered after everything enqueued on the compute
// stream before them. The communication stream runs the host staging copies of gradient buckets
// after an event recorded on the compute stream (OrderAfterCompute), so they wait for the
// backward kernels that wrote the bucket and no longer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "collectives/communicator.h"
#include "common/status.h"
#include "kernels/ops.h"
#include "proto/job.pb.h"

namespace fjord {

// One rank's compute device. Not thread-safe; one per rank, created by CreateDevice.
class Device {
 public:
  virtual ~Device() = default;

  virtual bool is_cuda() const = 0;
  // "cpu" or "cuda:N NAME (PCI bus id), X GiB": for logs and messages.
  virtual const std::string& description() const = 0;
  // Compute capability as 10 x major + minor (90 for sm_90); 0 on the CPU.
  virtual int compute_capability() const { return 0; }
  // The op table and the context (stream, cuBLASLt handle, workspace) every op is called with.
  virtual const Ops& ops() const = 0;
  virtual const OpContext& context() const = 0;

  // Raw memory of the backend (device memory on CUDA), for Arena only: nullptr when `bytes`
  // cannot be allocated. Free(p) releases what Allocate returned.
  virtual void* Allocate(size_t bytes) = 0;
  virtual void Free(void* p) = 0;
  // Pinned host memory for staging (page-locked on CUDA, plain on the CPU); nullptr on failure.
  virtual void* AllocateHost(size_t bytes) = 0;
  virtual void FreeHost(void* p) = 0;

  // Synchronous copies and fill, ordered after the work enqueued on the compute stream.
  virtual void Upload(void* dst, const void* host, size_t bytes) = 0;
  virtual void Download(void* host, const void* src, size_t bytes) = 0;
  virtual void Zero(void* dst, size_t bytes) = 0;
  // Waits for everything enqueued on the compute stream.
  virtual void Synchronize() = 0;

  // Copies `bytes` from device memory to pinned host memory on the communication stream, after
  // the compute work enqueued so far, and waits for that copy only (the bucket-staging path of
  // the MPI backend on CUDA). On the CPU a memcpy.
  virtual void StageToHost(void* host, const void* src, size_t bytes) = 0;
  // Makes `stream` (a cudaStream_t, e.g. the NCCL communicator's) wait for the compute work
  // enqueued so far, without blocking the host. No-op on the CPU.
  virtual void OrderAfterCompute(CUstream_st* stream) = 0;
};

// Host memory a new allocation can take now, and what bounds it: MemAvailable of /proc/meminfo
// (free plus reclaimable; sysinfo's free RAM where that line is missing), or less where this
// process's memory cgroup leaves less: the smallest limit minus usage (less its page cache but
// tmpfs/shm, which the kernel reclaims before it kills) over the cgroup and its ancestors, cgroup v2
// (memory.max, memory.current) or v1 (hierarchical_memory_limit, memory.usage_in_bytes). A job
// under Slurm's cgroup plugin, systemd or a container is killed at its cgroup's limit, not at the
// host's MemAvailable, so that is what a plan must be measured against.
struct HostMemory {
  size_t bytes = 0;
  // "MemAvailable", or "the memory cgroup /slurm/uid_0/job_7: limit 4.0 GiB, 1.2 GiB used".
  std::string bound;
};
HostMemory AvailableHostMemory();
size_t AvailableHostBytes();  // AvailableHostMemory().bytes

// The process-wide CPU device (kernels/cpu, host memory); thread-safe to call.
Device& CpuDevice();

// GPUs the CUDA runtime sees (0 without a CUDA build, driver or device).
int CudaDeviceCount();

// The device for this rank. `requested` is the job spec's `device`:
//  - CPU: the CPU device.
//  - CUDA: GPU (local_rank % visible GPUs) of `where` (the communicator's rank_info: local rank
//    from OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID or MPI_Comm_split_type); FailedPrecondition
//    naming the rank, the host and what to do when this build has no CUDA or no GPU is visible.
//  - AUTO: CUDA when the build has it and a GPU is visible, else the CPU.
// `workspace_bytes` sizes the CUDA GEMM / scratch workspace (ignored on the CPU).
StatusOr<std::unique_ptr<Device>> CreateDevice(proto::Device requested, const RankInfo& where,
                                               size_t workspace_bytes);

// Workspace the CUDA ops need for micro-batches of B x T tokens: 32 MiB for cuBLASLt plus the
// encoder backward's sort (16 bytes per token, doubled for CUB's temporary storage).
size_t CudaWorkspaceBytes(int B, int T);

#ifdef FJORD_HAVE_CUDA
// The CUDA device implementation (runtime/device/device_cuda.cu). FailedPrecondition as CreateDevice.
StatusOr<std::unique_ptr<Device>> CreateCudaDevice(const RankInfo& where, size_t workspace_bytes);
#endif

// Memory of one device taken in a single allocation at start and handed out in 256-byte aligned
// pieces that live as long as the arena (no individual frees). The whole allocation is zeroed
// when it is taken and again before it is released (tenant hygiene: the next process on the
// device never sees this tenant's weights or activations).
class Arena {
 public:
  // Allocates `bytes` on `device` (which must outlive the arena); `what` names it in messages
  // ("model and optimizer"). FailedPrecondition naming the size and the device when it fails.
  static StatusOr<std::unique_ptr<Arena>> Create(Device& device, size_t bytes, const std::string& what);
  ~Arena();  // Release(), fatal if it fails
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // The next `count` elements, 256-byte aligned, zero. Fatal when the arena is too small (the
  // size computation of the caller is wrong: a bug, not bad input).
  float* Floats(size_t count) { return static_cast<float*>(Take(count * sizeof(float))); }
  int32_t* Ints(size_t count) { return static_cast<int32_t*>(Take(count * sizeof(int32_t))); }
  void* Bytes(size_t count) { return Take(count); }

  Device& device() const { return device_; }
  size_t capacity() const { return capacity_; }
  size_t used() const { return used_; }

  // Zeroes the whole allocation and frees it; later calls do nothing. With the test hook
  // FJORD_TEST_HOOK=arena_verify_zero the memory is read back after zeroing and a non-zero
  // byte is an Internal error (the memory is freed either way); the hook also prints
  // "fjord: arena <what>: <N> bytes zeroed and read back" on stderr.
  Status Release();

  // Bytes a piece of `bytes` occupies (rounded up to the alignment).
  static size_t Rounded(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }
  static constexpr size_t kAlign = 256;

 private:
  Arena(Device& device, void* base, size_t bytes, std::string what)
      : device_(device), base_(static_cast<char*>(base)), capacity_(bytes), what_(std::move(what)) {}
  void* Take(size_t bytes);

  Device& device_;
  char* base_;
  size_t capacity_;
  size_t used_ = 0;
  std::string what_;
};

// Zeroing on the way out (tenant hygiene when the destructor never runs). Every arena in host
// memory (the CPU device's) is listed in a fixed, lock-free table while it lives. The first
// Arena::Create installs a handler for SIGABRT (FJORD_CHECK, std::terminate, an uncaught
// std::bad_alloc), SIGSEGV, SIGBUS, SIGFPE, SIGQUIT, SIGHUP, SIGTERM and SIGINT, for each signal
// whose disposition is still the default: it zeroes the listed arenas (volatile writes; with the
// test hook arena_verify_zero it reads them back and prints "fjord: arena <what>: zeroed on signal
// <N>: <B> bytes read back, <Z> non-zero" with write(2)), restores the default and re-raises. A
// handler installed later (the trainer's SIGTERM / SIGINT / SIGUSR1 for preemption) replaces it
// and calls ZeroHostArenasNow itself where it ends the process. What remains: SIGKILL cannot be
// caught (the kernel still never hands a freed page to another process unzeroed; a core dump
// taken before would hold the data, so the handler runs before the default action writes one),
// and arenas in GPU memory (cudaMemset is not async-signal-safe): those are zeroed by Release
// only, and by the CUDA driver's own scrubbing of freed device memory, which it does not promise.
//
// Zeroes every listed host arena now; async-signal-safe (no allocation, no locks, write(2) only).
// `sig` is only for the verification line.
void ZeroHostArenasNow(int sig);

// Number of non-zero bytes in [src, src + bytes) of `device` memory (read back in chunks).
size_t NonZeroBytes(Device& device, const void* src, size_t bytes);

}  // namespace fjord
