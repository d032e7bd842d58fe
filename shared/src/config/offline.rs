//! The offline default experiment: the embedded dataset and SmolLM2-135M in both roles, ~15 min on 2 CPU cores.
use std::path::PathBuf;

use super::{
    DataConfig, DataSource, DeviceSelection, EvaluationConfig, ExperimentConfig, GenerationConfig,
    InvalidCodePolicy, LoraConfig, ModelEntry, PromptConfig, TrainDtype, TrainingConfig,
};
use crate::split::SplitConfig;

/// Stands for the local models folder in model names; the CLI replaces it
/// ([`ExperimentConfig::resolve_models_dir`]) with `$SIZESPEC_MODELS` or `~/.cache/sizespec/models`,
/// where `scripts/fetch-smollm2.sh` puts the model.
pub const MODELS_DIR_PLACEHOLDER: &str = "${SIZESPEC_MODELS}";

/// The file name of SmolLM2-135M-Instruct as shipped (Q4_1 GGUF, Apache-2.0).
pub const SMOLLM2_GGUF_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Codes of the embedded dataset the offline run uses ([`crate::embedded::subset_codes`]).
pub const OFFLINE_CODES: usize = 16;
/// Dialogues per code (16 × 40 = 640: 384 train, 64 validation, 192 test at 60/10/30).
pub const OFFLINE_PER_CODE: usize = 40;
/// Training examples of the finetune (10 per code on average).
pub const OFFLINE_TRAIN_SAMPLES: usize = 160;
/// Test dialogues every model answers.
pub const OFFLINE_EVAL_SAMPLES: usize = 120;

impl ExperimentConfig {
    /// A real but small experiment that needs no network and no GPU.
    ///
    /// Sizing for 2 CPU cores (speeds from DATA.md, candle 0.11, prompts of ~150 tokens):
    /// - finetune: 300 examples × 2 epochs = 600 sequences × 0.72 s (LoRA r8 on q,v, f32, batch 4)
    ///   ≈ 430 s ≈ 7.2 min, 150 optimiser steps;
    /// - validation at each epoch end: forward only, ≈ ⅓ of a training step (≈ 0.25 s a sequence),
    ///   on the validation split (10% of the 1,584 embedded dialogues ≈ 158) ≈ 40 s an epoch, 80 s in all;
    /// - evaluation, 3 tasks × 150 prompts (LLM zero-shot, SLM zero-shot, SLM + adapter):
    ///   the GGUF converted to Q8_0 at load: 150 / 178 tok/s prefill ≈ 0.85 s + ≤ 12 tokens / 70 tok/s
    ///   ≈ 0.17 s → ≈ 1.0 s a prompt → 150 s; the SLMs in f32: 150 / ~400 tok/s ≈ 0.4 s + 12 / 30 tok/s
    ///   ≈ 0.4 s → ≈ 0.8 s a prompt → 2 × 120 s; ≈ 6.5 min in all;
    /// - total ≈ 7.2 + 1.3 + 6.5 ≈ 15 min plus model loads (~1 s each).
    ///
    /// `max_new_tokens = 12` fits the longest code with its dot (`T38.3X5A` is 8 characters, one token
    /// per digit) plus the end-of-turn token, with a little room for a stray word.
    pub fn offline_default() -> ExperimentConfig {
        let gguf = format!("{MODELS_DIR_PLACEHOLDER}/{SMOLLM2_GGUF_FILE}");
        let smollm = |description: &str| ModelEntry {
            name: gguf.clone(),
            revision: None,
            size: "135M".into(),
            label: "SmolLM2-135M".into(),
            description: description.into(),
            // Q4_1 as shipped: quantising again at load would change nothing but the error.
            load_in_4bit: false,
        };
        ExperimentConfig {
            name: "offline-smollm2".into(),
            output: PathBuf::from("runs/offline-smollm2"),
            device: DeviceSelection::Cpu,
            dtype: TrainDtype::F32,
            data: DataConfig {
                max_eval_samples: Some(OFFLINE_EVAL_SAMPLES),
                max_train_samples: Some(OFFLINE_TRAIN_SAMPLES),
                invalid_codes: InvalidCodePolicy::Keep,
                source: DataSource::Embedded {
                    codes: Some(OFFLINE_CODES),
                    per_code: OFFLINE_PER_CODE,
                },
                split: SplitConfig {
                    train: 0.6,
                    validation: 0.1,
                    test: 0.3,
                    ..SplitConfig::default()
                },
            },
            prompt: PromptConfig::default(),
            lora: LoraConfig {
                r: 8,
                alpha: 16.0,
                dropout: 0.05,
                target_modules: super::ALL_PROJECTIONS.map(String::from).to_vec(),
            },
            training: TrainingConfig {
                // A 135M model with a rank-8 adapter and only 150 steps needs a larger step than the
                // 3B defaults to move at all.
                learning_rate: 1e-3,
                epochs: 2,
                early_stopping_patience: 0,
                eval_every_steps: 0,
                max_length: 512,
                batch_size: 4,
                gradient_accumulation_steps: 1,
                ..TrainingConfig::default()
            },
            generation: GenerationConfig {
                max_new_tokens: 12,
                batch_size: 8,
            },
            evaluation: EvaluationConfig::default(),
            llm_models: vec![smollm("SmolLM2-135M-Instruct (Q4_1 GGUF), zero-shot")],
            slm_models: vec![smollm(
                "SmolLM2-135M-Instruct, dequantised to f32, LoRA r8 on q,v",
            )],
        }
    }
}
