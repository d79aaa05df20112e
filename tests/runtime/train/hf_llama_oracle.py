"""The Hugging Face oracle of hf_llama_oracle_test.cc (transformers over PyTorch, in the test venv).

  make DIR [CASE]   tiny random LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM checkpoints,
                    made and saved by transformers itself (save_pretrained: single file and sharded,
                    fp32, bf16 and fp16), under DIR/<case>/, and DIR/reference.json with, per case, the
                    tokens, transformers' fp32 loss, the logits of sequence 0 and the norm of every
                    parameter's gradient (PyTorch autograd).
  shardloss MODEL SHARD B T BATCHES  prints {"loss": ...}: the mean loss over the first BATCHES
                    batches of B windows of T+1 tokens (window w = tokens[w*T : w*T+T+1]) of an
                    llm.c shard (256 int32 header, uint16 tokens): what `fjord eval` scores.
  loss MODEL TOKENS  loads MODEL with from_pretrained and prints {"loss": ...} on TOKENS (a JSON file
                    [[ids of row 0], ...], each row T+1 long: inputs then the shifted targets).

Nothing is downloaded: every model is built from a config written here.
"""
import json
import sys

import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

torch.set_num_threads(1)

VOCAB = 300  # not a multiple of 128: fjord pads the embedding, the file does not
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
              initializer_range=0.1)


def cases():
    llama = LlamaConfig(**COMMON, rope_theta=500000.0, tie_word_embeddings=False,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    mistral = MistralConfig(**COMMON, rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False)
    qwen = Qwen2Config(**COMMON, rope_theta=1000000.0, tie_word_embeddings=False)
    qwen_tied = Qwen2Config(**COMMON, rope_theta=1000000.0, tie_word_embeddings=True)
    llama_plain = LlamaConfig(**COMMON, rope_theta=10000.0, tie_word_embeddings=False)
    return [
        ("llama_fp32_sharded", LlamaForCausalLM, llama, torch.float32, "40KB"),
        ("llama_bf16_single", LlamaForCausalLM, llama, torch.bfloat16, None),
        ("mistral_fp32_single", MistralForCausalLM, mistral, torch.float32, None),
        ("mistral_bf16_sharded", MistralForCausalLM, mistral, torch.bfloat16, "40KB"),
        ("qwen2_fp32_single", Qwen2ForCausalLM, qwen, torch.float32, None),
        ("qwen2_bf16_sharded", Qwen2ForCausalLM, qwen, torch.bfloat16, "40KB"),
        ("qwen2_tied_fp32_single", Qwen2ForCausalLM, qwen_tied, torch.float32, None),
        ("llama_finetune", LlamaForCausalLM, llama_plain, torch.float32, None),  # llama_finetune_test
        ("mistral_fp16_single", MistralForCausalLM, mistral, torch.float16, None),
    ]


def loss_of(model, ids):
    logits = model(ids[:, :-1]).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return loss, logits


def make(out, only=None):
    reference = {"transformers": transformers.__version__, "torch": torch.__version__, "cases": []}
    for i, (name, cls, config, dtype, shard) in enumerate(cases()):
        if only and name != only:
            continue
        torch.manual_seed(1000 + i)
        config._attn_implementation = "eager"
        model = cls(config).eval()
        with torch.no_grad():  # random norms and biases too, so a misplaced one shows
            for pname, p in model.named_parameters():
                if p.dim() == 1:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in pname else 0.1 * torch.randn_like(p))
        model = model.to(dtype)
        path = f"{out}/{name}"
        model.save_pretrained(path, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
        # The oracle: the saved weights, in fp32 (bf16 values are exact in fp32), autograd in fp32.
        oracle = cls.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager").eval()
        g = torch.Generator().manual_seed(7 + i)
        ids = torch.randint(0, VOCAB, (2, 17), generator=g)
        loss, logits = loss_of(oracle, ids)
        loss.backward()
        grads = {n: float(p.grad.double().norm()) for n, p in oracle.named_parameters()}
        reference["cases"].append({
            "name": name, "dir": path, "sharded": shard is not None, "dtype": str(dtype),
            "tokens": ids.tolist(), "loss": float(loss), "logits0": logits[0].double().flatten().tolist(),
            "grad_norms": grads,
        })
    with open(f"{out}/reference.json", "w") as f:
        json.dump(reference, f)


def loss_main(model_dir, tokens_path):
    with open(tokens_path) as f:
        ids = torch.tensor(json.load(f))
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        loss, _ = loss_of(model, ids)
    print(json.dumps({"loss": float(loss), "class": type(model).__name__}))


def shardloss_main(model_dir, shard, B, T, batches):
    import numpy as np
    header = np.fromfile(shard, dtype=np.int32, count=256)
    assert header[0] == 20240520 and header[1] == 1, header[:3]
    tokens = np.fromfile(shard, dtype=np.uint16, offset=1024, count=int(header[2])).astype(np.int64)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(batches):
            rows = [tokens[(b * B + r) * T:(b * B + r) * T + T + 1] for r in range(B)]
            loss, _ = loss_of(model, torch.tensor(np.stack(rows)))
            total += float(loss) * B * T
            count += B * T
    print(json.dumps({"loss": total / count, "tokens": count}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    elif sys.argv[1] == "shardloss":
        shardloss_main(sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7]))
    elif sys.argv[1] == "loss":
        loss_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: hf_llama_oracle.py make DIR [CASE] | loss MODEL TOKENS")
