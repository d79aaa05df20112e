// fjord prep (prep.h): inputs -> documents -> tokens on threads -> shards, in bounded memory.
#include "runtime/data/prep.h"

#include <glob.h>
#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <sstream>
#include <thread>

#ifdef FJORD_HAVE_ZSTD  // set by runtime/data/CMakeLists.txt when libzstd-dev is installed
#include <zstd.h>
#endif

#include "common/file_util.h"
#include "common/host.h"
#include "common/json.h"
#include "common/sha256.h"
#include "common/time_util.h"
#include "runtime/data/data.h"
#include "runtime/tenancy/manifest.h"
#include "runtime/tenancy/tenancy.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

constexpr size_t kHeaderBytes = kShardHeaderInts * 4;
constexpr size_t kReadChunk = 1 << 20;

void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

std::string ShardName(const std::string& prefix, size_t index) {
  char name[64];
  std::snprintf(name, sizeof(name), "%s_%06zu.bin", prefix.c_str(), index);
  return name;
}

// The decompressed bytes of one input: plain, gzip (zlib) or zstd (libzstd), told apart by magic.
class InputStream {
 public:
  static StatusOr<std::unique_ptr<InputStream>> Open(const std::string& path) {
    auto in = std::unique_ptr<InputStream>(new InputStream(path));
    in->file_ = std::fopen(path.c_str(), "rb");
    if (in->file_ == nullptr) {
      return FailedPrecondition("fjord prep: cannot open input " + path + ": " + std::strerror(errno) +
                                "; check its permissions");
    }
    unsigned char magic[4] = {};
    const size_t n = std::fread(magic, 1, 4, in->file_);
    std::rewind(in->file_);
    if (n >= 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
      in->kind_ = Kind::kGzip;
      std::fclose(in->file_);
      in->file_ = nullptr;
      in->gz_ = gzopen(path.c_str(), "rb");
      if (in->gz_ == nullptr) return FailedPrecondition("fjord prep: cannot open gzip input " + path);
      gzbuffer(in->gz_, 1 << 18);
    } else if (n == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd) {
#ifdef FJORD_HAVE_ZSTD
      in->kind_ = Kind::kZstd;
      in->zstd_ = ZSTD_createDStream();
      in->zin_.resize(ZSTD_DStreamInSize());
#else
      return FailedPrecondition("fjord prep: input " + path +
                                " is zstd-compressed, and this fjord was built without libzstd; install "
                                "libzstd-dev (scripts/install-deps.sh) and rebuild, or decompress it first "
                                "(zstd -d)");
#endif
    }
    return in;
  }
  ~InputStream() {
    if (file_ != nullptr) std::fclose(file_);
    if (gz_ != nullptr) gzclose(gz_);
#ifdef FJORD_HAVE_ZSTD
    if (zstd_ != nullptr) ZSTD_freeDStream(zstd_);
#endif
  }
  InputStream(const InputStream&) = delete;
  InputStream& operator=(const InputStream&) = delete;

  // Appends up to about kReadChunk bytes to `out`; false at the end of the input.
  StatusOr<bool> Read(std::string* out) {
    const size_t old = out->size();
    out->resize(old + kReadChunk);
    char* dst = out->data() + old;
    size_t got = 0;
    switch (kind_) {
      case Kind::kPlain: {
        got = std::fread(dst, 1, kReadChunk, file_);
        if (got == 0 && std::ferror(file_)) {
          out->resize(old);
          return FailedPrecondition("fjord prep: cannot read input " + path_ + ": " + std::strerror(errno));
        }
        break;
      }
      case Kind::kGzip: {
        const int n = gzread(gz_, dst, static_cast<unsigned>(kReadChunk));
        int err = Z_OK;
        const char* text = gzerror(gz_, &err);
        if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) {
          out->resize(old);
          return DataLoss("fjord prep: gzip input " + path_ + " is damaged or ends early (zlib: " + text +
                          "); re-create or re-download it");
        }
        got = static_cast<size_t>(n);
        break;
      }
      case Kind::kZstd: {
#ifdef FJORD_HAVE_ZSTD
        ZSTD_outBuffer zout{dst, kReadChunk, 0};
        while (zout.pos == 0) {
          if (zpos_ == zlen_) {
            zlen_ = std::fread(zin_.data(), 1, zin_.size(), file_);
            zpos_ = 0;
            if (zlen_ == 0) {
              if (!frame_done_) {
                out->resize(old);
                return DataLoss("fjord prep: zstd input " + path_ +
                                " ends in the middle of a frame: truncated; re-create or re-download it");
              }
              break;
            }
          }
          ZSTD_inBuffer zin{zin_.data(), zlen_, zpos_};
          const size_t r = ZSTD_decompressStream(zstd_, &zout, &zin);
          zpos_ = zin.pos;
          if (ZSTD_isError(r)) {
            out->resize(old);
            return DataLoss("fjord prep: zstd input " + path_ + " is damaged (zstd: " + ZSTD_getErrorName(r) +
                            "); re-create or re-download it");
          }
          frame_done_ = r == 0;
        }
        got = zout.pos;
#endif
        break;
      }
    }
    out->resize(old + got);
    return got > 0;
  }

 private:
  enum class Kind { kPlain, kGzip, kZstd };
  explicit InputStream(std::string path) : path_(std::move(path)) {}
  std::string path_;
  Kind kind_ = Kind::kPlain;
  FILE* file_ = nullptr;
  gzFile gz_ = nullptr;
#ifdef FJORD_HAVE_ZSTD
  ZSTD_DStream* zstd_ = nullptr;
  std::vector<char> zin_;
  size_t zpos_ = 0, zlen_ = 0;
  bool frame_done_ = true;
#endif
};

// Documents of the inputs, in order: Next fills `doc` (a text piece with its delimiter, or a JSON
// line's field).
class DocumentReader {
 public:
  DocumentReader(const PrepOptions& options, std::vector<std::string> files)
      : options_(options), files_(std::move(files)) {}

  // False when every input is consumed. Empty documents are returned too (the caller skips them).
  StatusOr<bool> Next(std::string* doc) {
    while (true) {
      if (!in_) {
        if (next_file_ == files_.size()) return false;
        path_ = files_[next_file_++];
        FJORD_ASSIGN_OR_RETURN(in_, InputStream::Open(path_));
        buffer_.clear();
        pos_ = 0;
        line_ = 0;
        eof_ = false;
      }
      const std::string_view sep = options_.jsonl ? std::string_view("\n") : options_.delimiter;
      if (!sep.empty()) {
        const size_t at = buffer_.find(sep, pos_);
        if (at != std::string::npos) {
          // A text document keeps its delimiter (as llm.c's tinyshakespeare.py does), so the
          // documents concatenate back to the text; a JSON line does not.
          const size_t keep = options_.jsonl ? 0 : sep.size();
          FJORD_RETURN_IF_ERROR(Emit(std::string_view(buffer_).substr(pos_, at - pos_ + keep), doc));
          pos_ = at + sep.size();
          return true;
        }
      }
      if (!eof_) {
        if (pos_ > 0 && pos_ * 2 >= buffer_.size()) {
          buffer_.erase(0, pos_);
          pos_ = 0;
        }
        const size_t before = buffer_.size();
        FJORD_ASSIGN_OR_RETURN(const bool more, in_->Read(&buffer_));
        Hash(buffer_.data() + before, buffer_.size() - before);
        eof_ = !more;
        continue;
      }
      // End of this input: the rest is its last document.
      FJORD_RETURN_IF_ERROR(Emit(std::string_view(buffer_).substr(pos_), doc));
      in_.reset();
      return true;
    }
  }

  int64_t bytes() const { return bytes_; }
  Sha256& sha256() { return sha_; }

 private:
  void Hash(const char* data, size_t n) {
    sha_.Update(data, n);
    bytes_ += static_cast<int64_t>(n);
  }

  Status Emit(std::string_view piece, std::string* doc) {
    ++line_;
    if (!options_.jsonl) {
      doc->assign(piece);
      return OkStatus();
    }
    doc->clear();
    if (!piece.empty() && piece.back() == '\r') piece.remove_suffix(1);
    if (piece.find_first_not_of(" \t") == std::string_view::npos) return OkStatus();
    const std::string where = path_ + ":" + std::to_string(line_);
    StatusOr<JsonValue> json = ParseJson(piece, where);
    if (!json.ok()) {
      return InvalidArgument(
          "fjord prep: " + json.status().message() +
          ": not a JSON line; each line of a --format jsonl input must be one JSON object");
    }
    const JsonValue* field = json->Find(options_.json_field);
    if (field == nullptr || !field->is_string()) {
      return InvalidArgument("fjord prep: " + where + ": " +
                             (field == nullptr ? "no field \"" + options_.json_field + "\""
                                               : "field \"" + options_.json_field + "\" is a " +
                                                     field->type_name() + ", not a string") +
                             " in this JSON line; give the document's field with --json-field NAME, or fix "
                             "the line");
    }
    doc->assign(field->text());
    return OkStatus();
  }

  const PrepOptions& options_;
  const std::vector<std::string> files_;
  size_t next_file_ = 0;
  std::unique_ptr<InputStream> in_;
  std::string path_;
  std::string buffer_;
  size_t pos_ = 0;
  int64_t line_ = 0;
  bool eof_ = false;
  int64_t bytes_ = 0;
  Sha256 sha_;
};

// The shards of one split: tokens are packed as they come; a full shard is written (atomically)
// and hashed from memory.
class ShardSink {
 public:
  ShardSink(std::string dir, std::string prefix, int64_t shard_tokens, int32_t version)
      : dir_(std::move(dir)),
        prefix_(std::move(prefix)),
        per_(shard_tokens),
        version_(version),
        width_(version == kShardVersionUint32 ? 4 : 2) {}

  Status Add(const int32_t* tokens, size_t n) {
    while (n > 0) {
      const size_t room = static_cast<size_t>(per_ - count_);
      const size_t take = std::min(room, n);
      const size_t old = body_.size();
      body_.resize(old + take * width_);
      uint8_t* p = body_.data() + old;
      for (size_t i = 0; i < take; ++i) {
        const uint32_t t = static_cast<uint32_t>(tokens[i]);
        for (int b = 0; b < width_; ++b) p[width_ * i + b] = static_cast<uint8_t>(t >> (8 * b));
      }
      count_ += static_cast<int64_t>(take);
      tokens += take;
      n -= take;
      if (count_ == per_) FJORD_RETURN_IF_ERROR(Flush());
    }
    return OkStatus();
  }

  // Writes the last, partial shard.
  Status Finish() { return count_ > 0 ? Flush() : OkStatus(); }

  struct Written {
    std::string path, sha256;
    int64_t tokens = 0, bytes = 0;
  };
  const std::vector<Written>& written() const { return written_; }
  int64_t tokens() const {
    int64_t sum = count_;
    for (const Written& w : written_) sum += w.tokens;
    return sum;
  }

 private:
  Status Flush() {
    if (written_.size() == 1'000'000) {
      return InvalidArgument("fjord prep: a " + prefix_ + " shard beyond " + prefix_ +
                             "_999999.bin would overflow the 6-digit shard numbers; raise --shard-tokens");
    }
    const std::string path = (fs::path(dir_) / ShardName(prefix_, written_.size())).string();
    const std::string what = "fjord prep: cannot write shard " + path;
    uint8_t header[kHeaderBytes] = {};
    PutLe32(header, static_cast<uint32_t>(kShardMagic));
    PutLe32(header + 4, static_cast<uint32_t>(version_));
    PutLe32(header + 8, static_cast<uint32_t>(count_));
    Sha256 sha;
    sha.Update(header, sizeof(header));
    sha.Update(body_.data(), body_.size());
    FJORD_ASSIGN_OR_RETURN(std::string digest, sha.FinishHex());
    FJORD_RETURN_IF_ERROR(
        WriteFileAtomic(path, {{header, sizeof(header)}, {body_.data(), body_.size()}}).WithContext(what));
    written_.push_back({path, digest, count_, static_cast<int64_t>(sizeof(header) + body_.size())});
    body_.clear();
    count_ = 0;
    return OkStatus();
  }

  const std::string dir_, prefix_;
  const int64_t per_;
  const int32_t version_;
  const int width_;
  std::vector<uint8_t> body_;
  int64_t count_ = 0;
  std::vector<Written> written_;
};

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
}

// Expands options.input and options.inputs (files or globs) into files, in order.
StatusOr<std::vector<std::string>> InputFiles(const PrepOptions& options) {
  std::vector<std::string> patterns;
  if (!options.input.empty()) patterns.push_back(options.input);
  patterns.insert(patterns.end(), options.inputs.begin(), options.inputs.end());
  if (patterns.empty()) {
    return InvalidArgument("fjord prep: no input: give --input FILE (or a glob, or several --input)");
  }
  std::vector<std::string> files;
  for (const std::string& pattern : patterns) {
    std::error_code ec;
    const fs::file_status st = fs::status(pattern, ec);
    if (fs::exists(st)) {
      if (!fs::is_regular_file(st)) {
        return InvalidArgument("fjord prep: input " + pattern + " is not a regular file; give a text file");
      }
      files.push_back(pattern);
      continue;
    }
    glob_t matches{};
    const int rc = ::glob(pattern.c_str(), 0, nullptr, &matches);
    std::vector<std::string> found;
    for (size_t i = 0; rc == 0 && i < matches.gl_pathc; ++i) {
      if (fs::is_regular_file(matches.gl_pathv[i], ec)) found.emplace_back(matches.gl_pathv[i]);
    }
    ::globfree(&matches);
    if (found.empty()) {
      return NotFound("fjord prep: input " + pattern +
                      ": no such file (and no file matches it as a glob); give the text to tokenize");
    }
    std::sort(found.begin(), found.end());
    files.insert(files.end(), found.begin(), found.end());
  }
  return files;
}

// The progress line: bytes, documents, tokens, MB/s and (for uncompressed inputs) the ETA.
class Progress {
 public:
  Progress(bool on, int64_t total_bytes)
      : on_(on), total_(total_bytes), start_(Clock::now()), last_(start_) {}
  void Update(int64_t bytes, int64_t docs, int64_t tokens, bool final) {
    if (!on_) return;
    const Clock::time_point now = Clock::now();
    if (!final && now - last_ < std::chrono::seconds(1)) return;
    last_ = now;
    const double seconds = std::max(1e-9, std::chrono::duration<double>(now - start_).count());
    const double rate = static_cast<double>(bytes) / seconds;
    std::string eta;
    if (!final && total_ > 0 && bytes > 0 && bytes <= total_) {
      eta =
          ", ETA " + std::to_string(static_cast<int64_t>(static_cast<double>(total_ - bytes) / rate)) + " s";
    }
    std::fprintf(stderr, "fjord prep: %.1f MB read, %lld documents, %lld tokens, %.1f MB/s%s%s", bytes / 1e6,
                 static_cast<long long>(docs), static_cast<long long>(tokens), rate / 1e6, eta.c_str(),
                 final ? "\n" : "\r");
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  const bool on_;
  const int64_t total_;
  const Clock::time_point start_;
  Clock::time_point last_;
};

// Tokenizes docs[i] into out[i] on up to `threads` threads (contiguous ranges; order is kept).
void EncodeBatch(const Tokenizer& tokenizer, const std::vector<std::string>& docs, int threads,
                 std::vector<std::vector<int32_t>>* out) {
  out->assign(docs.size(), {});
  const size_t n = docs.size();
  const size_t workers = std::min<size_t>(static_cast<size_t>(threads), n);
  if (workers <= 1) {
    for (size_t i = 0; i < n; ++i) (*out)[i] = tokenizer.Encode(docs[i]);
    return;
  }
  // Balance by bytes: worker w takes the documents whose first byte falls in its share.
  size_t total = 0;
  for (const std::string& d : docs) total += d.size();
  std::vector<size_t> cut(workers + 1, n);
  cut[0] = 0;
  size_t w = 1, seen = 0;
  for (size_t i = 0; i < n && w < workers; ++i) {
    while (w < workers && seen >= total * w / workers) cut[w++] = i;
    seen += docs[i].size();
  }
  std::vector<std::thread> pool;
  for (size_t k = 0; k < workers; ++k) {
    pool.emplace_back([&, k] {
      for (size_t i = cut[k]; i < cut[k + 1]; ++i) (*out)[i] = tokenizer.Encode(docs[i]);
    });
  }
  for (std::thread& t : pool) t.join();
}

}  // namespace

StatusOr<PrepResult> PrepareShards(const PrepOptions& options, const Tokenizer& tokenizer) {
  const std::string what = "fjord prep";
  if (!(options.val_fraction >= 0 && options.val_fraction < 1)) {
    std::ostringstream value;
    value << options.val_fraction;
    return InvalidArgument(what + ": val_fraction " + value.str() +
                           " is outside [0, 1): it is the share of the "
                           "documents kept for validation; use e.g. 0.1, or 0 for no validation shard");
  }
  if (options.shard_tokens < 1 || options.shard_tokens > std::numeric_limits<int32_t>::max()) {
    return InvalidArgument(what + ": shard_tokens " + std::to_string(options.shard_tokens) +
                           " is outside [1, 2147483647] (the header's int32 count); use e.g. 100000000");
  }
  if (options.threads < 1 || options.threads > 256) {
    return InvalidArgument(what + ": threads " + std::to_string(options.threads) +
                           " is outside [1, 256]; use e.g. the number of cores");
  }
  if (options.batch_bytes < 1) {
    return InvalidArgument(what + ": batch_bytes " + std::to_string(options.batch_bytes) +
                           " must be at least 1; use e.g. 8388608");
  }
  if (options.out_dir.empty()) {
    return InvalidArgument(what +
                           ": the output directory is empty; give a directory for the shards, e.g. data/");
  }
  if (options.jsonl && options.json_field.empty()) {
    return InvalidArgument(what + ": --json-field is empty; give the name of the text field, e.g. text");
  }
  const int64_t eot = options.eot == kEotAuto ? tokenizer.end_of_text().value_or(-1) : options.eot;
  if (eot != kEotNone && eot != -1 && (eot < 0 || eot >= tokenizer.vocab_size())) {
    return InvalidArgument(what + ": the end-of-text id " + std::to_string(eot) + " is outside tokenizer \"" +
                           tokenizer.name() + "\"'s ids [0, " + std::to_string(tokenizer.vocab_size()) +
                           "); give --eot ID within them, or --eot none");
  }
  const int32_t version = ShardVersionFor(tokenizer.vocab_size());
  FJORD_ASSIGN_OR_RETURN(const std::string identity_override, CheckPrepTenancy(options));
  FJORD_ASSIGN_OR_RETURN(const std::vector<std::string> files, InputFiles(options));
  // The progress line's ETA needs the text's size: known for plain files only.
  int64_t total_bytes = 0;
  for (const std::string& f : files) {
    std::error_code ec;
    total_bytes += static_cast<int64_t>(fs::file_size(f, ec));
    unsigned char magic[2] = {};
    if (FILE* in = std::fopen(f.c_str(), "rb")) {
      const size_t n = std::fread(magic, 1, 2, in);
      std::fclose(in);
      if (n == 2 && ((magic[0] == 0x1f && magic[1] == 0x8b) || (magic[0] == 0x28 && magic[1] == 0xb5))) {
        total_bytes = -1;
        break;
      }
    }
  }

  std::error_code ec;
  fs::create_directories(options.out_dir, ec);
  if (ec || !fs::is_directory(options.out_dir)) {
    return FailedPrecondition(what + ": cannot create the output directory " + options.out_dir + ": " +
                              (ec ? ec.message() : "a file of that name exists") +
                              "; choose another directory or remove that file");
  }
  // Shards left from an earlier prep would be picked up by the glob together with the new ones,
  // and prep does not know in advance how many it writes: refuse rather than mix datasets or
  // delete files.
  std::vector<std::string> left;
  for (fs::directory_iterator it(options.out_dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (IsPrepShardName(it->path().filename().string())) left.push_back(it->path().string());
  }
  if (ec) return FailedPrecondition(what + ": cannot list " + options.out_dir + ": " + ec.message());
  if (!left.empty()) {
    std::sort(left.begin(), left.end());
    return FailedPrecondition(
        what + ": " + left.front() +
        (left.size() > 1 ? " (and " + std::to_string(left.size() - 1) + " more shards)" : "") +
        " is left from an earlier prep, and the glob (train_*.bin / val_*.bin) would mix "
        "it with the new shards; delete the old shards or choose an empty output directory");
  }
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

  ShardSink train(options.out_dir, "train", options.shard_tokens, version);
  ShardSink val(options.out_dir, "val", options.shard_tokens, version);
  DocumentReader reader(options, files);
  Progress progress(options.progress, total_bytes);
  PrepResult result;
  // Reads, tokenizes and writes everything; on failure the caller removes what was written.
  auto run = [&]() -> Status {
    std::vector<std::string> batch;
    std::vector<std::vector<int32_t>> encoded;
    const size_t batch_bytes =
        static_cast<size_t>(options.batch_bytes) * static_cast<size_t>(options.threads);
    bool more = true;
    while (more) {
      batch.clear();
      size_t bytes = 0;
      std::string doc;
      while (bytes < batch_bytes) {
        FJORD_ASSIGN_OR_RETURN(more, reader.Next(&doc));
        if (!more) break;
        if (doc.empty()) continue;  // documented: an empty document adds nothing
        bytes += doc.size();
        batch.push_back(std::move(doc));
        doc = std::string();
      }
      EncodeBatch(tokenizer, batch, options.threads, &encoded);
      for (const std::vector<int32_t>& tokens : encoded) {
        const int64_t i = result.documents++;
        const bool is_val = options.val_docs >= 0
                                ? i < options.val_docs
                                : std::floor(static_cast<double>(i + 1) * options.val_fraction) >
                                      std::floor(static_cast<double>(i) * options.val_fraction);
        ShardSink& sink = is_val ? val : train;
        result.val_documents += is_val ? 1 : 0;
        if (eot >= 0) {
          const int32_t id = static_cast<int32_t>(eot);
          FJORD_RETURN_IF_ERROR(sink.Add(&id, 1));
        }
        FJORD_RETURN_IF_ERROR(sink.Add(tokens.data(), tokens.size()));
      }
      progress.Update(reader.bytes(), result.documents, train.tokens() + val.tokens(), false);
    }
    progress.Update(reader.bytes(), result.documents, train.tokens() + val.tokens(), true);
    result.input_bytes = reader.bytes();
    result.train_tokens = train.tokens();
    result.val_tokens = val.tokens();
    const std::string sizes = std::to_string(files.size()) + " input file(s) hold " +
                              std::to_string(result.documents) + " non-empty document(s) and " +
                              std::to_string(result.train_tokens + result.val_tokens) + " tokens; " +
                              std::to_string(result.val_documents) + " document(s) (" +
                              std::to_string(result.val_tokens) + " tokens) went to validation";
    if (result.documents == 0) {
      return InvalidArgument(what + ": " + sizes +
                             ": nothing to tokenize; give non-empty text (or the right --format / "
                             "--json-field)");
    }
    if (result.train_tokens < 2) {
      return InvalidArgument(what + ": " + sizes +
                             "; the train part needs at least 2 tokens (an input and its target): use a "
                             "longer text or a smaller val_fraction / --val-docs");
    }
    const bool want_val = options.val_docs > 0 || (options.val_docs < 0 && options.val_fraction > 0);
    if (want_val && result.val_tokens < 2) {
      return InvalidArgument(what + ": " + sizes +
                             "; the validation part needs at least 2 tokens (an input and its target): "
                             "validation takes whole documents, so give more documents (--delimiter, or "
                             "more files), a larger val_fraction, or val_fraction 0 for no validation shard");
    }
    FJORD_RETURN_IF_ERROR(train.Finish());
    FJORD_RETURN_IF_ERROR(val.Finish());
    return OkStatus();
  };
  auto remove_written = [&] {
    for (const ShardSink* sink : {&train, &val}) {
      for (const ShardSink::Written& w : sink->written()) fs::remove(w.path, ec);
    }
  };
  if (Status s = run(); !s.ok()) {
    remove_written();
    return s;
  }
  for (const ShardSink::Written& w : train.written()) result.train_files.push_back(w.path);
  for (const ShardSink::Written& w : val.written()) result.val_files.push_back(w.path);
  if (!options.tenant.empty()) {
    proto::DataManifest manifest;
    manifest.set_version(1);
    manifest.set_tenant(options.tenant);
    for (const std::string& j : options.allowed_jurisdictions) manifest.add_allowed_jurisdictions(j);
    for (const std::string& site : options.allowed_sites) manifest.add_allowed_sites(site);
    manifest.set_tokenizer(tokenizer.name());
    StatusOr<std::string> source_sha256 = reader.sha256().FinishHex();
    if (!source_sha256.ok()) {
      remove_written();
      return source_sha256.status().WithContext(what);
    }
    manifest.set_source_sha256(*source_sha256);
    manifest.set_created_at(UtcNow());
    manifest.set_created_on_host(ThisHostname());
    if (!identity_override.empty()) manifest.set_identity_override(identity_override);
    for (const ShardSink* sink : {&train, &val}) {
      for (const ShardSink::Written& w : sink->written()) {
        proto::ShardDigest* d = manifest.add_shard();
        d->set_name(fs::path(w.path).filename().string());
        d->set_sha256(w.sha256);
        d->set_tokens(w.tokens);
        d->set_bytes(w.bytes);
      }
    }
    if (Status s = WriteDataManifest(options.out_dir, manifest).WithContext(what); !s.ok()) {
      remove_written();
      return s;
    }
    result.manifest_path = (fs::path(options.out_dir) / kManifestName).string();
  }
  return result;
}

}  // namespace fjord
