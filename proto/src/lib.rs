//! The `sizespec.v1` wire contract. Only this crate and the gRPC edge code see `pb::*` types.
pub mod pb {
    tonic::include_proto!("sizespec.v1");
}
