//! Chat templates: render the model's own Jinja template (as transformers does) or a built-in one per
//! family, so training text = inference prompt + answer + end-of-turn, token for token.
use minijinja::{Environment, ErrorKind};
use serde_json::{Value, json};
use shared::prompt::ChatMessage;

use crate::error::{AgentError, Result};
use crate::tokenizer::{END_OF_TURN_TOKENS, ModelTokenizer};

/// A built-in chat format, used when the model ships no template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    /// `<|im_start|>role\n...<|im_end|>` (Qwen2, SmolLM).
    ChatMl,
    /// `<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>` (Llama 3.x).
    Llama3,
    /// `[INST] ... [/INST]` with the system text in the first user turn (Mistral).
    Mistral,
}

impl ChatFormat {
    /// Guess the format from the special tokens the tokenizer knows.
    pub fn detect(tok: &ModelTokenizer) -> Self {
        if tok.token_id("<|start_header_id|>").is_some() {
            Self::Llama3
        } else if tok.token_id("<|im_start|>").is_some() {
            Self::ChatMl
        } else {
            Self::Mistral
        }
    }

    /// The format as a Jinja template (same variables as HF templates).
    pub fn jinja(self) -> &'static str {
        match self {
            Self::ChatMl => {
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                 {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
            }
            Self::Llama3 => {
                "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n\
                 {{ m.content | trim }}<|eot_id|>{% endfor %}\
                 {% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
            }
            Self::Mistral => {
                "{{ bos_token }}{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}\
                 {% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}\
                 {% for m in msgs %}{% if m.role == 'user' %}[INST] {% if loop.first and sys %}{{ sys }}\n\n{% endif %}\
                 {{ m.content }}[/INST]{% elif m.role == 'assistant' %} {{ m.content }}{{ eos_token }}{% else %}\
                 {{ raise_exception('roles must be user/assistant after the system message') }}{% endif %}{% endfor %}"
            }
        }
    }
}

/// Where the template came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// The model's own `chat_template` (tokenizer_config.json or GGUF `tokenizer.chat_template`).
    Model,
    Builtin(ChatFormat),
}

/// A compiled chat template plus the tokens it needs.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: TemplateSource,
    bos_token: String,
    eos_token: String,
    end_of_turn: String,
}

fn template_err(e: minijinja::Error) -> AgentError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    AgentError::Template(msg)
}

impl ChatTemplate {
    /// Compile `jinja` (the model's template) or, when `None`, the built-in format guessed from the
    /// tokenizer. The end-of-turn marker is the first known end-of-turn token the template writes,
    /// else EOS.
    pub fn new(jinja: Option<&str>, tok: &ModelTokenizer) -> Result<Self> {
        let (text, source) = match jinja {
            Some(t) => (t.to_string(), TemplateSource::Model),
            None => {
                let f = ChatFormat::detect(tok);
                (f.jinja().to_string(), TemplateSource::Builtin(f))
            }
        };
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks; the templates are written for it.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", text.clone())
            .map_err(template_err)?;
        let eos_token = tok.eos_token().unwrap_or_default().to_string();
        let end_of_turn = END_OF_TURN_TOKENS
            .iter()
            .find(|t| text.contains(*t) && tok.token_id(t).is_some())
            .map(|t| t.to_string())
            .unwrap_or_else(|| eos_token.clone());
        if end_of_turn.is_empty() {
            return Err(AgentError::Template(
                "the tokenizer has no EOS token and the template no end-of-turn token".into(),
            ));
        }
        Ok(Self {
            env,
            source,
            bos_token: tok.bos_token().unwrap_or_default().to_string(),
            eos_token,
            end_of_turn,
        })
    }

    pub fn source(&self) -> &TemplateSource {
        &self.source
    }

    /// The text that ends an assistant turn (`<|im_end|>`, `<|eot_id|>`, `</s>`).
    pub fn end_of_turn(&self) -> &str {
        &self.end_of_turn
    }

    fn render(&self, messages: &[Value], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(template_err)?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(template_err)
    }

    fn to_values(messages: &[ChatMessage]) -> Vec<Value> {
        messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect()
    }

    /// The inference prompt: the conversation with the generation prompt (the assistant header).
    pub fn render_prompt(&self, messages: &[ChatMessage]) -> Result<String> {
        self.render(&Self::to_values(messages), true)
    }

    /// `(prompt, full)` for training: `prompt` is exactly [`ChatTemplate::render_prompt`]'s text and
    /// `full` = `prompt` + the template's rendering of the answer up to and including the end-of-turn
    /// marker (nothing after it: the model must learn to stop there).
    pub fn render_full(&self, messages: &[ChatMessage], answer: &str) -> Result<(String, String)> {
        let prompt = self.render_prompt(messages)?;
        let mut values = Self::to_values(messages);
        values.push(json!({"role": "assistant", "content": answer}));
        let conv = self.render(&values, false)?;
        let Some(rest) = conv.strip_prefix(&prompt) else {
            return Err(AgentError::Template(
                "the template renders the conversation with a different prefix than the inference prompt".into(),
            ));
        };
        let Some(at) = rest.find(answer) else {
            return Err(AgentError::Template(
                "the rendered conversation does not contain the answer".into(),
            ));
        };
        let after = at + answer.len();
        let turn = match rest[after..].find(&self.end_of_turn) {
            Some(i) => &rest[..after + i + self.end_of_turn.len()],
            // Templates that end a turn with nothing we know: append the marker ourselves.
            None => &rest[..after],
        };
        let mut full = format!("{prompt}{turn}");
        if !turn.ends_with(&self.end_of_turn) {
            full.push_str(&self.end_of_turn);
        }
        Ok((prompt, full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::prompt::Role;

    fn tok_with(special: &[&str]) -> ModelTokenizer {
        let mut vocab = serde_json::Map::new();
        for (i, t) in special.iter().chain(["a", "b"].iter()).enumerate() {
            vocab.insert(t.to_string(), json!(i));
        }
        let added: Vec<Value> = special
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let spec = json!({"version": "1.0", "added_tokens": added, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "a"}});
        let inner: tokenizers::Tokenizer = spec.to_string().parse().unwrap();
        ModelTokenizer::new(inner, Some(special[0]), Some(special[1]), &[], false)
    }

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "Code?"),
        ]
    }

    #[test]
    fn builtin_chatml_prompt_and_full() {
        let tok = tok_with(&["<|im_start|>", "<|im_end|>"]);
        let t = ChatTemplate::new(None, &tok).unwrap();
        assert_eq!(t.source(), &TemplateSource::Builtin(ChatFormat::ChatMl));
        let p = t.render_prompt(&msgs()).unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCode?<|im_end|>\n<|im_start|>assistant\n"
        );
        let (prompt, full) = t.render_full(&msgs(), "J45.909").unwrap();
        assert_eq!(prompt, p);
        assert_eq!(full, format!("{p}J45.909<|im_end|>"));
    }

    #[test]
    fn builtin_llama3_and_mistral() {
        let tok = tok_with(&[
            "<|begin_of_text|>",
            "<|eot_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
        ]);
        let t = ChatTemplate::new(None, &tok).unwrap();
        assert_eq!(t.end_of_turn(), "<|eot_id|>");
        let (p, full) = t.render_full(&msgs(), "E11.9").unwrap();
        assert_eq!(
            p,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nCode?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(full, format!("{p}E11.9<|eot_id|>"));

        let tok = tok_with(&["<s>", "</s>", "[INST]", "[/INST]"]);
        let t = ChatTemplate::new(None, &tok).unwrap();
        assert_eq!(t.source(), &TemplateSource::Builtin(ChatFormat::Mistral));
        let (p, full) = t.render_full(&msgs(), "E11.9").unwrap();
        assert_eq!(p, "<s>[INST] Be brief.\n\nCode?[/INST]");
        assert_eq!(full, format!("{p} E11.9</s>"));
    }

    /// A template in the style the hub ships (loop variables, `raise_exception`, Python methods).
    #[test]
    fn model_template_with_raise_exception_and_pycompat() {
        let tok = tok_with(&["<|im_start|>", "<|im_end|>"]);
        let jinja = "{% for message in messages %}{% if message['role'] not in ['system','user','assistant'] %}\
            {{ raise_exception('bad role ' + message['role']) }}{% endif %}\
            {{'<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n'}}{% endfor %}\
            {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::new(Some(jinja), &tok).unwrap();
        assert_eq!(t.source(), &TemplateSource::Model);
        let (p, full) = t.render_full(&msgs(), "I10").unwrap();
        assert!(p.ends_with("<|im_start|>assistant\n"));
        assert_eq!(full, format!("{p}I10<|im_end|>"));
        let jinja_bad = "{{ raise_exception('Conversation roles must alternate') }}";
        let t = ChatTemplate::new(Some(jinja_bad), &tok).unwrap();
        let e = t.render_prompt(&msgs()).unwrap_err().to_string();
        assert!(e.contains("Conversation roles must alternate"), "{e}");
    }
}
