#!/usr/bin/env bash
# Runs on the lent GPU machine (device tool), from the repository root, with .devbin/ holding
# xz-compressed release binaries built here (bench, perplexity; conformance optional) and .gl/ the Vulkan loader .deb.
#   strip -o .devbin/bench target/release/examples/bench && xz .devbin/bench   (same for the test)
# It builds the bench checkpoints with transformers there, runs the conformance suite on the GPU
# through wgpu (Vulkan) and measures prefill/decode with the bench example on wgpu and flex.
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
if [ -x /tmp/bin/conformance ]; then
  (cd /work/main && timeout 200 /tmp/bin/conformance --test-threads 2 > "$OUT/conformance.log" 2>&1; echo "conformance rc=$?")
  grep -E "test result|FAILED|panicked|adapter" "$OUT/conformance.log" | head -20
fi
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
