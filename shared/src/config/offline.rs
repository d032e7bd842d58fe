//! The offline default experiment: the embedded dataset and SmolLM2-135M in both roles, ~15 min on 2 CPU cores.
use std::path::PathBuf;

use super::{
    DataConfig, DataSource, DeviceSelection, EvaluationConfig, ExperimentConfig, ExperimentScope,
    GenerationConfig, InvalidCodePolicy, LoraConfig, LrSchedule, ModelEntry, PromptConfig,
    TrainDtype, TrainingConfig,
};
use crate::split::SplitConfig;

/// Stands for the local models folder in model names; the CLI replaces it
/// ([`ExperimentConfig::resolve_models_dir`]) with `$SIZESPEC_MODELS` or `~/.cache/sizespec/models`,
/// where `scripts/fetch-smollm2.sh` puts the model.
pub const MODELS_DIR_PLACEHOLDER: &str = "${SIZESPEC_MODELS}";

/// The file name of SmolLM2-135M-Instruct as shipped (Q4_1 GGUF, Apache-2.0).
pub const SMOLLM2_GGUF_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Codes of the embedded dataset the offline run uses ([`crate::embedded::subset_codes`]).
pub const OFFLINE_CODES: usize = 12;
/// Dialogues per code (12 × 40 = 480: 288 train, 48 validation, 144 test at 60/10/30).
pub const OFFLINE_PER_CODE: usize = 40;
/// Training examples of the finetune (~13 per code).
pub const OFFLINE_TRAIN_SAMPLES: usize = 160;
/// Test dialogues every model answers.
pub const OFFLINE_EVAL_SAMPLES: usize = 120;

impl ExperimentConfig {
    /// A real but small experiment that needs no network and no GPU: SmolLM2-135M zero-shot (the
    /// LLM role, the GGUF as shipped) against the same model LoRA-finetuned (the SLM role), on
    /// [`OFFLINE_CODES`] codes of the embedded dataset.
    ///
    /// Measured on 2 idle CPU cores (AMD EPYC, this config, 2026-11-26): zero-shot evaluation of 120
    /// dialogues 63 s; finetune 160 examples × 2 epochs = 160 steps of 2 in 652 s (116 tokens/s,
    /// peak 6.9 GB); evaluation with the adapter 61 s; 12m57s in all. Exact match 0% → 85%.
    ///
    /// Why these numbers: on the 66-code set, or with 80 steps of 4 and a cosine schedule, the model
    /// learned the answer format and the set of codes (loss plateaus at ~ln(codes) / answer tokens)
    /// but not which dialogue gets which code (0-22% exact). Breaking that plateau takes enough
    /// updates at a high learning rate: 160 updates of 2 at a constant 2e-3 do it within the
    /// budget (85%); 144 updates of 4 on 12 codes reached 100% in twice the time.
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
            experiment: ExperimentScope::Full,
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
                // Many small steps at a high, constant rate: see the sizing notes above.
                learning_rate: 2e-3,
                schedule: LrSchedule::Constant,
                epochs: 2,
                early_stopping_patience: 0,
                eval_every_steps: 0,
                max_length: 512,
                batch_size: 2,
                gradient_accumulation_steps: 1,
                ..TrainingConfig::default()
            },
            generation: GenerationConfig {
                max_new_tokens: 12,
                batch_size: 8,
            },
            evaluation: EvaluationConfig {
                // The LLM role is the same model zero-shot: a second zero-shot run of the SLM
                // would repeat it prediction for prediction.
                include_slm_zero_shot: false,
                ..EvaluationConfig::default()
            },
            llm_models: vec![smollm("SmolLM2-135M-Instruct (Q4_1 GGUF), zero-shot")],
            slm_models: vec![smollm(
                "SmolLM2-135M-Instruct, dequantised to f32, LoRA r8 on q,v",
            )],
        }
    }
}
