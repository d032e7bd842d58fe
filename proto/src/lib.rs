//! The `sizespec.v1` wire contract. Only this crate and the gRPC edge code see `pb::*` types.
//!
//! Layout tour: [`pb`] the generated messages and services; [`FILE_DESCRIPTOR_SET`] for gRPC
//! reflection; [`limits`] the message-size bounds both ends enforce; [`auth`] the shared-token
//! metadata; [`client`] dialling the coordinator; [`convert`] (feature `domain`) `TryFrom` between `pb::*` and `shared` domain types.
pub mod pb {
    tonic::include_proto!("sizespec.v1");
}

/// Encoded `FileDescriptorSet` of `sizespec.v1`, served by `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("sizespec_v1_descriptor");

/// The files of a PEFT adapter folder; each travels as the artifact `<adapter artifact>/<file>`.
pub const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// The buffer type of artifact chunks (`ArtifactChunk.data`).
pub use prost::bytes::Bytes;

pub mod auth;
pub mod client;
#[cfg(feature = "domain")]
pub mod convert;
pub mod limits;
