#!/usr/bin/env bash
# Runs on the lent GPU machine (device tool), from the repository root, with .devbin/ holding
# xz-compressed release binaries built here (bench, perplexity; the conformance and dtype test
# binaries optional) and .gl/ the Vulkan loader .deb.
#   strip -o .devbin/bench target/release/examples/bench && xz .devbin/bench   (same for the tests:
#   `cargo test --release --features ndarray,wgpu --no-run --test conformance --test dtype` names them)
# It builds the bench checkpoints with transformers there, runs the conformance and dtype suites
# on the GPU through wgpu (Vulkan) over every fixture (KILN_TEST_WGPU_ALL=1; lavapipe in CI runs
# a subset) and measures prefill/decode with the bench example on wgpu and the host CPU.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
nvidia-smi -L; nproc
mkdir -p /tmp/bin; for b in .devbin/*.xz; do n=$(basename "$b" .xz); xz -dc "$b" > /tmp/bin/$n; chmod +x /tmp/bin/$n; done
# Test binaries find their fixtures through the path they were built in.
mkdir -p /work; [ -e /work/main ] || ln -s "$PWD" /work/main
python3 tools/make_bench_model.py smollm2-135m /tmp/smollm2 > "$OUT/models.log" 2>&1 &
python3 tools/make_bench_model.py tinyllama-1.1b /tmp/tinyllama >> "$OUT/models.log" 2>&1 &
export KILN_FIXTURES_DIR=$PWD/tests/fixtures KILN_TEST_WGPU_ALL=1
for t in conformance dtype; do
  if [ -x /tmp/bin/$t ]; then
    (cd /work/main && timeout 200 /tmp/bin/$t --nocapture --test-threads 2 > "$OUT/$t.log" 2>&1; echo "$t rc=$?")
    grep -E "test result|FAILED|panicked|adapter" "$OUT/$t.log" | head -20
  fi
done
wait; cat "$OUT/models.log"
RUST_LOG=kiln=info timeout 20 /tmp/bin/bench --model tests/fixtures/llama-f32 --device wgpu --prompt-len 4 --gen 2 --json 2>&1 | grep -o "wgpu adapters.*"
for m in ${MODELS:-tinyllama smollm2}; do
  for d in ${DEVICES:-wgpu}; do
    for dt in ${DTYPES:-f16 f32}; do
      echo "== $m $d $dt"
      timeout ${BENCH_TIMEOUT:-150} /tmp/bin/bench --model /tmp/$m --device $d --dtype $dt --prompt-len 128 --gen ${GEN:-64} --json 2>&1 | tail -2 | tee -a "$OUT/bench.jsonl"
    done
  done
done
if [ -x /tmp/bin/perplexity ]; then
  for f in llama-f32 qwen3-bf16 gemma2-bf16; do for dt in f32 f16; do
    echo "$f wgpu $dt: $(timeout 30 /tmp/bin/perplexity --model tests/fixtures/$f --device wgpu --dtype $dt --file tests/fixtures/$f/paragraph.txt --json 2>&1 | tail -1)"
  done; done
fi
