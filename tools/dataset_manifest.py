#!/usr/bin/env python3
"""Write datasets/manifest.json: name, bytes, line count and sha256 of every data
file under a dataset root (default $RILQ_DATA/datasets), so that a user can
check a copy they assembled against the one the tests were written for.

Run:  python3 tools/dataset_manifest.py /work/shared/datasets > datasets/manifest.json
"""
import hashlib
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.environ.get("RILQ_DATA", "."), "datasets")
# documents per file for the evaluation and calibration files rilq reads
RECORDS = {
    "arc/ARC-Easy-Test.jsonl": 2376, "arc/ARC-Challenge-Test.jsonl": 1172,
    "arc/ARC-Easy-Train.jsonl": 2251, "arc/ARC-Challenge-Train.jsonl": 1119,
    "arc/ARC-Easy-Dev.jsonl": 570, "arc/ARC-Challenge-Dev.jsonl": 299,
    "piqa/valid.jsonl": 1838, "piqa/valid-labels.lst": 1838, "piqa/train-labels.lst": 16113,
    "piqa/tests.jsonl": 3084,
    "hellaswag/hellaswag_val_full.txt": 10042,
    "winogrande/winogrande-dev.llmfoundry.jsonl": 1267, "winogrande/dev-labels.lst": 1267,
    "gsm8k/test.jsonl": 1319, "gsm8k/train.jsonl": 7473,
    "c4/c4-validation-2k.jsonl": 2000,
    "wikitext2/wiki.test.raw": None, "wikitext2/wiki.valid.raw": None,
}
USED_BY = {
    "arc/ARC-Easy-Test.jsonl": "arc_easy", "arc/ARC-Challenge-Test.jsonl": "arc_challenge",
    "piqa/valid.jsonl": "piqa", "piqa/valid-labels.lst": "piqa",
    "hellaswag/hellaswag_val_full.txt": "hellaswag",
    "winogrande/winogrande-dev.llmfoundry.jsonl": "winogrande", "winogrande/dev-labels.lst": "winogrande",
    "gsm8k/test.jsonl": "gsm8k (eval)", "gsm8k/train.jsonl": "gsm8k (few-shot pool, fine-tuning)",
    "c4/c4-validation-2k.jsonl": "calibration / perplexity", "wikitext2/wiki.test.raw": "perplexity",
}
files = []
for dirpath, _, names in sorted(os.walk(root)):
    for name in sorted(names):
        if name.endswith(".md"):
            continue
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        data = open(path, "rb").read()
        entry = {"path": rel, "bytes": len(data), "lines": data.count(b"\n"),
                 "sha256": hashlib.sha256(data).hexdigest()}
        if RECORDS.get(rel):
            entry["records"] = RECORDS[rel]
        if rel in USED_BY:
            entry["used_by"] = USED_BY[rel]
        files.append(entry)
print(json.dumps({"description": "rilq dataset layout under $RILQ_DATA/datasets; see datasets/README.md",
                  "files": files}, indent=2))
