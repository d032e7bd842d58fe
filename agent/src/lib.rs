//! sizespec agent: everything that touches a GPU (or the CPU as one).
//!
//! Layout tour: [`model`] the decoder family with LoRA-capable linears; [`load`] HF folders, the hub
//! cache and GGUF; [`tokenizer`] and [`template`] (the same rendering at training and inference);
//! [`generate`] batched greedy decoding; [`train`] LoRA training; [`peft`] adapter import/export;
//! [`worker`] the one compute thread per device; [`probe`] NVML; [`gpu`] CUDA device tuning and our NVRTC kernels; [`rpc`] the coordinator session.
//! [`gpucheck`] the GPU correctness checks and benchmarks against the PyTorch reference.
pub mod error;
pub mod generate;
pub mod gpu;
pub mod gpucheck;
pub mod load;
pub mod model;
pub mod peft;
pub mod probe;
pub mod rpc;
pub mod template;
pub mod tokenizer;
pub mod train;
pub mod worker;

pub mod alloc;
