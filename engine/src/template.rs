//! Chat templates: render the model's own Jinja template (as transformers does) or a built-in one per
//! family, so training text = inference prompt + answer + end-of-turn, token for token.
use minijinja::{Environment, ErrorKind};
use serde_json::{Value, json};
use shared::prompt::ChatMessage;

use crate::error::{EngineError, Result};
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

fn template_err(e: minijinja::Error) -> EngineError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    EngineError::Template(msg)
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
            return Err(EngineError::Template(
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
            // Some templates render earlier turns differently once an answer follows (Mistral v0.3
            // moves the system text to the *last* user turn). Training must still see exactly the
            // inference prompt (pitfall 4), so the answer turn is appended to it directly.
            tracing::debug!(
                "conversation prefix differs from the prompt; appending the answer turn"
            );
            let full = format!("{prompt}{answer}{}", self.end_of_turn);
            return Ok((prompt, full));
        };
        let Some(at) = rest.find(answer) else {
            // The template rewrote the answer (e.g. trimmed it): keep the caller's text verbatim.
            return Ok((
                prompt.clone(),
                format!("{prompt}{answer}{}", self.end_of_turn),
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

    /// Hub-style templates: whitespace control, `namespace`, `selectattr`, slicing, `is defined`,
    /// `in` on a message, `| trim` — written in the shape Llama 3.x, Qwen2.5 and Mistral v0.3 ship.
    const LLAMA31_STYLE: &str = r#"{{- bos_token }}
{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- endif %}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}{{- "Environment: ipython\n" }}{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- else %}
        {{- raise_exception("tool messages are not expected") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#;

    const QWEN25_STYLE: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- for tool in tools %}{{- '\n' }}{{- tool | tojson }}{%- endfor %}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

    const MISTRAL_V03_STYLE: &str = r#"{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
    {%- set ns.index = ns.index + 1 %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- endif %}
{%- endfor %}
"#;

    #[test]
    fn hub_style_llama31_template() {
        let tok = tok_with(&[
            "<|begin_of_text|>",
            "<|eot_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
        ]);
        let t = ChatTemplate::new(Some(LLAMA31_STYLE), &tok).unwrap();
        let (p, full) = t.render_full(&msgs(), "E11.9").unwrap();
        assert_eq!(
            p,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\
             Today Date: 26 Jul 2024\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nCode?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(full, format!("{p}E11.9<|eot_id|>"));
    }

    #[test]
    fn hub_style_qwen25_template() {
        let tok = tok_with(&["<|im_start|>", "<|im_end|>"]);
        let t = ChatTemplate::new(Some(QWEN25_STYLE), &tok).unwrap();
        let (p, full) = t.render_full(&msgs(), "E11.9").unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCode?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(full, format!("{p}E11.9<|im_end|>"));
        let only_user = [ChatMessage::new(Role::User, "Hi")];
        assert!(
            t.render_prompt(&only_user)
                .unwrap()
                .starts_with("<|im_start|>system\nYou are Qwen")
        );
    }

    #[test]
    fn hub_style_mistral_v03_template() {
        let tok = tok_with(&["<s>", "</s>", "[INST]", "[/INST]"]);
        let t = ChatTemplate::new(Some(MISTRAL_V03_STYLE), &tok).unwrap();
        assert_eq!(t.end_of_turn(), "</s>");
        let (p, full) = t.render_full(&msgs(), "E11.9").unwrap();
        assert_eq!(p, "<s>[INST] Be brief.\n\nCode?[/INST]");
        // With the answer appended the user turn is no longer last, so this template drops the system
        // text from it; the training text still starts with the exact inference prompt.
        assert_eq!(full, format!("{p}E11.9</s>"));
        let bad = [
            ChatMessage::new(Role::Assistant, "x"),
            ChatMessage::new(Role::User, "y"),
        ];
        let e = t.render_prompt(&bad).unwrap_err().to_string();
        assert!(e.contains("must alternate"), "{e}");
    }
}
