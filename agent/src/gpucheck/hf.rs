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
