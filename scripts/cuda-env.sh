# Source me after cuda-toolchain.sh:  source scripts/cuda-env.sh [PREFIX]
_p=${1:-${CUDA_PIP_PREFIX:-$HOME/.local/cuda13-pip}}
export CUDA_ROOT=$_p/nvidia/cu13
export CUDA_HOME=$CUDA_ROOT CUDA_PATH=$CUDA_ROOT
export PATH=$CUDA_ROOT/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}   # H100/H200 (sm_90); set yours (e.g. 80 for A100, 89 for L4)
export LIBRARY_PATH=$CUDA_ROOT/lib:$CUDA_ROOT/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
unset _p
