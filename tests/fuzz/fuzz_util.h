// Shared by the libFuzzer targets in tests/fuzz/: a scratch directory private to the process, for the
// parsers that take a path rather than a buffer, and splitting one input into parts.
//
// Targets are built and run by scripts/fuzz.sh (see docs/RELIABILITY.md, "Fuzzing"). A property
// a target checks beyond "does not crash" fails through FJORD_FUZZ_EXPECT, which aborts: libFuzzer
// then saves the input like any crash.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#define FJORD_FUZZ_EXPECT(cond, what)                                                            \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "fuzz property failed at %s:%d: %s: %s\n", __FILE__, __LINE__, #cond, \
                   std::string(what).c_str());                                                   \
      std::abort();                                                                              \
    }                                                                                            \
  } while (0)

namespace fjord::fuzz {

// The input as text (the parsers take any bytes, not only valid UTF-8).
inline std::string_view AsText(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// A directory of this process only (fjord-fuzz-NAME-PID under the system temporary directory),
// created on first use and removed at normal exit. Parallel fuzzing jobs each get their own.
inline const std::string& ScratchDir(const char* name) {
  struct Dir {
    std::string path;
    explicit Dir(const char* name) {
      std::error_code ec;
      path = (std::filesystem::temp_directory_path(ec) /
              ("fjord-fuzz-" + std::string(name) + "-" + std::to_string(::getpid())))
                 .string();
      std::filesystem::remove_all(path, ec);
      std::filesystem::create_directories(path, ec);
      FJORD_FUZZ_EXPECT(!ec, "cannot create scratch directory " + path + ": " + ec.message());
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir dir(name);
  return dir.path;
}

// Writes `bytes` to `path`, replacing it. A harness that cannot write its input must not pass
// silently, so failure aborts.
inline void WriteFile(const std::string& path, std::string_view bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  FJORD_FUZZ_EXPECT(f != nullptr, "cannot create " + path);
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  FJORD_FUZZ_EXPECT(std::fclose(f) == 0 && ok, "cannot write " + path);
}

// Splits `text` at the first line that is exactly `separator`: {before, after}; after is empty
// when the separator is absent. Lets one input carry a document plus extra lines (overrides).
inline std::pair<std::string_view, std::string_view> SplitAtLine(std::string_view text,
                                                                 std::string_view separator) {
  const std::string needle = "\n" + std::string(separator) + "\n";
  const size_t at = text.find(needle);
  if (at == std::string_view::npos) return {text, {}};
  return {text.substr(0, at + 1), text.substr(at + needle.size())};
}

// The non-empty lines of `text`.
inline std::vector<std::string> Lines(std::string_view text) {
  std::vector<std::string> lines;
  while (!text.empty()) {
    const size_t end = text.find('\n');
    const std::string_view line = text.substr(0, end);
    if (!line.empty()) lines.emplace_back(line);
    if (end == std::string_view::npos) break;
    text.remove_prefix(end + 1);
  }
  return lines;
}

}  // namespace fjord::fuzz
