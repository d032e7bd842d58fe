//! `gpucheck lora-grad`: the loss and LoRA gradients of our training step against peft's
//! (`torch_ref.py lora-grad`).
//!
//! The reference holds `ids`, `labels` (HF convention: -100 = ignored, shifted inside the loss),
//! `loss`, and for every adapter tensor its value under peft's name
//! (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`) and its gradient
//! (`<name>.grad`). We attach adapters of the reference's rank to the projections it names, set them
//! to the reference values, and run [`engine::train::step::loss_and_grads`] on the same tokens.
use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::Var;
use serde::Serialize;
use shared::config::LoraConfig;

use super::compare::{Argmax, Check, compare};
use super::reference::RefFile;
use super::{Common, GpucheckError, Result, hf};
use engine::model::{LoadOptions, Mode, Model, WeightFormat};
use engine::train::{Backward, Example, IGNORE, collate};

/// Which gradient paths to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackwardChoice {
    Plain,
    Recompute,
    Both,
}

impl std::str::FromStr for BackwardChoice {
    type Err = GpucheckError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "plain" => Ok(Self::Plain),
            "recompute" => Ok(Self::Recompute),
            "both" => Ok(Self::Both),
            _ => Err(GpucheckError::Arg(format!(
                "backward `{s}`: expected plain, recompute or both"
            ))),
        }
    }
}

impl BackwardChoice {
    fn modes(self) -> Vec<(Backward, &'static str)> {
        let plain = (Backward::Plain, "plain");
        let recompute = (Backward::RecomputeLayers, "recompute");
        // Last layer kept, the ones below recomputed: both halves of the hybrid path.
        let keep1 = (Backward::KeepLast(1), "keep1");
        match self {
            Self::Plain => vec![plain],
            Self::Recompute => vec![recompute],
            Self::Both => vec![plain, recompute, keep1],
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoraGradOptions {
    pub model: PathBuf,
    pub reference: PathBuf,
    pub tol: f64,
    /// peft's `lora_alpha`; `None` = `2 r`, what `torch_ref.py lora-grad` uses.
    pub alpha: Option<f64>,
    pub backward: BackwardChoice,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoraGradReport {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub r: usize,
    pub alpha: f64,
    pub label_tokens: usize,
    /// Our loss per backward path, next to the reference's.
    pub loss_ours: Vec<(String, f64)>,
    pub loss_ref: f64,
    pub checks: Vec<Check>,
    pub pass: bool,
}

const A_SUFFIX: &str = ".lora_A.weight";

/// The reference's adapter names (value tensors, not `.grad`), its rank and its target modules.
fn adapters(reference: &RefFile) -> Result<(BTreeSet<String>, usize, Vec<String>)> {
    let names: BTreeSet<String> = reference
        .tensors
        .keys()
        .filter(|k| k.contains(".lora_") && !k.ends_with(".grad"))
        .cloned()
        .collect();
    let first_a = names
        .iter()
        .find(|n| n.ends_with(A_SUFFIX))
        .ok_or_else(|| GpucheckError::Reference {
            path: reference.path.clone(),
            name: format!("*{A_SUFFIX}"),
            reason: "no LoRA A tensor in the reference".into(),
        })?;
    let r = reference.f32(first_a)?.dim(0)?;
    let modules: BTreeSet<String> = names
        .iter()
        .filter_map(|n| n.strip_suffix(A_SUFFIX))
        .filter_map(|p| p.rsplit('.').next())
        .map(str::to_string)
        .collect();
    Ok((names, r, modules.into_iter().collect()))
}

/// HF labels → our examples: each row must be ignored on a prefix (the prompt) and equal to the ids
/// after it, which is what `collate` turns into `logits[:, :-1]` vs `labels[:, 1:]`.
fn examples(reference: &RefFile) -> Result<Vec<Example>> {
    let ids = reference.int_rows("ids")?;
    let labels = reference.int_rows("labels")?;
    let bad = |reason: String| GpucheckError::Reference {
        path: reference.path.clone(),
        name: "labels".into(),
        reason,
    };
    if ids.len() != labels.len() {
        return Err(bad(format!("{} rows, ids has {}", labels.len(), ids.len())));
    }
    ids.iter()
        .zip(&labels)
        .enumerate()
        .map(|(r, (row, lab))| {
            if row.len() != lab.len() {
                return Err(bad(format!(
                    "row {r}: {} labels for {} ids",
                    lab.len(),
                    row.len()
                )));
            }
            let prompt_len = lab.iter().take_while(|&&l| l == IGNORE).count();
            if prompt_len == 0 {
                // HF never uses the first label (nothing predicts it): treat it as prompt.
                if lab.first().is_some_and(|&l| l != row[0]) {
                    return Err(bad(format!("row {r}: label 0 differs from id 0")));
                }
            }
            for (c, (&l, &t)) in lab.iter().zip(row).enumerate().skip(prompt_len) {
                if l != t {
                    return Err(bad(format!(
                        "row {r} column {c}: label {l} is neither -100 nor the token id {t} \
                         (only prompt-then-answer labels are supported)"
                    )));
                }
            }
            Ok(Example {
                ids: row.iter().map(|&x| x as u32).collect(),
                prompt_len: prompt_len.max(1),
            })
        })
        .collect()
}

pub fn run(common: &Common, opts: &LoraGradOptions) -> Result<LoraGradReport> {
    let reference = RefFile::open(&opts.reference)?;
    let (names, r, modules) = adapters(&reference)?;
    let alpha = opts.alpha.unwrap_or(2.0 * r as f64);
    let load = LoadOptions {
        dtype: common.dtype,
        device: common.device.clone(),
        format: WeightFormat::Dense,
    };
    let mut model: Model = hf::load_model(&opts.model, &load)?;
    let lora = LoraConfig {
        r,
        alpha,
        dropout: 0.0,
        target_modules: modules,
    };
    model.add_lora(&lora, 0)?;
    let ours: BTreeSet<String> = model.lora_vars().into_iter().map(|(n, _)| n).collect();
    if ours != names {
        let missing: Vec<_> = names.difference(&ours).take(3).collect();
        let extra: Vec<_> = ours.difference(&names).take(3).collect();
        return Err(GpucheckError::Reference {
            path: reference.path.clone(),
            name: "lora tensors".into(),
            reason: format!(
                "adapter names differ: only in the reference {missing:?}, only ours {extra:?}"
            ),
        });
    }
    for n in &names {
        model.set_lora(n, &reference.f32(n)?)?;
    }
    model.set_mode(Mode::Train);
    let examples = examples(&reference)?;
    let refs: Vec<&Example> = examples.iter().collect();
    let batch = collate(&refs, 0, &common.device)?;
    let loss_ref = f64::from(reference.f32("loss")?.flatten_all()?.to_vec1::<f32>()?[0]);
    let (names_vars, vars): (Vec<String>, Vec<Var>) = model.lora_vars().into_iter().unzip();
    let mut checks = Vec::new();
    let mut loss_ours = Vec::new();
    for (mode, label) in opts.backward.modes() {
        let scale = 1.0 / batch.label_tokens as f64;
        let (sum, grads) = engine::train::step::loss_and_grads(&model, &batch, &vars, scale, mode)?;
        let loss = sum * scale;
        loss_ours.push((label.to_string(), loss));
        let rel = ((loss - loss_ref) / loss_ref).abs();
        checks.push(Check {
            check: format!("{label}:loss"),
            rel_err: rel,
            max_abs_diff: (loss - loss_ref).abs(),
            argmax_agree: None,
            tol: opts.tol,
            pass: rel <= opts.tol,
        });
        for (name, grad) in names_vars.iter().zip(grads) {
            let grad_name = format!("{name}.grad");
            let expected = reference.f32(&grad_name)?;
            let Some(g) = grad else {
                return Err(GpucheckError::Reference {
                    path: reference.path.clone(),
                    name: grad_name,
                    reason: format!("{label} backward gave no gradient for this adapter"),
                });
            };
            checks.push(compare(
                &format!("{label}:{grad_name}"),
                &g.to_device(&candle_core::Device::Cpu)?,
                &expected,
                opts.tol,
                Argmax::Skip,
            )?);
        }
    }
    Ok(LoraGradReport {
        model: opts.model.display().to_string(),
        device: common.device_arg.to_string(),
        dtype: format!("{:?}", common.dtype).to_lowercase(),
        r,
        alpha,
        label_tokens: batch.label_tokens,
        loss_ours,
        loss_ref,
        pass: checks.iter().all(|c| c.pass),
        checks,
    })
}
