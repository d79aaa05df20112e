// Encode throughput of one fjord tokenizer on one thread: tokenizer_bench NAME VOCAB FILE REPS
// encodes FILE (read once) REPS times and prints "tokens best_seconds" (the fastest repetition),
// for tests/bench/tokenizer_bench.py, which sets it beside Hugging Face's `tokenizers`.
#include <chrono>
#include <cstdio>
#include <string>

#include "common/file_util.h"
#include "runtime/data/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: tokenizer_bench NAME VOCAB FILE REPS\n");
    return 2;
  }
  fjord::StatusOr<std::unique_ptr<fjord::Tokenizer>> tok = fjord::MakeTokenizer(argv[1], argv[2]);
  if (!tok.ok()) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", tok.status().message().c_str());
    return 1;
  }
  fjord::StatusOr<std::string> text = fjord::ReadWholeFile(argv[3], "text");
  if (!text.ok()) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", text.status().message().c_str());
    return 1;
  }
  double best = 1e30;
  size_t tokens = 0;
  for (int r = 0; r < std::stoi(argv[4]); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    tokens = (*tok)->Encode(*text).size();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("%zu %.6f\n", tokens, best);
  return 0;
}
