#!/usr/bin/env bash
# Compiles our CUDA kernels to PTX with nvcc, failing on any error or warning: each file of
# engine/kernels/ on its own (compute_90), then the one compilation unit the engine hands NVRTC at run
# time (the files in the order of engine/src/gpu/nvrtc.rs's SOURCE) for compute_80 and compute_90.
# No GPU needed. nvcc comes from PyPI (CUDA 13.0, as scripts/cuda-toolchain.sh pins): the toolkit
# that script installed when present, else the four wheels nvcc needs (~100 MB), unpacked once.
#   bash scripts/check-kernels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
NVCC=${CUDA_PIP_PREFIX:-$HOME/.local/cuda13-pip}/nvidia/cu13/bin/nvcc
if [[ ! -x "$NVCC" ]]; then
  P=${SIZESPEC_NVCC_PREFIX:-$HOME/.cache/sizespec/nvcc-13.0.88}
  NVCC=$P/nvidia/cu13/bin/nvcc
  if [[ ! -x "$NVCC" ]]; then
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$work" \
      nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
      nvidia-cuda-runtime==13.0.96
    # Unpacked into a fresh folder renamed into place: a failed unpack never looks installed.
    rm -rf "$P.part" && mkdir -p "$P.part"
    python3 - "$P.part" "$work"/*.whl <<'PY'
import sys, zipfile
for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
PY
    chmod +x "$P.part"/nvidia/cu13/bin/* "$P.part"/nvidia/cu13/nvvm/bin/*
    rm -rf "$P" && mv "$P.part" "$P"
  fi
fi
"$NVCC" --version | tail -1
out=$work
for f in engine/kernels/*.cu; do
  "$NVCC" --ptx -arch=compute_90 -Werror all-warnings -o "$out/$(basename "$f").ptx" "$f"
  echo "ok: $f"
done
# The unit NVRTC compiles: SOURCE's include_str! files, in order.
files=$(grep -o 'include_str!("../../kernels/[^"]*")' engine/src/gpu/nvrtc.rs \
  | sed -E 's|include_str!\("../../kernels/([^"]*)"\)|engine/kernels/\1|')
[[ -n "$files" ]] || { echo "no include_str! of engine/kernels/ in engine/src/gpu/nvrtc.rs" >&2; exit 1; }
for f in engine/kernels/*.cu engine/kernels/*.cuh; do
  grep -qx "$f" <<<"$files" || { echo "$f is not part of SOURCE in engine/src/gpu/nvrtc.rs" >&2; exit 1; }
done
# shellcheck disable=SC2086
cat $files > "$out/sizespec_kernels.cu"
for arch in 80 90; do
  "$NVCC" --ptx -arch=compute_$arch -Werror all-warnings -o "$out/sizespec_kernels.$arch.ptx" \
    "$out/sizespec_kernels.cu"
  echo "ok: the assembled unit for compute_$arch ($(grep -c '^\.visible \.entry' "$out/sizespec_kernels.$arch.ptx") kernels)"
done
