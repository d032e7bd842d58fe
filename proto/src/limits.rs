//! Message-size bounds. Both ends set them on every service so an oversize message is refused
//! (`ResourceExhausted` / `OutOfRange`) instead of being buffered.

/// Largest message either side decodes: a task offer carries its samples (a full MedSynth test
/// split is ~5 MiB of dialogue), so 64 MiB leaves ample headroom while bounding memory.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Largest control-plane request (an experiment TOML): configs are a few KiB.
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 1024 * 1024;

/// Artifact chunk size on the wire: large enough that per-message costs (framing, a blocking-pool
/// hop for the disk write) are small next to the copy and the checksum, small enough that a few
/// chunks in flight bound memory.
pub const ARTIFACT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Default cap on one artifact file (`coordinator serve --max-artifact-mib`): a LoRA adapter of an
/// 8B model at r=64 on all seven projections is under 1 GiB in f32, so 8 GiB is generous.
pub const MAX_ARTIFACT_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// Largest prediction batch accepted in one message.
pub const MAX_PREDICTION_BATCH: usize = 4096;

/// HTTP/2 flow-control windows of every sizespec connection (stream / connection). h2's defaults
/// (64 KiB) let one adapter upload move one window per round trip; 8 MiB / 16 MiB keep several
/// artifact chunks in flight.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
