// The bench engine in one process: bus-bandwidth factors, sizes and shapes, the table layout,
// the sweep on the one-rank communicator (every collective, dtype and reduction checked bit for
// bit, and the corruption hook counted once), and the slow-link verdicts of the p2p matrix.
// Multi-rank runs go through the fjord binary in tests/launcher/bench_test.cc.
#include "collectives/bench/bench.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "collectives/communicator.h"

namespace fjord {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const BenchCollective kAll[] = {BenchCollective::kAllReduce,     BenchCollective::kAllGather,
                                BenchCollective::kReduceScatter, BenchCollective::kBroadcast,
                                BenchCollective::kReduce,        BenchCollective::kAllToAll,
                                BenchCollective::kSendRecv};

TEST(BenchTest, BusBandwidthFactorsAreNcclTests) {
  for (int n = 1; n <= 8; ++n) {
    const double d = n;
    EXPECT_DOUBLE_EQ(BusBandwidthFactor(BenchCollective::kAllReduce, n), 2 * (d - 1) / d);
    EXPECT_DOUBLE_EQ(BusBandwidthFactor(BenchCollective::kAllGather, n), (d - 1) / d);
    EXPECT_DOUBLE_EQ(BusBandwidthFactor(BenchCollective::kReduceScatter, n), (d - 1) / d);
    EXPECT_DOUBLE_EQ(BusBandwidthFactor(BenchCollective::kAllToAll, n), (d - 1) / d);
    EXPECT_DOUBLE_EQ(BusBandwidthFactor(BenchCollective::kBroadcast, n), 1.0);
    EXPECT_DOUBLE_EQ(BusBandwidthFactor(BenchCollective::kReduce, n), 1.0);
    EXPECT_DOUBLE_EQ(BusBandwidthFactor(BenchCollective::kSendRecv, n), 1.0);
  }
}

TEST(BenchTest, NamesRoundTrip) {
  for (BenchCollective c : kAll) {
    StatusOr<BenchCollective> parsed = ParseBenchCollective(BenchCollectiveName(c));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, c);
  }
  EXPECT_FALSE(ParseBenchCollective("all_reduce").ok());
}

TEST(BenchTest, ShapesRoundToWholeElementsPerRank) {
  // 1000 bytes of float on 3 ranks: allreduce keeps 250 elements; allgather 83 per rank = 249.
  BenchShape s = BenchShapeFor(BenchCollective::kAllReduce, 1000, DataType::kF32, 3);
  EXPECT_EQ(s.count, 250u);
  EXPECT_EQ(s.bytes, 1000u);
  EXPECT_EQ(s.per_rank, 250u);
  s = BenchShapeFor(BenchCollective::kAllGather, 1000, DataType::kF32, 3);
  EXPECT_EQ(s.per_rank, 83u);
  EXPECT_EQ(s.count, 249u);
  EXPECT_EQ(s.bytes, 996u);
  s = BenchShapeFor(BenchCollective::kAllToAll, 8, DataType::kF32, 4);  // too small for one each
  EXPECT_EQ(s.count, 0u);
  s = BenchShapeFor(BenchCollective::kSendRecv, 7, DataType::kBF16, 2);
  EXPECT_EQ(s.count, 3u);
  EXPECT_EQ(s.bytes, 6u);
}

TEST(BenchTest, SizesGrowByFactorOrStep) {
  BenchOptions o;
  o.min_bytes = 8;
  o.max_bytes = 100;
  o.factor = 2;
  EXPECT_THAT(BenchSizes(o), ElementsAre(8, 16, 32, 64));
  o.factor = 0;
  o.step_bytes = 40;
  EXPECT_THAT(BenchSizes(o), ElementsAre(8, 48, 88));
  o.factor = 1.01;  // too small to change 8: still advances
  o.max_bytes = 10;
  EXPECT_THAT(BenchSizes(o), ElementsAre(8, 9, 10));
}

TEST(BenchTest, RowLayoutIsNcclTests) {
  BenchOptions o;
  BenchRow row;
  row.bytes = 33554432;
  row.count = 8388608;
  row.out_of_place = {true, 12345.6, 2.718, 2.718, 0};
  row.in_place = {true, 99.5, 1.5, 1.5, -1};
  // nccl-tests: "%12li  %12li  %8s  %6s  %6i" then "  %7s  %6.2f  %6.2f  %5s" per column group, time
  // with no decimals from 10 ms, one from 100 us, else two.
  EXPECT_EQ(FormatBenchRow(o, row),
            "    33554432       8388608     float     sum      -1    12346    2.72    2.72      0"
            "    99.50    1.50    1.50    N/A\n");
  o.collective = BenchCollective::kAllToAll;
  row.in_place = BenchMeasurement();
  EXPECT_THAT(FormatBenchRow(o, row), HasSubstr("  none      -1"));
  EXPECT_THAT(FormatBenchRow(o, row), HasSubstr("      N/A     N/A     N/A    N/A\n"));
  BenchTable table;
  table.wrong = 2;
  table.avg_busbw = 1.25;
  EXPECT_EQ(FormatBenchFooter(table),
            "# Out of bounds values : 2 FAILED\n# Avg bus bandwidth    : 1.25 \n#\n");
}

// The one-rank communicator: every collective, dtype and reduction verifies bit for bit.
TEST(BenchTest, SweepOnOneRankIsExact) {
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptions{});
  ASSERT_TRUE(comm.ok()) << comm.status().message();
  ASSERT_EQ((*comm)->size(), 1);
  std::unique_ptr<BenchMemory> memory = CreateHostBenchMemory();
  for (BenchCollective c : kAll) {
    for (DataType d : {DataType::kF32, DataType::kBF16, DataType::kF16, DataType::kI32, DataType::kU8}) {
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax}) {
        if (op == ReduceOp::kAvg && d == DataType::kU8) continue;
        SCOPED_TRACE(std::string(BenchCollectiveName(c)) + " " + DataTypeName(d) + " " + ReduceOpName(op));
        BenchOptions o;
        o.collective = c;
        o.dtype = d;
        o.op = op;
        o.min_bytes = 1;
        o.max_bytes = 70000;
        o.factor = 7;
        o.iters = 2;
        o.warmup = 1;
        std::vector<BenchRow> seen;
        StatusOr<std::vector<BenchTable>> tables =
            RunBenchSweep(o, {{"auto", comm->get()}}, **comm, *memory,
                          [&](size_t, const BenchRow& r) { seen.push_back(r); });
        ASSERT_TRUE(tables.ok()) << tables.status().message();
        ASSERT_EQ(tables->size(), 1u);
        const BenchTable& t = (*tables)[0];
        EXPECT_EQ(t.wrong, 0);
        ASSERT_FALSE(t.rows.empty());
        EXPECT_EQ(seen.size(), t.rows.size());
        for (const BenchRow& r : t.rows) {
          EXPECT_TRUE(r.out_of_place.measured);
          EXPECT_EQ(r.out_of_place.wrong, 0);
          EXPECT_GT(r.out_of_place.time_us, 0);
          EXPECT_EQ(r.out_of_place.busbw, r.out_of_place.algbw * BusBandwidthFactor(c, 1));
          const bool in_place = c != BenchCollective::kAllToAll && c != BenchCollective::kSendRecv;
          EXPECT_EQ(r.in_place.measured, in_place);
          if (in_place) {
            EXPECT_EQ(r.in_place.wrong, 0);
          }
        }
      }
    }
  }
}

TEST(BenchTest, CorruptionHookCountsOneElementOnce) {
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptions{});
  ASSERT_TRUE(comm.ok());
  std::unique_ptr<BenchMemory> memory = CreateHostBenchMemory();
  BenchOptions o;
  o.min_bytes = 4;
  o.max_bytes = 4096;
  o.iters = 1;
  o.warmup = 0;
  o.corrupt_rank = 0;
  o.corrupt_index = 9;  // first present at 40 bytes
  StatusOr<std::vector<BenchTable>> tables = RunBenchSweep(o, {{"auto", comm->get()}}, **comm, *memory);
  ASSERT_TRUE(tables.ok());
  EXPECT_EQ((*tables)[0].wrong, 1);
  for (const BenchRow& r : (*tables)[0].rows) {
    EXPECT_EQ(r.out_of_place.wrong, r.bytes == 64 ? 1 : 0)
        << r.bytes;  // 4, 8, 16, 32, 64: 64 is the first >= 40
    EXPECT_EQ(r.in_place.wrong, 0);
  }
  EXPECT_THAT(BenchJson(o, BenchContext{"self", 1, {}}, *tables), HasSubstr("\"wrong\": 1\n}"));
}

TEST(BenchTest, SweepRefusesWhatCannotBeMeasured) {
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptions{});
  ASSERT_TRUE(comm.ok());
  std::unique_ptr<BenchMemory> memory = CreateHostBenchMemory();
  BenchOptions o;
  o.collective = BenchCollective::kBroadcast;
  o.root = 1;
  StatusOr<std::vector<BenchTable>> t = RunBenchSweep(o, {{"auto", comm->get()}}, **comm, *memory);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("root 1 is not a rank"));
  o.collective = BenchCollective::kAllReduce;
  o.root = 0;
  o.dtype = DataType::kU8;
  o.op = ReduceOp::kAvg;
  t = RunBenchSweep(o, {{"auto", comm->get()}}, **comm, *memory);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("avg is not supported on uint8"));
}

// A p2p result with `m` nodes, every link at `bw` GB/s and `lat` us.
P2pResult Uniform(size_t m, double bw, double lat) {
  P2pResult r;
  for (size_t i = 0; i < m; ++i) {
    std::string name = "h";  // (not "h" + std::to_string(i): GCC 12 warns about that falsely, -Wrestrict)
    name += std::to_string(i);
    r.nodes.push_back({static_cast<int>(i), name, name});
  }
  r.bandwidth_gbps.assign(m, std::vector<double>(m, bw));
  r.latency_us.assign(m, std::vector<double>(m, lat));
  r.wrong.assign(m, std::vector<long long>(m, 0));
  for (size_t i = 0; i < m; ++i) r.bandwidth_gbps[i][i] = r.latency_us[i][i] = 0;
  return r;
}

TEST(BenchTest, HealthyMatrixHasNoFlags) {
  P2pResult r = Uniform(4, 10.0, 5.0);
  r.bandwidth_gbps[0][1] = 8.0;  // within 0.7 x median
  FlagSlowLinks(0.7, &r);
  EXPECT_DOUBLE_EQ(r.median_bandwidth, 10.0);
  EXPECT_DOUBLE_EQ(r.median_latency, 5.0);
  EXPECT_TRUE(r.flags.empty());
  EXPECT_TRUE(r.suspects.empty());
}

TEST(BenchTest, NodeWithSlowTransmitIsTheSuspect) {
  P2pResult r = Uniform(5, 10.0, 5.0);
  for (size_t j = 0; j < 5; ++j) {
    if (j != 2) r.bandwidth_gbps[2][j] = 1.0 + 0.1 * static_cast<double>(j);
  }
  FlagSlowLinks(0.7, &r);
  ASSERT_EQ(r.flags.size(), 4u);
  for (const P2pFlag& f : r.flags) {
    EXPECT_EQ(f.kind, P2pFlag::Kind::kBandwidth);
    EXPECT_EQ(f.from, 2);
  }
  EXPECT_EQ(r.flags[0].to, 0);  // slowest first
  EXPECT_DOUBLE_EQ(r.flags[0].ratio, 0.1);
  ASSERT_EQ(r.suspects.size(), 1u);
  EXPECT_THAT(r.suspects[0], HasSubstr("h2: every link sending from it is slow (4 of 4)"));
}

TEST(BenchTest, NodeSlowBothWaysAndALoneSlowLink) {
  P2pResult r = Uniform(5, 10.0, 5.0);
  for (size_t j = 0; j < 5; ++j) {
    if (j == 4) continue;
    r.bandwidth_gbps[4][j] = r.bandwidth_gbps[j][4] = 2.0;
  }
  r.bandwidth_gbps[0][1] = 3.0;  // one bad cable between h0 and h1, one way
  r.latency_us[0][3] = r.latency_us[3][0] = 50.0;
  FlagSlowLinks(0.7, &r);
  EXPECT_EQ(r.flags.size(), 8u + 1u + 1u);
  EXPECT_THAT(r.suspects, ::testing::Contains(HasSubstr("h4: every link to and from it is slow")));
  EXPECT_THAT(r.suspects, ::testing::Contains(HasSubstr("h0 -> h1: slow while both ends are fine")));
  EXPECT_THAT(r.suspects, ::testing::Contains(HasSubstr("h0 <-> h3: high latency between them only")));
  EXPECT_EQ(r.flags.back().kind, P2pFlag::Kind::kLatency);
  const std::string text = FormatP2p(P2pOptions(), BenchContext{"mpi", 5, {}}, r);
  EXPECT_THAT(text, HasSubstr("# Slow links: 10 (bandwidth 9, latency 1)"));
  EXPECT_THAT(text, HasSubstr("2.000!"));
  const std::string json = P2pJson(P2pOptions(), BenchContext{"mpi", 5, {}}, r);
  EXPECT_THAT(json, HasSubstr("{\"kind\": \"latency\", \"from\": \"h0\", \"to\": \"h3\", \"value\": 50"));
}

}  // namespace
}  // namespace fjord
