// The engine of `fjord bench` (design in bench.h): sizes, verifiable inputs and expected results,
// the timed loops, the pairwise matrix, and the text and JSON reports.
#include "collectives/bench/bench.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "collectives/reduce.h"
#include "common/check.h"
#include "common/json.h"

namespace fjord {
namespace {

using Clock = std::chrono::steady_clock;

std::string Printf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string Printf(const char* fmt, ...) {
  char buf[1024];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, args);
  va_end(args);
  return buf;
}

// A finite double for JSON (which has no NaN or infinity).
std::string JsonNumber(double v) { return std::isfinite(v) ? Printf("%.12g", v) : "null"; }

// ---------------------------------------------------------------------------------------------
// Verifiable values. Element `pos` of rank `rank`'s input is an integer in [0, modulus): non-negative,
// so every partial sum lies between 0 and the total, and the modulus keeps the total of n ranks
// exact in the dtype (f32 up to 2^24, f16 2^11, bf16 2^8). u8 sums wrap modulo 256 by contract,
// so any byte will do; i32 stays below 2^30 so nothing wraps.

uint64_t ExactBound(DataType dtype) {
  switch (dtype) {
    case DataType::kF32:
      return uint64_t{1} << 24;
    case DataType::kBF16:
      return 256;
    case DataType::kF16:
      return 2048;
    case DataType::kI32:
      return uint64_t{1} << 30;
    case DataType::kU8:
      return 256;
  }
  return 1;
}

class Values {
 public:
  Values(DataType dtype, ReduceOp op, bool reduction, int world_size)
      : dtype_(dtype), op_(op), n_(world_size) {
    const uint64_t bound = ExactBound(dtype);
    const bool sums = reduction && op != ReduceOp::kMax && dtype != DataType::kU8;
    modulus_ = std::max<uint64_t>(1, sums ? bound / static_cast<uint64_t>(world_size) : bound);
  }

  int64_t Input(int rank, size_t pos) const {
    return static_cast<int64_t>(
        (static_cast<uint64_t>(pos) * 7919 + static_cast<uint64_t>(rank) * 104729 + 1) % modulus_);
  }

  // The reduction over all ranks of Input(*, pos), encoded into `dst`.
  void Reduced(size_t pos, void* dst) const {
    int64_t acc = op_ == ReduceOp::kMax ? Input(0, pos) : 0;
    for (int r = 0; r < n_; ++r) {
      const int64_t v = Input(r, pos);
      acc = op_ == ReduceOp::kMax ? std::max(acc, v) : acc + v;
    }
    if (op_ != ReduceOp::kAvg) return Encode(acc, dst);
    switch (dtype_) {
      case DataType::kF32: {
        const float f = static_cast<float>(acc) / static_cast<float>(n_);
        std::memcpy(dst, &f, 4);
        return;
      }
      case DataType::kBF16: {
        const uint16_t b = FloatToBf16(static_cast<float>(acc) / static_cast<float>(n_));
        std::memcpy(dst, &b, 2);
        return;
      }
      case DataType::kF16: {
        const uint16_t h = FloatToHalf(static_cast<float>(acc) / static_cast<float>(n_));
        std::memcpy(dst, &h, 2);
        return;
      }
      case DataType::kI32:
        return Encode(acc / n_, dst);
      case DataType::kU8:
        return;  // refused by the communicator
    }
  }

  void Encode(int64_t v, void* dst) const { StoreInteger(dtype_, v, dst); }

  // Input(rank, first + i) for i < count, encoded into dst.
  void FillInput(int rank, size_t first, size_t count, std::byte* dst) const {
    const size_t es = DataTypeSize(dtype_);
    for (size_t i = 0; i < count; ++i) Encode(Input(rank, first + i), dst + i * es);
  }

 private:
  DataType dtype_;
  ReduceOp op_;
  int n_;
  uint64_t modulus_;
};

// ---------------------------------------------------------------------------------------------
// Host memory.

class HostBenchMemory final : public BenchMemory {
 public:
  StatusOr<void*> Allocate(size_t bytes) override {
    const size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) return Internal("cannot allocate " + std::to_string(bytes) + " bytes of host memory");
    sizes_.emplace_back(p, rounded);
    return p;
  }
  void Free(void* buffer) override {
    for (auto it = sizes_.begin(); it != sizes_.end(); ++it) {
      if (it->first == buffer) {
        std::memset(buffer, 0, it->second);
        sizes_.erase(it);
        break;
      }
    }
    std::free(buffer);
  }
  Status Upload(void* buffer, const void* host, size_t bytes) override {
    if (bytes > 0) std::memcpy(buffer, host, bytes);
    return OkStatus();
  }
  Status Download(void* host, const void* buffer, size_t bytes) override {
    if (bytes > 0) std::memcpy(host, buffer, bytes);
    return OkStatus();
  }
  Status StartTimer() override {
    start_ = Clock::now();
    return OkStatus();
  }
  StatusOr<double> StopTimer() override {
    return std::chrono::duration<double>(Clock::now() - start_).count();
  }
  bool queued() const override { return false; }
  std::string Describe() const override { return "host memory"; }

 private:
  std::vector<std::pair<void*, size_t>> sizes_;
  Clock::time_point start_{};
};

// ---------------------------------------------------------------------------------------------
// The collectives, one table entry each (as nccl-tests gives each collective its own testColl):
// how the buffers of one call are laid out, what its checked result must hold, how it is issued,
// and its bus-bandwidth factor. The rest of the engine is the same for every collective.

using Handle = std::unique_ptr<CommHandle>;

// One call as a measurement sees it.
struct Geometry {
  const BenchOptions& o;
  int n, r;
  size_t c;   // the count argument of the call (per rank, BenchShape::per_rank)
  size_t es;  // element size
  // Block `b` of `c` elements in `base`.
  std::byte* Block(std::byte* base, int b) const { return base + static_cast<size_t>(b) * c * es; }
};

// Where this rank's input goes, which part of recv is checked, and the call's buffer arguments.
struct Layout {
  std::byte* input_at = nullptr;
  size_t input_len = 0;  // elements
  std::byte* result_at = nullptr;
  size_t check_len = 0;  // elements
  const void* send = nullptr;
  void* recv = nullptr;
};

struct CollectiveEntry {
  BenchCollective id;
  const char* name;
  bool reduction;  // the redop column applies (and inputs are bounded so that every sum stays exact)
  bool root;       // the root column applies
  bool in_place;   // an in-place column is measured
  bool blocked;    // one block of per_rank elements per rank: the size column is the total
  double (*busbw_factor)(double n);
  Layout (*layout)(const Geometry& g, bool in_place, std::byte* send, std::byte* recv);
  // Element i of the checked result, encoded into dst.
  void (*expected)(const Geometry& g, const Values& v, size_t i, std::byte* dst);
  // One call; with `async`, through the Async variant where there is one (its handle to *handle).
  Status (*issue)(const Geometry& g, Communicator& comm, const Layout& l, bool async, Handle* handle);
};

Status Keep(StatusOr<Handle> h, Handle* out) {
  if (!h.ok()) return h.status();
  *out = std::move(h).value();
  return OkStatus();
}

// `reduce` as ReduceScatter + gather of the blocks to the root (see bench.h). The count need not
// divide by n: the last count % n elements are all-reduced.
Status ComposedReduce(Communicator& comm, const void* send, void* recv, size_t count, DataType dtype,
                      ReduceOp op, int root) {
  const int n = comm.size(), r = comm.rank();
  const size_t es = DataTypeSize(dtype);
  const size_t c = count / static_cast<size_t>(n), tail = count - c * static_cast<size_t>(n);
  auto* out = static_cast<std::byte*>(recv);
  if (c > 0) {
    FJORD_RETURN_IF_ERROR(comm.ReduceScatter(send, out + static_cast<size_t>(r) * c * es, c, dtype, op));
    if (r == root) {
      for (int q = 0; q < n; ++q) {
        if (q == root) continue;
        FJORD_RETURN_IF_ERROR(
            comm.SendRecv(nullptr, 0, q, out + static_cast<size_t>(q) * c * es, c, q, dtype));
      }
    } else {
      FJORD_RETURN_IF_ERROR(
          comm.SendRecv(out + static_cast<size_t>(r) * c * es, c, root, nullptr, 0, root, dtype));
    }
  }
  if (tail > 0) {
    const size_t offset = c * static_cast<size_t>(n) * es;
    FJORD_RETURN_IF_ERROR(
        comm.AllReduce(static_cast<const std::byte*>(send) + offset, out + offset, tail, dtype, op));
  }
  return OkStatus();
}

double AllReduceFactor(double n) { return 2 * (n - 1) / n; }
double BlockFactor(double n) { return (n - 1) / n; }
double OneFactor(double) { return 1.0; }

const CollectiveEntry kCollectives[] = {
    {BenchCollective::kAllReduce, "allreduce", true, false, true, false, AllReduceFactor,
     [](const Geometry& g, bool in_place, std::byte* send, std::byte* recv) {
       std::byte* input = in_place ? recv : send;
       return Layout{input, g.c, recv, g.c, input, recv};
     },
     [](const Geometry&, const Values& v, size_t i, std::byte* dst) { v.Reduced(i, dst); },
     [](const Geometry& g, Communicator& comm, const Layout& l, bool async, Handle* h) {
       if (async) return Keep(comm.AllReduceAsync(l.send, l.recv, g.c, g.o.dtype, g.o.op), h);
       return comm.AllReduce(l.send, l.recv, g.c, g.o.dtype, g.o.op);
     }},
    {BenchCollective::kAllGather, "allgather", false, false, true, true, BlockFactor,
     [](const Geometry& g, bool in_place, std::byte* send, std::byte* recv) {
       std::byte* input = in_place ? g.Block(recv, g.r) : send;
       return Layout{input, g.c, recv, g.c * static_cast<size_t>(g.n), input, recv};
     },
     [](const Geometry& g, const Values& v, size_t i, std::byte* dst) {
       v.Encode(v.Input(static_cast<int>(i / g.c), i % g.c), dst);
     },
     [](const Geometry& g, Communicator& comm, const Layout& l, bool async, Handle* h) {
       if (async) return Keep(comm.AllGatherAsync(l.send, l.recv, g.c, g.o.dtype), h);
       return comm.AllGather(l.send, l.recv, g.c, g.o.dtype);
     }},
    {BenchCollective::kReduceScatter, "reducescatter", true, false, true, true, BlockFactor,
     [](const Geometry& g, bool in_place, std::byte* send, std::byte* recv) {
       std::byte* input = in_place ? recv : send;
       std::byte* result = in_place ? g.Block(recv, g.r) : recv;
       return Layout{input, g.c * static_cast<size_t>(g.n), result, g.c, input, result};
     },
     [](const Geometry& g, const Values& v, size_t i, std::byte* dst) {
       v.Reduced(static_cast<size_t>(g.r) * g.c + i, dst);
     },
     [](const Geometry& g, Communicator& comm, const Layout& l, bool async, Handle* h) {
       if (async) return Keep(comm.ReduceScatterAsync(l.send, l.recv, g.c, g.o.dtype, g.o.op), h);
       return comm.ReduceScatter(l.send, l.recv, g.c, g.o.dtype, g.o.op);
     }},
    // One buffer in the interface: out of place broadcasts the recv buffer, in place the send buffer.
    {BenchCollective::kBroadcast, "broadcast", false, true, true, false, OneFactor,
     [](const Geometry& g, bool in_place, std::byte* send, std::byte* recv) {
       std::byte* buffer = in_place ? send : recv;
       return Layout{buffer, g.r == g.o.root ? g.c : 0, buffer, g.c, buffer, buffer};
     },
     [](const Geometry& g, const Values& v, size_t i, std::byte* dst) {
       v.Encode(v.Input(g.o.root, i), dst);
     },
     [](const Geometry& g, Communicator& comm, const Layout& l, bool async, Handle* h) {
       if (async) return Keep(comm.BroadcastAsync(l.recv, g.c, g.o.dtype, g.o.root), h);
       return comm.Broadcast(l.recv, g.c, g.o.dtype, g.o.root);
     }},
    {BenchCollective::kReduce, "reduce", true, true, true, false, OneFactor,
     [](const Geometry& g, bool in_place, std::byte* send, std::byte* recv) {
       std::byte* input = in_place ? recv : send;
       return Layout{input, g.c, recv, g.r == g.o.root ? g.c : 0, input, recv};
     },
     [](const Geometry&, const Values& v, size_t i, std::byte* dst) { v.Reduced(i, dst); },
     [](const Geometry& g, Communicator& comm, const Layout& l, bool, Handle*) {
       return ComposedReduce(comm, l.send, l.recv, g.c, g.o.dtype, g.o.op, g.o.root);
     }},
    {BenchCollective::kAllToAll, "alltoall", false, false, false, true, BlockFactor,
     [](const Geometry& g, bool, std::byte* send, std::byte* recv) {
       const size_t total = g.c * static_cast<size_t>(g.n);
       return Layout{send, total, recv, total, send, recv};
     },
     [](const Geometry& g, const Values& v, size_t i, std::byte* dst) {
       v.Encode(v.Input(static_cast<int>(i / g.c), static_cast<size_t>(g.r) * g.c + i % g.c), dst);
     },
     [](const Geometry& g, Communicator& comm, const Layout& l, bool async, Handle* h) {
       if (async) return Keep(comm.AllToAllAsync(l.send, l.recv, g.c, g.o.dtype), h);
       return comm.AllToAll(l.send, l.recv, g.c, g.o.dtype);
     }},
    // Each rank sends to the next and receives from the previous one (a ring shift).
    {BenchCollective::kSendRecv, "sendrecv", false, false, false, false, OneFactor,
     [](const Geometry& g, bool, std::byte* send, std::byte* recv) {
       return Layout{send, g.c, recv, g.c, send, recv};
     },
     [](const Geometry& g, const Values& v, size_t i, std::byte* dst) {
       v.Encode(v.Input((g.r - 1 + g.n) % g.n, i), dst);
     },
     [](const Geometry& g, Communicator& comm, const Layout& l, bool, Handle*) {
       return comm.SendRecv(l.send, g.c, (g.r + 1) % g.n, l.recv, g.c, (g.r - 1 + g.n) % g.n, g.o.dtype);
     }},
};

const CollectiveEntry& EntryOf(BenchCollective c) {
  for (const CollectiveEntry& e : kCollectives) {
    if (e.id == c) return e;
  }
  FatalError(__FILE__, __LINE__, "bench: a collective without an entry in kCollectives");
}

// Host staging of one rank for verification, sized for the largest row.
struct Staging {
  std::vector<std::byte> input, expected, got;
};

// One measurement: the collective's layout of the buffers and what the checked result must hold.
class Measurement {
 public:
  Measurement(const BenchOptions& o, Communicator& comm, const BenchShape& shape, bool in_place,
              std::byte* send, std::byte* recv)
      : entry_(EntryOf(o.collective)),
        g_{o, comm.size(), comm.rank(), shape.per_rank, DataTypeSize(o.dtype)},
        in_place_(in_place),
        values_(o.dtype, o.op, entry_.reduction, comm.size()),
        l_(entry_.layout(g_, in_place, send, recv)) {}

  Status Issue(Communicator& comm, bool async, Handle* handle) const {
    return entry_.issue(g_, comm, l_, async, handle);
  }

  // Writes a poison (the bitwise complement of the expected result) wherever a result will be
  // written, then the input, into the device buffers.
  Status Prepare(BenchMemory& memory, Staging& s) const {
    const size_t es = g_.es;
    if (l_.check_len > 0) {
      for (size_t i = 0; i < l_.check_len; ++i) entry_.expected(g_, values_, i, s.expected.data() + i * es);
      for (size_t i = 0; i < l_.check_len * es; ++i) s.got[i] = ~s.expected[i];
      FJORD_RETURN_IF_ERROR(memory.Upload(l_.result_at, s.got.data(), l_.check_len * es));
    }
    if (l_.input_len > 0) {
      values_.FillInput(g_.r, 0, l_.input_len, s.input.data());
      FJORD_RETURN_IF_ERROR(memory.Upload(l_.input_at, s.input.data(), l_.input_len * es));
    }
    return OkStatus();
  }

  // Elements of the checked result that differ from the expected ones (after the test hook).
  StatusOr<long long> Check(BenchMemory& memory, Staging& s, bool* corrupt_pending) const {
    const size_t es = g_.es;
    if (l_.check_len == 0) return 0LL;
    FJORD_RETURN_IF_ERROR(memory.Download(s.got.data(), l_.result_at, l_.check_len * es));
    const BenchOptions& o = g_.o;
    if (*corrupt_pending && !in_place_ && g_.r == o.corrupt_rank && o.corrupt_index < l_.check_len) {
      s.got[o.corrupt_index * es] ^= std::byte{0x01};
      *corrupt_pending = false;
    }
    long long wrong = 0;
    for (size_t i = 0; i < l_.check_len; ++i) {
      wrong += std::memcmp(s.got.data() + i * es, s.expected.data() + i * es, es) != 0;
    }
    return wrong;
  }

 private:
  const CollectiveEntry& entry_;
  const Geometry g_;
  const bool in_place_;
  const Values values_;
  const Layout l_;
};

// Sum over ranks of a count, in float (exact below 2^24 per rank, plenty for a wrong count).
StatusOr<long long> SumOverRanks(Communicator& control, long long local) {
  float v = static_cast<float>(std::min<long long>(local, 1 << 24));
  FJORD_RETURN_IF_ERROR(control.AllReduce(&v, &v, 1, DataType::kF32, ReduceOp::kSum));
  return static_cast<long long>(v);
}

StatusOr<double> CombineTime(Communicator& control, TimeCombine how, double seconds) {
  float v = static_cast<float>(how == TimeCombine::kMin ? -seconds : seconds);
  FJORD_RETURN_IF_ERROR(control.AllReduce(&v, &v, 1, DataType::kF32,
                                          how == TimeCombine::kAvg ? ReduceOp::kSum : ReduceOp::kMax));
  if (how == TimeCombine::kAvg) return static_cast<double>(v) / control.size();
  return how == TimeCombine::kMin ? -static_cast<double>(v) : static_cast<double>(v);
}

// Check run, warm-up, then `repeat` timed loops; the time of one iteration, combined over ranks
// as -a says, of the fastest loop into *seconds.
Status Measure(const BenchOptions& o, Communicator& comm, Communicator& control, BenchMemory& memory,
               const Measurement& m, Staging& staging, bool* corrupt_pending, long long* wrong,
               double* seconds) {
  std::unique_ptr<CommHandle> handle;
  *wrong = -1;
  if (o.check) {
    FJORD_RETURN_IF_ERROR(m.Prepare(memory, staging));
    FJORD_RETURN_IF_ERROR(m.Issue(comm, false, &handle));
    FJORD_ASSIGN_OR_RETURN(*wrong, m.Check(memory, staging, corrupt_pending));
  }
  const bool async = memory.queued();
  std::vector<std::unique_ptr<CommHandle>> handles;
  handles.reserve(static_cast<size_t>(std::max(o.warmup, o.iters)));
  for (int i = 0; i < o.warmup; ++i) {
    FJORD_RETURN_IF_ERROR(m.Issue(comm, async, &handle));
    if (handle) handles.push_back(std::move(handle));
  }
  for (auto& h : handles) FJORD_RETURN_IF_ERROR(h->Wait());
  handles.clear();
  double best = 0;
  for (int rep = 0; rep < std::max(1, o.repeat); ++rep) {
    FJORD_RETURN_IF_ERROR(control.Barrier());
    FJORD_RETURN_IF_ERROR(memory.StartTimer());
    for (int i = 0; i < o.iters; ++i) {
      FJORD_RETURN_IF_ERROR(m.Issue(comm, async, &handle));
      if (handle) handles.push_back(std::move(handle));
    }
    FJORD_ASSIGN_OR_RETURN(const double total, memory.StopTimer());
    for (auto& h : handles) FJORD_RETURN_IF_ERROR(h->Wait());
    handles.clear();
    FJORD_ASSIGN_OR_RETURN(const double t, CombineTime(control, o.combine, total / std::max(1, o.iters)));
    best = rep == 0 ? t : std::min(best, t);
  }
  *seconds = best;
  return OkStatus();
}

std::string TimeText(double us) {
  if (us >= 10000.0) return Printf("%7.0f", us);
  if (us >= 100.0) return Printf("%7.1f", us);
  return Printf("%7.2f", us);
}

std::string MeasurementText(const BenchMeasurement& m) {
  if (!m.measured) return Printf("  %7s  %6s  %6s  %5s", "N/A", "N/A", "N/A", "N/A");
  const std::string wrong = m.wrong < 0 ? "N/A" : Printf("%lld", m.wrong);
  return Printf("  %7s  %6.2f  %6.2f  %5s", TimeText(m.time_us).c_str(), m.algbw, m.busbw, wrong.c_str());
}

std::string MeasurementJson(const BenchMeasurement& m) {
  if (!m.measured) return "null";
  return "{\"time_us\": " + JsonNumber(m.time_us) + ", \"algbw_gbps\": " + JsonNumber(m.algbw) +
         ", \"busbw_gbps\": " + JsonNumber(m.busbw) +
         ", \"wrong\": " + (m.wrong < 0 ? "null" : std::to_string(m.wrong)) + "}";
}

std::string ContextJson(const BenchContext& context) {
  std::string out = "\"backend\": " + JsonQuote(context.backend) +
                    ", \"world_size\": " + std::to_string(context.world_size) + ",\n  \"ranks\": [";
  for (size_t i = 0; i < context.ranks.size(); ++i) {
    const BenchRankDesc& d = context.ranks[i];
    out += std::string(i ? ",\n    " : "\n    ") + "{\"rank\": " + std::to_string(d.rank) +
           ", \"pid\": " + std::to_string(d.pid) + ", \"host\": " + JsonQuote(d.host) +
           ", \"device\": " + JsonQuote(d.device) + "}";
  }
  return out + "]";
}

std::string RanksText(const BenchContext& context) {
  std::string out = "#\n# Using devices\n";
  for (const BenchRankDesc& d : context.ranks) {
    out +=
        Printf("#  Rank %2d Pid %6ld on %10s device %s\n", d.rank, d.pid, d.host.c_str(), d.device.c_str());
  }
  return out;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Names, factors, sizes: read from the table.

const char* BenchCollectiveName(BenchCollective c) { return EntryOf(c).name; }

StatusOr<BenchCollective> ParseBenchCollective(const std::string& name) {
  std::string names;
  for (const CollectiveEntry& e : kCollectives) {
    if (name == e.name) return e.id;
    names += std::string(e.name) + ", ";
  }
  return InvalidArgument("unknown collective '" + name + "': use " + names + "or p2p");
}

bool BenchHasReduction(BenchCollective c) { return EntryOf(c).reduction; }

bool BenchHasRoot(BenchCollective c) { return EntryOf(c).root; }

double BusBandwidthFactor(BenchCollective c, int world_size) { return EntryOf(c).busbw_factor(world_size); }
const char* TimeCombineName(TimeCombine c) {
  switch (c) {
    case TimeCombine::kAvg:
      return "avg";
    case TimeCombine::kMin:
      return "min";
    case TimeCombine::kMax:
      return "max";
  }
  return "?";
}

std::unique_ptr<BenchMemory> CreateHostBenchMemory() { return std::make_unique<HostBenchMemory>(); }

BenchBuffer& BenchBuffer::operator=(BenchBuffer&& other) noexcept {
  if (this != &other) {
    if (memory_ != nullptr && data_ != nullptr) memory_->Free(data_);
    memory_ = std::exchange(other.memory_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
  }
  return *this;
}

BenchBuffer::~BenchBuffer() {
  if (memory_ != nullptr && data_ != nullptr) memory_->Free(data_);
}

StatusOr<BenchBuffer> AllocateBenchBuffer(BenchMemory& memory, size_t bytes) {
  FJORD_ASSIGN_OR_RETURN(void* p, memory.Allocate(bytes));
  return BenchBuffer(&memory, p);
}

BenchShape BenchShapeFor(BenchCollective c, size_t requested_bytes, DataType dtype, int world_size) {
  const size_t es = DataTypeSize(dtype), blocks = EntryOf(c).blocked ? static_cast<size_t>(world_size) : 1;
  BenchShape s;
  s.per_rank = requested_bytes / es / blocks;
  s.count = s.per_rank * blocks;
  s.bytes = s.count * es;
  return s;
}

std::vector<size_t> BenchSizes(const BenchOptions& o) {
  std::vector<size_t> sizes;
  for (size_t s = o.min_bytes; s <= o.max_bytes && s > 0;) {
    sizes.push_back(s);
    size_t next = o.factor > 1.0 ? static_cast<size_t>(static_cast<double>(s) * o.factor) : s + o.step_bytes;
    if (next <= s) next = s + 1;  // a factor too small to change the size, or no step
    s = next;
  }
  return sizes;
}

StatusOr<BenchContext> GatherBenchContext(Communicator& control, const BenchMemory& memory,
                                          const std::string& backend) {
  FJORD_ASSIGN_OR_RETURN(const std::vector<std::string> pids,
                         AllGatherStrings(control, std::to_string(static_cast<long>(getpid()))));
  FJORD_ASSIGN_OR_RETURN(const std::vector<std::string> hosts,
                         AllGatherStrings(control, control.rank_info().host));
  FJORD_ASSIGN_OR_RETURN(const std::vector<std::string> devices,
                         AllGatherStrings(control, memory.Describe()));
  BenchContext context;
  context.backend = backend;
  context.world_size = control.size();
  for (int r = 0; r < control.size(); ++r) {
    const size_t i = static_cast<size_t>(r);
    context.ranks.push_back({r, std::atol(pids[i].c_str()), hosts[i], devices[i]});
  }
  return context;
}

// ---------------------------------------------------------------------------------------------
// The sweep.

StatusOr<std::vector<BenchTable>> RunBenchSweep(const BenchOptions& o,
                                                const std::vector<BenchTarget>& targets,
                                                Communicator& control, BenchMemory& memory,
                                                const std::function<void(size_t, const BenchRow&)>& on_row) {
  if (targets.empty()) return InvalidArgument("bench: no communicator to measure");
  const int n = control.size();
  for (const BenchTarget& t : targets) {
    if (t.comm == nullptr || t.comm->size() != n || t.comm->rank() != control.rank()) {
      return InvalidArgument("bench: communicator '" + t.label +
                             "' does not span the same ranks as the control one");
    }
  }
  if (BenchHasRoot(o.collective) && (o.root < 0 || o.root >= n)) {
    return InvalidArgument("root " + std::to_string(o.root) + " is not a rank: the job has " +
                           std::to_string(n) + " rank(s), so use -r 0.." + std::to_string(n - 1));
  }
  if (BenchHasReduction(o.collective)) FJORD_RETURN_IF_ERROR(CheckReduction(o.dtype, o.op));
  if (o.iters < 1 || o.warmup < 0 || o.repeat < 1) {
    return InvalidArgument("iterations and repetitions must be >= 1, warm-up >= 0");
  }

  const std::vector<size_t> sizes = BenchSizes(o);
  size_t max_bytes = 64;
  for (size_t s : sizes) max_bytes = std::max(max_bytes, BenchShapeFor(o.collective, s, o.dtype, n).bytes);
  FJORD_ASSIGN_OR_RETURN(BenchBuffer send, AllocateBenchBuffer(memory, max_bytes));
  FJORD_ASSIGN_OR_RETURN(BenchBuffer recv, AllocateBenchBuffer(memory, max_bytes));
  Staging staging;
  if (o.check) {
    staging.input.resize(max_bytes);
    staging.expected.resize(max_bytes);
    staging.got.resize(max_bytes);
  }

  const double factor = BusBandwidthFactor(o.collective, n);
  std::vector<BenchTable> tables(targets.size());
  std::vector<double> busbw_sum(targets.size(), 0.0);
  std::vector<int> busbw_count(targets.size(), 0);
  for (size_t t = 0; t < targets.size(); ++t) tables[t].label = targets[t].label;
  bool corrupt_pending = o.corrupt_rank >= 0;
  size_t last_bytes = SIZE_MAX;
  for (size_t requested : sizes) {
    const BenchShape shape = BenchShapeFor(o.collective, requested, o.dtype, n);
    if (shape.count == 0 || shape.bytes == last_bytes)
      continue;  // too small for one element per rank, or a repeat
    last_bytes = shape.bytes;
    for (size_t t = 0; t < targets.size(); ++t) {
      Communicator& comm = *targets[t].comm;
      BenchRow row;
      row.bytes = shape.bytes;
      row.count = shape.count;
      for (const bool in_place : {false, true}) {
        BenchMeasurement& out = in_place ? row.in_place : row.out_of_place;
        if (in_place && !EntryOf(o.collective).in_place) continue;
        const Measurement m(o, comm, shape, in_place, send.bytes(), recv.bytes());
        long long wrong = -1;
        double seconds = 0;
        const Status s = Measure(o, comm, control, memory, m, staging, &corrupt_pending, &wrong, &seconds);
        if (!s.ok()) {
          return s.WithContext(std::string(BenchCollectiveName(o.collective)) + " of " +
                               std::to_string(shape.bytes) + " bytes (" +
                               (in_place ? "in place" : "out of place") + ", " + targets[t].label + ")");
        }
        const double time = seconds;
        out.measured = true;
        out.time_us = time * 1e6;
        out.algbw = time > 0 ? static_cast<double>(shape.bytes) / time / 1e9 : 0;
        out.busbw = out.algbw * factor;
        if (o.check) {
          FJORD_ASSIGN_OR_RETURN(out.wrong, SumOverRanks(control, wrong));
          tables[t].wrong += out.wrong;
        }
        busbw_sum[t] += out.busbw;
        ++busbw_count[t];
      }
      tables[t].rows.push_back(row);
      if (on_row) on_row(t, row);
    }
  }
  for (size_t t = 0; t < targets.size(); ++t) {
    tables[t].avg_busbw = busbw_count[t] > 0 ? busbw_sum[t] / busbw_count[t] : 0;
  }
  return tables;
}

std::string FormatBenchHeader(const BenchOptions& o, const BenchContext& context, const std::string& label) {
  std::string out =
      Printf("# fjord bench %s: backend %s, algorithm %s, %d rank(s)\n", BenchCollectiveName(o.collective),
             context.backend.c_str(), label.c_str(), context.world_size);
  const std::string step =
      o.factor > 1.0 ? Printf("%g(factor)", o.factor) : Printf("%zu(bytes)", o.step_bytes);
  out += Printf(
      "# minBytes %zu maxBytes %zu step: %s warmup iters: %d iters: %d validation: %d average: %s\n",
      o.min_bytes, o.max_bytes, step.c_str(), o.warmup, o.iters, o.check ? 1 : 0, TimeCombineName(o.combine));
  if (o.repeat > 1)
    out += Printf("# repeat: %d (each time is the fastest of %d timed loops)\n", o.repeat, o.repeat);
  out += RanksText(context);
  out += "#\n";
  out +=
      Printf("# %10s  %12s  %8s  %6s  %6s           out-of-place                       in-place          \n",
             "", "", "", "", "");
  out +=
      Printf("# %10s  %12s  %8s  %6s  %6s  %7s  %6s  %6s %6s  %7s  %6s  %6s %6s\n", "size", "count", "type",
             "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw", "#wrong");
  out += Printf("# %10s  %12s  %8s  %6s  %6s  %7s  %6s  %6s  %5s  %7s  %6s  %6s  %5s\n", "(B)", "(elements)",
                "", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "");
  return out;
}

std::string FormatBenchRow(const BenchOptions& o, const BenchRow& row) {
  const char* redop = BenchHasReduction(o.collective) ? ReduceOpName(o.op) : "none";
  const int root = BenchHasRoot(o.collective) ? o.root : -1;
  return Printf("%12zu  %12zu  %8s  %6s  %6d", row.bytes, row.count, DataTypeName(o.dtype), redop, root) +
         MeasurementText(row.out_of_place) + MeasurementText(row.in_place) + "\n";
}

std::string FormatBenchFooter(const BenchTable& table) {
  return Printf("# Out of bounds values : %lld %s\n", table.wrong, table.wrong ? "FAILED" : "OK") +
         Printf("# Avg bus bandwidth    : %g \n#\n", table.avg_busbw);
}

std::string FormatBenchComparison(const std::vector<BenchTable>& tables) {
  if (tables.size() < 2) return "";
  const BenchTable& base = tables[0];
  std::string out =
      "# Against algorithm '" + base.label +
      "' (first listed), same run: time x = time / its time (lower is faster), busbw x = busbw / its "
      "busbw (higher is better)\n";
  out += Printf("# %10s", "size");
  for (size_t t = 1; t < tables.size(); ++t) {
    const std::string l = tables[t].label;
    out += Printf("  %12s  %12s  %12s  %12s", (l + " oop t").c_str(), (l + " oop bw").c_str(),
                  (l + " ip t").c_str(), (l + " ip bw").c_str());
  }
  out += "\n";
  auto ratio = [](double a, double b) { return b > 0 ? Printf("%12.2f", a / b) : Printf("%12s", "-"); };
  for (size_t i = 0; i < base.rows.size(); ++i) {
    out += Printf("# %10zu", base.rows[i].bytes);
    for (size_t t = 1; t < tables.size(); ++t) {
      if (i >= tables[t].rows.size()) continue;
      const BenchRow& a = tables[t].rows[i];
      const BenchRow& b = base.rows[i];
      for (const bool ip : {false, true}) {
        const BenchMeasurement& ma = ip ? a.in_place : a.out_of_place;
        const BenchMeasurement& mb = ip ? b.in_place : b.out_of_place;
        if (!ma.measured || !mb.measured) {
          out += Printf("  %12s  %12s", "N/A", "N/A");
          continue;
        }
        out += "  " + ratio(ma.time_us, mb.time_us) + "  " + ratio(ma.busbw, mb.busbw);
      }
    }
    out += "\n";
  }
  return out;
}

std::string BenchJson(const BenchOptions& o, const BenchContext& context,
                      const std::vector<BenchTable>& tables) {
  std::string out =
      "{\n  \"bench\": " + JsonQuote(BenchCollectiveName(o.collective)) + ", " + ContextJson(context);
  out += ",\n  \"type\": " + JsonQuote(DataTypeName(o.dtype)) +
         ", \"redop\": " + JsonQuote(BenchHasReduction(o.collective) ? ReduceOpName(o.op) : "none") +
         ", \"root\": " + std::to_string(BenchHasRoot(o.collective) ? o.root : -1) +
         ", \"min_bytes\": " + std::to_string(o.min_bytes) +
         ", \"max_bytes\": " + std::to_string(o.max_bytes) + ", \"iters\": " + std::to_string(o.iters) +
         ", \"warmup\": " + std::to_string(o.warmup) + ", \"repeat\": " + std::to_string(o.repeat) +
         ", \"check\": " + (o.check ? "true" : "false") +
         ", \"average\": " + JsonQuote(TimeCombineName(o.combine)) +
         ",\n  \"bus_factor\": " + JsonNumber(BusBandwidthFactor(o.collective, context.world_size)) +
         ",\n  \"tables\": [";
  long long wrong = 0;
  for (size_t t = 0; t < tables.size(); ++t) {
    const BenchTable& table = tables[t];
    wrong += table.wrong;
    out += std::string(t ? ",\n    " : "\n    ") + "{\"algo\": " + JsonQuote(table.label) +
           ", \"wrong\": " + std::to_string(table.wrong) +
           ", \"avg_busbw_gbps\": " + JsonNumber(table.avg_busbw) + ", \"rows\": [";
    for (size_t i = 0; i < table.rows.size(); ++i) {
      const BenchRow& row = table.rows[i];
      out += std::string(i ? ",\n      " : "\n      ") + "{\"size\": " + std::to_string(row.bytes) +
             ", \"count\": " + std::to_string(row.count) +
             ", \"out_of_place\": " + MeasurementJson(row.out_of_place) +
             ", \"in_place\": " + MeasurementJson(row.in_place) + "}";
    }
    out += "]}";
  }
  out += "],\n  \"wrong\": " + std::to_string(wrong) + "\n}\n";
  return out;
}

// ---------------------------------------------------------------------------------------------
// Point to point.

void FlagSlowLinks(double threshold, P2pResult* result) {
  const size_t m = result->nodes.size();
  result->flags.clear();
  result->suspects.clear();
  std::vector<double> bws, lats;
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < m; ++j) {
      if (i == j) continue;
      bws.push_back(result->bandwidth_gbps[i][j]);
      if (i < j) lats.push_back(result->latency_us[i][j]);
    }
  }
  result->median_bandwidth = Median(bws);
  result->median_latency = Median(lats);
  std::vector<P2pFlag> bw_flags, lat_flags;
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < m; ++j) {
      if (i == j) continue;
      const double bw = result->bandwidth_gbps[i][j];
      if (result->median_bandwidth > 0 && bw < threshold * result->median_bandwidth) {
        bw_flags.push_back({P2pFlag::Kind::kBandwidth, static_cast<int>(i), static_cast<int>(j), bw,
                            bw / result->median_bandwidth});
      }
      const double lat = result->latency_us[i][j];
      if (i < j && result->median_latency > 0 && lat > result->median_latency / threshold) {
        lat_flags.push_back({P2pFlag::Kind::kLatency, static_cast<int>(i), static_cast<int>(j), lat,
                             lat / result->median_latency});
      }
    }
  }
  std::sort(bw_flags.begin(), bw_flags.end(),
            [](const P2pFlag& a, const P2pFlag& b) { return a.ratio < b.ratio; });
  std::sort(lat_flags.begin(), lat_flags.end(),
            [](const P2pFlag& a, const P2pFlag& b) { return a.ratio > b.ratio; });
  result->flags = bw_flags;
  result->flags.insert(result->flags.end(), lat_flags.begin(), lat_flags.end());

  // A node all of whose links in one direction are slow points at its own NIC or cable; a slow
  // link that no such node explains points at the path between its two ends.
  const size_t peers = m - 1;
  std::vector<size_t> out_slow(m, 0), in_slow(m, 0), lat_slow(m, 0);
  for (const P2pFlag& f : bw_flags) {
    ++out_slow[static_cast<size_t>(f.from)];
    ++in_slow[static_cast<size_t>(f.to)];
  }
  for (const P2pFlag& f : lat_flags) {
    ++lat_slow[static_cast<size_t>(f.from)];
    ++lat_slow[static_cast<size_t>(f.to)];
  }
  std::vector<bool> out_node(m, false), in_node(m, false), lat_node(m, false);
  for (size_t k = 0; k < m && peers >= 2; ++k) {
    const std::string& h = result->nodes[k].label;
    out_node[k] = out_slow[k] == peers;
    in_node[k] = in_slow[k] == peers;
    lat_node[k] = lat_slow[k] == peers;
    if (out_node[k] && in_node[k]) {
      result->suspects.push_back(h + ": every link to and from it is slow (" + std::to_string(peers) +
                                 " peers): check its NIC, cable and switch port");
    } else if (out_node[k]) {
      result->suspects.push_back(h + ": every link sending from it is slow (" + std::to_string(peers) +
                                 " of " + std::to_string(peers) +
                                 "): check its NIC and cable (transmit side)");
    } else if (in_node[k]) {
      result->suspects.push_back(h + ": every link into it is slow (" + std::to_string(peers) + " of " +
                                 std::to_string(peers) + "): check its NIC and cable (receive side)");
    }
    if (lat_node[k]) {
      result->suspects.push_back(h + ": high latency to every peer (" + std::to_string(peers) +
                                 "): check its NIC settings (interrupt moderation, offloads) and load");
    }
  }
  for (const P2pFlag& f : bw_flags) {
    if (out_node[static_cast<size_t>(f.from)] || in_node[static_cast<size_t>(f.to)]) continue;
    result->suspects.push_back(
        result->nodes[static_cast<size_t>(f.from)].label + " -> " +
        result->nodes[static_cast<size_t>(f.to)].label +
        ": slow while both ends are fine with other peers: check the path between them "
        "(cable, switch ports, routing)");
  }
  for (const P2pFlag& f : lat_flags) {
    if (lat_node[static_cast<size_t>(f.from)] || lat_node[static_cast<size_t>(f.to)]) continue;
    result->suspects.push_back(result->nodes[static_cast<size_t>(f.from)].label + " <-> " +
                               result->nodes[static_cast<size_t>(f.to)].label +
                               ": high latency between them only: check the path between them");
  }
}

StatusOr<P2pResult> RunP2p(const P2pOptions& o, Communicator& data, Communicator& control,
                           BenchMemory& memory) {
  const int n = control.size(), me = control.rank();
  if (data.size() != n || data.rank() != me) {
    return InvalidArgument("p2p: the data communicator does not span the same ranks as the control one");
  }
  if (o.iters < 1 || o.warmup < 0) return InvalidArgument("p2p: iterations must be >= 1 and warm-up >= 0");
  if (o.bandwidth_bytes == 0 || o.latency_bytes == 0)
    return InvalidArgument("p2p: message sizes must be > 0");
  if (!(o.threshold > 0 && o.threshold < 1)) {
    return InvalidArgument("p2p: the flag threshold must be between 0 and 1 (exclusive), got " +
                           Printf("%g", o.threshold));
  }

  // Host names, then the nodes: every rank, or the first rank on each host.
  FJORD_ASSIGN_OR_RETURN(const std::vector<std::string> hosts,
                         AllGatherStrings(control, control.rank_info().host));
  P2pResult result;
  int my_node = -1;
  for (int r = 0; r < n; ++r) {
    const std::string& host = hosts[static_cast<size_t>(r)];
    bool seen = false;
    for (const P2pNode& node : result.nodes) seen = seen || node.host == host;
    if (seen && !o.per_rank) continue;
    if (r == me) my_node = static_cast<int>(result.nodes.size());
    result.nodes.push_back({r, host, o.per_rank ? std::to_string(r) + ":" + host : host});
  }
  const size_t m = result.nodes.size();
  if (m < 2) {
    return FailedPrecondition(
        "p2p needs at least two nodes, but all " + std::to_string(n) + " rank(s) run on host " +
        result.nodes[0].host +
        ": start one rank per node (mpirun -np N --map-by node -H a,b,...), or pass --per-rank "
        "to measure between the ranks of one host");
  }

  const size_t lat_bytes = o.latency_bytes, bw_bytes = o.bandwidth_bytes;
  FJORD_ASSIGN_OR_RETURN(BenchBuffer send, AllocateBenchBuffer(memory, std::max(bw_bytes, lat_bytes)));
  FJORD_ASSIGN_OR_RETURN(BenchBuffer recv, AllocateBenchBuffer(memory, std::max(bw_bytes, lat_bytes)));
  const Values values(DataType::kU8, ReduceOp::kSum, false, n);
  std::vector<std::byte> host(std::max(bw_bytes, lat_bytes));
  values.FillInput(me, 0, host.size(), host.data());
  FJORD_RETURN_IF_ERROR(memory.Upload(send.get(), host.data(), host.size()));

  // [from * m + to], filled by the rank that measured it, then combined over ranks (max).
  std::vector<float> bw(m * m, 0.f), lat(m * m, 0.f), wrong(m * m, 0.f);
  for (size_t a = 0; a < m; ++a) {
    for (size_t b = a + 1; b < m; ++b) {
      FJORD_RETURN_IF_ERROR(control.Barrier());
      if (my_node != static_cast<int>(a) && my_node != static_cast<int>(b)) continue;
      const size_t self = static_cast<size_t>(my_node), other = my_node == static_cast<int>(a) ? b : a;
      const int peer = result.nodes[other].rank;
      const std::string where = "p2p between " + result.nodes[a].label + " and " + result.nodes[b].label;
      // Bandwidth, one direction at a time; the receiver's clock counts, and it answers every
      // message with an empty one, so at most two messages are in flight. Each message is timed
      // alone and the median taken, as for latency: a rank descheduled for a moment on a shared
      // node costs one sample, not the link's figure, while a slow link is slow in every sample.
      for (const bool a_sends : {true, false}) {
        const bool sending = (my_node == static_cast<int>(a)) == a_sends;
        std::vector<double> times;
        for (int i = 0; i < o.warmup + o.iters; ++i) {
          const bool timed = i >= o.warmup && !sending;
          if (timed) FJORD_RETURN_IF_ERROR(memory.StartTimer());
          const Status s = sending
                               ? data.SendRecv(send.get(), bw_bytes, peer, nullptr, 0, peer, DataType::kU8)
                               : data.SendRecv(nullptr, 0, peer, recv.get(), bw_bytes, peer, DataType::kU8);
          FJORD_RETURN_IF_ERROR(s.WithContext(where));
          if (timed) {
            FJORD_ASSIGN_OR_RETURN(const double t, memory.StopTimer());
            times.push_back(t);
          }
        }
        if (sending) continue;
        bw[other * m + self] = static_cast<float>(static_cast<double>(bw_bytes) / Median(times) / 1e9);
        if (o.check) {
          FJORD_RETURN_IF_ERROR(memory.Download(host.data(), recv.get(), bw_bytes));
          long long bad = 0;
          for (size_t i = 0; i < bw_bytes; ++i) {
            uint8_t expected = 0;
            values.Encode(values.Input(peer, i), &expected);
            bad += static_cast<uint8_t>(host[i]) != expected;
          }
          wrong[other * m + self] = static_cast<float>(std::min<long long>(bad, 1 << 24));
        }
      }
      // Latency: exchanges of small messages in both directions at once, measured after the
      // bandwidth so that the ranks waiting in the barrier have gone from spinning to sleeping
      // (they share cores with the pair when several ranks run on one machine).
      for (int i = 0; i < o.warmup; ++i) {
        FJORD_RETURN_IF_ERROR(
            data.SendRecv(send.get(), lat_bytes, peer, recv.get(), lat_bytes, peer, DataType::kU8)
                .WithContext(where));
      }
      // Each exchange timed alone, the median reported: a rank descheduled for a moment (an
      // oversubscribed node, a daemon) shows in one sample, not in the link's latency.
      std::vector<double> samples;
      for (int i = 0; i < o.iters; ++i) {
        FJORD_RETURN_IF_ERROR(memory.StartTimer());
        FJORD_RETURN_IF_ERROR(
            data.SendRecv(send.get(), lat_bytes, peer, recv.get(), lat_bytes, peer, DataType::kU8)
                .WithContext(where));
        FJORD_ASSIGN_OR_RETURN(const double t, memory.StopTimer());
        samples.push_back(t);
      }
      lat[self * m + other] = static_cast<float>(Median(samples) * 1e6);
    }
  }
  FJORD_RETURN_IF_ERROR(control.AllReduce(bw.data(), bw.data(), m * m, DataType::kF32, ReduceOp::kMax));
  FJORD_RETURN_IF_ERROR(control.AllReduce(lat.data(), lat.data(), m * m, DataType::kF32, ReduceOp::kMax));
  FJORD_RETURN_IF_ERROR(control.AllReduce(wrong.data(), wrong.data(), m * m, DataType::kF32, ReduceOp::kMax));

  result.bandwidth_gbps.assign(m, std::vector<double>(m, 0.0));
  result.latency_us.assign(m, std::vector<double>(m, 0.0));
  result.wrong.assign(m, std::vector<long long>(m, 0));
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < m; ++j) {
      if (i == j) continue;
      result.bandwidth_gbps[i][j] = bw[i * m + j];
      // Both ends timed the same exchanges: report their mean, the same both ways.
      result.latency_us[i][j] = (static_cast<double>(lat[i * m + j]) + lat[j * m + i]) / 2;
      result.wrong[i][j] = o.check ? static_cast<long long>(wrong[i * m + j]) : -1;
      if (o.check) result.wrong_total += result.wrong[i][j];
    }
  }
  FlagSlowLinks(o.threshold, &result);
  return result;
}

std::string FormatP2p(const P2pOptions& o, const BenchContext& context, const P2pResult& r) {
  const size_t m = r.nodes.size();
  size_t width = 9;
  for (const P2pNode& node : r.nodes) width = std::max(width, node.label.size() + 1);
  const int w = static_cast<int>(width);
  std::string out =
      o.per_rank ? Printf("# fjord bench p2p: backend %s, %zu ranks\n", context.backend.c_str(), m)
                 : Printf("# fjord bench p2p: backend %s, %zu nodes (the first of %d rank(s) on each host)\n",
                          context.backend.c_str(), m, context.world_size);
  out += Printf("# bandwidth: %zu-byte messages, one direction at a time, median of %d after %d warm-up\n",
                o.bandwidth_bytes, o.iters, o.warmup);
  out += Printf("# latency: %zu-byte messages exchanged both ways at once, median time of one exchange\n",
                o.latency_bytes);
  out += RanksText(context);
  auto is_flagged = [&](P2pFlag::Kind kind, size_t i, size_t j) {
    for (const P2pFlag& f : r.flags) {
      if (f.kind != kind) continue;
      if (static_cast<size_t>(f.from) == i && static_cast<size_t>(f.to) == j) return true;
      if (kind == P2pFlag::Kind::kLatency && static_cast<size_t>(f.from) == j &&
          static_cast<size_t>(f.to) == i) {
        return true;
      }
    }
    return false;
  };
  auto matrix = [&](const char* title, const std::vector<std::vector<double>>& v, P2pFlag::Kind kind,
                    const char* fmt) {
    std::string s = Printf("#\n# %s\n# %*s", title, w - 2, "from \\ to");
    for (const P2pNode& node : r.nodes) s += Printf(" %*s ", w, node.label.c_str());
    s += "\n";
    for (size_t i = 0; i < m; ++i) {
      s += Printf("%*s", w, r.nodes[i].label.c_str());
      for (size_t j = 0; j < m; ++j) {
        if (i == j) {
          s += Printf(" %*s ", w, "-");
        } else {
          s += ' ';
          s += Printf(fmt, w, v[i][j]);
          s += is_flagged(kind, i, j) ? '!' : ' ';
        }
      }
      s += "\n";
    }
    return s;
  };
  out += matrix("Bandwidth (GB/s), row sends to column; ! = flagged", r.bandwidth_gbps,
                P2pFlag::Kind::kBandwidth, "%*.3f");
  out += matrix("Latency (us) per exchange; ! = flagged", r.latency_us, P2pFlag::Kind::kLatency, "%*.1f");
  out += Printf("#\n# median bandwidth %.3f GB/s: flagged below %.2f x median = %.3f GB/s\n",
                r.median_bandwidth, o.threshold, o.threshold * r.median_bandwidth);
  out += Printf("# median latency %.1f us: flagged above median / %.2f = %.1f us\n", r.median_latency,
                o.threshold, r.median_latency / o.threshold);
  size_t bw_flags = 0;
  for (const P2pFlag& f : r.flags) bw_flags += f.kind == P2pFlag::Kind::kBandwidth;
  out += Printf("# Slow links: %zu (bandwidth %zu, latency %zu)\n", r.flags.size(), bw_flags,
                r.flags.size() - bw_flags);
  for (const P2pFlag& f : r.flags) {
    const bool bwf = f.kind == P2pFlag::Kind::kBandwidth;
    out += Printf("#   %s %s %s   %-9s %10.3f %s   %.2f x median\n",
                  r.nodes[static_cast<size_t>(f.from)].label.c_str(), bwf ? "->" : "<->",
                  r.nodes[static_cast<size_t>(f.to)].label.c_str(), bwf ? "bandwidth" : "latency", f.value,
                  bwf ? "GB/s" : "us", f.ratio);
  }
  if (!r.suspects.empty()) {
    out += "# Suspects:\n";
    for (const std::string& s : r.suspects) out += "#   " + s + "\n";
  }
  out += o.check
             ? Printf("# Out of bounds values : %lld %s\n", r.wrong_total, r.wrong_total ? "FAILED" : "OK")
             : "# Out of bounds values : not checked (-c 0)\n";
  return out;
}

std::string P2pJson(const P2pOptions& o, const BenchContext& context, const P2pResult& r) {
  const size_t m = r.nodes.size();
  std::string out = "{\n  \"bench\": \"p2p\", " + ContextJson(context);
  out += ",\n  \"per_rank\": " + std::string(o.per_rank ? "true" : "false") +
         ", \"latency_bytes\": " + std::to_string(o.latency_bytes) +
         ", \"bandwidth_bytes\": " + std::to_string(o.bandwidth_bytes) +
         ", \"iters\": " + std::to_string(o.iters) + ", \"warmup\": " + std::to_string(o.warmup) +
         ", \"threshold\": " + JsonNumber(o.threshold) + ",\n  \"nodes\": [";
  for (size_t i = 0; i < m; ++i) {
    out += std::string(i ? ", " : "") + "{\"rank\": " + std::to_string(r.nodes[i].rank) +
           ", \"host\": " + JsonQuote(r.nodes[i].host) + ", \"label\": " + JsonQuote(r.nodes[i].label) + "}";
  }
  auto matrix = [&](const char* name, auto get) {
    std::string s = Printf(",\n  \"%s\": [", name);
    for (size_t i = 0; i < m; ++i) {
      s += i ? ",\n    [" : "\n    [";
      for (size_t j = 0; j < m; ++j) s += (j ? ", " : "") + get(i, j);
      s += "]";
    }
    return s + "]";
  };
  out += "]";
  out += matrix("bandwidth_gbps", [&](size_t i, size_t j) {
    return i == j ? std::string("null") : JsonNumber(r.bandwidth_gbps[i][j]);
  });
  out += matrix("latency_us", [&](size_t i, size_t j) {
    return i == j ? std::string("null") : JsonNumber(r.latency_us[i][j]);
  });
  out += matrix("wrong_matrix", [&](size_t i, size_t j) {
    return i == j || r.wrong[i][j] < 0 ? std::string("null") : std::to_string(r.wrong[i][j]);
  });
  out += ",\n  \"median_bandwidth_gbps\": " + JsonNumber(r.median_bandwidth) +
         ", \"median_latency_us\": " + JsonNumber(r.median_latency) + ",\n  \"flags\": [";
  for (size_t i = 0; i < r.flags.size(); ++i) {
    const P2pFlag& f = r.flags[i];
    out += std::string(i ? ",\n    " : "\n    ") +
           "{\"kind\": " + JsonQuote(f.kind == P2pFlag::Kind::kBandwidth ? "bandwidth" : "latency") +
           ", \"from\": " + JsonQuote(r.nodes[static_cast<size_t>(f.from)].label) +
           ", \"to\": " + JsonQuote(r.nodes[static_cast<size_t>(f.to)].label) +
           ", \"value\": " + JsonNumber(f.value) + ", \"ratio\": " + JsonNumber(f.ratio) + "}";
  }
  out += "],\n  \"suspects\": [";
  for (size_t i = 0; i < r.suspects.size(); ++i) out += std::string(i ? ", " : "") + JsonQuote(r.suspects[i]);
  out += "],\n  \"wrong\": " + (o.check ? std::to_string(r.wrong_total) : std::string("null")) + "\n}\n";
  return out;
}

}  // namespace fjord
