#include "runtime/model/zero_units.h"

#include <algorithm>

#include "common/check.h"
#include "common/saturating.h"

namespace fjord {

using sat::Add;
using sat::Mul;
using sat::RoundUp;

size_t ZeroUnits::Unit::padded() const { return piece * ranks; }

ZeroUnits::ZeroUnits(const ParamLayout& layout, int ranks) : ranks_(std::max(ranks, 1)) {
  const size_t n = static_cast<size_t>(ranks_);
  // Unit boundaries: 0, the start of every layer, the final norm, the end. Layers follow each other
  // without a gap (a layer ends where the next one's first tensor starts).
  std::vector<size_t> bounds = {0};
  for (int l = 0; l < layout.num_layers(); ++l) bounds.push_back(layout.layer(l).begin);
  bounds.push_back(layout.lnf_w());
  bounds.push_back(layout.num_params());
  size_t offset = 0;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    Unit u;
    u.begin = bounds[i];
    u.end = bounds[i + 1];
    u.ranks = n;
    u.piece = RoundUp(u.end - u.begin, 16 * n) / n;
    u.shard_offset = offset;
    offset += u.piece;
    buffer_ = std::max(buffer_, u.begin + u.padded());
    if (i > 0) layer_window_ = std::max(layer_window_, u.padded());
    units_.push_back(u);
  }
  shard_ = offset;
}

size_t ZeroUnits::UnitStartingAt(size_t begin) const {
  const auto it = std::lower_bound(units_.begin(), units_.end(), begin,
                                   [](const Unit& u, size_t b) { return u.begin < b; });
  FJORD_CHECK(it != units_.end() && it->begin == begin,
              "no ZeRO unit starts at parameter offset " + std::to_string(begin));
  return static_cast<size_t>(it - units_.begin());
}

std::vector<ZeroUnits::Range> ZeroUnits::Owned(int rank) const {
  std::vector<Range> ranges;
  for (const Unit& u : units_) {
    const size_t begin = u.begin + u.piece * static_cast<size_t>(rank);
    const size_t end = std::min(begin + u.piece, u.end);
    if (begin < end) ranges.push_back({begin, end, u.shard_offset});
  }
  return ranges;
}

void ZeroUnits::Pack(const float* full, int rank, float* shard) const {
  std::fill(shard, shard + shard_, 0.0f);
  for (const Range& r : Owned(rank)) std::copy(full + r.begin, full + r.end, shard + r.local);
}

void ZeroUnits::Unpack(const float* shard, int rank, float* full) const {
  for (const Range& r : Owned(rank))
    std::copy(shard + r.local, shard + r.local + (r.end - r.begin), full + r.begin);
}

ZeroUnits::Sizes ZeroUnits::SizesFor(const GptConfig& config, int ranks) {
  const size_t n = static_cast<size_t>(std::max(ranks, 1));
  GptConfig small = config;
  small.n_layer = std::min(config.n_layer, 1);
  const ParamLayout layout(small);
  const size_t embeddings = config.n_layer > 0 ? layout.layer(0).begin : layout.lnf_w();
  const size_t layer = config.n_layer > 0 ? layout.lnf_w() - layout.layer(0).begin : 0;
  const size_t tail = layout.num_params() - layout.lnf_w();
  const size_t L = static_cast<size_t>(std::max(config.n_layer, 0));
  const size_t pe = RoundUp(embeddings, 16 * n), pl = RoundUp(layer, 16 * n), pt = RoundUp(tail, 16 * n);
  Sizes s;
  s.shard = Add(Add(pe, Mul(L, pl)), pt) / n;
  s.buffer = Add(Add(embeddings, Mul(L, layer)), pt);  // the tail's padded end is the furthest
  s.embeddings_window = pe;
  s.layer_window = std::max(L > 0 ? pl : 0, pt);
  return s;
}

}  // namespace fjord
