"""Inputs for tests/bench/data_scale.sh (issue 23), written without fjord so the benchmark does not
measure its own writer:

  data_gen.py shards DIR TOKENS SHARD_TOKENS   llm.c version-1 shards of random GPT-2 ids
  data_gen.py text FILE BYTES                  English-like text, one document per line

Uses numpy (Debian's python3-numpy)."""
import os
import sys

import numpy as np


def shards(out, tokens, per):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(23)
    index = 0
    while tokens > 0:
        n = min(per, tokens)
        header = np.zeros(256, dtype="<i4")
        header[0], header[1], header[2] = 20240520, 1, n
        path = os.path.join(out, "train_%06d.bin" % index)
        with open(path + ".tmp", "wb") as f:
            f.write(header.tobytes())
            for begin in range(0, n, 1 << 24):  # 32 MiB of tokens at a time
                f.write(rng.integers(0, 50257, size=min(1 << 24, n - begin), dtype="<u2").tobytes())
        os.rename(path + ".tmp", path)
        tokens -= n
        index += 1


WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there one all we their been has when who will more no if out "
         "so said what up its about into than them can only other new some could time these two may then "
         "do first any my now such like our over man me even most made after also did many before must "
         "fjord river Tromsø Bergen ørret sovereign data tenant shard model 1905 2026 42 — café naïve").split()


def text(path, size):
    rng = np.random.default_rng(7)
    words = np.array(WORDS, dtype=object)
    # A 16 MiB block of lines (documents) of 5..200 words, written repeatedly with a rotating offset.
    lines = []
    block_size = 0
    while block_size < 16 << 20:
        n = int(rng.integers(5, 200))
        line = " ".join(words[rng.integers(0, len(words), size=n)]) + ".\n"
        lines.append(line)
        block_size += len(line.encode())
    block = "".join(lines).encode()
    written = 0
    with open(path, "wb") as f:
        k = 0
        while written < size:
            cut = block.index(b"\n", (k * 7919) % (len(block) // 2)) + 1
            piece = block[cut:] + block[:cut]
            piece = piece[: size - written]
            f.write(piece)
            written += len(piece)
            k += 1


if __name__ == "__main__":
    if sys.argv[1] == "shards":
        shards(sys.argv[2], int(float(sys.argv[3])), int(float(sys.argv[4])))
    elif sys.argv[1] == "text":
        text(sys.argv[2], int(float(sys.argv[3])))
    else:
        sys.exit(__doc__)
