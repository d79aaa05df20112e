// The memory plan (runtime/model/memory_plan.h) against measurement: a model and its AdamW state are
// carved from an arena twice as large as the plan says, trained for a step, and the arena's peak
// (Arena::used(): pieces are never freed, so what it has handed out is its high-water mark) must be
// within 5% of the plan's total, for GPT-2 and Llama, fp32 and bf16, recompute NONE and BLOCK, ZeRO
// stage 0, stage 1 (rank 1 of 3, its optimizer shard) and stage 2 (rank 1 of 3: its gradient shard
// and windows, UnitReducer's, through a backward pass). And the bytes-per-parameter arithmetic:
// fp32 parameters, gradients and AdamW's two moments are 4 + 4 + 8 bytes per parameter (the
// optimizer's 8 divided by the ranks at stages 1 and 2, the gradients' 4 at stage 2, plus one
// window of the embeddings and two of the largest layer), bf16 adds a 2-byte working copy.
#include "runtime/model/memory_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "collectives/self_communicator.h"
#include "runtime/device/device.h"
#include "runtime/model/gpt.h"
#include "runtime/model/optimizer.h"
#include "runtime/model/zero_units.h"
#include "runtime/train/param_gatherer.h"
#include "runtime/train/unit_reducer.h"
#include "tests/runtime/model/gpt_test_util.h"

namespace fjord {
namespace {

using testing::MakeConfig;
using testing::RandomTokens;

GptConfig Llama() {
  GptConfig c = MakeConfig(4, 4, 32, 16, 300);
  c.arch = GptConfig::Arch::kLlama;
  c.n_kv_head = 2;
  c.intermediate_size = 80;
  c.tie_embeddings = false;
  return c;
}

const PlanDevice kCpu{"cpu", size_t{1} << 40, false};

TEST(MemoryPlanTest, ArenaPeakIsWithinFivePercentOfThePlan) {
  const int B = 3, T = 16;
  for (GptConfig base : {MakeConfig(4, 4, 32, 16, 300), Llama()}) {
    for (Precision p : {Precision::kFp32, Precision::kBf16}) {
      for (bool recompute : {false, true}) {
        for (int stage : {0, 1, 2, 3}) {
          GptConfig c = base;
          c.precision = p;
          c.recompute = recompute;
          const int ranks = stage >= 1 ? 3 : 1, rank = stage >= 1 ? 1 : 0;
          SCOPED_TRACE(std::string(c.llama() ? "Llama " : "GPT-2 ") + PrecisionName(p) +
                       (recompute ? " BLOCK" : " NONE") + " stage " + std::to_string(stage));
          const MemoryPlan plan = PlanMemory({c, B, T, ranks, stage, false}, kCpu);
          StatusOr<std::unique_ptr<Arena>> arena = Arena::Create(CpuDevice(), 2 * plan.total(), "test");
          ASSERT_TRUE(arena.ok()) << arena.status().message();
          // As the trainer builds them: buffers a multiple of 16 x ranks floats at stage 1, AdamW
          // over this rank's shard.
          const size_t multiple = stage == 1 ? 16 * ranks : 16;
          if (stage >= 2) {
            c.grad_shard_ranks = ranks;
            if (stage == 3) c.param_shard_ranks = ranks;
            Gpt model(c, B, T, **arena, multiple);
            const ZeroUnits units(model.layout(), ranks);
            AdamW adam(model.layout(), units.Owned(rank), units.shard_floats(), **arena, stage == 3);
            // The gradient shard and windows (and at stage 3 the parameter shards and windows) as
            // the trainer makes them; a one-rank communicator reduces and gathers (the allocation
            // is what is measured).
            std::unique_ptr<Communicator> self = CreateSelfCommunicator({});
            UnitReducer reducer(*self, model, units, **arena, true);
            std::unique_ptr<ParamGatherer> gatherer;
            if (stage == 3) {
              gatherer = std::make_unique<ParamGatherer>(*self, model, units, **arena, true);
              std::vector<float> full(units.buffer_floats());
              model.InitGpt2(7, full.data());
              gatherer->LoadFull(full.data());
            } else {
              model.InitGpt2(7);
            }
            const std::vector<int32_t> tokens = RandomTokens(B * T, c.vocab_size, 1);
            reducer.ZeroShard();
            model.Forward(tokens.data(), tokens.data(), B, T, 1.0f);
            ASSERT_TRUE(reducer.Begin().ok());
            model.Backward([&](size_t begin, size_t end) { reducer.OnReady(begin, end); });
            ASSERT_TRUE(reducer.Finish().ok());
            adam.Step(gatherer ? gatherer->master() : model.params(), reducer.shard(), 1e-3f, 0.9f, 0.95f,
                      1e-8f, 0.1f, 1.0f, 1, gatherer ? gatherer->working_bf16() : model.working_params_bf16(),
                      0);
            if (gatherer) {
              ASSERT_TRUE(gatherer->TakeStatus().ok());
            }
            const double measured = static_cast<double>((*arena)->used());
            EXPECT_NEAR(plan.total() / measured, 1.0, 0.05) << plan.total() << " planned, " << measured;
            EXPECT_EQ(plan.arena_bytes, (*arena)->used());
            continue;
          }
          Gpt model(c, B, T, **arena, multiple);
          const size_t shard = stage == 1 ? model.buffer_size() / ranks : model.num_params();
          const size_t begin = stage == 1 ? shard * rank : 0;
          AdamW adam(model.layout(), begin, begin + shard, **arena);
          model.InitGpt2(7);
          const std::vector<int32_t> tokens = RandomTokens(B * T, c.vocab_size, 1);
          model.ZeroGrads();
          model.Forward(tokens.data(), tokens.data(), B, T, 1.0f);
          model.Backward();
          adam.Step(model.params(), model.grads(), 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 1,
                    model.working_params_bf16(), 0);
          const double measured = static_cast<double>((*arena)->used());
          const double planned = static_cast<double>(plan.total());
          EXPECT_NEAR(planned / measured, 1.0, 0.05) << planned << " planned, " << measured << " measured";
          EXPECT_EQ(plan.arena_bytes, (*arena)->used());
        }
      }
    }
  }
}

// The terms against bytes per parameter, from the closed-form parameter count, on sizes where the
// 256-byte alignment of each buffer is exact (params a multiple of 64 x ranks).
TEST(MemoryPlanTest, TermsMatchBytesPerParameter) {
  GptConfig c = MakeConfig(2, 2, 64, 32, 256);
  const size_t P = ParamCount(c);
  ASSERT_EQ(P % (64 * 4), 0u) << P;
  for (Precision p : {Precision::kFp32, Precision::kBf16}) {
    c.precision = p;
    for (int ranks : {1, 2, 4}) {
      const MemoryPlan stage0 = PlanMemory({c, 2, 32, ranks, 0, false}, kCpu);
      const MemoryPlan stage1 = PlanMemory({c, 2, 32, ranks, 1, false}, kCpu);
      const MemoryPlan stage2 = PlanMemory({c, 2, 32, ranks, 2, false}, kCpu);
      const size_t working = p == Precision::kBf16 ? 2 : 0;
      EXPECT_EQ(stage0.parameters, (4 + working) * P);
      EXPECT_EQ(stage0.gradients, 4 * P);
      EXPECT_EQ(stage0.optimizer, 8 * P);
      EXPECT_EQ(stage1.optimizer, 8 * P / ranks);
      EXPECT_EQ(stage1.parameters, stage0.parameters);
      // Stage 2: AdamW and the gradients over N, plus the windows: the embeddings' (wte + wpe) and
      // two of a layer (GPT-2's 12 C^2 + 13 C); each of the 4 units padded by < 16 N floats.
      const double C = 64, embeddings = (256 + 32) * C, layer = 12 * C * C + 13 * C;
      const double unit_slack = 4.0 * 4 * 16 * ranks + 4 * 256;
      EXPECT_NEAR(static_cast<double>(stage2.optimizer), 8.0 * P / ranks, 2 * unit_slack);
      EXPECT_NEAR(static_cast<double>(stage2.gradients), 4.0 * P / ranks + 4 * (embeddings + 2 * layer),
                  4 * unit_slack);
      EXPECT_NEAR(static_cast<double>(stage2.parameters), (4.0 + working) * P, unit_slack);
    }
  }
}

// On host memory (--device cpu) the plan counts what a checkpoint save adds on rank 0: the full
// AdamW m and v it gathers at stages 1 and 2 (8 bytes a parameter), at stage 2 the gathered shards
// too (4 bytes a parameter, padded units), on one rank too; nothing at stage 0 or at stage 1 on one
// rank (AdamW's own state is saved), and nothing on a GPU (host memory is not the device's).
TEST(MemoryPlanTest, CheckpointTermIsTheAdamWStateRankZeroGathers) {
  GptConfig c = MakeConfig(2, 2, 64, 32, 256);
  const size_t P = ParamCount(c);
  ASSERT_EQ(P % (64 * 4), 0u) << P;
  StatusOr<PlanDevice> host = PlanDeviceNamed("cpu");
  StatusOr<PlanDevice> h200 = PlanDeviceNamed("h200");
  ASSERT_TRUE(host.ok() && h200.ok());
  for (int ranks : {1, 2, 4}) {
    SCOPED_TRACE(ranks);
    EXPECT_EQ(PlanMemory({c, 2, 32, ranks, 0, false}, *host).checkpoint, 0u);
    EXPECT_EQ(PlanMemory({c, 2, 32, ranks, 1, false}, *host).checkpoint, ranks > 1 ? 8 * P : 0);
    // Stage 2 gathers on one rank too (its unit map is always used). Each of the 4 units
    // (embeddings, 2 layers, tail) padded by less than 16 x ranks floats.
    const MemoryPlan stage2 = PlanMemory({c, 2, 32, ranks, 2, false}, *host);
    EXPECT_GE(stage2.checkpoint, 12 * P);
    EXPECT_LT(stage2.checkpoint, 12 * P + 12 * 4 * 16 * static_cast<size_t>(ranks));
    // Stage 3: the full weights as well (4 bytes a parameter more): the model holds none.
    const MemoryPlan stage3 = PlanMemory({c, 2, 32, ranks, 3, false}, *host);
    EXPECT_GE(stage3.checkpoint, 16 * P);
    EXPECT_LT(stage3.checkpoint, 16 * P + 16 * 4 * 16 * static_cast<size_t>(ranks));
    EXPECT_EQ(stage2.total() - stage2.checkpoint, stage2.parameters + stage2.gradients + stage2.optimizer +
                                                      stage2.activations + stage2.communication +
                                                      stage2.workspace + stage2.process);
    for (int stage : {0, 1, 2, 3})
      EXPECT_EQ(PlanMemory({c, 2, 32, ranks, stage, false}, *h200).checkpoint, 0u);
  }
}

// Ranks that share one host's memory (the CPU, K of them) are measured together: K times the
// per-rank total, but rank 0's checkpoint row once; a host holding exactly that fits, a byte less
// does not, and that is less than K whole per-rank totals (what a per-rank check would demand).
TEST(MemoryPlanTest, RanksOnOneHostCountTheCheckpointOnce) {
  GptConfig c = MakeConfig(2, 2, 64, 32, 256);
  for (int stage : {1, 2}) {
    SCOPED_TRACE(stage);
    const int K = 3;
    PlanDevice host{"cpu (test)", 0, false, "test", K, 0, true};
    const MemoryPlan probe = PlanMemory({c, 2, 32, K, stage, false}, host);
    ASSERT_GT(probe.checkpoint, 0u);
    const size_t need = K * (probe.total() - probe.checkpoint) + probe.checkpoint;
    EXPECT_EQ(probe.host_need(), need);
    EXPECT_LT(need, K * probe.total());
    host.host_bytes = need;
    host.bytes = need / K;
    EXPECT_TRUE(PlanMemory({c, 2, 32, K, stage, false}, host).fits());
    host.host_bytes = need - 1;
    const MemoryPlan short_by_one = PlanMemory({c, 2, 32, K, stage, false}, host);
    EXPECT_FALSE(short_by_one.fits());
    EXPECT_NE(short_by_one.Verdict().message().find("together (the checkpoint row once)"), std::string::npos)
        << short_by_one.Verdict().message();
  }
}

TEST(MemoryPlanTest, RefusalNamesTheLargestTermAndWhatWouldFit) {
  // 48 blocks, 64 sequences: the activations dominate and only recompute (or a smaller
  // micro-batch) brings them under a device of 4 GiB.
  GptConfig c = MakeConfig(48, 4, 256, 256, 256);
  const PlanDevice small{"a 4 GiB test device", size_t{4} << 30, false};
  const MemoryPlan plan = PlanMemory({c, 64, 256, 1, 0, false}, small);
  ASSERT_FALSE(plan.fits()) << plan.Table();
  c.recompute = true;
  ASSERT_TRUE(PlanMemory({c, 64, 256, 1, 0, false}, small).fits());
  const Status s = plan.Verdict();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("the largest part is activations"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("train.recompute: BLOCK"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("train.micro_batch: "), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("nothing was allocated"), std::string::npos) << s.message();
  EXPECT_NE(plan.Table().find("does not fit"), std::string::npos);
  // Model states dominate (8 wide layers, one short sequence): on 2 ranks of a device between the
  // stage-2 and stage-1 totals, a higher stage is suggested, and it fits when planned.
  const GptConfig wide = MakeConfig(8, 4, 1024, 64, 256);
  const MemoryPlan at1 = PlanMemory({wide, 1, 64, 2, 1, false}, kCpu);
  const MemoryPlan at2 = PlanMemory({wide, 1, 64, 2, 2, false}, kCpu);
  ASSERT_LT(at2.total(), at1.total());
  const PlanDevice between{"a test device", (at1.total() + at2.total()) / 2, false};
  const MemoryPlan stage0 = PlanMemory({wide, 1, 64, 2, 0, false}, between);
  ASSERT_FALSE(stage0.fits()) << stage0.Table();
  ASSERT_TRUE(PlanMemory({wide, 1, 64, 2, 2, false}, between).fits());
  EXPECT_NE(stage0.Verdict().message().find("a higher parallel.zero_stage: 2"), std::string::npos)
      << stage0.Verdict().message();
  EXPECT_TRUE(PlanDeviceNamed("H200").ok());
  const StatusOr<PlanDevice> bad = PlanDeviceNamed("a100");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("h100"), std::string::npos);
}

// GPT-2 124M and Llama 3.1 8B (Hugging Face's config.json shapes) in bf16 on 1-64 ranks of an H200:
// the parameter counts against the published ones (124475904 with llm.c's vocabulary padded to
// 50304; 8030261248 for Llama 3.1 8B, whose widths need no padding), and the model states against
// bytes per parameter: 4 (fp32 master) + 2 (bf16 working copy), 4 (fp32 gradients; at ZeRO-2 4 / N
// plus three windows: the embeddings' and two of the largest layer or tail, from the layout's
// offsets), 8 / N (AdamW at ZeRO-1 to 3, 8 at stage 0); at stage 3 parameters 6 / N (fp32 master
// and bf16 working shards) plus three bf16 gather windows; all up to the 16 x N-float padding of each
// unit and 256-byte alignment. Prints the table docs/PERFORMANCE.md ("Memory plan") holds.
TEST(MemoryPlanTest, Gpt2And8BOnH200MatchBytesPerParameter) {
  GptConfig gpt2 = MakeConfig(12, 12, 768, 1024, 50257, Precision::kBf16);
  GptConfig llama = MakeConfig(32, 32, 4096, 8192, 128256, Precision::kBf16);
  llama.arch = GptConfig::Arch::kLlama;
  llama.n_kv_head = 8;
  llama.intermediate_size = 14336;
  llama.tie_embeddings = false;
  ASSERT_EQ(ParamCount(gpt2), 124475904u);
  ASSERT_EQ(ParamCount(llama), 8030261248u);
  const StatusOr<PlanDevice> h200 = PlanDeviceNamed("h200");
  ASSERT_TRUE(h200.ok());
  const auto gib = [](double b) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.2f", b / (1024.0 * 1024.0 * 1024.0));
    return std::string(buf);
  };
  std::printf(
      "| model | micro-batch x seq | recompute | ZeRO | ranks | params+working | grads | optimizer | "
      "bytes/param arithmetic | activations | comm+workspace | total GiB | verdict |\n");
  struct Model {
    const char* name;
    GptConfig c;
    int B, T;
  };
  for (const Model& m : {Model{"GPT-2 124M", gpt2, 64, 1024}, Model{"Llama 3.1 8B", llama, 1, 8192}}) {
    const double P = static_cast<double>(ParamCount(m.c));
    GptConfig two = m.c;  // the layout's unit sizes, from two layers (every layer is the same)
    two.n_layer = 2;
    const ParamLayout layout(two);
    const double embeddings = static_cast<double>(layout.layer(0).begin);
    const double layer = static_cast<double>(layout.layer(1).begin - layout.layer(0).begin);
    const double tail = static_cast<double>(layout.num_params() - layout.lnf_w());
    const double units = m.c.n_layer + 2;
    for (bool recompute : {false, true}) {
      for (int stage : {0, 1, 2, 3}) {
        for (int ranks : {1, 2, 4, 8, 16, 32, 64}) {
          GptConfig c = m.c;
          c.recompute = recompute;
          const MemoryPlan plan = PlanMemory({c, m.B, m.T, ranks, stage, true}, *h200);
          const double optimizer = (stage == 1 && ranks > 1) || stage >= 2 ? 8 * P / ranks : 8 * P;
          const double windows = embeddings + 2 * std::max(layer, tail);  // floats
          const double gradients = stage >= 2 ? 4 * P / ranks + 4 * windows : 4 * P;
          // Stage 3: the fp32 master shard, the bf16 working shard and three bf16 gather windows.
          const double parameters = stage == 3 ? 6 * P / ranks + 2 * windows : 6 * P;
          // The 16 x N-float padding of the buffers (of each unit at stages 2 and 3) and the
          // 256-byte alignment of each piece.
          const double slack = 16.0 * 64 * 4 * 2 * (stage >= 2 ? units : 1) + 4 * 256;
          EXPECT_NEAR(static_cast<double>(plan.parameters), parameters, slack);
          EXPECT_NEAR(static_cast<double>(plan.gradients), gradients, slack);
          EXPECT_NEAR(static_cast<double>(plan.optimizer), optimizer, slack);
          std::printf("| %s | %d x %d | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", m.name,
                      m.B, m.T, recompute ? "BLOCK" : "NONE", stage, ranks, gib(plan.parameters).c_str(),
                      gib(plan.gradients).c_str(), gib(plan.optimizer).c_str(),
                      gib(parameters + gradients + optimizer).c_str(), gib(plan.activations).c_str(),
                      gib(plan.communication + plan.workspace).c_str(), gib(plan.total()).c_str(),
                      plan.fits() ? "fits" : "does not fit");
        }
      }
    }
  }
}

}  // namespace
}  // namespace fjord
