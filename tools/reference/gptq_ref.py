#!/usr/bin/python3
"""GPTQ reference in float64 numpy, for tests/test_gptq.c.

The same variant as src/quant/gptq.c, written independently from its description:
contiguous groups whose (s, m) are chosen (RTN min/max, fp16-rounded, m first) from
the error-compensated weights when the group starts; the nearest level with ties to
the lower code; dead columns zeroed; H dampened by damp * mean(diag H); the upper
Cholesky factor of H^-1; errors spread immediately (no lazy blocks: they change the
order of the sums only).

usage: gptq_ref.py IN OUT, IN holding int32 out, in, gs, n, then float32 W [out][in],
float32 X [n][in], float64 damp; OUT receives float32 Q [out][in] (the dequantized
weights) and uint8 codes [out][in].
"""
import struct
import sys

import numpy as np


def f16(x):
    return np.float32(np.float16(np.float32(x)))


def group_params(w):
    lo, hi = np.float32(w.min()), np.float32(w.max())
    m = f16(lo)
    if hi == lo:
        return np.float32(0), m
    s = np.float32((hi - m) / np.float32(3.0))
    return (f16(s) if s > 0 else np.float32(0)), m


def nearest(w, s, m):
    lut = np.array([np.float32(s * k) + m for k in range(4)], dtype=np.float32)
    if s == 0:
        return np.zeros_like(w, dtype=np.uint8), np.full_like(w, m)
    mid = lut[:-1] + np.float32(0.5) * (lut[1:] - lut[:-1])
    code = (w > mid[0]).astype(np.uint8) + (w > mid[1]) + (w > mid[2])
    return code.astype(np.uint8), lut[code]


def main():
    raw = open(sys.argv[1], "rb").read()
    out, inn, gs, n = struct.unpack_from("<4i", raw, 0)
    off = 16
    W = np.frombuffer(raw, np.float32, out * inn, off).reshape(out, inn).astype(np.float64)
    off += 4 * out * inn
    X = np.frombuffer(raw, np.float32, n * inn, off).reshape(n, inn).astype(np.float64)
    off += 4 * n * inn
    (damp,) = struct.unpack_from("<d", raw, off)
    H = 2.0 * X.T @ X / n
    dead = np.diag(H) == 0
    mean_diag = np.mean(np.diag(H))
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * mean_diag * np.eye(inn)
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # H^-1 = U^T U, U upper
    Q = np.zeros((out, inn), np.float32)
    C = np.zeros((out, inn), np.uint8)
    params = [None] * out
    for i in range(inn):
        if i % gs == 0:
            k = min(gs, inn - i)
            params = [group_params(W[r, i:i + k].astype(np.float32)) for r in range(out)]
        w = W[:, i].astype(np.float32)
        for r in range(out):
            c, q = nearest(w[r:r + 1], *params[r])
            C[r, i], Q[r, i] = c[0], q[0]
        e = (W[:, i] - Q[:, i].astype(np.float64)) / U[i, i]
        W[:, i + 1:] -= np.outer(e, U[i, i + 1:])
    with open(sys.argv[2], "wb") as f:
        f.write(Q.tobytes())
        f.write(C.tobytes())


if __name__ == "__main__":
    main()
