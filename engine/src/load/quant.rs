//! 4-bit (or any candle `GgmlDType`) weights for zero-shot models: an HF folder's bf16/f16 weights are
//! quantised at load and the result is cached on disk as a GGUF file keyed by model, revision and
//! type, so the next load reads the quantised blocks directly.
//!
//! The cache file uses HF tensor names (not llama.cpp's) and stores the `config.json` text in its
//! metadata; tensors that stay dense (norms, biases, embeddings, rows whose length is not a multiple
//! of the block size) are stored as f32/f16/bf16.
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use super::{LoadedModel, ModelSource, SafetensorsSource, load_tokenizer};
use crate::error::{EngineError, Result};
use crate::model::{
    BaseWeight, LoadOptions, Model, TokenEmbedding, WeightFormat, WeightSource, check_shape,
};

const FORMAT_KEY: &str = "sizespec.quant_cache.version";
const CONFIG_KEY: &str = "sizespec.config_json";
// 2: the head is stored dense (bitsandbytes keeps `lm_head` unquantised).
const FORMAT_VERSION: u32 = 2;

/// Whether a quantised load was served from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Quantised weights were read from disk: the cache file, or a `.gguf` source (already
    /// quantised, loaded as is — it needs no cache).
    Hit,
    /// The weights were quantised now and the cache file written.
    Written,
}

/// The cache file for a model: `<dir>/<readable name>-<hash of name, revision, type, dtype>.gguf`.
pub fn cache_path(
    dir: &Path,
    model: &str,
    revision: Option<&str>,
    qtype: GgmlDType,
    dtype: DType,
) -> PathBuf {
    let mut h = Sha256::new();
    for part in [
        model,
        revision.unwrap_or("main"),
        &format!("{qtype:?}"),
        dtype.as_str(),
        &FORMAT_VERSION.to_string(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let digest = hex::encode(&h.finalize()[..8]);
    let readable: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{readable}-{qtype:?}-{digest}.gguf"))
}

/// Load `source` (an HF folder) with projections quantised to `qtype`, through the cache in `dir`.
/// `model`/`revision` name the model in the cache key. A `.gguf` source is loaded as is.
pub fn load_quantized_cached(
    source: &ModelSource,
    model: &str,
    revision: Option<&str>,
    qtype: GgmlDType,
    opts: &LoadOptions,
    dir: &Path,
) -> Result<(LoadedModel, CacheOutcome)> {
    let opts = LoadOptions {
        format: WeightFormat::Quantized(qtype),
        ..opts.clone()
    };
    let ModelSource::HfDir(_) = source else {
        return Ok((super::load(source, &opts)?, CacheOutcome::Hit));
    };
    let (tokenizer, template, cfg) = load_tokenizer(source)?;
    let path = cache_path(dir, model, revision, qtype, opts.dtype);
    if path.is_file() {
        let cached = CachedSource::open(&path)?;
        let model = Model::load(&cached, &cfg, &opts)?;
        return Ok((
            LoadedModel {
                model,
                tokenizer,
                template,
                source: source.clone(),
            },
            CacheOutcome::Hit,
        ));
    }
    let recorder = Recorder {
        inner: SafetensorsSource::open_dir(source.path())?,
        seen: Mutex::default(),
    };
    let model = Model::load(&recorder, &cfg, &opts)?;
    let config_json = std::fs::read_to_string(source.path().join("config.json"))
        .map_err(|e| EngineError::io(source.path().join("config.json"), e))?;
    write_cache(
        &path,
        &recorder
            .seen
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()),
        &config_json,
    )?;
    Ok((
        LoadedModel {
            model,
            tokenizer,
            template,
            source: source.clone(),
        },
        CacheOutcome::Written,
    ))
}

/// A source that remembers every tensor it handed out, in the form handed out.
struct Recorder<S> {
    inner: S,
    seen: Mutex<Vec<(String, Arc<QTensor>)>>,
}

impl<S> Recorder<S> {
    fn keep(&self, name: &str, q: Arc<QTensor>) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), q));
    }

    fn keep_dense(&self, name: &str, t: &Tensor) -> Result<()> {
        let stored = match t.dtype() {
            DType::BF16 => GgmlDType::BF16,
            DType::F16 => GgmlDType::F16,
            _ => GgmlDType::F32,
        };
        let q = QTensor::quantize(&t.to_device(&Device::Cpu)?, stored)?;
        self.keep(name, Arc::new(q));
        Ok(())
    }
}

impl<S: WeightSource> WeightSource for Recorder<S> {
    fn origin(&self) -> String {
        self.inner.origin()
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn tensor(&self, name: &str, shape: &[usize], opts: &LoadOptions) -> Result<Tensor> {
        let t = self.inner.tensor(name, shape, opts)?;
        self.keep_dense(name, &t)?;
        Ok(t)
    }

    fn linear(&self, name: &str, out: usize, inp: usize, opts: &LoadOptions) -> Result<BaseWeight> {
        let w = self.inner.linear(name, out, inp, opts)?;
        match &w {
            BaseWeight::Dense(t) => self.keep_dense(name, t)?,
            BaseWeight::Quant(q) => match q.as_ref() {
                QMatMul::QTensor(qt) => self.keep(name, qt.clone()),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => self.keep_dense(name, t)?,
            },
        }
        Ok(w)
    }

    fn embedding(
        &self,
        name: &str,
        vocab: usize,
        hidden: usize,
        opts: &LoadOptions,
    ) -> Result<TokenEmbedding> {
        let e = self.inner.embedding(name, vocab, hidden, opts)?;
        match &e {
            TokenEmbedding::Dense(t) => self.keep_dense(name, t)?,
            TokenEmbedding::Quant(q) => self.keep(name, q.clone()),
        }
        Ok(e)
    }
}

/// Write the cache atomically (temp file in the same folder, then rename).
fn write_cache(path: &Path, tensors: &[(String, Arc<QTensor>)], config_json: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let tmp = path.with_extension(format!("gguf.tmp{}", std::process::id()));
    let version = Value::U32(FORMAT_VERSION);
    let config = Value::String(config_json.to_string());
    let md: Vec<(&str, &Value)> = vec![(FORMAT_KEY, &version), (CONFIG_KEY, &config)];
    // A tied head is the embedding again: store each name once.
    let mut seen = std::collections::HashSet::new();
    let ts: Vec<(&str, &QTensor)> = tensors
        .iter()
        .filter(|(n, _)| seen.insert(n.clone()))
        .map(|(n, q)| (n.as_str(), q.as_ref()))
        .collect();
    let result = (|| -> Result<()> {
        let mut f =
            std::io::BufWriter::new(File::create(&tmp).map_err(|e| EngineError::io(&tmp, e))?);
        gguf_file::write(&mut f, &md, &ts)?;
        let f = f
            .into_inner()
            .map_err(|e| EngineError::io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| EngineError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a cache file written by [`write_cache`].
struct CachedSource {
    path: PathBuf,
    content: Content,
    file: Mutex<File>,
}

impl CachedSource {
    fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        let content = Content::read(&mut file).map_err(|e| EngineError::BadFile {
            path: path.display().to_string(),
            reason: format!("unreadable quantised-weights cache (delete it to rebuild): {e}"),
        })?;
        let version = content
            .metadata
            .get(FORMAT_KEY)
            .and_then(|v| v.to_u32().ok());
        if version != Some(FORMAT_VERSION) {
            return Err(EngineError::BadFile {
                path: path.display().to_string(),
                reason: format!(
                    "cache format {version:?}, expected {FORMAT_VERSION} (delete it to rebuild)"
                ),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(file),
        })
    }

    fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        self.content
            .tensor(&mut *f, name, device)
            .map_err(|e| EngineError::Weight {
                name: name.into(),
                reason: format!("{}: {e}", self.path.display()),
            })
    }
}

fn is_dense(q: GgmlDType) -> bool {
    matches!(q, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

impl WeightSource for CachedSource {
    fn origin(&self) -> String {
        self.path.display().to_string()
    }

    fn contains(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn tensor(&self, name: &str, shape: &[usize], opts: &LoadOptions) -> Result<Tensor> {
        let t = self.qtensor(name, &Device::Cpu)?.dequantize(&Device::Cpu)?;
        check_shape(&t, name, shape, &self.origin())?;
        Ok(t.to_dtype(opts.dtype)?.to_device(&opts.device)?)
    }

    fn linear(&self, name: &str, out: usize, inp: usize, opts: &LoadOptions) -> Result<BaseWeight> {
        let info = self.content.tensor_infos.get(name).map(|i| i.ggml_dtype);
        match info {
            Some(q) if !is_dense(q) => {
                let qt = self.qtensor(name, &opts.device)?;
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
                Ok(BaseWeight::Quant(Arc::new(QMatMul::from_qtensor(qt)?)))
            }
            _ => Ok(BaseWeight::Dense(self.tensor(name, &[out, inp], opts)?)),
        }
    }
}

/// The `config.json` text stored in a cache file (for inspection and tests).
pub fn cached_config_json(path: &Path) -> Result<String> {
    let src = CachedSource::open(path)?;
    let md: &HashMap<String, Value> = &src.content.metadata;
    md.get(CONFIG_KEY)
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| EngineError::BadFile {
            path: path.display().to_string(),
            reason: format!("metadata `{CONFIG_KEY}` is missing"),
        })
}
