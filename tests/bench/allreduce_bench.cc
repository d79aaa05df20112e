// allreduce_bench: AllReduce time and bandwidth per message size for each algorithm of the MPI
// communicator, next to the MPI library's own blocking MPI_Allreduce ("raw"), in the nccl-tests table
// format (algbw = bytes / time; busbw = algbw * 2 (n - 1) / n, the bytes each rank's link
// carries, comparable across rank counts).
//
//   mpirun -np 2 build/bin/allreduce_bench [-b 8] [-e 256M] [-f 2] [--algo raw,mpi,ring,tree,auto]
//          [--dtype float] [--seconds 0.2] [--warmup 3] [--repeat 1] [--inplace] [--chunk BYTES]
//          [--tree-max BYTES]
//
// An algorithm may carry its own chunk size and window (chunks in flight), e.g.
// --algo raw,ring@256K,ring@1M/2, to compare them under the same machine conditions.
//
// Design: one communicator per algorithm, all created up front (MPI_THREAD_MULTIPLE), so the
// rows of one size are measured back to back under the same machine conditions. The time of a
// row is the slowest rank's mean over as many iterations as fit in --seconds (at least 3); with
// --repeat R, the best of R such measurements (for a shared, noisy machine). Each
// row also runs once with verifiable inputs (small integers, exact in every dtype) and counts
// wrong elements, as nccl-tests does. "raw" is MPI_Allreduce called on this thread: no
// communication thread, no timeout, no bf16 support (it is skipped for bf16 / f16).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "collectives/reduce.h"

namespace fjord {
namespace {

struct Options {
  size_t min_bytes = 8;
  size_t max_bytes = size_t{256} << 20;
  size_t factor = 2;
  std::vector<std::string> algos = {"raw", "mpi", "ring", "tree", "auto"};
  DataType dtype = DataType::kF32;
  double seconds = 0.2;
  int warmup = 3;
  int repeat = 1;
  bool in_place = false;
  size_t chunk = 0;     // CommOptions::ring_chunk_bytes (0: default)
  size_t tree_max = 0;  // CommOptions::tree_max_bytes (0: default)
};

[[noreturn]] void Usage(const char* why) {
  std::fprintf(
      stderr,
      "allreduce_bench: %s\nusage: mpirun -np N allreduce_bench [-b MIN] [-e MAX] [-f FACTOR] "
      "[--algo raw,mpi,ring,tree,auto] [--dtype float|bfloat16|half|int32] [--seconds S] [--warmup N] "
      "[--repeat R] "
      "[--inplace] [--chunk BYTES] [--tree-max BYTES]\n  sizes take K, M, G suffixes (powers of 1024)\n",
      why);
  std::exit(2);
}

size_t ParseSize(const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || v < 0) Usage(("bad size '" + s + "'").c_str());
  size_t mult = 1;
  if (*end == 'K' || *end == 'k') mult = size_t{1} << 10;
  if (*end == 'M' || *end == 'm') mult = size_t{1} << 20;
  if (*end == 'G' || *end == 'g') mult = size_t{1} << 30;
  return static_cast<size_t>(v * static_cast<double>(mult));
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    if (a == "-b") {
      o.min_bytes = ParseSize(value());
    } else if (a == "-e") {
      o.max_bytes = ParseSize(value());
    } else if (a == "-f") {
      o.factor = ParseSize(value());
    } else if (a == "--algo") {
      o.algos.clear();
      std::string list = value();
      for (size_t pos = 0; pos <= list.size();) {
        const size_t comma = std::min(list.find(',', pos), list.size());
        o.algos.push_back(list.substr(pos, comma - pos));
        pos = comma + 1;
      }
    } else if (a == "--dtype") {
      const std::string d = value();
      bool found = false;
      for (DataType t : {DataType::kF32, DataType::kBF16, DataType::kF16, DataType::kI32}) {
        if (d == DataTypeName(t)) o.dtype = t, found = true;
      }
      if (!found) Usage(("unknown dtype '" + d + "'").c_str());
    } else if (a == "--seconds") {
      o.seconds = std::atof(value().c_str());
    } else if (a == "--warmup") {
      o.warmup = std::atoi(value().c_str());
    } else if (a == "--repeat") {
      o.repeat = std::max(1, std::atoi(value().c_str()));
    } else if (a == "--inplace") {
      o.in_place = true;
    } else if (a == "--chunk") {
      o.chunk = ParseSize(value());
    } else if (a == "--tree-max") {
      o.tree_max = ParseSize(value());
    } else {
      Usage(("unknown argument '" + a + "'").c_str());
    }
  }
  if (o.factor < 2 || o.min_bytes == 0 || o.max_bytes < o.min_bytes)
    Usage("need 0 < MIN <= MAX and FACTOR >= 2");
  for (const std::string& a : o.algos) {
    if (a != "raw" && !ParseAlgorithm(a.substr(0, std::min(a.find('@'), a.find('/')))).ok()) {
      Usage(("unknown algorithm '" + a + "'").c_str());
    }
  }
  return o;
}

// Small integers, exact in every dtype for sums over up to 16 ranks.
double Value(int rank, size_t i) {
  return static_cast<double>(static_cast<int>((i * 7 + static_cast<size_t>(rank) * 3) % 13) - 6);
}

// The values are small integers (Value and their sums), so the conversion is exact.
void Encode(DataType dtype, double v, void* dst) { StoreInteger(dtype, static_cast<int64_t>(v), dst); }

MPI_Datatype RawType(DataType dtype) { return dtype == DataType::kF32 ? MPI_FLOAT : MPI_INT32_T; }

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace
}  // namespace fjord

int main(int argc, char** argv) {
  using namespace fjord;
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  const Options o = ParseArgs(argc, argv);
  int rank = 0, n = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  if (provided < MPI_THREAD_MULTIPLE) {
    if (rank == 0) std::fprintf(stderr, "allreduce_bench: MPI does not provide MPI_THREAD_MULTIPLE\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  const size_t es = DataTypeSize(o.dtype);

  std::map<std::string, std::unique_ptr<Communicator>> comms;
  for (const std::string& a : o.algos) {
    if (a == "raw") continue;
    CommOptions co;
    const size_t at = a.find('@'), slash = a.find('/');
    co.algorithm = *ParseAlgorithm(a.substr(0, std::min(at, slash)));
    co.ring_chunk_bytes = at == std::string::npos ? o.chunk : ParseSize(a.substr(at + 1, slash - at - 1));
    if (slash != std::string::npos) co.ring_window = std::atoi(a.c_str() + slash + 1);
    co.tree_max_bytes = o.tree_max;
    StatusOr<std::unique_ptr<Communicator>> c = CreateCommunicator(co, /*force_mpi=*/true);
    if (!c.ok()) {
      std::fprintf(stderr, "allreduce_bench: rank %d: %s\n", rank, c.status().message().c_str());
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    comms[a] = std::move(c).value();
  }

  const size_t max_count = std::max<size_t>(o.max_bytes / es, 1);
  std::vector<std::byte> send(max_count * es), recv(max_count * es), expected(max_count * es);
  for (size_t i = 0; i < max_count; ++i) {
    Encode(o.dtype, Value(rank, i), send.data() + i * es);
    double sum = 0;
    for (int r = 0; r < n; ++r) sum += Value(r, i);
    Encode(o.dtype, sum, expected.data() + i * es);
  }

  if (rank == 0) {
    std::printf(
        "# allreduce_bench: %d ranks, %s sum, %s, >= %.2f s per row (at least 3 iterations), %d warmup, "
        "best of %d\n",
        n, DataTypeName(o.dtype), o.in_place ? "in place" : "out of place", o.seconds, o.warmup, o.repeat);
    std::printf(
        "# busbw = algbw * 2(n-1)/n; vs_mpi, vs_raw = time of the communicator's mpi algorithm, of a plain\n"
        "# MPI_Allreduce call, over this row's time (> 1: this row is faster)\n");
    std::printf("%12s %12s %11s %12s %11s %11s %7s %7s %7s\n", "size(B)", "count", "algo", "time(us)",
                "algbw(GB/s)", "busbw(GB/s)", "vs_mpi", "vs_raw", "#wrong");
  }
  for (size_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes *= o.factor) {
    const size_t count = std::max<size_t>(bytes / es, 1);
    double mpi_time = 0, raw_time = 0;
    for (const std::string& algo : o.algos) {
      const bool raw = algo == "raw";
      if (raw && o.dtype != DataType::kF32 && o.dtype != DataType::kI32) continue;
      Communicator* comm = raw ? nullptr : comms[algo].get();
      void* out = o.in_place ? static_cast<void*>(send.data()) : static_cast<void*>(recv.data());
      std::vector<std::byte> keep;
      if (o.in_place) keep.assign(send.begin(), send.begin() + static_cast<long>(count * es));
      auto run = [&]() {
        if (raw) {
          MPI_Allreduce(o.in_place ? MPI_IN_PLACE : send.data(), out, static_cast<int>(count),
                        RawType(o.dtype), MPI_SUM, MPI_COMM_WORLD);
          return;
        }
        const Status s = comm->AllReduce(send.data(), out, count, o.dtype, ReduceOp::kSum);
        if (!s.ok()) comm->Abort("allreduce_bench: " + s.message(), 1);
      };
      // Correctness once, from the verifiable inputs, into a poisoned output.
      if (!o.in_place) std::memset(out, 0xff, count * es);
      run();
      long long wrong = 0;
      for (size_t i = 0; i < count; ++i) {
        wrong += std::memcmp(static_cast<std::byte*>(out) + i * es, expected.data() + i * es, es) != 0;
      }
      if (o.in_place) std::copy(keep.begin(), keep.end(), send.begin());
      MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
      for (int i = 0; i < o.warmup; ++i) run();
      // Iterations: as many as fit in --seconds, judged from one timed call on the slowest rank.
      MPI_Barrier(MPI_COMM_WORLD);
      double t = Now();
      run();
      t = Now() - t;
      MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      const int iters = static_cast<int>(std::clamp(o.seconds / std::max(t, 1e-7), 3.0, 100000.0));
      double best = 1e30;
      for (int rep = 0; rep < o.repeat; ++rep) {
        MPI_Barrier(MPI_COMM_WORLD);
        t = Now();
        for (int i = 0; i < iters; ++i) run();
        t = (Now() - t) / iters;
        MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        best = std::min(best, t);
      }
      t = best;
      if (o.in_place) std::copy(keep.begin(), keep.end(), send.begin());
      if (algo == "mpi") mpi_time = t;
      if (raw) raw_time = t;
      const double algbw = static_cast<double>(count * es) / t / 1e9;
      const double busbw = algbw * 2.0 * (n - 1) / n;
      if (rank == 0) {
        char vs_mpi[16] = "-", vs_raw[16] = "-";
        if (mpi_time > 0) std::snprintf(vs_mpi, sizeof(vs_mpi), "%.2f", mpi_time / t);
        if (raw_time > 0) std::snprintf(vs_raw, sizeof(vs_raw), "%.2f", raw_time / t);
        std::printf("%12zu %12zu %11s %12.1f %11.3f %11.3f %7s %7s %7lld\n", count * es, count, algo.c_str(),
                    t * 1e6, algbw, busbw, vs_mpi, vs_raw, wrong);
        std::fflush(stdout);
      }
    }
  }
  comms.clear();
  MPI_Finalize();
  return 0;
}
