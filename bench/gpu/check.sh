#!/usr/bin/env bash
# The engine's GPU tests and the product's first task on a fresh agent, in one device call:
#   1. every test binary in $BIN_DIR/tests (gzipped or not; built with
#      `cargo test --release -p engine --features cuda --test gpu_kernels --test generate --test learning --no-run`)
#      run with SIZESPEC_TEST_DEVICE=cuda:0 and --include-ignored (a test that needs the GPU runs here);
#   2. the product end to end twice (bench/gpu/e2e.sh: coordinator + CUDA agent), first with an empty
#      kernel cache folder, then with the cache the first run filled: the first task's latency cold
#      and warm (docs/gpu.md, "Caches" and "Warm-up").
#
#   BIN_DIR=bench/gpu/bin bash bench/gpu/check.sh [--skip tests|e2e]
#
# Writes into $OUT: check.log (everything), tests.log, e2e-cold.tar.gz / e2e-warm.tar.gz (outputs and
# agent logs); prints a summary last. Exits non-zero when a test binary fails or an e2e run fails.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN_DIR=${BIN_DIR:-$HERE/bin}
WORK=${WORK:-/tmp/sizespec-check}
OUT=${OUT:-$WORK/out}
SKIP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --skip) SKIP=$2; shift 2 ;;
    *) echo "check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$WORK/tests" "$OUT"
exec > >(tee -a "$OUT/check.log") 2>&1
export PYTHONUNBUFFERED=1
START=$(date +%s)
say() { echo "[check.sh $(($(date +%s) - START))s] $*"; }
SUMMARY=()
STATUS=0

nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader || true

if [[ ",$SKIP," != *",tests,"* ]]; then
  for f in "$BIN_DIR"/tests/*; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .gz); name=${name%-*}          # cargo's test binaries end in -<hash>
    bin=$WORK/tests/$name
    if [[ $f == *.gz ]]; then gunzip -c "$f" > "$bin"; else cp "$f" "$bin"; fi
    chmod +x "$bin"
    say "test binary $name"
    t0=$(date +%s)
    SIZESPEC_TEST_DEVICE=cuda:0 "$bin" --include-ignored --test-threads 1 >> "$OUT/tests.log" 2>&1
    rc=$?
    line=$(grep -E '^test result:' "$OUT/tests.log" | tail -1)
    SUMMARY+=("tests $name: rc=$rc $(($(date +%s) - t0))s ${line:-no result line}")
    [ $rc -eq 0 ] || STATUS=1
  done
  grep -E '^test .* (ok|FAILED|ignored)$|panicked|^---- ' "$OUT/tests.log" | grep -v ' ok$' || true
fi

if [[ ",$SKIP," != *",e2e,"* ]]; then
  export SIZESPEC_KERNEL_CACHE=$WORK/kernel-cache
  rm -rf "$SIZESPEC_KERNEL_CACHE"
  for run in cold warm; do
    say "e2e ($run kernel cache)"
    t0=$(date +%s)
    rm -rf "$WORK/e2e-$run"
    OUT=$WORK/e2e-$run WORK=$WORK/e2e-work BIN_DIR=$BIN_DIR bash "$HERE/e2e.sh" > "$WORK/e2e-$run.txt" 2>&1
    rc=$?
    cp "$WORK/e2e-$run.txt" "$WORK/e2e-$run/" 2>/dev/null
    tar -czf "$OUT/e2e-$run.tar.gz" -C "$WORK" "e2e-$run" 2>/dev/null
    agent_log=$WORK/e2e-$run/e2e-agent.log
    grep -h -E 'sizespec kernels|warm-up took|registered' "$agent_log" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-220
    tail -6 "$WORK/e2e-$run.txt"
    du -sh "$SIZESPEC_KERNEL_CACHE"/* 2>/dev/null
    warm=$(grep -h -oE 'warm-up took [0-9.]+ ?s' "$agent_log" 2>/dev/null | head -1)
    SUMMARY+=("e2e $run: rc=$rc wall $(($(date +%s) - t0))s ${warm:-no warm-up line}")
    [ $rc -eq 0 ] || STATUS=1
  done
fi

echo "== summary (${SECONDS}s) =="
printf '%s\n' "${SUMMARY[@]}"
exit $STATUS
