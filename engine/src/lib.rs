//! sizespec engine: everything that touches a GPU (or the CPU as one), with no process, channel or
//! network of its own.
//!
//! Layout tour: [`model`] the decoder family with LoRA-capable linears; [`load`] HF folders, the hub
//! cache and GGUF; [`tokenizer`] and [`template`] (the same rendering at training and inference);
//! [`generate`] batched greedy decoding; [`train`] LoRA training; [`peft`] adapter import/export;
//! [`job`] one evaluate / finetune job, reporting through a sink; [`gpu`] CUDA device tuning, our
//! NVRTC kernels and device-memory queries; [`alloc`] the allocator setting the engine is tuned for.
//! Feature `testkit`: [`testkit`], tiny random models and a synthetic task for tests.
pub mod alloc;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod job;
pub mod load;
pub mod model;
pub mod peft;
pub mod template;
pub mod tokenizer;
pub mod train;

#[cfg(feature = "testkit")]
pub mod testkit;
