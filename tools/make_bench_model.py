#!/usr/bin/env python3
"""Writes a randomly initialised model with the shapes of a real one, for speed measurements
(the numbers depend on shapes and dtype, not on the weights' values).

    python3 tools/make_bench_model.py smollm2-135m /tmp/smollm2-135m     # bf16, 135M params
    python3 tools/make_bench_model.py tinyllama-1.1b /tmp/tinyllama       # f16, 1.1B params
    python3 tools/make_bench_model.py tinyllama-1.1b /tmp/tinyllama-bf16 bf16   # dtype override
"""
import sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

SHAPES = {
    # HuggingFaceTB/SmolLM2-135M
    "smollm2-135m": (dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                          num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          max_position_embeddings=8192, rms_norm_eps=1e-5,
                          rope_parameters=dict(rope_type="default", rope_theta=100000.0),
                          tie_word_embeddings=True, bos_token_id=0, eos_token_id=0),
                     torch.bfloat16),
    # TinyLlama/TinyLlama-1.1B-Chat-v1.0
    "tinyllama-1.1b": (dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                            num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                            max_position_embeddings=2048, rms_norm_eps=1e-5,
                            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
                            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
                       torch.float16),
}


def rewrite_in_large_writes(out):
    """Rewrites each safetensors file with one large write. A file written in small pieces (as
    save_pretrained does) sits in the page cache in 4 KiB pages until evicted, and a mapped
    model streams slower from those (on the reference VM: SmolLM2 decode ~100 against ~115
    tok/s); written at once, or read back from disk after the cache was dropped, it is cached
    in 2 MiB folios like a model read from disk."""
    import glob
    import os
    for path in glob.glob(os.path.join(out, "*.safetensors")):
        with open(path, "rb") as f:
            data = f.read()
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)


def main():
    name, out = sys.argv[1], sys.argv[2]
    cfg, dtype = SHAPES[name]
    if len(sys.argv) > 3:
        dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[sys.argv[3]]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**cfg), dtype=dtype)
    model.save_pretrained(out)
    rewrite_in_large_writes(out)
    print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {dtype} -> {out}")


if __name__ == "__main__":
    main()
