// `fjord bench` through the fjord binary under mpirun: the table and the JSON agree and follow
// nccl-tests' definitions (bus-bandwidth factors for n = 2, 3, 4 checked against the formulas
// written out here, independently of the engine), healthy runs have #wrong 0, the corruption
// hook makes #wrong exactly 1 and the exit code non-zero, and p2p flags the one host whose link a
// tc token bucket throttles on a cluster of network namespaces.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/json.h"
#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::Mpirun;
using testing::RunResult;
using testing::Shell;

// nccl-tests' bus-bandwidth factors, from its src/*.cu GetBw functions.
double ExpectedFactor(const std::string& coll, int n) {
  if (coll == "allreduce") return 2.0 * (n - 1) / n;
  if (coll == "allgather" || coll == "reducescatter" || coll == "alltoall")
    return static_cast<double>(n - 1) / n;
  return 1.0;  // broadcast, reduce, sendrecv
}

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One data row of the text table: the five leading columns, then per column group time, algbw,
// busbw, #wrong as text ("N/A" where not applicable).
struct TextRow {
  long long size = 0, count = 0;
  std::string type, redop;
  int root = 0;
  std::vector<std::string> cols;  // 8 entries
};

std::vector<TextRow> ParseTable(const std::string& output) {
  std::vector<TextRow> rows;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#' || line.find_first_not_of(' ') == std::string::npos) continue;
    std::istringstream f(line);
    TextRow r;
    if (!(f >> r.size >> r.count >> r.type >> r.redop >> r.root)) continue;  // mpirun's or a hook's chatter
    for (std::string tok; f >> tok;) r.cols.push_back(tok);
    rows.push_back(r);
  }
  return rows;
}

class BenchCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("fjord_bench_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
            "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  JsonValue LoadJson(const fs::path& p) {
    StatusOr<JsonValue> v = ParseJson(ReadFile(p), p.string());
    EXPECT_TRUE(v.ok()) << v.status().message();
    return v.ok() ? *v : JsonValue();
  }

  fs::path dir_;
};

class BenchCliFactorTest : public BenchCliTest, public ::testing::WithParamInterface<int> {};

// Every collective on n ranks: exit 0, #wrong 0, text == JSON, busbw / algbw == the formula.
TEST_P(BenchCliFactorTest, TableAndJsonFollowNcclTests) {
  const int n = GetParam();
  for (const std::string coll :
       {"allreduce", "allgather", "reducescatter", "broadcast", "reduce", "alltoall", "sendrecv"}) {
    SCOPED_TRACE(coll + " on " + std::to_string(n) + " ranks");
    const fs::path json = dir_ / (coll + ".json");
    const bool rooted = coll == "broadcast" || coll == "reduce";
    const RunResult r = Shell(Mpirun(n) + " bench " + coll + " -b 1000 -e 64K -f 4 -n 3 -w 1 -r " +
                              std::to_string(rooted ? n - 1 : 0) + " --json " + json.string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_THAT(r.output, HasSubstr("# Out of bounds values : 0 OK"));
    const std::vector<TextRow> text = ParseTable(r.output);
    const JsonValue doc = LoadJson(json);
    ASSERT_TRUE(doc.is_object());
    EXPECT_EQ(doc.Find("world_size")->AsInt64(), n);
    EXPECT_NEAR(doc.Find("bus_factor")->number(), ExpectedFactor(coll, n), 1e-9);
    EXPECT_EQ(doc.Find("wrong")->AsInt64(), 0);
    const JsonValue& table = doc.Find("tables")->array().at(0);
    const std::vector<JsonValue>& rows = table.Find("rows")->array();
    ASSERT_EQ(rows.size(), text.size()) << r.output;
    ASSERT_GE(rows.size(), 3u);  // 1000, 4000, 16000, 64000 bytes, rounded to the shape
    const bool distributed = coll == "allgather" || coll == "reducescatter" || coll == "alltoall";
    const bool in_place = coll != "alltoall" && coll != "sendrecv";
    for (size_t i = 0; i < rows.size(); ++i) {
      SCOPED_TRACE("row " + std::to_string(i));
      const JsonValue& row = rows[i];
      const TextRow& t = text[i];
      const int64_t size = *row.Find("size")->AsInt64(), count = *row.Find("count")->AsInt64();
      EXPECT_EQ(t.size, size);
      EXPECT_EQ(t.count, count);
      EXPECT_EQ(size, count * 4);  // float
      if (distributed) {
        EXPECT_EQ(count % n, 0);
      }
      EXPECT_EQ(t.type, "float");
      EXPECT_EQ(t.redop, coll == "allreduce" || coll == "reducescatter" || coll == "reduce" ? "sum" : "none");
      EXPECT_EQ(t.root, rooted ? n - 1 : -1);
      ASSERT_EQ(t.cols.size(), 8u);
      for (const bool ip : {false, true}) {
        const JsonValue* m = row.Find(ip ? "in_place" : "out_of_place");
        const size_t c = ip ? 4 : 0;
        if (ip && !in_place) {
          EXPECT_TRUE(m->is_null());
          EXPECT_EQ(t.cols[c], "N/A");
          continue;
        }
        ASSERT_TRUE(m->is_object());
        const double time_us = m->Find("time_us")->number();
        const double algbw = m->Find("algbw_gbps")->number(), busbw = m->Find("busbw_gbps")->number();
        ASSERT_GT(time_us, 0);
        // algbw = size / time (GB/s = 1e9 B/s), busbw = algbw * factor.
        EXPECT_NEAR(algbw, static_cast<double>(size) / (time_us * 1e3), 1e-6 * algbw);
        EXPECT_NEAR(busbw, algbw * ExpectedFactor(coll, n), 1e-6 * algbw + 1e-12);
        // The text shows the same numbers, rounded as nccl-tests rounds them.
        EXPECT_NEAR(std::stod(t.cols[c]), time_us, time_us >= 10000 ? 0.51 : time_us >= 100 ? 0.051 : 0.0051);
        EXPECT_NEAR(std::stod(t.cols[c + 1]), algbw, 0.0051);
        EXPECT_NEAR(std::stod(t.cols[c + 2]), busbw, 0.0051);
        EXPECT_EQ(t.cols[c + 3], "0");
        EXPECT_EQ(m->Find("wrong")->AsInt64(), 0);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, BenchCliFactorTest, ::testing::Values(2, 3, 4),
                         [](const auto& info) { return "np" + std::to_string(info.param); });

// Every dtype and reduction on 3 ranks (n = 3 makes avg round): all results exact.
TEST_F(BenchCliTest, EveryDtypeAndOpIsExact) {
  for (const std::string dtype : {"float", "half", "bfloat16", "int32", "uint8"}) {
    for (const std::string op : {"sum", "avg", "max"}) {
      if (dtype == "uint8" && op == "avg") continue;  // refused by contract
      for (const std::string coll : {"allreduce", "reducescatter", "reduce"}) {
        SCOPED_TRACE(coll + " " + dtype + " " + op);
        const RunResult r = Shell(Mpirun(3) + " bench " + coll + " -b 6 -e 600K -f 10 -n 1 -w 0 -r 1 -d " +
                                  dtype + " -o " + op);
        ASSERT_EQ(r.exit_code, 0) << r.output;
        EXPECT_THAT(r.output, HasSubstr("# Out of bounds values : 0 OK"));
        EXPECT_THAT(r.output, HasSubstr(" " + dtype + " "));
      }
    }
  }
}

// The hook changes one element on one rank: exactly one wrong element, in one row, exit 1.
TEST_F(BenchCliTest, CorruptedElementIsCountedOnceAndFails) {
  const fs::path json = dir_ / "corrupt.json";
  const RunResult r = Shell(Mpirun(2, "FJORD_TEST_HOOK=bench_corrupt=1:5") +
                            " bench allreduce -b 8 -e 1K -n 2 -w 0 --json " + json.string());
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("TEST HOOK bench_corrupt=1:5"));
  EXPECT_THAT(r.output, HasSubstr("# Out of bounds values : 1 FAILED"));
  EXPECT_THAT(r.output, HasSubstr("1 element(s) wrong"));
  const JsonValue doc = LoadJson(json);
  ASSERT_TRUE(doc.is_object());
  EXPECT_EQ(doc.Find("wrong")->AsInt64(), 1);
  int64_t total = 0;
  int rows_with_wrong = 0;
  for (const JsonValue& row : doc.Find("tables")->array().at(0).Find("rows")->array()) {
    for (const char* col : {"out_of_place", "in_place"}) {
      const int64_t w = *row.Find(col)->Find("wrong")->AsInt64();
      total += w;
      rows_with_wrong += w != 0;
    }
  }
  EXPECT_EQ(total, 1);
  EXPECT_EQ(rows_with_wrong, 1);
  // Element 5 first exists at 32 bytes (8 floats; sizes double from 8): that row, out of place, says 1.
  for (const TextRow& t : ParseTable(r.output)) {
    ASSERT_EQ(t.cols.size(), 8u);
    EXPECT_EQ(t.cols[3], t.size == 32 ? "1" : "0") << t.size;
    EXPECT_EQ(t.cols[7], "0");
  }
}

// Several algorithms in one run: a table each, and the comparison against the first.
TEST_F(BenchCliTest, SeveralAlgorithmsAreComparedInOneRun) {
  const fs::path json = dir_ / "algos.json";
  const RunResult r =
      Shell(Mpirun(2) + " bench allreduce -b 1K -e 256K -f 16 -n 3 -w 1 --algo mpi,ring,tree --json " +
            json.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("algorithm mpi"));
  EXPECT_THAT(r.output, HasSubstr("algorithm ring"));
  EXPECT_THAT(r.output, HasSubstr("algorithm tree"));
  EXPECT_THAT(r.output, HasSubstr("# Against algorithm 'mpi'"));
  EXPECT_EQ(ParseTable(r.output).size(), 9u);  // 3 sizes x 3 tables; the comparison is all comments
  const JsonValue doc = LoadJson(json);
  ASSERT_TRUE(doc.is_object());
  ASSERT_EQ(doc.Find("tables")->array().size(), 3u);
  EXPECT_EQ(doc.Find("tables")->array()[2].Find("algo")->text(), "tree");
}

TEST_F(BenchCliTest, BadArgumentsExitTwoWithTheReason) {
  struct Case {
    std::string args, message;
  };
  for (const Case& c : std::vector<Case>{
           {"bench", "give a collective"},
           {"bench allsum", "unknown collective 'allsum'"},
           {"bench allreduce -b 1X", "-b/--minbytes '1X' is not a size"},
           {"bench allreduce -b 1M -e 1K", "-e 1024 is below -b 1048576"},
           {"bench allreduce -f 2 -i 8", "not both"},
           {"bench allreduce -o prod", "sum, avg or max"},
           {"bench allreduce -d double", "is not a data type"},
           {"bench allreduce -n 0", "-n/--iters '0'"},
           {"bench allreduce --algo fast", "unknown collective algorithm 'fast'"},
           {"bench allreduce -d uint8 -o avg", "avg on uint8"},
           {"bench broadcast -r 1", "-r 1 is not a rank: the job has 1 rank(s)"},
           {"bench allreduce --frobnicate", "unknown option '--frobnicate'"},
           {"bench allreduce -e", "-e/--maxbytes needs a value"},
       }) {
    const RunResult r = testing::RunFjord(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(c.message)) << c.args;
    EXPECT_THAT(r.output, HasSubstr("usage: mpirun -np N fjord bench")) << c.args;
  }
  const RunResult help = testing::RunFjord("bench --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.output, HasSubstr("--stepfactor"));
  EXPECT_THAT(testing::RunFjord("help").output, HasSubstr("bench"));
}

// Issue 21 item 5: nccl-tests' collective names and options. The oracle for the names is fjord's own
// spelling: the same sweep gives the same rows (size, count, type). Options fjord takes only at one
// value refuse the others saying what they would mean here.
TEST_F(BenchCliTest, NcclTestsNamesAndOptionsAreTakenOrRefusedWithTheirMeaning) {
  auto rows = [](const std::string& output) {
    std::vector<std::string> out;
    std::istringstream in(output);
    for (std::string line; std::getline(in, line);) {
      std::istringstream fields(line);
      std::string size, count, type;
      if (fields >> size >> count >> type && !size.empty() &&
          std::isdigit(static_cast<unsigned char>(size[0])))
        out.push_back(size + " " + count + " " + type);
    }
    return out;
  };
  const RunResult ours = testing::RunFjord("bench allreduce -b 8 -e 64 -n 1 -w 0");
  ASSERT_EQ(ours.exit_code, 0) << ours.output;
  ASSERT_EQ(rows(ours.output).size(), 4u) << ours.output;
  for (const std::string name : {"all_reduce_perf", "all_reduce"}) {
    const RunResult theirs =
        testing::RunFjord("bench " + name + " -b 8 -e 64 -n 1 -w 0 -g 1 -t 1 -m 1 -p 0 -z 0 -C 0 -c 1");
    EXPECT_EQ(theirs.exit_code, 0) << theirs.output;
    EXPECT_EQ(rows(theirs.output), rows(ours.output)) << name;
  }
  const RunResult rs = testing::RunFjord("bench reduce_scatter_perf -b 8 -e 8 -n 1 -w 0");
  EXPECT_EQ(rs.exit_code, 0) << rs.output;
  struct Case {
    std::string args, message;
  };
  for (const Case& c : std::vector<Case>{
           {"-g 2", "-g/--ngpus 2 is not supported: fjord runs one rank per GPU"},
           {"-t 4", "-t/--nthreads 4 is not supported"},
           {"-m 4", "-m/--agg_iters 4 is not supported"},
           {"-N 3", "--repeat R"},
           {"-T 10", "the communicator's own timeout applies"},
           {"-z 1", "-z/--blocking 1 is not supported"},
           {"-C 1", "wall time only"},
           {"-o min", "sum, avg or max"},
       }) {
    const RunResult r = testing::RunFjord("bench all_reduce_perf -b 8 -e 8 " + c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(c.message)) << c.args;
  }
}

// A --json that cannot be written (no such directory; a full disk, which /dev/full reports on
// close) fails the run with the path and the reason, after the table.
TEST_F(BenchCliTest, UnwritableJsonFailsNamingThePath) {
  const std::string missing = (dir_ / "no-such-dir" / "b.json").string();
  RunResult r = testing::RunFjord("bench allreduce -b 8 -e 8 -n 1 -w 0 --json " + missing);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("# Out of bounds values : 0 OK"));
  EXPECT_THAT(r.output, HasSubstr("fjord bench: error: cannot write --json " + missing +
                                  ": No such file or directory"));
  EXPECT_FALSE(fs::exists(dir_ / "no-such-dir"));
  r = testing::RunFjord("bench allreduce -b 8 -e 8 -n 1 -w 0 --json /dev/full");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("fjord bench: error: cannot write --json /dev/full: No space left on device"));

  r = Shell(Mpirun(2) + " bench p2p --per-rank -e 4K -n 1 -w 0 --json " + missing);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("# Bandwidth (GB/s), row sends to column"));
  EXPECT_THAT(r.output, HasSubstr("fjord bench p2p: error: cannot write --json " + missing +
                                  ": No such file or directory"));
}

// nccl-tests' long options and glued short ones are accepted.
TEST_F(BenchCliTest, NcclTestsSpellingsWork) {
  const RunResult r = testing::RunFjord(
      "bench allgather -b8 --maxbytes=64 --stepfactor 2 --iters=2 -w0 --check 1 "
      "--datatype=int32 -a max --repeat 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("average: max"));
  EXPECT_THAT(r.output, HasSubstr("# repeat: 2"));
  EXPECT_EQ(ParseTable(r.output).size(), 4u);  // 8, 16, 32, 64
}

TEST_F(BenchCliTest, NcclBackend) {
  const RunResult r = testing::RunFjord("bench allreduce --backend nccl -b 8 -e 1M -f 8 -n 5 -w 2");
#if !defined(FJORD_HAVE_NCCL)
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("built without NCCL"));
#else
  if (r.output.find("no CUDA device is visible") != std::string::npos)
    GTEST_SKIP() << "no GPU here: " << r.output;
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("backend nccl"));
  EXPECT_THAT(r.output, HasSubstr("device cuda:0"));
  EXPECT_THAT(r.output, HasSubstr("# Out of bounds values : 0 OK"));
#endif
}

TEST_F(BenchCliTest, P2pOnOneHostNeedsPerRank) {
  const RunResult one = Shell(Mpirun(2) + " bench p2p -e 64K -n 2");
  EXPECT_EQ(one.exit_code, 1) << one.output;
  EXPECT_THAT(one.output, HasSubstr("p2p needs at least two nodes"));
  EXPECT_THAT(one.output, HasSubstr("--per-rank"));

  const fs::path json = dir_ / "p2p.json";
  const RunResult r = Shell(Mpirun(3) + " bench p2p --per-rank -e 256K -n 3 --json " + json.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("# Bandwidth (GB/s), row sends to column"));
  EXPECT_THAT(r.output, HasSubstr("# Out of bounds values : 0 OK"));
  const JsonValue doc = LoadJson(json);
  ASSERT_TRUE(doc.is_object());
  ASSERT_EQ(doc.Find("nodes")->array().size(), 3u);
  const auto& bw = doc.Find("bandwidth_gbps")->array();
  const auto& lat = doc.Find("latency_us")->array();
  ASSERT_EQ(bw.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    for (size_t j = 0; j < 3; ++j) {
      if (i == j) {
        EXPECT_TRUE(bw[i].array()[j].is_null());
        continue;
      }
      EXPECT_GT(bw[i].array()[j].number(), 0) << i << "->" << j;
      EXPECT_GT(lat[i].array()[j].number(), 0) << i << "<->" << j;
      EXPECT_EQ(lat[i].array()[j].number(), lat[j].array()[i].number());
      EXPECT_EQ(doc.Find("wrong")->AsInt64(), 0);
    }
  }
}

// --- p2p on a multi-host cluster of network namespaces (scripts/netns-cluster.sh) ---------------

// Makes the cluster in its own state directory and removes it, whatever happens in between.
class NetnsCluster {
 public:
  explicit NetnsCluster(const fs::path& state) : state_(state) {}
  ~NetnsCluster() {
    if (up_) Shell("bash " + Script() + " down " + state_.string());
    std::error_code ignored;
    fs::remove_all(state_, ignored);
  }
  static std::string Script() { return std::string(FJORD_SOURCE_DIR) + "/scripts/netns-cluster.sh"; }
  RunResult Up(const std::string& hosts) {
    up_ = true;
    return Shell("bash " + Script() + " up " + state_.string() + " " + hosts);
  }
  RunResult Exec(const std::string& host, const std::string& cmd) {
    return Shell("bash " + Script() + " exec " + state_.string() + " " + host + " " + cmd);
  }

 private:
  fs::path state_;
  bool up_ = false;
};

TEST_F(BenchCliTest, P2pFlagsTheThrottledHostOnANetnsCluster) {
  const RunResult check = Shell("bash " + NetnsCluster::Script() + " check");
  if (check.exit_code == 77) GTEST_SKIP() << "network namespaces cannot be made here: " << check.output;
  ASSERT_EQ(check.exit_code, 0) << check.output;
  if (Shell("command -v tc").exit_code != 0) GTEST_SKIP() << "tc (iproute2) is not installed";

  // The state path names the namespaces (a hash of it), so parallel runs never share them.
  char tmpl[] = "/tmp/fjord-bench-netns-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const fs::path state = tmpl;
  NetnsCluster cluster(state);
  const RunResult up = cluster.Up("bn1:NO:osl1 bn2:NO:osl1 bn3:NO:osl1 bn4:NO:osl1");
  if (up.exit_code == 77) GTEST_SKIP() << "network namespaces cannot be made here: " << up.output;
  ASSERT_EQ(up.exit_code, 0) << up.output;

  // bn3's transmit side: 100 Mbit/s (12.5 MB/s), against hundreds of MB/s or more for the veth
  // pairs of the others even on a loaded machine.
  const RunResult tc =
      cluster.Exec("bn3", "tc qdisc add dev eth0 root tbf rate 100mbit burst 128kb latency 100ms");
  if (tc.exit_code != 0) GTEST_SKIP() << "tc cannot shape a veth here: " << tc.output;

  const fs::path json = state / "p2p.json";
  const RunResult r =
      cluster.Exec("head", std::string(FJORD_MPIEXEC) + " -np 4 -H bn1,bn2,bn3,bn4 " + FJORD_BINARY +
                               " bench p2p -e 1M -n 5 -w 1 --threshold 0.25 --json " + json.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("bn3: every link sending from it is slow (3 of 3)"));
  const JsonValue doc = LoadJson(json);
  ASSERT_TRUE(doc.is_object());
  std::vector<std::string> hosts;
  for (const JsonValue& node : doc.Find("nodes")->array()) hosts.push_back(node.Find("host")->text());
  EXPECT_THAT(hosts, ::testing::ElementsAre("bn1", "bn2", "bn3", "bn4"));
  std::set<std::string> flagged;
  for (const JsonValue& f : doc.Find("flags")->array()) {
    if (f.Find("kind")->text() == "bandwidth")
      flagged.insert(f.Find("from")->text() + "->" + f.Find("to")->text());
  }
  // Exactly bn3's links out (the threshold of 0.25 x median leaves room for a loaded test machine;
  // the throttled links sit near 0.05 x). Latency is not asserted: tbf passes small messages at
  // once, and four ranks on a small shared machine make latency noisy.
  EXPECT_EQ(flagged, (std::set<std::string>{"bn3->bn1", "bn3->bn2", "bn3->bn4"})) << r.output;
  EXPECT_EQ(doc.Find("wrong")->AsInt64(), 0);
}

}  // namespace
}  // namespace fjord
