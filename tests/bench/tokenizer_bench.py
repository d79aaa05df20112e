"""Tokenizer encode throughput, fjord against Hugging Face's `tokenizers`, one thread each, same
text, same run. Prints a table (MB/s, and fjord's time over tokenizers') and checks that both
produce the same ids (a benchmark of different work would be meaningless).

    .venv/bin/python tests/bench/tokenizer_bench.py BUILD_DIR [--reps N]

Tokenizers: GPT-2's real files (../shared/data/gpt2) through fjord's gpt2 and hf, and a Llama 3-
shaped byte-level and a Llama 2-shaped byte-fallback tokenizer trained by
tests/runtime/data/hf_tokenizer_oracle.py; text: ../shared/data/tinyshakespeare.txt (1.1 MB).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its pool
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer  # noqa: E402

repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
shared = os.path.join(repo, "..", "shared", "data")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build_dir")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    bench = os.path.join(args.build_dir, "bin", "tokenizer_bench")
    text_file = os.path.join(shared, "tinyshakespeare.txt")
    with open(text_file, encoding="utf-8") as f:
        text = f.read()
    mb = len(text.encode()) / 1e6
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([sys.executable, os.path.join(repo, "tests/runtime/data/hf_tokenizer_oracle.py"), work,
                        os.path.join(shared, "gpt2"), text_file], check=True)
        cases = [("gpt2", "gpt2", os.path.join(shared, "gpt2"), os.path.join(work, "gpt2")),
                 ("gpt2", "hf", os.path.join(work, "gpt2"), os.path.join(work, "gpt2")),
                 ("llama3-shaped", "hf", os.path.join(work, "llama3"), os.path.join(work, "llama3")),
                 ("llama2-shaped", "hf", os.path.join(work, "llama2"), os.path.join(work, "llama2"))]
        print(f"text: {text_file} ({mb:.2f} MB), best of {args.reps}, one thread")
        print(f"| tokenizer | fjord | tokens | fjord MB/s | tokenizers MB/s | fjord time / tokenizers' |")
        print("|---|---|---|---|---|---|")
        for label, name, vocab, hf_dir in cases:
            tok = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
            best = 1e30
            for _ in range(args.reps):
                t0 = time.perf_counter()
                ids = tok.encode(text).ids
                best = min(best, time.perf_counter() - t0)
            out = subprocess.run([bench, name, vocab, text_file, str(args.reps)], check=True,
                                 capture_output=True, text=True).stdout.split()
            n, secs = int(out[0]), float(out[1])
            # The hf tokenizers add a BOS; fjord's gpt2 adds nothing and neither does GPT-2's tokenizer.json.
            if n != len(ids):
                sys.exit(f"{label}/{name}: fjord made {n} tokens, tokenizers {len(ids)}: not the same work")
            print(f"| {label} | {name} | {n} | {mb / secs:.1f} | {mb / best:.1f} | {secs / best:.2f}x |")


if __name__ == "__main__":
    main()
