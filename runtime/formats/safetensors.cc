// The header is plain JSON (common/json.h); the tensor bytes are never touched by the writer
// beyond copying them, and the reader validates the header against the file size before any
// tensor is exposed. Hosts are little-endian (static_assert below), like the format.
#include "runtime/formats/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <set>

#include "common/file_util.h"
#include "common/json.h"

namespace fjord {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

// The reference implementation refuses larger headers; so do we, before allocating for one.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeInfo {
  Dtype dtype;
  const char* name;
  size_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {Dtype::kBool, "BOOL", 1},      {Dtype::kU8, "U8", 1},          {Dtype::kI8, "I8", 1},
    {Dtype::kF8E4M3, "F8_E4M3", 1}, {Dtype::kF8E5M2, "F8_E5M2", 1}, {Dtype::kI16, "I16", 2},
    {Dtype::kU16, "U16", 2},        {Dtype::kF16, "F16", 2},        {Dtype::kBF16, "BF16", 2},
    {Dtype::kI32, "I32", 4},        {Dtype::kU32, "U32", 4},        {Dtype::kF32, "F32", 4},
    {Dtype::kF64, "F64", 8},        {Dtype::kI64, "I64", 8},        {Dtype::kU64, "U64", 8},
};

const DtypeInfo& Info(Dtype dtype) {
  for (const DtypeInfo& d : kDtypes) {
    if (d.dtype == dtype) return d;
  }
  return kDtypes[0];  // unreachable: every enumerator is listed
}

std::string KnownDtypes() {
  std::string s;
  for (const DtypeInfo& d : kDtypes) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s;
}

// prod(shape) * element_size, or nullopt on overflow of size_t.
std::optional<size_t> ByteSize(const std::vector<int64_t>& shape, size_t element_size) {
  size_t n = element_size;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > std::numeric_limits<size_t>::max() / static_cast<size_t>(d)) return std::nullopt;
    n *= static_cast<size_t>(d);
  }
  return n;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000 | (mant << 13);  // inf or nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = 113;
    while ((mant & 0x400) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (static_cast<uint32_t>(e) << 23) | ((mant & 0x3FF) << 13);
  }
  return std::bit_cast<float>(bits);
}

}  // namespace

std::string_view DtypeName(Dtype dtype) { return Info(dtype).name; }
size_t DtypeSize(Dtype dtype) { return Info(dtype).size; }

std::optional<Dtype> ParseDtype(std::string_view name) {
  for (const DtypeInfo& d : kDtypes) {
    if (name == d.name) return d.dtype;
  }
  return std::nullopt;
}

int64_t SafetensorsTensor::num_elements() const {
  // An empty tensor's other dimensions may multiply past int64 (the reader bounds only the bytes).
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const SafetensorsTensor* Safetensors::Find(std::string_view name) const {
  for (const SafetensorsTensor& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Status WriteSafetensors(const std::string& path, const std::vector<SafetensorsTensorRef>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  const std::string what = "cannot write safetensors file " + path;
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) header += ',';
      header += JsonQuote(key);
      header += ':';
      header += JsonQuote(value);
      first = false;
    }
    header += "}";
  }
  std::set<std::string_view> names;
  std::vector<ByteSpan> pieces(1);  // [0] is the length and header, filled below
  uint64_t offset = 0;
  for (const SafetensorsTensorRef& t : tensors) {
    const std::string tensor = what + ": tensor \"" + t.name + "\"";
    if (t.name.empty())
      return InvalidArgument(what + ": a tensor has an empty name; give every tensor a name");
    if (t.name == "__metadata__") {
      return InvalidArgument(tensor + ": the name is reserved for metadata; rename the tensor");
    }
    if (!names.insert(t.name).second)
      return InvalidArgument(tensor + " appears twice; tensor names must be unique");
    const std::optional<size_t> bytes = ByteSize(t.shape, DtypeSize(t.dtype));
    if (!bytes) {
      return InvalidArgument(tensor + ": shape " + ShapeText(t.shape) +
                             " has a negative dimension or overflows; pass dimensions >= 0");
    }
    if (*bytes > 0 && t.data == nullptr)
      return InvalidArgument(tensor + ": data is null; pass the tensor's bytes");
    if (header.size() > 1) header += ',';
    header += JsonQuote(t.name);
    header += ":{\"dtype\":\"";
    header += DtypeName(t.dtype);
    header += "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i) header += ',';
      header += std::to_string(t.shape[i]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + *bytes) + "]}";
    offset += *bytes;
    pieces.push_back({t.data, *bytes});
  }
  header += "}";
  // Pad with spaces so the tensor data starts 8-byte aligned in the file.
  header.resize((header.size() + 7) / 8 * 8, ' ');
  std::string prefix(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(prefix.data(), &n, 8);
  prefix += header;
  pieces[0] = {prefix.data(), prefix.size()};
  return WriteFileAtomic(path, pieces).WithContext(what);
}

StatusOr<Safetensors> ReadSafetensors(const std::string& path) {
  const std::string what = "safetensors file " + path;
  Safetensors st;
  st.path_ = path;
  {
    FJORD_ASSIGN_OR_RETURN(std::string bytes, ReadWholeFile(path, "safetensors file"));
    st.bytes_ = std::make_unique<const std::string>(std::move(bytes));
  }
  const std::string& bytes = *st.bytes_;
  const size_t file_size = bytes.size();
  if (file_size < 8) {
    return DataLoss(
        what + ": " + std::to_string(file_size) +
        " bytes, shorter than the 8-byte header length; the file is truncated or not safetensors");
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  if (header_len > kMaxHeaderBytes) {
    return DataLoss(what + ": header length " + std::to_string(header_len) +
                    " exceeds the format's limit of " + std::to_string(kMaxHeaderBytes) +
                    " bytes; the file is corrupt or not safetensors");
  }
  if (header_len > file_size - 8) {
    return DataLoss(what + ": header length " + std::to_string(header_len) + " exceeds the " +
                    std::to_string(file_size - 8) +
                    " bytes after the length prefix; the file is truncated or not safetensors");
  }
  const std::string_view header_text(bytes.data() + 8, header_len);
  FJORD_ASSIGN_OR_RETURN(JsonValue header, ParseJson(header_text, what + " header"));
  if (!header.is_object()) {
    return DataLoss(what + ": the header is a JSON " + std::string(header.type_name()) +
                    ", not an object of tensors; the file is not safetensors");
  }
  const uint8_t* data = reinterpret_cast<const uint8_t*>(bytes.data()) + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  struct Range {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.object()) {
    const std::string where =
        what + ": " + (name == "__metadata__" ? "__metadata__" : "tensor \"" + name + "\"");
    const std::string at = " (header line " + std::to_string(entry.line()) + ")";
    if (name == "__metadata__") {
      if (!entry.is_object()) return DataLoss(where + " must be an object of strings" + at);
      for (const auto& [key, value] : entry.object()) {
        if (!value.is_string()) {
          return DataLoss(where + ": value of \"" + key + "\" is a " + value.type_name() +
                          "; metadata values must be strings" + at);
        }
        st.metadata_[key] = value.text();
      }
      continue;
    }
    if (!entry.is_object()) return DataLoss(where + " is a " + entry.type_name() + ", not an object" + at);
    for (const auto& member : entry.object()) {
      if (member.first != "dtype" && member.first != "shape" && member.first != "data_offsets") {
        return DataLoss(where + ": unknown field \"" + member.first +
                        "\"; a tensor entry has exactly dtype, shape and data_offsets" + at);
      }
    }
    const JsonValue* dtype = entry.Find("dtype");
    const JsonValue* shape = entry.Find("shape");
    const JsonValue* offsets = entry.Find("data_offsets");
    if (!dtype || !shape || !offsets) {
      return DataLoss(where + ": missing " +
                      std::string(!dtype   ? "dtype"
                                  : !shape ? "shape"
                                           : "data_offsets") +
                      "; a tensor entry has dtype, shape and data_offsets" + at);
    }
    SafetensorsTensor t;
    t.name = name;
    const std::optional<Dtype> parsed = dtype->is_string() ? ParseDtype(dtype->text()) : std::nullopt;
    if (!parsed) {
      return DataLoss(where + ": unknown dtype " +
                      (dtype->is_string() ? JsonQuote(dtype->text()) : "(not a string)") +
                      "; known dtypes: " + KnownDtypes() + at);
    }
    t.dtype = *parsed;
    if (!shape->is_array()) return DataLoss(where + ": shape must be an array of non-negative integers" + at);
    for (const JsonValue& d : shape->array()) {
      const std::optional<int64_t> v = d.AsInt64();
      if (!v || *v < 0) return DataLoss(where + ": shape must be an array of non-negative integers" + at);
      t.shape.push_back(*v);
    }
    if (!offsets->is_array() || offsets->array().size() != 2 || !offsets->array()[0].AsUint64() ||
        !offsets->array()[1].AsUint64()) {
      return DataLoss(where + ": data_offsets must be [begin, end], two non-negative integers" + at);
    }
    const uint64_t begin = *offsets->array()[0].AsUint64();
    const uint64_t end = *offsets->array()[1].AsUint64();
    if (begin > end || end > data_size) {
      return DataLoss(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                      "] are not a range inside the " + std::to_string(data_size) +
                      " data bytes; the file is truncated or corrupt" + at);
    }
    const std::optional<size_t> expected = ByteSize(t.shape, DtypeSize(t.dtype));
    if (!expected || *expected != end - begin) {
      return DataLoss(where + ": data_offsets span " + std::to_string(end - begin) + " bytes but shape " +
                      ShapeText(t.shape) + " of " + std::string(DtypeName(t.dtype)) + " needs " +
                      (expected ? std::to_string(*expected) : "more than addressable") + at);
    }
    t.data = data + begin;
    t.num_bytes = end - begin;
    ranges.push_back({begin, end, st.tensors_.size()});
    st.tensors_.push_back(std::move(t));
  }
  // The tensors must tile the data buffer exactly.
  std::stable_sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected_begin = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const std::string name = st.tensors_[ranges[i].index].name;
    if (ranges[i].begin != expected_begin) {
      const std::string previous =
          i == 0 ? "the start of the data" : "tensor \"" + st.tensors_[ranges[i - 1].index].name + "\"";
      return DataLoss(what + ": tensor \"" + name + "\" starts at data offset " +
                      std::to_string(ranges[i].begin) + " but " + previous + " ends at " +
                      std::to_string(expected_begin) + "; tensors must be " +
                      (ranges[i].begin < expected_begin ? "non-overlapping" : "contiguous without gaps"));
    }
    expected_begin = ranges[i].end;
  }
  if (expected_begin != data_size) {
    return DataLoss(what + ": the tensors cover " + std::to_string(expected_begin) + " of the " +
                    std::to_string(data_size) +
                    " data bytes; trailing bytes are not allowed (truncated write?)");
  }
  std::vector<SafetensorsTensor> sorted;
  sorted.reserve(ranges.size());
  for (const Range& r : ranges) sorted.push_back(std::move(st.tensors_[r.index]));
  st.tensors_ = std::move(sorted);
  return st;
}

Status TensorToFloat32(const SafetensorsTensor& tensor, const std::string& path, float* out) {
  const size_t n = static_cast<size_t>(tensor.num_elements());
  switch (tensor.dtype) {
    case Dtype::kF32:
      if (n > 0) std::memcpy(out, tensor.data, n * 4);  // an empty tensor's `out` may be null
      return OkStatus();
    case Dtype::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, tensor.data + 2 * i, 2);
        out[i] = std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
      }
      return OkStatus();
    case Dtype::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, tensor.data + 2 * i, 2);
        out[i] = HalfToFloat(h);
      }
      return OkStatus();
    default:
      return InvalidArgument("safetensors file " + path + ": tensor \"" + tensor.name + "\" has dtype " +
                             std::string(DtypeName(tensor.dtype)) +
                             "; only F32, F16 and BF16 convert to float32 weights");
  }
}

}  // namespace fjord
