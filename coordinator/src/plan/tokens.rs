//! Token lengths of the training examples and evaluation prompts under a model's own tokenizer,
//! where that tokenizer is on this machine already (a local HF folder, or the hub cache for a hub
//! id: nothing is downloaded). The text is the model's chat template rendered the way
//! `engine::template::ChatTemplate` renders it (the coordinator never links the engine); a model
//! without a `chat_template` is counted over its messages' text alone, and the stats say so.
use hubclient::{Hub, HubAccess, HubSettings, RepoRef};
use serde::Serialize;
use shared::config::{ExperimentConfig, ModelEntry};
use shared::dataset::Record;
use shared::prompt::ChatMessage;
use std::path::{Path, PathBuf};

/// End-of-turn markers, in the engine's order (`engine::tokenizer::END_OF_TURN_TOKENS`).
const END_OF_TURN: [&str; 4] = ["<|eot_id|>", "<|im_end|>", "<|eom_id|>", "<|end|>"];

/// Length statistics of one set of texts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lengths {
    pub count: usize,
    pub mean: f64,
    pub median: usize,
    pub p95: usize,
    pub max: usize,
    /// How many are longer than `max_length` (training examples: cut at the dialogue's end).
    pub over_max_length: usize,
}

impl Lengths {
    fn of(mut lens: Vec<usize>, max_length: usize) -> Lengths {
        lens.sort_unstable();
        let n = lens.len();
        let at = |q: f64| {
            lens.get(((n as f64 * q).ceil() as usize).clamp(1, n.max(1)) - 1)
                .copied()
                .unwrap_or(0)
        };
        Lengths {
            count: n,
            mean: if n == 0 {
                0.0
            } else {
                lens.iter().sum::<usize>() as f64 / n as f64
            },
            median: at(0.5),
            p95: at(0.95),
            max: lens.last().copied().unwrap_or(0),
            over_max_length: lens.iter().filter(|&&l| l > max_length).count(),
        }
    }
}

/// One model's token statistics, or why there are none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenStats {
    pub model: String,
    /// Where the tokenizer was found; `None` when it was not.
    pub tokenizer: Option<PathBuf>,
    /// "tokenizer not available: ..." when there are no statistics.
    pub note: String,
    /// `true` when the model's chat template was rendered; `false`: messages' text only (fewer
    /// tokens than the model sees by the template's markers).
    pub chat_template: bool,
    pub max_length: usize,
    /// Prompt + answer + end-of-turn of each training example (finetuned models only).
    pub train: Option<Lengths>,
    /// Tokens the training would forward per epoch: each example cut to `max_length`.
    pub train_tokens_per_epoch: Option<u64>,
    /// Inference prompts of the evaluated samples.
    pub eval_prompts: Option<Lengths>,
}

/// The tokenizer files of `entry`, if they are on this machine: `(tokenizer.json,
/// tokenizer_config.json if present)`. `Err` says why not.
fn locate(entry: &ModelEntry, hub: &HubSettings) -> Result<(PathBuf, Option<PathBuf>), String> {
    let p = Path::new(&entry.name);
    if p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return Err(
            "a GGUF file's tokenizer is in its metadata, which only the engine reads".into(),
        );
    }
    if p.is_dir() {
        let tok = p.join("tokenizer.json");
        if !tok.is_file() {
            return Err(format!("{} not found", tok.display()));
        }
        let cfg = p.join("tokenizer_config.json");
        return Ok((tok, cfg.is_file().then_some(cfg)));
    }
    if !hubclient::is_repo_id(&entry.name) {
        return Err(format!("{} is neither a folder nor a hub id", entry.name));
    }
    let mut offline = hub.clone();
    offline.access = HubAccess::Offline;
    let h = Hub::new(offline);
    let repo = RepoRef::model(&entry.name, entry.revision.as_deref()).map_err(|e| e.to_string())?;
    let tok = h
        .get_optional(&repo, "tokenizer.json")
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "not in the hub cache {} (nothing is downloaded to plan)",
                hub.cache_dir.display()
            )
        })?;
    let cfg = h
        .get_optional(&repo, "tokenizer_config.json")
        .ok()
        .flatten();
    Ok((tok.path, cfg.map(|c| c.path)))
}

/// A special token as tokenizer_config.json writes it: a string or `{"content": ...}`.
fn special(cfg: &serde_json::Value, key: &str) -> String {
    match &cfg[key] {
        serde_json::Value::String(s) => s.clone(),
        v => v["content"].as_str().unwrap_or_default().to_string(),
    }
}

/// The model's chat template, compiled as the engine compiles it.
struct Template {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
    end_of_turn: String,
}

impl Template {
    fn new(config: &Path, tok: &tokenizers::Tokenizer) -> Result<Option<Template>, String> {
        let text =
            std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
        let cfg: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
        let Some(jinja) = cfg["chat_template"].as_str() else {
            return Ok(None);
        };
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", jinja.to_string())
            .map_err(|e| format!("{}: chat_template: {e}", config.display()))?;
        let eos = special(&cfg, "eos_token");
        let end_of_turn = END_OF_TURN
            .iter()
            .find(|t| jinja.contains(*t) && tok.token_to_id(t).is_some())
            .map_or_else(|| eos.clone(), |t| t.to_string());
        Ok(Some(Template {
            env,
            bos: special(&cfg, "bos_token"),
            eos,
            end_of_turn,
        }))
    }

    fn render(&self, messages: &[serde_json::Value], generation: bool) -> Result<String, String> {
        let t = self.env.get_template("chat").map_err(|e| e.to_string())?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => generation,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| format!("chat_template: {e}"))
    }

    /// `(prompt, full)` as `ChatTemplate::render_full`: the full text is the prompt plus the
    /// answer turn up to and including the end-of-turn marker.
    fn texts(&self, messages: &[ChatMessage], answer: &str) -> Result<(String, String), String> {
        let mut values: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let prompt = self.render(&values, true)?;
        values.push(serde_json::json!({"role": "assistant", "content": answer}));
        let conv = self.render(&values, false)?;
        let appended = || format!("{prompt}{answer}{}", self.end_of_turn);
        let full = match conv.strip_prefix(&prompt) {
            Some(rest) => match rest.find(answer) {
                Some(at) => {
                    let after = at + answer.len();
                    match rest[after..].find(&self.end_of_turn) {
                        Some(i) => {
                            format!("{prompt}{}", &rest[..after + i + self.end_of_turn.len()])
                        }
                        None => format!("{prompt}{}{}", &rest[..after], self.end_of_turn),
                    }
                }
                None => appended(),
            },
            None => appended(),
        };
        Ok((prompt, full))
    }
}

fn count(tok: &tokenizers::Tokenizer, text: &str) -> Result<usize, String> {
    tok.encode(text, false)
        .map(|e| e.len())
        .map_err(|e| format!("tokenizing: {e}"))
}

/// Token statistics for `entry`; `train` are the finetune's examples (`None` for a model that is
/// only evaluated), `eval` the evaluated samples.
pub fn stats(
    cfg: &ExperimentConfig,
    entry: &ModelEntry,
    hub: &HubSettings,
    train: Option<&[Record]>,
    eval: &[Record],
) -> TokenStats {
    let max_length = cfg.training.max_length;
    let mut out = TokenStats {
        model: entry.name.clone(),
        tokenizer: None,
        note: String::new(),
        chat_template: false,
        max_length,
        train: None,
        train_tokens_per_epoch: None,
        eval_prompts: None,
    };
    let (tok_path, config) = match locate(entry, hub) {
        Ok(p) => p,
        Err(why) => {
            out.note = format!("tokenizer not available: {why}");
            return out;
        }
    };
    let counted = (|| -> Result<(), String> {
        let tok = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| format!("{}: {e}", tok_path.display()))?;
        let template = match &config {
            Some(c) => Template::new(c, &tok)?,
            None => None,
        };
        out.chat_template = template.is_some();
        let texts = |r: &Record| -> Result<(String, String), String> {
            let messages = shared::prompt::messages(&cfg.prompt, &r.dialogue);
            let answer = shared::prompt::answer(&cfg.prompt, &r.code, &r.description);
            match &template {
                Some(t) => t.texts(&messages, &answer),
                None => {
                    let prompt: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
                    let prompt = prompt.join("\n");
                    let full = format!("{prompt}\n{answer}");
                    Ok((prompt, full))
                }
            }
        };
        if let Some(train) = train {
            let lens = train
                .iter()
                .map(|r| count(&tok, &texts(r)?.1))
                .collect::<Result<Vec<_>, _>>()?;
            out.train_tokens_per_epoch = Some(lens.iter().map(|&l| l.min(max_length) as u64).sum());
            out.train = Some(Lengths::of(lens, max_length));
        }
        let lens = eval
            .iter()
            .map(|r| count(&tok, &texts(r)?.0))
            .collect::<Result<Vec<_>, _>>()?;
        out.eval_prompts = Some(Lengths::of(lens, max_length));
        Ok(())
    })();
    out.tokenizer = Some(tok_path);
    out.note = match counted {
        Ok(()) if out.chat_template => "counted with the model's chat template".into(),
        Ok(()) => "no chat_template in tokenizer_config.json: counted over the messages' text \
                   (the engine's built-in template adds a few tokens a turn)"
            .into(),
        Err(why) => {
            out.train = None;
            out.train_tokens_per_epoch = None;
            out.eval_prompts = None;
            format!("tokenizer not available: {why}")
        }
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_take_quantiles_from_the_sorted_counts() {
        let l = Lengths::of(vec![5, 1, 4, 2, 3, 10, 6, 7, 8, 9], 8);
        assert_eq!((l.count, l.median, l.p95, l.max), (10, 5, 10, 10));
        assert_eq!(l.over_max_length, 2);
        assert!((l.mean - 5.5).abs() < 1e-12);
        let empty = Lengths::of(Vec::new(), 8);
        assert_eq!((empty.count, empty.max, empty.median), (0, 0, 0));
    }
}
