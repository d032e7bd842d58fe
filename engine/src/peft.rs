//! LoRA adapters in Hugging Face PEFT's on-disk layout: `adapter_config.json` plus
//! `adapter_model.safetensors` with peft's tensor names, so an adapter trained here loads in
//! `peft.PeftModel.from_pretrained` and one trained with peft loads here.
//!
//! Tensor names follow peft exactly:
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` (`[r, in]`) and
//! `...lora_B.weight` (`[out, r]`); the MLP projections live under `mlp.` instead of `self_attn.`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File name of the adapter's configuration inside an adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// File name of the adapter's weights inside an adapter folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix peft puts in front of the base model's own parameter names.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// What went wrong reading or writing an adapter.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid adapter config: {source}")]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error(
        "{path}: tensor `{name}` is not a LoRA tensor peft would write (expected `{PEFT_PREFIX}model.layers.<i>.<self_attn|mlp>.<proj>.lora_<A|B>.weight`)"
    )]
    UnknownTensor { path: PathBuf, name: String },
    #[error("{path}: safetensors: {source}")]
    Safetensors {
        path: PathBuf,
        source: safetensors::SafeTensorError,
    },
    #[error("adapter tensors: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Which factor of a LoRA pair: `A` is `[r, in]` (applied first), `B` is `[out, r]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraFactor {
    A,
    B,
}

impl LoraFactor {
    fn as_str(self) -> &'static str {
        match self {
            LoraFactor::A => "A",
            LoraFactor::B => "B",
        }
    }
}

/// Where a projection lives in a decoder layer (`self_attn` or `mlp`), as HF names it.
pub fn projection_group(module: &str) -> Option<&'static str> {
    match module {
        "q_proj" | "k_proj" | "v_proj" | "o_proj" => Some("self_attn"),
        "gate_proj" | "up_proj" | "down_proj" => Some("mlp"),
        _ => None,
    }
}

/// The base model's own parameter path of a projection (`model.layers.3.self_attn.q_proj`).
pub fn module_path(layer: usize, module: &str) -> Option<String> {
    projection_group(module).map(|g| format!("model.layers.{layer}.{g}.{module}"))
}

/// peft's full tensor name for one LoRA factor of one projection.
pub fn tensor_name(layer: usize, module: &str, factor: LoraFactor) -> Option<String> {
    module_path(layer, module).map(|p| format!("{PEFT_PREFIX}{p}.lora_{}.weight", factor.as_str()))
}

/// A parsed peft tensor name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TensorKey {
    pub layer: usize,
    pub module: String,
    pub factor: LoraFactor,
}

/// Parses a peft tensor name (with or without the `base_model.model.` prefix) into its parts.
pub fn parse_tensor_name(name: &str) -> Option<TensorKey> {
    let rest = name.strip_prefix(PEFT_PREFIX).unwrap_or(name);
    let rest = rest.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (group, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let factor = match rest {
        "lora_A.weight" => LoraFactor::A,
        "lora_B.weight" => LoraFactor::B,
        _ => return None,
    };
    (projection_group(module) == Some(group)).then(|| TensorKey {
        layer,
        module: module.to_string(),
        factor,
    })
}

/// `adapter_config.json` with the keys peft reads (unknown keys written by newer peft are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub task_type: String,
    pub r: usize,
    /// peft declares it an int; written as one when integral so older peft versions accept it.
    #[serde(serialize_with = "ser_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub init_lora_weights: bool,
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
    #[serde(default)]
    pub layers_pattern: Option<String>,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
}

fn bias_none() -> String {
    "none".into()
}
fn yes() -> bool {
    true
}
fn ser_alpha<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

impl AdapterConfig {
    /// The config peft would write for a LoRA on a causal LM with these hyper-parameters.
    pub fn new(
        lora: &shared::config::LoraConfig,
        base_model: &str,
        revision: Option<&str>,
    ) -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            r: lora.r,
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            target_modules: lora.target_modules.clone(),
            base_model_name_or_path: Some(base_model.to_string()),
            revision: revision.map(str::to_string),
            bias: bias_none(),
            fan_in_fan_out: false,
            inference_mode: true,
            modules_to_save: None,
            init_lora_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            use_rslora: false,
            use_dora: false,
        }
    }

    /// The LoRA hyper-parameters this config describes.
    pub fn lora_config(&self) -> shared::config::LoraConfig {
        shared::config::LoraConfig {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: self.target_modules.clone(),
        }
    }

    /// The factor multiplying `B·A` (alpha / r; peft's rsLoRA variant is alpha / sqrt(r)).
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

/// An adapter in memory: its config and its tensors under peft's names (sorted, so every
/// serialisation and every hash is deterministic).
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub config: AdapterConfig,
    pub tensors: BTreeMap<String, Tensor>,
}

impl PeftAdapter {
    /// Builds an adapter from `(name, tensor)` pairs, accepting names with or without peft's
    /// `base_model.model.` prefix; every name must be a LoRA tensor name.
    pub fn from_named(
        config: AdapterConfig,
        named: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<Self, PeftError> {
        let mut tensors = BTreeMap::new();
        for (name, t) in named {
            let key = parse_tensor_name(&name).ok_or_else(|| PeftError::UnknownTensor {
                path: PathBuf::from("<memory>"),
                name: name.clone(),
            })?;
            let full = tensor_name(key.layer, &key.module, key.factor)
                .expect("parsed names have a known group");
            tensors.insert(full, t);
        }
        let adapter = Self { config, tensors };
        adapter.check_pairs(Path::new("<memory>"))?;
        Ok(adapter)
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (f32) into `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<(), PeftError> {
        let cfg_path = dir.join(CONFIG_FILE);
        let st_path = dir.join(WEIGHTS_FILE);
        let f32s = self.f32_tensors()?;
        let bytes = safetensors::serialize(f32s.iter().map(|(k, v)| (k.as_str(), v)), None)
            .map_err(|source| PeftError::Safetensors {
                path: st_path.clone(),
                source,
            })?;
        shared::fsutil::write_atomic(&st_path, &bytes).map_err(|source| PeftError::Io {
            path: st_path,
            source,
        })?;
        shared::fsutil::write_json_atomic(&cfg_path, &self.config).map_err(|source| {
            PeftError::Io {
                path: cfg_path,
                source,
            }
        })?;
        Ok(())
    }

    /// Reads an adapter folder written by [`PeftAdapter::save`] or by peft. Tensors land on `device`
    /// in the dtype they were stored in; every `lora_A` needs its `lora_B` with matching rank.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, PeftError> {
        let cfg_path = dir.join(CONFIG_FILE);
        let st_path = dir.join(WEIGHTS_FILE);
        let text = std::fs::read(&cfg_path).map_err(|source| PeftError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let config: AdapterConfig =
            serde_json::from_slice(&text).map_err(|source| PeftError::Config {
                path: cfg_path.clone(),
                source,
            })?;
        if config.peft_type != "LORA" {
            return Err(PeftError::Invalid {
                path: cfg_path,
                what: format!(
                    "peft_type is `{}`, only `LORA` is supported",
                    config.peft_type
                ),
            });
        }
        if config.use_dora {
            return Err(PeftError::Invalid {
                path: cfg_path,
                what: "DoRA adapters are not supported".into(),
            });
        }
        let bytes = std::fs::read(&st_path).map_err(|source| PeftError::Io {
            path: st_path.clone(),
            source,
        })?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|source| {
            PeftError::Safetensors {
                path: st_path.clone(),
                source,
            }
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let key = parse_tensor_name(&name).ok_or_else(|| PeftError::UnknownTensor {
                path: st_path.clone(),
                name: name.clone(),
            })?;
            let t = candle_core::safetensors::Load::load(&view, device)?;
            tensors.insert(
                tensor_name(key.layer, &key.module, key.factor).expect("known group"),
                t,
            );
        }
        let adapter = Self { config, tensors };
        adapter.check_pairs(&st_path)?;
        Ok(adapter)
    }

    /// Checks the adapter against the tensors a model expects (`name → [rows, cols]`): every
    /// expected tensor is present with that shape, and nothing else is there.
    pub fn check_against<'a>(
        &self,
        expected: impl IntoIterator<Item = (&'a str, &'a [usize])>,
        path: &Path,
    ) -> Result<(), PeftError> {
        let mut seen = 0usize;
        for (name, shape) in expected {
            let full = match parse_tensor_name(name) {
                Some(k) => tensor_name(k.layer, &k.module, k.factor).expect("known group"),
                None => {
                    return Err(PeftError::UnknownTensor {
                        path: path.to_path_buf(),
                        name: name.to_string(),
                    });
                }
            };
            let t = self
                .tensors
                .get(&full)
                .ok_or_else(|| PeftError::MissingTensor {
                    path: path.to_path_buf(),
                    name: full.clone(),
                })?;
            if t.dims() != shape {
                return Err(PeftError::Shape {
                    path: path.to_path_buf(),
                    name: full,
                    found: t.dims().to_vec(),
                    expected: shape.to_vec(),
                });
            }
            seen += 1;
        }
        if seen != self.tensors.len() {
            return Err(PeftError::Invalid {
                path: path.to_path_buf(),
                what: format!(
                    "adapter has {} tensors, the model expects {seen}",
                    self.tensors.len()
                ),
            });
        }
        Ok(())
    }

    /// SHA-256 over the LoRA hyper-parameters and every tensor's name, shape and f32 bytes, in
    /// name order: equal adapters hash equal whatever file they came from (a cache key).
    pub fn content_hash(&self) -> Result<String, PeftError> {
        let mut h = Sha256::new();
        h.update(b"sizespec-lora-v1\0");
        h.update(self.config.r.to_le_bytes());
        h.update(self.config.lora_alpha.to_le_bytes());
        h.update([u8::from(self.config.use_rslora)]);
        for (name, t) in self.f32_tensors()? {
            h.update(name.as_bytes());
            h.update([0]);
            for d in t.dims() {
                h.update((*d as u64).to_le_bytes());
            }
            for x in t.flatten_all()?.to_vec1::<f32>()? {
                h.update(x.to_le_bytes());
            }
        }
        Ok(hex::encode(h.finalize()))
    }

    fn f32_tensors(&self) -> Result<BTreeMap<String, Tensor>, PeftError> {
        let mut out = BTreeMap::new();
        for (k, t) in &self.tensors {
            out.insert(
                k.clone(),
                t.to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .contiguous()?,
            );
        }
        Ok(out)
    }

    /// Every A has a B, A is `[r, in]`, B is `[out, r]` with the config's rank.
    fn check_pairs(&self, path: &Path) -> Result<(), PeftError> {
        for (name, t) in &self.tensors {
            let key = parse_tensor_name(name).expect("names are validated on insert");
            let other = tensor_name(
                key.layer,
                &key.module,
                if key.factor == LoraFactor::A {
                    LoraFactor::B
                } else {
                    LoraFactor::A
                },
            )
            .expect("known group");
            if !self.tensors.contains_key(&other) {
                return Err(PeftError::MissingTensor {
                    path: path.to_path_buf(),
                    name: other,
                });
            }
            let dims = t.dims();
            let rank_dim = if key.factor == LoraFactor::A { 0 } else { 1 };
            if dims.len() != 2 || dims[rank_dim] != self.config.r {
                let mut expected = dims.to_vec();
                if expected.len() == 2 {
                    expected[rank_dim] = self.config.r;
                }
                return Err(PeftError::Shape {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    found: dims.to_vec(),
                    expected,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PeftAdapter {
        let dev = Device::Cpu;
        let lora = shared::config::LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.05,
            target_modules: vec!["q_proj".into(), "down_proj".into()],
        };
        let cfg = AdapterConfig::new(&lora, "HuggingFaceTB/SmolLM2-135M-Instruct", None);
        let mut named = Vec::new();
        for layer in 0..2 {
            let a = Tensor::arange(0f32, 4.0 * 16.0, &dev)
                .unwrap()
                .reshape((4, 16))
                .unwrap();
            let b =
                (Tensor::ones((8, 4), DType::F32, &dev).unwrap() * (layer as f64 + 0.5)).unwrap();
            named.push((
                format!("model.layers.{layer}.self_attn.q_proj.lora_A.weight"),
                a.clone(),
            ));
            named.push((
                format!("model.layers.{layer}.self_attn.q_proj.lora_B.weight"),
                b.clone(),
            ));
            named.push((tensor_name(layer, "down_proj", LoraFactor::A).unwrap(), a));
            named.push((tensor_name(layer, "down_proj", LoraFactor::B).unwrap(), b));
        }
        PeftAdapter::from_named(cfg, named).unwrap()
    }

    #[test]
    fn names_follow_peft_scheme() {
        assert_eq!(
            tensor_name(3, "q_proj", LoraFactor::A).unwrap(),
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(
            tensor_name(0, "down_proj", LoraFactor::B).unwrap(),
            "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"
        );
        assert!(tensor_name(0, "lm_head", LoraFactor::A).is_none());
        let k = parse_tensor_name("base_model.model.model.layers.12.mlp.gate_proj.lora_B.weight")
            .unwrap();
        assert_eq!(
            (k.layer, k.module.as_str(), k.factor),
            (12, "gate_proj", LoraFactor::B)
        );
        assert!(
            parse_tensor_name("base_model.model.model.layers.1.mlp.q_proj.lora_A.weight").is_none()
        );
    }

    #[test]
    fn write_then_read_back_identical() {
        let dir = tempfile::tempdir().unwrap();
        let a = sample();
        a.save(dir.path()).unwrap();
        let b = PeftAdapter::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(a.config, b.config);
        assert_eq!(
            a.tensors.keys().collect::<Vec<_>>(),
            b.tensors.keys().collect::<Vec<_>>()
        );
        for (k, t) in &a.tensors {
            let u = &b.tensors[k];
            assert_eq!(t.dims(), u.dims());
            let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = u.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(x, y, "{k}");
        }
        assert_eq!(a.content_hash().unwrap(), b.content_hash().unwrap());
        // peft's keys, with integral alpha written as an integer.
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(json["peft_type"], "LORA");
        assert_eq!(json["task_type"], "CAUSAL_LM");
        assert_eq!(json["bias"], "none");
        assert_eq!(json["lora_alpha"], serde_json::json!(8));
        assert_eq!(json["r"], serde_json::json!(4));
        assert_eq!(json["fan_in_fan_out"], false);
        assert_eq!(json["inference_mode"], true);
        assert_eq!(
            json["target_modules"],
            serde_json::json!(["q_proj", "down_proj"])
        );
        // The safetensors file holds exactly peft's names.
        let bytes = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        assert_eq!(
            names[0],
            "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"
        );
        assert_eq!(names.len(), 8);
    }

    #[test]
    fn hash_changes_with_content() {
        let a = sample();
        let mut b = sample();
        let k = tensor_name(1, "q_proj", LoraFactor::B).unwrap();
        let t = b.tensors[&k].clone();
        b.tensors.insert(k, (t + 1e-3).unwrap());
        assert_ne!(a.content_hash().unwrap(), b.content_hash().unwrap());
    }

    #[test]
    fn import_errors_name_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = sample();
        let k = tensor_name(1, "down_proj", LoraFactor::B).unwrap();
        a.tensors.remove(&k);
        // Bypass from_named's check to write a broken file, as a foreign tool might.
        let f32s = a.f32_tensors().unwrap();
        let bytes =
            safetensors::serialize(f32s.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
        std::fs::write(dir.path().join(WEIGHTS_FILE), bytes).unwrap();
        shared::fsutil::write_json_atomic(&dir.path().join(CONFIG_FILE), &a.config).unwrap();
        let err = PeftAdapter::load(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(WEIGHTS_FILE) && err.contains(&k), "{err}");

        let good = sample();
        let q_a = tensor_name(0, "q_proj", LoraFactor::A).unwrap();
        let mut expected: Vec<(String, Vec<usize>)> = good
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        for e in &mut expected {
            if e.0 == q_a {
                e.1 = vec![4, 32];
            }
        }
        let err = good
            .check_against(
                expected.iter().map(|(k, s)| (k.as_str(), s.as_slice())),
                Path::new("x/adapter_model.safetensors"),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&q_a) && err.contains("[4, 32]") && err.contains("x/adapter_model"),
            "{err}"
        );
    }
}
