#!/usr/bin/env python3
"""GPT-2 training step in PyTorch eager on the CPU: the baseline for fjord's CPU step time.
Same architecture (pre-LayerNorm, tanh GELU, tied embeddings, padded vocab), AdamW, random
tokens. Prints the median step time in ms over --steps after --warmup steps.

usage: torch_cpu_step.py --layers L --heads H --embd C --seq-len T --vocab V --batch B --threads N
"""
import argparse
import statistics
import time

import torch

from torch_gpt import GPT


def main():
    p = argparse.ArgumentParser()
    for name in ("layers", "heads", "embd", "seq-len", "vocab", "batch"):
        p.add_argument("--" + name, type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(1337)
    torch.set_num_threads(a.threads)
    model = GPT(a.layers, a.heads, a.embd, a.seq_len, a.vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    times = []
    for step in range(a.warmup + a.steps):
        idx = torch.randint(0, a.vocab, (a.batch, a.seq_len))
        tgt = torch.randint(0, a.vocab, (a.batch, a.seq_len))
        t0 = time.perf_counter()
        loss = model(idx, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = (time.perf_counter() - t0) * 1000
        if step >= a.warmup:
            times.append(dt)
    print(f"torch {torch.__version__} median_ms {statistics.median(times):.2f} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
