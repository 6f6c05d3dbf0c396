#!/usr/bin/env bash
# Runs on the lent GPU machine (device tool), from the repository root, with .devbin/ holding
# xz-compressed release binaries built here (bench, conformance) and .gl/ the Vulkan loader .deb.
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
for m in ${MODELS:-smollm2 tinyllama}; do
  for d in ${DEVICES:-wgpu flex}; do
    for dt in ${DTYPES:-f32}; do
      echo "== $m $d $dt"
      timeout 150 /tmp/bin/bench --model /tmp/$m --device $d --dtype $dt --prompt-len 128 --gen 64 --json 2>&1 | tail -3 | tee -a "$OUT/bench.jsonl"
    done
  done
done
