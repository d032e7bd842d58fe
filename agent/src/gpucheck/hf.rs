//! Loading a model from a bare Hugging Face folder (`config.json` + `model.safetensors`, or shards
//! listed in `model.safetensors.index.json`) without a tokenizer: the random-weight folders that
//! `torch_ref.py weights` writes have none. Tensors are memory-mapped and moved to the device one at
//! a time, so peak memory is the model's, not the file's plus the model's.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use candle_core::safetensors::MmapedSafetensors;

use super::{GpucheckError, Result};
use crate::error::AgentError;
use crate::model::{Config, LoadOptions, Model, WeightSource, check_shape};

/// The safetensors files of an HF folder, memory-mapped.
pub struct SafetensorsDir {
    st: MmapedSafetensors,
    origin: String,
}

impl std::fmt::Debug for SafetensorsDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsDir")
            .field("origin", &self.origin)
            .finish()
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| GpucheckError::Io {
        path: path.into(),
        source,
    })
}

/// The safetensors files of `dir`: the shards of the index when there is one, else `model.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v: serde_json::Value =
            serde_json::from_str(&read(&index)?).map_err(|e| GpucheckError::BadFile {
                path: index.clone(),
                reason: format!("not JSON: {e}"),
            })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| GpucheckError::BadFile {
                path: index.clone(),
                reason: "no `weight_map` object".into(),
            })?;
        let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if !single.exists() {
        return Err(GpucheckError::BadFile {
            path: dir.into(),
            reason: "no model.safetensors nor model.safetensors.index.json".into(),
        });
    }
    Ok(vec![single])
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let files = safetensors_files(dir)?;
        // SAFETY: the files are only read; like every mmap-based loader we rely on nobody
        // truncating them while the model loads (they are our own freshly written test weights).
        #[allow(unsafe_code)]
        let st = unsafe { MmapedSafetensors::multi(&files)? };
        Ok(Self {
            st,
            origin: dir.display().to_string(),
        })
    }
}

impl WeightSource for SafetensorsDir {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn contains(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    fn tensor(
        &self,
        name: &str,
        shape: &[usize],
        opts: &LoadOptions,
    ) -> crate::error::Result<Tensor> {
        let view = self.st.get(name).map_err(|_| AgentError::Weight {
            name: name.into(),
            reason: format!("not found in {}", self.origin),
        })?;
        if view.shape() != shape {
            return Err(AgentError::Weight {
                name: name.into(),
                reason: format!(
                    "{}: shape {:?}, expected {shape:?}",
                    self.origin,
                    view.shape()
                ),
            });
        }
        let t = self.st.load(name, &opts.device)?;
        check_shape(&t, name, shape, &self.origin)?;
        Ok(t.to_dtype(opts.dtype)?)
    }
}

/// The model's `config.json`.
pub fn config(dir: &Path) -> Result<Config> {
    let path = dir.join("config.json");
    Ok(Config::from_hf_json(
        &read(&path)?,
        &path.display().to_string(),
    )?)
}

/// Load the model of an HF folder with `opts` (no tokenizer needed).
pub fn load_model(dir: &Path, opts: &LoadOptions) -> Result<Model> {
    let cfg = config(dir)?;
    let src = SafetensorsDir::open(dir)?;
    Ok(Model::load(&src, &cfg, opts)?)
}

/// A folder that looks like `dir` plus a placeholder tokenizer: the product's quantised-cache loader
/// ([`crate::load::quant::load_quantized_cached`]) also loads the tokenizer, which the random-weight
/// folders lack. Config and weights are symlinked, so nothing is copied; the folder is removed on drop.
#[derive(Debug)]
pub struct TokenizerShadow {
    pub dir: PathBuf,
}

impl TokenizerShadow {
    pub fn new(model_dir: &Path) -> Result<Self> {
        let model_dir = std::fs::canonicalize(model_dir).map_err(|source| GpucheckError::Io {
            path: model_dir.into(),
            source,
        })?;
        let name = model_dir
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned());
        let dir =
            std::env::temp_dir().join(format!("gpucheck-shadow-{}-{name}", std::process::id()));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| GpucheckError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let shadow = Self { dir };
        let mut links = vec![model_dir.join("config.json")];
        let index = model_dir.join("model.safetensors.index.json");
        if index.exists() {
            links.push(index);
        }
        links.extend(safetensors_files(&model_dir)?);
        for src in links {
            let dst = shadow.dir.join(src.file_name().unwrap_or_default());
            if !dst.exists() {
                std::os::unix::fs::symlink(&src, &dst).map_err(io(&dst))?;
            }
        }
        let tokenizer = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "<eos>": 1}, "unk_token": "<unk>"}
        });
        let files = [
            ("tokenizer.json", tokenizer.to_string()),
            (
                "tokenizer_config.json",
                serde_json::json!({"eos_token": "<eos>"}).to_string(),
            ),
        ];
        for (file, text) in files {
            let p = shadow.dir.join(file);
            std::fs::write(&p, text).map_err(io(&p))?;
        }
        Ok(shadow)
    }
}

impl Drop for TokenizerShadow {
    fn drop(&mut self) {
        // Only symlinks and two small files live here; the weights they point to stay.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
