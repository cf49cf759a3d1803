#!/usr/bin/env python3
"""Validate an HQQ-layout checkpoint written by `rilq export --format hqq` against its artifact,
with numpy only (no torch, no hqq): unpack W_q the way hqq's BitPack.unpack_2bit_u8 does, dequantize
the way HQQLinear does, and compare with the artifact's W = s * code + m.

    hqq_check.py ARTIFACT_DIR HQQ_DIR

HQQ (axis 1) views W [out, in] as R = out*in/gs rows of gs weights and computes
    W = (W_q - zero) * scale
"2bit_u8" packs the codes C [R, gs] into W_q [R/4, gs]: byte (p, c) holds C[p] in bits 6-7,
C[p + R/4] in bits 4-5, C[p + R/2] in bits 2-3 and C[p + 3R/4] in bits 0-1 (column c).

Checks: config.json quantization_config (hqq, nbits 2, axis 1, group size), every quantized
module's tensors (dtypes, shapes, the metadata scalars and strings hqq's encode_safetensor_type
writes), the codes (they must be the artifact's codes exactly), scale == s exactly, and the
dequantized weights, computed in float32 from the stored fp16 scale and zero, within the bound
that rounding zero = -m/s to fp16 allows: |W_hqq - W| <= s * |zero| * 2^-11 + 2^-22 * |W|
(half an fp16 ulp of zero, relative, times s; plus float32 rounding of the evaluation).
Exit 0 when all pass, 1 on a mismatch, 77 when numpy is missing.
"""
import json
import os
import sys

try:
    import numpy as np
except ImportError as e:
    print(f"MISSING python package: {e}", file=sys.stderr)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_check import read_safetensors, q2_weight  # noqa: E402  (numpy-only helpers; gguf import is guarded)

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL:", msg, file=sys.stderr)


def unpack_2bit_u8(wq):
    """hqq's BitPack.unpack_2bit_u8: [R/4, gs] bytes -> [R, gs] codes, row-quarters stacked."""
    return np.concatenate([(wq >> 6) & 3, (wq >> 4) & 3, (wq >> 2) & 3, wq & 3], axis=0)


def as_str(a):
    return bytes(a.astype(np.uint8).tolist()).decode("ascii")


def main():
    art, hqq = sys.argv[1], sys.argv[2]
    with open(os.path.join(art, "config.json")) as f:
        acfg = json.load(f)
    with open(os.path.join(hqq, "config.json")) as f:
        hcfg = json.load(f)
    aq = acfg["quantization_config"]
    gs, codebook, quantized = aq["group_size"], aq["codebook"], aq["quantized_modules"]
    a = read_safetensors(os.path.join(art, aq.get("tensor_file", "model.safetensors")))
    h = read_safetensors(os.path.join(hqq, "model.safetensors"))

    hq = hcfg.get("quantization_config", {})
    wp = hq.get("quant_config", {}).get("weight_quant_params", {})
    check(hq.get("quant_method") == "hqq", "quantization_config.quant_method must be hqq")
    check(wp.get("nbits") == 2 and wp.get("axis") == 1 and wp.get("group_size") == gs,
          f"weight_quant_params {wp} (want nbits 2, axis 1, group_size {gs})")
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "max_position_embeddings"):
        check(hcfg.get(k) == acfg.get(k), f"config.json {k}: {hcfg.get(k)!r} vs artifact {acfg.get(k)!r}")

    worst_rel = 0.0  # max |W_hqq - W| / s
    worst_abs = 0.0
    n_weights = 0
    for mod in quantized:
        wq = h.get(mod + ".W_q")
        if wq is None:
            check(False, f"{mod}.W_q missing")
            continue
        shape = h[mod + ".shape"]
        out, inf = int(shape[0]), int(shape[1])
        R = out * inf // gs
        check(wq.dtype == np.uint8 and wq.shape == (R // 4, gs), f"{mod}.W_q: {wq.dtype} {wq.shape}, want uint8 {(R // 4, gs)}")
        scale, zero = h[mod + ".scale"], h[mod + ".zero"]
        check(scale.dtype == np.float16 and scale.shape == (R, 1), f"{mod}.scale: {scale.dtype} {scale.shape}")
        check(zero.dtype == np.float16 and zero.shape == (R, 1), f"{mod}.zero: {zero.dtype} {zero.shape}")
        scalars = {"nbits": (np.int32, 2), "group_size": (np.int32, gs), "axis": (np.int32, 1),
                   "channel_wise": (np.uint8, 1), "optimize": (np.uint8, 1), "round_zero": (np.uint8, 0),
                   "view_as_float": (np.uint8, 0), "quant_scale": (np.uint8, 0), "quant_zero": (np.uint8, 0),
                   "offload_meta": (np.uint8, 0), "encoded_state_dict": (np.uint8, 1),
                   "stores_quant_config": (np.uint8, 1)}
        for k, (dt, v) in scalars.items():
            x = h.get(f"{mod}.{k}")
            check(x is not None and x.dtype == dt and x.shape == () and int(x) == v, f"{mod}.{k}: {x!r}, want {dt.__name__} {v}")
        for k, v in (("packing", "2bit_u8"), ("unpack_view_dtype", "torch.uint8"), ("compute_dtype", "torch.float16")):
            x = h.get(f"{mod}.{k}")
            check(x is not None and x.dtype == np.uint8 and as_str(x) == v, f"{mod}.{k} should encode {v!r}")
        check(h[mod + ".shape"].dtype == np.int64, f"{mod}.shape should be I64")

        codes = unpack_2bit_u8(wq)  # [R, gs]
        s = scale.astype(np.float32)
        z = zero.astype(np.float32)
        w_hqq = ((codes.astype(np.float32) - z) * s).reshape(out, inf)

        # the artifact's side
        packed = a[mod + ".codes"]
        acodes = np.stack([(packed >> (2 * k)) & 3 for k in range(4)], axis=-1).reshape(out, -1)[:, :inf]
        a_s = a[mod + ".scales"].astype(np.float32).reshape(-1, 1)
        nonconst = (a_s[:, 0] != 0)
        check(np.array_equal(codes[nonconst], acodes.reshape(R, gs)[nonconst]), f"{mod}: codes differ from the artifact")
        check(np.array_equal(s[nonconst], a_s[nonconst]), f"{mod}: scale differs from the artifact's s")
        w = q2_weight(a, mod, inf, gs, codebook)
        diff = np.abs(w_hqq - w).reshape(R, gs)
        bound = (np.abs(s) * np.abs(z) * 2.0 ** -11 + 2.0 ** -22 * np.abs(w).reshape(R, gs)).astype(np.float64)
        bad = diff > bound + 1e-30
        check(not bad.any(), f"{mod}: {int(bad.sum())} weights outside the zero-rounding bound "
                             f"(max |diff| {float(diff.max()):.3g})")
        rel = diff / np.where(a_s == 0, 1, np.abs(a_s))
        worst_rel = max(worst_rel, float(rel.max()))
        worst_abs = max(worst_abs, float(diff.max()))
        n_weights += out * inf
    bits = 0
    for mod in quantized:
        bits += 8 * (h[mod + ".W_q"].size + 2 * h[mod + ".scale"].size + 2 * h[mod + ".zero"].size)
    print(f"hqq_check: {hqq}: {len(quantized)} quantized modules, {n_weights} weights, "
          f"{bits / max(n_weights, 1):.3f} bits/weight; dequant (W_q - zero) * scale vs artifact W: "
          f"max |diff| {worst_abs:.3g}, max |diff|/s {worst_rel:.3g} (fp16 zero rounding)")
    if failures:
        print(f"hqq_check: {len(failures)} failures", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
