#!/usr/bin/python3
"""A batched PyTorch multiple-choice scorer: the reference that build/bench_eval
measures `rilq eval`'s scoring against (run with /usr/bin/python3, Debian's
python3-torch).

It scores requests the way lm-evaluation-harness's HF backend does
(lm_eval/models/huggingface.py, _loglikelihood_tokens): every request runs
whole, input = (context + continuation)[:-1]; requests are sorted by length,
longest first, and run in batches of --batch padded at the end; the model
computes logits at every position of the batch, log_softmax over the
vocabulary, and the continuation's log-probabilities are gathered and summed.
The model is tools/reference/llama_ref.py's forward (fp32, eager attention), on
weights bench_eval exported from the very model it scores.

    torch_mc_scorer.py MODEL_DIR REQUESTS.json --threads T [--batch 8] --out RESULT.json

REQUESTS.json: {"requests": [{"input": [ids], "cont": [ids]}, ...]} (tokenized by
rilq; the last len(cont) positions of input predict cont).
RESULT.json: {"seconds": s (scoring only, after one warm-up batch), "cpu_seconds": the
process's CPU time over the same span (all threads), "threads": T,
"batch": b, "ll": [...], "greedy": [...]} in request order.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import llama_ref  # noqa: E402  (exits 77 when torch is missing)
import torch  # noqa: E402


def score_batch(cfg, W, head, batch):
    """batch: [(input ids, cont ids)] -> [(ll, greedy)]."""
    T = max(len(inp) for inp, _ in batch)
    tokens = torch.zeros((len(batch), T), dtype=torch.long)
    for b, (inp, _) in enumerate(batch):
        tokens[b, : len(inp)] = torch.tensor(inp, dtype=torch.long)
    logits = llama_ref.final_hidden(cfg, W, tokens) @ head.t()
    logprobs = torch.log_softmax(logits, dim=-1)
    out = []
    for b, (inp, cont) in enumerate(batch):
        rows = logprobs[b, len(inp) - len(cont) : len(inp)]
        target = torch.tensor(cont, dtype=torch.long)
        greedy = bool((rows.argmax(dim=-1) == target).all())
        out.append((float(rows.gather(1, target[:, None]).sum()), greedy))
    return out


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("requests")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg, W = llama_ref.load_model(a.model)
    W = {k: v.to(torch.float32) for k, v in W.items()}
    head = llama_ref.head_weight(cfg, W)
    with open(a.requests) as f:
        reqs = [(r["input"], r["cont"]) for r in json.load(f)["requests"]]
    # lm-eval's Collator order: longest first, ties by the tokens themselves
    order = sorted(range(len(reqs)), key=lambda i: (-len(reqs[i][0]) - 1, tuple(reqs[i][0])))
    ll = [0.0] * len(reqs)
    greedy = [False] * len(reqs)
    with torch.inference_mode():
        score_batch(cfg, W, head, [reqs[order[-1]]])  # warm-up: first-call allocations, not timed
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(0, len(order), a.batch):
            idx = order[s : s + a.batch]
            for i, (v, g) in zip(idx, score_batch(cfg, W, head, [reqs[i] for i in idx])):
                ll[i], greedy[i] = v, g
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    with open(a.out, "w") as f:
        json.dump({"seconds": seconds, "cpu_seconds": cpu_seconds, "threads": a.threads, "batch": a.batch, "ll": ll, "greedy": greedy}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
