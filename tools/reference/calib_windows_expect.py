#!/usr/bin/env python3
"""Expected RILQ calibration draws (algorithms.md 1.4) for tests/test_calib.c.

The draw depends on token counts only, so the test feeds a fake list of
document lengths (no tokenizer needed):
    len(d) = (d * 7919) % 900 + 50, 100 documents, T = 512, 20 windows, seed 42,
then the split/shuffle with 5 held out. Prints C arrays to paste into the test."""
import random

def doc_len(d):
    return (d * 7919) % 900 + 50

def draw(n_docs, T, n, seed):
    random.seed(seed)
    out = []
    for _ in range(n):
        while True:
            i = random.randint(0, n_docs - 1)
            if doc_len(i) > T:
                break
        s = random.randint(0, doc_len(i) - T - 1)
        out.append((i, s))
    return out

def order(n, n_val, seed):
    idx = list(range(n))
    val, train = idx[n - n_val:], idx[:n - n_val]
    random.seed(seed)
    random.shuffle(val)
    random.seed(seed)
    random.shuffle(train)
    return val + train

w = draw(100, 512, 20, 42)
print("static const int64_t expect_doc[20] = {%s};" % ", ".join(str(d) for d, _ in w))
print("static const int64_t expect_start[20] = {%s};" % ", ".join(str(s) for _, s in w))
print("static const int expect_order[20] = {%s};" % ", ".join(str(k) for k in order(20, 5, 42)))
