//! Hugging Face model folders: `config.json`, `model.safetensors` (single or sharded with
//! `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use candle_core::safetensors::MmapedSafetensors;

use crate::error::{EngineError, Result};
use crate::model::{Config, LoadOptions, OneOrMany, WeightSource, check_shape};

/// Memory-mapped safetensors shards.
pub struct SafetensorsSource {
    files: Vec<PathBuf>,
    st: MmapedSafetensors,
}

impl std::fmt::Debug for SafetensorsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsSource")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl SafetensorsSource {
    /// Map the weight files of an HF folder: `model.safetensors`, or every shard named in
    /// `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let files = weight_files(dir)?;
        Self::open(files)
    }

    pub fn open(files: Vec<PathBuf>) -> Result<Self> {
        for f in &files {
            if !f.is_file() {
                return Err(EngineError::MissingFile {
                    path: f.clone(),
                    what: "safetensors weight shard".into(),
                });
            }
        }
        // SAFETY: the files are mapped read-only; like every safetensors loader we rely on them not
        // being truncated or rewritten while the model is loaded.
        #[allow(unsafe_code)]
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| EngineError::BadFile {
            path: files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            reason: format!("not valid safetensors: {e}"),
        })?;
        Ok(Self { files, st })
    }
}

/// The weight files of an HF folder.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(EngineError::MissingFile {
            path: single,
            what:
                "model weights: neither model.safetensors nor model.safetensors.index.json exists"
                    .into(),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::BadFile {
        path: index.display().to_string(),
        reason: format!("not valid JSON: {e}"),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| EngineError::BadFile {
            path: index.display().to_string(),
            reason: "no `weight_map` object".into(),
        })?;
    let shards: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
    if shards.is_empty() {
        return Err(EngineError::BadFile {
            path: index.display().to_string(),
            reason: "`weight_map` is empty".into(),
        });
    }
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

impl WeightSource for SafetensorsSource {
    fn origin(&self) -> String {
        match self.files.as_slice() {
            [one] => one.display().to_string(),
            many => format!(
                "{} shards in {}",
                many.len(),
                many[0]
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    fn tensor(&self, name: &str, shape: &[usize], opts: &LoadOptions) -> Result<Tensor> {
        let t = self
            .st
            .load(name, &opts.device)
            .map_err(|e| EngineError::Weight {
                name: name.into(),
                reason: format!("{}: {e}", self.origin()),
            })?;
        check_shape(&t, name, shape, &self.origin())?;
        Ok(t.to_dtype(opts.dtype)?)
    }
}

/// Read `config.json` of an HF folder, with `generation_config.json`'s EOS ids added when present.
pub fn read_config(dir: &Path) -> Result<Config> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(EngineError::MissingFile {
            path,
            what: "model config (config.json)".into(),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
    let mut cfg = Config::from_hf_json(&text, &path.display().to_string())?;
    for id in generation_eos_ids(dir)? {
        if !cfg.eos_token_ids.contains(&id) {
            cfg.eos_token_ids.push(id);
        }
    }
    Ok(cfg)
}

/// `eos_token_id` of `generation_config.json` (a number or a list); empty when the file is absent.
pub fn generation_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    #[derive(serde::Deserialize)]
    struct Gen {
        #[serde(default)]
        eos_token_id: Option<OneOrMany>,
    }
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
    let g: Gen = serde_json::from_str(&text).map_err(|e| EngineError::BadFile {
        path: path.display().to_string(),
        reason: format!("not valid: {e}"),
    })?;
    Ok(g.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default())
}
