#!/usr/bin/env python3
"""Builds kiln's test fixtures with the reference implementation (Hugging Face transformers).

Writes tiny, randomly initialised checkpoints of each supported architecture under
tests/fixtures/<name>/ (config.json, model.safetensors, generation_config.json, tokenizer.json)
plus expected.json with what transformers computes for them:

- prompt_ids: the prompt encoded as transformers does by default (add_special_tokens=True)
- greedy_ids: a 16-token greedy continuation, EOS ignored (argmax of a full recomputation each step)
- greedy_text: tokenizer.decode(greedy_ids, skip_special_tokens=True)
- nll_ids / mean_nll: a paragraph's ids and mean -log p(token_i | tokens_<i) over positions 1..N
- last_logits: the logits at the prompt's last position

References are computed in float32 from a fresh load of the saved files (bf16 files are upcast;
an in-memory model that went through a dtype round trip would carry bf16-rounded RoPE buffers),
which is what kiln computes on CPU by default.

Large-logit variants (--large; tests/fixtures/large/<family>-<f32|bf16>): one spec per family
with its final norm scaled by 4, so that the logits are the size of a trained model's (max |logit|
~10-20, mean NLL well above ln(vocab)) and a small numerical change shows above the tests'
tolerances, which are relative to the logits' scale. Their expected.json adds greedy_margins: the
reference's top-1 minus top-2 logit at each greedy step (a step whose margin is below the
tolerance may legitimately pick the other token).

Needs: pip install torch transformers safetensors. Run from the repository root:
    python3 tools/make_fixtures.py [--out tests/fixtures] [--only NAME] [--seed-offset K]
    python3 tools/make_fixtures.py --large [--out tests/fixtures/large]
The tokenizers are cut-down copies of real ones in ../shared/tokenizers (see cut_vocab()), so the
fixtures stay small while exercising SentencePiece byte fallback and GPT-2 byte-level BPE.
"""
import argparse
import json
import os
import shutil
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "tokenizers")

PROMPT = "The quick brown fox, naïve café owner 🦀, said: \"Hello world!\""
PARAGRAPH = (
    "Once upon a time there was a little town by the sea. Every morning the fishermen went out "
    "with their boats, and every evening they came back with stories of the waves. The children "
    "listened, the old men nodded, and the lighthouse kept turning through the night."
)


def cut_vocab(src, keep_first, extra_chars):
    """A smaller copy of a BPE tokenizer.json: the first `keep_first` ids, plus single-character
    tokens in `extra_chars`, plus added tokens; ids renumbered in order; merges kept when both
    parts and the result survive."""
    t = json.load(open(src))
    model = t["model"]
    vocab = model["vocab"]
    added = {a["content"] for a in t["added_tokens"]}
    keep = {tok for tok, i in vocab.items() if i < keep_first or tok in extra_chars or tok in added}
    ordered = sorted(keep, key=lambda tok: vocab[tok])
    new_vocab = {tok: i for i, tok in enumerate(ordered)}
    merges = []
    for m in model["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in new_vocab and b in new_vocab and (a + b) in new_vocab:
            merges.append(m)
    model["vocab"] = new_vocab
    model["merges"] = merges
    for a in t["added_tokens"]:
        a["id"] = new_vocab[a["content"]]
    pp = t.get("post_processor")
    if pp and pp.get("type") == "TemplateProcessing":
        for name, st in pp.get("special_tokens", {}).items():
            st["ids"] = [new_vocab[name]]
    return t


def llama_tokenizer():
    ascii_chars = {chr(c) for c in range(32, 127)} | {"\u2581"}
    return cut_vocab(os.path.join(SHARED, "llama2-vocab", "tokenizer.json"), 1000, ascii_chars)


def gpt2_tokenizer():
    return cut_vocab(os.path.join(SHARED, "gpt2", "tokenizer.json"), 1000, set())


def perturb(model, gen):
    """transformers initialises norms to 1 and biases to 0; make them random too, so that
    a loader that skipped them would be caught."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or (".ln_" in name and name.endswith(".weight")):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def scale_final_norm(model, factor):
    """Multiplies the final norm's output by `factor` (weight and bias; Gemma stores w for a
    (1 + w) scale, so w' = factor * (1 + w) - 1)."""
    gemma = model.config.model_type.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("model.norm.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"):
                if gemma and name.endswith("weight"):
                    p.copy_(factor * (1.0 + p) - 1.0)
                else:
                    p.mul_(factor)


SPECS = {
    # Llama 3.1-style: GQA and llama3 RoPE scaling (original context short so that it matters).
    "llama-f32": dict(
        arch="llama", dtype=torch.float32, tok="llama", seed=1,
        cfg=dict(rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                      low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=32)),
    ),
    # Llama 2-style stored in bf16, linear RoPE scaling, attention and MLP biases.
    "llama-bf16": dict(
        arch="llama", dtype=torch.bfloat16, tok="llama", seed=2,
        cfg=dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
                 attention_bias=True, mlp_bias=True),
    ),
    # Mistral with head_dim != hidden/heads (as Mistral Nemo), window larger than the tests.
    "mistral-f32": dict(
        arch="mistral", dtype=torch.float32, tok="llama", seed=3,
        cfg=dict(head_dim=24, sliding_window=4096,
                 rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    ),
    # The same stored in f16.
    "mistral-f16": dict(
        arch="mistral", dtype=torch.float16, tok="llama", seed=6,
        cfg=dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    ),
    # Qwen2: q/k/v biases, tied embeddings, GPT-2 byte-level tokenizer without BOS.
    "qwen2-f32": dict(
        arch="qwen2", dtype=torch.float32, tok="gpt2", seed=4,
        cfg=dict(tie_word_embeddings=True,
                 rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    ),
    # Mistral whose sliding window (8) is far shorter than the prompt, the continuation and the
    # scored text (~650 tokens: chunked prefill, and the rolling cache drops old positions).
    "mistral-window-f32": dict(
        arch="mistral", dtype=torch.float32, tok="llama", seed=7, long_text=True,
        cfg=dict(sliding_window=8, max_position_embeddings=1024,
                 rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    ),
    # Qwen3: per-head q/k RMSNorm, head_dim (32) != hidden / heads (8).
    "qwen3-f32": dict(
        arch="qwen3", dtype=torch.float32, tok="gpt2", seed=8,
        cfg=dict(head_dim=32, tie_word_embeddings=True,
                 rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    ),
    # Qwen3 with a sliding window on layer 1 only (layer_types), stored in bf16.
    "qwen3-bf16": dict(
        arch="qwen3", dtype=torch.bfloat16, tok="gpt2", seed=9,
        cfg=dict(use_sliding_window=True, sliding_window=16, max_window_layers=1, head_dim=16,
                 tie_word_embeddings=False,
                 rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    ),
    # Gemma: (1 + w) norms, sqrt(hidden) embedding scale, GeGLU (tanh), tied head.
    "gemma-f32": dict(
        arch="gemma", dtype=torch.float32, tok="llama", seed=10,
        cfg=dict(head_dim=16, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    ),
    # Gemma 2: soft-capping (small caps, so that they bite), sliding/global layers with a window
    # shorter than the prompt, extra norms, query_pre_attn_scalar != head_dim; bf16 file.
    "gemma2-bf16": dict(
        arch="gemma2", dtype=torch.bfloat16, tok="llama", seed=11,
        cfg=dict(head_dim=16, sliding_window=8, query_pre_attn_scalar=24,
                 attn_logit_softcapping=2.0, final_logit_softcapping=5.0,
                 rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    ),
    # Gemma 3: q/k norms, local and global RoPE (linear scaling on global layers).
    "gemma3-f32": dict(
        arch="gemma3_text", dtype=torch.float32, tok="llama", seed=12,
        cfg=dict(head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
                 layer_types=["sliding_attention", "full_attention"],
                 rope_parameters={
                     "full_attention": dict(rope_type="linear", factor=2.0, rope_theta=1000000.0),
                     "sliding_attention": dict(rope_type="default", rope_theta=10000.0)}),
    ),
    # Phi-3: fused qkv_proj / gate_up_proj, LongRoPE. The original context (64) is longer than
    # prompt + continuation (short factors) and shorter than the scored paragraph (long factors).
    "phi3-f32": dict(
        arch="phi3", dtype=torch.float32, tok="llama", seed=13,
        cfg=dict(original_max_position_embeddings=64, max_position_embeddings=512, pad_token_id=0,
                 num_attention_heads=2, num_key_value_heads=1,
                 rope_parameters=dict(rope_type="longrope", rope_theta=10000.0,
                                      short_factor=[1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8],
                                      long_factor=[1.2, 1.9, 2.7, 3.9, 5.3, 7.1, 9.4, 12.0]))),
    # Phi-4-mini style: a partial rotary factor (half of each head rotates), sliding window.
    "phi3-bf16": dict(
        arch="phi3", dtype=torch.bfloat16, tok="llama", seed=14,
        cfg=dict(sliding_window=16, partial_rotary_factor=0.5, pad_token_id=0,
                 rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                      partial_rotary_factor=0.5))),
    # Mixtral: sparse MoE, 4 experts, top-2 routing renormalised.
    "mixtral-f32": dict(
        arch="mixtral", dtype=torch.float32, tok="llama", seed=15,
        cfg=dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
                 rope_parameters=dict(rope_type="default", rope_theta=1000000.0))),
    "mixtral-bf16": dict(
        arch="mixtral", dtype=torch.bfloat16, tok="llama", seed=16,
        cfg=dict(num_local_experts=6, num_experts_per_tok=3, sliding_window=None,
                 rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    # GPT-2: learned positions, LayerNorm, Conv1D (transposed) weights, fused c_attn, gelu_new.
    "gpt2-f32": dict(arch="gpt2", dtype=torch.float32, tok="gpt2", seed=17, cfg=dict()),
    # Granite: embedding, attention, residual multipliers and logits scaling, all far from 1.
    "granite-f32": dict(
        arch="granite", dtype=torch.float32, tok="llama", seed=18,
        cfg=dict(embedding_multiplier=3.0, attention_multiplier=0.2, residual_multiplier=0.5,
                 logits_scaling=2.5, rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    # SmolLM3: a NoPE layer every second one, with a sliding window (8) on the NoPE layers;
    # tied head by default.
    "smollm3-f32": dict(
        arch="smollm3", dtype=torch.float32, tok="gpt2", seed=19,
        cfg=dict(num_hidden_layers=4, no_rope_layer_interval=2, use_sliding_window=True, pad_token_id=0,
                 sliding_window=8, rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    # Qwen3-MoE: per-head q/k norms, 4 experts of width 48, top-2 not renormalised, layer 1 a
    # dense MLP (mlp_only_layers).
    "qwen3_moe-f32": dict(
        arch="qwen3_moe", dtype=torch.float32, tok="gpt2", seed=20,
        cfg=dict(num_hidden_layers=3, head_dim=16, num_experts=4, num_experts_per_tok=2,
                 moe_intermediate_size=48, norm_topk_prob=False, mlp_only_layers=[1],
                 rope_parameters=dict(rope_type="default", rope_theta=1000000.0))),
    # OLMo 2: norms after the blocks, q/k norms over all heads of a position.
    "olmo2-f32": dict(
        arch="olmo2", dtype=torch.float32, tok="gpt2", seed=21,
        cfg=dict(pad_token_id=0, rope_parameters=dict(rope_type="default", rope_theta=500000.0))),
    "qwen2-bf16": dict(
        arch="qwen2", dtype=torch.bfloat16, tok="gpt2", seed=5,
        cfg=dict(tie_word_embeddings=False,
                 rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    ),
}


# The large-logit variants: one spec per family (its most demanding fixture), each stored in f32
# and in bf16. Gemma 2's caps are its real ones (50 / 30): the small fixture's caps of 2 and 5
# would squash the large logits back.
LARGE = {
    "llama": ("llama-f32", {}),
    "mistral": ("mistral-window-f32", {}),
    "mixtral": ("mixtral-f32", {}),
    "qwen2": ("qwen2-f32", {}),
    "qwen3": ("qwen3-bf16", {}),
    "phi3": ("phi3-f32", {}),
    "gemma": ("gemma-f32", {}),
    "gemma2": ("gemma2-bf16", dict(attn_logit_softcapping=50.0, final_logit_softcapping=30.0)),
    "gemma3": ("gemma3-f32", {}),
    "gpt2": ("gpt2-f32", {}),
    "granite": ("granite-f32", dict(logits_scaling=1.25)),
    "smollm3": ("smollm3-f32", {}),
    "qwen3_moe": ("qwen3_moe-f32", dict(norm_topk_prob=True)),
    "olmo2": ("olmo2-f32", {}),
}


def large_specs():
    out = {}
    for family, (base, cfg) in LARGE.items():
        for dtype in (torch.float32, torch.bfloat16):
            spec = dict(SPECS[base])
            spec["cfg"] = {**spec["cfg"], **cfg}
            spec["dtype"] = dtype
            spec["seed"] = spec["seed"] + 100
            spec["final_norm_scale"] = 4.0
            out[f"{family}-{str(dtype).replace('torch.', '').replace('float32', 'f32').replace('bfloat16', 'bf16')}"] = spec
    return out


def build(name, spec, out_root, seed_offset, full_vocab=False):
    out = os.path.join(out_root, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    if full_vocab:
        src = "llama2-vocab" if spec["tok"] == "llama" else "gpt2"
        tok_json = json.load(open(os.path.join(SHARED, src, "tokenizer.json")))
        tok_json["truncation"] = None
    else:
        tok_json = llama_tokenizer() if spec["tok"] == "llama" else gpt2_tokenizer()
    tok_path = os.path.join(out, "tokenizer.json")
    json.dump(tok_json, open(tok_path, "w"), ensure_ascii=False)
    vocab = len(tok_json["model"]["vocab"])
    if spec["tok"] == "llama":
        bos, eos = 1, 2
        tok = PreTrainedTokenizerFast(tokenizer_file=tok_path, bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>")
    else:
        bos = eos = tok_json["model"]["vocab"]["<|endoftext|>"]
        tok = PreTrainedTokenizerFast(tokenizer_file=tok_path, eos_token="<|endoftext|>")
    tok.save_pretrained(out)  # tokenizer_config.json (+ rewritten tokenizer.json)

    cfg_cls = transformers.AutoConfig.for_model
    base = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=512, rms_norm_eps=1e-5, initializer_range=0.15,
                bos_token_id=bos, eos_token_id=eos)
    if spec["arch"] == "gpt2":
        base = dict(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                    initializer_range=0.15, bos_token_id=bos, eos_token_id=eos)
    base.update(spec["cfg"])
    cfg = cfg_cls(spec["arch"], **base)
    torch.manual_seed(1000 * seed_offset + spec["seed"])
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    gen = torch.Generator().manual_seed(spec["seed"])
    perturb(model, gen)
    if spec.get("final_norm_scale"):
        scale_final_norm(model, spec["final_norm_scale"])
    model = model.to(spec["dtype"])
    model.save_pretrained(out)

    # Reference: reload as stored, compute in float32.
    ref = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompt_ids = tok(PROMPT)["input_ids"]
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        last_logits = ref(ids).logits[0, -1].tolist()
        greedy, margins = [], []
        for _ in range(16):
            row = ref(ids).logits[0, -1]
            top2 = torch.topk(row, 2).values
            margins.append(float(top2[0] - top2[1]))
            nxt = int(row.argmax())
            greedy.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        paragraph = " ".join([PARAGRAPH] * 6) if spec.get("long_text") else PARAGRAPH
        nll_ids = tok(paragraph)["input_ids"]
        t = torch.tensor([nll_ids])
        logp = torch.log_softmax(ref(t).logits[0].float(), dim=-1)
        nll = -logp[:-1].gather(1, t[0, 1:, None]).squeeze(1)
    expected = dict(
        reference=f"transformers {transformers.__version__}, torch {torch.__version__}, float32",
        architecture=spec["arch"], stored_dtype=str(spec["dtype"]).replace("torch.", ""),
        prompt=PROMPT, prompt_ids=prompt_ids, greedy_ids=greedy,
        greedy_text=tok.decode(greedy, skip_special_tokens=True),
        paragraph=paragraph, nll_ids=nll_ids, mean_nll=float(nll.mean()),
        last_logits=[round(x, 6) for x in last_logits],
    )
    if spec.get("final_norm_scale"):
        # Full precision: the tests' tolerance is ~2e-5 of the largest logit.
        expected["last_logits"] = last_logits
        expected["greedy_margins"] = margins
        expected["max_abs_logit"] = max(abs(x) for x in last_logits)
    json.dump(expected, open(os.path.join(out, "expected.json"), "w"), ensure_ascii=False, indent=1)
    open(os.path.join(out, "paragraph.txt"), "w").write(paragraph)
    print(f"{name}: vocab {vocab}, prompt {len(prompt_ids)} ids, greedy {greedy[:6]}..., "
          f"mean_nll {float(nll.mean()):.4f}, max |logit| {max(abs(x) for x in last_logits):.2f}, "
          f"least margin {min(margins):.5f}", file=sys.stderr)


ENCODER_TEXTS = ["The cat sits on the mat.", "a", "naïve café 🦀 " * 5,
                 "Stock markets fell sharply on Tuesday, then recovered."]


def build_bert(out_root):
    """A tiny random BERT with sentence-transformers files, and its pooled embeddings for a
    padded batch under each pooling mode (mean, cls, max), not normalised."""
    out = os.path.join(out_root, "bert-f32")
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "1_Pooling"))
    tok_json = llama_tokenizer()
    tok_path = os.path.join(out, "tokenizer.json")
    json.dump(tok_json, open(tok_path, "w"), ensure_ascii=False)
    vocab = len(tok_json["model"]["vocab"])
    cfg = transformers.AutoConfig.for_model(
        "bert", vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2,
        initializer_range=0.15, pad_token_id=0)
    torch.manual_seed(18)
    model = transformers.AutoModel.from_config(cfg, add_pooling_layer=False).eval()
    gen = torch.Generator().manual_seed(18)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith(".bias"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}],
              open(os.path.join(out, "modules.json"), "w"), indent=1)
    json.dump({"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False},
              open(os.path.join(out, "1_Pooling", "config.json"), "w"), indent=1)
    tok = PreTrainedTokenizerFast(tokenizer_file=tok_path, pad_token="<unk>")
    enc = tok(ENCODER_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = {
        "mean": ((hidden * mask).sum(1) / mask.sum(1)).tolist(),
        "cls": hidden[:, 0].tolist(),
        "max": hidden.masked_fill(mask == 0, -1e9).max(1).values.tolist(),
    }
    json.dump({"reference": f"transformers {transformers.__version__}, float32",
               "texts": ENCODER_TEXTS, "token_counts": enc["attention_mask"].sum(1).tolist(),
               "pooled": pooled},
              open(os.path.join(out, "expected_embeddings.json"), "w"), ensure_ascii=False)
    print(f"bert-f32: vocab {vocab}, tokens {enc['attention_mask'].sum(1).tolist()}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--only", action="append")
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="different weights, same shapes (for checking on unseen checkpoints)")
    ap.add_argument("--large", action="store_true",
                    help="build the large-logit variants (default --out tests/fixtures/large)")
    ap.add_argument("--full-vocab", action="store_true",
                    help="use the real tokenizers (32k/50k vocabularies): larger, not for committing")
    args = ap.parse_args()
    if args.large:
        out = args.out or os.path.join(ROOT, "tests", "fixtures", "large")
        for name, spec in large_specs().items():
            if not args.only or name in args.only:
                build(name, spec, out, args.seed_offset, args.full_vocab)
        return
    args.out = args.out or os.path.join(ROOT, "tests", "fixtures")
    for name, spec in SPECS.items():
        if args.only and name not in args.only:
            continue
        build(name, spec, args.out, args.seed_offset, args.full_vocab)
    if not args.only or "bert-f32" in args.only:
        build_bert(args.out)


if __name__ == "__main__":
    main()
