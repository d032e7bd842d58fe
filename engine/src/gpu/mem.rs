//! Device-memory queries: used and free memory of a CUDA device (through the device's own
//! context), or this process's resident set size on the CPU.
use candle_core::Device;

/// Memory in use, MiB: resident set size of this process on the CPU; used device memory on a GPU.
pub fn memory_mib(device: &Device) -> u64 {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .map(|(free, total)| ((total - free) / (1024 * 1024)) as u64)
            .unwrap_or(0),
        _ => rss_mib("VmRSS:"),
    }
}

/// Free device memory in bytes (`None` on the CPU or when the driver cannot say).
pub fn memory_free_bytes(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        // Through the device's own context (bound to this thread first): the bare driver call
        // answers for whatever context the calling thread happens to have current, or fails.
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _)| free as u64),
        _ => None,
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
