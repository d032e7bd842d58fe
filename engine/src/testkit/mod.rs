//! Test helpers for the engine and its users: a tiny random-weight Llama-family model, the device
//! tests run on, a word-level tokenizer and a small synthetic code-mapping task.
use std::collections::HashMap;

use crate::model::{Config, LoadOptions, Model, TensorMap};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The shape of a tiny test model.
#[derive(Debug, Clone, Copy)]
pub struct Tiny {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    /// Half-width of the uniform embedding init (the embedding is also the output head when tied).
    pub embed_scale: f32,
    /// Whether the output head is the embedding. A tied tiny random model mostly echoes its last
    /// token; an untied one produces varied sequences.
    pub tied: bool,
}

impl Default for Tiny {
    fn default() -> Self {
        Self {
            vocab: 64,
            hidden: 32,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 64,
            embed_scale: 1.0,
            tied: true,
        }
    }
}

impl Tiny {
    pub fn config(&self) -> Config {
        Config::from_hf_json(&self.config_json(), "tiny config.json").expect("tiny config")
    }

    /// The HF `config.json` text of this shape.
    pub fn config_json(&self) -> String {
        serde_json::json!({
            "model_type": "llama",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": 512,
            "tie_word_embeddings": self.tied,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
        })
        .to_string()
    }

    /// Writes an HF model folder (`config.json`, `model.safetensors`, `tokenizer.json`,
    /// `tokenizer_config.json` with ChatML) for this shape and a word-level tokenizer of `words`.
    pub fn write_hf_dir(&self, dir: &std::path::Path, seed: u64, words: &[String]) {
        let tj = words::tokenizer_json(words);
        let inner: tokenizers::Tokenizer = tj.parse().unwrap();
        let t = Tiny {
            vocab: inner.get_vocab_size(true),
            ..*self
        };
        std::fs::write(dir.join("config.json"), t.config_json()).unwrap();
        candle_core::safetensors::save(&t.weights(seed).tensors, dir.join("model.safetensors"))
            .unwrap();
        std::fs::write(dir.join("tokenizer.json"), tj).unwrap();
        let tc = serde_json::json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": words::CHATML});
        std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    }

    /// Random weights (uniform, scaled like an initialised model), f32 on the CPU, seeded.
    pub fn weights(&self, seed: u64) -> TensorMap {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut t = HashMap::new();
        let mut rand = |shape: &[usize], scale: f32| -> Tensor {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| rng.random_range(-1.0f32..1.0) * scale)
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        let (h, i) = (self.hidden, self.intermediate);
        let hd = h / self.heads;
        let s = 1.0 / (h as f32).sqrt();
        t.insert(
            "model.embed_tokens.weight".to_string(),
            rand(&[self.vocab, h], self.embed_scale),
        );
        if !self.tied {
            t.insert("lm_head.weight".to_string(), rand(&[self.vocab, h], 1.0));
        }
        t.insert(
            "model.norm.weight".to_string(),
            Tensor::ones(h, DType::F32, &Device::Cpu).unwrap(),
        );
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            t.insert(
                format!("{p}.input_layernorm.weight"),
                Tensor::ones(h, DType::F32, &Device::Cpu).unwrap(),
            );
            t.insert(
                format!("{p}.post_attention_layernorm.weight"),
                Tensor::ones(h, DType::F32, &Device::Cpu).unwrap(),
            );
            t.insert(
                format!("{p}.self_attn.q_proj.weight"),
                rand(&[self.heads * hd, h], s),
            );
            t.insert(
                format!("{p}.self_attn.k_proj.weight"),
                rand(&[self.kv_heads * hd, h], s),
            );
            t.insert(
                format!("{p}.self_attn.v_proj.weight"),
                rand(&[self.kv_heads * hd, h], s),
            );
            t.insert(
                format!("{p}.self_attn.o_proj.weight"),
                rand(&[h, self.heads * hd], s),
            );
            t.insert(format!("{p}.mlp.gate_proj.weight"), rand(&[i, h], s));
            t.insert(format!("{p}.mlp.up_proj.weight"), rand(&[i, h], s));
            t.insert(
                format!("{p}.mlp.down_proj.weight"),
                rand(&[h, i], 1.0 / (i as f32).sqrt()),
            );
        }
        TensorMap::new(t, "tiny random weights")
    }

    /// The model in f32 on [`test_device`].
    pub fn model(&self, seed: u64) -> Model {
        let opts = LoadOptions {
            device: test_device(),
            ..LoadOptions::cpu_f32()
        };
        Model::load(&self.weights(seed), &self.config(), &opts).expect("tiny model loads")
    }
}

/// The device the engine tests run on: the CPU, or `SIZESPEC_TEST_DEVICE=cuda:N` for a test binary
/// built with `--features cuda` and run on a GPU machine (bench/gpu/README.md).
pub fn test_device() -> Device {
    match std::env::var("SIZESPEC_TEST_DEVICE") {
        Ok(d) if d.starts_with("cuda:") => {
            let n: usize = d["cuda:".len()..]
                .parse()
                .unwrap_or_else(|_| panic!("SIZESPEC_TEST_DEVICE={d}: expected cuda:N"));
            crate::gpu::open_cuda(n).unwrap_or_else(|e| panic!("SIZESPEC_TEST_DEVICE={d}: {e}"))
        }
        Ok(d) if d != "cpu" => panic!("SIZESPEC_TEST_DEVICE={d}: expected cpu or cuda:N"),
        _ => Device::Cpu,
    }
}

pub mod codes;
pub mod words;
