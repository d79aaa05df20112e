// The CUDA device of runtime/device/device.h: one GPU per rank, a compute stream for the ops, a
// communication stream for staging copies, one event between them, a cuBLASLt handle and the
// GEMM workspace. Everything here is host code calling the CUDA runtime; the kernels live in
// kernels/cuda. Failures after creation are fatal (FJORD_CUDA_CHECK: statement, file:line, rank,
// host, device): a failed copy or launch on a working GPU is a broken machine, not bad input.
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <string>

#include "kernels/cuda/cuda_check.cuh"
#include "runtime/device/device.h"

namespace fjord {

int CudaVisibleDevices(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // later calls must not report this error again
    *why = std::string("cudaGetDeviceCount: ") + cudaGetErrorName(err) + ", " + cudaGetErrorString(err);
    return 0;
  }
  if (count == 0) *why = "cudaGetDeviceCount: 0 devices";
  return count;
}

namespace {

std::string CudaText(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

class CudaDevice final : public Device {
 public:
  CudaDevice() = default;
  CudaDevice(const CudaDevice&) = delete;
  CudaDevice& operator=(const CudaDevice&) = delete;

  ~CudaDevice() override {
    if (compute_ != nullptr) cudaStreamSynchronize(compute_);
    if (comm_ != nullptr) cudaStreamSynchronize(comm_);
    if (workspace_ != nullptr) {
      cudaMemset(workspace_, 0, context_.workspace_bytes);  // tenant hygiene, as for the arena
      cudaDeviceSynchronize();
      cudaFree(workspace_);
    }
    if (blas_ != nullptr) cublasLtDestroy(blas_);
    if (event_ != nullptr) cudaEventDestroy(event_);
    if (comm_ != nullptr) cudaStreamDestroy(comm_);
    if (compute_ != nullptr) cudaStreamDestroy(compute_);
  }

  Status Init(const RankInfo& where, size_t workspace_bytes, int visible) {
    where_ = "rank " + std::to_string(where.rank) + " on host " + where.host;
    index_ = where.local_rank % visible;
#define FJORD_CUDA_INIT(stmt)                                                            \
  do {                                                                                   \
    const cudaError_t e_ = (stmt);                                                       \
    if (e_ != cudaSuccess) {                                                             \
      return FailedPrecondition(std::string(#stmt) + " failed on " + where_ + ", GPU " + \
                                std::to_string(index_) + ": " + CudaText(e_) +           \
                                "; check the GPU with nvidia-smi, or set device: CPU");  \
    }                                                                                    \
  } while (0)
    FJORD_CUDA_INIT(cudaSetDevice(index_));
    cudaDeviceProp prop;
    FJORD_CUDA_INIT(cudaGetDeviceProperties(&prop, index_));
    char bus[32] = {};
    FJORD_CUDA_INIT(cudaDeviceGetPCIBusId(bus, sizeof(bus), index_));
    char text[512];
    std::snprintf(text, sizeof(text), "cuda:%d %s (%s, sm_%d%d, %.1f GiB)", index_, prop.name, bus,
                  prop.major, prop.minor,
                  static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
    description_ = text;
    compute_capability_ = 10 * prop.major + prop.minor;
    FJORD_CUDA_INIT(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking));
    FJORD_CUDA_INIT(cudaStreamCreateWithFlags(&comm_, cudaStreamNonBlocking));
    FJORD_CUDA_INIT(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    FJORD_CUDA_INIT(cudaMalloc(&workspace_, workspace_bytes));
    // On the compute stream: it is non-blocking, so it would not wait for a cudaMemset on the legacy
    // default stream, and the first GEMM could run while the workspace is still being zeroed.
    FJORD_CUDA_INIT(cudaMemsetAsync(workspace_, 0, workspace_bytes, compute_));
#undef FJORD_CUDA_INIT
    if (cublasLtCreate(&blas_) != CUBLAS_STATUS_SUCCESS) {
      return FailedPrecondition("cublasLtCreate failed on " + where_ + ", GPU " + std::to_string(index_) +
                                ": check the CUDA installation (libcublasLt), or set device: CPU");
    }
    context_.stream = compute_;
    context_.blas = blas_;
    context_.workspace = workspace_;
    context_.workspace_bytes = workspace_bytes;
    return OkStatus();
  }

  bool is_cuda() const override { return true; }
  int compute_capability() const override { return compute_capability_; }
  const std::string& description() const override { return description_; }
  const Ops& ops() const override { return CudaOps(); }
  const OpContext& context() const override { return context_; }

  void* Allocate(size_t bytes) override {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    return p;
  }
  void Free(void* p) override { FJORD_CUDA_CHECK(cudaFree(p)); }
  void* AllocateHost(size_t bytes) override {
    void* p = nullptr;
    if (cudaMallocHost(&p, bytes) != cudaSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    return p;
  }
  void FreeHost(void* p) override { FJORD_CUDA_CHECK(cudaFreeHost(p)); }

  void Upload(void* dst, const void* host, size_t bytes) override {
    if (bytes == 0) return;
    FJORD_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, compute_));
    FJORD_CUDA_CHECK(cudaStreamSynchronize(compute_));
  }
  void Download(void* host, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    FJORD_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, compute_));
    FJORD_CUDA_CHECK(cudaStreamSynchronize(compute_));
  }
  void Zero(void* dst, size_t bytes) override {
    if (bytes == 0) return;
    FJORD_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, compute_));
    FJORD_CUDA_CHECK(cudaStreamSynchronize(compute_));
  }
  void Synchronize() override { FJORD_CUDA_CHECK(cudaStreamSynchronize(compute_)); }

  void StageToHost(void* host, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    OrderAfterCompute(comm_);
    FJORD_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, comm_));
    FJORD_CUDA_CHECK(cudaStreamSynchronize(comm_));
  }
  void OrderAfterCompute(CUstream_st* stream) override {
    // One event serves every call: cudaStreamWaitEvent takes the work the event covers when it is
    // called, so re-recording afterwards does not change what `stream` waits for.
    FJORD_CUDA_CHECK(cudaEventRecord(event_, compute_));
    FJORD_CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0));
  }

 private:
  std::string where_, description_;
  int index_ = 0;
  int compute_capability_ = 0;  // 10 x major + minor
  cudaStream_t compute_ = nullptr, comm_ = nullptr;
  cudaEvent_t event_ = nullptr;
  cublasLtHandle_t blas_ = nullptr;
  void* workspace_ = nullptr;
  OpContext context_;
};

}  // namespace

StatusOr<std::unique_ptr<Device>> CreateCudaDevice(const RankInfo& where, size_t workspace_bytes) {
  std::string why;
  const int visible = CudaVisibleDevices(&why);
  if (visible == 0) {
    return FailedPrecondition("no usable GPU is visible to rank " + std::to_string(where.rank) + " on host " +
                              where.host + " (" + why + "): run on a GPU node, or set device: CPU");
  }
  auto device = std::make_unique<CudaDevice>();
  FJORD_RETURN_IF_ERROR(device->Init(where, workspace_bytes, visible));
  return std::unique_ptr<Device>(std::move(device));
}

}  // namespace fjord
