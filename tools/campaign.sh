#!/usr/bin/env bash
# Rounds of the side-by-side measurement in docs/performance.md: per round, the machine's read
# bandwidth (tools/membw.c), then on each bench model kiln's `bench --interleave none,q8,q4
# --read-bandwidth` (P = 128, G = 32: bf16 as published, Q8 and Q4 alternating step by step)
# and candle's f32 and f16 (tools/candle-bench). Prints one JSON line a model and round to
# OUT (default campaign.jsonl) and, at the end, the docs' tables.
#
#   python3 tools/make_bench_model.py smollm2-135m /tmp/smollm2-135m
#   python3 tools/make_bench_model.py tinyllama-1.1b /tmp/tinyllama-bf16 bf16
#   gcc -O3 -mavx2 -fopenmp tools/membw.c -o /tmp/membw
#   (cd tools/candle-bench && cargo build --release)
#   cargo build --release --features ndarray,wgpu --example bench
#   tools/campaign.sh 5                      # ROUNDS [OUT]; MODELS="/tmp/a /tmp/b" to choose
#
# Run nothing else meanwhile: the VM's memory moves by ±10 % between runs seconds apart, and
# compile jobs or tests beside it move it more.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
out=${2:-campaign.jsonl}
models=${MODELS:-/tmp/tinyllama-bf16 /tmp/smollm2-135m}
bench=target/release/examples/bench
candle=tools/candle-bench/target/release/candle-bench
membw=${MEMBW:-/tmp/membw}
for tool in "$bench" "$candle" "$membw"; do
  [ -x "$tool" ] || { echo "campaign: $tool is missing (see the commands at the top)" >&2; exit 1; }
done
for r in $(seq "$rounds"); do
  bw=$(OMP_NUM_THREADS=2 "$membw" | awk '/^best/ {print $2}')
  for m in $models; do
    k=$("$bench" --model "$m" --device cpu --interleave none,q8,q4 --read-bandwidth \
      --prompt-len 128 --gen 32 --json 2>/dev/null)
    c32=$("$candle" "$m" f32 128 32 2>/dev/null | tail -1)
    c16=$("$candle" "$m" f16 128 32 2>/dev/null | tail -1)
    echo "{\"round\":$r,\"time\":\"$(date +%H:%M)\",\"membw\":$bw,\"model\":\"$m\",\"kiln\":$k,\"candle_f32\":$c32,\"candle_f16\":$c16}" >>"$out"
  done
done
python3 - "$out" <<'EOF'
import json, os, sys

# Bytes a decode step streams in bf16 (docs/performance.md, "Roofline"), by config shape.
def step_bytes(model_dir):
    c = json.load(open(os.path.join(model_dir, "config.json")))
    h, i, n = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    d = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    layer = h * q + 2 * h * kv + q * h + 3 * h * i
    return 2 * (n * layer + c["vocab_size"] * h)

rows = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    rows.setdefault(d["model"], []).append(d)
for model, rs in rows.items():
    b = step_bytes(model)
    print(f"\n{model}\n")
    print("| round | probe GB/s | kiln default decode (% roofline) | kiln prefill | Q8 × | Q4 × "
          "| candle f32 decode / prefill | candle f16 decode / prefill | decode × candle's best "
          "| prefill × candle's best |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in rs:
        k = d["kiln"]
        v = {x["quantize"]: x for x in k["variants"]}
        dec, pre = v["none"]["decode_tokens_per_s"], v["none"]["prefill_tokens_per_s"]
        c32, c16 = d["candle_f32"], d["candle_f16"]
        cd = max(c32["decode_tokens_per_s"], c16["decode_tokens_per_s"])
        cp = max(c32["prefill_tokens_per_s"], c16["prefill_tokens_per_s"])
        roof = k["read_gb_per_s"] * 1e9 / b
        print(f'| {d["round"]} ({d["time"]}) | {k["read_gb_per_s"]:.1f} | {dec:.2f} ({100 * dec / roof:.0f} %) '
              f'| {pre:.0f} | {v["q8"]["decode_tokens_per_s"] / dec:.2f} | {v["q4"]["decode_tokens_per_s"] / dec:.2f} '
              f'| {c32["decode_tokens_per_s"]:.2f} / {c32["prefill_tokens_per_s"]:.0f} '
              f'| {c16["decode_tokens_per_s"]:.2f} / {c16["prefill_tokens_per_s"]:.0f} '
              f'| {dec / cd:.2f} | {pre / cp:.2f} |')
EOF
