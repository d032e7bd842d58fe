//! The decoder's hyper-parameters, read from a Hugging Face `config.json` (or built from GGUF metadata).
use serde::Deserialize;

use crate::error::EngineError;

/// The architecture family. SmolLM2 is [`Family::Llama`] with tied embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama 2/3.x and SmolLM/SmolLM2 (`model_type: "llama"`).
    Llama,
    /// Mistral v0.1-v0.3 (`model_type: "mistral"`).
    Mistral,
    /// Qwen2 / Qwen2.5 (`model_type: "qwen2"`): biases on q/k/v.
    Qwen2,
}

impl Family {
    /// Parse an HF `model_type` or a GGUF `general.architecture`.
    pub fn from_model_type(model_type: &str) -> Result<Self, EngineError> {
        match model_type {
            "llama" => Ok(Self::Llama),
            "mistral" => Ok(Self::Mistral),
            "qwen2" => Ok(Self::Qwen2),
            other => Err(EngineError::UnsupportedModel(format!(
                "model_type `{other}` is not supported (llama, mistral, qwen2)"
            ))),
        }
    }
}

/// Llama 3.x frequency-dependent RoPE scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Everything the decoder needs to know about its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    /// Mistral v0.1 style local attention; `None` for full attention.
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    /// All end-of-sequence ids the config names (a number or a list in `config.json`).
    pub eos_token_ids: Vec<u32>,
}

/// A number or a list of numbers, as `eos_token_id` appears in HF configs.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<u32> {
        match self {
            Self::One(x) => vec![x],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RawRopeScaling {
    #[serde(default, alias = "type")]
    rope_type: Option<String>,
    #[serde(default)]
    factor: Option<f64>,
    #[serde(default)]
    low_freq_factor: Option<f64>,
    #[serde(default)]
    high_freq_factor: Option<f64>,
    #[serde(default)]
    original_max_position_embeddings: Option<usize>,
    /// transformers ≥ 5 writes `rope_parameters` (theta included) instead of `rope_theta` + `rope_scaling`.
    #[serde(default)]
    rope_theta: Option<f64>,
}

/// The subset of HF `config.json` we read (unknown keys are ignored: HF configs carry many).
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<RawRopeScaling>,
    #[serde(default)]
    rope_parameters: Option<RawRopeScaling>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    hidden_act: Option<String>,
}

impl Config {
    /// Parse the text of an HF `config.json`; `origin` names the file in errors.
    pub fn from_hf_json(text: &str, origin: &str) -> Result<Self, EngineError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| EngineError::BadFile {
            path: origin.into(),
            reason: e.to_string(),
        })?;
        let bad = |reason: String| EngineError::BadFile {
            path: origin.into(),
            reason,
        };
        let family = Family::from_model_type(&raw.model_type).map_err(|e| bad(e.to_string()))?;
        if let Some(act) = raw.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(bad(format!(
                "hidden_act `{act}` is not supported (silu only)"
            )));
        }
        // transformers 4.x: top-level `rope_theta` + `rope_scaling`; transformers 5.x: `rope_parameters`
        // holding both. Read either, the top-level keys winning when both are present.
        let rope_theta = raw
            .rope_theta
            .or(raw.rope_parameters.as_ref().and_then(|p| p.rope_theta))
            .unwrap_or(10_000.0);
        let rope_scaling = match raw.rope_scaling.or(raw.rope_parameters) {
            None => None,
            Some(rs) => match rs.rope_type.as_deref() {
                Some("llama3") => Some(Llama3RopeScaling {
                    factor: rs
                        .factor
                        .ok_or_else(|| bad("rope_scaling.factor is missing".into()))?,
                    low_freq_factor: rs.low_freq_factor.unwrap_or(1.0),
                    high_freq_factor: rs.high_freq_factor.unwrap_or(4.0),
                    original_max_position_embeddings: rs
                        .original_max_position_embeddings
                        .unwrap_or(8192),
                }),
                Some("default") | None => None,
                Some(other) => {
                    return Err(bad(format!("rope_scaling type `{other}` is not supported")));
                }
            },
        };
        if raw.num_attention_heads == 0
            || !raw.hidden_size.is_multiple_of(raw.num_attention_heads) && raw.head_dim.is_none()
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            )));
        }
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if num_key_value_heads == 0 || !raw.num_attention_heads.is_multiple_of(num_key_value_heads)
        {
            return Err(bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {num_key_value_heads}",
                raw.num_attention_heads
            )));
        }
        // Qwen2 configs carry a sliding_window value but switch it off with use_sliding_window.
        let sliding_window = match (family, raw.use_sliding_window) {
            (Family::Qwen2, Some(true)) | (Family::Mistral, _) => raw.sliding_window,
            _ => None,
        };
        Ok(Self {
            family,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads,
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias: raw.attention_bias.unwrap_or(family == Family::Qwen2),
            sliding_window,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw
                .eos_token_id
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
        })
    }

    /// Key/value groups: how many query heads share one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// RoPE inverse frequencies (`head_dim / 2` of them), with Llama 3 scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d)
            .step_by(2)
            .map(|i| 1.0 / self.rope_theta.powf(i as f64 / d as f64))
            .collect();
        let Some(rs) = &self.rope_scaling else {
            return base.into_iter().map(|f| f as f32).collect();
        };
        let low_wavelen = rs.original_max_position_embeddings as f64 / rs.low_freq_factor;
        let high_wavelen = rs.original_max_position_embeddings as f64 / rs.high_freq_factor;
        base.into_iter()
            .map(|freq| {
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let f = if wavelen < high_wavelen {
                    freq
                } else if wavelen > low_wavelen {
                    freq / rs.factor
                } else {
                    let smooth = (rs.original_max_position_embeddings as f64 / wavelen
                        - rs.low_freq_factor)
                        / (rs.high_freq_factor - rs.low_freq_factor);
                    (1.0 - smooth) * freq / rs.factor + smooth * freq
                };
                f as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llama3_with_rope_scaling_and_eos_list() {
        let text = r#"{"model_type":"llama","vocab_size":128256,"hidden_size":3072,"intermediate_size":8192,
            "num_hidden_layers":28,"num_attention_heads":24,"num_key_value_heads":8,"rms_norm_eps":1e-5,
            "rope_theta":500000.0,"max_position_embeddings":131072,"tie_word_embeddings":true,
            "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},
            "bos_token_id":128000,"eos_token_id":[128001,128008,128009],"hidden_act":"silu"}"#;
        let c = Config::from_hf_json(text, "config.json").unwrap();
        assert_eq!(c.family, Family::Llama);
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.kv_groups(), 3);
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
        assert!(c.tie_word_embeddings);
        assert!(!c.attention_bias);
        let rs = c.rope_scaling.as_ref().unwrap();
        assert_eq!(rs.factor, 32.0);
        let f = c.rope_inv_freq();
        assert_eq!(f.len(), 64);
        // The lowest frequencies are divided by the factor, the highest are kept.
        assert_eq!(f[0], 1.0);
        let unscaled = 1.0 / 500000f64.powf(126.0 / 128.0);
        assert!(((f[63] as f64) - unscaled / 32.0).abs() < 1e-12);
    }

    #[test]
    fn parses_qwen2_and_mistral() {
        let q = r#"{"model_type":"qwen2","vocab_size":151936,"hidden_size":2048,"intermediate_size":11008,
            "num_hidden_layers":36,"num_attention_heads":16,"num_key_value_heads":2,"rms_norm_eps":1e-6,
            "rope_theta":1000000.0,"sliding_window":32768,"use_sliding_window":false,
            "tie_word_embeddings":true,"eos_token_id":151645}"#;
        let c = Config::from_hf_json(q, "q/config.json").unwrap();
        assert_eq!(
            (c.family, c.attention_bias, c.sliding_window),
            (Family::Qwen2, true, None)
        );
        assert_eq!(c.eos_token_ids, vec![151645]);
        let m = r#"{"model_type":"mistral","vocab_size":32768,"hidden_size":4096,"intermediate_size":14336,
            "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"rms_norm_eps":1e-5,
            "rope_theta":1000000.0,"sliding_window":null,"head_dim":128}"#;
        let c = Config::from_hf_json(m, "m/config.json").unwrap();
        assert_eq!(
            (c.family, c.sliding_window, c.tie_word_embeddings),
            (Family::Mistral, None, false)
        );
    }

    #[test]
    fn parses_transformers5_rope_parameters() {
        // transformers >= 5 writes theta and scaling together under `rope_parameters`.
        let text = r#"{"model_type":"llama","vocab_size":128256,"hidden_size":3072,"intermediate_size":8192,
            "num_hidden_layers":28,"num_attention_heads":24,"num_key_value_heads":8,"rms_norm_eps":1e-5,
            "rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":32.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let c = Config::from_hf_json(text, "config.json").unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.rope_scaling.as_ref().unwrap().factor, 32.0);
        let q = r#"{"model_type":"qwen2","vocab_size":151936,"hidden_size":2048,"intermediate_size":11008,
            "num_hidden_layers":36,"num_attention_heads":16,"num_key_value_heads":2,"rms_norm_eps":1e-6,
            "rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"}}"#;
        let c = Config::from_hf_json(q, "q/config.json").unwrap();
        assert_eq!(
            (c.rope_theta, c.rope_scaling.is_none()),
            (1_000_000.0, true)
        );
    }

    #[test]
    fn rejects_unknown_family_naming_the_file() {
        let t = r#"{"model_type":"gpt2","vocab_size":1,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":1,"rms_norm_eps":1e-5}"#;
        let e = Config::from_hf_json(t, "/m/config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/m/config.json") && e.contains("gpt2"), "{e}");
    }
}
