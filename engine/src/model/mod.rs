//! The decoder for every supported family (Llama 3.x, Mistral, Qwen2, SmolLM2 = Llama), with
//! LoRA-capable projections.
//!
//! API tour (device and dtype are always parameters; nothing assumes the CPU):
//! - [`Model::load`]`(&dyn WeightSource, &Config, &LoadOptions)`: weights by HF name from a
//!   [`WeightSource`] (safetensors, GGUF, an in-memory [`TensorMap`]).
//! - [`Model::attn_ctx`]`(pads, offset, seq_len)` → [`AttnCtx`]: positions and masks for a
//!   left-padded batch (`offset` = [`KvCache::len`] when decoding).
//! - [`Model::forward`] → logits `[b, t, vocab]` (f32); [`Model::forward_last`] → `[b, vocab]`.
//! - Layer by layer (for recomputation in training): [`Model::embed`], [`Model::layer_forward`],
//!   [`Model::head`].
//! - LoRA: [`Model::add_lora`], [`Model::lora_vars`] (peft names), [`Model::set_lora`],
//!   [`Model::merge_lora`]; [`Model::set_mode`] switches dropout and the differentiable op path.
//! - Frozen base weights are plain tensors multiplied through [`frozen::frozen_matmul`], whose
//!   backward computes only the input's gradient (candle's matmul would also build an unused
//!   full-size gradient for every frozen weight); quantised bases have no backward at all, so
//!   training loads dense weights ([`WeightFormat::Dense`]).
mod attn;
mod config;
pub mod frozen;
mod lora;
pub mod ops;
#[cfg(test)]
pub(crate) mod tests;
mod weights;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use shared::config::LoraConfig;

pub use attn::{AttnCtx, KvCache, LayerCache};
pub use config::{Config, Family, Llama3RopeScaling, OneOrMany};
pub use lora::{BaseWeight, DropoutRng, LoraAdapter, LoraLinear, Mode};
pub use ops::OpPath;
pub use weights::{
    LoadOptions, TensorMap, TokenEmbedding, WeightFormat, WeightSource, check_shape,
    quantize_if_asked, row_fits,
};

use crate::error::{EngineError, Result};

/// The seven projection names, in the order adapters are created and listed.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// One decoder block.
#[derive(Debug, Clone)]
pub struct Layer {
    pub input_norm: Tensor,
    pub post_attention_norm: Tensor,
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
    pub gate_proj: LoraLinear,
    pub up_proj: LoraLinear,
    pub down_proj: LoraLinear,
}

impl Layer {
    /// The projection of that name (`q_proj`, ..., `down_proj`).
    pub fn projection(&self, name: &str) -> Option<&LoraLinear> {
        Some(match name {
            "q_proj" => &self.q_proj,
            "k_proj" => &self.k_proj,
            "v_proj" => &self.v_proj,
            "o_proj" => &self.o_proj,
            "gate_proj" => &self.gate_proj,
            "up_proj" => &self.up_proj,
            "down_proj" => &self.down_proj,
            _ => return None,
        })
    }

    pub fn projection_mut(&mut self, name: &str) -> Option<&mut LoraLinear> {
        Some(match name {
            "q_proj" => &mut self.q_proj,
            "k_proj" => &mut self.k_proj,
            "v_proj" => &mut self.v_proj,
            "o_proj" => &mut self.o_proj,
            "gate_proj" => &mut self.gate_proj,
            "up_proj" => &mut self.up_proj,
            "down_proj" => &mut self.down_proj,
            _ => return None,
        })
    }
}

/// A decoder-only language model.
#[derive(Debug)]
pub struct Model {
    cfg: Config,
    embed: TokenEmbedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: LoraLinear,
    inv_freq: Tensor,
    dtype: DType,
    device: Device,
    mode: Mode,
    dropout: DropoutRng,
}

fn module_of(family: &str, proj: &str) -> String {
    format!("{family}.{proj}")
}

fn block_of(proj: &str) -> &'static str {
    match proj {
        "gate_proj" | "up_proj" | "down_proj" => "mlp",
        _ => "self_attn",
    }
}

impl Model {
    /// Load every weight from `src` (HF names) and check its shape against `cfg`.
    pub fn load(src: &dyn WeightSource, cfg: &Config, opts: &LoadOptions) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        let embed = src.embedding("model.embed_tokens.weight", cfg.vocab_size, h, opts)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let lin = |proj: &str, out: usize, inp: usize, bias: bool| -> Result<LoraLinear> {
                let prefix = format!("{p}.{}", module_of(block_of(proj), proj));
                let w = src.linear(&format!("{prefix}.weight"), out, inp, opts)?;
                let b = if bias {
                    Some(src.tensor(&format!("{prefix}.bias"), &[out], opts)?)
                } else {
                    None
                };
                Ok(LoraLinear::new(w, b, inp, out))
            };
            let bias = cfg.attention_bias;
            layers.push(Layer {
                input_norm: src.tensor(&format!("{p}.input_layernorm.weight"), &[h], opts)?,
                post_attention_norm: src.tensor(
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                    opts,
                )?,
                q_proj: lin("q_proj", q_out, h, bias)?,
                k_proj: lin("k_proj", kv_out, h, bias)?,
                v_proj: lin("v_proj", kv_out, h, bias)?,
                o_proj: lin("o_proj", h, q_out, false)?,
                gate_proj: lin("gate_proj", cfg.intermediate_size, h, false)?,
                up_proj: lin("up_proj", cfg.intermediate_size, h, false)?,
                down_proj: lin("down_proj", h, cfg.intermediate_size, false)?,
            });
        }
        let norm = src.tensor("model.norm.weight", &[h], opts)?;
        // Some tied checkpoints still ship `lm_head.weight`; an untied one must.
        // The head stays dense in a quantised model, as bitsandbytes keeps `lm_head` (its default
        // skip list): 4-bit error in the last projection lands directly on the logits.
        let head_opts = LoadOptions {
            format: WeightFormat::Dense,
            ..opts.clone()
        };
        let head = if !cfg.tie_word_embeddings || src.contains("lm_head.weight") {
            src.linear("lm_head.weight", cfg.vocab_size, h, &head_opts)?
        } else {
            embed.as_head()?
        };
        let lm_head = LoraLinear::new(head, None, h, cfg.vocab_size);
        let inv_freq = Tensor::new(cfg.rope_inv_freq(), &opts.device)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            dtype: opts.dtype,
            device: opts.device.clone(),
            mode: Mode::Eval,
            dropout: DropoutRng::new(0),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// [`Mode::Train`]: LoRA dropout on and only ops with a backward pass; [`Mode::Eval`]: no dropout,
    /// fused inference kernels.
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// The dropout stream (its state can be saved and restored to replay a forward exactly, as
    /// layer-by-layer recomputation needs).
    pub fn dropout_rng(&self) -> &DropoutRng {
        &self.dropout
    }

    fn op_path(&self) -> OpPath {
        match self.mode {
            Mode::Eval => OpPath::Fused,
            Mode::Train => OpPath::Differentiable,
        }
    }

    /// A fresh, empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// A KV cache that preallocates `capacity` columns per layer on a GPU (see [`LayerCache`]).
    pub fn new_cache_with_capacity(&self, capacity: usize) -> KvCache {
        KvCache::with_capacity(self.layers.len(), capacity)
    }

    /// The attention context for a left-padded batch: `pads[r]` padding columns in row `r`,
    /// `offset` columns already cached, `seq_len` columns in this call.
    pub fn attn_ctx(&self, pads: &[usize], offset: usize, seq_len: usize) -> Result<AttnCtx> {
        AttnCtx::new(
            pads,
            offset,
            seq_len,
            &self.inv_freq,
            self.cfg.sliding_window,
            self.dtype,
            &self.device,
        )
    }

    /// Token ids `[b, t]` (u32) → hidden states `[b, t, hidden]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed.forward(ids, self.dtype)?)
    }

    /// Run decoder block `i` on `x: [b, t, hidden]`. With a cache, this call's keys/values are
    /// appended to it and attention covers all cached columns.
    pub fn layer_forward(
        &self,
        i: usize,
        x: &Tensor,
        ctx: &AttnCtx,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let layer = self.layers.get(i).ok_or_else(|| {
            EngineError::BadInput(format!(
                "layer {i} does not exist (the model has {})",
                self.layers.len()
            ))
        })?;
        let (path, mode, rng) = (self.op_path(), self.mode, &self.dropout);
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
        );
        let eps = self.cfg.rms_norm_eps;

        let h = ops::rms_norm(x, &layer.input_norm, eps, path)?;
        // Projections as [b, t, heads, d]: a view of their [b, t, heads * d] output.
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, hd));
        let q = heads(layer.q_proj.forward(&h, mode, rng)?, nh)?;
        let k = heads(layer.k_proj.forward(&h, mode, rng)?, nkv)?;
        let v = heads(layer.v_proj.forward(&h, mode, rng)?, nkv)?;
        let y = match &ctx.flash_pads {
            // On a GPU with nothing cached yet (training, a prompt's prefill) attention runs on
            // that layout: no transposed copies of q, k, v and the output.
            Some(pads) if cache.as_ref().is_none_or(|c| c.is_empty()) => {
                let q = ops::rope_thd(&q, &ctx.cos, &ctx.sin, path)?;
                let k = ops::rope_thd(&k, &ctx.cos, &ctx.sin, path)?;
                if let Some(c) = cache {
                    c.append(k.transpose(1, 2)?, v.transpose(1, 2)?)?;
                }
                crate::gpu::fused::attention_thd(&q, &k, &v, pads, ctx.offset, ctx.window)?
            }
            // Elsewhere on [b, heads, t, d], the cache's layout.
            _ => {
                let (q, k, v) = (q.transpose(1, 2)?, k.transpose(1, 2)?, v.transpose(1, 2)?);
                let q = ops::rope(&q, &ctx.cos, &ctx.sin, path)?;
                let k = ops::rope(&k, &ctx.cos, &ctx.sin, path)?;
                let (k, v) = match cache {
                    Some(c) => c.append(k, v.contiguous()?)?,
                    None => (k, v),
                };
                ops::attention_padded(
                    &q,
                    &k,
                    &v,
                    ctx.mask.as_ref(),
                    ctx.flash_pads.as_ref(),
                    ctx.offset,
                    ctx.window,
                    path,
                )?
                .transpose(1, 2)?
            }
        };
        let x = (x + layer
            .o_proj
            .forward(&y.reshape((b, t, nh * hd))?, mode, rng)?)?;
        self.mlp(layer, &x, eps, path)
    }

    /// The layer's second half: `x + down(swiglu(gate(n), up(n)))`, `n` the post-attention norm.
    fn mlp(&self, layer: &Layer, x: &Tensor, eps: f64, path: OpPath) -> Result<Tensor> {
        let (mode, rng) = (self.mode, &self.dropout);
        let h = ops::rms_norm(x, &layer.post_attention_norm, eps, path)?;
        let g = layer.gate_proj.forward(&h, mode, rng)?;
        let u = layer.up_proj.forward(&h, mode, rng)?;
        let m = layer.down_proj.forward(&ops::swiglu(&g, &u)?, mode, rng)?;
        Ok((x + m)?)
    }

    /// Final norm and output head: `[b, t, hidden]` → f32 logits `[b, t, vocab]`.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.head_logits(x)?.to_dtype(DType::F32)?)
    }

    /// [`Model::head`] in the model's dtype (the fused cross-entropy reads bf16 logits directly).
    pub fn head_logits(&self, x: &Tensor) -> Result<Tensor> {
        let h = ops::rms_norm(x, &self.norm, self.cfg.rms_norm_eps, self.op_path())?;
        Ok(self.lm_head.forward(&h, Mode::Eval, &self.dropout)?)
    }

    fn run_layers(
        &self,
        ids: &Tensor,
        ctx: &AttnCtx,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let mut x = self.embed(ids)?;
        match cache {
            Some(cache) => {
                if cache.layers.len() != self.layers.len() {
                    return Err(EngineError::BadInput(format!(
                        "KV cache has {} layers, the model {}",
                        cache.layers.len(),
                        self.layers.len()
                    )));
                }
                for (i, lc) in cache.layers.iter_mut().enumerate() {
                    x = self.layer_forward(i, &x, ctx, Some(lc))?;
                }
            }
            None => {
                for i in 0..self.layers.len() {
                    x = self.layer_forward(i, &x, ctx, None)?;
                }
            }
        }
        Ok(x)
    }

    /// Full-sequence logits `[b, t, vocab]` (f32), for training and scoring.
    pub fn forward(
        &self,
        ids: &Tensor,
        ctx: &AttnCtx,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let x = self.run_layers(ids, ctx, cache)?;
        self.head(&x)
    }

    /// Logits of the last column only, `[b, vocab]` (f32), for decoding.
    pub fn forward_last(
        &self,
        ids: &Tensor,
        ctx: &AttnCtx,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let x = self.run_layers(ids, ctx, cache)?;
        let t = x.dim(1)?;
        Ok(self.head(&x.narrow(1, t - 1, 1)?)?.squeeze(1)?)
    }

    /// Attach fresh LoRA adapters to `cfg.target_modules` in every layer (A kaiming-uniform, B zero),
    /// seeded; also reseeds the dropout stream. Unknown module names are an error.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        if cfg.r == 0 {
            return Err(EngineError::Lora("rank r must be at least 1".into()));
        }
        for m in &cfg.target_modules {
            if !PROJECTIONS.contains(&m.as_str()) {
                return Err(EngineError::Lora(format!(
                    "target module `{m}` is not one of {PROJECTIONS:?}"
                )));
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for layer in &mut self.layers {
            for proj in PROJECTIONS {
                if cfg.target_modules.iter().any(|m| m == proj) {
                    let lin = layer.projection_mut(proj).expect("known projection");
                    lin.add_lora(cfg.r, cfg.alpha, cfg.dropout, &mut rng, &self.device)?;
                }
            }
        }
        self.dropout = DropoutRng::new(seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
        Ok(())
    }

    /// Every LoRA tensor with its peft name
    /// (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`), layer by layer.
    pub fn lora_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for proj in PROJECTIONS {
                if let Some(l) = layer.projection(proj).and_then(|p| p.lora.as_ref()) {
                    let base = format!(
                        "base_model.model.model.layers.{i}.{}.{proj}",
                        block_of(proj)
                    );
                    out.push((format!("{base}.lora_A.weight"), l.a.clone()));
                    out.push((format!("{base}.lora_B.weight"), l.b.clone()));
                }
            }
        }
        out
    }

    /// Overwrite one LoRA tensor (by peft name) with `value` (same shape; cast to f32).
    pub fn set_lora(&mut self, name: &str, value: &Tensor) -> Result<()> {
        let (_, var) = self
            .lora_vars()
            .into_iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| EngineError::Lora(format!("no adapter tensor named `{name}`")))?;
        if var.dims() != value.dims() {
            return Err(EngineError::Lora(format!(
                "`{name}`: shape {:?}, expected {:?}",
                value.dims(),
                var.dims()
            )));
        }
        var.set(&value.to_dtype(DType::F32)?.to_device(&self.device)?)?;
        Ok(())
    }

    /// Fold every adapter into its base weight (for evaluation) and drop the adapters.
    pub fn merge_lora(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            for proj in PROJECTIONS {
                layer
                    .projection_mut(proj)
                    .expect("known projection")
                    .merge(self.dtype)?;
            }
        }
        Ok(())
    }

    /// The final-norm weight (hidden size), for callers that build their own head.
    pub fn final_norm(&self) -> &Tensor {
        &self.norm
    }
}
