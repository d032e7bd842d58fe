//! What devices this agent has and how much memory is free on them right now: NVML for a GPU
//! (`nvml-wrapper` loads libnvidia-ml at run time, so the binary runs where it is absent), the
//! kernel's `MemAvailable` for the CPU.
use std::sync::Mutex;

/// Which device an agent process serves (one agent per device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(u32),
}

impl std::str::FromStr for DeviceChoice {
    type Err = ProbeError;
    fn from_str(s: &str) -> Result<Self, ProbeError> {
        match s.trim() {
            "cpu" => Ok(DeviceChoice::Cpu),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| ProbeError::BadDevice(s.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("device `{0}`: expected `cpu` or `cuda:N`")]
    BadDevice(String),
    #[error("NVML ({what}): {source}")]
    Nvml {
        what: String,
        source: nvml_wrapper::error::NvmlError,
    },
    #[error("/proc/meminfo: {0}")]
    MemInfo(String),
}

/// A device as reported to the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReport {
    pub choice: DeviceChoice,
    /// GPU UUID from NVML; `cpu` for the CPU.
    pub uuid: String,
    pub name: String,
    pub total_mib: u64,
    pub free_mib: u64,
    /// NVML driver version; empty for the CPU.
    pub driver: String,
}

/// Reads device memory: `device` for registration and heartbeats, `free_mib` right before
/// accepting an offer (the last word on whether a task fits).
pub trait Probe: Send + Sync + 'static {
    fn device(&self) -> Result<DeviceReport, ProbeError>;
    fn free_mib(&self) -> Result<u64, ProbeError> {
        Ok(self.device()?.free_mib)
    }
}

/// The real probe.
pub struct SystemProbe {
    choice: DeviceChoice,
    /// NVML handle, initialised once; `Mutex` because `Nvml` is not `Sync` for every version and
    /// calls are short (never held across an await).
    nvml: Option<Mutex<nvml_wrapper::Nvml>>,
    /// Caps what is reported (e.g. a CPU agent sharing a box with other work).
    limit_mib: Option<u64>,
}

impl SystemProbe {
    /// For `cuda:N` NVML must load; for the CPU it is not touched.
    pub fn new(choice: DeviceChoice, limit_mib: Option<u64>) -> Result<SystemProbe, ProbeError> {
        let nvml = match choice {
            DeviceChoice::Cpu => None,
            DeviceChoice::Cuda(_) => Some(Mutex::new(nvml_wrapper::Nvml::init().map_err(
                |source| ProbeError::Nvml {
                    what: "init (is the NVIDIA driver installed?)".into(),
                    source,
                },
            )?)),
        };
        Ok(SystemProbe {
            choice,
            nvml,
            limit_mib,
        })
    }

    fn cap(&self, mib: u64) -> u64 {
        self.limit_mib.map_or(mib, |l| mib.min(l))
    }
}

const MIB: u64 = 1024 * 1024;

impl Probe for SystemProbe {
    fn device(&self) -> Result<DeviceReport, ProbeError> {
        match (self.choice, &self.nvml) {
            (DeviceChoice::Cuda(index), Some(nvml)) => {
                let nvml = nvml.lock().unwrap_or_else(|e| e.into_inner());
                let err = |what: &str| {
                    let what = format!("{what} of GPU {index}");
                    move |source| ProbeError::Nvml { what, source }
                };
                let dev = nvml.device_by_index(index).map_err(err("open"))?;
                let mem = dev.memory_info().map_err(err("memory"))?;
                Ok(DeviceReport {
                    choice: self.choice,
                    uuid: dev.uuid().map_err(err("uuid"))?,
                    name: dev.name().map_err(err("name"))?,
                    total_mib: self.cap(mem.total / MIB),
                    free_mib: self.cap(mem.free / MIB),
                    driver: nvml.sys_driver_version().map_err(err("driver version"))?,
                })
            }
            _ => {
                let text = std::fs::read_to_string("/proc/meminfo")
                    .map_err(|e| ProbeError::MemInfo(e.to_string()))?;
                let (total, avail) = parse_meminfo(&text)?;
                Ok(DeviceReport {
                    choice: DeviceChoice::Cpu,
                    uuid: "cpu".into(),
                    name: format!(
                        "CPU ({} threads)",
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    ),
                    total_mib: self.cap(total),
                    free_mib: self.cap(avail),
                    driver: String::new(),
                })
            }
        }
    }
}

/// CUDA ordinals NVML sees; empty where there is no driver (a CPU-only machine).
pub fn list_cuda() -> Vec<u32> {
    match nvml_wrapper::Nvml::init().and_then(|n| n.device_count()) {
        Ok(n) => (0..n).collect(),
        Err(e) => {
            tracing::debug!(error = %e, "NVML unavailable: no CUDA devices");
            Vec::new()
        }
    }
}

/// `(MemTotal, MemAvailable)` in MiB.
fn parse_meminfo(text: &str) -> Result<(u64, u64), ProbeError> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib / 1024)
            .ok_or_else(|| ProbeError::MemInfo(format!("no `{name}` line")))
    };
    Ok((field("MemTotal:")?, field("MemAvailable:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_and_meminfo() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert!("gpu0".parse::<DeviceChoice>().is_err());
        let (t, a) = parse_meminfo(
            "MemTotal:       16384000 kB\nMemFree: 1 kB\nMemAvailable:    8192000 kB\n",
        )
        .unwrap();
        assert_eq!((t, a), (16000, 8000));
        assert!(parse_meminfo("MemTotal: 5 kB\n").is_err());
    }

    #[test]
    fn cpu_probe_reports_ram_and_respects_the_cap() {
        let p = SystemProbe::new(DeviceChoice::Cpu, Some(10)).unwrap();
        let d = p.device().unwrap();
        assert_eq!(d.uuid, "cpu");
        assert!(d.total_mib <= 10 && d.free_mib <= d.total_mib);
    }
}
