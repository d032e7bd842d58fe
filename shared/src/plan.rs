//! The plan: an experiment turned into a task DAG in loading order, with VRAM estimates.
//!
//! Order: every LLM's zero-shot evaluation, then for each SLM its zero-shot evaluation (if
//! `evaluation.include_slm_zero_shot`), its finetune, and its evaluation with the adapter (which
//! depends on the finetune). Estimates assume a CUDA device (bf16 activations, the config's
//! training dtype resolved for CUDA): they exist to place tasks on GPUs.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{ComputeBackend, ExperimentConfig, ModelEntry};
use crate::results::{TrainingStatus, model_key, result_key};
use crate::task::{ModelRole, ModelSpec, Quantization, TaskId, TaskKind, TaskSpec};

mod memory;
mod name;
mod shape;
#[cfg(test)]
mod tests;

pub use memory::{
    CUDA_CONTEXT_MIB, MemoryEstimate, estimate_eval, estimate_finetune, finetune_rows,
    kv_cache_bytes, lora_params,
};
pub use name::{LLM_MIN_BILLIONS, label_from_name, size_in_billions};
pub use shape::{
    LLAMA_3_1_8B, LLAMA_3_2_3B, MISTRAL_7B, ModelShape, QWEN_2_5_3B, SMOLLM2_135M, known_shape,
};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("{origin}: not a usable model config.json: {message}")]
    BadModelConfig { origin: String, message: String },
}

/// Bytes per activation value at inference on a GPU (bf16).
const INFERENCE_ACT_BYTES: u64 = 2;

/// The tasks of an experiment and what the coordinator needs to know about each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// In loading order.
    pub tasks: Vec<TaskSpec>,
    /// The `results.json` key each evaluation task fills.
    pub result_keys: BTreeMap<TaskId, String>,
    /// The estimate behind each task's `estimate_mib`, term by term (absent for a model whose shape
    /// is unknown).
    pub estimates: BTreeMap<TaskId, MemoryEstimate>,
    /// Things the user should know (a shape that could not be found, an estimate from a size label).
    pub notes: Vec<String>,
}

impl Plan {
    pub fn task(&self, id: &TaskId) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| &t.id == id)
    }
}

fn spec(entry: &ModelEntry, role: ModelRole) -> ModelSpec {
    let quantization = match role {
        ModelRole::Llm if entry.load_in_4bit => Quantization::Q4,
        _ => Quantization::None,
    };
    ModelSpec {
        key: model_key(role, &entry.label),
        name: entry.name.clone(),
        revision: entry.revision.clone(),
        label: entry.label.clone(),
        size: entry.size.clone(),
        role,
        quantization,
    }
}

/// Fallback when no shape is known: weights from the size label (`8B`) at the task's precision,
/// plus half again for cache and activations, plus the CUDA context. 0 if the label says nothing.
fn rough_mib(size_label: &str, weight_bytes_milli: u64) -> Option<u64> {
    let (billions, _) = size_in_billions(size_label)?;
    let weights = (billions * 1e9) as u64 * weight_bytes_milli / 1000;
    Some((weights + weights / 2).div_ceil(1024 * 1024) + CUDA_CONTEXT_MIB)
}

/// The rough estimate for a model without a shape, noting it once per model.
fn rough_estimate(notes: &mut Vec<String>, entry: &ModelEntry, weight_bytes_milli: u64) -> u64 {
    let mib = rough_mib(&entry.size, weight_bytes_milli);
    let note = match mib {
        Some(_) => format!(
            "{}: shape unknown; memory estimated from the size label `{}`",
            entry.label, entry.size
        ),
        None => format!(
            "{}: shape unknown and size `{}` unreadable; no memory estimate (0)",
            entry.label, entry.size
        ),
    };
    if !notes.contains(&note) {
        notes.push(note);
    }
    mib.unwrap_or(0)
}

/// Adds tasks to a plan, keeping the estimate's terms and the result key beside each.
struct Builder {
    plan: Plan,
}

impl Builder {
    fn push(
        &mut self,
        id: String,
        kind: TaskKind,
        model: ModelSpec,
        deps: Vec<TaskId>,
        est: Estimate,
        key: Option<String>,
    ) {
        let id = TaskId(id);
        let estimate_mib = match est {
            Estimate::FromShape(e) => {
                self.plan.estimates.insert(id.clone(), e);
                e.total_mib()
            }
            Estimate::Rough(mib) => mib,
        };
        if let Some(k) = key {
            self.plan.result_keys.insert(id.clone(), k);
        }
        self.plan.tasks.push(TaskSpec {
            id,
            kind,
            model,
            depends_on: deps,
            estimate_mib,
        });
    }

    fn estimate(
        &mut self,
        shape: Option<ModelShape>,
        entry: &ModelEntry,
        milli: u64,
        f: impl FnOnce(&ModelShape) -> MemoryEstimate,
    ) -> Estimate {
        match shape {
            Some(s) => Estimate::FromShape(f(&s)),
            None => Estimate::Rough(rough_estimate(&mut self.plan.notes, entry, milli)),
        }
    }
}

enum Estimate {
    FromShape(MemoryEstimate),
    Rough(u64),
}

/// Turns `cfg` into tasks. `shapes` gives a model's shape (from its `config.json`, or
/// [`known_shape`] offline); a model without one gets a rough estimate from its size label.
pub fn plan(cfg: &ExperimentConfig, shapes: &impl Fn(&ModelEntry) -> Option<ModelShape>) -> Plan {
    let mut b = Builder {
        plan: Plan {
            tasks: Vec::new(),
            result_keys: BTreeMap::new(),
            estimates: BTreeMap::new(),
            notes: Vec::new(),
        },
    };
    let eval_seq = (cfg.training.max_length + cfg.generation.max_new_tokens) as u64;
    let eval_batch = cfg.generation.batch_size as u64;
    let (train_batch, train_seq) = (finetune_rows(&cfg.training), cfg.training.max_length as u64);
    let train_bytes = cfg.dtype.resolve(ComputeBackend::Cuda).bytes();
    let act = INFERENCE_ACT_BYTES;

    let llms = if cfg.experiment.runs_llms() {
        &cfg.llm_models[..]
    } else {
        &[]
    };
    let slms = if cfg.experiment.runs_slms() {
        &cfg.slm_models[..]
    } else {
        &[]
    };
    for entry in llms {
        let model = spec(entry, ModelRole::Llm);
        let q = model.quantization;
        let milli = if q == Quantization::Q4 {
            625
        } else {
            act * 1000
        };
        let est = b.estimate(shapes(entry), entry, milli, |s| {
            estimate_eval(s, q, act, eval_batch, eval_seq, None)
        });
        let key = result_key(ModelRole::Llm, &entry.label, TrainingStatus::Untrained);
        b.push(
            format!("eval:{}", model.key),
            TaskKind::Evaluate,
            model,
            Vec::new(),
            est,
            Some(key),
        );
    }
    for entry in slms {
        let model = spec(entry, ModelRole::Slm);
        let shape = shapes(entry);
        let q = Quantization::None;
        if cfg.evaluation.include_slm_zero_shot {
            let est = b.estimate(shape, entry, act * 1000, |s| {
                estimate_eval(s, q, act, eval_batch, eval_seq, None)
            });
            let key = result_key(ModelRole::Slm, &entry.label, TrainingStatus::Untrained);
            let id = format!("eval:{}_untrained", model.key);
            b.push(
                id,
                TaskKind::Evaluate,
                model.clone(),
                Vec::new(),
                est,
                Some(key),
            );
        }
        let finetune = TaskId(format!("finetune:{}", model.key));
        // Training holds activations and logits besides the weights: 3× the rough figure.
        let est = match b.estimate(shape, entry, train_bytes * 1000, |s| {
            estimate_finetune(s, train_bytes, train_batch, train_seq, &cfg.lora)
        }) {
            Estimate::Rough(mib) => Estimate::Rough(3 * mib),
            e => e,
        };
        b.push(
            finetune.0.clone(),
            TaskKind::Finetune,
            model.clone(),
            Vec::new(),
            est,
            None,
        );
        let est = b.estimate(shape, entry, act * 1000, |s| {
            estimate_eval(s, q, act, eval_batch, eval_seq, Some(&cfg.lora))
        });
        let key = result_key(ModelRole::Slm, &entry.label, TrainingStatus::Finetuned);
        b.push(
            format!("eval:{}", model.key),
            TaskKind::Evaluate,
            model,
            vec![finetune],
            est,
            Some(key),
        );
    }
    b.plan
}
