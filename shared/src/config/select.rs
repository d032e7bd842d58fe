//! Device, training-precision and task selection (`device = "cuda:0,cuda:1"`, `dtype = "bf16"`,
//! `experiment = "llm"`).
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which devices the single-box mode runs agents on.
///
/// Written as one string: `"auto"` (every CUDA device NVML reports, else the CPU), `"cpu"`,
/// `"cuda"` (every CUDA device, fail without one) or a comma-separated list `"cuda:0,cuda:1"`.
/// A TOML array of the same items (`["cuda:0", "cuda:1"]`) is accepted too.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeviceSelection {
    #[default]
    Auto,
    Cpu,
    /// Every CUDA device.
    AllCuda,
    /// These CUDA ordinals, in order, without repeats.
    Cuda(Vec<u32>),
}

/// What a device string looked like when it could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "device `{0}` is not one of `auto`, `cpu`, `cuda`, `cuda:N` or a comma-separated list of `cuda:N`"
)]
pub struct BadDevice(pub String);

impl FromStr for DeviceSelection {
    type Err = BadDevice;

    fn from_str(s: &str) -> Result<Self, BadDevice> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => return Ok(Self::Auto),
            "cpu" => return Ok(Self::Cpu),
            "cuda" => return Ok(Self::AllCuda),
            _ => {}
        }
        let mut ordinals = Vec::new();
        for item in t.split(',') {
            let n = item
                .trim()
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| BadDevice(s.to_string()))?;
            if ordinals.contains(&n) {
                return Err(BadDevice(s.to_string()));
            }
            ordinals.push(n);
        }
        Ok(Self::Cuda(ordinals))
    }
}

impl fmt::Display for DeviceSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::AllCuda => f.write_str("cuda"),
            Self::Cuda(ns) => {
                let items: Vec<String> = ns.iter().map(|n| format!("cuda:{n}")).collect();
                f.write_str(&items.join(","))
            }
        }
    }
}

impl Serialize for DeviceSelection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSelection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = DeviceSelection;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a device string (`auto`, `cpu`, `cuda`, `cuda:0,cuda:1`) or an array of `cuda:N`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DeviceSelection, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<DeviceSelection, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                items.join(",").parse().map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a task's tensors live, as far as precision choice is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeBackend {
    Cpu,
    Cuda,
}

/// Precision of SLM weights and activations during LoRA training (the adapter and its optimiser
/// state stay f32 whatever this says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainDtype {
    /// bf16 on CUDA, f32 on the CPU (candle's CPU bf16 matmul is far slower than f32).
    #[default]
    Auto,
    Bf16,
    F16,
    F32,
}

impl TrainDtype {
    /// The concrete precision on `backend` (never `Auto`).
    pub fn resolve(self, backend: ComputeBackend) -> TrainDtype {
        match (self, backend) {
            (TrainDtype::Auto, ComputeBackend::Cuda) => TrainDtype::Bf16,
            (TrainDtype::Auto, ComputeBackend::Cpu) => TrainDtype::F32,
            (other, _) => other,
        }
    }

    /// Bytes per element of the resolved precision (f32 for `Auto`, the pessimistic case).
    pub fn bytes(self) -> u64 {
        match self {
            TrainDtype::Bf16 | TrainDtype::F16 => 2,
            TrainDtype::F32 | TrainDtype::Auto => 4,
        }
    }
}

/// Which side of the comparison an experiment runs (`experiment = "full"`, or `--experiment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperimentScope {
    /// Every task: the LLMs zero-shot and the SLMs' finetune + evaluation.
    #[default]
    Full,
    /// Only the zero-shot LLM evaluations.
    Llm,
    /// Only the SLMs: (zero-shot evaluation,) finetune, evaluation with the adapter.
    Slm,
}

/// An experiment scope that is not `full`, `llm` or `slm`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("experiment `{0}` is not one of `full`, `llm` or `slm`")]
pub struct BadScope(pub String);

impl FromStr for ExperimentScope {
    type Err = BadScope;

    fn from_str(s: &str) -> Result<Self, BadScope> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Ok(Self::Full),
            "llm" => Ok(Self::Llm),
            "slm" => Ok(Self::Slm),
            _ => Err(BadScope(s.to_string())),
        }
    }
}

impl fmt::Display for ExperimentScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "full",
            Self::Llm => "llm",
            Self::Slm => "slm",
        })
    }
}

impl ExperimentScope {
    pub fn is_full(&self) -> bool {
        *self == Self::Full
    }

    /// Whether the zero-shot LLM evaluations run.
    pub fn runs_llms(self) -> bool {
        self != Self::Slm
    }

    /// Whether the SLM tasks run.
    pub fn runs_slms(self) -> bool {
        self != Self::Llm
    }
}
