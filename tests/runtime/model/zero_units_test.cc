// The ZeRO-2 unit map (runtime/model/zero_units.h), the ranged AdamW and the model's gradient
// windows, each against the unsharded computation it replaces: every parameter owned by exactly one
// rank; pieces reassembled unit by unit reproduce the buffer with zero padding; the closed-form
// sizes equal the layout's; N ranged optimizers fed their shards of the gradients update exactly
// what one whole-buffer AdamW updates (bit for bit: the same arithmetic per element); and a model
// without a gradient buffer, whose backward writes into per-unit windows, yields the same
// gradients bit for bit as the model with one.
#include "runtime/model/zero_units.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "runtime/device/device.h"
#include "runtime/model/gpt.h"
#include "runtime/model/optimizer.h"
#include "tests/runtime/model/gpt_test_util.h"

namespace fjord {
namespace {

using testing::MakeConfig;
using testing::RandomTokens;

GptConfig Llama(int layers = 3) {
  GptConfig c = MakeConfig(layers, 4, 32, 16, 300);
  c.arch = GptConfig::Arch::kLlama;
  c.n_kv_head = 2;
  c.intermediate_size = 80;
  c.tie_embeddings = false;
  return c;
}

std::vector<GptConfig> Configs() {
  return {MakeConfig(3, 2, 24, 9, 37), Llama(), MakeConfig(1, 2, 16, 5, 30)};
}

TEST(ZeroUnitsTest, EveryParameterHasExactlyOneOwnerAndGathersReproduceTheBuffer) {
  for (const GptConfig& c : Configs()) {
    const ParamLayout layout(c);
    for (int n = 1; n <= 5; ++n) {
      SCOPED_TRACE(std::string(c.llama() ? "Llama" : "GPT-2") + " on " + std::to_string(n) + " ranks");
      const ZeroUnits units(layout, n);
      ASSERT_EQ(units.units().size(), static_cast<size_t>(layout.num_layers() + 2));
      std::vector<int> owners(layout.num_params(), 0);
      for (int r = 0; r < n; ++r) {
        for (const ZeroUnits::Range& range : units.Owned(r)) {
          ASSERT_LE(range.end, layout.num_params());
          for (size_t i = range.begin; i < range.end; ++i) ++owners[i];
        }
      }
      for (size_t i = 0; i < owners.size(); ++i) ASSERT_EQ(owners[i], 1) << "parameter " << i;
      // Pack every rank's shard of a random buffer, then reassemble each unit as an all-gather
      // would (pieces in rank order): the unit's values, then zeros.
      std::mt19937 rng(n);
      std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
      std::vector<float> full(layout.num_params());
      for (float& x : full) x = dist(rng);
      std::vector<std::vector<float>> shards(n, std::vector<float>(units.shard_floats()));
      for (int r = 0; r < n; ++r) units.Pack(full.data(), r, shards[r].data());
      for (const ZeroUnits::Unit& u : units.units()) {
        ASSERT_EQ(u.padded() % (16 * n), 0u);
        ASSERT_GE(u.padded(), u.end - u.begin);
        ASSERT_LE(u.begin + u.padded(), units.buffer_floats());
        std::vector<float> gathered;
        for (int r = 0; r < n; ++r)
          gathered.insert(gathered.end(), shards[r].begin() + u.shard_offset,
                          shards[r].begin() + u.shard_offset + u.piece);
        for (size_t i = 0; i < gathered.size(); ++i) {
          const float want = u.begin + i < u.end ? full[u.begin + i] : 0.0f;
          ASSERT_EQ(gathered[i], want) << "unit at " << u.begin << ", element " << i;
        }
      }
      std::vector<float> back(layout.num_params(), 0.0f);
      for (int r = 0; r < n; ++r) units.Unpack(shards[r].data(), r, back.data());
      EXPECT_EQ(back, full);
      // The closed form the memory plan uses.
      const ZeroUnits::Sizes s = ZeroUnits::SizesFor(c, n);
      EXPECT_EQ(s.shard, units.shard_floats());
      EXPECT_EQ(s.buffer, units.buffer_floats());
      EXPECT_EQ(s.embeddings_window, units.embeddings_window());
      EXPECT_EQ(s.layer_window, units.layer_window());
    }
  }
}

TEST(ZeroUnitsTest, RangedAdamWOnEveryShardEqualsOneWholeBufferAdamW) {
  for (const GptConfig& c : Configs()) {
    SCOPED_TRACE(c.llama() ? "Llama" : "GPT-2");
    const ParamLayout layout(c);
    const int n = 3;
    const ZeroUnits units(layout, n);
    std::mt19937 rng(11);
    std::normal_distribution<float> dist(0.0f, 0.1f);
    std::vector<float> params(units.buffer_floats(), 0.0f), grads(layout.num_params());
    for (size_t i = 0; i < layout.num_params(); ++i) params[i] = dist(rng);
    for (float& g : grads) g = dist(rng);
    std::vector<float> want = params;
    AdamW whole(layout, 0, layout.num_params(), CpuOps());
    StatusOr<std::unique_ptr<Arena>> arena =
        Arena::Create(CpuDevice(), n * AdamW::ArenaBytes(units.shard_floats()), "test");
    ASSERT_TRUE(arena.ok());
    std::vector<std::unique_ptr<AdamW>> ranked;
    for (int r = 0; r < n; ++r)
      ranked.push_back(std::make_unique<AdamW>(layout, units.Owned(r), units.shard_floats(), **arena));
    std::vector<float> shard(units.shard_floats());
    for (int t = 1; t <= 3; ++t) {
      whole.Step(want.data(), grads.data(), 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, t);
      for (int r = 0; r < n; ++r) {
        units.Pack(grads.data(), r, shard.data());
        ranked[r]->Step(params.data(), shard.data(), 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, t);
      }
    }
    for (size_t i = 0; i < layout.num_params(); ++i) ASSERT_EQ(params[i], want[i]) << "parameter " << i;
  }
}

TEST(ZeroUnitsTest, BackwardIntoUnitWindowsEqualsTheGradientBuffer) {
  const int B = 2, T = 4;
  for (GptConfig c : Configs()) {
    for (bool recompute : {false, true}) {
      c.recompute = recompute;
      SCOPED_TRACE(std::string(c.llama() ? "Llama" : "GPT-2") + (recompute ? " BLOCK" : " NONE"));
      Gpt plain(c, B, T, CpuOps(), 16);
      GptConfig windowed_config = c;
      windowed_config.grad_shard_ranks = 2;
      Gpt windowed(windowed_config, B, T, CpuOps(), 16);
      EXPECT_EQ(windowed.grads(), nullptr);
      plain.InitGpt2(3);
      windowed.InitGpt2(3);
      const std::vector<int32_t> tokens = RandomTokens(B * T, c.vocab_size, 5);
      plain.ZeroGrads();
      plain.Forward(tokens.data(), tokens.data(), B, T, 1.0f);
      plain.Backward();
      // One window per unit, set as UnitReducer does: the embeddings' for the whole pass, the tail's
      // first, then each unit below the one just reported.
      const ZeroUnits units(windowed.layout(), 2);
      std::vector<std::vector<float>> windows;
      for (const ZeroUnits::Unit& u : units.units()) windows.emplace_back(u.padded(), 0.0f);
      windowed.Forward(tokens.data(), tokens.data(), B, T, 1.0f);
      windowed.SetGradWindow(0, units.units()[0].begin, units.units()[0].end, windows[0].data());
      const size_t tail = units.units().size() - 1;
      windowed.SetGradWindow(1, units.units()[tail].begin, units.units()[tail].end, windows[tail].data());
      std::vector<size_t> reported;
      windowed.Backward([&](size_t begin, size_t) {
        const size_t u = units.UnitStartingAt(begin);
        reported.push_back(u);
        if (u > 1)
          windowed.SetGradWindow(1, units.units()[u - 1].begin, units.units()[u - 1].end,
                                 windows[u - 1].data());
      });
      ASSERT_EQ(reported.size(), units.units().size());
      for (size_t i = 0; i < reported.size(); ++i) EXPECT_EQ(reported[i], tail - i);
      for (size_t k = 0; k < units.units().size(); ++k) {
        const ZeroUnits::Unit& u = units.units()[k];
        for (size_t i = 0; i < u.padded(); ++i) {
          const float want = u.begin + i < u.end ? plain.grads()[u.begin + i] : 0.0f;
          ASSERT_EQ(windows[k][i], want) << "unit " << k << ", element " << i;
        }
      }
    }
  }
}

// ZeRO-3's model side: a model without a parameter buffer (param_shard_ranks) asks for each unit
// through its ParamsNeededFn and reads it from the window it is given. Fed each unit's working
// parameters of a plain model (what ParamGatherer's all-gather reassembles), into two alternating
// layer windows beside the embeddings' as ParamGatherer does, its loss and gradients equal the
// plain model's bit for bit (GPT-2 and Llama, fp32 and bf16, recompute NONE and BLOCK), and it asks
// in the documented order with the right next unit.
TEST(ZeroUnitsTest, ParameterWindowsFedPerUnitEqualThePlainModel) {
  const int B = 2, T = 4;
  for (GptConfig c : Configs()) {
    for (Precision p : {Precision::kFp32, Precision::kBf16}) {
      for (bool recompute : {false, true}) {
        c.recompute = recompute;
        c.precision = p;
        SCOPED_TRACE(std::string(c.llama() ? "Llama " : "GPT-2 ") + PrecisionName(p) +
                     (recompute ? " BLOCK" : " NONE"));
        Gpt plain(c, B, T, CpuOps(), 16);
        GptConfig sharded_config = c;
        sharded_config.grad_shard_ranks = sharded_config.param_shard_ranks = 2;
        Gpt sharded(sharded_config, B, T, CpuOps(), 16);
        EXPECT_EQ(sharded.params(), nullptr);
        EXPECT_EQ(sharded.working_params(), nullptr);
        plain.InitGpt2(3);
        const std::vector<int32_t> tokens = RandomTokens(B * T, c.vocab_size, 5);
        plain.ZeroGrads();
        const float plain_loss = plain.Forward(tokens.data(), tokens.data(), B, T, 1.0f);
        plain.Backward();

        const ZeroUnits units(sharded.layout(), 2);
        const size_t element = p == Precision::kBf16 ? sizeof(bf16) : sizeof(float);
        const char* working = static_cast<const char*>(plain.working_params());
        // The windows; each gather overwrites the whole window, padding with a poison value, so a
        // read of a stale or foreign unit shows.
        std::vector<char> embeddings(units.embeddings_window() * element), layers[2];
        for (auto& w : layers) w.resize(units.layer_window() * element);
        std::vector<std::pair<size_t, size_t>> asked;  // (unit, next unit or SIZE_MAX)
        size_t held[2] = {SIZE_MAX, SIZE_MAX};
        int last = 0;
        sharded.SetParamsNeeded([&](size_t begin, size_t next_begin) {
          const size_t u = units.UnitStartingAt(begin);
          asked.emplace_back(u,
                             next_begin == ParamLayout::kNone ? SIZE_MAX : units.UnitStartingAt(next_begin));
          const ZeroUnits::Unit& unit = units.units()[u];
          int slot = 0;
          std::vector<char>* window = &embeddings;
          if (u > 0) {
            slot = held[0] == u ? 0 : held[1] == u ? 1 : last ^ 1;
            window = &layers[slot];
            last = slot;
          }
          if (u == 0 || held[slot] != u) {
            std::fill(window->begin(), window->end(), static_cast<char>(0x7f));
            std::memcpy(window->data(), working + unit.begin * element, (unit.end - unit.begin) * element);
            if (u > 0) {
              held[slot] = u;
              sharded.SetParamWindow(1 + (slot ^ 1), 0, 0, nullptr);  // the other unit is done
            }
          }
          sharded.SetParamWindow(u == 0 ? 0 : 1 + slot, unit.begin, unit.end, window->data());
        });
        std::vector<std::vector<float>> grads;
        for (const ZeroUnits::Unit& u : units.units()) grads.emplace_back(u.padded(), 0.0f);
        const size_t tail = units.units().size() - 1;
        ASSERT_EQ(sharded.Forward(tokens.data(), tokens.data(), B, T, 1.0f), plain_loss);
        sharded.SetGradWindow(0, units.units()[0].begin, units.units()[0].end, grads[0].data());
        sharded.SetGradWindow(1, units.units()[tail].begin, units.units()[tail].end, grads[tail].data());
        sharded.Backward([&](size_t begin, size_t) {
          const size_t u = units.UnitStartingAt(begin);
          if (u > 1)
            sharded.SetGradWindow(1, units.units()[u - 1].begin, units.units()[u - 1].end,
                                  grads[u - 1].data());
        });
        for (size_t k = 0; k < units.units().size(); ++k) {
          const ZeroUnits::Unit& u = units.units()[k];
          for (size_t i = 0; i < u.end - u.begin; ++i)
            ASSERT_EQ(grads[k][i], plain.grads()[u.begin + i]) << "unit " << k << ", element " << i;
        }
        // Forward: embeddings, layers, tail, the classifier's unit; backward: the classifier's
        // unit, the tail, layers L-1..0; each naming the unit after it in its pass.
        const size_t classifier = c.tie_embeddings ? 0 : tail;
        std::vector<std::pair<size_t, size_t>> want;
        for (size_t u = 0; u <= tail; ++u) want.emplace_back(u, u < tail ? u + 1 : classifier);
        want.emplace_back(classifier, SIZE_MAX);
        want.emplace_back(classifier, tail);
        for (size_t u = tail; u >= 1; --u) want.emplace_back(u, u > 1 ? u - 1 : SIZE_MAX);
        EXPECT_EQ(asked, want);
      }
    }
  }
}

}  // namespace
}  // namespace fjord
