// `fjord prep`: text in, llm.c token shards out, streaming.
//
// Inputs are read in order (each a file or a glob, sorted), as plain text or compressed with gzip
// or zstd (told apart by their first bytes, not their names), and cut into documents: the pieces
// that end with a delimiter (by default a line; "" makes each file one document) (the delimiter stays at the
// end of its document, as in llm.c's tinyshakespeare.py, so the documents concatenate back to the text), or
// one JSON object per line whose field (default "text") is the document. Documents are tokenized on `threads`
// threads in batches and written in input order, so the shards are byte-identical for every thread count.
// Before each document the tokenizer's end-of-text id (GPT-2's 50256; llm.c's fineweb.py does the same) is
// written, unless disabled or replaced by options.eot.
//
// Memory: the batch being tokenized (threads x batch_bytes of text, 8 MiB each by default, and its
// tokens), one open train
// shard and one open val shard (shard_tokens x 2 or 4 bytes each), and one document whole: a
// single-document file is held in memory, so give large corpora as many documents.
//
// Documented choices: empty documents (an empty file, two delimiters in a row, an empty JSON line)
// are skipped and get no end-of-text token; bytes that are not UTF-8 are kept and tokenized as
// bytes (GPT-2's byte-level BPE takes any bytes); a JSON line without the field, with a field that
// is not a string, or that is not JSON is an error naming file:line; a compressed input that ends
// early is an error naming the file.
//
// Validation split by documents, never inside one: val_docs >= 0 puts the first val_docs documents
// in val; otherwise document i (0-based, counting non-empty documents) goes to val when
// floor((i + 1) * val_fraction) > floor(i * val_fraction): every 1/val_fraction-th document, spread
// over the whole corpus, exactly floor(n * val_fraction) of n documents.
//
// Atomicity: each shard is written to a temporary file and renamed; the manifest is written last;
// a prep that fails removes the shards it wrote; an interrupted one leaves whole shards and no
// manifest (a tenant prep removes the old manifest first), so tenant jobs refuse the set until a
// prep completes. Prep refuses an output directory that already holds shards (it never mixes or
// deletes another prep's data).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/data/tokenizer.h"

namespace fjord {

inline constexpr int64_t kEotAuto = -1;  // PrepOptions::eot: the tokenizer's end_of_text(), if any
inline constexpr int64_t kEotNone = -2;  // no token between documents

struct PrepOptions {
  std::string input;                   // a file or glob to tokenize (with `inputs`; either may be empty)
  std::string out_dir;                 // created if missing
  double val_fraction = 0.1;           // share of documents for val_000000.bin... (see above)
  int64_t shard_tokens = 100'000'000;  // tokens per shard at most
  // Tenancy (`fjord prep --tenant ID --jurisdiction NO[,SE] [--site S]`): with a tenant, prep
  // writes DIR/manifest.textproto naming the tenant, where the shards may be opened and each
  // shard's SHA-256 and token count, and refuses to run on a node whose identity file places it
  // outside those jurisdictions. Empty tenant: no manifest (jurisdictions and sites must be empty).
  std::string tenant = "";
  std::vector<std::string> allowed_jurisdictions = {};  // ISO 3166-1 alpha-2, e.g. {"NO"}
  std::vector<std::string> allowed_sites = {};          // empty = any site
  std::vector<std::string> inputs = {};                 // more files or globs, after `input`
  bool jsonl = false;                                   // JSON lines instead of text
  std::string json_field = "text";                      // the document's field in each JSON line
  std::string delimiter = "\n";   // text: ends each document (default: a line); "" = one document per file
  int64_t eot = kEotAuto;         // id before each document, kEotAuto or kEotNone
  int64_t val_docs = -1;          // >= 0: the first val_docs documents are val
  int threads = 1;                // tokenizer threads
  bool progress = false;          // a progress line on stderr about once a second
  int64_t batch_bytes = 8 << 20;  // text per thread per batch (memory vs. balance)
};

struct PrepResult {
  std::vector<std::string> train_files;
  std::vector<std::string> val_files;
  int64_t train_tokens = 0;
  int64_t val_tokens = 0;
  int64_t documents = 0;      // non-empty documents read
  int64_t val_documents = 0;  // of which in val
  int64_t input_bytes = 0;    // text bytes read (after decompression)
  std::string manifest_path;  // "" without a tenant
};

// Tokenizes the inputs with `tokenizer` into DIR/train_NNNNNN.bin and DIR/val_NNNNNN.bin (shard
// version 1, or 2 when tokenizer.vocab_size() > 65536). Refuses (before writing anything) no input,
// an input that is missing or not a regular file, a glob without match, val_fraction outside
// [0, 1), threads outside [1, 256], batch_bytes < 1, shard_tokens < 1, an eot id outside the vocabulary, and
// the tenancy refusals: an invalid tenant id, a tenant without jurisdictions, a code that is not ISO 3166-1
// alpha-2, jurisdictions or sites without a tenant, a node identity outside the jurisdictions, and (without a
// tenant) a directory that holds a manifest from an earlier tenant prep. Refuses after reading (and removes
// what it wrote) inputs without any document, a train part with fewer than 2 tokens, and a val part with
// fewer than 2 tokens when one was asked for.
StatusOr<PrepResult> PrepareShards(const PrepOptions& options, const Tokenizer& tokenizer);

}  // namespace fjord
