#!/usr/bin/env python3
"""fjord's Llama (model.arch LLAMA) in PyTorch eager, for tests/bench/llama_step.sh: RMSNorm, rotary
embeddings in Hugging Face's rotate_half layout, SwiGLU, grouped-query attention (K and V expanded per
query head, as transformers' eager attention does), no biases, an untied lm_head over the vocabulary
padded to a multiple of 128 (padded logits never enter the softmax), AdamW. Prints the median step time
in ms over --steps after --warmup steps.

usage: torch_llama.py --layers L --heads H --kv-heads KV --embd C --intermediate I --seq-len T --vocab V
                      --batch B --threads N
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


class RMSNorm(nn.Module):
    def __init__(self, C, eps=1e-5):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(C)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(nn.Module):
    def __init__(self, C, H, KV, I):
        super().__init__()
        self.H, self.KV, self.hs = H, KV, C // H
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(C), RMSNorm(C)
        self.q_proj = nn.Linear(C, C, bias=False)
        self.k_proj = nn.Linear(C, KV * self.hs, bias=False)
        self.v_proj = nn.Linear(C, KV * self.hs, bias=False)
        self.o_proj = nn.Linear(C, C, bias=False)
        self.gate_proj, self.up_proj = nn.Linear(C, I, bias=False), nn.Linear(C, I, bias=False)
        self.down_proj = nn.Linear(I, C, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.H, self.hs).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.KV, self.hs).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.KV, self.hs).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(self.H // self.KV, dim=1)
        v = v.repeat_interleave(self.H // self.KV, dim=1)
        if HAS_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.hs)
            mask = torch.ones(T, T, dtype=torch.bool).tril()
            y = att.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
        x = x + self.o_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, L, H, KV, C, I, T, V, theta=500000.0):
        super().__init__()
        self.V, self.Vp = V, (V + 127) // 128 * 128
        self.embed_tokens = nn.Embedding(self.Vp, C)
        self.layers = nn.ModuleList(Block(C, H, KV, I) for _ in range(L))
        self.norm = RMSNorm(C)
        self.lm_head = nn.Linear(C, self.Vp, bias=False)
        hs = C // H
        inv = 1.0 / theta ** (torch.arange(0, hs, 2).float() / hs)
        ang = torch.arange(T).float()[:, None] * inv[None, :]
        emb = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", emb.cos()[None, None])
        self.register_buffer("sin", emb.sin()[None, None])
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, self.cos[:, :, :T], self.sin[:, :, :T])
        logits = self.lm_head(self.norm(x))[..., : self.V]
        return F.cross_entropy(logits.reshape(-1, self.V), targets.reshape(-1))


def main():
    p = argparse.ArgumentParser()
    for name in ("layers", "heads", "kv-heads", "embd", "intermediate", "seq-len", "vocab", "batch"):
        p.add_argument("--" + name, type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(1337)
    torch.set_num_threads(a.threads)
    model = Llama(a.layers, a.heads, a.kv_heads, a.embd, a.intermediate, a.seq_len, a.vocab)
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
