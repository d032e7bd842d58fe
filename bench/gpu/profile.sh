#!/usr/bin/env bash
# Where the GPU time goes: phase timings of our LoRA training step (SIZESPEC_PROFILE=1), an A/B of
# the CUDA device settings (event tracking, memory-pool release), and Nsight Compute's per-kernel
# time summary of one training step and of a prefill on a 2-layer model — with PyTorch's training
# bench in the same call as the baseline. Writes $OUT/profile.log and $OUT/ncu-*.csv.
#
#   BIN_DIR=.bin OUT=$OUT bash bench/gpu/profile.sh [sections: torch,phases,ab,ncu-train,ncu-prefill]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN_DIR=${BIN_DIR:-$HERE/bin}
WORK=${WORK:-/tmp/sizespec-gpu}
OUT=${OUT:-$WORK/out}
SECTIONS=${1:-torch,phases,ab,ncu-train,ncu-prefill}
W=$WORK/models
mkdir -p "$OUT" "$W" "$WORK/bin"
exec > >(tee -a "$OUT/profile.log") 2>&1
want() { [[ ",$SECTIONS," == *",$1,"* ]]; }
G=$WORK/bin/gpucheck
if [ -f "$BIN_DIR/gpucheck.gz" ]; then gunzip -c "$BIN_DIR/gpucheck.gz" > "$G"; else cp "$BIN_DIR/gpucheck" "$G"; fi
chmod +x "$G"
cat "$BIN_DIR/COMMIT" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
T0=$(date +%s)
say() { echo "[profile $(($(date +%s) - T0))s] $*"; }
# (wait on the pids: a bare `wait` would also wait for the `tee` above, forever)
pids=()
for n in llama3b llama3b-2l; do
  [ -f "$W/$n/config.json" ] && continue
  extra=(); [[ $n == *-2l ]] && extra=(--layers 2)
  python3 "$HERE/torch_ref.py" weights --shape "${n%-2l}" --out "$W/$n" "${extra[@]}" > "$WORK/w-$n.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
say "weights ready"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if want torch; then
  say "torch train"; python3 "$HERE/torch_ref.py" bench --shape llama3b --what train --json "$OUT/torch-train.json"
  cat "$OUT/torch-train.json"; echo
fi
if want phases; then
  say "ours train, phases"
  SIZESPEC_PROFILE=1 "$G" bench --device cuda:0 --dtype bf16 --model "$W/llama3b" --shape llama3b --what train \
    --ranks 16 --train-steps 3 --backward "${BACKWARD:-recompute}" --json "$OUT/ours-train.json"
  cat "$OUT/ours-train.json"; echo
fi
if want ab; then
  say "ours train, candle's defaults (event tracking on, pool released at each sync)"
  SIZESPEC_CUDA_EVENTS=1 SIZESPEC_CUDA_POOL_RELEASE=1 "$G" bench --device cuda:0 --dtype bf16 --model "$W/llama3b" \
    --shape llama3b --what train --ranks 16 --train-steps 3 --json "$OUT/ours-train-ab.json"
  cat "$OUT/ours-train-ab.json"; echo
fi
if want ncu-train && [ -n "$NCU" ]; then
  say "ncu: one training step, 2 layers"
  "$NCU" --cache-control none --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel --csv \
    "$G" bench --device cuda:0 --dtype bf16 --model "$W/llama3b-2l" --what train --ranks 16 --train-steps 1 \
    > "$OUT/ncu-train.csv" 2> "$WORK/ncu-train.err"; echo "rc=$?"; tail -3 "$WORK/ncu-train.err"
fi
if want ncu-prefill && [ -n "$NCU" ]; then
  say "ncu: prefill, 2 layers"
  "$NCU" --cache-control none --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel --csv \
    "$G" bench --device cuda:0 --dtype bf16 --model "$W/llama3b-2l" --what prefill \
    > "$OUT/ncu-prefill.csv" 2> "$WORK/ncu-prefill.err"; echo "rc=$?"; tail -3 "$WORK/ncu-prefill.err"
fi
say "done"
