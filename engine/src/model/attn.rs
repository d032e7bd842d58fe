//! Per-batch attention context (positions and masks for left-padded batches) and the KV cache.
use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};

/// What every layer needs to know about the batch being run.
///
/// Batches are **left-padded**: row `r` has `pads[r]` padding columns before its first real token.
/// Columns are counted in the padded layout, including those already in the KV cache (`offset`).
/// A real token's position is its column minus the row's padding, so each row starts at position 0.
/// Attention is causal, padded keys are masked, and a padding query attends only to itself (so its
/// row stays finite; its output is never used).
#[derive(Debug, Clone)]
pub struct AttnCtx {
    /// Left padding per row.
    pub pads: Vec<usize>,
    /// Columns already in the KV cache before this call.
    pub offset: usize,
    /// Columns in this call.
    pub seq_len: usize,
    /// `[b, t, head_dim / 2]` in the model's dtype.
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    /// Additive f32 mask `[b or 1, 1, t, offset + t]`; `None` when nothing is masked or when the
    /// flash kernel computes the mask itself (`flash_pads` is then set).
    pub(crate) mask: Option<Tensor>,
    /// `pads` on the device for the flash attention kernel (`u32 [b]`), when it runs.
    pub(crate) flash_pads: Option<Tensor>,
    /// Sliding window (Mistral), for kernels that compute the mask themselves.
    pub(crate) window: Option<usize>,
}

impl AttnCtx {
    /// Build the context. `inv_freq`: `[head_dim / 2]` f32 on `device`.
    pub fn new(
        pads: &[usize],
        offset: usize,
        seq_len: usize,
        inv_freq: &Tensor,
        sliding_window: Option<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if pads.is_empty() || seq_len == 0 {
            return Err(EngineError::BadInput(
                "attention context for an empty batch".into(),
            ));
        }
        let b = pads.len();
        let positions: Vec<f32> = pads
            .iter()
            .flat_map(|&p| (offset..offset + seq_len).map(move |c| c.saturating_sub(p) as f32))
            .collect();
        let positions = Tensor::from_vec(positions, (b, seq_len, 1), device)?;
        let half = inv_freq.dim(0)?;
        let freqs = positions.broadcast_mul(&inv_freq.reshape((1, 1, half))?)?;
        let cos = freqs.cos()?.to_dtype(dtype)?;
        let sin = freqs.sin()?.to_dtype(dtype)?;
        let total = offset + seq_len;
        let any_pad = pads.iter().any(|&p| p > 0);
        let window_bites = sliding_window.is_some_and(|w| total > w + 1);
        let flash = crate::gpu::fused::flash_kernel_for(device, dtype, 2 * half);
        let flash_pads = if flash {
            Some(crate::gpu::fused::pads_tensor(pads, device)?)
        } else {
            None
        };
        let mask = if flash || (!any_pad && seq_len == 1 && !window_bites) {
            None
        } else {
            Some(build_mask(pads, offset, seq_len, sliding_window, device)?)
        };
        Ok(Self {
            pads: pads.to_vec(),
            offset,
            seq_len,
            cos,
            sin,
            mask,
            flash_pads,
            window: sliding_window,
        })
    }

    /// Rows in the batch.
    pub fn batch(&self) -> usize {
        self.pads.len()
    }
}

/// The mask is built on the device from index comparisons, so a long prefill uploads only the pads.
fn build_mask(
    pads: &[usize],
    offset: usize,
    seq_len: usize,
    sliding_window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let b = pads.len();
    let total = offset + seq_len;
    let any_pad = pads.iter().any(|&p| p > 0);
    let kidx = Tensor::arange(0f32, total as f32, device)?.reshape((1, 1, 1, total))?;
    let qidx = Tensor::arange(offset as f32, total as f32, device)?.reshape((1, 1, seq_len, 1))?;
    let mut allowed = kidx.broadcast_le(&qidx)?;
    if let Some(w) = sliding_window {
        // HF/candle Mistral: key j is visible from query i when i - j <= window.
        let near = (&kidx + w as f64)?.broadcast_ge(&qidx)?;
        allowed = allowed.broadcast_mul(&near)?;
    }
    let rows = if any_pad {
        let pads: Vec<f32> = pads.iter().map(|&p| p as f32).collect();
        let pads = Tensor::from_vec(pads, (b, 1, 1, 1), device)?;
        let real_key = kidx.broadcast_ge(&pads)?;
        allowed = allowed.broadcast_mul(&real_key)?;
        let diag = kidx.broadcast_eq(&qidx)?;
        allowed = allowed.broadcast_maximum(&diag)?;
        b
    } else {
        1
    };
    let shape = (rows, 1, seq_len, total);
    let allowed = allowed.broadcast_as(shape)?.contiguous()?;
    let zero = Tensor::zeros(shape, DType::F32, device)?;
    let neg = Tensor::full(f32::NEG_INFINITY, shape, device)?;
    Ok(allowed.where_cond(&zero, &neg)?)
}

/// One layer's cached keys and values, `[b, kv_heads, columns, head_dim]`.
///
/// With a capacity (on a GPU) the columns live in a preallocated `[b, kv_heads, capacity, head_dim]`
/// buffer and each call writes only its own columns into it (`k`, `v` are views of the filled
/// part); without one, or past it, the cache grows by concatenation — which copies the whole cache
/// at every decode step (at batch 32 × 1,200 columns that copy was two thirds of a 3B decode step).
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
    buf: Option<(Tensor, Tensor)>,
    capacity: usize,
    prealloc: Prealloc,
}

/// Where a [`LayerCache`] with a capacity preallocates its buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Prealloc {
    /// On a GPU only: the CPU path grows by concatenation (its results stay byte-identical).
    #[default]
    GpuOnly,
    /// On any device: lets the CPU tests exercise the buffer's bookkeeping.
    AnyDevice,
}

impl LayerCache {
    /// Append this call's keys/values and return the full ones.
    pub(crate) fn append(&mut self, k: Tensor, v: Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let len = self.len();
        let t = k.dim(2)?;
        let on_device = k.device().is_cuda() || self.prealloc == Prealloc::AnyDevice;
        if self.capacity > 0 && on_device && len + t <= self.capacity {
            if self.buf.is_none() {
                let (b, kv, _, d) = k.dims4()?;
                let shape = (b, kv, self.capacity, d);
                let kb = Tensor::zeros(shape, k.dtype(), k.device())?;
                let vb = Tensor::zeros(shape, v.dtype(), v.device())?;
                if let (Some(pk), Some(pv)) = (&self.k, &self.v) {
                    kb.slice_set(&pk.contiguous()?, 2, 0)?;
                    vb.slice_set(&pv.contiguous()?, 2, 0)?;
                }
                self.buf = Some((kb, vb));
            }
            let (kb, vb) = self.buf.as_ref().expect("allocated above");
            let (k, v) = (k.contiguous()?, v.contiguous()?);
            kb.slice_set(&k, 2, len)?;
            vb.slice_set(&v, 2, len)?;
            let (ck, cv) = (kb.narrow(2, 0, len + t)?, vb.narrow(2, 0, len + t)?);
            self.k = Some(ck.clone());
            self.v = Some(cv.clone());
            // A first call gets its own contiguous keys back (what the prefill kernels read).
            return Ok(if len == 0 { (k, v) } else { (ck, cv) });
        }
        self.buf = None;
        let (k, v) = match (&self.k, &self.v) {
            (Some(pk), Some(pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            _ => (k, v),
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }

    /// Columns cached.
    pub fn len(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The KV cache of the whole model: one [`LayerCache`] per layer. Grows by concatenation.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// A cache whose layers preallocate `capacity` columns on a GPU (0: grow by concatenation).
    pub fn with_capacity(num_layers: usize, capacity: usize) -> Self {
        let layer = LayerCache {
            capacity,
            ..LayerCache::default()
        };
        Self {
            layers: vec![layer; num_layers],
        }
    }

    /// A preallocating cache on any device, the CPU included (tests of the buffer bookkeeping).
    #[doc(hidden)]
    pub fn preallocated_on_any_device(num_layers: usize, capacity: usize) -> Self {
        let mut cache = Self::with_capacity(num_layers, capacity);
        for l in &mut cache.layers {
            l.prealloc = Prealloc::AnyDevice;
        }
        cache
    }

    /// Whether layer 0 holds a preallocated buffer (tests).
    #[doc(hidden)]
    pub fn is_preallocated(&self) -> bool {
        self.layers.first().is_some_and(|l| l.buf.is_some())
    }

    /// Columns cached (the `offset` of the next [`AttnCtx`]).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep only the given batch rows (in this order): lets a generator drop finished sequences.
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        let Some(dev) = self
            .layers
            .iter()
            .find_map(|l| l.k.as_ref().map(|k| k.device().clone()))
        else {
            return Ok(());
        };
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, rows.len(), &dev)?;
        for l in &mut self.layers {
            let (Some(k), Some(v)) = (&l.k, &l.v) else {
                continue;
            };
            if let Some((kb, vb)) = &l.buf {
                // `k`/`v` are views of the preallocated buffer, which index-select cannot read on
                // a GPU: select the kept rows of the whole (contiguous) buffer instead, so the
                // cache keeps its capacity and later steps still write in place.
                let len = k.dim(2)?;
                let (kb, vb) = (kb.index_select(&idx, 0)?, vb.index_select(&idx, 0)?);
                l.k = Some(kb.narrow(2, 0, len)?);
                l.v = Some(vb.narrow(2, 0, len)?);
                l.buf = Some((kb, vb));
            } else {
                l.k = Some(k.contiguous()?.index_select(&idx, 0)?);
                l.v = Some(v.contiguous()?.index_select(&idx, 0)?);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::KvCache;

    /// `[b, kv, t, d]` keys whose every value names its row, column and channel.
    fn columns(rows: &[u32], t0: usize, t: usize) -> Tensor {
        let (kv, d) = (2usize, 3usize);
        let mut v = Vec::new();
        for &r in rows {
            for h in 0..kv {
                for c in t0..t0 + t {
                    for j in 0..d {
                        v.push((r * 10_000 + h as u32 * 1_000 + c as u32 * 10 + j as u32) as f32);
                    }
                }
            }
        }
        Tensor::from_vec(v, (rows.len(), kv, t, d), &Device::Cpu).unwrap()
    }

    fn grown(c: &KvCache) -> Vec<f32> {
        c.layers[0]
            .k
            .as_ref()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Rows dropped from a preallocated cache (which holds views of its buffer) keep their columns,
    /// the buffer keeps its capacity, and the next column is written in place for the kept rows:
    /// the same keys as a cache that grows by concatenation.
    #[test]
    fn dropping_rows_from_a_preallocated_cache_keeps_the_buffer_and_the_keys() {
        let mut pre = KvCache::preallocated_on_any_device(1, 8);
        let mut cat = KvCache::new(1);
        for c in [&mut pre, &mut cat] {
            let k = columns(&[0, 1, 2], 0, 4);
            c.layers[0].append(k.clone(), k).unwrap();
            let k = columns(&[0, 1, 2], 4, 1);
            c.layers[0].append(k.clone(), k).unwrap();
        }
        assert!(pre.is_preallocated() && !cat.is_preallocated());
        for c in [&mut pre, &mut cat] {
            c.select_rows(&[2, 0]).unwrap();
            assert_eq!(c.len(), 5);
        }
        assert!(pre.is_preallocated(), "the buffer survives a row drop");
        assert_eq!(grown(&pre), grown(&cat));
        for c in [&mut pre, &mut cat] {
            let k = columns(&[2, 0], 5, 1);
            c.layers[0].append(k.clone(), k).unwrap();
        }
        assert_eq!(pre.len(), 6);
        assert_eq!(grown(&pre), grown(&cat));
        let want: Vec<f32> = columns(&[2, 0], 0, 6)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            grown(&pre),
            want,
            "rows 2 and 0, all six columns, in that order"
        );
    }
}
