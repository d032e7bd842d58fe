//! Parity tests: our decoder against candle-transformers' llama, mistral and qwen2 on the same random
//! tiny weights (f32, max abs diff ≤ 1e-4), for prefill, cached decode, left-padded batches and LoRA.
use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, mistral, qwen2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::*;

const TOL: f32 = 1e-4;

pub(crate) fn tiny_config(model_type: &str, tie: bool) -> Config {
    let mut v = json!({
        "model_type": model_type, "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": tie,
        "bos_token_id": 1, "eos_token_id": 2
    });
    if model_type == "llama" {
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32});
    }
    Config::from_hf_json(&v.to_string(), "test config").unwrap()
}

fn rand_tensor(rng: &mut ChaCha8Rng, shape: &[usize], center: f32, spread: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| center + rng.random_range(-spread..spread))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Random weights under HF names for `cfg`.
pub(crate) fn random_weights(cfg: &Config, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    let mut m = HashMap::new();
    let mut put =
        |name: String, shape: &[usize], center: f32, spread: f32, rng: &mut ChaCha8Rng| {
            m.insert(name, rand_tensor(rng, shape, center, spread));
        };
    put(
        "model.embed_tokens.weight".into(),
        &[cfg.vocab_size, h],
        0.0,
        1.0,
        &mut rng,
    );
    put("model.norm.weight".into(), &[h], 1.0, 0.2, &mut rng);
    if !cfg.tie_word_embeddings {
        put(
            "lm_head.weight".into(),
            &[cfg.vocab_size, h],
            0.0,
            0.3,
            &mut rng,
        );
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        put(
            format!("{p}.input_layernorm.weight"),
            &[h],
            1.0,
            0.2,
            &mut rng,
        );
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            1.0,
            0.2,
            &mut rng,
        );
        for (name, out, inp) in [
            ("q_proj", q, h),
            ("k_proj", kv, h),
            ("v_proj", kv, h),
            ("o_proj", h, q),
        ] {
            put(
                format!("{p}.self_attn.{name}.weight"),
                &[out, inp],
                0.0,
                0.3,
                &mut rng,
            );
            if cfg.attention_bias && name != "o_proj" {
                put(
                    format!("{p}.self_attn.{name}.bias"),
                    &[out],
                    0.0,
                    0.3,
                    &mut rng,
                );
            }
        }
        for (name, out, inp) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)] {
            put(
                format!("{p}.mlp.{name}.weight"),
                &[out, inp],
                0.0,
                0.3,
                &mut rng,
            );
        }
    }
    m
}

pub(crate) fn load_ours(cfg: &Config, weights: &HashMap<String, Tensor>) -> Model {
    Model::load(
        &TensorMap::new(weights.clone(), "test weights"),
        cfg,
        &LoadOptions::cpu_f32(),
    )
    .unwrap()
}

pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let d = max_abs_diff(a, b);
    assert!(d <= TOL, "{what}: max abs diff {d}");
    // Guard against comparing two all-zero tensors.
    let scale: f32 = a
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(scale > 1e-2, "{what}: logits are degenerate ({scale})");
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

/// A reference model that returns last-position logits `[b, vocab]` and keeps its own KV cache.
trait Reference {
    fn step(&mut self, ids: &Tensor, offset: usize) -> Tensor;
}

struct LlamaRef(llama::Llama, llama::Cache);
impl Reference for LlamaRef {
    fn step(&mut self, ids: &Tensor, offset: usize) -> Tensor {
        self.0.forward(ids, offset, &mut self.1).unwrap()
    }
}
struct MistralRef(mistral::Model);
impl Reference for MistralRef {
    fn step(&mut self, ids: &Tensor, offset: usize) -> Tensor {
        self.0.forward(ids, offset).unwrap().squeeze(1).unwrap()
    }
}
struct QwenRef(qwen2::ModelForCausalLM);
impl Reference for QwenRef {
    fn step(&mut self, ids: &Tensor, offset: usize) -> Tensor {
        self.0.forward(ids, offset).unwrap().squeeze(1).unwrap()
    }
}

fn make_ref(cfg: &Config, w: &HashMap<String, Tensor>) -> Box<dyn Reference> {
    let vb = VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
    let dev = Device::Cpu;
    match cfg.family {
        Family::Llama => {
            let rs = cfg.rope_scaling.as_ref().map(|r| llama::Llama3RopeConfig {
                factor: r.factor as f32,
                low_freq_factor: r.low_freq_factor as f32,
                high_freq_factor: r.high_freq_factor as f32,
                original_max_position_embeddings: r.original_max_position_embeddings,
                rope_type: llama::Llama3RopeType::Llama3,
            });
            let c = llama::Config {
                hidden_size: cfg.hidden_size,
                intermediate_size: cfg.intermediate_size,
                vocab_size: cfg.vocab_size,
                num_hidden_layers: cfg.num_hidden_layers,
                num_attention_heads: cfg.num_attention_heads,
                num_key_value_heads: cfg.num_key_value_heads,
                use_flash_attn: false,
                rms_norm_eps: cfg.rms_norm_eps,
                rope_theta: cfg.rope_theta as f32,
                bos_token_id: None,
                eos_token_id: None,
                rope_scaling: rs,
                max_position_embeddings: cfg.max_position_embeddings,
                tie_word_embeddings: cfg.tie_word_embeddings,
            };
            let cache = llama::Cache::new(true, DType::F32, &c, &dev).unwrap();
            Box::new(LlamaRef(llama::Llama::load(vb, &c).unwrap(), cache))
        }
        Family::Mistral => {
            let c = mistral::Config {
                vocab_size: cfg.vocab_size,
                hidden_size: cfg.hidden_size,
                intermediate_size: cfg.intermediate_size,
                num_hidden_layers: cfg.num_hidden_layers,
                num_attention_heads: cfg.num_attention_heads,
                head_dim: Some(cfg.head_dim),
                num_key_value_heads: cfg.num_key_value_heads,
                hidden_act: candle_nn::Activation::Silu,
                max_position_embeddings: cfg.max_position_embeddings,
                rms_norm_eps: cfg.rms_norm_eps,
                rope_theta: cfg.rope_theta,
                sliding_window: cfg.sliding_window,
                use_flash_attn: false,
            };
            Box::new(MistralRef(mistral::Model::new(&c, vb).unwrap()))
        }
        Family::Qwen2 => {
            let c = qwen2::Config {
                vocab_size: cfg.vocab_size,
                hidden_size: cfg.hidden_size,
                intermediate_size: cfg.intermediate_size,
                num_hidden_layers: cfg.num_hidden_layers,
                num_attention_heads: cfg.num_attention_heads,
                num_key_value_heads: cfg.num_key_value_heads,
                max_position_embeddings: cfg.max_position_embeddings,
                sliding_window: cfg.max_position_embeddings,
                max_window_layers: 0,
                tie_word_embeddings: cfg.tie_word_embeddings,
                rope_theta: cfg.rope_theta,
                rms_norm_eps: cfg.rms_norm_eps,
                use_sliding_window: false,
                hidden_act: candle_nn::Activation::Silu,
            };
            Box::new(QwenRef(qwen2::ModelForCausalLM::new(&c, vb).unwrap()))
        }
    }
}

const SEQ: [[u32; 7]; 2] = [[5, 17, 33, 2, 60, 9, 41], [11, 3, 3, 48, 27, 63, 0]];

fn check_parity(cfg: &Config) {
    let w = random_weights(cfg, 7);
    let ours = load_ours(cfg, &w);
    let all = ids(&[&SEQ[0], &SEQ[1]]);

    // Prefill 5 tokens, then decode 2, each against the reference with its own cache.
    let mut reference = make_ref(cfg, &w);
    let mut cache = ours.new_cache();
    let prefill = all.i((.., ..5)).unwrap();
    let ctx = ours.attn_ctx(&[0, 0], 0, 5).unwrap();
    let got = ours.forward_last(&prefill, &ctx, Some(&mut cache)).unwrap();
    assert_close(&got, &reference.step(&prefill, 0), "prefill");
    for pos in 5..7 {
        let tok = all.i((.., pos..pos + 1)).unwrap();
        let ctx = ours.attn_ctx(&[0, 0], cache.len(), 1).unwrap();
        let got = ours.forward_last(&tok, &ctx, Some(&mut cache)).unwrap();
        assert_close(
            &got,
            &reference.step(&tok, pos),
            &format!("decode at {pos}"),
        );
    }

    // Full-sequence logits: column j equals the reference's last logits on the prefix ..=j.
    let ctx = ours.attn_ctx(&[0, 0], 0, 7).unwrap();
    let full = ours.forward(&all, &ctx, None).unwrap();
    assert_eq!(full.dims(), &[2, 7, cfg.vocab_size]);
    for j in [0usize, 3, 6] {
        let mut fresh = make_ref(cfg, &w);
        let want = fresh.step(&all.i((.., ..=j)).unwrap(), 0);
        assert_close(
            &full.i((.., j)).unwrap(),
            &want,
            &format!("full forward column {j}"),
        );
    }
}

#[test]
fn llama3_parity_prefill_decode_full() {
    check_parity(&tiny_config("llama", false));
}

#[test]
fn smollm2_style_tied_llama_parity() {
    let cfg = tiny_config("llama", true);
    assert!(cfg.tie_word_embeddings);
    check_parity(&cfg);
}

#[test]
fn mistral_parity_prefill_decode_full() {
    check_parity(&tiny_config("mistral", false));
}

#[test]
fn qwen2_parity_with_qkv_bias_and_tied_head() {
    let cfg = tiny_config("qwen2", true);
    assert!(cfg.attention_bias);
    check_parity(&cfg);
}

/// Left-padded rows give the same last-token logits as each row alone, at prefill and at decode.
fn check_left_padding(cfg: &Config) {
    let w = random_weights(cfg, 11);
    let m = load_ours(cfg, &w);
    let rows: [&[u32]; 3] = [&[5, 17, 33], &[11, 3, 3, 48, 27, 63], &[9, 8, 7, 6]];
    let next = [40u32, 41, 42];
    let t = 6;
    let pads: Vec<usize> = rows.iter().map(|r| t - r.len()).collect();
    let padded: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| {
            std::iter::repeat_n(0u32, t - r.len())
                .chain(r.iter().copied())
                .collect()
        })
        .collect();
    let batch = ids(&padded.iter().map(|r| r.as_slice()).collect::<Vec<_>>());
    let mut cache = m.new_cache();
    let got = m
        .forward_last(&batch, &m.attn_ctx(&pads, 0, t).unwrap(), Some(&mut cache))
        .unwrap();
    let step = Tensor::from_vec(next.to_vec(), (3, 1), &Device::Cpu).unwrap();
    let got2 = m
        .forward_last(
            &step,
            &m.attn_ctx(&pads, cache.len(), 1).unwrap(),
            Some(&mut cache),
        )
        .unwrap();
    for (r, row) in rows.iter().enumerate() {
        let mut c1 = m.new_cache();
        let alone = m
            .forward_last(
                &ids(&[row]),
                &m.attn_ctx(&[0], 0, row.len()).unwrap(),
                Some(&mut c1),
            )
            .unwrap();
        assert_close(
            &got.i(r).unwrap(),
            &alone.i(0).unwrap(),
            &format!("row {r} prefill"),
        );
        let tok = Tensor::from_vec(vec![next[r]], (1, 1), &Device::Cpu).unwrap();
        let alone2 = m
            .forward_last(&tok, &m.attn_ctx(&[0], c1.len(), 1).unwrap(), Some(&mut c1))
            .unwrap();
        assert_close(
            &got2.i(r).unwrap(),
            &alone2.i(0).unwrap(),
            &format!("row {r} decode"),
        );
    }
    // Dropping a finished row from the cache keeps the others exact.
    cache.select_rows(&[2, 0]).unwrap();
    let pads2 = [pads[2], pads[0]];
    let step = Tensor::from_vec(vec![1u32, 1], (2, 1), &Device::Cpu).unwrap();
    let got3 = m
        .forward_last(
            &step,
            &m.attn_ctx(&pads2, cache.len(), 1).unwrap(),
            Some(&mut cache),
        )
        .unwrap();
    let mut c0 = m.new_cache();
    let seq0: Vec<u32> = rows[2].iter().copied().chain([next[2]]).collect();
    m.forward_last(
        &ids(&[&seq0]),
        &m.attn_ctx(&[0], 0, seq0.len()).unwrap(),
        Some(&mut c0),
    )
    .unwrap();
    let tok = Tensor::from_vec(vec![1u32], (1, 1), &Device::Cpu).unwrap();
    let alone3 = m
        .forward_last(&tok, &m.attn_ctx(&[0], c0.len(), 1).unwrap(), Some(&mut c0))
        .unwrap();
    assert_close(
        &got3.i(0).unwrap(),
        &alone3.i(0).unwrap(),
        "after select_rows",
    );
}

#[test]
fn left_padded_batch_matches_rows_alone_llama() {
    check_left_padding(&tiny_config("llama", true));
}

#[test]
fn left_padded_batch_matches_rows_alone_qwen2() {
    check_left_padding(&tiny_config("qwen2", true));
}

fn lora_cfg(r: usize) -> LoraConfig {
    LoraConfig {
        r,
        alpha: 2.0 * r as f64,
        dropout: 0.0,
        ..LoraConfig::default()
    }
}

#[test]
fn lora_starts_as_identity_then_merges_exactly() {
    let cfg = tiny_config("qwen2", true);
    let w = random_weights(&cfg, 3);
    let mut m = load_ours(&cfg, &w);
    let x = ids(&[&SEQ[0]]);
    let ctx = m.attn_ctx(&[0], 0, 7).unwrap();
    let before = m.forward(&x, &ctx, None).unwrap();
    m.add_lora(&lora_cfg(4), 1).unwrap();
    let vars = m.lora_vars();
    assert_eq!(vars.len(), 2 * 7 * cfg.num_hidden_layers);
    assert_eq!(
        vars[0].0,
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    assert_eq!(vars[0].1.dims(), &[4, 32]);
    assert_eq!(
        vars[13].0,
        "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"
    );
    assert_eq!(vars[13].1.dims(), &[32, 4]);
    // B = 0: the adapter changes nothing yet.
    assert!(max_abs_diff(&before, &m.forward(&x, &ctx, None).unwrap()) < 1e-6);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (name, var) in m.lora_vars() {
        if name.ends_with("lora_B.weight") {
            m.set_lora(&name, &rand_tensor(&mut rng, var.dims(), 0.0, 0.2))
                .unwrap();
        }
    }
    let with = m.forward(&x, &ctx, None).unwrap();
    assert!(
        max_abs_diff(&before, &with) > 1e-2,
        "a non-zero B must change the logits"
    );
    m.merge_lora().unwrap();
    assert!(m.lora_vars().is_empty());
    let merged = m.forward(&x, &ctx, None).unwrap();
    assert_close(&merged, &with, "merged");
    // Merged weights are plain tensors with no autograd graph back to the adapter's vars: else
    // every activation, the KV cache included, would keep all earlier steps alive.
    assert!(
        !merged.track_op(),
        "inference after a merge must not build an autograd graph"
    );
    let err = m.set_lora("nope", &with).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn training_gradients_reach_lora_and_embedding_input_only() {
    let cfg = tiny_config("llama", true);
    let w = random_weights(&cfg, 4);
    let mut m = load_ours(&cfg, &w);
    let lc = LoraConfig {
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        ..lora_cfg(2)
    };
    m.add_lora(&lc, 9).unwrap();
    m.set_mode(Mode::Train);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (name, var) in m.lora_vars() {
        if name.ends_with("lora_B.weight") {
            m.set_lora(&name, &rand_tensor(&mut rng, var.dims(), 0.0, 0.2))
                .unwrap();
        }
    }
    let x = ids(&[&SEQ[1]]);
    let logits = m
        .forward(&x, &m.attn_ctx(&[0], 0, 7).unwrap(), None)
        .unwrap();
    let grads = logits
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in m.lora_vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let n: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(n > 0.0, "zero gradient for {name}");
    }
    // Frozen weights are not tracked: no gradient is computed for them.
    let q = match &m.layers()[0].q_proj.base {
        BaseWeight::Dense(t) => t.clone(),
        BaseWeight::Quant(_) => unreachable!(),
    };
    assert!(grads.get(&q).is_none());
    // Nor for its transpose, where candle's stock matmul backward would store it: no gradient has
    // the shape of a transposed frozen weight (`[in, out]`).
    let mut frozen: Vec<Vec<usize>> = Vec::new();
    for layer in m.layers() {
        for proj in PROJECTIONS {
            let p = layer.projection(proj).unwrap();
            frozen.push(vec![p.in_dim, p.out_dim]);
        }
    }
    frozen.push(vec![cfg.hidden_size, cfg.vocab_size]);
    for id in grads.get_ids() {
        let dims = grads.get_id(*id).unwrap().dims().to_vec();
        assert!(
            !frozen.contains(&dims),
            "a frozen-weight gradient {dims:?} was computed"
        );
    }
}

#[test]
fn mode_train_matches_eval_without_dropout() {
    let cfg = tiny_config("mistral", false);
    let w = random_weights(&cfg, 5);
    let mut m = load_ours(&cfg, &w);
    let x = ids(&[&SEQ[0], &SEQ[1]]);
    let ctx = m.attn_ctx(&[0, 2], 0, 7).unwrap();
    let eval = m.forward(&x, &ctx, None).unwrap();
    m.set_mode(Mode::Train);
    let train = m.forward(&x, &ctx, None).unwrap();
    assert_close(&eval, &train, "differentiable path");
}

/// Mistral v0.1-style sliding window: prefill logits match candle's mistral (whose mask applies the
/// window within a call) at every column.
#[test]
fn mistral_sliding_window_parity() {
    let mut cfg = tiny_config("mistral", false);
    cfg.sliding_window = Some(3);
    let w = random_weights(&cfg, 8);
    let ours = load_ours(&cfg, &w);
    let all = ids(&[&SEQ[0], &SEQ[1]]);
    let full = ours
        .forward(&all, &ours.attn_ctx(&[0, 0], 0, 7).unwrap(), None)
        .unwrap();
    for j in [2usize, 4, 6] {
        let want = make_ref(&cfg, &w).step(&all.i((.., ..=j)).unwrap(), 0);
        assert_close(
            &full.i((.., j)).unwrap(),
            &want,
            &format!("windowed column {j}"),
        );
    }
    // The window matters: without it column 6 differs.
    let mut no_window = cfg.clone();
    no_window.sliding_window = None;
    let plain = load_ours(&no_window, &w);
    let unwindowed = plain
        .forward(&all, &plain.attn_ctx(&[0, 0], 0, 7).unwrap(), None)
        .unwrap();
    assert!(max_abs_diff(&unwindowed.i((.., 6)).unwrap(), &full.i((.., 6)).unwrap()) > 1e-3);
}

/// Layer by layer (embed → layer_forward → head) is the same computation as `forward`.
#[test]
fn layer_by_layer_equals_forward() {
    let cfg = tiny_config("qwen2", true);
    let m = load_ours(&cfg, &random_weights(&cfg, 12));
    let x = ids(&[&SEQ[0], &SEQ[1]]);
    let ctx = m.attn_ctx(&[0, 3], 0, 7).unwrap();
    let mut h = m.embed(&x).unwrap();
    for i in 0..m.num_layers() {
        h = m.layer_forward(i, &h, &ctx, None).unwrap();
    }
    assert_eq!(
        max_abs_diff(&m.head(&h).unwrap(), &m.forward(&x, &ctx, None).unwrap()),
        0.0
    );
    assert!(m.layer_forward(m.num_layers(), &h, &ctx, None).is_err());
}

/// Dropout is active only in training mode, is seeded, and replays after `restore`.
#[test]
fn dropout_is_seeded_train_only_and_replayable() {
    let cfg = tiny_config("llama", true);
    let w = random_weights(&cfg, 13);
    let lc = LoraConfig {
        dropout: 0.5,
        ..lora_cfg(4)
    };
    let run = |seed: u64| {
        let mut m = load_ours(&cfg, &w);
        m.add_lora(&lc, seed).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (name, var) in m.lora_vars() {
            if name.ends_with("lora_B.weight") {
                m.set_lora(&name, &rand_tensor(&mut rng, var.dims(), 0.0, 0.5))
                    .unwrap();
            }
        }
        m
    };
    let x = ids(&[&SEQ[0]]);
    let mut m = run(1);
    let ctx = m.attn_ctx(&[0], 0, 7).unwrap();
    let eval_a = m.forward(&x, &ctx, None).unwrap();
    assert_eq!(
        max_abs_diff(&eval_a, &m.forward(&x, &ctx, None).unwrap()),
        0.0,
        "no dropout in eval"
    );
    m.set_mode(Mode::Train);
    let state = m.dropout_rng().snapshot();
    let t1 = m.forward(&x, &ctx, None).unwrap();
    let t2 = m.forward(&x, &ctx, None).unwrap();
    assert!(max_abs_diff(&t1, &t2) > 1e-4, "fresh masks each call");
    m.dropout_rng().restore(&state);
    assert_eq!(
        max_abs_diff(&t1, &m.forward(&x, &ctx, None).unwrap()),
        0.0,
        "replay after restore"
    );
    let (seed, pos) = m.dropout_rng().position();
    let t3 = m.forward(&x, &ctx, None).unwrap();
    m.dropout_rng().restore_position(seed, pos);
    assert_eq!(
        max_abs_diff(&t3, &m.forward(&x, &ctx, None).unwrap()),
        0.0,
        "replay from position"
    );
    let mut same_seed = run(1);
    same_seed.set_mode(Mode::Train);
    assert_eq!(
        max_abs_diff(&t1, &same_seed.forward(&x, &ctx, None).unwrap()),
        0.0,
        "seeded"
    );
}
