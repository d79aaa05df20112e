#!/usr/bin/env python3
"""GPT-2 training step in PyTorch eager on the CPU: the baseline for fjord's CPU step time.
Same architecture (pre-LayerNorm, tanh GELU, tied embeddings, padded vocab), AdamW, random
tokens. Prints the median step time in ms over --steps after --warmup steps.

usage: torch_cpu_step.py --layers L --heads H --embd C --seq-len T --vocab V --batch B --threads N
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):  # PyTorch >= 2.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            mask = torch.ones(T, T, dtype=torch.bool).tril()
            y = att.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, L, H, C, T, Vp):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(Vp, C), nn.Embedding(T, C)
        self.h = nn.ModuleList(Block(C, H) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)

    def forward(self, idx, targets, V):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits[..., :V].reshape(-1, V), targets.reshape(-1))


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
    Vp = (a.vocab + 127) // 128 * 128
    model = GPT(a.layers, a.heads, a.embd, a.seq_len, Vp)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    times = []
    for step in range(a.warmup + a.steps):
        idx = torch.randint(0, a.vocab, (a.batch, a.seq_len))
        tgt = torch.randint(0, a.vocab, (a.batch, a.seq_len))
        t0 = time.perf_counter()
        loss = model(idx, tgt, a.vocab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = (time.perf_counter() - t0) * 1000
        if step >= a.warmup:
            times.append(dt)
    print(f"torch {torch.__version__} median_ms {statistics.median(times):.2f} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
