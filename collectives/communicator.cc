// The backend-independent part of communicator.h: names of the enums, where this process sits
// in the job (from the launcher's environment), and the choice of backend.
//
// Design: the backend is chosen from the environment before MPI is touched, so a plain
// `fjord train` on a laptop never initializes MPI (Open MPI's singleton start spawns a helper
// daemon and takes a second); a launcher that set a world size above 1, or a PMIx launcher,
// gets the MPI backend, which then takes rank and size from MPI itself.
#include "collectives/communicator.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>

#include "collectives/mpi/mpi_communicator.h"
#include "collectives/self_communicator.h"
#include "common/env.h"
#include "common/host.h"

namespace fjord {
namespace {

// The first of `names` that is set, as an integer.
std::optional<long> FirstInt(std::initializer_list<const char*> names) {
  for (const char* name : names) {
    if (std::optional<long> v = GetEnvInt(name)) return v;
  }
  return std::nullopt;
}

bool LaunchedWithSeveralRanks() {
  if (std::optional<long> size = FirstInt({"OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS"})) return *size > 1;
  return GetEnv("PMIX_RANK").has_value();
}

class DoneHandle final : public CommHandle {
 public:
  explicit DoneHandle(Status status) : status_(std::move(status)) {}
  Status Wait() override { return status_; }
  StatusOr<bool> Test() override {
    if (!status_.ok()) return status_;
    return true;
  }

 private:
  Status status_;
};

}  // namespace

std::unique_ptr<CommHandle> CompletedHandle(Status status) {
  return std::make_unique<DoneHandle>(std::move(status));
}

size_t DataTypeSize(DataType dtype) {
  switch (dtype) {
    case DataType::kF32:
      return 4;
    case DataType::kBF16:
      return 2;
    case DataType::kF16:
      return 2;
    case DataType::kI32:
      return 4;
    case DataType::kU8:
      return 1;
  }
  return 0;
}

const char* DataTypeName(DataType dtype) {
  switch (dtype) {
    case DataType::kF32:
      return "float";
    case DataType::kBF16:
      return "bfloat16";
    case DataType::kF16:
      return "half";
    case DataType::kI32:
      return "int32";
    case DataType::kU8:
      return "uint8";
  }
  return "?";
}

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
  }
  return "?";
}

const char* AlgorithmName(Algorithm algo) {
  switch (algo) {
    case Algorithm::kAuto:
      return "auto";
    case Algorithm::kMpi:
      return "mpi";
    case Algorithm::kRing:
      return "ring";
    case Algorithm::kTree:
      return "tree";
  }
  return "?";
}

StatusOr<Algorithm> ParseAlgorithm(const std::string& name) {
  for (Algorithm a : {Algorithm::kAuto, Algorithm::kMpi, Algorithm::kRing, Algorithm::kTree}) {
    if (name == AlgorithmName(a)) return a;
  }
  return InvalidArgument("unknown collective algorithm '" + name + "': use auto, mpi, ring or tree");
}

RankInfo RankInfoFromEnvironment() {
  RankInfo info;
  info.rank = static_cast<int>(FirstInt({"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"}).value_or(0));
  info.world_size = static_cast<int>(FirstInt({"OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS"}).value_or(1));
  info.local_rank = static_cast<int>(FirstInt({"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"}).value_or(0));
  info.local_size =
      static_cast<int>(FirstInt({"OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"}).value_or(1));
  info.host = ThisHostname();
  return info;
}

StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(const CommOptions& options, bool force_mpi) {
  if (options.timeout.count() <= 0) {
    return InvalidArgument("communicator timeout must be positive, got " +
                           std::to_string(options.timeout.count()) + " ms");
  }
  if (force_mpi || LaunchedWithSeveralRanks()) return CreateMpiCommunicator(options);
  return CreateSelfCommunicator(options);
}

StatusOr<std::vector<std::string>> AllGatherStrings(
    std::string_view mine, int world_size,
    const std::function<Status(const void*, void*, size_t)>& gather_bytes) {
  const size_t n = static_cast<size_t>(world_size);
  const uint64_t my_length = mine.size();
  std::vector<uint64_t> lengths(n);
  FJORD_RETURN_IF_ERROR(gather_bytes(&my_length, lengths.data(), sizeof(uint64_t)));
  const size_t slot = static_cast<size_t>(*std::max_element(lengths.begin(), lengths.end()));
  std::string padded(mine);
  padded.resize(slot, '\0');
  std::string all(slot * n, '\0');
  if (slot > 0) FJORD_RETURN_IF_ERROR(gather_bytes(padded.data(), all.data(), slot));
  std::vector<std::string> out;
  out.reserve(n);
  for (size_t r = 0; r < n; ++r) out.push_back(all.substr(r * slot, static_cast<size_t>(lengths[r])));
  return out;
}

StatusOr<std::vector<std::string>> AllGatherStrings(Communicator& comm, std::string_view mine) {
  return AllGatherStrings(mine, comm.size(), [&comm](const void* send, void* recv, size_t bytes) {
    return comm.AllGather(send, recv, bytes, DataType::kU8);
  });
}

}  // namespace fjord
