//! Peak device-memory estimates of a task from the model's shape (for VRAM-aware placement).
//!
//! These are upper bounds for placement, not predictions to the MiB: each term assumes the
//! largest sequence of the task (`training.max_length` prompt + answer) in every row of the batch
//! ([`finetune_rows`] rows for training).
use serde::{Deserialize, Serialize};

use super::ModelShape;
use crate::config::{Batching, LoraConfig, TrainingConfig};
use crate::task::Quantization;

const MIB: u64 = 1024 * 1024;

/// CUDA context, cuBLAS workspace and the allocator's slack: measured at 400-600 MiB on H100 with
/// candle; take the top.
pub const CUDA_CONTEXT_MIB: u64 = 600;

/// 4-bit weights: half a byte per weight plus a 16-bit scale and a 16-bit offset per block of 32
/// (Q4_1 layout: 20 bytes per 32 weights = 0.625 byte/weight). Expressed in 1/1000 bytes.
const Q4_MILLIBYTES_PER_WEIGHT: u64 = 625;

/// The estimate's terms, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub kv_cache: u64,
    pub activations: u64,
    /// LoRA weights, their gradients and AdamW's two moments (all f32).
    pub lora_and_optimizer: u64,
    pub overhead: u64,
}

impl MemoryEstimate {
    pub fn total_bytes(&self) -> u64 {
        self.weights + self.kv_cache + self.activations + self.lora_and_optimizer + self.overhead
    }

    /// Total rounded up to whole MiB.
    pub fn total_mib(&self) -> u64 {
        self.total_bytes().div_ceil(MIB)
    }
}

/// Trainable parameters of a LoRA adapter: `r × (in + out)` per targeted projection per layer
/// (unknown projection names are rejected by config validation and count 0 here).
pub fn lora_params(shape: &ModelShape, lora: &LoraConfig) -> u64 {
    let per_layer: u64 = lora
        .target_modules
        .iter()
        .filter_map(|m| shape.projection_dims(m))
        .map(|(i, o)| lora.r as u64 * (i + o))
        .sum();
    per_layer * shape.layers
}

/// Weight bytes: with 4-bit, the layers' projections and an untied output head are quantised;
/// the embedding and norms stay at `act_bytes` (quantisers leave them alone).
fn weight_bytes(shape: &ModelShape, quantization: Quantization, act_bytes: u64) -> u64 {
    let kept = (shape.embedding_params() + shape.norm_params()) * act_bytes;
    let linear = shape.layers * shape.layer_linear_params() + shape.lm_head_params();
    match quantization {
        Quantization::None => kept + linear * act_bytes,
        Quantization::Q4 => kept + (linear * Q4_MILLIBYTES_PER_WEIGHT).div_ceil(1000),
    }
}

/// KV cache: 2 (K and V) × layers × kv_heads × head_dim × tokens × batch × bytes.
pub fn kv_cache_bytes(shape: &ModelShape, batch: u64, seq: u64, act_bytes: u64) -> u64 {
    2 * shape.layers * shape.kv_heads * shape.head_dim() * seq * batch * act_bytes
}

/// The transient tensors of one layer's forward over `batch × seq` tokens: q/k/v/o projections and
/// the residual (≈ 4 × hidden + 2 × kv width), attention scores and their softmax in f32
/// (2 × heads × seq², no fused attention assumed), and the MLP's gate, up, activation and product
/// (4 × intermediate).
fn layer_activation_bytes(shape: &ModelShape, batch: u64, seq: u64, act_bytes: u64) -> u64 {
    let tokens = batch * seq;
    let kv_width = shape.kv_heads * shape.head_dim();
    let proj = tokens * (4 * shape.hidden + 2 * kv_width) * act_bytes;
    let scores = 2 * batch * shape.heads * seq * seq * 4;
    let mlp = 4 * tokens * shape.intermediate * act_bytes;
    proj + scores + mlp
}

/// An evaluation: weights (4-bit or in `act_bytes`), a KV cache for `prompt + new tokens`, one
/// layer's prefill transients, the last position's logits in f32, the adapter if one is applied.
pub fn estimate_eval(
    shape: &ModelShape,
    quantization: Quantization,
    act_bytes: u64,
    batch: u64,
    seq: u64,
    adapter: Option<&LoraConfig>,
) -> MemoryEstimate {
    MemoryEstimate {
        weights: weight_bytes(shape, quantization, act_bytes),
        kv_cache: kv_cache_bytes(shape, batch, seq, act_bytes),
        activations: layer_activation_bytes(shape, batch, seq, act_bytes) + batch * shape.vocab * 4,
        lora_and_optimizer: adapter.map_or(0, |l| lora_params(shape, l) * 4),
        overhead: CUDA_CONTEXT_MIB * MIB,
    }
}

/// Rows of `training.max_length` tokens that bound one training micro-batch on a GPU, for
/// [`estimate_finetune`]. Fixed batching, or length-grouped batching whose budget the job sizes to
/// the free memory (`max_batch_tokens = 0`), plans for `batch_size` full-length rows; an explicit
/// budget of `T` tokens holds at most `max(T, max_length)` tokens (a longer example goes alone), so
/// `⌈max(T, max_length) / max_length⌉` full-length rows bound both its tokens and its attention.
pub fn finetune_rows(training: &TrainingConfig) -> u64 {
    let len = training.max_length.max(1) as u64;
    match (training.batching, training.max_batch_tokens) {
        (Batching::Fixed, _) | (_, 0) => training.batch_size as u64,
        (_, budget) => (budget as u64).max(len).div_ceil(len),
    }
}

/// A LoRA finetune with layer-wise recomputation: frozen weights in `act_bytes`; the saved input
/// of every layer (layers × b × t × hidden); one layer's graph recomputed during backward, twice
/// over for the gradients of its activations; the logits and their gradient in f32
/// (2 × b × t × vocab × 4: the cross-entropy needs the full distribution at every position);
/// LoRA weights + gradients + AdamW's two moments, all f32 (16 bytes a parameter).
pub fn estimate_finetune(
    shape: &ModelShape,
    act_bytes: u64,
    batch: u64,
    seq: u64,
    lora: &LoraConfig,
) -> MemoryEstimate {
    let tokens = batch * seq;
    let saved_inputs = shape.layers * tokens * shape.hidden * act_bytes;
    let one_layer = 2 * layer_activation_bytes(shape, batch, seq, act_bytes);
    let logits = 2 * tokens * shape.vocab * 4;
    MemoryEstimate {
        weights: weight_bytes(shape, Quantization::None, act_bytes),
        kv_cache: 0,
        activations: saved_inputs + one_layer + logits,
        lora_and_optimizer: lora_params(shape, lora) * 16,
        overhead: CUDA_CONTEXT_MIB * MIB,
    }
}
