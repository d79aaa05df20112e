// Token shards and the streaming loader (data.h). A shard is read whole when a sequence needs it
// (or ahead of it) and dropped when the stream has moved on, so memory follows the shard size, not
// the data set's. Byte order is handled explicitly (shards are
// little-endian) so the format does not depend on the host.
#include "runtime/data/data.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "common/check.h"
#include "common/file_util.h"
#include "common/host.h"
#include "common/sha256.h"
#include "common/time_util.h"
#include "runtime/tenancy/tenancy.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kHeaderBytes = kShardHeaderInts * 4;
constexpr char kPrepHint[] = "create shards with `fjord prep`";

std::string ErrnoText() { return std::strerror(errno); }

// Reads exactly `size` bytes; false on error or early end of file (errno is 0 for the latter).
bool ReadAll(int fd, uint8_t* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::read(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = 0;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

int32_t GetLe32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return static_cast<int32_t>(v);
}

// SplitMix64's finalizer: a bijective mix with good avalanche, for seeds and offsets.
uint64_t Mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Different salts keep the offset hash and the permutation seed of one epoch independent.
constexpr uint64_t kOffsetSalt = 0x6F66667365742121ull;  // "offset!!"
constexpr uint64_t kOrderSalt = 0x6F72646572212121ull;   // "order!!!"

uint64_t EpochHash(uint64_t seed, uint64_t epoch, uint64_t salt) { return Mix64(seed ^ Mix64(epoch ^ salt)); }

// Uniform in [0, n) for n >= 1 by rejection, identical on every standard library (unlike
// std::uniform_int_distribution).
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % n;
}

// Up to `limit` files with their token counts, for messages: "a.bin (10 tokens), b.bin (3 tokens)".
std::string DescribeFiles(const std::vector<std::string>& files, const std::vector<size_t>& counts,
                          size_t limit) {
  std::string out;
  for (size_t i = 0; i < files.size() && i < limit; ++i) {
    if (i > 0) out += ", ";
    out += files[i] + " (" + std::to_string(counts[i]) + " tokens)";
  }
  if (files.size() > limit) out += ", and " + std::to_string(files.size() - limit) + " more";
  return out;
}

}  // namespace

int32_t ShardVersionFor(int64_t vocab_size) {
  return vocab_size <= 65536 ? kShardVersion : kShardVersionUint32;
}

namespace {

int TokenBytes(int32_t version) { return version == kShardVersionUint32 ? 4 : 2; }

uint32_t GetLeToken(const uint8_t* p, int width) {
  uint32_t v = 0;
  for (int i = 0; i < width; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace

Status WriteShard(const std::string& path, const std::vector<int32_t>& tokens, int32_t version) {
  const std::string what = "cannot write shard " + path;
  if (version != kShardVersion && version != kShardVersionUint32) {
    return InvalidArgument(what + ": version " + std::to_string(version) +
                           " is not a shard version (1: uint16 tokens, 2: uint32 tokens)");
  }
  const int width = TokenBytes(version);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || (width == 2 && tokens[i] > 65535)) {
      return InvalidArgument(what + ": token " + std::to_string(tokens[i]) + " at index " +
                             std::to_string(i) +
                             (width == 2 ? " does not fit in uint16 (version 1 shards hold ids 0..65535); "
                                           "write version 2 (uint32), as fjord prep does for a tokenizer "
                                           "with more than 65536 ids"
                                         : " is negative: not a token id"));
    }
  }
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return InvalidArgument(what + ": " + std::to_string(tokens.size()) +
                           " tokens do not fit the int32 count of the "
                           "header; write at most 2147483647 tokens per shard (PrepOptions.shard_tokens)");
  }

  StatusOr<AtomicFile> file = AtomicFile::Create(path);
  if (!file.ok()) return file.status().WithContext(what);

  std::vector<uint8_t> buffer(kHeaderBytes, 0);
  PutLe32(&buffer[0], static_cast<uint32_t>(kShardMagic));
  PutLe32(&buffer[4], static_cast<uint32_t>(version));
  PutLe32(&buffer[8], static_cast<uint32_t>(tokens.size()));
  FJORD_RETURN_IF_ERROR(file->Write(buffer.data(), buffer.size()).WithContext(what));
  constexpr size_t kChunk = 1 << 16;
  buffer.resize(static_cast<size_t>(width) * kChunk);
  for (size_t begin = 0; begin < tokens.size(); begin += kChunk) {
    const size_t n = std::min(kChunk, tokens.size() - begin);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t t = static_cast<uint32_t>(tokens[begin + i]);
      for (int b = 0; b < width; ++b) buffer[width * i + b] = static_cast<uint8_t>(t >> (8 * b));
    }
    FJORD_RETURN_IF_ERROR(file->Write(buffer.data(), static_cast<size_t>(width) * n).WithContext(what));
  }
  return file->Commit().WithContext(what);
}

namespace {

// The file-size check of a shard: at least a header.
Status CheckShardSize(int64_t size, const std::string& what) {
  if (size < kHeaderBytes) {
    return DataLoss(what + ": the file has " + std::to_string(size) + " bytes, shorter than the " +
                    std::to_string(kHeaderBytes) + "-byte header: not an llm.c token shard, or truncated; " +
                    kPrepHint);
  }
  return OkStatus();
}

struct ShardHeader {
  int32_t version = 0;
  int32_t count = 0;
  int width = 0;
};

// Magic, version and count of a shard `size` bytes long.
StatusOr<ShardHeader> CheckShardHeader(const uint8_t* header, int64_t size, const std::string& what) {
  const int32_t magic = GetLe32(header);
  const int32_t version = GetLe32(header + 4);
  const int32_t count = GetLe32(header + 8);
  if (magic != kShardMagic) {
    return DataLoss(what + ": magic number " + std::to_string(magic) + " is not " +
                    std::to_string(kShardMagic) + ": not an llm.c token shard; " + kPrepHint);
  }
  if (version != kShardVersion && version != kShardVersionUint32) {
    return DataLoss(what + ": version " + std::to_string(version) +
                    " is not supported (fjord reads version 1, uint16 tokens, and version 2, uint32 "
                    "tokens); re-create the shard with `fjord prep`");
  }
  if (count < 0) {
    return DataLoss(what + ": the header's token count is negative (" + std::to_string(count) +
                    "): corrupt; re-create the shard with `fjord prep`");
  }
  const int width = TokenBytes(version);
  const int64_t expected = kHeaderBytes + width * static_cast<int64_t>(count);
  if (size != expected) {
    return DataLoss(what + ": header says " + std::to_string(count) + " tokens of " + std::to_string(width) +
                    " bytes = " + std::to_string(expected) + " bytes expected, file has " +
                    std::to_string(size) +
                    " bytes: truncated or corrupt; "
                    "re-create the shard with `fjord prep`");
  }
  return ShardHeader{version, count, width};
}

// Checks the tokens of a shard whose header passed against the vocabulary.
Status CheckShardTokens(const uint8_t* data, const ShardHeader& h, const std::string& what, int vocab_size) {
  const uint8_t* tokens = data + kHeaderBytes;
  for (int64_t i = 0; i < h.count; ++i) {
    const uint32_t t = GetLeToken(tokens + h.width * i, h.width);
    if (t >= static_cast<uint32_t>(vocab_size)) {
      return InvalidArgument(what + ": token " + std::to_string(t) + " at index " + std::to_string(i) +
                             " (byte offset " + std::to_string(kHeaderBytes + h.width * i) +
                             ") is not below the vocabulary size: model.vocab_size is " +
                             std::to_string(vocab_size) +
                             "; the shard was made for a larger vocabulary (re-run "
                             "fjord prep with the right tokenizer or raise model.vocab_size)");
    }
  }
  return OkStatus();
}

std::vector<uint32_t> Tokens(const uint8_t* data, const ShardHeader& h) {
  std::vector<uint32_t> tokens(static_cast<size_t>(h.count));
  for (size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = GetLeToken(data + kHeaderBytes + h.width * i, h.width);
  return tokens;
}

// Opens a shard for reading: errors name it and what to check.
StatusOr<Fd> OpenShard(const std::string& path, const std::string& what, int64_t* size) {
  Fd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (file.get() < 0) {
    if (errno == ENOENT) return NotFound(what + ": no such file; check the path, or " + kPrepHint);
    return FailedPrecondition(what + ": cannot open it: " + ErrnoText() +
                              "; check the path and its permissions");
  }
  struct stat st;
  if (::fstat(file.get(), &st) != 0) return FailedPrecondition(what + ": cannot stat it: " + ErrnoText());
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgument(what +
                           " is not a regular file; point data.train / data.val at the .bin shard files");
  }
  *size = st.st_size;
  return file;
}

// The whole shard through one open file: size from fstat, then exactly that many bytes.
StatusOr<std::string> ReadShardBytes(const std::string& path, const std::string& what) {
  int64_t size = 0;
  FJORD_ASSIGN_OR_RETURN(Fd file, OpenShard(path, what, &size));
  FJORD_RETURN_IF_ERROR(CheckShardSize(size, what));
  std::string bytes(static_cast<size_t>(size), '\0');
  if (!ReadAll(file.get(), reinterpret_cast<uint8_t*>(bytes.data()), bytes.size())) {
    return DataLoss(what + ": cannot read it: " + (errno ? ErrnoText() : "the file shrank while reading") +
                    "; restore the shard or re-create the data with `fjord prep`");
  }
  return bytes;
}

// The header of the shard at `path` and the file's size, reading only the header.
StatusOr<ShardHeader> ReadShardHeader(const std::string& path, const std::string& what) {
  int64_t size = 0;
  FJORD_ASSIGN_OR_RETURN(Fd file, OpenShard(path, what, &size));
  FJORD_RETURN_IF_ERROR(CheckShardSize(size, what));
  uint8_t header[kHeaderBytes];
  if (!ReadAll(file.get(), header, sizeof(header))) {
    return DataLoss(what +
                    ": cannot read the header: " + (errno ? ErrnoText() : "file shrank while reading"));
  }
  return CheckShardHeader(header, size, what);
}

}  // namespace

StatusOr<std::vector<uint32_t>> ReadShard(const std::string& path, int vocab_size) {
  FJORD_ASSIGN_OR_RETURN(const std::string bytes, ReadShardBytes(path, "shard " + path));
  return DecodeShard(bytes, path, vocab_size);
}

StatusOr<std::vector<uint32_t>> DecodeShard(std::string_view bytes, const std::string& path, int vocab_size) {
  const std::string what = "shard " + path;
  const int64_t size = static_cast<int64_t>(bytes.size());
  FJORD_RETURN_IF_ERROR(CheckShardSize(size, what));
  const uint8_t* data = reinterpret_cast<const uint8_t*>(bytes.data());
  FJORD_ASSIGN_OR_RETURN(const ShardHeader h, CheckShardHeader(data, size, what));
  FJORD_RETURN_IF_ERROR(CheckShardTokens(data, h, what, vocab_size));
  return Tokens(data, h);
}

StatusOr<std::vector<std::string>> ExpandShardGlob(const std::string& pattern, const std::string& what) {
  if (pattern.empty()) {
    return InvalidArgument(what +
                           " is empty: give a path or a glob of token shards, e.g. \"data/train_*.bin\" "
                           "(fjord prep writes them)");
  }
  glob_t matches{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &matches);
  std::vector<std::string> paths;
  if (rc == 0) {
    for (size_t i = 0; i < matches.gl_pathc; ++i) paths.emplace_back(matches.gl_pathv[i]);
  }
  ::globfree(&matches);
  if (rc == GLOB_NOMATCH) {
    std::error_code ec;
    return NotFound(what + ": no file matches '" + pattern + "' (relative paths are from " +
                    fs::current_path(ec).string() + "); check the path, or " + kPrepHint);
  }
  if (rc != 0) {
    return FailedPrecondition(what + ": cannot expand '" + pattern + "' (glob error " + std::to_string(rc) +
                              "); check that its directories are readable");
  }
  std::vector<std::string> files;
  for (const std::string& p : paths) {
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) files.push_back(p);
  }
  if (files.empty()) {
    return InvalidArgument(what + ": '" + pattern +
                           "' matches only directories or other non-regular files (" + paths.front() +
                           "); point it at the .bin shard files, e.g. \"" + paths.front() + "/train_*.bin\"");
  }
  std::sort(files.begin(), files.end());
  return files;
}

namespace {

// A Fisher-Yates permutation of [0, n) from std::mt19937_64 seeded with `seed`.
std::vector<uint32_t> Permutation(uint64_t seed, uint64_t n) {
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), uint32_t{0});
  std::mt19937_64 rng(seed);
  for (uint64_t i = n; i > 1; --i) std::swap(order[i - 1], order[UniformBelow(rng, i)]);
  return order;
}

// Different salts keep the draws of one epoch independent.
constexpr uint64_t kShardOrderSalt = 0x7368617264732121ull;  // "shards!!"

uint64_t ShardHash(uint64_t seed, uint64_t epoch, uint64_t shard, uint64_t salt) {
  return Mix64(EpochHash(seed, epoch, salt) ^ Mix64(shard));
}

// A small most-recently-used cache: at most `capacity` entries.
template <typename Key, typename Value>
class RecentCache {
 public:
  explicit RecentCache(size_t capacity) : capacity_(capacity) {}
  template <typename Make>
  std::shared_ptr<const Value> Get(const Key& key, Make make) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (entries_[i].first == key) {
        std::rotate(entries_.begin(), entries_.begin() + static_cast<std::ptrdiff_t>(i),
                    entries_.begin() + static_cast<std::ptrdiff_t>(i) + 1);
        return entries_.front().second;
      }
    }
    auto value = std::make_shared<const Value>(make());
    entries_.insert(entries_.begin(), {key, value});
    if (entries_.size() > capacity_) entries_.pop_back();
    return value;
  }

 private:
  const size_t capacity_;
  std::mutex mu_;
  std::vector<std::pair<Key, std::shared_ptr<const Value>>> entries_;
};

}  // namespace

class DataLoader::Impl {
 public:
  struct Shard {
    ShardExpectation expect;
    ShardHeader header;           // as Open read it
    uint64_t windows = 0;         // w_s
    uint64_t offset_choices = 1;  // o_{e,s} is drawn from [0, offset_choices)
  };
  // Where sequence i lies: epoch, position in the epoch's shard order, shard, first token.
  struct Location {
    uint64_t epoch = 0;
    size_t position = 0;
    uint32_t shard = 0;
    uint64_t start = 0;
  };
  // A shard read whole and verified; tokens are decoded from these same bytes.
  struct Loaded {
    std::string bytes;
    int width = 2;
  };

  Impl() : epochs_(2), windows_cache_(4) {}
  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (prefetcher_.joinable()) prefetcher_.join();
  }

  // Fills the per-shard window counts and W; false when no shard holds a window.
  bool Layout() {
    windows_ = 0;
    for (uint32_t s = 0; s < shards_.size(); ++s) {
      Shard& shard = shards_[s];
      const uint64_t n = static_cast<uint64_t>(shard.header.count);
      const uint64_t t = static_cast<uint64_t>(seq_len_);
      shard.windows = n >= t + 1 ? (n - 1) / t : 0;
      shard.offset_choices = shuffle_ && shard.windows > 0 ? n - shard.windows * t : 1;
      if (shard.windows > 0) eligible_.push_back(s);
      windows_ += shard.windows;
    }
    return windows_ > 0;
  }

  Location Locate(uint64_t i) const {
    Location loc;
    loc.epoch = i / windows_;
    const uint64_t k = i % windows_;
    const std::shared_ptr<const EpochOrder> order = Order(loc.epoch);
    loc.position = static_cast<size_t>(std::upper_bound(order->first.begin(), order->first.end(), k) -
                                       order->first.begin() - 1);
    loc.shard = order->shards[loc.position];
    const Shard& shard = shards_[loc.shard];
    const uint64_t local = k - order->first[loc.position];
    const uint64_t t = static_cast<uint64_t>(seq_len_);
    if (!shuffle_) {
      loc.start = local * t;
      return loc;
    }
    const uint64_t offset = ShardHash(seed_, loc.epoch, loc.shard, kOffsetSalt) % shard.offset_choices;
    const std::shared_ptr<const std::vector<uint32_t>> windows = windows_cache_.Get(
        {loc.epoch, loc.shard},
        [&] { return Permutation(ShardHash(seed_, loc.epoch, loc.shard, kOrderSalt), shard.windows); });
    loc.start = offset + static_cast<uint64_t>((*windows)[local]) * t;
    return loc;
  }

  // The shard after the one at `loc` in the stream.
  uint32_t NextShard(const Location& loc) const {
    const std::shared_ptr<const EpochOrder> order = Order(loc.epoch);
    if (loc.position + 1 < order->shards.size()) return order->shards[loc.position + 1];
    return Order(loc.epoch + 1)->shards.front();
  }

  Status Fill(uint64_t first, int B, int32_t* inputs, int32_t* targets) {
    const size_t t = static_cast<size_t>(seq_len_);
    std::vector<std::pair<uint32_t, std::shared_ptr<const Loaded>>> held;
    Location loc;
    for (int b = 0; b < B; ++b) {
      loc = Locate(first + static_cast<uint64_t>(b));
      const Loaded* data = nullptr;
      for (const auto& [s, l] : held) {
        if (s == loc.shard) data = l.get();
      }
      if (data == nullptr) {
        StatusOr<std::shared_ptr<const Loaded>> l = Acquire(loc.shard);
        if (!l.ok()) return l.status();
        held.emplace_back(loc.shard, *l);
        data = held.back().second.get();
      }
      const uint8_t* window =
          reinterpret_cast<const uint8_t*>(data->bytes.data()) + kHeaderBytes + data->width * loc.start;
      int32_t* in = inputs + static_cast<size_t>(b) * t;
      int32_t* out = targets + static_cast<size_t>(b) * t;
      uint32_t previous = GetLeToken(window, data->width);
      for (size_t j = 0; j < t; ++j) {
        const uint32_t next = GetLeToken(window + data->width * (j + 1), data->width);
        in[j] = static_cast<int32_t>(previous);
        out[j] = static_cast<int32_t>(next);
        previous = next;
      }
    }
    if (B == 0) return OkStatus();
    const uint32_t ahead = NextShard(loc);
    std::lock_guard<std::mutex> lock(mu_);
    // Keep what this call used and the shard ahead; drop the rest.
    for (auto it = resident_.begin(); it != resident_.end();) {
      const bool used =
          std::any_of(held.begin(), held.end(), [&](const auto& h) { return h.first == it->first; });
      if (!used && it->first != ahead && !it->second.loading) {
        it = resident_.erase(it);
      } else {
        ++it;
      }
    }
    if (resident_.count(ahead) == 0) {
      want_ = ahead;
      if (!prefetcher_.joinable()) prefetcher_ = std::thread([this] { PrefetchLoop(); });
      cv_.notify_all();
    }
    return OkStatus();
  }

  DataLoader::Stats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  std::string what_;
  int vocab_size_ = 0;
  int seq_len_ = 0;
  uint64_t seed_ = 0;
  bool shuffle_ = true;
  DataPolicy policy_;
  std::vector<std::string> files_;
  std::vector<Shard> shards_;
  std::vector<uint32_t> eligible_;  // shards with at least one window, in glob order
  uint64_t windows_ = 0;            // W
  uint64_t tokens_ = 0;

 private:
  struct EpochOrder {
    std::vector<uint32_t> shards;  // P_e
    std::vector<uint64_t> first;   // first[j]: windows of the shards before position j
  };
  struct Slot {
    std::shared_ptr<const Loaded> data;
    Status error;
    bool loading = false;
  };

  std::shared_ptr<const EpochOrder> Order(uint64_t epoch) const {
    return epochs_.Get(shuffle_ ? epoch : 0, [&] {
      EpochOrder order;
      if (shuffle_) {
        for (uint32_t p : Permutation(EpochHash(seed_, epoch, kShardOrderSalt), eligible_.size())) {
          order.shards.push_back(eligible_[p]);
        }
      } else {
        order.shards = eligible_;
      }
      order.first.push_back(0);
      for (uint32_t s : order.shards) order.first.push_back(order.first.back() + shards_[s].windows);
      return order;
    });
  }

  // Reads shard s whole, verifies it (digest, header as at Open, vocabulary) and keeps those bytes.
  StatusOr<std::shared_ptr<const Loaded>> Load(uint32_t s) const {
    const Shard& shard = shards_[s];
    const std::string& path = shard.expect.path;
    StatusOr<std::string> bytes = ReadShardBytes(shard.expect.real_path, "shard " + path);
    if (!bytes.ok()) return bytes.status().WithContext(what_);
    FJORD_RETURN_IF_ERROR(VerifyShardBytes(shard.expect, *bytes, what_, policy_));
    const uint8_t* data = reinterpret_cast<const uint8_t*>(bytes->data());
    StatusOr<ShardHeader> h = CheckShardHeader(data, static_cast<int64_t>(bytes->size()), "shard " + path);
    if (!h.ok()) return h.status().WithContext(what_);
    if (h->version != shard.header.version || h->count != shard.header.count) {
      return DataLoss(what_ + ": shard " + path + " changed after the job opened it (version " +
                      std::to_string(shard.header.version) + ", " + std::to_string(shard.header.count) +
                      " tokens then; version " + std::to_string(h->version) + ", " +
                      std::to_string(h->count) +
                      " tokens now): refusing it. Restore the shard, or restart the job on the new data");
    }
    FJORD_RETURN_IF_ERROR(CheckShardTokens(data, *h, "shard " + path, vocab_size_).WithContext(what_));
    auto loaded = std::make_shared<Loaded>();
    loaded->bytes = std::move(*bytes);
    loaded->width = h->width;
    return std::shared_ptr<const Loaded>(std::move(loaded));
  }

  // Stores a finished read (under mu_) and updates the peaks.
  void Store(uint32_t s, StatusOr<std::shared_ptr<const Loaded>> loaded) {
    Slot& slot = resident_[s];
    slot.loading = false;
    ++stats_.shard_reads;
    if (loaded.ok()) {
      slot.data = std::move(*loaded);
    } else {
      slot.error = loaded.status();
    }
    uint64_t bytes = 0, shards = 0;
    for (const auto& [id, r] : resident_) {
      if (r.data) {
        bytes += r.data->bytes.size();
        ++shards;
      }
    }
    stats_.max_resident_bytes = std::max(stats_.max_resident_bytes, bytes);
    stats_.max_resident_shards = std::max(stats_.max_resident_shards, shards);
    cv_.notify_all();
  }

  // Shard s, read here or by the prefetch thread (waited for). Another Fill may drop the entry
  // while this one waits, so each round looks it up again.
  StatusOr<std::shared_ptr<const Loaded>> Acquire(uint32_t s) {
    std::unique_lock<std::mutex> lock(mu_);
    bool waited = false;
    while (true) {
      auto it = resident_.find(s);
      if (it == resident_.end()) {
        waited = true;
        resident_[s].loading = true;
        lock.unlock();
        StatusOr<std::shared_ptr<const Loaded>> loaded = Load(s);
        lock.lock();
        Store(s, std::move(loaded));
        continue;
      }
      if (it->second.loading) {
        waited = true;
        cv_.wait(lock);
        continue;
      }
      if (waited) ++stats_.waited_reads;
      if (!it->second.error.ok()) {
        Status error = it->second.error;
        resident_.erase(it);  // a later Fill reads it again
        return error;
      }
      return it->second.data;
    }
  }

  void PrefetchLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return stop_ || want_.has_value(); });
      if (stop_) return;
      const uint32_t s = *want_;
      want_.reset();
      if (resident_.count(s) > 0) continue;
      resident_[s].loading = true;
      lock.unlock();
      StatusOr<std::shared_ptr<const Loaded>> loaded = Load(s);
      lock.lock();
      Store(s, std::move(loaded));
    }
  }

  mutable RecentCache<uint64_t, EpochOrder> epochs_;
  mutable RecentCache<std::pair<uint64_t, uint32_t>, std::vector<uint32_t>> windows_cache_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint32_t, Slot> resident_;
  std::optional<uint32_t> want_;
  bool stop_ = false;
  DataLoader::Stats stats_;
  std::thread prefetcher_;
};

StatusOr<DataLoader> DataLoader::Open(const std::string& pattern, const std::string& what, int vocab_size,
                                      int seq_len, uint64_t seed, bool shuffle, const DataPolicy* policy) {
  if (seq_len < 1) {
    return InvalidArgument(what + ": sequence length " + std::to_string(seq_len) +
                           " must be at least 1; set "
                           "train.seq_len (or model.seq_len) to 1 or more");
  }
  auto impl = std::make_shared<Impl>();
  impl->what_ = what;
  impl->vocab_size_ = vocab_size;
  impl->seq_len_ = seq_len;
  impl->seed_ = seed;
  impl->shuffle_ = shuffle;
  impl->policy_ = policy != nullptr ? *policy : DataPolicy();
  FJORD_ASSIGN_OR_RETURN(impl->files_, ExpandShardGlob(pattern, what));
  // The data gate's step 1, for every job: every manifest, without reading a shard; then each
  // shard's header against its size and the manifest's token count.
  FJORD_ASSIGN_OR_RETURN(std::vector<ShardExpectation> expected,
                         CheckShardManifests(pattern, impl->files_, what, impl->policy_));
  std::vector<size_t> counts;
  for (ShardExpectation& e : expected) {
    StatusOr<ShardHeader> h = ReadShardHeader(e.real_path, "shard " + e.path);
    if (!h.ok()) return h.status().WithContext(what);
    FJORD_RETURN_IF_ERROR(VerifyShardTokens(e, h->count, what));
    counts.push_back(static_cast<size_t>(h->count));
    impl->tokens_ += static_cast<uint64_t>(h->count);
    impl->shards_.push_back({std::move(e), *h});
  }
  if (impl->shards_.size() > std::numeric_limits<uint32_t>::max() || !impl->Layout()) {
    const uint64_t t = static_cast<uint64_t>(seq_len);
    return InvalidArgument(what + ": " + std::to_string(impl->tokens_) + " tokens in " +
                           std::to_string(impl->files_.size()) + " file(s) matching '" + pattern + "' (" +
                           DescribeFiles(impl->files_, counts, 5) +
                           ") are too few: one sequence needs seq_len + 1 = " + std::to_string(t + 1) +
                           " tokens within one shard; add data (run fjord prep on a longer text, or with "
                           "a larger --shard-tokens) or lower train.seq_len");
  }
  DataLoader loader;
  loader.impl_ = std::move(impl);
  return loader;
}

uint64_t DataLoader::sequences_per_epoch() const { return impl_->windows_; }
uint64_t DataLoader::num_tokens() const { return impl_->tokens_; }
const std::vector<std::string>& DataLoader::files() const { return impl_->files_; }
int DataLoader::seq_len() const { return impl_->seq_len_; }
DataLoader::Stats DataLoader::stats() const { return impl_->stats(); }

Status DataLoader::Fill(uint64_t first, int B, int32_t* inputs, int32_t* targets) const {
  FJORD_CHECK(impl_ != nullptr, "DataLoader::Fill on a loader that did not come from DataLoader::Open");
  FJORD_CHECK(B >= 0, "batch size " + std::to_string(B) + " is negative");
  return impl_->Fill(first, B, inputs, targets);
}

}  // namespace fjord
