#!/usr/bin/env python3
"""Reference values for kiln's customisation and transparency features, computed with
transformers + peft on the tiny checkpoints that tools/make_fixtures.py writes.

Writes, under the output folder (default tests/fixtures):

- lora-<name>/: a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) made with
  peft for one base fixture (random A and B, so that it changes the model), and expected.json:
  greedy ids and mean NLL of base + adapter (peft's unmerged forward, float32), and the
  log-probabilities of each greedy token with the top 5 alternatives (expected_lora.json).
- taps-<name>.json: for a base fixture, the prompt's first TAPS_LEN ids, transformers'
  `output_hidden_states` (embeddings, each layer's output, the last after the final norm) and
  `output_attentions` (eager softmax weights, [heads, seq, seq] per layer), plus the logprobs
  of the prompt's greedy continuation (top 5) and of a continuation scored after the prompt.

Needs: pip install torch transformers peft safetensors. Run from the repository root after
tools/make_fixtures.py (the base checkpoints must exist in the same output folder):
    python3 tools/make_custom_fixtures.py [--out tests/fixtures] [--seed-offset K]
"""
import argparse
import json
import os
import shutil
import sys

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = 5
TAPS_LEN = 12
CONTINUATION = " the lighthouse kept turning"

ADAPTERS = {
    # Every projection of a Llama 3-style model, plain LoRA scaling (alpha / r).
    "lora-llama": dict(base="llama-f32", seed=21,
                       cfg=dict(r=4, lora_alpha=8,
                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                "gate_proj", "up_proj", "down_proj"])),
    # A bf16 base (the adapted projections are merged in f32; the rest stays half precision),
    # rank-stabilised scaling (alpha / sqrt(r)), attention only, a per-module rank override.
    "lora-qwen2": dict(base="qwen2-bf16", seed=22,
                       cfg=dict(r=8, lora_alpha=16, use_rslora=True,
                                target_modules=["q_proj", "v_proj", "down_proj"],
                                rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 4})),
    # Second adapters for two bases: switched per session on one loaded model (tensor path on
    # the f32 base, kiln's half-precision host kernels on the bf16 one).
    "lora-llama-b": dict(base="llama-f32", seed=25,
                         cfg=dict(r=2, lora_alpha=3, use_rslora=True,
                                  target_modules=["q_proj", "v_proj", "o_proj", "up_proj"])),
    "lora-qwen2-b": dict(base="qwen2-bf16", seed=26,
                         cfg=dict(r=4, lora_alpha=8,
                                  target_modules=["k_proj", "o_proj", "gate_proj", "up_proj"])),
    # GPT-2's Conv1D weights are stored [in, out] (fan_in_fan_out) and c_attn is fused q/k/v.
    "lora-gpt2": dict(base="gpt2-f32", seed=23,
                      cfg=dict(r=4, lora_alpha=4, fan_in_fan_out=True,
                               target_modules=["c_attn", "c_fc", "c_proj"])),
    # Phi-3's fused qkv_proj and gate_up_proj, split into parts with their updates (bf16 base).
    "lora-phi3": dict(base="phi3-bf16", seed=24,
                      cfg=dict(r=2, lora_alpha=6, target_modules=["qkv_proj", "gate_up_proj"])),
}

TAPS = ["llama-f32", "qwen3-f32", "mistral-window-f32", "phi3-bf16", "gemma2-bf16", "gpt2-f32"]


def tokenizer(base_dir):
    return PreTrainedTokenizerFast.from_pretrained(base_dir)


def top_logprobs(logits):
    logp = torch.log_softmax(logits.float(), dim=-1)
    vals, ids = logp.topk(TOP)
    return logp, [dict(id=int(i), logprob=float(v)) for v, i in zip(vals, ids)]


def greedy_with_logprobs(model, ids, n=16):
    ids = torch.tensor([ids])
    out, entries = [], []
    with torch.no_grad():
        for _ in range(n):
            logits = model(ids).logits[0, -1]
            logp, top = top_logprobs(logits)
            nxt = int(logits.argmax())
            out.append(nxt)
            entries.append(dict(id=nxt, logprob=float(logp[nxt]), top=top))
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out, entries


def mean_nll(model, ids):
    t = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(t).logits[0].float(), dim=-1)
    nll = -logp[:-1].gather(1, t[0, 1:, None]).squeeze(1)
    return float(nll.mean())


def build_adapter(name, spec, root, seed_offset):
    base_dir = os.path.join(root, spec["base"])
    out = os.path.join(root, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    torch.manual_seed(1000 * seed_offset + spec["seed"])
    cfg = LoraConfig(init_lora_weights=False, lora_dropout=0.0, bias="none", **spec["cfg"])
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        # peft's random init is small; make the adapter matter (a few % of the weights).
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(4.0)
    model.save_pretrained(out)
    # Reference: the base as stored (upcast) + the saved adapter, peft's unmerged forward.
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, out).eval()
    exp = json.load(open(os.path.join(base_dir, "expected.json")))
    greedy, entries = greedy_with_logprobs(model, exp["prompt_ids"])
    nll = mean_nll(model, exp["nll_ids"])
    expected = dict(
        reference=f"transformers {transformers.__version__}, peft {peft.__version__}, "
                  f"torch {torch.__version__}, float32",
        base=spec["base"], prompt=exp["prompt"], prompt_ids=exp["prompt_ids"],
        greedy_ids=greedy, logprobs=entries, nll_ids=exp["nll_ids"], mean_nll=nll,
        base_greedy_ids=exp["greedy_ids"], base_mean_nll=exp["mean_nll"],
    )
    json.dump(expected, open(os.path.join(out, "expected_lora.json"), "w"), ensure_ascii=False,
              indent=1)
    # No absolute paths of this machine in the committed config.
    cfg_path = os.path.join(out, "adapter_config.json")
    saved = json.load(open(cfg_path))
    saved["base_model_name_or_path"] = "../" + spec["base"]
    if isinstance(saved.get("target_modules"), list):
        saved["target_modules"] = sorted(saved["target_modules"])
    json.dump(saved, open(cfg_path, "w"), indent=2, sort_keys=True)
    for extra in ("README.md",):
        p = os.path.join(out, extra)
        if os.path.exists(p):
            os.remove(p)
    print(f"{name}: greedy {greedy[:6]}... (base {exp['greedy_ids'][:6]}...), "
          f"mean_nll {nll:.4f} (base {exp['mean_nll']:.4f})", file=sys.stderr)


def build_taps(base, root):
    base_dir = os.path.join(root, base)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    tok = tokenizer(base_dir)
    exp = json.load(open(os.path.join(base_dir, "expected.json")))
    ids = exp["prompt_ids"][:TAPS_LEN]
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
    hidden = [[round(x, 6) for x in h[0].flatten().tolist()] for h in out.hidden_states]
    attn = [[round(x, 6) for x in a[0].flatten().tolist()] for a in out.attentions]
    _, entries = greedy_with_logprobs(model, exp["prompt_ids"], n=8)
    cont = tok(CONTINUATION, add_special_tokens=False)["input_ids"]
    full = torch.tensor([exp["prompt_ids"] + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits[0].float(), dim=-1)
    p = len(exp["prompt_ids"])
    cont_logprobs = [float(logp[p - 1 + i, t]) for i, t in enumerate(cont)]
    taps = dict(
        reference=f"transformers {transformers.__version__}, torch {torch.__version__}, "
                  "float32, eager attention",
        ids=ids, seq=len(ids), hidden_size=out.hidden_states[0].shape[-1],
        heads=out.attentions[0].shape[1], hidden_states=hidden, attentions=attn,
        prompt_ids=exp["prompt_ids"], logprobs=entries,
        continuation=CONTINUATION, continuation_ids=cont, continuation_logprobs=cont_logprobs,
    )
    json.dump(taps, open(os.path.join(root, f"taps-{base}.json"), "w"))
    print(f"taps-{base}: {len(hidden)} hidden states, {len(attn)} attention maps", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    ap.add_argument("--seed-offset", type=int, default=0)
    args = ap.parse_args()
    for name, spec in ADAPTERS.items():
        build_adapter(name, spec, args.out, args.seed_offset)
    for base in TAPS:
        build_taps(base, args.out)


if __name__ == "__main__":
    main()
