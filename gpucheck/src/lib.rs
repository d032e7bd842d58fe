//! GPU correctness checks and benchmarks of the engine against the PyTorch reference
//! (`bench/gpu/torch_ref.py`): logits parity, LoRA gradients, 4-bit loading, memory release, speed.
//!
//! Each subcommand of the `gpucheck` binary is one function here taking a [`Common`] (device and
//! dtype) and its own options, and returning a serialisable report; the binary prints the lines and
//! decides the exit status. Everything runs on the CPU as well (f32, tiny shapes) so it is tested here;
//! the GPU runs happen on the lead's machine with `bench/gpu/run.sh`.
pub mod bench;
pub mod compare;
pub mod hf;
pub mod logits;
pub mod lora_grad;
pub mod mem;
pub mod memtrace;
pub mod quant;
pub mod reference;
pub mod work;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use candle_core::{DType, Device};

use engine::error::EngineError;

/// Everything that can go wrong in a check; messages name the file, tensor or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum GpucheckError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("reference {path}: tensor `{name}`: {reason}")]
    Reference {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("invalid argument: {0}")]
    Arg(String),
    #[error("NVML: {0}")]
    Nvml(String),
    #[error("training: {0}")]
    Train(#[from] engine::train::TrainError),
}

pub type Result<T, E = GpucheckError> = std::result::Result<T, E>;

/// Where to run: `cpu` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = GpucheckError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    GpucheckError::Arg(format!("device `{s}`: expected `cpu` or `cuda:N`"))
                }),
        }
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceArg {
    /// Open the device (creates the CUDA context, so memory baselines read after this include it).
    pub fn open(self) -> Result<Device> {
        Ok(match self {
            Self::Cpu => Device::Cpu,
            Self::Cuda(i) => engine::gpu::open_cuda(i)?,
        })
    }
}

/// Compute dtype: `f32`, `bf16` or `f16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DTypeArg(pub DType);

impl FromStr for DTypeArg {
    type Err = GpucheckError;

    fn from_str(s: &str) -> Result<Self> {
        Ok(Self(match s {
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            _ => {
                return Err(GpucheckError::Arg(format!(
                    "dtype `{s}`: expected f32, bf16 or f16"
                )));
            }
        }))
    }
}

/// The device and dtype every subcommand runs with.
#[derive(Debug, Clone)]
pub struct Common {
    pub device_arg: DeviceArg,
    pub device: Device,
    pub dtype: DType,
}

impl Common {
    pub fn new(device_arg: DeviceArg, dtype: DTypeArg) -> Result<Self> {
        Ok(Self {
            device_arg,
            device: device_arg.open()?,
            dtype: dtype.0,
        })
    }

    /// Wait for queued device work, so a clock read after it measures finished work.
    pub fn sync(&self) -> Result<()> {
        Ok(self.device.synchronize()?)
    }

    /// Seconds `f` takes, device work included.
    pub fn time<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
        self.sync()?;
        let t = Instant::now();
        let out = f()?;
        self.sync()?;
        Ok((out, t.elapsed().as_secs_f64()))
    }
}

/// The median of the times of `reps` runs of `f` after `warm` untimed ones (device synchronised
/// around each run), as `torch_ref.py`'s `timed` does.
pub fn timed_median(
    common: &Common,
    warm: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warm {
        f()?;
    }
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let ((), t) = common.time(&mut f)?;
        ts.push(t);
    }
    ts.sort_by(f64::total_cmp);
    Ok(ts[ts.len() / 2])
}

/// Whether an error is the device running out of memory (reported as such in benchmarks, as the
/// PyTorch side reports `torch.OutOfMemoryError`).
pub fn is_out_of_memory(e: &GpucheckError) -> bool {
    let s = e.to_string().to_lowercase();
    s.contains("out of memory") || s.contains("out_of_memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_dtype_flags_parse_and_reject_junk() {
        assert_eq!("cpu".parse::<DeviceArg>().unwrap(), DeviceArg::Cpu);
        assert_eq!("cuda:3".parse::<DeviceArg>().unwrap(), DeviceArg::Cuda(3));
        assert_eq!("cuda".parse::<DeviceArg>().unwrap(), DeviceArg::Cuda(0));
        assert_eq!(DeviceArg::Cuda(1).to_string(), "cuda:1");
        let e = "gpu0".parse::<DeviceArg>().unwrap_err().to_string();
        assert!(e.contains("`gpu0`"), "{e}");
        assert_eq!("bf16".parse::<DTypeArg>().unwrap().0, DType::BF16);
        assert!("fp8".parse::<DTypeArg>().is_err());
    }

    #[test]
    fn out_of_memory_is_recognised_by_message() {
        let oom = GpucheckError::Candle(candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        ));
        assert!(is_out_of_memory(&oom));
        assert!(!is_out_of_memory(&GpucheckError::Arg("x".into())));
    }
}
