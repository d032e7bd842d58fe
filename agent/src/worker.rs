//! The execution model (being written).
use candle_core::Device;

/// Memory in use, MiB: resident set size of this process on the CPU; used device memory on a GPU.
pub fn memory_mib(device: &Device) -> u64 {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => candle_core::cuda_backend::cudarc::driver::result::mem_get_info()
            .map(|(free, total)| ((total - free) / (1024 * 1024)) as u64)
            .unwrap_or(0),
        _ => rss_mib("VmRSS:"),
    }
}

/// Peak memory, MiB: the process's peak resident set size on the CPU; current use on a GPU.
pub fn peak_memory_mib(device: &Device) -> u64 {
    match device {
        Device::Cpu => rss_mib("VmHWM:"),
        d => memory_mib(d),
    }
}

fn rss_mib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
