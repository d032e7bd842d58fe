//! sizespec agent: the process that serves one device to a coordinator.
//!
//! Layout tour: [`probe`] NVML (or CPU RAM) for the device report; [`worker`] the one compute
//! thread per device, running the engine's jobs ([`engine::job`]) and streaming their events on a
//! channel; [`rpc`] the coordinator session. The models, loading, generation and training are the
//! `engine` crate.
pub mod probe;
pub mod rpc;
pub mod worker;
