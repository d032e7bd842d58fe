#!/usr/bin/env bash
# One command for the GPU machine: random-weight model folders, logits parity (torch vs ours) per
# shape, LoRA gradients (peft vs ours), 4-bit loading, the seed's memory trace, and the benchmarks of
# both sides, all inside a wall-time budget (default 9 minutes). Writes into $OUT (at most 4 files:
# run.log, table.md, results.json, json.tar.gz) so everything comes back from the device tool.
#
#   bench/gpu/run.sh [--only s1,s2] [--skip s1,s2] [--budget SECONDS] [--shapes a,b,c,d]
#
# Sections, in the order they run: parity, lora, bench, quant, memtrace (default: all). Each makes
# the weight folders it needs (in parallel, reused if $WORK already has them). A section that would
# start with less than its minimum time left is skipped and says so; every command is cut at the
# deadline. Split a full run over calls with --only, e.g. `--only parity,lora`, `--only bench`,
# `--only quant,memtrace`.
#
# Inputs: the gpucheck binary, gzipped or not, in $BIN_DIR (default bench/gpu/bin: gpucheck.gz or
# gpucheck; a COMMIT file there names the commit it was built from), PyTorch + transformers + peft.
# Env: OUT (default $WORK/out), WORK (default /tmp/sizespec-gpu), TOL_BF16 (default 2e-2),
# TOL_F32 (1e-3), TOL_GRAD (2e-2), BACKWARD (auto|plain|recompute|keep:N, ours in train benches; auto = the worker's choice), DEVICE (cuda:0),
# TORCH (the reference command; default python3 bench/gpu/torch_ref.py), QTYPE (q4k; q4_0 quantises ~4x faster).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BIN_DIR=${BIN_DIR:-$HERE/bin}
WORK=${WORK:-/tmp/sizespec-gpu}
OUT=${OUT:-$WORK/out}
BUDGET=540
ONLY="parity,lora,bench,quant,memtrace"
SKIP=""
SHAPES="llama3b,qwen3b,llama8b,mistral7b"
TOL_BF16=${TOL_BF16:-2e-2}
TOL_F32=${TOL_F32:-1e-3}
TOL_GRAD=${TOL_GRAD:-2e-2}
BACKWARD=${BACKWARD:-auto}
QTYPE=${QTYPE:-q4k}

while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --shapes) SHAPES=$2; shift 2 ;;
    -h|--help) sed -n 2,20p "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
DEADLINE=$((START + BUDGET))
W=$WORK/models
J=$WORK/json
R=$WORK/refs
mkdir -p "$OUT" "$W" "$J" "$R" "$WORK/bin" "$WORK/qcache"
LOG=$OUT/run.log
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1

want() { [[ ",$ONLY," == *",$1,"* && ",$SKIP," != *",$1,"* ]]; }
left() { echo $((DEADLINE - $(date +%s))); }
say() { echo "[run.sh $(($(date +%s) - START))s] $*"; }

# run NAME CMD...: runs CMD cut at the deadline; logs its wall time and exit status.
run() {
  local name=$1; shift
  local l; l=$(left)
  if [ "$l" -le 5 ]; then say "SKIP $name: out of time"; return 124; fi
  local t0; t0=$(date +%s)
  say "start $name"
  timeout --kill-after=10 "$l" "$@"
  local rc=$?
  say "end $name rc=$rc in $(($(date +%s) - t0))s"
  return $rc
}

# section NAME MIN_SECONDS: whether to run it (wanted and at least MIN_SECONDS left).
section() {
  want "$1" || return 1
  if [ "$(left)" -lt "$2" ]; then say "SKIP section $1: $(left)s left, it needs ~$2s"; return 1; fi
  say "== section $1"
  return 0
}

GPUCHECK=$WORK/bin/gpucheck
if [ -f "$BIN_DIR/gpucheck.gz" ]; then
  gzip -dc "$BIN_DIR/gpucheck.gz" > "$GPUCHECK"
elif [ -f "$BIN_DIR/gpucheck" ]; then
  cp "$BIN_DIR/gpucheck" "$GPUCHECK"
else
  say "no gpucheck(.gz) in $BIN_DIR"; exit 2
fi
chmod +x "$GPUCHECK"
COMMIT=${COMMIT:-$(cat "$BIN_DIR/COMMIT" 2>/dev/null || git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo unknown)}
TORCH=${TORCH:-python3 $HERE/torch_ref.py}
DEVICE=${DEVICE:-cuda:0}
say "commit $COMMIT, budget ${BUDGET}s, sections $ONLY (skip: ${SKIP:-none}), shapes $SHAPES"
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv,noheader || true
df -h "$WORK" | tail -1

IFS=, read -r -a SHAPE_LIST <<< "$SHAPES"
has_shape() { [[ ",$SHAPES," == *",$1,"* ]]; }

# Weight folders: NAME = shape (full) or shape-2l (2 layers, for f32 parity and gradients).
need=()
if want parity; then for s in "${SHAPE_LIST[@]}"; do need+=("$s" "$s-2l"); done; fi
if want lora; then need+=("llama3b-2l" "qwen3b-2l"); fi
if want bench; then need+=("llama3b" "llama8b"); fi
if want quant; then need+=("llama8b" "llama8b-2l"); fi
if want memtrace; then need+=("llama8b" "mistral7b" "llama3b" "qwen3b"); fi
make_weights() {
  local name=$1 shape=${1%-2l} extra=()
  [[ $name == *-2l ]] && extra=(--layers 2)
  [ -f "$W/$name/config.json" ] && return 0
  $TORCH weights --shape "$shape" --out "$W/$name" "${extra[@]}" > "$WORK/weights-$name.log" 2>&1 \
    || { echo "weights $name failed:"; tail -5 "$WORK/weights-$name.log"; return 1; }
}
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  say "weights: ${need[*]}"
  # In parallel: the time goes to Python start-up and disk writes; all four full shapes fit the GPU at once.
  pids=()
  for n in "${need[@]}"; do make_weights "$n" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
  say "weights done"; df -h "$WORK" | tail -1
fi

# Correctness runs need no quiet GPU: the torch side writes each reference (marked done by a
# `.done` file) in the background while ours checks the previous one. References of a warm machine's
# earlier call are reused (the weights are seeded, so they are the same).
# wait_ref FILE PID: wait until FILE.done exists; fail if PID ended without writing it.
wait_ref() {
  while [ ! -f "$1.done" ]; do
    kill -0 "$2" 2>/dev/null || [ -f "$1.done" ] || return 1
    sleep 1
  done
}
torch_ref_to() {  # torch_ref_to OUTFILE NAME ARGS...: one reference, marked done on success
  local out=$1 name=$2; shift 2
  [ -f "$out.done" ] && return 0
  run "$name" $TORCH "$@" --out "$out" && touch "$out.done"
}

if section parity 60; then
  (
    for s in "${SHAPE_LIST[@]}"; do
      torch_ref_to "$R/logits-$s.safetensors" "torch logits $s bf16" logits --model "$W/$s" --dtype bf16
      torch_ref_to "$R/logits-$s-2l.safetensors" "torch logits $s-2l f32" logits --model "$W/$s-2l" --dtype f32
    done
  ) &
  tp=$!
  for s in "${SHAPE_LIST[@]}"; do
    for v in "$s bf16 $TOL_BF16" "$s-2l f32 $TOL_F32"; do
      read -r name dt tol <<< "$v"
      ref=$R/logits-$name.safetensors
      wait_ref "$ref" "$tp" || { say "no torch reference for $name: skipped"; continue; }
      run "ours logits $name $dt" "$GPUCHECK" logits --device "$DEVICE" --dtype "$dt" --model "$W/$name" \
        --ref "$ref" --tol "$tol" --json "$J/parity-$name-$dt.json"
    done
  done
  wait "$tp"
fi

if section lora 30; then
  (
    for s in llama3b-2l qwen3b-2l; do
      torch_ref_to "$R/grad-$s.safetensors" "torch lora-grad $s" lora-grad --model "$W/$s"
    done
  ) &
  tp=$!
  for s in llama3b-2l qwen3b-2l; do
    wait_ref "$R/grad-$s.safetensors" "$tp" || { say "no torch gradients for $s: skipped"; continue; }
    run "ours lora-grad $s" "$GPUCHECK" lora-grad --device "$DEVICE" --dtype f32 --model "$W/$s" \
      --ref "$R/grad-$s.safetensors" --tol "$TOL_GRAD" --json "$J/lora-$s.json"
  done
  wait "$tp"
fi

if section bench 120; then
  run "torch bench llama3b" $TORCH bench --shape llama3b --what train,prefill,generate --json "$J/bench-torch-llama3b.json"
  run "ours bench llama3b" "$GPUCHECK" bench --device "$DEVICE" --dtype bf16 --model "$W/llama3b" --shape llama3b \
    --what train,prefill,generate --backward "$BACKWARD" --json "$J/bench-ours-llama3b.json"
  run "torch bench llama8b" $TORCH bench --shape llama8b --what decode --json "$J/bench-torch-llama8b.json"
  run "ours bench llama8b" "$GPUCHECK" bench --device "$DEVICE" --dtype bf16 --model "$W/llama8b" --shape llama8b \
    --what decode --json "$J/bench-ours-llama8b.json"
  # The 4-bit row: our Q4K 8B decode against our bf16 8B (quantising fills the cache on first use).
  run "ours bench llama8b q4k" "$GPUCHECK" bench --device "$DEVICE" --dtype bf16 --model "$W/llama8b" --shape llama8b \
    --what decode --quant "$QTYPE" --qcache "$WORK/qcache" --json "$J/bench-ours-llama8b-q4k.json"
  cat "$J/bench-ours-llama8b-q4k.json" 2>/dev/null
fi

if section quant 90; then
  run "ours quant llama8b" "$GPUCHECK" quant --device "$DEVICE" --dtype bf16 --model "$W/llama8b" --qtype "$QTYPE" \
    --cache-dir "$WORK/qcache" --json "$J/quant-llama8b.json"
  # At full depth random weights are chaotic (any perturbation decorrelates the logits); two layers
  # measure the 4-bit error itself.
  run "ours quant llama8b-2l" "$GPUCHECK" quant --device "$DEVICE" --dtype bf16 --model "$W/llama8b-2l" --qtype "$QTYPE" \
    --cache-dir "$WORK/qcache" --json "$J/quant-llama8b-2l.json"
fi

if section memtrace 120; then
  run "ours memtrace" "$GPUCHECK" memtrace --device "$DEVICE" --dtype bf16 \
    --shapes "$W/llama8b,$W/mistral7b,$W/llama3b,$W/qwen3b" --qtype "$QTYPE" --cache-dir "$WORK/qcache" \
    --json "$J/memtrace.json"
fi

say "tables"
python3 "$HERE/table.py" --json-dir "$J" --commit "$COMMIT" --out "$OUT/table.md" --combined "$OUT/results.json"
tar czf "$OUT/json.tar.gz" -C "$WORK" json
say "done in $(($(date +%s) - START))s; $OUT: $(ls "$OUT" | tr '\n' ' ')"
# Let tee write the last lines of run.log before the device tool collects $OUT.
exec 1>&- 2>&-
sleep 1
