#!/usr/bin/python3
"""PyTorch reference for rilq's LLaMA forward pass (the oracle of the parity tests).

Run it with the system interpreter, /usr/bin/python3, which has Debian's
python3-torch and numpy. Nothing else is needed: safetensors files are read and
written by the small functions below, and the forward pass is written out here
instead of importing transformers, so this file is the one place that says what
"HF LlamaForCausalLM semantics" means for rilq.

The model is a set of plain functions over a dict of tensors (HF tensor names),
so a later LoRA reference can wrap the projections and call autograd.

Subcommands
    make-random-hf OUTDIR [--seed S] [--dtype F32|BF16|F16] [--shards N] [--tied]
        A random-weight LLaMA as an HF directory (config.json + safetensors).
    logits MODEL (--tokens 1,5,7 | --batch-file FILE) --out FILE
        MODEL is an HF directory or a llama2.c .bin. Writes a logits file.
    greedy MODEL --tokens 1,403 --n 32
        Greedy continuation (argmax, full recompute each step); prints the ids.
    fixtures OUTDIR
        Everything tests/test_parity.c reads (see write_fixtures). Exits 77 when
        torch is missing (fails under CI=true).
    grad-fixtures OUTDIR
        Everything tests/test_parity_grad.c reads (see write_grad_fixtures): the
        RILQ loss of one batch with LoRA / QA-LoRA adapters on all seven
        projections and its adapter gradients by autograd, in float64 and
        float32. Same exit-77 rule.

Logits file format (little-endian; what tests/test_parity.c reads):
    int32 magic = 0x474C5152 ("RQLG" as bytes), int32 version = 1,
    int32 B, int32 T, int32 V,
    int32 tokens[B][T]          the input tokens the logits belong to,
    float32 logits[B][T][V]     logits[b][t] = scores for the token after tokens[b][t].

Gradient file format (little-endian; what tests/test_parity_grad.c reads):
    int32 magic = 0x46475152 ("RQGF" as bytes), int32 version = 1,
    int32 B, T, dim, n_layers, vocab,
    int32 type (0 LoRA, 1 QA-LoRA), int32 r, int32 group_size (0 for LoRA), float32 alpha,
    float64 loss (fp64 autograd run), float64 loss (fp32 run), float64 ce, float64 mse (fp64),
    float64 adam_lr,
    int32 tokens[B][T], int32 targets[B][T] (-100 = not counted), float32 teacher[B][T][dim],
    then for each layer, for each projection in q k v o gate up down order:
        int32 out, int32 a_cols,
        float32 A[r][a_cols], float32 B[out][r]     the adapter values both sides start from,
        float64 dA[r][a_cols], float64 dB[out][r]   d loss / d A, B from the fp64 run,
        float32 dA, dB                              the same from the fp32 run (torch's own noise),
        float64 A1, B1                              A, B after one torch.optim.Adam step (lr adam_lr,
                                                    default betas and eps) from the fp64 gradients,
    int32 end = 0x444E4547 ("GEND" as bytes).
    loss = 0.5 * (mean cross-entropy over counted targets) + 0.5 * (mean over all
    elements of (final hidden after the final norm - teacher)^2).
"""

import argparse
import json
import math
import os
import struct
import sys

try:
    import numpy as np
    import torch
except ImportError as e:  # the fixture must not fail a machine without torch, except under CI
    if os.environ.get("CI") in ("true", "1"):
        print("FAILED: PyTorch reference needs torch and numpy under CI: %s" % e, file=sys.stderr)
        sys.exit(1)
    print("SKIPPED: torch/numpy not importable (%s); install python3-torch" % e, file=sys.stderr)
    sys.exit(77)

LOGITS_MAGIC = 0x474C5152
LOGITS_VERSION = 1

# ---------------------------------------------------------------------------
# safetensors: read and write (F32, F16, BF16)

_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1}


def f32_to_bf16_bits(a):
    """fp32 array -> uint16 bf16 bit patterns, round to nearest even; NaN stays NaN.

    Done on the bit patterns (not torch's .to(bfloat16)) so the rounding rule is
    visibly the one formats-and-eval.md 2.2 prescribes for the C writer too."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(a, dtype=np.float32))
    rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)  # keep a quiet NaN
    return rounded


def bf16_bits_to_f32(u):
    return (np.asarray(u, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _encode(arr, dtype):
    if dtype == "F32":
        return np.ascontiguousarray(arr, dtype="<f4").tobytes()
    if dtype == "F16":
        return np.ascontiguousarray(arr, dtype="<f2").tobytes()  # numpy rounds to nearest even
    if dtype == "BF16":
        return f32_to_bf16_bits(arr).astype("<u2").tobytes()
    raise ValueError("unsupported dtype " + dtype)


def write_safetensors(path, tensors, dtype):
    """tensors: name -> float32 numpy array. All are stored as dtype.

    Layout per formats-and-eval.md 2.1/2.3: u64 header length, JSON header with
    {"format": "pt"} metadata padded with spaces to a multiple of 8, then the
    data buffer. One dtype per file, so ordering by alignment is ordering by name."""
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = tensors[name]
        blob = _encode(arr, dtype)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    tmp = path + ".tmp.%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)
    return offset


def read_safetensors(path):
    """name -> float32 torch tensor. Checks the offsets tile the buffer."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError("%s: too short for a safetensors file" % path)
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("%s: header length %d exceeds file" % (path, n))
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = info["dtype"], info["shape"]
        begin, end = info["data_offsets"]
        count = int(np.prod(shape)) if shape else 1
        if dtype not in _DTYPE_BYTES or end - begin != count * _DTYPE_BYTES[dtype]:
            raise ValueError("%s: tensor %s: bad dtype/size" % (path, name))
        raw = data[base + begin : base + end]
        if dtype == "F32":
            arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        elif dtype == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dtype == "BF16":
            arr = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            raise ValueError("%s: tensor %s: dtype %s is not a float type" % (path, name, dtype))
        out[name] = torch.from_numpy(arr.reshape(shape).copy())
        spans.append((begin, end))
    spans.sort()
    pos = 0
    for begin, end in spans:
        if begin != pos:
            raise ValueError("%s: data offsets leave a hole or overlap at %d" % (path, begin))
        pos = end
    if base + pos != len(data):
        raise ValueError("%s: data buffer has %d trailing bytes" % (path, len(data) - base - pos))
    return out


# ---------------------------------------------------------------------------
# configuration

def config_from_hf(cfg):
    """Normalize an HF config.json dict, filling HF's defaults for absent keys."""
    d = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    scaling = cfg.get("rope_scaling") or None
    if scaling is None and cfg.get("rope_parameters"):  # transformers v5 spelling
        scaling = cfg["rope_parameters"]
    theta = cfg.get("rope_theta")
    if theta is None and cfg.get("rope_parameters"):
        theta = cfg["rope_parameters"].get("rope_theta")
    return {
        "dim": d,
        "hidden_dim": cfg["intermediate_size"],
        "n_layers": cfg["num_hidden_layers"],
        "n_heads": nh,
        "n_kv_heads": cfg.get("num_key_value_heads") or nh,
        "head_dim": cfg.get("head_dim") or d // nh,
        "vocab_size": cfg["vocab_size"],
        "norm_eps": cfg.get("rms_norm_eps", 1e-6),
        "rope_theta": float(theta if theta is not None else 10000.0),
        "rope_scaling": scaling,
        "tie": bool(cfg.get("tie_word_embeddings", False)),
    }


# ---------------------------------------------------------------------------
# loading

def _permute_meta_to_hf(w, n_heads):
    """llama2.c / Meta q,k rows are laid out for adjacent-pair RoPE; HF's
    rotate-half wants the pairs (i, i+hd/2). Within each head, HF row
    j*(hd/2)+i is stored row 2i+j (the inverse of HF's conversion permute)."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.view(n_heads, hd // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim).contiguous()


def load_llama2c(path):
    """llama2.c legacy v0 .bin: 7 int32 header then fp32 weights (SOURCE.md)."""
    with open(path, "rb") as f:
        data = f.read()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", data[:28])
    tied = vocab > 0
    vocab = abs(vocab)
    hd = dim // n_heads
    flat = torch.from_numpy(np.frombuffer(data, dtype="<f4", offset=28).astype(np.float32).copy())
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        t = flat[pos : pos + n].view(*shape)
        pos += n
        return t

    emb = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, n_heads * hd, dim)
    wk = take(n_layers, n_kv * hd, dim)
    wv = take(n_layers, n_kv * hd, dim)
    wo = take(n_layers, dim, n_heads * hd)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len, hd // 2)  # freq_cis_real, unused
    take(seq_len, hd // 2)  # freq_cis_imag, unused
    W = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final}
    for l in range(n_layers):
        p = "model.layers.%d." % l
        W[p + "input_layernorm.weight"] = rms_att[l]
        W[p + "self_attn.q_proj.weight"] = _permute_meta_to_hf(wq[l], n_heads)
        W[p + "self_attn.k_proj.weight"] = _permute_meta_to_hf(wk[l], n_kv)
        W[p + "self_attn.v_proj.weight"] = wv[l]
        W[p + "self_attn.o_proj.weight"] = wo[l]
        W[p + "post_attention_layernorm.weight"] = rms_ffn[l]
        W[p + "mlp.gate_proj.weight"] = w1[l]
        W[p + "mlp.down_proj.weight"] = w2[l]
        W[p + "mlp.up_proj.weight"] = w3[l]
    if not tied:
        W["lm_head.weight"] = take(vocab, dim)
    cfg = {
        "dim": dim, "hidden_dim": hidden, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv,
        "head_dim": hd, "vocab_size": vocab, "norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_scaling": None, "tie": tied,
    }
    return cfg, W


def load_hf(path):
    with open(os.path.join(path, "config.json")) as f:
        cfg = config_from_hf(json.load(f))
    index = os.path.join(path, "model.safetensors.index.json")
    W = {}
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        for shard in sorted(set(weight_map.values())):
            W.update(read_safetensors(os.path.join(path, shard)))
        missing = set(weight_map) - set(W)
        if missing:
            raise ValueError("%s: index names tensors not found in shards: %s" % (path, sorted(missing)[:3]))
    else:
        W = read_safetensors(os.path.join(path, "model.safetensors"))
    return cfg, W


def load_model(path):
    return load_hf(path) if os.path.isdir(path) else load_llama2c(path)


# ---------------------------------------------------------------------------
# the forward pass (HF LlamaForCausalLM, eager attention, fp32)

def rope_inv_freq(cfg):
    """inv_freq[hd/2] as HF computes it: fp32 throughout, then rope scaling.

    HF: 1 / (base ** (arange(0, hd, 2, int64).float() / hd)), and for llama3
    _compute_llama3_parameters with torch.where over the three wavelength bands."""
    hd = cfg["head_dim"]
    base = cfg["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    sc = cfg["rope_scaling"]
    if not sc:
        return inv_freq
    kind = sc.get("rope_type", sc.get("type"))
    if kind in (None, "default"):
        return inv_freq
    if kind == "linear":
        return inv_freq / sc["factor"]
    if kind != "llama3":
        raise ValueError("rope scaling %r is not supported by the reference" % kind)
    factor = sc["factor"]
    low_freq_factor = sc["low_freq_factor"]
    high_freq_factor = sc["high_freq_factor"]
    old_context_len = sc["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # long wavelengths (low frequencies) are stretched by factor; short ones kept
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def rope_cos_sin(cfg, positions):
    """cos, sin [T][hd] for integer positions, fp32 as HF's LlamaRotaryEmbedding:
    angle = position * inv_freq in fp32, duplicated over the two halves."""
    inv_freq = rope_inv_freq(cfg)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x, cos, sin):
    """x [B][H][T][hd]; cos, sin [T][hd]."""
    return x * cos + rotate_half(x) * sin


def rmsnorm(x, w, eps):
    # HF upcasts to fp32 for the statistics; with fp32 activations that is a no-op,
    # but keep the cast so a bf16 run of this function still matches HF.
    dtype = x.dtype
    xf = x.to(torch.float32) if dtype != torch.float64 else x
    var = xf.pow(2).mean(-1, keepdim=True)
    return w.to(xf.dtype) * (xf * torch.rsqrt(var + eps)).to(dtype)


def linear(x, W, name):
    """y = x W^T. The one hook a LoRA reference needs to override."""
    return x @ W[name].t()


def repeat_kv(x, n_rep):
    """[B][nkv][T][hd] -> [B][nkv*n_rep][T][hd]: query head h uses KV head h // n_rep."""
    if n_rep == 1:
        return x
    B, nkv, T, hd = x.shape
    return x[:, :, None, :, :].expand(B, nkv, n_rep, T, hd).reshape(B, nkv * n_rep, T, hd)


def attention(h, W, cfg, l, cos, sin, lin=linear):
    B, T, _ = h.shape
    nh, nkv, hd = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    p = "model.layers.%d.self_attn." % l
    q = lin(h, W, p + "q_proj.weight").view(B, T, nh, hd).transpose(1, 2)
    k = lin(h, W, p + "k_proj.weight").view(B, T, nkv, hd).transpose(1, 2)
    v = lin(h, W, p + "v_proj.weight").view(B, T, nkv, hd).transpose(1, 2)
    q = apply_rope(q, cos, sin)
    k = apply_rope(k, cos, sin)
    k = repeat_kv(k, nh // nkv)
    v = repeat_kv(v, nh // nkv)
    scores = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(hd))
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(mask, float("-inf"))
    probs = torch.softmax(scores.to(torch.float32) if scores.dtype != torch.float64 else scores, dim=-1)
    out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(B, T, nh * hd)
    return lin(out, W, p + "o_proj.weight")


def mlp(x, W, l, lin=linear):
    p = "model.layers.%d.mlp." % l
    gate = lin(x, W, p + "gate_proj.weight")
    up = lin(x, W, p + "up_proj.weight")
    return lin(torch.nn.functional.silu(gate) * up, W, p + "down_proj.weight")


def final_hidden(cfg, W, tokens, lin=linear):
    """tokens [B][T] (positions 0..T-1) -> hidden states after the final norm [B][T][dim]."""
    T = tokens.shape[1]
    cos, sin = rope_cos_sin(cfg, torch.arange(T))
    dtype = W["model.embed_tokens.weight"].dtype
    cos, sin = cos.to(dtype), sin.to(dtype)
    h = W["model.embed_tokens.weight"][tokens]
    eps = cfg["norm_eps"]
    for l in range(cfg["n_layers"]):
        p = "model.layers.%d." % l
        h = h + attention(rmsnorm(h, W[p + "input_layernorm.weight"], eps), W, cfg, l, cos, sin, lin)
        h = h + mlp(rmsnorm(h, W[p + "post_attention_layernorm.weight"], eps), W, l, lin)
    return rmsnorm(h, W["model.norm.weight"], eps)


def head_weight(cfg, W):
    # Some tied checkpoints still carry lm_head.weight: prefer it (formats-and-eval.md 2.6).
    if "lm_head.weight" in W:
        return W["lm_head.weight"]
    if not cfg["tie"]:
        raise ValueError("untied model without lm_head.weight")
    return W["model.embed_tokens.weight"]


def forward_logits(cfg, W, tokens, lin=linear):
    """tokens [B][T] -> logits [B][T][vocab]."""
    return final_hidden(cfg, W, tokens, lin) @ head_weight(cfg, W).t()


@torch.no_grad()
def logits_np(cfg, W, tokens, dtype=torch.float32):
    Wd = {k: v.to(dtype) for k, v in W.items()}
    return forward_logits(cfg, Wd, torch.as_tensor(np.asarray(tokens), dtype=torch.long)).to(torch.float32).numpy()


@torch.no_grad()
def greedy(cfg, W, prompt, n_total):
    """Greedy decoding by full recomputation (no cache): the reference for a
    KV-cached decoder. Returns n_total tokens starting with the prompt."""
    toks = list(prompt)
    while len(toks) < n_total:
        lg = forward_logits(cfg, W, torch.tensor([toks]))
        toks.append(int(torch.argmax(lg[0, -1])))
    return toks


# ---------------------------------------------------------------------------
# the logits file

def write_logits(path, tokens, logits):
    tokens = np.asarray(tokens, dtype="<i4")
    logits = np.ascontiguousarray(logits, dtype="<f4")
    B, T = tokens.shape
    assert logits.shape[:2] == (B, T)
    V = logits.shape[2]
    tmp = path + ".tmp.%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(struct.pack("<5i", LOGITS_MAGIC, LOGITS_VERSION, B, T, V))
        f.write(tokens.tobytes())
        f.write(logits.tobytes())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# random HF models

RANDOM_LLAMA3 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 96,
    "intermediate_size": 200,  # not a multiple of 64: exercises short quantization groups later
    "num_hidden_layers": 3,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 300,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    # original context 64 with head_dim 16 and theta 5e5 puts inv_freq in all three
    # llama3 bands: wavelengths 6.3 (< 16: kept), 32 (16..64: smoothed), >= 167 (> 64: / factor)
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 64},
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}

# A second shape for the config paths the first does not take: no head_dim and
# no num_key_value_heads keys (HF defaults: dim/heads, = heads), tied head,
# legacy {"type": "linear"} scaling, eps 1e-6, eos given as a list.
RANDOM_TIED = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 172,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 260,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": {"type": "linear", "factor": 2.0},
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": [2, 3],
    "torch_dtype": "float32",
}


def random_weights(hf_cfg, seed):
    """name -> float32 numpy array. Projections std 0.1 (not HF's 0.02) so that
    attention is not uniform and logits spread over a few units: a parity test
    on near-zero logits would prove little. Norm weights around 1."""
    cfg = config_from_hf(hf_cfg)
    rng = np.random.RandomState(seed)
    d, ff, hd = cfg["dim"], cfg["hidden_dim"], cfg["head_dim"]
    nh, nkv, V = cfg["n_heads"], cfg["n_kv_heads"], cfg["vocab_size"]

    def normal(std, *shape):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_w():
        return (1.0 + rng.standard_normal(d) * 0.1).astype(np.float32)

    W = {"model.embed_tokens.weight": normal(1.0, V, d)}
    for l in range(cfg["n_layers"]):
        p = "model.layers.%d." % l
        W[p + "input_layernorm.weight"] = norm_w()
        W[p + "self_attn.q_proj.weight"] = normal(0.1, nh * hd, d)
        W[p + "self_attn.k_proj.weight"] = normal(0.1, nkv * hd, d)
        W[p + "self_attn.v_proj.weight"] = normal(0.1, nkv * hd, d)
        W[p + "self_attn.o_proj.weight"] = normal(0.1, d, nh * hd)
        W[p + "post_attention_layernorm.weight"] = norm_w()
        W[p + "mlp.gate_proj.weight"] = normal(0.1, ff, d)
        W[p + "mlp.up_proj.weight"] = normal(0.1, ff, d)
        W[p + "mlp.down_proj.weight"] = normal(0.1, d, ff)
    W["model.norm.weight"] = norm_w()
    if not cfg["tie"]:
        W["lm_head.weight"] = normal(0.1, V, d)
    return W


def write_hf_dir(outdir, hf_cfg, weights, dtype="F32", shards=1):
    os.makedirs(outdir, exist_ok=True)
    cfg = dict(hf_cfg)
    cfg["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    for stale in ("model.safetensors", "model.safetensors.index.json"):
        if os.path.exists(os.path.join(outdir, stale)):
            os.remove(os.path.join(outdir, stale))
    if shards <= 1:
        write_safetensors(os.path.join(outdir, "model.safetensors"), weights, dtype)
        return
    # Split the sorted names into contiguous runs: a layer's tensors end up in
    # different shards, which is what real checkpoints do too.
    names = sorted(weights)
    per = (len(names) + shards - 1) // shards
    weight_map = {}
    total = 0
    for s in range(shards):
        fname = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        part = {n: weights[n] for n in names[s * per : (s + 1) * per]}
        total += write_safetensors(os.path.join(outdir, fname), part, dtype)
        for n in part:
            weight_map[n] = fname
    with open(os.path.join(outdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")


def stored_weights(weights, dtype):
    """The fp32 values a loader gets back from weights stored as dtype."""
    if dtype == "F32":
        return weights
    if dtype == "BF16":
        return {k: bf16_bits_to_f32(f32_to_bf16_bits(v)).reshape(v.shape) for k, v in weights.items()}
    if dtype == "F16":
        return {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}
    raise ValueError(dtype)


def to_torch(weights):
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}


# ---------------------------------------------------------------------------
# fixtures for tests/test_parity.c

# Golden outputs of stories260K (models/stories260K/SOURCE.md, upstream llama2.c run.c).
STORIES_PROMPT = [1, 403, 407, 261, 378]
STORIES_GREEDY = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426,
                  338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426]
STORIES_POS0 = {0: -6.2229, 1: 8.4043, 2: -6.2237, 403: 17.0235}


def check_stories(cfg, W):
    """Prove the reference (and the llama2.c -> HF permutation) on the real model:
    SOURCE.md's position-0 logits and 32 greedy tokens. Raises on mismatch."""
    lg = logits_np(cfg, W, [STORIES_PROMPT])
    errs = []
    for i, want in STORIES_POS0.items():
        if abs(lg[0, 0, i] - want) > 1e-3:
            errs.append("pos-0 logit[%d] = %.5f, golden %.4f" % (i, lg[0, 0, i], want))
    if int(np.argmax(lg[0, 0])) != 403:
        errs.append("pos-0 argmax %d, golden 403" % int(np.argmax(lg[0, 0])))
    toks = greedy(cfg, W, STORIES_PROMPT, len(STORIES_GREEDY))
    if toks != STORIES_GREEDY:
        errs.append("greedy tokens %s differ from golden %s" % (toks, STORIES_GREEDY))
    if errs:
        raise AssertionError("stories260K reference disagrees with SOURCE.md: " + "; ".join(errs))
    return lg


def write_fixtures(outdir):
    """Writes, under outdir:
      random_f32/, random_bf16/, random_f16/,      the same random llama3-scaled GQA model as
      random_sharded/                              F32, BF16, F16 (one file each), F32 in 3 shards
      random_tied/                                 a tied, linear-scaled, MHA model (F32)
      random_f32.batch.logits     B=2, T=40 (both rows start with BOS; different continuations)
      random_f32.long.logits      B=1, T=200: positions far past original_max_position_embeddings 64
      random_bf16.batch.logits    same tokens as random_f32.batch, weights rounded to bf16
      random_f16.batch.logits     same tokens, weights rounded to fp16
      random_tied.batch.logits    B=2, T=40
      stories260K.golden.logits   B=1, T=5: the golden prompt 1 403 407 261 378
      stories260K.long.logits     B=2, T=128: greedy continuation of the prompt; random tokens
      DONE                        written last, so a half-written directory is never used
    The stories260K files need $RILQ_DATA/models/stories260K/stories260K.bin; without it they
    are left out (test_parity skips that part)."""
    os.makedirs(outdir, exist_ok=True)
    done = os.path.join(outdir, "DONE")
    if os.path.exists(done):
        os.remove(done)

    w32 = random_weights(RANDOM_LLAMA3, seed=1234)
    write_hf_dir(os.path.join(outdir, "random_f32"), RANDOM_LLAMA3, w32, "F32")
    write_hf_dir(os.path.join(outdir, "random_bf16"), RANDOM_LLAMA3, w32, "BF16")
    write_hf_dir(os.path.join(outdir, "random_sharded"), RANDOM_LLAMA3, w32, "F32", shards=3)
    cfg = config_from_hf(RANDOM_LLAMA3)
    V = cfg["vocab_size"]
    rng = np.random.RandomState(99)
    batch = rng.randint(3, V, size=(2, 40))
    batch[:, 0] = 1  # BOS, as real prompts start
    write_logits(os.path.join(outdir, "random_f32.batch.logits"), batch, logits_np(cfg, to_torch(w32), batch))
    long_seq = rng.randint(3, V, size=(1, 200))
    long_seq[:, 0] = 1
    write_logits(os.path.join(outdir, "random_f32.long.logits"), long_seq, logits_np(cfg, to_torch(w32), long_seq))
    wbf = to_torch(stored_weights(w32, "BF16"))
    write_logits(os.path.join(outdir, "random_bf16.batch.logits"), batch, logits_np(cfg, wbf, batch))
    write_hf_dir(os.path.join(outdir, "random_f16"), RANDOM_LLAMA3, w32, "F16")
    wf16 = to_torch(stored_weights(w32, "F16"))
    write_logits(os.path.join(outdir, "random_f16.batch.logits"), batch, logits_np(cfg, wf16, batch))

    wt = random_weights(RANDOM_TIED, seed=4321)
    write_hf_dir(os.path.join(outdir, "random_tied"), RANDOM_TIED, wt, "F32")
    cfg_t = config_from_hf(RANDOM_TIED)
    batch_t = rng.randint(3, cfg_t["vocab_size"], size=(2, 40))
    batch_t[:, 0] = 1
    write_logits(os.path.join(outdir, "random_tied.batch.logits"), batch_t, logits_np(cfg_t, to_torch(wt), batch_t))

    root = os.environ.get("RILQ_DATA", "")
    stories = os.path.join(root, "models", "stories260K", "stories260K.bin") if root else ""
    if stories and os.path.exists(stories):
        cfg_s, ws = load_llama2c(stories)
        lg = check_stories(cfg_s, ws)
        write_logits(os.path.join(outdir, "stories260K.golden.logits"), [STORIES_PROMPT], lg)
        cont = greedy(cfg_s, ws, STORIES_PROMPT, 128)
        rand_row = rng.randint(3, cfg_s["vocab_size"], size=128)
        rand_row[0] = 1
        long_b = np.array([cont, rand_row])
        write_logits(os.path.join(outdir, "stories260K.long.logits"), long_b, logits_np(cfg_s, ws, long_b))
    else:
        print("note: RILQ_DATA/models/stories260K/stories260K.bin not found; stories260K fixtures left out",
              file=sys.stderr)

    with open(done, "w") as f:
        f.write("ok\n")


# ---------------------------------------------------------------------------
# LoRA / QA-LoRA adapters and gradient fixtures for tests/test_parity_grad.c
#
# Conventions are those of src/adapter/adapter.h, restated here as code:
#   LoRA:     y = W x + s * B (A x),         A [r][in], B [out][r]
#   QA-LoRA:  y = W x + s * B (A pool(x)),   A [r][G],  B [out][r],  G = ceil(in / gs)
#   s = alpha / r; pool(x)_g = mean of x over inputs [g*gs, min((g+1)*gs, in)):
#   contiguous groups, the last one possibly shorter and averaged over its real members.

PROJS = [("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
         ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")]  # rq_proj_names order

GRAD_MAGIC = 0x46475152  # "RQGF" as bytes
GRAD_END = 0x444E4547    # "GEND" as bytes
GRAD_VERSION = 1
ADAM_LR = 1e-3


def proj_weight_name(l, p):
    return "model.layers.%d.%s.%s.weight" % (l, PROJS[p][0], PROJS[p][1])


def group_pool(x, gs):
    """[..., in] -> [..., ceil(in / gs)] group means; the ragged last group is
    averaged over its real members (a slice mean does exactly that)."""
    n = x.shape[-1]
    return torch.stack([x[..., lo : min(lo + gs, n)].mean(-1) for lo in range(0, n, gs)], dim=-1)


def adapter_linear(ab, kind, scaling, gs):
    """A `lin` hook for attention/mlp/final_hidden: the base projection plus the
    adapter of that weight name when ab (name -> (A, B)) has one."""
    def lin(x, W, name):
        y = linear(x, W, name)
        if name not in ab:
            return y
        A, B = ab[name]
        xt = group_pool(x, gs) if kind == "qalora" else x
        return y + scaling * ((xt @ A.t()) @ B.t())
    return lin


def adapter_values(cfg, W, kind, r, gs, seed):
    """Deterministic float32 A, B for every projection, as lists indexed [l][p].

    B is not zero (with the RILQ init B = 0 every dA would vanish). A is scaled
    so that A x~ is O(1) for unit-size inputs (group means of gs roughly
    independent inputs are ~1/sqrt(gs) smaller, hence the sqrt(gs) for QA-LoRA);
    B's 0.02 keeps the adapters a perturbation of a few percent of W x."""
    rng = np.random.RandomState(seed)
    As, Bs = [], []
    for l in range(cfg["n_layers"]):
        la, lb = [], []
        for p in range(len(PROJS)):
            out, n_in = W[proj_weight_name(l, p)].shape
            a_cols = (n_in + gs - 1) // gs if kind == "qalora" else n_in
            std_a = math.sqrt(gs) / math.sqrt(a_cols) if kind == "qalora" else 1.0 / math.sqrt(n_in)
            la.append((rng.standard_normal((r, a_cols)) * std_a).astype(np.float32))
            lb.append((rng.standard_normal((out, r)) * 0.02).astype(np.float32))
        As.append(la)
        Bs.append(lb)
    return As, Bs


def rilq_loss_and_grads(cfg, W, tokens, targets, teacher, As, Bs, kind, scaling, gs, dtype, adam_lr=None):
    """The RILQ loss of one batch, 0.5 * mean CE over counted targets (-100 =
    masked) + 0.5 * MSE(final hidden after the final norm, teacher) over all
    elements, and its adapter gradients by autograd, all in dtype.

    Returns (loss, ce, mse, dA[l][p], dB[l][p], A1, B1) as float64 numpy values,
    A1/B1 being the parameters after one torch.optim.Adam step (defaults, lr
    adam_lr) from these gradients, or None when adam_lr is None."""
    Wd = {k: v.to(dtype) for k, v in W.items()}
    ab, leaves = {}, []
    for l in range(cfg["n_layers"]):
        for p in range(len(PROJS)):
            A = torch.tensor(As[l][p], dtype=dtype, requires_grad=True)
            B = torch.tensor(Bs[l][p], dtype=dtype, requires_grad=True)
            ab[proj_weight_name(l, p)] = (A, B)
            leaves += [A, B]
    lin = adapter_linear(ab, kind, scaling, gs)
    tok = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    h = final_hidden(cfg, Wd, tok, lin)
    logits = h @ head_weight(cfg, Wd).t()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           torch.as_tensor(np.asarray(targets).reshape(-1), dtype=torch.long),
                                           ignore_index=-100, reduction="mean")
    mse = torch.nn.functional.mse_loss(h, torch.as_tensor(teacher).to(dtype), reduction="mean")
    loss = 0.5 * ce + 0.5 * mse
    loss.backward()

    def grid(fn):
        return [[fn(ab[proj_weight_name(l, p)]) for p in range(len(PROJS))] for l in range(cfg["n_layers"])]

    dA = grid(lambda t: t[0].grad.detach().to(torch.float64).numpy().copy())
    dB = grid(lambda t: t[1].grad.detach().to(torch.float64).numpy().copy())
    A1 = B1 = None
    if adam_lr is not None:
        opt = torch.optim.Adam(leaves, lr=adam_lr)
        opt.step()
        A1 = grid(lambda t: t[0].detach().to(torch.float64).numpy().copy())
        B1 = grid(lambda t: t[1].detach().to(torch.float64).numpy().copy())
    return float(loss), float(ce), float(mse), dA, dB, A1, B1


def rel_l2(a, ref):
    """||a - ref|| / ||ref|| (0 when both are 0)."""
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    den = np.linalg.norm(ref)
    num = np.linalg.norm(a - ref)
    return num / den if den > 0 else num


def write_grad_case(path, cfg, W, tokens, targets, teacher, kind, r, alpha, gs, seed):
    """Computes one case in float64 and float32 and writes it (format in the
    module docstring). Returns a one-line summary of the fp32-vs-fp64 noise of
    torch itself, which bounds what an fp32 implementation can be expected to reach."""
    tokens = np.asarray(tokens, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    teacher = np.ascontiguousarray(teacher, dtype=np.float32)
    B, T = tokens.shape
    scaling = alpha / r
    gs_eff = gs if kind == "qalora" else 0
    As, Bs = adapter_values(cfg, W, kind, r, gs, seed)
    l64, ce64, mse64, dA64, dB64, A1, B1 = rilq_loss_and_grads(
        cfg, W, tokens, targets, teacher, As, Bs, kind, scaling, gs, torch.float64, adam_lr=ADAM_LR)
    l32, _, _, dA32, dB32, _, _ = rilq_loss_and_grads(
        cfg, W, tokens, targets, teacher, As, Bs, kind, scaling, gs, torch.float32)
    worst = 0.0
    for l in range(cfg["n_layers"]):
        for p in range(len(PROJS)):
            worst = max(worst, rel_l2(dA32[l][p], dA64[l][p]), rel_l2(dB32[l][p], dB64[l][p]))
    # torch's own fp32 run must agree with its fp64 run; if not, the reference is broken
    if not (abs(l32 - l64) <= 1e-5 * abs(l64) and worst <= 1e-3):
        raise AssertionError("%s: torch fp32 vs fp64 disagree: loss %.9g vs %.9g, grad rel L2 %.3g"
                             % (path, l32, l64, worst))
    tmp = path + ".tmp.%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(struct.pack("<2i", GRAD_MAGIC, GRAD_VERSION))
        f.write(struct.pack("<5i", B, T, cfg["dim"], cfg["n_layers"], cfg["vocab_size"]))
        f.write(struct.pack("<3if", 1 if kind == "qalora" else 0, r, gs_eff, alpha))
        f.write(struct.pack("<5d", l64, l32, ce64, mse64, ADAM_LR))
        f.write(tokens.astype("<i4").tobytes())
        f.write(targets.astype("<i4").tobytes())
        f.write(teacher.astype("<f4").tobytes())
        for l in range(cfg["n_layers"]):
            for p in range(len(PROJS)):
                A, Bm = As[l][p], Bs[l][p]
                f.write(struct.pack("<2i", Bm.shape[0], A.shape[1]))
                f.write(A.astype("<f4").tobytes())
                f.write(Bm.astype("<f4").tobytes())
                f.write(dA64[l][p].astype("<f8").tobytes())
                f.write(dB64[l][p].astype("<f8").tobytes())
                f.write(np.asarray(dA32[l][p]).astype("<f4").tobytes())
                f.write(np.asarray(dB32[l][p]).astype("<f4").tobytes())
                f.write(A1[l][p].astype("<f8").tobytes())
                f.write(B1[l][p].astype("<f8").tobytes())
        f.write(struct.pack("<i", GRAD_END))
    os.replace(tmp, path)
    return "%s: loss %.9f (torch fp32 - fp64: %.2e), torch fp32 grad rel L2 error <= %.2e" % (
        os.path.basename(path), l64, l32 - l64, worst)


def next_token_targets(tokens, masked):
    """targets[b][t] = tokens[b][t+1]; the last position and (b, t) in masked are -100."""
    tokens = np.asarray(tokens)
    tg = np.full(tokens.shape, -100, dtype=np.int64)
    tg[:, :-1] = tokens[:, 1:]
    for b, t in masked:
        tg[b, t] = -100
    return tg


def teacher_for(cfg, W, tokens, seed):
    """A teacher close to what RILQ sees (the full-precision model's hidden
    states): the adapter-free fp64 hidden states plus N(0, 0.1^2) noise."""
    with torch.no_grad():
        Wd = {k: v.to(torch.float64) for k, v in W.items()}
        h = final_hidden(cfg, Wd, torch.as_tensor(np.asarray(tokens), dtype=torch.long)).numpy()
    rng = np.random.RandomState(seed)
    return (h + 0.1 * rng.standard_normal(h.shape)).astype(np.float32)


GRAD_T = 32


def write_grad_fixtures(outdir):
    """Writes, under outdir:
      random_f32/                 the random llama3-scaled GQA model of `fixtures` (seed 1234), F32
      random.lora.grad            r 4, alpha 8, B=2, T=32, random tokens
      random.qalora.grad          r 4, alpha 8, group size 32 (in 96: 3 groups; in 200: 6 x 32 + 8)
      stories260K.lora.grad       r 4, alpha 8, B=2, T=32: a greedy story and random tokens
      stories260K.qalora.grad     r 4, alpha 8, group size 64 (in 64: 1 group; in 172: 64, 64, 44)
      DONE                        written last
    The stories260K files need $RILQ_DATA/models/stories260K/stories260K.bin."""
    os.makedirs(outdir, exist_ok=True)
    done = os.path.join(outdir, "DONE")
    if os.path.exists(done):
        os.remove(done)
    r, alpha = 4, 8.0  # scaling 2, so a dropped or doubled scaling cannot pass

    w32 = random_weights(RANDOM_LLAMA3, seed=1234)
    write_hf_dir(os.path.join(outdir, "random_f32"), RANDOM_LLAMA3, w32, "F32")
    cfg, W = config_from_hf(RANDOM_LLAMA3), to_torch(w32)
    rng = np.random.RandomState(2024)
    tokens = rng.randint(3, cfg["vocab_size"], size=(2, GRAD_T))
    tokens[:, 0] = 1
    # masked: a 3-token "prompt" of row 0 and one position inside row 1
    targets = next_token_targets(tokens, [(0, 0), (0, 1), (0, 2), (1, GRAD_T // 2)])
    teacher = teacher_for(cfg, W, tokens, seed=7)
    for kind, gs, seed in (("lora", 0, 11), ("qalora", 32, 12)):
        print(write_grad_case(os.path.join(outdir, "random.%s.grad" % kind), cfg, W, tokens, targets, teacher,
                              kind, r, alpha, gs, seed))

    root = os.environ.get("RILQ_DATA", "")
    stories = os.path.join(root, "models", "stories260K", "stories260K.bin") if root else ""
    if stories and os.path.exists(stories):
        cfg_s, ws = load_llama2c(stories)
        row0 = greedy(cfg_s, ws, STORIES_PROMPT, GRAD_T + 1)
        row1 = rng.randint(3, cfg_s["vocab_size"], size=GRAD_T + 1)
        row1[0] = 1
        full = np.array([row0, row1])
        tokens_s = full[:, :GRAD_T]
        # real next tokens for all positions (including the last one), then the masks
        targets_s = full[:, 1:].astype(np.int64)
        for b, t in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 5), (1, GRAD_T - 1)]:
            targets_s[b, t] = -100
        teacher_s = teacher_for(cfg_s, ws, tokens_s, seed=8)
        for kind, gs, seed in (("lora", 0, 21), ("qalora", 64, 22)):
            print(write_grad_case(os.path.join(outdir, "stories260K.%s.grad" % kind), cfg_s, ws, tokens_s,
                                  targets_s, teacher_s, kind, r, alpha, gs, seed))
    else:
        print("note: RILQ_DATA/models/stories260K/stories260K.bin not found; stories260K gradient fixtures left out",
              file=sys.stderr)

    with open(done, "w") as f:
        f.write("ok\n")


# ---------------------------------------------------------------------------
# command line

def _parse_tokens(s):
    return [int(x) for x in s.replace(" ", ",").split(",") if x]


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("make-random-hf", help="write a random-weight LLaMA HF directory")
    a.add_argument("outdir")
    a.add_argument("--seed", type=int, default=1234)
    a.add_argument("--dtype", choices=["F32", "BF16", "F16"], default="F32")
    a.add_argument("--shards", type=int, default=1)
    a.add_argument("--tied", action="store_true", help="the tied / linear-scaling / MHA shape")

    a = sub.add_parser("logits", help="write reference logits for tokens")
    a.add_argument("model", help="HF directory or llama2.c .bin")
    a.add_argument("--tokens", help="comma-separated ids (one sequence)")
    a.add_argument("--batch-file", help="one sequence per line, ids separated by commas or spaces")
    a.add_argument("--out", required=True)
    a.add_argument("--float64", action="store_true",
                   help="compute in float64 (rope tables still fp32): shows the fp32 rounding noise")

    a = sub.add_parser("greedy", help="print a greedy continuation")
    a.add_argument("model")
    a.add_argument("--tokens", required=True)
    a.add_argument("--n", type=int, default=32, help="total length including the prompt")

    a = sub.add_parser("fixtures", help="write everything tests/test_parity.c reads")
    a.add_argument("outdir")

    a = sub.add_parser("grad-fixtures", help="write everything tests/test_parity_grad.c reads")
    a.add_argument("outdir")

    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    if args.cmd == "make-random-hf":
        hf_cfg = RANDOM_TIED if args.tied else RANDOM_LLAMA3
        write_hf_dir(args.outdir, hf_cfg, random_weights(hf_cfg, args.seed), args.dtype, args.shards)
    elif args.cmd == "logits":
        if bool(args.tokens) == bool(args.batch_file):
            ap.error("give exactly one of --tokens and --batch-file")
        if args.tokens:
            seqs = [_parse_tokens(args.tokens)]
        else:
            with open(args.batch_file) as f:
                seqs = [_parse_tokens(line) for line in f if line.strip()]
        if len({len(s) for s in seqs}) != 1:
            ap.error("all sequences in a batch must have the same length")
        cfg, W = load_model(args.model)
        dtype = torch.float64 if args.float64 else torch.float32
        write_logits(args.out, seqs, logits_np(cfg, W, seqs, dtype))
    elif args.cmd == "greedy":
        cfg, W = load_model(args.model)
        print(" ".join(str(t) for t in greedy(cfg, W, _parse_tokens(args.tokens), args.n)))
    elif args.cmd == "fixtures":
        write_fixtures(args.outdir)
    elif args.cmd == "grad-fixtures":
        write_grad_fixtures(args.outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
