//! GGUF files (llama.cpp): the `Config` from metadata, weights by HF name, q/k rows un-permuted.
//!
//! llama.cpp's converter permutes the rows of `q_proj`/`k_proj` of `llama` models so its RoPE can
//! rotate adjacent pairs; our decoder uses HF's rotate-half layout, so the rows are put back in HF
//! order here (whole rows move, so quantised tensors are permuted without dequantising).
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};
use crate::model::{
    BaseWeight, Config, Family, LoadOptions, TokenEmbedding, WeightFormat, WeightSource,
    check_shape, row_fits,
};

/// An open GGUF file.
pub struct GgufSource {
    path: PathBuf,
    content: Content,
    file: Mutex<File>,
    /// `general.architecture` is `llama`: q/k rows were permuted by the converter.
    permuted_qk: bool,
    n_head: usize,
    n_kv_head: usize,
}

impl std::fmt::Debug for GgufSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::BadFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The GGUF name of an HF tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// For each HF row, the GGUF row it is stored in (inverse of llama.cpp's `permute`).
pub fn unpermute_rows(rows: usize, n_head: usize) -> Vec<usize> {
    let d = rows / n_head;
    let half = d / 2;
    let mut src = Vec::with_capacity(rows);
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                src.push(h * d + i * 2 + j);
            }
        }
    }
    src
}

impl GgufSource {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        let content = Content::read(&mut file)
            .map_err(|e| bad(path, format!("not a readable GGUF file: {e}")))?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| bad(path, "metadata `general.architecture` is missing"))?;
        let u = |k: &str| {
            content
                .metadata
                .get(&format!("{arch}.{k}"))
                .and_then(|v| v.to_u32().ok())
        };
        let n_head = u("attention.head_count")
            .ok_or_else(|| bad(path, format!("`{arch}.attention.head_count` is missing")))?
            as usize;
        let n_kv_head = u("attention.head_count_kv").map_or(n_head, |v| v as usize);
        Ok(Self {
            path: path.to_path_buf(),
            permuted_qk: arch == "llama",
            n_head,
            n_kv_head,
            content,
            file: Mutex::new(file),
        })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's chat template (`tokenizer.chat_template`), if the file has one.
    pub fn chat_template(&self) -> Option<String> {
        self.content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
    }

    /// Build the decoder config from the metadata.
    pub fn config(&self) -> Result<Config> {
        let md = &self.content.metadata;
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let family = Family::from_model_type(&arch).map_err(|e| bad(&self.path, e.to_string()))?;
        let key = |k: &str| format!("{arch}.{k}");
        let num = |k: &str| -> Result<usize> {
            md.get(&key(k))
                .and_then(|v| {
                    v.to_u32()
                        .ok()
                        .map(|x| x as usize)
                        .or_else(|| v.to_u64().ok().map(|x| x as usize))
                })
                .ok_or_else(|| bad(&self.path, format!("metadata `{}` is missing", key(k))))
        };
        let float = |k: &str| md.get(&key(k)).and_then(|v| v.to_f32().ok()).map(f64::from);
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(bad(
                &self.path,
                "Llama 3.1 RoPE scaling (`rope_freqs.weight`) is not supported from GGUF; use the HF folder",
            ));
        }
        let hidden = num("embedding_length")?;
        let vocab = match num("vocab_size") {
            Ok(v) => v,
            Err(_) => match md.get("tokenizer.ggml.tokens") {
                Some(Value::Array(a)) => a.len(),
                _ => {
                    return Err(bad(
                        &self.path,
                        "neither `vocab_size` nor `tokenizer.ggml.tokens` is present",
                    ));
                }
            },
        };
        let head_dim = num("rope.dimension_count").unwrap_or(hidden / self.n_head);
        let id = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        Ok(Config {
            family,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: num("feed_forward_length")?,
            num_hidden_layers: num("block_count")?,
            num_attention_heads: self.n_head,
            num_key_value_heads: self.n_kv_head,
            head_dim,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: None,
            max_position_embeddings: num("context_length").unwrap_or(4096),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            sliding_window: None,
            bos_token_id: id("tokenizer.ggml.bos_token_id"),
            eos_token_ids: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        })
    }

    fn heads_of(&self, hf: &str) -> Option<usize> {
        if !self.permuted_qk || !hf.ends_with(".weight") {
            return None;
        }
        if hf.contains(".self_attn.q_proj.") {
            Some(self.n_head)
        } else if hf.contains(".self_attn.k_proj.") {
            Some(self.n_kv_head)
        } else {
            None
        }
    }

    /// Read one tensor as stored, with q/k rows restored to HF order; shape `[out, in]`.
    fn qtensor(&self, hf: &str) -> Result<QTensor> {
        let g = gguf_name(hf).ok_or_else(|| EngineError::Weight {
            name: hf.into(),
            reason: "no GGUF equivalent".into(),
        })?;
        let qt = {
            let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
            self.content
                .tensor(&mut *f, &g, &Device::Cpu)
                .map_err(|e| EngineError::Weight {
                    name: hf.into(),
                    reason: format!("{} (`{g}`): {e}", self.path.display()),
                })?
        };
        match self.heads_of(hf) {
            Some(heads) => permute_qtensor_rows(&qt, &unpermute_rows(qt.shape().dims()[0], heads)),
            None => Ok(qt),
        }
    }
}

/// Reorder the rows of a 2-D quantised tensor (`out[r] = in[src[r]]`) by moving whole rows of blocks.
fn permute_qtensor_rows(qt: &QTensor, src: &[usize]) -> Result<QTensor> {
    let dims = qt.shape().dims().to_vec();
    let (rows, cols) = (dims[0], dims.get(1).copied().unwrap_or(1));
    let dtype = qt.dtype();
    if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
        || !cols.is_multiple_of(dtype.block_size())
    {
        let t = qt.dequantize(&Device::Cpu)?;
        let idx = Tensor::from_vec(
            src.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows,
            &Device::Cpu,
        )?;
        return Ok(QTensor::quantize(&t.index_select(&idx, 0)?, dtype)?);
    }
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = qt.data()?;
    let mut out = Vec::with_capacity(data.len());
    for &r in src {
        out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
    }
    Ok(QTensor::new(
        QStorage::from_data(Cow::Owned(out), &Device::Cpu, dtype)?,
        dims,
    )?)
}

/// Move a quantised tensor to `device`, converting it to `target` when it is of another type.
fn to_format(qt: QTensor, target: GgmlDType, device: &Device) -> Result<QTensor> {
    let cols = qt.shape().dims().last().copied().unwrap_or(0);
    let qt = if qt.dtype() == target && row_fits(target, cols) {
        qt
    } else if row_fits(target, cols) {
        QTensor::quantize(&qt.dequantize(&Device::Cpu)?, target)?
    } else if row_fits(qt.dtype(), cols) {
        qt
    } else {
        // Neither type can run a matmul over these rows: keep them exact in f32.
        QTensor::quantize(&qt.dequantize(&Device::Cpu)?, GgmlDType::F32)?
    };
    if device.is_cpu() {
        return Ok(qt);
    }
    let data = qt.data()?;
    Ok(QTensor::new(
        QStorage::from_data(data, device, qt.dtype())?,
        qt.shape().clone(),
    )?)
}

impl WeightSource for GgufSource {
    fn origin(&self) -> String {
        self.path.display().to_string()
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.content.tensor_infos.contains_key(&g))
    }

    fn tensor(&self, name: &str, shape: &[usize], opts: &LoadOptions) -> Result<Tensor> {
        let t = self.qtensor(name)?.dequantize(&Device::Cpu)?;
        check_shape(&t, name, shape, &self.origin())?;
        Ok(t.to_dtype(opts.dtype)?.to_device(&opts.device)?)
    }

    fn linear(&self, name: &str, out: usize, inp: usize, opts: &LoadOptions) -> Result<BaseWeight> {
        match opts.format {
            WeightFormat::Dense => Ok(BaseWeight::Dense(self.tensor(name, &[out, inp], opts)?)),
            WeightFormat::Quantized(target) => {
                let qt = self.qtensor(name)?;
                if qt.shape().dims() != [out, inp] {
                    return Err(EngineError::Weight {
                        name: name.into(),
                        reason: format!(
                            "{}: shape {:?}, expected {:?}",
                            self.origin(),
                            qt.shape().dims(),
                            [out, inp]
                        ),
                    });
                }
                let qt = to_format(qt, target, &opts.device)?;
                Ok(BaseWeight::Quant(Arc::new(QMatMul::from_qtensor(qt)?)))
            }
        }
    }

    fn embedding(
        &self,
        name: &str,
        vocab: usize,
        hidden: usize,
        opts: &LoadOptions,
    ) -> Result<TokenEmbedding> {
        match opts.format {
            WeightFormat::Dense => Ok(TokenEmbedding::Dense(self.tensor(
                name,
                &[vocab, hidden],
                opts,
            )?)),
            WeightFormat::Quantized(_) => {
                // The table stays in its stored type (SmolLM2: Q8_0): rows are looked up, and a tied
                // head reuses it as is.
                let qt = self.qtensor(name)?;
                if qt.shape().dims() != [vocab, hidden] {
                    return Err(EngineError::Weight {
                        name: name.into(),
                        reason: format!(
                            "{}: shape {:?}, expected {:?}",
                            self.origin(),
                            qt.shape().dims(),
                            [vocab, hidden]
                        ),
                    });
                }
                let dtype = qt.dtype();
                Ok(TokenEmbedding::Quant(Arc::new(to_format(
                    qt,
                    dtype,
                    &opts.device,
                )?)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_gguf() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.weight").unwrap(),
            "blk.3.attn_q.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.k_proj.bias").unwrap(),
            "blk.0.attn_k.bias"
        );
        assert_eq!(
            gguf_name("model.layers.12.mlp.down_proj.weight").unwrap(),
            "blk.12.ffn_down.weight"
        );
        assert_eq!(
            gguf_name("model.layers.1.post_attention_layernorm.weight").unwrap(),
            "blk.1.ffn_norm.weight"
        );
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name("model.layers.1.foo.weight").is_none());
    }

    /// llama.cpp's permute: `w.reshape(n_head, 2, d/2, in).swapaxes(1, 2)`; ours must invert it.
    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (n_head, d) = (3, 8);
        let rows = n_head * d;
        // llama.cpp: gguf[h*d + i*2 + j] = hf[h*d + j*(d/2) + i]
        let hf: Vec<usize> = (0..rows).collect();
        let mut gguf = vec![0; rows];
        for h in 0..n_head {
            for j in 0..2 {
                for i in 0..d / 2 {
                    gguf[h * d + i * 2 + j] = hf[h * d + j * (d / 2) + i];
                }
            }
        }
        let src = unpermute_rows(rows, n_head);
        let back: Vec<usize> = src.iter().map(|&r| gguf[r]).collect();
        assert_eq!(back, hf);
    }

    #[test]
    fn quantised_row_permutation_matches_dense() {
        let t = Tensor::arange(0f32, 8.0 * 64.0, &Device::Cpu)
            .unwrap()
            .reshape((8, 64))
            .unwrap();
        let qt = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let src = unpermute_rows(8, 2);
        let p = permute_qtensor_rows(&qt, &src)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let idx = Tensor::from_vec(
            src.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            8,
            &Device::Cpu,
        )
        .unwrap();
        let want = qt
            .dequantize(&Device::Cpu)
            .unwrap()
            .index_select(&idx, 0)
            .unwrap();
        let d: f32 = (p - want)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0);
    }
}
