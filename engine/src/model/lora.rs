//! `LoraLinear`: a frozen base projection (dense or quantised) plus an optional trainable LoRA pair.
//!
//! `y = x·Wᵀ (+ bias) + scale · dropout(x)·Aᵀ·Bᵀ` with `A: [r, in]`, `B: [out, r]` (peft's layout),
//! `scale = alpha / r`. The base weight is a plain `Tensor` (or a `QMatMul`), never a `Var`, so the
//! optimiser never sees it. The LoRA pair is kept in f32 whatever the model's dtype.
use std::sync::{Arc, Mutex};

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::frozen::{frozen_matmul, plain_matmul};

/// The frozen part of a projection.
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// `[out, in]` in the model's dtype.
    Dense(Tensor),
    /// Quantised weights (inference only: a quantised matmul has no backward pass).
    Quant(Arc<QMatMul>),
}

impl BaseWeight {
    /// `x·Wᵀ` for `x: [..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => frozen_matmul(x, w),
            Self::Quant(q) => {
                // candle's quantised matmul takes f32 activations.
                let dtype = x.dtype();
                q.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
            }
        }
    }

    /// The weight as a dense tensor of `dtype` (dequantised if needed).
    pub fn to_dense(&self, dtype: DType) -> Result<Tensor> {
        match self {
            Self::Dense(w) => w.to_dtype(dtype),
            Self::Quant(q) => match q.as_ref() {
                QMatMul::QTensor(t) => t.dequantize(&t.device())?.to_dtype(dtype),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(dtype),
            },
        }
    }
}

/// Whether the model runs for inference or training (dropout on, differentiable ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Eval,
    Train,
}

/// The seeded source of dropout masks, replayable from a saved state.
///
/// On the CPU masks are drawn on the host from a ChaCha stream, so a run is bit-reproducible and
/// [`DropoutRng::restore`] replays them exactly. On a GPU, drawing every mask on the host would cost
/// a transfer per projection, so each mask is instead a hash of one seed drawn from the same stream
/// and the element index ([`crate::gpu::dropout`]): no generator state lives on the device, and
/// restoring the stream replays the masks there too (layer-by-layer recomputation relies on this).
#[derive(Debug)]
pub struct DropoutRng {
    rng: Mutex<ChaCha8Rng>,
}

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChaCha8Rng> {
        self.rng.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream's full state, to replay the same masks later (layer-by-layer recomputation).
    pub fn snapshot(&self) -> ChaCha8Rng {
        self.lock().clone()
    }

    /// Rewind or advance the stream to a state from [`DropoutRng::snapshot`].
    pub fn restore(&self, state: &ChaCha8Rng) {
        *self.lock() = state.clone();
    }

    /// `(seed, word position)`: a compact, serialisable form of the state (checkpoints).
    pub fn position(&self) -> ([u8; 32], u128) {
        let rng = self.lock();
        (rng.get_seed(), rng.get_word_pos())
    }

    /// Restore a state saved with [`DropoutRng::position`].
    pub fn restore_position(&self, seed: [u8; 32], word_pos: u128) {
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_word_pos(word_pos);
        *self.lock() = rng;
    }

    /// The next dropout seed of the GPU's stateless masks (what [`Self::apply_as`] draws).
    pub fn next_seed(&self) -> u64 {
        self.lock().next_u64()
    }

    /// [`DropoutRng::apply`] with the result in `dtype` (f32 or bf16 on a GPU, fused with the cast).
    pub fn apply_as(&self, x: &Tensor, p: f64, dtype: DType) -> Result<Tensor> {
        if p <= 0.0 {
            return x.to_dtype(dtype);
        }
        if x.device().is_cpu() {
            return self.apply(x, p)?.to_dtype(dtype);
        }
        crate::gpu::dropout::dropout_as(x, p, self.next_seed(), dtype)
    }

    /// Inverted dropout in f32: zero each element with probability `p`, scale the rest by
    /// `1 / (1 - p)`. Returns `x` as f32 when `p` is 0.
    pub fn apply(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if p <= 0.0 {
            return x.to_dtype(DType::F32);
        }
        match x.device() {
            Device::Cpu => {
                let keep = 1.0 - p;
                let mut rng = self.lock();
                let n = x.elem_count();
                let v: Vec<f32> = (0..n)
                    .map(|_| {
                        if rng.random::<f64>() < keep {
                            (1.0 / keep) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(v, x.shape(), &Device::Cpu)?;
                x.to_dtype(DType::F32)?.mul(&mask)
            }
            _ => {
                let seed = self.lock().next_u64();
                crate::gpu::dropout::dropout(x, p, seed)
            }
        }
    }
}

/// A trainable low-rank update.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `[r, in]`, f32.
    pub a: Var,
    /// `[out, r]`, f32.
    pub b: Var,
    /// `alpha / r`.
    pub scale: f64,
    pub dropout: f64,
}

/// A projection: frozen base, optional bias, optional LoRA.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    pub base: BaseWeight,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl LoraLinear {
    pub fn new(base: BaseWeight, bias: Option<Tensor>, in_dim: usize, out_dim: usize) -> Self {
        Self {
            base,
            bias,
            lora: None,
            in_dim,
            out_dim,
        }
    }

    /// `x: [..., in]` → `[..., out]`. Dropout on the LoRA input only in [`Mode::Train`].
    pub fn forward(&self, x: &Tensor, mode: Mode, rng: &DropoutRng) -> Result<Tensor> {
        if let (Some(l), BaseWeight::Dense(w)) = (&self.lora, &self.base)
            && crate::gpu::fused::lora_supported(x, w)
        {
            return self.forward_fused(x, w, l, mode, rng);
        }
        let mut y = self.base.forward(x)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            if x.device().is_cpu() {
                let xf = match mode {
                    Mode::Train => rng.apply(x, l.dropout)?,
                    Mode::Eval => x.to_dtype(DType::F32)?,
                };
                let h = xf.broadcast_matmul(&l.a.as_tensor().t()?)?;
                let d = (h.broadcast_matmul(&l.b.as_tensor().t()?)? * l.scale)?;
                let dtype = y.dtype();
                y = (y + d.to_dtype(dtype)?)?;
            } else {
                // On a GPU the branch runs in the activations' dtype with the f32 adapter weights
                // cast per call (torch.autocast's mixed precision: bf16 products with f32
                // accumulation inside cuBLAS, f32 master weights and gradients). `scale` is folded
                // into the small `B`, and the `[tokens, out]` product is never materialised in f32:
                // the f32 branch cost four full passes over every projection's output.
                let dt = x.dtype();
                let xd = match mode {
                    Mode::Train => rng.apply_as(x, l.dropout, dt)?,
                    Mode::Eval => x.clone(),
                };
                let a = l.a.as_tensor().to_dtype(dt)?;
                let b = (l.b.as_tensor() * l.scale)?.to_dtype(dt)?;
                let h = plain_matmul(&xd, &a)?;
                y = (y + plain_matmul(&h, &b)?)?;
            }
        }
        Ok(y)
    }

    /// The GPU path of [`Self::forward`] as one op ([`crate::gpu::fused::lora_linear`]): the LoRA
    /// terms are accumulated into the frozen product by cuBLAS, forward and backward, with the
    /// same mixed precision and dropout masks as the composed path.
    fn forward_fused(
        &self,
        x: &Tensor,
        w: &Tensor,
        l: &LoraAdapter,
        mode: Mode,
        rng: &DropoutRng,
    ) -> Result<Tensor> {
        let dt = x.dtype();
        let p = match mode {
            Mode::Train => l.dropout,
            Mode::Eval => 0.0,
        };
        // One seed per call, drawn as `DropoutRng::apply_as` draws it (replays stay aligned).
        let drop = if p > 0.0 {
            crate::gpu::fused::LoraDropout::new(p, rng.next_seed())
        } else {
            None
        };
        let a = l.a.as_tensor().to_dtype(dt)?;
        let b = (l.b.as_tensor() * l.scale)?.to_dtype(dt)?;
        let dims = x.dims();
        let rows = x.elem_count() / self.in_dim.max(1);
        let y = crate::gpu::fused::lora_linear(&x.reshape((rows, self.in_dim))?, w, &a, &b, drop)?;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank >= 1") = self.out_dim;
        let y = y.reshape(shape)?;
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }

    /// Attach a fresh adapter: `A` kaiming-uniform (`a = sqrt(5)`, as peft/`nn.Linear` do: bound
    /// `1/sqrt(in)`), `B = 0`, so the model's output is unchanged until training moves `B`.
    pub fn add_lora(
        &mut self,
        r: usize,
        alpha: f64,
        dropout: f64,
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Result<()> {
        let bound = 1.0 / (self.in_dim as f64).sqrt();
        let a: Vec<f32> = (0..r * self.in_dim)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (r, self.in_dim), device)?)?;
        let b = Var::zeros((self.out_dim, r), DType::F32, device)?;
        self.lora = Some(LoraAdapter {
            a,
            b,
            scale: alpha / r as f64,
            dropout,
        });
        Ok(())
    }

    /// Fold `scale·B·A` into the base weight and drop the adapter (a quantised base is dequantised
    /// to `dtype` first: merging changes every weight).
    pub fn merge(&mut self, dtype: DType) -> Result<()> {
        let Some(l) = self.lora.take() else {
            return Ok(());
        };
        let w = self.base.to_dense(DType::F32)?;
        let delta = (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?;
        // Detached: a weight computed from the adapter's `Var`s would carry their autograd graph,
        // and so would every activation computed from it — including the KV cache, which then
        // keeps every earlier step's activations alive (a 3B eval after a finetune grew to 61 GiB
        // on the GPU, and the generate benchmark ran out of memory at every batch size).
        self.base = BaseWeight::Dense((w + delta)?.to_dtype(dtype)?.detach());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Restoring a snapshot replays the same masks (on the CPU: the same host draws).
    #[test]
    fn restore_replays_masks() {
        let r = DropoutRng::new(7);
        let x = Tensor::ones((4, 64), DType::F32, &Device::Cpu).unwrap();
        let mask = || -> Vec<f32> {
            r.apply(&x, 0.3)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let state = r.snapshot();
        let (a, b) = (mask(), mask());
        assert_ne!(a, b, "the stream moves on");
        r.restore(&state);
        assert_eq!(a, mask());
        let (seed, pos) = r.position();
        let c = mask();
        r.restore_position(seed, pos);
        assert_eq!(c, mask());
    }
}
