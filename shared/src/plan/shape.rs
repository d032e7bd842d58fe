//! Model shapes: parsed from a Hugging Face `config.json`, or known offline for the default models.
use serde::{Deserialize, Serialize};

use super::PlanError;

/// The numbers a memory estimate needs from a decoder-only transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    pub hidden: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub intermediate: u64,
    pub vocab: u64,
    /// The output projection shares the embedding matrix (no separate `lm_head`).
    pub tied_embeddings: bool,
}

/// The keys of an HF `config.json` we read; every other key is ignored.
#[derive(Deserialize)]
struct HfConfig {
    hidden_size: u64,
    num_hidden_layers: u64,
    num_attention_heads: u64,
    /// Absent in configs of models without grouped-query attention.
    num_key_value_heads: Option<u64>,
    intermediate_size: u64,
    vocab_size: u64,
    #[serde(default)]
    tie_word_embeddings: bool,
}

impl ModelShape {
    /// Parses an HF `config.json` (extra keys are fine).
    pub fn from_hf_config_json(text: &str, origin: &str) -> Result<ModelShape, PlanError> {
        let c: HfConfig = serde_json::from_str(text).map_err(|e| PlanError::BadModelConfig {
            origin: origin.into(),
            message: e.to_string(),
        })?;
        let shape = ModelShape {
            hidden: c.hidden_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            intermediate: c.intermediate_size,
            vocab: c.vocab_size,
            tied_embeddings: c.tie_word_embeddings,
        };
        if shape.heads == 0 || shape.kv_heads == 0 || !shape.hidden.is_multiple_of(shape.heads) {
            return Err(PlanError::BadModelConfig {
                origin: origin.into(),
                message: format!(
                    "hidden_size {} is not a multiple of num_attention_heads {} (or a head count is 0)",
                    shape.hidden, shape.heads
                ),
            });
        }
        Ok(shape)
    }

    pub fn head_dim(&self) -> u64 {
        self.hidden / self.heads
    }

    /// Weights of one layer's linear projections (q, k, v, o, gate, up, down); biases (Qwen's q/k/v)
    /// are < 0.01% and left out.
    pub fn layer_linear_params(&self) -> u64 {
        let q_out = self.heads * self.head_dim();
        let kv_out = self.kv_heads * self.head_dim();
        let attn = self.hidden * q_out + 2 * self.hidden * kv_out + q_out * self.hidden;
        attn + 3 * self.hidden * self.intermediate
    }

    /// Input embedding rows (and the output projection's, when not tied).
    pub fn embedding_params(&self) -> u64 {
        self.vocab * self.hidden
    }

    /// RMS-norm weights: two per layer plus the final one.
    pub fn norm_params(&self) -> u64 {
        (2 * self.layers + 1) * self.hidden
    }

    /// The untied output projection, 0 when tied.
    pub fn lm_head_params(&self) -> u64 {
        if self.tied_embeddings {
            0
        } else {
            self.vocab * self.hidden
        }
    }

    /// All parameters.
    pub fn params(&self) -> u64 {
        self.embedding_params()
            + self.layers * self.layer_linear_params()
            + self.norm_params()
            + self.lm_head_params()
    }

    /// (in, out) features of a projection, by its LoRA target name.
    pub fn projection_dims(&self, name: &str) -> Option<(u64, u64)> {
        let q = self.heads * self.head_dim();
        let kv = self.kv_heads * self.head_dim();
        Some(match name {
            "q_proj" => (self.hidden, q),
            "k_proj" | "v_proj" => (self.hidden, kv),
            "o_proj" => (q, self.hidden),
            "gate_proj" | "up_proj" => (self.hidden, self.intermediate),
            "down_proj" => (self.intermediate, self.hidden),
            _ => return None,
        })
    }
}

const fn shape(
    hidden: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    intermediate: u64,
    vocab: u64,
    tied: bool,
) -> ModelShape {
    ModelShape {
        hidden,
        layers,
        heads,
        kv_heads,
        intermediate,
        vocab,
        tied_embeddings: tied,
    }
}

/// Llama-3.2-3B-Instruct.
pub const LLAMA_3_2_3B: ModelShape = shape(3072, 28, 24, 8, 8192, 128256, true);
/// Qwen2.5-3B-Instruct.
pub const QWEN_2_5_3B: ModelShape = shape(2048, 36, 16, 2, 11008, 151936, true);
/// Meta-Llama-3.1-8B-Instruct.
pub const LLAMA_3_1_8B: ModelShape = shape(4096, 32, 32, 8, 14336, 128256, false);
/// Mistral-7B-Instruct-v0.3.
pub const MISTRAL_7B: ModelShape = shape(4096, 32, 32, 8, 14336, 32768, false);
/// SmolLM2-135M-Instruct (read from the GGUF: 30 layers, hidden 576, 9 / 3 heads, tied).
pub const SMOLLM2_135M: ModelShape = shape(576, 30, 9, 3, 1536, 49152, true);

/// The shape of a model we know without its `config.json`: the four defaults and SmolLM2-135M,
/// matched on the last path component of the name (hub id, folder or `.gguf` file), any case.
pub fn known_shape(name: &str) -> Option<ModelShape> {
    let base = name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(name)
        .to_ascii_lowercase();
    let table: [(&str, ModelShape); 5] = [
        ("llama-3.2-3b", LLAMA_3_2_3B),
        ("qwen2.5-3b", QWEN_2_5_3B),
        ("llama-3.1-8b", LLAMA_3_1_8B),
        ("mistral-7b", MISTRAL_7B),
        ("smollm2-135m", SMOLLM2_135M),
    ];
    table
        .iter()
        .find(|(stem, _)| base.contains(stem))
        .map(|(_, s)| *s)
}
