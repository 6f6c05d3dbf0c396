#!/usr/bin/env bash
# Builds checkpoints the tests have never seen (new seeds; optionally the real 32k/50k
# vocabularies) with transformers, then checks that the examples' --json output reproduces the
# reference's greedy token ids and mean NLL, then runs tests/customisation.rs on them (adapters
# made with peft, logprobs, hidden states). Needs torch + transformers + peft (never in CI).
#   tools/check_unseen.sh [SEED_OFFSET] [--full-vocab] [--device cpu|ndarray|wgpu]
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-7}; shift || true
extra=(); device=cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --full-vocab) extra+=(--full-vocab) ;;
    --device) device=$2; shift ;;
  esac
  shift
done
out=$(mktemp -d)
python3 tools/make_fixtures.py --out "$out" --seed-offset "$seed" "${extra[@]}" 2>/dev/null
# The README's test command builds the examples too, with the warm target dir's features.
cargo test --release --no-run -q 2>/dev/null
fail=0
for dir in "$out"/*/; do
  name=$(basename "$dir")
  exp="$dir/expected.json"
  [ -f "$exp" ] || continue   # encoder fixtures (bert) are checked by tests/encoder.rs
  prompt=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['prompt'], end='')" "$exp")
  gen=$(./target/release/examples/generate --model "$dir" --device "$device" --dtype f32 --prompt "$prompt" \
        --max-new-tokens 16 --ignore-eos --json 2>/dev/null)
  ppl=$(./target/release/examples/perplexity --model "$dir" --device "$device" --dtype f32 \
        --file "$dir/paragraph.txt" --json 2>/dev/null)
  python3 - "$exp" "$gen" "$ppl" "$name" <<'PY' || fail=1
import json, sys
exp = json.load(open(sys.argv[1])); gen = json.loads(sys.argv[2]); ppl = json.loads(sys.argv[3])
ok_prompt = gen["prompt_tokens"] == exp["prompt_ids"]
ok_greedy = gen["generated_tokens"] == exp["greedy_ids"]
d = abs(ppl["mean_nll"] - exp["mean_nll"])
ok = ok_prompt and ok_greedy and d < 1e-3 and ppl["tokens"] == len(exp["nll_ids"])
print(f"{sys.argv[4]:12s} prompt ids {'ok' if ok_prompt else 'DIFFER'}, greedy {'ok' if ok_greedy else 'DIFFER'}, "
      f"NLL |{ppl['mean_nll']:.6f} - {exp['mean_nll']:.6f}| = {d:.2e} -> {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
done
# LoRA adapters, logprobs, scoring and hidden states/attentions against transformers + peft on
# the same unseen checkpoints (tests/customisation.rs reads KILN_FIXTURES_DIR).
python3 tools/make_custom_fixtures.py --out "$out" --seed-offset "$seed" 2>/dev/null
KILN_FIXTURES_DIR="$out" cargo test --release -q --features ndarray,wgpu --test customisation \
  || fail=1
rm -rf "$out"
exit $fail
