//! The model's own tokenizer: from `tokenizer.json` (the `tokenizers` crate) or built from GGUF
//! metadata (byte-level BPE), wrapped with the ids generation stops on.
//!
//! Text rendered by a chat template already holds its BOS/control tokens: encode it with
//! [`SpecialTokens::Omit`] so nothing is added twice.
use std::path::Path;

use serde_json::{Value, json};

use crate::error::{EngineError, Result};

/// Whether encoding adds the tokenizer's own special tokens (BOS) around the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialTokens {
    /// Text already rendered by a chat template (which writes BOS itself): add nothing.
    Omit,
    /// Add what the tokenizer's post-processor (or GGUF `add_bos`) adds.
    Add,
}

/// End-of-turn tokens of the chat formats we know; a model stops on any of them it has.
pub const END_OF_TURN_TOKENS: [&str; 4] = ["<|eot_id|>", "<|im_end|>", "<|eom_id|>", "<|end|>"];

/// A tokenizer plus the model's BOS/EOS and stop ids.
#[derive(Debug, Clone)]
pub struct ModelTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
    stop_ids: Vec<u32>,
    /// GGUF's `add_bos_token`: prepend BOS when encoding with [`SpecialTokens::Add`].
    add_bos: bool,
}

impl ModelTokenizer {
    /// Wrap a `tokenizers` tokenizer. `eos_ids` are the model's end ids (config / generation config);
    /// every known end-of-turn token present in the vocabulary is added to the stop ids.
    pub fn new(
        inner: tokenizers::Tokenizer,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
        eos_ids: &[u32],
        add_bos: bool,
    ) -> Self {
        let lookup =
            |t: Option<&str>| t.and_then(|t| inner.token_to_id(t).map(|id| (t.to_string(), id)));
        let bos = lookup(bos_token);
        let mut eos = lookup(eos_token);
        if eos.is_none()
            && let Some(&id) = eos_ids.first()
        {
            eos = inner.id_to_token(id).map(|t| (t, id));
        }
        let mut stop_ids: Vec<u32> = eos_ids.to_vec();
        stop_ids.extend(eos.as_ref().map(|(_, id)| *id));
        stop_ids.extend(
            END_OF_TURN_TOKENS
                .iter()
                .filter_map(|t| inner.token_to_id(t)),
        );
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Self {
            inner,
            bos,
            eos,
            stop_ids,
            add_bos,
        }
    }

    /// Load `tokenizer.json`, with BOS/EOS from `tokenizer_config.json` when given.
    pub fn from_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        eos_ids: &[u32],
    ) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| EngineError::BadFile {
                path: tokenizer_json.display().to_string(),
                reason: format!("not a valid tokenizer.json: {e}"),
            })?;
        let (bos, eos) = match tokenizer_config {
            Some(p) => {
                let cfg = TokenizerConfig::read(p)?;
                (cfg.bos_token, cfg.eos_token)
            }
            None => (None, None),
        };
        Ok(Self::new(
            inner,
            bos.as_deref(),
            eos.as_deref(),
            eos_ids,
            false,
        ))
    }

    /// Build a byte-level BPE tokenizer from GGUF metadata (`tokenizer.ggml.*`). Control tokens
    /// (token type 3) become special tokens, so `<|im_start|>` stays one token.
    pub fn from_gguf(
        md: &std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
        origin: &str,
    ) -> Result<Self> {
        use candle_core::quantized::gguf_file::Value as V;
        let bad = |reason: String| EngineError::BadFile {
            path: origin.into(),
            reason,
        };
        let get = |k: &str| {
            md.get(k)
                .ok_or_else(|| bad(format!("metadata `{k}` is missing")))
        };
        let model = get("tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| bad(e.to_string()))?
            .clone();
        if model != "gpt2" {
            return Err(bad(format!(
                "tokenizer.ggml.model `{model}` is not supported (byte-level BPE `gpt2` only)"
            )));
        }
        let strings = |k: &str| -> Result<Vec<String>> {
            match get(k)? {
                V::Array(a) => a
                    .iter()
                    .map(|v| {
                        v.to_string()
                            .cloned()
                            .map_err(|e| bad(format!("`{k}`: {e}")))
                    })
                    .collect(),
                _ => Err(bad(format!("`{k}` is not an array"))),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            Some(V::Array(a)) => a
                .iter()
                .map(|v| v.to_i32().map(i64::from).unwrap_or(1))
                .collect(),
            _ => vec![1; tokens.len()],
        };
        let id = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);

        let vocab: serde_json::Map<String, Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        // Control (3) and user-defined (4) tokens are matched before the BPE model sees the text.
        let added: Vec<Value> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(types.get(*i), Some(3 | 4)))
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": types[i] == 3})
            })
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer_for(&pre),
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges}
        });
        let inner: tokenizers::Tokenizer = spec
            .to_string()
            .parse()
            .map_err(|e| bad(format!("cannot build a tokenizer from its metadata: {e}")))?;
        let name = |i: Option<u32>| i.and_then(|i| tokens.get(i as usize).cloned());
        let bos = name(id("tokenizer.ggml.bos_token_id"));
        let eos_id = id("tokenizer.ggml.eos_token_id");
        let eos = name(eos_id);
        Ok(Self::new(
            inner,
            bos.as_deref(),
            eos.as_deref(),
            &eos_id.into_iter().collect::<Vec<_>>(),
            add_bos,
        ))
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str, special: SpecialTokens) -> Result<Vec<u32>> {
        let add = special == SpecialTokens::Add;
        let enc = self
            .inner
            .encode(text, add)
            .map_err(|e| EngineError::Tokenizer(format!("encoding failed: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if add
            && self.add_bos
            && let Some((_, bos)) = &self.bos
            && ids.first() != Some(bos)
        {
            ids.insert(0, *bos);
        }
        Ok(ids)
    }

    /// Text of `ids`; special tokens are dropped when `skip_special` is [`SpecialTokens::Omit`].
    pub fn decode(&self, ids: &[u32], special: SpecialTokens) -> Result<String> {
        self.inner
            .decode(ids, special == SpecialTokens::Omit)
            .map_err(|e| EngineError::Tokenizer(format!("decoding failed: {e}")))
    }

    /// The tokenizer as `tokenizer.json` text (what `tokenizers` reads back).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| EngineError::BadFile {
                path: "tokenizer.json".into(),
                reason: format!("cannot serialise the tokenizer: {e}"),
            })
    }

    /// The ids generation stops on (EOS and end-of-turn tokens).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|(t, _)| t.as_str())
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|(_, i)| *i)
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|(t, _)| t.as_str())
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|(_, i)| *i)
    }

    /// Id of a token string, if it is one token of the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// A padding id: never attended to or learned from (masks decide), so any valid id works; EOS
    /// when there is one.
    pub fn pad_id(&self) -> u32 {
        self.eos_id().unwrap_or(0)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` value: SmolLM and GPT-2 split with the GPT-2
/// byte-level regex (SmolLM also splits digits one by one); Llama 3 and Qwen2 use their own regex.
fn pre_tokenizer_for(pre: &str) -> Value {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    match pre {
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        _ => byte_level(true),
    }
}

/// The fields of `tokenizer_config.json` we read.
#[derive(Debug, Clone, Default)]
pub struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// The default chat template (a string, or the entry named `default` of a list).
    pub chat_template: Option<String>,
}

impl TokenizerConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// `bos_token` / `eos_token` may be strings or `{"content": ...}` objects; `chat_template` a string
    /// or a list of `{name, template}`.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| EngineError::BadFile {
            path: origin.into(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let token = |k: &str| match v.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        let chat_template = match v.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|e| e.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        Ok(Self {
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            chat_template,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Value as V;
    use std::collections::HashMap;

    /// A small GGUF-style metadata table: bytes as tokens, a few merges, ChatML control tokens.
    fn gguf_md() -> HashMap<String, V> {
        let mut tokens: Vec<String> = vec![
            "<|endoftext|>".into(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
        ];
        let mut types = vec![3i32, 3, 3];
        // GPT-2 byte-to-unicode for printable ASCII is the identity; space is `Ġ`.
        for c in (b'!'..=b'~').map(char::from) {
            tokens.push(c.to_string());
            types.push(1);
        }
        tokens.push("Ġ".into());
        types.push(1);
        let merges = [
            "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
        ];
        for m in merges {
            tokens.push(m.replace(' ', ""));
            types.push(1);
        }
        let arr = |v: Vec<V>| V::Array(v);
        HashMap::from([
            ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), V::String("smollm".into())),
            (
                "tokenizer.ggml.tokens".into(),
                arr(tokens.into_iter().map(V::String).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                arr(types.into_iter().map(V::I32).collect()),
            ),
            (
                "tokenizer.ggml.merges".into(),
                arr(merges.iter().map(|m| V::String(m.to_string())).collect()),
            ),
            ("tokenizer.ggml.bos_token_id".into(), V::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), V::U32(2)),
            ("tokenizer.ggml.add_bos_token".into(), V::Bool(false)),
        ])
    }

    #[test]
    fn gguf_tokenizer_merges_keeps_control_tokens_whole_and_round_trips() {
        let t = ModelTokenizer::from_gguf(&gguf_md(), "test.gguf").unwrap();
        let ids = t
            .encode("<|im_start|>hello world<|im_end|>", SpecialTokens::Omit)
            .unwrap();
        let hello = t.token_id("hello").unwrap();
        let world = t.token_id("Ġworld").unwrap();
        assert_eq!(ids, vec![1, hello, world, 2]);
        assert_eq!(
            t.decode(&ids, SpecialTokens::Add).unwrap(),
            "<|im_start|>hello world<|im_end|>"
        );
        assert_eq!(t.decode(&ids, SpecialTokens::Omit).unwrap(), "hello world");
        // Digits are split one by one (smollm pre-tokenizer).
        assert_eq!(t.encode("12", SpecialTokens::Omit).unwrap().len(), 2);
        assert_eq!((t.bos_id(), t.eos_id()), (Some(1), Some(2)));
        assert!(t.is_stop(2));
        assert_eq!(t.stop_ids(), &[2]);
    }

    #[test]
    fn gguf_tokenizer_rejects_other_models_naming_the_file() {
        let mut md = gguf_md();
        md.insert("tokenizer.ggml.model".into(), V::String("llama".into()));
        let e = ModelTokenizer::from_gguf(&md, "x.gguf")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.gguf") && e.contains("llama"), "{e}");
        md.remove("tokenizer.ggml.model");
        let e = ModelTokenizer::from_gguf(&md, "x.gguf")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.ggml.model"), "{e}");
    }

    #[test]
    fn tokenizer_config_forms() {
        let c = TokenizerConfig::parse(
            r#"{"bos_token":{"content":"<s>"},"eos_token":"</s>","chat_template":[{"name":"tool_use","template":"T"},{"name":"default","template":"D"}]}"#,
            "tc.json",
        )
        .unwrap();
        assert_eq!(
            (
                c.bos_token.as_deref(),
                c.eos_token.as_deref(),
                c.chat_template.as_deref()
            ),
            (Some("<s>"), Some("</s>"), Some("D"))
        );
        let e = TokenizerConfig::parse("{", "dir/tokenizer_config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dir/tokenizer_config.json"));
    }

    /// The Llama 3 and Qwen2 split regexes (look-ahead needs fancy-regex) compile and split digits
    /// in groups of three / one by one.
    #[test]
    fn llama3_and_qwen2_pre_tokenizers_build() {
        for (pre, digits) in [("llama-bpe", 2), ("qwen2", 4), ("gpt2", 1)] {
            let mut md = gguf_md();
            md.insert("tokenizer.ggml.pre".into(), V::String(pre.into()));
            let t = ModelTokenizer::from_gguf(&md, "t.gguf").unwrap();
            let ids = t.encode("2026", SpecialTokens::Omit).unwrap();
            // No merges for digits: one token per byte, but the pieces split differently.
            assert_eq!(ids.len(), 4, "{pre}");
            let enc = t.inner().encode("2026", false).unwrap();
            let words: std::collections::BTreeSet<u32> =
                enc.get_word_ids().iter().flatten().copied().collect();
            assert_eq!(words.len(), digits, "{pre}: pre-tokenized pieces");
            assert_eq!(t.decode(&ids, SpecialTokens::Omit).unwrap(), "2026");
        }
    }
}
