// Token shards and the loader. Shards are read whole into memory: a GPT-2 scale corpus for one
// node fits, and it keeps Fill a plain copy. Byte order is handled explicitly (shards are
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
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

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

std::vector<uint64_t> EpochPermutation(uint64_t seed, uint64_t epoch, uint64_t windows) {
  std::vector<uint64_t> order(windows);
  std::iota(order.begin(), order.end(), uint64_t{0});
  std::mt19937_64 rng(EpochHash(seed, epoch, kOrderSalt));
  for (uint64_t i = windows - 1; i > 0; --i) std::swap(order[i], order[UniformBelow(rng, i + 1)]);
  return order;
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

std::string ShardName(const std::string& prefix, size_t index) {
  char name[64];
  std::snprintf(name, sizeof(name), "%s_%06zu.bin", prefix.c_str(), index);
  return name;
}

}  // namespace

Status WriteShard(const std::string& path, const std::vector<int32_t>& tokens) {
  const std::string what = "cannot write shard " + path;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] > 65535) {
      return InvalidArgument(
          what + ": token " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
          " does not fit in uint16 (shards hold ids 0..65535); use a tokenizer with at most "
          "65536 ids");
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
  PutLe32(&buffer[4], static_cast<uint32_t>(kShardVersion));
  PutLe32(&buffer[8], static_cast<uint32_t>(tokens.size()));
  FJORD_RETURN_IF_ERROR(file->Write(buffer.data(), buffer.size()).WithContext(what));
  constexpr size_t kChunk = 1 << 16;
  buffer.resize(2 * kChunk);
  for (size_t begin = 0; begin < tokens.size(); begin += kChunk) {
    const size_t n = std::min(kChunk, tokens.size() - begin);
    for (size_t i = 0; i < n; ++i) {
      const uint16_t t = static_cast<uint16_t>(tokens[begin + i]);
      buffer[2 * i] = static_cast<uint8_t>(t);
      buffer[2 * i + 1] = static_cast<uint8_t>(t >> 8);
    }
    FJORD_RETURN_IF_ERROR(file->Write(buffer.data(), 2 * n).WithContext(what));
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

// Magic, version and count of a shard `size` bytes long; sets *count.
Status CheckShardHeader(const uint8_t* header, int64_t size, const std::string& what, int32_t* count_out) {
  const int32_t magic = GetLe32(header);
  const int32_t version = GetLe32(header + 4);
  const int32_t count = GetLe32(header + 8);
  if (magic != kShardMagic) {
    return DataLoss(what + ": magic number " + std::to_string(magic) + " is not " +
                    std::to_string(kShardMagic) + ": not an llm.c token shard; " + kPrepHint);
  }
  if (version != kShardVersion) {
    return DataLoss(what + ": version " + std::to_string(version) +
                    " is not supported (fjord reads version " + std::to_string(kShardVersion) +
                    ", uint16 tokens; llm.c's version 2 holds uint32 Llama-3 "
                    "tokens); re-create the shard with `fjord prep`");
  }
  if (count < 0) {
    return DataLoss(what + ": the header's token count is negative (" + std::to_string(count) +
                    "): corrupt; re-create the shard with `fjord prep`");
  }
  const int64_t expected = kHeaderBytes + 2 * static_cast<int64_t>(count);
  if (size != expected) {
    return DataLoss(what + ": header says " + std::to_string(count) + " tokens = " +
                    std::to_string(expected) + " bytes expected, file has " + std::to_string(size) +
                    " bytes: truncated or corrupt; "
                    "re-create the shard with `fjord prep`");
  }
  *count_out = count;
  return OkStatus();
}

// Converts little-endian tokens in place and checks them against the vocabulary.
Status CheckShardTokens(std::vector<uint16_t>& tokens, const std::string& what, int vocab_size) {
  if constexpr (std::endian::native == std::endian::big) {
    for (uint16_t& t : tokens) t = static_cast<uint16_t>((t >> 8) | (t << 8));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (static_cast<int>(tokens[i]) >= vocab_size) {
      return InvalidArgument(
          what + ": token " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
          " (byte offset " + std::to_string(kHeaderBytes + 2 * static_cast<int64_t>(i)) +
          ") is not below the vocabulary size: model.vocab_size is " + std::to_string(vocab_size) +
          "; the shard was made for a larger vocabulary (re-run "
          "fjord prep with the right tokenizer or raise model.vocab_size)");
    }
  }
  return OkStatus();
}

}  // namespace

StatusOr<std::vector<uint16_t>> ReadShard(const std::string& path, int vocab_size) {
  const std::string what = "shard " + path;
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
  const int64_t size = st.st_size;
  FJORD_RETURN_IF_ERROR(CheckShardSize(size, what));
  uint8_t header[kHeaderBytes];
  if (!ReadAll(file.get(), header, sizeof(header))) {
    return DataLoss(what +
                    ": cannot read the header: " + (errno ? ErrnoText() : "file shrank while reading"));
  }
  int32_t count = 0;
  FJORD_RETURN_IF_ERROR(CheckShardHeader(header, size, what, &count));
  std::vector<uint16_t> tokens(static_cast<size_t>(count));
  if (!ReadAll(file.get(), reinterpret_cast<uint8_t*>(tokens.data()), tokens.size() * 2)) {
    return DataLoss(what +
                    ": cannot read the tokens: " + (errno ? ErrnoText() : "file shrank while reading"));
  }
  FJORD_RETURN_IF_ERROR(CheckShardTokens(tokens, what, vocab_size));
  return tokens;
}

StatusOr<std::vector<uint16_t>> DecodeShard(std::string_view bytes, const std::string& path, int vocab_size) {
  const std::string what = "shard " + path;
  const int64_t size = static_cast<int64_t>(bytes.size());
  FJORD_RETURN_IF_ERROR(CheckShardSize(size, what));
  const uint8_t* data = reinterpret_cast<const uint8_t*>(bytes.data());
  int32_t count = 0;
  FJORD_RETURN_IF_ERROR(CheckShardHeader(data, size, what, &count));
  std::vector<uint16_t> tokens(static_cast<size_t>(count));
  std::memcpy(tokens.data(), data + kHeaderBytes, tokens.size() * 2);
  FJORD_RETURN_IF_ERROR(CheckShardTokens(tokens, what, vocab_size));
  return tokens;
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

// Per-epoch permutations, most recently used first; at most two are kept (a batch may straddle
// an epoch boundary, and train and eval calls alternate on different loaders, not on one).
class DataLoader::EpochOrders {
 public:
  std::shared_ptr<const std::vector<uint64_t>> Get(uint64_t seed, uint64_t epoch, uint64_t windows) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (entries_[i].first == epoch) {
        std::rotate(entries_.begin(), entries_.begin() + static_cast<std::ptrdiff_t>(i),
                    entries_.begin() + static_cast<std::ptrdiff_t>(i) + 1);
        return entries_.front().second;
      }
    }
    auto order = std::make_shared<const std::vector<uint64_t>>(EpochPermutation(seed, epoch, windows));
    entries_.insert(entries_.begin(), {epoch, order});
    if (entries_.size() > 2) entries_.pop_back();
    return order;
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<uint64_t, std::shared_ptr<const std::vector<uint64_t>>>> entries_;
};

StatusOr<DataLoader> DataLoader::Open(const std::string& pattern, const std::string& what, int vocab_size,
                                      int seq_len, uint64_t seed, bool shuffle, const DataPolicy* policy) {
  if (seq_len < 1) {
    return InvalidArgument(what + ": sequence length " + std::to_string(seq_len) +
                           " must be at least 1; set "
                           "train.seq_len (or model.seq_len) to 1 or more");
  }
  DataLoader loader;
  FJORD_ASSIGN_OR_RETURN(loader.files_, ExpandShardGlob(pattern, what));
  std::vector<size_t> counts;
  // The data gate, for every job: every manifest first, then each shard read once (from the real
  // path checked), verified, decoded.
  const DataPolicy untenanted;
  const DataPolicy& gate = policy != nullptr ? *policy : untenanted;
  FJORD_ASSIGN_OR_RETURN(const std::vector<ShardExpectation> expected,
                         CheckShardManifests(pattern, loader.files_, what, gate));
  for (const ShardExpectation& e : expected) {
    StatusOr<std::string> bytes = ReadWholeFile(e.real_path, "shard");
    if (!bytes.ok()) return bytes.status().WithContext(what);
    FJORD_RETURN_IF_ERROR(VerifyShardBytes(e, *bytes, what, gate));
    StatusOr<std::vector<uint16_t>> shard = DecodeShard(*bytes, e.path, vocab_size);
    if (!shard.ok()) return shard.status().WithContext(what);
    FJORD_RETURN_IF_ERROR(VerifyShardTokens(e, static_cast<int64_t>(shard->size()), what));
    counts.push_back(shard->size());
    loader.tokens_.insert(loader.tokens_.end(), shard->begin(), shard->end());
  }
  const uint64_t n = loader.tokens_.size();
  const uint64_t t = static_cast<uint64_t>(seq_len);
  if (n < t + 1) {
    return InvalidArgument(what + ": " + std::to_string(n) + " tokens in " +
                           std::to_string(loader.files_.size()) + " file(s) matching '" + pattern + "' (" +
                           DescribeFiles(loader.files_, counts, 5) +
                           ") are too few: one sequence needs seq_len + 1 = " + std::to_string(t + 1) +
                           " tokens; add data (run fjord prep on a longer text) or lower train.seq_len");
  }
  loader.seq_len_ = seq_len;
  loader.seed_ = seed;
  loader.shuffle_ = shuffle;
  if (shuffle) {
    loader.windows_ = std::max<uint64_t>(1, (n - t) / t);
    loader.offset_choices_ = std::min(t, n - loader.windows_ * t);
    loader.orders_ = std::make_shared<EpochOrders>();
  } else {
    loader.windows_ = (n - 1) / t;
    loader.offset_choices_ = 1;
  }
  return loader;
}

uint64_t DataLoader::sequences_per_epoch() const { return windows_; }

uint64_t DataLoader::SequenceStart(uint64_t i) const {
  const uint64_t epoch = i / windows_;
  const uint64_t k = i % windows_;
  if (!shuffle_) return k * static_cast<uint64_t>(seq_len_);
  const uint64_t offset = EpochHash(seed_, epoch, kOffsetSalt) % offset_choices_;
  const std::shared_ptr<const std::vector<uint64_t>> order = orders_->Get(seed_, epoch, windows_);
  return offset + (*order)[k] * static_cast<uint64_t>(seq_len_);
}

void DataLoader::Fill(uint64_t first, int B, int32_t* inputs, int32_t* targets) const {
  FJORD_CHECK(windows_ > 0, "DataLoader::Fill on a loader that did not come from DataLoader::Open");
  FJORD_CHECK(B >= 0, "batch size " + std::to_string(B) + " is negative");
  const size_t t = static_cast<size_t>(seq_len_);
  for (int b = 0; b < B; ++b) {
    const uint16_t* window = tokens_.data() + SequenceStart(first + static_cast<uint64_t>(b));
    int32_t* in = inputs + static_cast<size_t>(b) * t;
    int32_t* out = targets + static_cast<size_t>(b) * t;
    for (size_t j = 0; j < t; ++j) {
      in[j] = window[j];
      out[j] = window[j + 1];
    }
  }
}

namespace {

// The tenancy options of `fjord prep`, checked before anything is read or written. Returns the
// FJORD_NODE_IDENTITY file the node identity came from ("" when it is the node's own, or none).
StatusOr<std::string> CheckPrepTenancy(const PrepOptions& options) {
  const std::string what = "fjord prep";
  if (options.tenant.empty()) {
    if (!options.allowed_jurisdictions.empty() || !options.allowed_sites.empty()) {
      return InvalidArgument(what +
                             ": --jurisdiction / --site without --tenant: residency belongs to a tenant; add "
                             "--tenant ID (the tenant.id of the jobs that will read the data)");
    }
    std::error_code ec;
    const fs::path manifest = fs::path(options.out_dir) / kManifestName;
    if (fs::exists(manifest, ec)) {
      return FailedPrecondition(
          what + ": " + manifest.string() +
          " is left from an earlier prep for a tenant; shards written without --tenant would "
          "not match it. Pass --tenant ID --jurisdiction CC, or choose another output "
          "directory");
    }
    return std::string();
  }
  if (!IsValidTenantId(options.tenant)) {
    return InvalidArgument(
        what + ": --tenant \"" + options.tenant +
        "\" is not a tenant id: use 1 to 64 lower-case letters, digits, '.', '_' or '-', starting "
        "with a letter or digit (the tenant.id of the jobs that will read the data)");
  }
  if (options.allowed_jurisdictions.empty()) {
    return InvalidArgument(
        what + ": --tenant " + options.tenant +
        " needs --jurisdiction CC[,CC...]: the ISO 3166-1 alpha-2 codes of the countries where "
        "the data may be opened, e.g. --jurisdiction NO");
  }
  for (const std::string& j : options.allowed_jurisdictions) {
    if (std::string p = JurisdictionProblem(j); !p.empty()) {
      return InvalidArgument(what + ": --jurisdiction \"" + j + "\" " + p);
    }
  }
  for (const std::string& site : options.allowed_sites) {
    if (!IsValidSiteName(site)) {
      return InvalidArgument(what + ": --site \"" + site +
                             "\" is not a site name (1 to 64 letters, digits, '.', '_', '-')");
    }
  }
  // Prep reads the tenant's raw text: on a provisioned node, refuse to do that outside the residency.
  // Only a genuine absence of the node's own file (ReadNodeIdentity checked this process's view of it
  // first) means an unprovisioned node.
  bool overridden = false;
  NodeIdentityPath(&overridden);
  StatusOr<LocalNode> node = ReadNodeIdentity();
  if (!node.ok()) {
    if (node.status().code() == StatusCode::kNotFound && !overridden) return std::string();
    return node.status().WithContext(what + " --tenant " + options.tenant);
  }
  ResidencyPolicy policy{options.tenant, options.allowed_jurisdictions, options.allowed_sites};
  if (std::string why = policy.WhyNot(node->identity.jurisdiction(), node->identity.site()); !why.empty()) {
    return FailedPrecondition(what + ": this node (" + node->hostname + ", jurisdiction " +
                              node->identity.jurisdiction() + ", site " + node->identity.site() + ", from " +
                              node->path + ") is outside the residency given for tenant " + options.tenant +
                              " (" + policy.Describe() + "): " + why +
                              ". Tokenizing the tenant's text here would process its data outside its "
                              "jurisdictions; run fjord prep on a node inside them");
  }
  return node->overridden ? node->path : std::string();
  return OkStatus();
}

}  // namespace

StatusOr<PrepResult> PrepareShards(const PrepOptions& options, const Tokenizer& tokenizer) {
  const std::string what = "fjord prep";
  if (!(options.val_fraction >= 0 && options.val_fraction < 1)) {
    std::ostringstream value;
    value << options.val_fraction;
    return InvalidArgument(what + ": val_fraction " + value.str() +
                           " is outside [0, 1): it is the share of the "
                           "text kept for validation; use e.g. 0.1, or 0 for no validation shard");
  }
  if (options.shard_tokens < 1) {
    return InvalidArgument(what + ": shard_tokens " + std::to_string(options.shard_tokens) +
                           " must be at least 1; "
                           "use e.g. 100000000");
  }
  if (options.out_dir.empty()) {
    return InvalidArgument(what +
                           ": the output directory is empty; give a directory for the shards, e.g. data/");
  }
  if (tokenizer.vocab_size() > 65536) {
    return InvalidArgument(what + ": tokenizer \"" + tokenizer.name() + "\" has " +
                           std::to_string(tokenizer.vocab_size()) +
                           " ids but shards store uint16 (at most 65536); "
                           "use a smaller tokenizer");
  }
  FJORD_ASSIGN_OR_RETURN(const std::string identity_override, CheckPrepTenancy(options));

  std::error_code ec;
  const fs::file_status input_status = fs::status(options.input, ec);
  if (!fs::exists(input_status)) {
    return NotFound(what + ": input " + options.input + ": no such file; give the text file to tokenize");
  }
  if (!fs::is_regular_file(input_status)) {
    return InvalidArgument(what + ": input " + options.input + " is not a regular file; give a text file");
  }
  std::ifstream in(options.input, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in) return FailedPrecondition(what + ": cannot read " + options.input + "; check its permissions");
  if (text.str().empty()) {
    return InvalidArgument(what + ": input " + options.input +
                           " is empty: nothing to tokenize; give a non-empty "
                           "text file");
  }

  const std::vector<int32_t> tokens = tokenizer.Encode(text.str());
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t n_val = static_cast<int64_t>(std::llround(static_cast<double>(n) * options.val_fraction));
  const int64_t n_train = n - n_val;
  const std::string sizes = options.input + " has " + std::to_string(n) + " tokens and val_fraction " +
                            std::to_string(options.val_fraction) + " keeps " + std::to_string(n_val) +
                            " for validation, " + std::to_string(n_train) + " for training";
  if (n_train < 2) {
    return InvalidArgument(what + ": " + sizes +
                           "; the train part needs at least 2 tokens (an input and its "
                           "target): use a longer text or a smaller val_fraction");
  }
  if (options.val_fraction > 0 && n_val < 2) {
    return InvalidArgument(
        what + ": " + sizes +
        "; the validation part needs at least 2 tokens (an input and its "
        "target): use a longer text, a larger val_fraction, or val_fraction 0 for no validation "
        "shard");
  }
  const int64_t per = options.shard_tokens;
  const int64_t train_shards = (n_train + per - 1) / per;
  const int64_t val_shards = (n_val + per - 1) / per;
  if (std::max(train_shards, val_shards) > 1'000'000) {
    return InvalidArgument(what + ": " + std::to_string(std::max(train_shards, val_shards)) + " shards of " +
                           std::to_string(per) +
                           " tokens would overflow the 6-digit shard numbers; raise "
                           "shard_tokens");
  }

  fs::create_directories(options.out_dir, ec);
  if (ec || !fs::is_directory(options.out_dir)) {
    return FailedPrecondition(what + ": cannot create the output directory " + options.out_dir + ": " +
                              (ec ? ec.message() : "a file of that name exists") +
                              "; choose another directory or remove that file");
  }

  PrepResult result;
  std::set<std::string> names;
  for (int64_t i = 0; i < train_shards; ++i) {
    result.train_files.push_back((fs::path(options.out_dir) / ShardName("train", i)).string());
    names.insert(ShardName("train", i));
  }
  for (int64_t i = 0; i < val_shards; ++i) {
    result.val_files.push_back((fs::path(options.out_dir) / ShardName("val", i)).string());
    names.insert(ShardName("val", i));
  }
  // A shard left from an earlier, larger prep would be picked up by the glob together with the new
  // ones; refuse rather than mix datasets or delete files.
  for (fs::directory_iterator it(options.out_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (IsPrepShardName(name) && names.count(name) == 0) {
      return FailedPrecondition(
          what + ": " + it->path().string() +
          " is left from an earlier prep and the glob "
          "(train_*.bin / val_*.bin) would mix it with the new shards; delete it or choose an "
          "empty output directory");
    }
  }
  if (ec) {
    return FailedPrecondition(what + ": cannot list " + options.out_dir + ": " + ec.message());
  }

  auto write = [&](const std::vector<std::string>& files, int64_t begin, int64_t end) -> Status {
    for (size_t i = 0; i < files.size(); ++i) {
      const int64_t from = begin + static_cast<int64_t>(i) * per;
      const int64_t to = std::min(end, from + per);
      FJORD_RETURN_IF_ERROR(
          WriteShard(files[i], std::vector<int32_t>(tokens.begin() + from, tokens.begin() + to))
              .WithContext(what));
    }
    return OkStatus();
  };
  // A manifest left from an earlier tenant prep must never describe the new shards, even if this
  // prep fails half-way: remove it first; without one, a tenant job refuses the shards.
  if (!options.tenant.empty()) {
    fs::remove(fs::path(options.out_dir) / kManifestName, ec);
    if (ec) {
      return FailedPrecondition(what + ": cannot remove the old " +
                                (fs::path(options.out_dir) / kManifestName).string() + ": " + ec.message() +
                                "; remove it by hand or choose another output directory");
    }
  }
  FJORD_RETURN_IF_ERROR(write(result.train_files, 0, n_train));
  FJORD_RETURN_IF_ERROR(write(result.val_files, n_train, n));
  result.train_tokens = n_train;
  result.val_tokens = n_val;
  if (!options.tenant.empty()) {
    proto::DataManifest manifest;
    manifest.set_version(1);
    manifest.set_tenant(options.tenant);
    for (const std::string& j : options.allowed_jurisdictions) manifest.add_allowed_jurisdictions(j);
    for (const std::string& site : options.allowed_sites) manifest.add_allowed_sites(site);
    manifest.set_tokenizer(tokenizer.name());
    FJORD_ASSIGN_OR_RETURN(const std::string source_sha256, Sha256Hex(text.str()));
    manifest.set_source_sha256(source_sha256);
    manifest.set_created_at(UtcNow());
    manifest.set_created_on_host(ThisHostname());
    if (!identity_override.empty()) manifest.set_identity_override(identity_override);
    auto add = [&](const std::vector<std::string>& files, int64_t begin, int64_t end) -> Status {
      for (size_t i = 0; i < files.size(); ++i) {
        const int64_t from = begin + static_cast<int64_t>(i) * per;
        const int64_t to = std::min(end, from + per);
        FJORD_ASSIGN_OR_RETURN(std::string digest, Sha256File(files[i], "shard"));
        proto::ShardDigest* d = manifest.add_shard();
        d->set_name(fs::path(files[i]).filename().string());
        d->set_sha256(digest);
        d->set_tokens(to - from);
        d->set_bytes(kHeaderBytes + 2 * (to - from));
      }
      return OkStatus();
    };
    FJORD_RETURN_IF_ERROR(add(result.train_files, 0, n_train).WithContext(what));
    FJORD_RETURN_IF_ERROR(add(result.val_files, n_train, n).WithContext(what));
    FJORD_RETURN_IF_ERROR(WriteDataManifest(options.out_dir, manifest).WithContext(what));
    result.manifest_path = (fs::path(options.out_dir) / kManifestName).string();
  }
  return result;
}

}  // namespace fjord
