//! Generates the `sizespec.v1` gRPC code and the file descriptor set served by gRPC reflection.
//! protoc comes from `protoc-bin-vendored`, so building needs no system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Artifact chunks as `bytes::Bytes`: decoding slices the receive buffer instead of copying
        // each chunk, and a sender hands over a buffer it filled without another copy.
        .bytes(".sizespec.v1.ArtifactChunk.data")
        .file_descriptor_set_path(out.join("sizespec_v1_descriptor.bin"))
        .compile_protos(&["proto/sizespec/v1/sizespec.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
