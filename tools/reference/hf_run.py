#!/usr/bin/env python3
"""Run a Hugging Face checkpoint directory (rilq export --format hf) with
transformers, for tests/interop_hf.c, which compares the results with rilq's.

    hf_run.py DIR WINDOWS.ids LOGITS.f32 TEXTS.jsonl TOKENS.ids

WINDOWS.ids: token ids, one window per line; every window is run from scratch
(AutoModelForCausalLM, loaded in float32 whatever the stored dtype, so the only
difference to rilq is the stored rounding and summation order) and all positions'
logits go to LOGITS.f32 as raw little-endian float32 [windows][T][vocab].
TEXTS.jsonl: {"text": ...} lines; each is encoded by AutoTokenizer with its
defaults (special tokens added as the tokenizer's post-processor says) and the
ids go to TOKENS.ids, one text per line (an empty line for an empty encoding).

Exit 77 when torch or transformers cannot be imported (tools/setup.sh installs
transformers 4.45 into .cache/pylib; Debian's python3-torch serves torch)."""
import json
import sys

try:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import transformers
except Exception as e:  # noqa: BLE001 - any import failure means "not installed here"
    print(f"hf_run.py: cannot import torch/transformers: {e}", file=sys.stderr)
    sys.exit(77)


def main():
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    d, windows_path, logits_path, texts_path, tokens_path = sys.argv[1:]
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(d)
    with open(texts_path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    with open(tokens_path, "w") as f:
        for t in texts:
            f.write(" ".join(str(i) for i in tok(t)["input_ids"]) + "\n")
    model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    model.eval()
    with open(windows_path) as f:
        windows = [[int(x) for x in line.split()] for line in f if line.strip()]
    with open(logits_path, "wb") as out, torch.no_grad():
        for w in windows:
            logits = model(torch.tensor([w], dtype=torch.long)).logits[0]
            out.write(logits.float().numpy().astype(np.float32).tobytes())
    print(f"hf_run.py: transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{type(tok).__name__}: {len(texts)} texts, {len(windows)} windows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
