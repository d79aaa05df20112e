// The unit map of ZeRO stage 2 (docs/ARCHITECTURE.md "Data parallelism"), FSDP-style: the
// parameter buffer is cut into units, the embeddings (wte, wpe), each layer, and the tail (the
// final norm, plus lm_head when untied), in layout order. Each unit is padded to a multiple of
// 16 x N floats and split into N equal pieces; rank r owns piece r of every unit, and its shard is
// the concatenation of its pieces. A unit's reduce-scatter and all-gather are then balanced
// ordinary collectives over the unit's padded range, and the backward pass can hand a unit to the
// communicator as soon as it completes.
#pragma once

#include <cstddef>
#include <vector>

#include "runtime/model/gpt.h"

namespace fjord {

class ZeroUnits {
 public:
  struct Unit {
    size_t begin = 0, end = 0;  // [begin, end) of the parameter layout
    size_t piece = 0;           // floats per rank: (end - begin) rounded up to 16 x N, divided by N
    size_t shard_offset = 0;    // where this unit's piece starts in every rank's shard
    size_t padded() const;      // piece x N (set by the constructor through ranks)
    size_t ranks = 1;
  };
  // What rank r owns of the layout: [begin, end), clipped to its unit, stored at shard[local].
  struct Range {
    size_t begin = 0, end = 0, local = 0;
  };

  ZeroUnits(const ParamLayout& layout, int ranks);

  int ranks() const { return ranks_; }
  const std::vector<Unit>& units() const { return units_; }  // embeddings, layers 0..L-1, tail
  // The index of the unit that starts at layout offset `begin` (what Gpt::Backward reports).
  size_t UnitStartingAt(size_t begin) const;
  size_t shard_floats() const { return shard_; }  // the sum of the pieces
  // The parameter buffer length that holds every unit's padded range: an in-place all-gather of
  // a unit writes [begin, begin + padded), which for the last unit reaches past num_params.
  size_t buffer_floats() const { return buffer_; }
  size_t embeddings_window() const { return units_.front().padded(); }  // floats
  size_t layer_window() const { return layer_window_; }  // the largest padded unit but the first
  std::vector<Range> Owned(int rank) const;

  // Host copies between a layout-indexed buffer (num_params floats or more) and rank's shard
  // (shard_floats()); Pack writes zeros where a piece reaches past its unit.
  void Pack(const float* full, int rank, float* shard) const;
  void Unpack(const float* shard, int rank, float* full) const;

  // shard_floats, buffer_floats, embeddings_window and layer_window in closed form (a layout of at
  // most two layers: every layer has the same size), for the memory plan; saturating.
  struct Sizes {
    size_t shard = 0, buffer = 0, embeddings_window = 0, layer_window = 0;
  };
  static Sizes SizesFor(const GptConfig& config, int ranks);

 private:
  int ranks_;
  std::vector<Unit> units_;
  size_t shard_ = 0, buffer_ = 0, layer_window_ = 0;
};

}  // namespace fjord
