//! Memory readings for the checks: NVML's used device memory on CUDA (what other processes and the
//! scheduler see, allocator caches included), the process's resident set on the CPU; and a sampler
//! thread that records the peak while some work runs.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::Nvml;

use super::{DeviceArg, GpucheckError, Result};

/// How memory is read.
pub enum MemProbe {
    /// Used memory of one GPU (all processes, as NVML reports it).
    Nvml { nvml: Box<Nvml>, index: u32 },
    /// This process's resident set size.
    Rss,
}

impl std::fmt::Debug for MemProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Nvml { index, .. } => write!(f, "MemProbe::Nvml({index})"),
            Self::Rss => write!(f, "MemProbe::Rss"),
        }
    }
}

fn nvml_err(what: &str) -> impl Fn(nvml_wrapper::error::NvmlError) -> GpucheckError + '_ {
    move |e| GpucheckError::Nvml(format!("{what}: {e}"))
}

impl MemProbe {
    /// NVML for a CUDA device (its ordinal taken as NVML's index), RSS for the CPU.
    pub fn for_device(device: DeviceArg) -> Result<Self> {
        match device {
            DeviceArg::Cpu => Ok(Self::Rss),
            DeviceArg::Cuda(i) => {
                let nvml = Nvml::init().map_err(nvml_err("init (is the NVIDIA driver there?)"))?;
                let index = u32::try_from(i)
                    .map_err(|_| GpucheckError::Arg(format!("cuda device index {i}")))?;
                nvml.device_by_index(index)
                    .map_err(nvml_err("open device"))?;
                Ok(Self::Nvml {
                    nvml: Box::new(nvml),
                    index,
                })
            }
        }
    }

    /// Memory in use now, MiB.
    pub fn used_mib(&self) -> Result<f64> {
        match self {
            Self::Rss => rss_mib(),
            Self::Nvml { nvml, index } => {
                let dev = nvml
                    .device_by_index(*index)
                    .map_err(nvml_err("open device"))?;
                let info = dev.memory_info().map_err(nvml_err("memory info"))?;
                Ok(info.used as f64 / (1024.0 * 1024.0))
            }
        }
    }

    /// The card's name ("NVIDIA H100 80GB HBM3"), or "cpu".
    pub fn card(&self) -> String {
        match self {
            Self::Rss => "cpu".into(),
            Self::Nvml { nvml, index } => nvml
                .device_by_index(*index)
                .and_then(|d| d.name())
                .unwrap_or_else(|e| format!("unknown GPU ({e})")),
        }
    }
}

fn rss_mib() -> Result<f64> {
    let path = "/proc/self/status";
    let text = std::fs::read_to_string(path).map_err(|source| GpucheckError::Io {
        path: path.into(),
        source,
    })?;
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .ok_or_else(|| GpucheckError::BadFile {
            path: path.into(),
            reason: "no VmRSS line".into(),
        })
}

/// A thread reading the probe every couple of milliseconds and keeping the largest value.
#[derive(Debug)]
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<f64>,
}

impl PeakSampler {
    pub fn start(probe: Arc<MemProbe>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0f64;
            loop {
                if let Ok(v) = probe.used_mib() {
                    peak = peak.max(v);
                }
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self { stop, handle }
    }

    /// Stop sampling (after one last reading) and return the peak, MiB.
    pub fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_peak_sees_a_large_allocation() {
        let probe = Arc::new(MemProbe::Rss);
        let before = probe.used_mib().unwrap();
        let sampler = PeakSampler::start(probe.clone());
        let big = vec![1u8; 256 << 20];
        std::thread::sleep(Duration::from_millis(30));
        let peak = sampler.finish();
        assert!(big.iter().step_by(4096).all(|&b| b == 1));
        assert!(
            peak >= before + 200.0,
            "peak {peak} MiB, before {before} MiB"
        );
    }
}
