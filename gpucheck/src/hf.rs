//! Loading a model from a bare Hugging Face folder (`config.json` + `model.safetensors`, or shards
//! listed in `model.safetensors.index.json`) without a tokenizer: the random-weight folders that
//! `torch_ref.py weights` writes have none. Weights come through the product's loader
//! ([`engine::load::hf::SafetensorsSource`]: memory-mapped, moved to the device one tensor at a time).
use std::path::{Path, PathBuf};

use super::{GpucheckError, Result};
use engine::load::hf::{SafetensorsSource, read_config, weight_files};
use engine::model::{Config, LoadOptions, Model};

/// The model's `config.json` (with `generation_config.json`'s EOS ids, as the product reads it).
pub fn config(dir: &Path) -> Result<Config> {
    Ok(read_config(dir)?)
}

/// Load the model of an HF folder with `opts` (no tokenizer needed).
pub fn load_model(dir: &Path, opts: &LoadOptions) -> Result<Model> {
    let cfg = config(dir)?;
    let src = SafetensorsSource::open_dir(dir)?;
    Ok(Model::load(&src, &cfg, opts)?)
}

/// A folder that looks like `dir` plus a placeholder tokenizer: the product's quantised-cache loader
/// ([`engine::load::quant::load_quantized_cached`]) also loads the tokenizer, which the random-weight
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
        for optional in ["model.safetensors.index.json", "generation_config.json"] {
            let p = model_dir.join(optional);
            if p.exists() {
                links.push(p);
            }
        }
        links.extend(weight_files(&model_dir)?);
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
