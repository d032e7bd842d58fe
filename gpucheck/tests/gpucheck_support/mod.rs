//! Helpers for `gpucheck_cpu.rs`: tiny HF model folders written from Rust (config.json + bf16
//! safetensors under HF names, as `torch_ref.py weights` writes them) and an f64 Qwen2 forward built
//! from basic candle ops, independent of the engine, for finite-difference gradients.
use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{D, DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

pub fn llama_config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 96,
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        "max_position_embeddings": 256, "tie_word_embeddings": false, "bos_token_id": 1,
        "eos_token_id": [2, 3], "hidden_act": "silu", "torch_dtype": "bfloat16"
    })
}

pub fn qwen2_config() -> Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 40,
        "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 128, "sliding_window": 128, "max_window_layers": 2,
        "use_sliding_window": false, "tie_word_embeddings": true, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu"
    })
}

pub fn dims(cfg: &Value, key: &str) -> usize {
    cfg[key].as_u64().expect(key) as usize
}

/// Random weights under HF names (`std` like an initialised model, norms near 1), rounded through
/// bf16 as the torch side stores them.
pub fn random_weights(cfg: &Value, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (v, h, i) = (
        dims(cfg, "vocab_size"),
        dims(cfg, "hidden_size"),
        dims(cfg, "intermediate_size"),
    );
    let (nh, nkv) = (
        dims(cfg, "num_attention_heads"),
        dims(cfg, "num_key_value_heads"),
    );
    let hd = cfg["head_dim"].as_u64().map_or(h / nh, |d| d as usize);
    let bias = cfg["model_type"] == "qwen2";
    let mut m = HashMap::new();
    let mut put = |name: String, shape: &[usize], center: f32, spread: f32| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| center + rng.random_range(-spread..spread))
            .collect();
        let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
        m.insert(name, t.to_dtype(DType::BF16).unwrap());
    };
    put("model.embed_tokens.weight".into(), &[v, h], 0.0, 1.0);
    put("model.norm.weight".into(), &[h], 1.0, 0.2);
    if cfg["tie_word_embeddings"] == false {
        put("lm_head.weight".into(), &[v, h], 0.0, 0.3);
    }
    for l in 0..dims(cfg, "num_hidden_layers") {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.2);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            1.0,
            0.2,
        );
        for (name, out, inp) in [
            ("q_proj", nh * hd, h),
            ("k_proj", nkv * hd, h),
            ("v_proj", nkv * hd, h),
            ("o_proj", h, nh * hd),
        ] {
            put(
                format!("{p}.self_attn.{name}.weight"),
                &[out, inp],
                0.0,
                0.3,
            );
            if bias && name != "o_proj" {
                put(format!("{p}.self_attn.{name}.bias"), &[out], 0.0, 0.3);
            }
        }
        for (name, out, inp) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)] {
            put(format!("{p}.mlp.{name}.weight"), &[out, inp], 0.0, 0.3);
        }
    }
    m
}

/// An HF folder as `torch_ref.py weights` writes it: config.json + model.safetensors, no tokenizer.
pub fn write_hf_folder(dir: &Path, cfg: &Value, weights: &HashMap<String, Tensor>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(cfg)?)?;
    candle_core::safetensors::save(weights, dir.join("model.safetensors"))?;
    Ok(())
}

pub fn f32_map(weights: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    weights
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F32).unwrap()))
        .collect()
}

pub fn int_tensor(rows: &[Vec<i64>]) -> Tensor {
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<i32> = rows.iter().flatten().map(|&x| x as i32).collect();
    Tensor::from_vec(flat, (b, t), &Device::Cpu).unwrap()
}

pub fn random_rows(b: usize, t: usize, vocab: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..b)
        .map(|_| (0..t).map(|_| rng.random_range(3..vocab as i64)).collect())
        .collect()
}

/// Qwen2 forward in f64 from basic candle ops, written from HF's `modeling_qwen2` independently of
/// the engine (candle-transformers' fused RMSNorm has no f64 kernel): full-sequence logits `[b, t, v]`.
pub fn qwen2_logits_f64(cfg: &Value, w: &HashMap<String, Tensor>, ids: &Tensor) -> Tensor {
    let r = |t: candle_core::Result<Tensor>| t.unwrap();
    let (b, t) = ids.dims2().unwrap();
    let h = dims(cfg, "hidden_size");
    let (nh, nkv) = (
        dims(cfg, "num_attention_heads"),
        dims(cfg, "num_key_value_heads"),
    );
    let hd = h / nh;
    let eps = cfg["rms_norm_eps"].as_f64().unwrap();
    let theta = cfg["rope_theta"].as_f64().unwrap();
    let norm = |x: &Tensor, name: &str| {
        let var = r(r(x.sqr()).mean_keepdim(D::Minus1));
        r(r(x.broadcast_div(&r(r(var + eps).sqrt()))).broadcast_mul(&w[name]))
    };
    let lin = |x: &Tensor, name: &str| {
        let y = r(x.broadcast_matmul(&r(w[&format!("{name}.weight")].t())));
        match w.get(&format!("{name}.bias")) {
            Some(bias) => r(y.broadcast_add(bias)),
            None => y,
        }
    };
    let inv: Vec<f64> = (0..hd / 2)
        .map(|i| theta.powf(-((2 * i) as f64) / hd as f64))
        .collect();
    let ang: Vec<f64> = (0..t)
        .flat_map(|p| inv.iter().map(move |f| p as f64 * f))
        .collect();
    let ang = r(Tensor::from_vec(ang, (t, hd / 2), &Device::Cpu));
    let cos = r(Tensor::cat(&[&r(ang.cos()), &r(ang.cos())], 1));
    let sin = r(Tensor::cat(&[&r(ang.sin()), &r(ang.sin())], 1));
    let rope = |x: &Tensor| {
        let x1 = r(x.narrow(3, 0, hd / 2));
        let x2 = r(x.narrow(3, hd / 2, hd / 2));
        let rot = r(Tensor::cat(&[&r(x2.neg()), &x1], 3));
        r(r(x.broadcast_mul(&cos)) + r(rot.broadcast_mul(&sin)))
    };
    let mask: Vec<f64> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f64::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = r(Tensor::from_vec(mask, (t, t), &Device::Cpu));
    let mut x = r(
        r(w["model.embed_tokens.weight"].index_select(&r(ids.flatten_all()), 0)).reshape((b, t, h)),
    );
    for l in 0..dims(cfg, "num_hidden_layers") {
        let p = format!("model.layers.{l}");
        let hn = norm(&x, &format!("{p}.input_layernorm.weight"));
        let heads = |y: Tensor, n: usize| r(r(y.reshape((b, t, n, hd))).transpose(1, 2));
        let q = rope(&heads(lin(&hn, &format!("{p}.self_attn.q_proj")), nh));
        let k = rope(&heads(lin(&hn, &format!("{p}.self_attn.k_proj")), nkv));
        let v = heads(lin(&hn, &format!("{p}.self_attn.v_proj")), nkv);
        let rep = |z: Tensor| {
            let z = r(r(z.unsqueeze(2)).broadcast_as((b, nkv, nh / nkv, t, hd)));
            r(r(z.contiguous()).reshape((b, nh, t, hd)))
        };
        let (k, v) = (rep(k), rep(v));
        let s = r(r(q.contiguous()).matmul(&r(r(k.t()).contiguous())));
        let s = r(r(s * (1.0 / (hd as f64).sqrt())).broadcast_add(&mask));
        let e = r(r(s.broadcast_sub(&r(s.max_keepdim(D::Minus1)))).exp());
        let pr = r(e.broadcast_div(&r(e.sum_keepdim(D::Minus1))));
        let y = r(r(r(pr.matmul(&v)).transpose(1, 2)).reshape((b, t, nh * hd)));
        x = r(&x + lin(&y, &format!("{p}.self_attn.o_proj")));
        let hn = norm(&x, &format!("{p}.post_attention_layernorm.weight"));
        let g = r(lin(&hn, &format!("{p}.mlp.gate_proj")).silu());
        let u = lin(&hn, &format!("{p}.mlp.up_proj"));
        x = r(&x + lin(&r(g * u), &format!("{p}.mlp.down_proj")));
    }
    let x = norm(&x, "model.norm.weight");
    r(x.broadcast_matmul(&r(w["model.embed_tokens.weight"].t())))
}
