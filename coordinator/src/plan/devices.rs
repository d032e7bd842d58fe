//! The devices a plan is checked against: the local ones `run` would start agents for (the CPU's
//! memory from `/proc/meminfo`, GPUs through `nvidia-smi`: the coordinator links no NVML), or the
//! devices a running coordinator's agents registered.
use serde::Serialize;
use std::path::Path;

/// A device as far as it is known.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnownDevice {
    /// The agent id (`local` in single-box mode).
    pub agent: String,
    /// `cpu`, `cuda:0`, or the device's UUID for a connected agent.
    pub device: String,
    /// The device's name (`NVIDIA H100 80GB HBM3`, `CPU (16 threads)`).
    pub name: String,
    /// `None` where it could not be read (then no fit is claimed either way).
    pub total_mib: Option<u64>,
    pub free_mib: Option<u64>,
}

/// `(MemTotal, MemAvailable)` in MiB from `/proc/meminfo`'s text.
fn meminfo(text: &str) -> (Option<u64>, Option<u64>) {
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
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// `index, name, memory.total, memory.free` lines of `nvidia-smi --format=csv,noheader,nounits`.
pub fn parse_nvidia_smi(text: &str) -> Vec<(u32, String, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            match f.as_slice() {
                [i, name, total, free] => Some((
                    i.parse().ok()?,
                    name.to_string(),
                    total.parse().ok()?,
                    free.parse().ok()?,
                )),
                _ => None,
            }
        })
        .collect()
}

/// The local devices named by `run`'s `--device` arguments (`cpu`, `cuda:N`). A GPU that
/// `nvidia-smi` cannot describe is listed with its memory unknown and a note saying why.
pub fn local(devices: &[String], notes: &mut Vec<String>) -> Vec<KnownDevice> {
    let gpus = if devices.iter().any(|d| d.starts_with("cuda")) {
        let out = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=index,name,memory.total,memory.free",
                "--format=csv,noheader,nounits",
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => parse_nvidia_smi(&String::from_utf8_lossy(&o.stdout)),
            Ok(o) => {
                notes.push(format!(
                    "nvidia-smi failed ({}): GPU memory unknown",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                Vec::new()
            }
            Err(e) => {
                notes.push(format!("nvidia-smi not runnable ({e}): GPU memory unknown"));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    devices
        .iter()
        .map(|d| {
            if let Some(i) = d.strip_prefix("cuda:").and_then(|i| i.parse::<u32>().ok()) {
                let g = gpus.iter().find(|g| g.0 == i);
                KnownDevice {
                    agent: "local".into(),
                    device: d.clone(),
                    name: g.map_or_else(|| d.clone(), |g| g.1.clone()),
                    total_mib: g.map(|g| g.2),
                    free_mib: g.map(|g| g.3),
                }
            } else {
                let (total_mib, free_mib) = std::fs::read_to_string(Path::new("/proc/meminfo"))
                    .map_or((None, None), |t| meminfo(&t));
                KnownDevice {
                    agent: "local".into(),
                    device: d.clone(),
                    name: format!(
                        "CPU ({} threads)",
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    ),
                    total_mib,
                    free_mib,
                }
            }
        })
        .collect()
}

/// A named card kind from the throughput table (`plan --card H100`), assumed empty.
pub fn named_card(table: &super::throughput::Table, name: &str) -> Option<KnownDevice> {
    let c = table.card_of(name)?;
    Some(KnownDevice {
        agent: "--card".into(),
        device: c.card.clone(),
        name: c.card.clone(),
        total_mib: Some(c.memory_mib),
        free_mib: Some(c.memory_mib),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_and_meminfo_parse() {
        let g = parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 81559, 81079\nbad line\n");
        assert_eq!(g, vec![(0, "NVIDIA H100 80GB HBM3".into(), 81559, 81079)]);
        let (t, f) = meminfo("MemTotal:       24576000 kB\nMemAvailable:   12288000 kB\n");
        assert_eq!((t, f), (Some(24000), Some(12000)));
    }
}
