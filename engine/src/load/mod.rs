//! Loading a model by name: a local HF folder, a `.gguf` file, or a hub id (through the local hub
//! cache, downloading when online) — model, tokenizer and chat template together.
pub mod export;
pub mod gguf;
pub mod hf;
pub mod hub;
pub mod quant;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};
use crate::model::{Config, LoadOptions, Model};
use crate::template::ChatTemplate;
use crate::tokenizer::{ModelTokenizer, TokenizerConfig};

pub use gguf::GgufSource;
pub use hf::SafetensorsSource;

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder with `config.json`, safetensors and `tokenizer.json` (a hub snapshot is one).
    HfDir(PathBuf),
    /// A single GGUF file (config and tokenizer in its metadata).
    Gguf(PathBuf),
}

impl ModelSource {
    pub fn path(&self) -> &Path {
        match self {
            Self::HfDir(p) | Self::Gguf(p) => p,
        }
    }
}

/// Resolve a model name: an existing folder or `.gguf` file is used as is; anything else is taken
/// as a hub id (`owner/name`, `revision` `None` = `main`) and resolved to its snapshot folder in the
/// local hub cache, downloading missing files unless `HF_HUB_OFFLINE` is set (see [`hub`]).
pub fn resolve(name: &str, revision: Option<&str>) -> Result<ModelSource> {
    resolve_with(name, revision, &hub::HubSettings::from_env())
}

/// [`resolve`] with explicit hub settings (tests, or a config that overrides the environment).
pub fn resolve_with(
    name: &str,
    revision: Option<&str>,
    hub: &hub::HubSettings,
) -> Result<ModelSource> {
    let path = Path::new(name);
    if path.is_dir() {
        return Ok(ModelSource::HfDir(path.to_path_buf()));
    }
    if path.is_file() {
        return if name.ends_with(".gguf") {
            Ok(ModelSource::Gguf(path.to_path_buf()))
        } else {
            Err(EngineError::BadFile {
                path: name.into(),
                reason: "a model file must be a `.gguf`; an HF model is a folder".into(),
            })
        };
    }
    if name.ends_with(".gguf")
        || name.starts_with('/')
        || name.starts_with('.')
        || name.starts_with('~')
    {
        return Err(EngineError::MissingFile {
            path: path.to_path_buf(),
            what: "model file or folder".into(),
        });
    }
    Ok(ModelSource::HfDir(hub::snapshot_dir(name, revision, hub)?))
}

/// Everything needed to run a model: weights, its own tokenizer and its own chat template.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: ModelTokenizer,
    pub template: ChatTemplate,
    pub source: ModelSource,
}

/// Tokenizer and template only (training data preparation, token counting) — no weights read.
pub fn load_tokenizer(source: &ModelSource) -> Result<(ModelTokenizer, ChatTemplate, Config)> {
    match source {
        ModelSource::HfDir(dir) => {
            let cfg = hf::read_config(dir)?;
            let tj = dir.join("tokenizer.json");
            if !tj.is_file() {
                return Err(EngineError::MissingFile {
                    path: tj,
                    what: "tokenizer (tokenizer.json)".into(),
                });
            }
            let tc = dir.join("tokenizer_config.json");
            let tc = tc.is_file().then_some(tc);
            let tok = ModelTokenizer::from_files(&tj, tc.as_deref(), &cfg.eos_token_ids)?;
            let jinja = match &tc {
                Some(p) => TokenizerConfig::read(p)?.chat_template,
                None => None,
            };
            let template = ChatTemplate::new(jinja.as_deref(), &tok)?;
            Ok((tok, template, cfg))
        }
        ModelSource::Gguf(path) => {
            let src = GgufSource::open(path)?;
            let tok = ModelTokenizer::from_gguf(src.metadata(), &path.display().to_string())?;
            let template = ChatTemplate::new(src.chat_template().as_deref(), &tok)?;
            Ok((tok, template, src.config()?))
        }
    }
}

/// Load model, tokenizer and template from `source`.
pub fn load(source: &ModelSource, opts: &LoadOptions) -> Result<LoadedModel> {
    let (tokenizer, template, cfg) = load_tokenizer(source)?;
    let model = match source {
        ModelSource::HfDir(dir) => Model::load(&SafetensorsSource::open_dir(dir)?, &cfg, opts)?,
        ModelSource::Gguf(path) => Model::load(&GgufSource::open(path)?, &cfg, opts)?,
    };
    Ok(LoadedModel {
        model,
        tokenizer,
        template,
        source: source.clone(),
    })
}
