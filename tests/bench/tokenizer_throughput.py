"""Tokens/s of Hugging Face `tokenizers` (batch encoding) and tiktoken on one text, from the same
GPT-2 vocab.json / merges.txt fjord reads; for tests/bench/data_scale.sh (issue 23).

  tokenizer_throughput.py GPT2_DIR TEXT THREADS  ->  lines "hf TOKENS SECONDS" and "tiktoken ..."

A library that is absent prints "NAME skipped: no NAME". The text is split into its lines
(documents), as fjord prep does with its default delimiter."""
import json
import os
import sys
import time

gpt2_dir, text_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(text_path, encoding="utf-8", errors="surrogateescape") as f:
    docs = f.read().splitlines(keepends=True)

try:
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # read when tokenizers starts its pool
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import ByteLevel
    from tokenizers.decoders import ByteLevel as ByteLevelDecoder

    tok = Tokenizer(BPE.from_file(os.path.join(gpt2_dir, "vocab.json"), os.path.join(gpt2_dir, "merges.txt")))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = ByteLevelDecoder()
    start = time.perf_counter()
    n = 0
    for i in range(0, len(docs), 4096):
        n += sum(len(e.ids) for e in tok.encode_batch(docs[i:i + 4096]))
    print("hf", n, time.perf_counter() - start)
except ImportError:
    print("hf skipped: no tokenizers")

try:
    import tiktoken

    # GPT-2's ranks from vocab.json: each token's characters map back to bytes (bytes_to_unicode).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_of = {chr(c): b for b, c in zip(bs, cs)}
    with open(os.path.join(gpt2_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    ranks = {bytes(byte_of[ch] for ch in token): i for token, i in vocab.items() if token != "<|endoftext|>"}
    enc = tiktoken.Encoding(
        name="gpt2_local",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": vocab["<|endoftext|>"]},
    )
    start = time.perf_counter()
    n = 0
    for i in range(0, len(docs), 4096):
        n += sum(len(ids) for ids in enc.encode_ordinary_batch(docs[i:i + 4096], num_threads=threads))
    print("tiktoken", n, time.perf_counter() - start)
except ImportError:
    print("tiktoken skipped: no tiktoken")
