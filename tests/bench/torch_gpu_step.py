#!/usr/bin/env python3
"""GPT-2 in PyTorch, the yardstick of scripts/gpu-check.sh (docs/PERFORMANCE.md, "GPU check").

Two jobs, both on the same model as fjord (pre-LayerNorm, tanh GELU, learned positions, tied
embeddings, vocabulary padded to a multiple of 128 for the classifier):

  --loss: the mean cross-entropy of weights exported by `fjord export` (HF GPT-2 safetensors,
      parsed here without the safetensors package) on the first --eval-batches x --batch
      sequences of an llm.c token shard, cut as fjord's unshuffled loader cuts them (sequence k
      is tokens[k*T : k*T + T + 1]). Prints the fp32 loss, and the bf16-autocast loss on CUDA.
  timing (default): training steps with bf16 autocast (CUDA), fused AdamW and
      scaled_dot_product_attention where this PyTorch has them, eager and torch.compile; prints
      tokens/s per mode. --ceilings also measures a device-to-device copy (GB/s, bytes read +
      written) and an 8192^3 bf16 matmul (cuBLAS, TFLOP/s) on random data.

The last line is one JSON object with every number. Runs on the CPU too (Debian's torch 1.13:
no torch.compile, no fused AdamW, no SDPA; each is reported as skipped) at a tiny size for tests.
"""
import argparse
import contextlib
import json
import os
import statistics
import struct
import sys
import time

import torch

from torch_gpt import GPT, HAS_SDPA


# --- fjord export's safetensors, read without the safetensors package ---------------------------

def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: tensor {name} is {info['dtype']}; fjord export writes F32")
        lo, hi = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[lo:hi]), dtype=torch.float32)
        out[name[len("transformer."):] if name.startswith("transformer.") else name] = t.view(info["shape"])
    return out


def load_fjord_export(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    model = GPT(cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["n_positions"], cfg["vocab_size"])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.wte.weight[: cfg["vocab_size"]] = w["wte.weight"][: cfg["vocab_size"]]
        model.wpe.weight.copy_(w["wpe.weight"])
        model.ln_f.weight.copy_(w["ln_f.weight"]), model.ln_f.bias.copy_(w["ln_f.bias"])
        for l, b in enumerate(model.h):
            p = f"h.{l}."
            for ln in ("ln_1", "ln_2"):
                getattr(b, ln).weight.copy_(w[p + ln + ".weight"]), getattr(b, ln).bias.copy_(w[p + ln + ".bias"])
            # HF GPT-2 stores Conv1D weights as [in, out]; nn.Linear wants [out, in].
            for ours, theirs in (("c_attn", "attn.c_attn"), ("c_proj", "attn.c_proj"), ("c_fc", "mlp.c_fc"),
                                 ("mlp_proj", "mlp.c_proj")):
                getattr(b, ours).weight.copy_(w[p + theirs + ".weight"].t())
                getattr(b, ours).bias.copy_(w[p + theirs + ".bias"])
    return model, cfg


def read_shard(path):
    with open(path, "rb") as f:
        header = struct.unpack("<256i", f.read(1024))
        if header[0] != 20240520:
            raise SystemExit(f"{path}: magic {header[0]} is not llm.c's 20240520")
        return torch.frombuffer(bytearray(f.read(2 * header[2])), dtype=torch.int16).to(torch.int64) & 0xFFFF


def loss_mode(a, device):
    model, cfg = load_fjord_export(a.loss)
    model = model.to(device).eval()
    tokens = read_shard(a.tokens)
    T, B = a.seq_len or cfg["n_positions"], a.batch
    losses = {"fp32": [], "bf16": []}
    with torch.no_grad():
        for i in range(a.eval_batches):
            seqs = [tokens[k * T: k * T + T + 1] for k in range(i * B, i * B + B)]
            batch = torch.stack(seqs).to(device)
            losses["fp32"].append(model(batch[:, :-1], batch[:, 1:]).item())
            if device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    losses["bf16"].append(model(batch[:, :-1], batch[:, 1:]).item())
    out = {k: sum(v) / len(v) for k, v in losses.items() if v}
    print(f"torch_gpu_step: loss of {a.loss} on {a.eval_batches} x {B} x {T} tokens: " +
          ", ".join(f"{k} {v:.6f}" for k, v in out.items()))
    return {"loss_" + k: v for k, v in out.items()}


# --- timing -----------------------------------------------------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, opt, a, device, steps):
    """Median ms of `steps` training steps after a.warmup, on random tokens."""
    times = []
    def autocast():
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", dtype=torch.bfloat16) if a.cpu_bf16 else contextlib.nullcontext()
    for step in range(a.warmup + steps):
        idx = torch.randint(0, a.vocab, (a.batch, a.seq_len), device=device)
        tgt = torch.randint(0, a.vocab, (a.batch, a.seq_len), device=device)
        sync(device)
        t0 = time.perf_counter()
        with autocast():
            loss = model(idx, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if step >= a.warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), loss.item()


def make_optimizer(model, device):
    kwargs = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    if device.type == "cuda":
        try:
            return torch.optim.AdamW(model.parameters(), fused=True, **kwargs), "fused"
        except (TypeError, RuntimeError) as e:  # torch < 2.0, or a build without it
            print(f"torch_gpu_step: fused AdamW unavailable ({e}); using the default", file=sys.stderr)
    return torch.optim.AdamW(model.parameters(), **kwargs), "default"


def timing_mode(a, device):
    results = {}
    for mode in a.modes.split(","):
        torch.manual_seed(1337)
        model = GPT(a.layers, a.heads, a.embd, a.seq_len, a.vocab).to(device)
        opt, kind = make_optimizer(model, device)
        if mode == "compile":
            if not hasattr(torch, "compile"):
                print(f"torch_gpu_step: mode compile skipped: torch {torch.__version__} has no torch.compile")
                results["compile"] = None
                continue
            model = torch.compile(model)
        try:
            ms, loss = time_steps(model, opt, a, device, a.steps)
        except getattr(torch.cuda, "OutOfMemoryError", RuntimeError) as e:
            print(f"torch_gpu_step: mode {mode} batch {a.batch}: out of memory ({str(e)[:80]})")
            results[mode] = None
            continue
        except Exception as e:  # e.g. torch.compile's backend: keep the other mode's numbers and the JSON
            print(f"torch_gpu_step: mode {mode} batch {a.batch}: failed ({type(e).__name__}: "
                  f"{' '.join(str(e).split())[:200]})")
            results[mode] = None
            continue
        tok_s = a.batch * a.seq_len / (ms / 1000)
        print(f"torch_gpu_step: torch {torch.__version__} {device} mode {mode} batch {a.batch} seq {a.seq_len}: "
              f"{ms:.2f} ms/step, {tok_s:.0f} tokens/s, AdamW {kind}, sdpa {HAS_SDPA}, last loss {loss:.4f}")
        results[mode] = {"ms": ms, "tokens_per_s": tok_s, "adamw": kind, "sdpa": HAS_SDPA}
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def ceilings(device):
    """Measured ceilings: device-to-device copy and bf16 matmul, median of 10 after 3 warm-ups."""
    def bench(fn, reps=10):
        for _ in range(3):
            fn()
        sync(device)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync(device)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)
    big = 1 << 30 if device.type == "cuda" else 1 << 24
    src = torch.rand(big // 4, device=device)
    dst = torch.empty_like(src)
    copy_s = bench(lambda: dst.copy_(src))
    n = 8192 if device.type == "cuda" else 256
    x = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    y = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm_s = bench(lambda: x @ y)
    out = {"copy_gb_s": 2 * big / copy_s / 1e9, "bf16_matmul_tflop_s": 2 * n ** 3 / mm_s / 1e12, "matmul_n": n}
    print(f"torch_gpu_step: ceilings on {device}: copy {out['copy_gb_s']:.0f} GB/s (read + write), "
          f"bf16 matmul {n}^3 {out['bf16_matmul_tflop_s']:.1f} TFLOP/s")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--embd", type=int, default=768)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cpu-bf16", action="store_true", help="autocast to bf16 on the CPU as well")
    p.add_argument("--ceilings", action="store_true")
    p.add_argument("--loss", metavar="EXPORT_DIR", help="fjord export output (config.json + model.safetensors)")
    p.add_argument("--tokens", metavar="SHARD", help="llm.c token shard for --loss")
    p.add_argument("--eval-batches", type=int, default=1)
    a = p.parse_args()
    device = torch.device(a.device)
    summary = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name()
    if a.loss:
        if not a.tokens:
            p.error("--loss needs --tokens SHARD")
        summary.update(loss_mode(a, device))
    else:
        if a.ceilings:
            summary["ceilings"] = ceilings(device)
        summary["steps"] = timing_mode(a, device)
        summary["config"] = {k: getattr(a, k) for k in ("layers", "heads", "embd", "seq_len", "vocab", "batch")}
    print("torch_gpu_step_json " + json.dumps(summary))


if __name__ == "__main__":
    main()
