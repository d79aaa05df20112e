#!/usr/bin/env python3
"""Writes the inputs llm.c's CPU trainer (train_gpt2.c) needs for a benchmark on a given config,
into DIR: gpt2_124M.bin (an llm.c v3 fp32 checkpoint of that shape, GPT-2 init) and
dev/data/tinyshakespeare/tiny_shakespeare_{train,val}.bin (random token shards, llm.c format).
The same shard serves fjord's run, so both trainers see the same kind of tokens.

usage: llmc_inputs.py DIR --layers L --heads H --embd C --seq-len T --vocab V [--tokens N]
"""
import argparse
import os
import struct

import numpy as np


def write_shard(path, tokens):
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = 20240520, 1, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--embd", type=int, required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--tokens", type=int, default=200_000)
    a = p.parse_args()
    L, C, T, V = a.layers, a.embd, a.seq_len, a.vocab
    Vp = (V + 127) // 128 * 128
    rng = np.random.default_rng(1337)
    header = np.zeros(256, dtype=np.int32)
    header[:8] = [20240326, 3, T, V, L, a.heads, C, Vp]
    # llm.c's tensor order: each kind for all layers together.
    shapes = [(Vp, C), (T, C), (L, C), (L, C), (L, 3 * C, C), (L, 3 * C), (L, C, C), (L, C), (L, C), (L, C),
              (L, 4 * C, C), (L, 4 * C), (L, C, 4 * C), (L, C), (C,), (C,)]
    os.makedirs(os.path.join(a.dir, "dev/data/tinyshakespeare"), exist_ok=True)
    with open(os.path.join(a.dir, "gpt2_124M.bin"), "wb") as f:
        f.write(header.tobytes())
        for shape in shapes:
            f.write((rng.standard_normal(shape) * 0.02).astype(np.float32).tobytes())
    for split in ("train", "val"):
        write_shard(os.path.join(a.dir, f"dev/data/tinyshakespeare/tiny_shakespeare_{split}.bin"),
                    rng.integers(0, V, size=a.tokens))


if __name__ == "__main__":
    main()
