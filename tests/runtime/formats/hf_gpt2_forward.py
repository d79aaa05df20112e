#!/usr/bin/env python3
"""An independent oracle for `fjord export --format hf`: Hugging Face's GPT2LMHeadModel forward and
loss, written from transformers' modeling_gpt2.py semantics in numpy float64, without transformers,
torch or any fjord code.

    hf_gpt2_forward.py MODEL_DIR TOKENS_FILE

MODEL_DIR holds config.json and model.safetensors as `GPT2LMHeadModel.from_pretrained(MODEL_DIR)`
reads them. TOKENS_FILE has one sequence per line (token ids separated by spaces), all of the same
length L: the batch of input_ids. The loss is what `model(input_ids, labels=input_ids).loss`
returns: logits[:, :-1] scored against input_ids[:, 1:], the mean cross-entropy over all B * (L - 1)
predictions. Prints one JSON line {"loss": ..., "predictions": ..., "sequences": ...}.

It refuses (exit 1, a message naming the file and the tensor or key) anything transformers would
load differently from what this forward computes, or not at all: a tensor name it does not expect,
a missing tensor, a shape other than the Conv1D layout [in, out] the config implies, a safetensors
file that breaks the format's rules, or a config option it does not implement. So a naming or
layout bug in the exporter fails loudly or changes the loss; it never passes silently.
"""

import json
import math
import struct
import sys

import numpy as np


class Refusal(Exception):
    pass


# --- model.safetensors: 8-byte little-endian header length, a JSON header, then the raw tensors. ---

_DTYPES = {'F64': ('<f8', 8), 'F32': ('<f4', 4), 'F16': ('<f2', 2), 'BF16': (None, 2)}


def read_safetensors(path):
    """Returns ({name: float64 array}, metadata) after checking the format's rules."""
    with open(path, 'rb') as f:
        blob = f.read()
    if len(blob) < 8:
        raise Refusal(f'{path}: {len(blob)} bytes, too short for the 8-byte header length')
    (n,) = struct.unpack('<Q', blob[:8])
    if 8 + n > len(blob):
        raise Refusal(f'{path}: header length {n} runs past the end of the file ({len(blob)} bytes)')
    try:
        header = json.loads(blob[8:8 + n].decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Refusal(f'{path}: the header is not JSON: {e}')
    if not isinstance(header, dict):
        raise Refusal(f'{path}: the header is not a JSON object')
    metadata = header.pop('__metadata__', {})
    data = blob[8 + n:]
    tensors, spans = {}, []
    for name, info in header.items():
        where = f'{path}: tensor "{name}"'
        if not isinstance(info, dict) or set(info) != {'dtype', 'shape', 'data_offsets'}:
            raise Refusal(f'{where}: entry must have exactly dtype, shape and data_offsets')
        dtype, shape, offsets = info['dtype'], info['shape'], info['data_offsets']
        if dtype not in _DTYPES:
            raise Refusal(f'{where}: dtype {dtype} is not one of {sorted(_DTYPES)}')
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise Refusal(f'{where}: shape {shape} is not a list of sizes')
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= len(data)):
            raise Refusal(f'{where}: data_offsets {offsets} outside the {len(data)}-byte buffer')
        numel = math.prod(shape)
        begin, end = offsets
        if end - begin != numel * _DTYPES[dtype][1]:
            raise Refusal(f'{where}: {end - begin} bytes for shape {shape} of {dtype}')
        raw = data[begin:end]
        if dtype == 'BF16':  # the high half of an IEEE float32
            values = (np.frombuffer(raw, dtype='<u2').astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.frombuffer(raw, dtype=_DTYPES[dtype][0])
        tensors[name] = values.astype(np.float64).reshape(shape)
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise Refusal(f'{path}: tensor "{name}" starts at byte {begin}, expected {pos} (a hole or an overlap)')
        pos = end
    if pos != len(data):
        raise Refusal(f'{path}: {len(data) - pos} bytes after the last tensor')
    return tensors, metadata


# --- config.json, with GPT2Config's defaults for absent keys. ---

_DEFAULTS = {
    'vocab_size': 50257, 'n_positions': 1024, 'n_embd': 768, 'n_layer': 12, 'n_head': 12, 'n_inner': None,
    'activation_function': 'gelu_new', 'layer_norm_epsilon': 1e-5, 'scale_attn_weights': True,
    'scale_attn_by_inverse_layer_idx': False, 'reorder_and_upcast_attn': False, 'add_cross_attention': False,
    'tie_word_embeddings': True,
}


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * np.power(x, 3.0))))


def gelu_erf(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


# transformers' ACT2FN entries this oracle implements; "gelu_new" is GPT-2's tanh approximation.
_ACTIVATIONS = {'gelu_new': gelu_tanh, 'gelu_pytorch_tanh': gelu_tanh, 'gelu': gelu_erf,
                'relu': lambda x: np.maximum(x, 0.0)}


def read_config(path):
    with open(path) as f:
        raw = json.load(f)
    if raw.get('model_type') != 'gpt2':
        raise Refusal(f'{path}: model_type is {raw.get("model_type")!r}, not "gpt2"')
    c = dict(_DEFAULTS)
    c.update({k: raw[k] for k in _DEFAULTS if k in raw})
    for key in ('vocab_size', 'n_positions', 'n_embd', 'n_layer', 'n_head'):
        if not (isinstance(c[key], int) and not isinstance(c[key], bool) and c[key] > 0):
            raise Refusal(f'{path}: "{key}" must be a positive integer, got {c[key]!r}')
    if c['n_embd'] % c['n_head']:
        raise Refusal(f'{path}: n_embd {c["n_embd"]} is not divisible by n_head {c["n_head"]}')
    if c['n_inner'] is None:
        c['n_inner'] = 4 * c['n_embd']
    if c['activation_function'] not in _ACTIVATIONS:
        raise Refusal(f'{path}: activation_function {c["activation_function"]!r} is not one of {sorted(_ACTIVATIONS)}')
    if c['add_cross_attention']:
        raise Refusal(f'{path}: add_cross_attention is not implemented here')
    return c


# --- The expected state dict: names and shapes, Conv1D weights stored [in, out]. ---

def expected_shapes(c, prefix):
    C, I, V, P = c['n_embd'], c['n_inner'], c['vocab_size'], c['n_positions']
    shapes = {prefix + 'wte.weight': [V, C], prefix + 'wpe.weight': [P, C],
              prefix + 'ln_f.weight': [C], prefix + 'ln_f.bias': [C]}
    for l in range(c['n_layer']):
        h = f'{prefix}h.{l}.'
        shapes.update({
            h + 'ln_1.weight': [C], h + 'ln_1.bias': [C],
            h + 'attn.c_attn.weight': [C, 3 * C], h + 'attn.c_attn.bias': [3 * C],
            h + 'attn.c_proj.weight': [C, C], h + 'attn.c_proj.bias': [C],
            h + 'ln_2.weight': [C], h + 'ln_2.bias': [C],
            h + 'mlp.c_fc.weight': [C, I], h + 'mlp.c_fc.bias': [I],
            h + 'mlp.c_proj.weight': [I, C], h + 'mlp.c_proj.bias': [C],
        })
    return shapes


def load_weights(model_dir, c):
    path = model_dir + '/model.safetensors'
    tensors, metadata = read_safetensors(path)
    if not isinstance(metadata, dict) or metadata.get('format') != 'pt':
        raise Refusal(f'{path}: __metadata__ must have "format": "pt" (transformers refuses the file without it), '
                      f'got {metadata!r}')
    # GPT2LMHeadModel's own names carry "transformer."; a bare GPT2Model checkpoint has none, and
    # transformers adds the prefix to every name. A mix loads neither way.
    prefix = 'transformer.' if any(k.startswith('transformer.') for k in tensors) else ''
    shapes = expected_shapes(c, prefix)
    V, C = c['vocab_size'], c['n_embd']
    for name, t in tensors.items():
        if name in shapes:
            want = shapes[name]
        elif name == 'lm_head.weight':
            want = [V, C]
        elif name.startswith(f'{prefix}h.') and name.endswith(('.attn.bias', '.attn.masked_bias')):
            continue  # causal-mask buffers older transformers saved; ignored on load
        else:
            raise Refusal(f'{path}: unexpected tensor "{name}" {list(t.shape)} for a {c["n_layer"]}-layer GPT-2 '
                          f'(names {"with" if prefix else "without"} the "transformer." prefix)')
        if list(t.shape) != want:
            raise Refusal(f'{path}: tensor "{name}" has shape {list(t.shape)}, expected {want}')
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise Refusal(f'{path}: tensor "{missing[0]}" is missing ({len(missing)} missing in all)')
    w = {name[len(prefix):]: tensors[name] for name in shapes}
    if c['tie_word_embeddings']:
        # from_pretrained ties lm_head to wte after loading, so a stored lm_head.weight is not used.
        if 'lm_head.weight' in tensors and not np.array_equal(tensors['lm_head.weight'], w['wte.weight']):
            print(f'hf_gpt2_forward: note: {path}: lm_head.weight differs from wte.weight; tied, so wte is used',
                  file=sys.stderr)
        w['lm_head.weight'] = w['wte.weight']
    elif 'lm_head.weight' in tensors:
        w['lm_head.weight'] = tensors['lm_head.weight']
    else:
        raise Refusal(f'{path}: tie_word_embeddings is false but lm_head.weight is missing')
    return w


# --- GPT2LMHeadModel.forward(input_ids, labels=input_ids) in eval mode (dropout off). ---

def layer_norm(x, weight, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased, as torch.nn.LayerNorm
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def conv1d(x, weight, bias):
    return x @ weight + bias  # transformers' Conv1D: weight is [in, out]


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def forward_loss(w, c, ids):
    B, L = ids.shape
    C, H = c['n_embd'], c['n_head']
    D = C // H
    eps = float(c['layer_norm_epsilon'])
    act = _ACTIVATIONS[c['activation_function']]
    x = w['wte.weight'][ids] + w['wpe.weight'][np.arange(L)]
    causal = np.tril(np.ones((L, L), dtype=bool))
    for l in range(c['n_layer']):
        p = f'h.{l}.'
        h = layer_norm(x, w[p + 'ln_1.weight'], w[p + 'ln_1.bias'], eps)
        qkv = conv1d(h, w[p + 'attn.c_attn.weight'], w[p + 'attn.c_attn.bias'])
        q, k, v = (t.reshape(B, L, H, D).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))
        scores = q @ k.transpose(0, 1, 3, 2)
        if c['scale_attn_weights']:
            scores = scores / math.sqrt(D)
        if c['scale_attn_by_inverse_layer_idx']:
            scores = scores / float(l + 1)
        scores = np.where(causal, scores, np.finfo(np.float64).min)
        y = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(B, L, C)
        x = x + conv1d(y, w[p + 'attn.c_proj.weight'], w[p + 'attn.c_proj.bias'])
        h = layer_norm(x, w[p + 'ln_2.weight'], w[p + 'ln_2.bias'], eps)
        m = act(conv1d(h, w[p + 'mlp.c_fc.weight'], w[p + 'mlp.c_fc.bias']))
        x = x + conv1d(m, w[p + 'mlp.c_proj.weight'], w[p + 'mlp.c_proj.bias'])
    x = layer_norm(x, w['ln_f.weight'], w['ln_f.bias'], eps)
    logits = x @ w['lm_head.weight'].T  # nn.Linear without bias
    shift_logits, shift_labels = logits[:, :-1, :], ids[:, 1:]
    top = shift_logits.max(axis=-1)
    logsumexp = top + np.log(np.exp(shift_logits - top[..., None]).sum(axis=-1))
    picked = np.take_along_axis(shift_logits, shift_labels[..., None], axis=-1)[..., 0]
    return float((logsumexp - picked).mean()), shift_labels.size


def read_tokens(path, c):
    with open(path) as f:
        rows = [[int(t) for t in line.split()] for line in f if line.strip()]
    if not rows:
        raise Refusal(f'{path}: no sequences')
    if len({len(r) for r in rows}) != 1:
        raise Refusal(f'{path}: sequences of different lengths {sorted({len(r) for r in rows})}')
    ids = np.array(rows, dtype=np.int64)
    if ids.shape[1] < 2 or ids.shape[1] > c['n_positions']:
        raise Refusal(f'{path}: sequence length {ids.shape[1]} outside [2, n_positions {c["n_positions"]}]')
    if ids.min() < 0 or ids.max() >= c['vocab_size']:
        raise Refusal(f'{path}: token ids must be in [0, vocab_size {c["vocab_size"]})')
    return ids


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    model_dir, tokens_path = argv[1], argv[2]
    try:
        c = read_config(model_dir + '/config.json')
        w = load_weights(model_dir, c)
        ids = read_tokens(tokens_path, c)
        loss, predictions = forward_loss(w, c, ids)
    except (Refusal, OSError, ValueError) as e:
        print(f'hf_gpt2_forward: error: {e}', file=sys.stderr)
        return 1
    print(json.dumps({'loss': loss, 'predictions': predictions, 'sequences': ids.shape[0]}))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
