#!/usr/bin/env python3
"""Validate a GGUF written by `rilq export --format gguf` against its artifact, with llama.cpp's
own Python reader (the `gguf` package) and numpy only.

    gguf_check.py ARTIFACT_DIR FILE.gguf

Checks
  * metadata: general.architecture, file_type, quantization_version, every llama.* hyperparameter
    against the artifact's config.json; the tokenizer.* keys (tokens/scores/types against the
    artifact's tokenizer file: tokenizer.gguf verbatim, llama2.c tokenizer.bin, or tokenizer.json);
  * tensors: names, ggml types (Q4_1 for every quantized module whose in_features is a multiple of
    32; F32 for a quantized module whose rows are not whole Q4_1 blocks, e.g. a ragged last group
    172 = 64 + 64 + 44; F32 for the rest) and shapes;
  * values: every Q4_1 tensor dequantized by gguf.quants, and every F32 tensor of a quantized
    module as stored, rows un-permuted here (llama.cpp's q/k order back to HF's), must equal the
    artifact's W = s * code + m evaluated in float32, bit for bit; the other F32 tensors must equal
    the artifact's plain tensors.
Exit 0 when all pass, 1 on a mismatch, 77 when numpy or gguf cannot be imported.
"""
import json
import os
import struct
import sys

try:
    import numpy as np
    if __name__ == "__main__":  # hqq_check.py imports the numpy helpers below without gguf
        from gguf import GGUFReader, GGMLQuantizationType
        from gguf.quants import dequantize
except ImportError as e:  # the C test turns this into a skip (or a failure under CI)
    print(f"MISSING python package: {e} (tools/setup.sh installs gguf into .cache/pylib)", file=sys.stderr)
    sys.exit(77)

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL:", msg, file=sys.stderr)


# ---- the artifact ----------------------------------------------------------------------------

def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".zst"):
        import zstandard  # optional: only for compressed artifacts
        data = zstandard.ZstdDecompressor().decompress(data)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = data[base + b:base + e]
        dt = info["dtype"]
        shape = info["shape"]
        if dt == "BF16":
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, {"F32": np.float32, "F16": np.float16, "U8": np.uint8, "I32": np.int32,
                                      "I64": np.int64}[dt])
        out[name] = arr.reshape(shape)
    return out


def q2_weight(t, module, in_features, gs, codebook):
    """W = s * codebook[code] + m in float32 (rilq's q2 formula, no fused multiply-add)."""
    packed = t[module + ".codes"]
    out = packed.shape[0]
    codes = np.stack([(packed >> (2 * k)) & 3 for k in range(4)], axis=-1).reshape(out, -1)[:, :in_features]
    levels = np.asarray(codebook, np.float32)[codes]
    s = t[module + ".scales"].astype(np.float32)
    m = t[module + ".offsets"].astype(np.float32)
    g = np.arange(in_features) // gs
    prod = (s[:, g] * levels).astype(np.float32)
    return (prod + m[:, g]).astype(np.float32)


def unpermute(w, heads):
    """llama.cpp's row order (adjacent rotary pairs) back to HF's (rotate-half), per head."""
    rows = w.shape[0]
    hd = rows // heads
    return w.reshape(heads, hd // 2, 2, -1).swapaxes(1, 2).reshape(rows, -1)


# ---- the GGUF --------------------------------------------------------------------------------

def field_value(r, key):
    f = r.fields.get(key)
    if f is None:
        return None
    if f.types and f.types[0] == 9:  # array
        vals = [f.parts[i] for i in f.data]
        if f.types[-1] == 8:
            return [bytes(v) for v in vals]
        return [v.tolist()[0] for v in vals]
    v = f.parts[f.data[0]]
    if f.types[0] == 8:
        return bytes(v).decode("utf-8")
    return v.tolist()[0]


def llama2c_vocab(path, n):
    """tokens (SentencePiece form: spaces as U+2581, BOS/EOS unwrapped) and scores of a tokenizer.bin."""
    with open(path, "rb") as f:
        data = f.read()
    off = 4
    tokens, scores = [], []
    for _ in range(n):
        score, ln = struct.unpack_from("<fi", data, off)
        off += 8
        tok = data[off:off + ln]
        off += ln
        if tok in (b"\n<s>\n", b"\n</s>\n"):
            tok = tok[1:-1]
        tokens.append(tok.replace(b" ", "\u2581".encode()))
        scores.append(score)
    return tokens, scores


def check_tokenizer(r, art, cfg):
    q = cfg["quantization_config"]
    tok_file = q.get("tokenizer_file")
    tokens = field_value(r, "tokenizer.ggml.tokens")
    if tok_file is None:
        check(tokens is None, "the artifact has no tokenizer but the GGUF has tokenizer.ggml.tokens")
        return "none"
    check(tokens is not None and len(tokens) == cfg["vocab_size"],
          f"tokenizer.ggml.tokens: {len(tokens) if tokens else 0} tokens, vocab_size {cfg['vocab_size']}")
    path = os.path.join(art, tok_file)
    if tok_file == "tokenizer.gguf":
        src = GGUFReader(path)
        keys = [k for k in src.fields if k.startswith("tokenizer.")]
        for k in keys:
            a, b = src.fields[k], r.fields.get(k)
            same = b is not None and a.types == b.types and len(a.parts) == len(b.parts) and all(
                np.array_equal(x, y) for x, y in zip(a.parts, b.parts))
            check(same, f"{k}: not copied verbatim from {path}")
        check(sorted(keys) == sorted(k for k in r.fields if k.startswith("tokenizer.")),
              "tokenizer.* keys differ from the source tokenizer.gguf")
        return f"tokenizer.gguf: {len(keys)} keys verbatim"
    model = field_value(r, "tokenizer.ggml.model")
    types = field_value(r, "tokenizer.ggml.token_type")
    check(types is not None and len(types) == len(tokens), "tokenizer.ggml.token_type length")
    if tok_file == "tokenizer.bin":
        check(model == "llama", f"tokenizer.ggml.model {model!r}, expected 'llama'")
        want_tokens, want_scores = llama2c_vocab(path, cfg["vocab_size"])
        check(tokens == want_tokens, "tokens differ from tokenizer.bin")
        scores = field_value(r, "tokenizer.ggml.scores")
        check(scores is not None and np.array_equal(np.float32(scores), np.float32(want_scores)),
              "scores differ from tokenizer.bin")
        for i, t in enumerate(tokens):
            if len(t) == 6 and t.startswith(b"<0x") and t.endswith(b">"):
                check(types[i] == 6, f"token {i} {t!r} should have type 6 (byte)")
        check(field_value(r, "tokenizer.ggml.bos_token_id") == 1 and field_value(r, "tokenizer.ggml.eos_token_id") == 2,
              "bos/eos ids of a llama2.c vocabulary should be 1/2")
        return f"llama2.c tokenizer.bin: {len(tokens)} tokens and scores match"
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    for a in tj.get("added_tokens", []):
        by_id[a["id"]] = a["content"]
    want = [by_id[i].encode() if i in by_id else None for i in range(len(tokens))]
    check(all(w is None or w == t for w, t in zip(want, tokens)), "tokens differ from tokenizer.json")
    merges = tj["model"].get("merges", [])
    want_merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    if model == "gpt2":
        got = [m.decode() for m in field_value(r, "tokenizer.ggml.merges")]
        check(got == want_merges, "merges differ from tokenizer.json")
    return f"tokenizer.json ({model}): {len(tokens)} tokens, {len(want_merges)} merges"


def main():
    art, path = sys.argv[1], sys.argv[2]
    with open(os.path.join(art, "config.json")) as f:
        cfg = json.load(f)
    q = cfg["quantization_config"]
    t = read_safetensors(os.path.join(art, q.get("tensor_file", "model.safetensors")))
    r = GGUFReader(path)

    # metadata
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    want = {
        "general.architecture": "llama",
        "general.quantization_version": 2,
        "llama.context_length": cfg["max_position_embeddings"],
        "llama.embedding_length": cfg["hidden_size"],
        "llama.block_count": cfg["num_hidden_layers"],
        "llama.feed_forward_length": cfg["intermediate_size"],
        "llama.attention.head_count": cfg["num_attention_heads"],
        "llama.attention.head_count_kv": cfg["num_key_value_heads"],
        "llama.rope.dimension_count": hd,
        "llama.vocab_size": cfg["vocab_size"],
    }
    for k, v in want.items():
        check(field_value(r, k) == v, f"{k} = {field_value(r, k)!r}, expected {v!r}")
    check(field_value(r, "general.name") is not None, "general.name missing")
    for k, v in (("llama.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"]), ("llama.rope.freq_base", cfg["rope_theta"])):
        check(field_value(r, k) is not None and np.float32(field_value(r, k)) == np.float32(v), f"{k} = {field_value(r, k)} vs {v}")
    tok_summary = check_tokenizer(r, art, cfg)

    # tensors
    gs, codebook = q["group_size"], q["codebook"]
    quantized = set(q["quantized_modules"])
    tensors = {x.name: x for x in r.tensors}
    L = cfg["num_hidden_layers"]
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if not cfg.get("tie_word_embeddings"):
        names["lm_head.weight"] = "output.weight"
    proj = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
            "mlp.down_proj": "ffn_down"}
    for i in range(L):
        names[f"model.layers.{i}.input_layernorm.weight"] = f"blk.{i}.attn_norm.weight"
        names[f"model.layers.{i}.post_attention_layernorm.weight"] = f"blk.{i}.ffn_norm.weight"
        for hf, gg in proj.items():
            names[f"model.layers.{i}.{hf}"] = f"blk.{i}.{gg}.weight"
    extra = set(tensors) - set(names.values()) - {"rope_freqs.weight"}
    check(not extra, f"unexpected tensors {sorted(extra)}")
    n_q = n_f = n_fallback = 0
    max_diff = 0.0
    for hf, gg in names.items():
        x = tensors.get(gg)
        if x is None:
            check(False, f"tensor {gg} missing")
            continue
        heads = cfg["num_attention_heads"] if gg.endswith("attn_q.weight") else cfg["num_key_value_heads"] if gg.endswith("attn_k.weight") else 0
        if hf in quantized:
            in_features = int(x.shape[0])
            want_type = GGMLQuantizationType.Q4_1 if in_features % 32 == 0 else GGMLQuantizationType.F32
            check(x.tensor_type == want_type,
                  f"{gg}: type {x.tensor_type.name}, expected {want_type.name} (in_features {in_features})")
            want_w = q2_weight(t, hf, in_features, gs, codebook)
            if x.tensor_type == GGMLQuantizationType.F32:  # exact fallback: the dequantized q2 weights
                got = np.asarray(x.data, np.float32).reshape(int(x.shape[1]), in_features)
                n_fallback += 1
            else:
                got = dequantize(x.data, x.tensor_type).reshape(int(x.shape[1]), in_features).astype(np.float32)
                n_q += 1
        else:
            key = hf if hf.endswith(".weight") else hf + ".weight"
            check(x.tensor_type == GGMLQuantizationType.F32, f"{gg}: type {x.tensor_type.name}, expected F32")
            want_w = t[key].astype(np.float32)
            got = np.asarray(x.data, np.float32).reshape(want_w.shape)
            n_f += 1
        if heads:
            got = unpermute(got, heads)
        check(got.shape == want_w.shape, f"{gg}: shape {got.shape}, expected {want_w.shape}")
        if got.shape == want_w.shape:
            same = np.array_equal(got.view(np.uint32), want_w.view(np.uint32))
            d = float(np.max(np.abs(got - want_w))) if got.size else 0.0
            max_diff = max(max_diff, d)
            check(same, f"{gg}: values differ from the artifact (max |diff| {d:.3g})")
    # MOSTLY_Q4_1 when any tensor is Q4_1, ALL_F32 otherwise (every quantized module ragged)
    want_ftype = 3 if n_q else 0
    check(field_value(r, "general.file_type") == want_ftype,
          f"general.file_type = {field_value(r, 'general.file_type')!r}, expected {want_ftype}")
    print(f"gguf_check: {path}: {len(r.tensors)} tensors ({n_q} Q4_1, {n_fallback} F32 from q2, {n_f} F32 compared), "
          f"{len(r.fields)} metadata keys; Q4_1/F32 vs artifact W: max |diff| {max_diff:.3g} "
          f"(bit-identical: {not any('values differ' in f for f in failures)}); {tok_summary}")
    if failures:
        print(f"gguf_check: {len(failures)} failures", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
