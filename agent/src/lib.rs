//! sizespec agent: the process that serves one device to a coordinator.
//!
//! Layout tour: [`probe`] NVML (or CPU RAM) for the device report; [`worker`] the one compute
//! thread per device, running the engine's jobs ([`engine::job`]) and streaming their events on a
//! channel; [`rpc`] the coordinator session; [`checkpoint`] a finetune checkpoint's layout in the
//! artifact store. The models, loading, generation and training are the
//! `engine` crate.
pub mod checkpoint;
pub mod probe;
pub mod rpc;
pub mod worker;
