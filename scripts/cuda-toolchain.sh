#!/usr/bin/env bash
# Installs a CUDA 13.0 build toolchain (nvcc + headers + link libraries) from PyPI wheels so that
# `cargo build --release --features cuda` works on a machine with no GPU, then prints the env to source.
#   bash scripts/cuda-toolchain.sh [PREFIX]; source scripts/cuda-env.sh [PREFIX]
#   cargo build --release -p agent -p gpucheck --features agent/cuda,gpucheck/cuda
# Pinned to 13.0.x on purpose: a 580-series driver (CUDA 13.0) rejects PTX from a newer nvcc
# (CUDA_ERROR_UNSUPPORTED_PTX_VERSION at the first kernel launch, since candle loads PTX lazily).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fetch >/dev/null                 # cudarc sources are needed for the libcuda stub below
P=${1:-${CUDA_PIP_PREFIX:-$HOME/.local/cuda13-pip}}
# One pip command: separate `--target` installs into one folder do not merge the nvidia/ tree.
python3 -m pip install -q --no-deps --target "$P" \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 \
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
C=$P/nvidia/cu13
cd "$C/lib"
# The wheels ship only versioned sonames; the linker wants the plain names.
for l in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do ln -sf "lib$l" "lib${l%.so.*}.so"; done
# No wheel carries libcuda (it ships with the driver): build a link-time stub exporting every driver
# symbol cudarc declares; the GPU machine's real libcuda.so.1 is used at run time.
SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -1)
[ -n "$SRC" ] || { echo "cudarc sources not found in the cargo registry (cargo fetch failed?)" >&2; exit 1; }
mkdir -p stubs
grep -oE '^\s+fn (cu[A-Za-z0-9_]+)\(' "$SRC/src/driver/sys/mod.rs" \
  | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
  | awk '{print "int " $1 "(void){return 999;}"}' > stubs/libcuda_stub.c
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o stubs/libcuda.so stubs/libcuda_stub.c
"$C/bin/nvcc" --version | tail -2
echo "toolkit ready at $C — now: source scripts/cuda-env.sh $P"
