//! The safetensors files `torch_ref.py` writes (`logits`, `lora-grad`): named tensors read on the
//! CPU, with errors that name the file and the tensor.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::{GpucheckError, Result};

/// A reference file's tensors.
#[derive(Debug)]
pub struct RefFile {
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
}

impl RefFile {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(GpucheckError::BadFile {
                path: path.into(),
                reason: "reference file not found".into(),
            });
        }
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            GpucheckError::BadFile {
                path: path.into(),
                reason: format!("not a safetensors file: {e}"),
            }
        })?;
        Ok(Self {
            path: path.into(),
            tensors,
        })
    }

    fn err(&self, name: &str, reason: impl Into<String>) -> GpucheckError {
        GpucheckError::Reference {
            path: self.path.clone(),
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// A tensor as f32 on the CPU.
    pub fn f32(&self, name: &str) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| self.err(name, "missing"))?;
        Ok(t.to_dtype(DType::F32)?)
    }

    /// A 2-D integer tensor (`ids`, `labels`) as rows of i64.
    pub fn int_rows(&self, name: &str) -> Result<Vec<Vec<i64>>> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| self.err(name, "missing"))?;
        if t.rank() != 2 || t.dtype().is_float() {
            return Err(self.err(
                name,
                format!(
                    "expected a 2-D integer tensor, found {:?} {:?}",
                    t.dtype(),
                    t.dims()
                ),
            ));
        }
        Ok(t.to_dtype(DType::I64)?.to_vec2::<i64>()?)
    }

    /// Token ids `[b, t]` as a u32 tensor on `device` (every id must be non-negative).
    pub fn ids(&self, name: &str, device: &Device) -> Result<Tensor> {
        let rows = self.int_rows(name)?;
        let (b, t) = (rows.len(), rows.first().map_or(0, Vec::len));
        let mut flat = Vec::with_capacity(b * t);
        for (r, row) in rows.iter().enumerate() {
            for (c, &x) in row.iter().enumerate() {
                flat.push(
                    u32::try_from(x)
                        .map_err(|_| self.err(name, format!("row {r} column {c}: id {x}")))?,
                );
            }
        }
        Ok(Tensor::from_vec(flat, (b, t), device)?)
    }
}
