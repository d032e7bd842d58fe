//! The engine's error type: one `thiserror` enum; messages name what was wrong and where.
use std::path::PathBuf;

/// Every failure the engine reports. Variants say which file, tensor or setting was at fault.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A tensor operation failed (shape mismatch, device error, out of memory...).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file exists but its content is unusable.
    #[error("{path}: {reason}")]
    BadFile { path: String, reason: String },
    /// A required file is missing.
    #[error("{path}: missing ({what})")]
    MissingFile { path: PathBuf, what: String },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The architecture or a setting of it is not one we implement.
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    /// A call's arguments do not fit the model (layer index, cache size, empty batch).
    #[error("invalid input: {0}")]
    BadInput(String),
    /// A weight tensor is missing or has the wrong shape.
    #[error("weight `{name}`: {reason}")]
    Weight { name: String, reason: String },
    /// Tokenizer construction or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Chat template rendering failed.
    #[error("chat template: {0}")]
    Template(String),
    /// A LoRA adapter operation was invalid (unknown module name, wrong shape, no adapter added).
    #[error("lora: {0}")]
    Lora(String),
    /// The Hugging Face hub (or its local cache) could not provide a file.
    #[error("hub: {0}")]
    Hub(String),
    /// Generation was asked for something impossible (an empty prompt, ...).
    #[error("generation: {0}")]
    Generation(String),
    /// The job's cancellation token fired; work stopped between steps.
    #[error("cancelled")]
    Cancelled,
}

impl EngineError {
    /// The inputs themselves are at fault (a missing or malformed model file, config.json,
    /// tokenizer or template, weights of the wrong shape, an architecture we do not implement):
    /// running the same job again fails the same way, so it is not worth a retry. Device errors
    /// (out of memory), I/O, the hub and cancellation are not: another attempt may succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::BadFile { .. }
                | Self::MissingFile { .. }
                | Self::UnsupportedModel(_)
                | Self::Weight { .. }
                | Self::Tokenizer(_)
                | Self::Template(_)
        )
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_are_permanent_and_device_or_transfer_trouble_is_not() {
        let missing = EngineError::MissingFile {
            path: "m.gguf".into(),
            what: "model".into(),
        };
        let bad = EngineError::BadFile {
            path: "config.json".into(),
            reason: "not JSON".into(),
        };
        assert!(missing.is_permanent() && bad.is_permanent());
        assert!(EngineError::UnsupportedModel("gpt2".into()).is_permanent());
        assert!(!EngineError::Hub("connection reset".into()).is_permanent());
        assert!(!EngineError::Cancelled.is_permanent());
        let io = EngineError::io("x", std::io::Error::other("disk"));
        assert!(!io.is_permanent());
    }
}
