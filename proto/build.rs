//! Generates the `sizespec.v1` gRPC code. protoc comes from `protoc-bin-vendored`,
//! so building needs no system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_prost_build::configure().compile_protos(&["proto/sizespec/v1/sizespec.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
