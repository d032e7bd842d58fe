//! Where the decoder's weights come from: a [`WeightSource`] hands out tensors by their HF name
//! (`model.layers.0.self_attn.q_proj.weight`), already in the form [`LoadOptions`] asks for.
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use super::lora::BaseWeight;
use crate::error::{EngineError, Result};

/// How the frozen projection weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Dense tensors in [`LoadOptions::dtype`] (required for training: gradients flow through them).
    #[default]
    Dense,
    /// Quantised projections (inference only; the head stays dense). Dense sources are quantised at load; a GGUF
    /// source keeps tensors already of this type and converts the others.
    Quantized(GgmlDType),
}

/// Where and how to load the model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    pub format: WeightFormat,
}

impl LoadOptions {
    /// Dense f32 on the CPU (tests, reference runs).
    pub fn cpu_f32() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            format: WeightFormat::Dense,
        }
    }
}

/// The token embedding table.
#[derive(Debug, Clone)]
pub enum TokenEmbedding {
    /// `[vocab, hidden]` in the model's dtype.
    Dense(Tensor),
    /// Quantised rows, looked up without dequantising the whole table.
    Quant(Arc<QTensor>),
}

impl TokenEmbedding {
    /// `ids: [b, t]` (u32) → `[b, t, hidden]` in `dtype`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(w) => {
                let (b, t) = ids.dims2()?;
                let h = w.dim(1)?;
                w.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, h))
            }
            Self::Quant(q) => {
                let (b, t) = ids.dims2()?;
                let h = q.shape().dims()[1];
                q.embedding(&ids.flatten_all()?)?
                    .to_dtype(dtype)?
                    .reshape((b, t, h))
            }
        }
    }

    /// The same weights as a tied output head.
    pub fn as_head(&self) -> Result<BaseWeight> {
        Ok(match self {
            Self::Dense(w) => BaseWeight::Dense(w.clone()),
            Self::Quant(q) => BaseWeight::Quant(Arc::new(QMatMul::from_arc(q.clone())?)),
        })
    }
}

/// A provider of named weights. Names are Hugging Face's; shapes are checked by the caller's request.
pub trait WeightSource {
    /// Where the weights come from, for error messages ("model.safetensors", "x.gguf").
    fn origin(&self) -> String;
    /// Whether a tensor of that name exists.
    fn contains(&self, name: &str) -> bool;
    /// A dense tensor of the expected shape in `opts.dtype` on `opts.device`.
    fn tensor(&self, name: &str, shape: &[usize], opts: &LoadOptions) -> Result<Tensor>;

    /// A projection weight `[out, in]` in the form `opts.format` asks for.
    fn linear(&self, name: &str, out: usize, inp: usize, opts: &LoadOptions) -> Result<BaseWeight> {
        let w = self.tensor(name, &[out, inp], opts)?;
        quantize_if_asked(w, name, opts)
    }

    /// The embedding table `[vocab, hidden]`.
    fn embedding(
        &self,
        name: &str,
        vocab: usize,
        hidden: usize,
        opts: &LoadOptions,
    ) -> Result<TokenEmbedding> {
        Ok(TokenEmbedding::Dense(self.tensor(
            name,
            &[vocab, hidden],
            opts,
        )?))
    }
}

/// Quantise a dense weight when `opts.format` says so and its row length fits the block size
/// (K-quants need multiples of 256); otherwise, or for unsupported types, keep it dense.
pub fn quantize_if_asked(w: Tensor, name: &str, opts: &LoadOptions) -> Result<BaseWeight> {
    let WeightFormat::Quantized(qt) = opts.format else {
        return Ok(BaseWeight::Dense(w));
    };
    let inp = w.dim(1)?;
    if !row_fits(qt, inp) {
        tracing::debug!(
            name,
            inp,
            ?qt,
            "row length not a multiple of the block size; kept dense"
        );
        return Ok(BaseWeight::Dense(w));
    }
    // Quantise on the host (candle quantises only CPU tensors), then place the blocks on the device.
    let q = quantize_rows_parallel(&w.to_device(&Device::Cpu)?, qt, &opts.device)?;
    Ok(BaseWeight::Quant(Arc::new(QMatMul::from_qtensor(q)?)))
}

/// `QTensor::quantize_onto` over all cores: candle quantises a tensor on one thread (an 8B model
/// took 316 s to quantise cold on an H200 host). Blocks never cross a row, so slices of whole rows
/// quantise independently and their bytes concatenate to the blocks of the whole tensor.
pub fn quantize_rows_parallel(w: &Tensor, qt: GgmlDType, device: &Device) -> Result<QTensor> {
    use rayon::prelude::*;
    let (rows, cols) = w.dims2()?;
    let pieces = rayon::current_num_threads().min(rows);
    if pieces <= 1 {
        return Ok(QTensor::quantize_onto(
            &w.to_dtype(DType::F32)?,
            qt,
            device,
        )?);
    }
    let chunk = rows.div_ceil(pieces);
    let starts: Vec<usize> = (0..rows).step_by(chunk).collect();
    let parts = starts
        .into_par_iter()
        .map(|start| -> candle_core::Result<Vec<u8>> {
            let len = chunk.min(rows - start);
            // A fresh buffer: candle's quantiser reads the storage from its start, ignoring a
            // view's offset, so a `narrow` of the whole tensor would quantise the wrong rows.
            let values = w
                .narrow(0, start, len)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let slice = Tensor::from_vec(values, (len, cols), &Device::Cpu)?;
            let q = QTensor::quantize(&slice, qt)?;
            Ok(q.data()?.into_owned())
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
        qt,
        &parts.concat(),
        vec![rows, cols],
        device,
    )?)
}

/// Whether candle can run a `qtype` matmul over rows of `cols` elements: whole blocks, and for
/// Q4_1/Q5_0/Q5_1 an even number of them (candle's CPU dot products take blocks in pairs).
pub fn row_fits(qtype: GgmlDType, cols: usize) -> bool {
    let bs = qtype.block_size();
    if !cols.is_multiple_of(bs) {
        return false;
    }
    match qtype {
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => (cols / bs).is_multiple_of(2),
        _ => true,
    }
}

/// Check a tensor's shape against the expected one, naming the tensor and the origin on mismatch.
pub fn check_shape(t: &Tensor, name: &str, shape: &[usize], origin: &str) -> Result<()> {
    if t.dims() != shape {
        return Err(EngineError::Weight {
            name: name.into(),
            reason: format!("{origin}: shape {:?}, expected {shape:?}", t.dims()),
        });
    }
    Ok(())
}

/// An in-memory map of named tensors (tests, and weights assembled by other loaders).
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    pub tensors: HashMap<String, Tensor>,
    pub origin: String,
}

impl TensorMap {
    pub fn new(tensors: HashMap<String, Tensor>, origin: impl Into<String>) -> Self {
        Self {
            tensors,
            origin: origin.into(),
        }
    }
}

impl WeightSource for TensorMap {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn tensor(&self, name: &str, shape: &[usize], opts: &LoadOptions) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| EngineError::Weight {
            name: name.into(),
            reason: format!("not found in {}", self.origin),
        })?;
        check_shape(t, name, shape, &self.origin)?;
        Ok(t.to_dtype(opts.dtype)?.to_device(&opts.device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_quantisation_is_byte_identical_to_candles() {
        let (rows, cols) = (64, 512);
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2)
            .collect();
        let w = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
        // Five threads: 64 rows split 13+13+13+13+12, so the pieces are uneven.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(5)
            .build()
            .unwrap();
        for qt in [GgmlDType::Q4K, GgmlDType::Q4_0, GgmlDType::Q8_0] {
            let ours = pool
                .install(|| quantize_rows_parallel(&w, qt, &Device::Cpu))
                .unwrap();
            let theirs = QTensor::quantize(&w, qt).unwrap();
            assert_eq!(ours.shape().dims(), &[rows, cols]);
            assert_eq!(ours.dtype(), qt);
            assert!(
                ours.data().unwrap() == theirs.data().unwrap(),
                "{qt:?}: the blocks differ"
            );
        }
    }
}
