//! The task's chat messages, built from [`PromptConfig`]: the one place both training and inference
//! get their prompt and answer text from (`docs/data.md`, pitfall 4). The chat template itself
//! (ChatML, Llama 3, ...) is rendered by the agent with the model's own tokenizer config.
//!
//! Placeholders are substituted in a single left-to-right pass, so text inserted for one placeholder
//! (a dialogue that happens to contain `{code}`) is never substituted again.
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::PromptConfig;

/// Who speaks a chat message; serialised lower case as chat templates expect (`"system"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role name chat templates use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a chat; serialises as `{"role": "user", "content": "..."}` for chat templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// Placeholders each template may use.
pub const USER_PLACEHOLDERS: [&str; 1] = ["dialogue"];
/// `{code}` is the dotted code (`S72.001A`), `{code_undotted}` the normalised one (`S72001A`).
pub const ANSWER_PLACEHOLDERS: [&str; 3] = ["code", "code_undotted", "description"];

/// A prompt config that cannot produce the intended text.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PromptError {
    #[error("prompt.{field}: unknown placeholder `{{{name}}}` (allowed: {allowed})")]
    UnknownPlaceholder {
        field: &'static str,
        name: String,
        allowed: String,
    },
    #[error("prompt.{field}: must contain `{{{name}}}`, otherwise the model never sees it")]
    MissingPlaceholder {
        field: &'static str,
        name: &'static str,
    },
}

/// Checks that the templates use only known placeholders and contain the ones they need
/// (`{dialogue}` in the user template, `{code}` or `{code_undotted}` in the answer template).
/// Config validation calls this so a typo like `{dialog}` fails at load, not as a silent bad prompt.
pub fn validate(cfg: &PromptConfig) -> Result<(), PromptError> {
    check_known("system", &cfg.system, &[])?;
    check_known("user_template", &cfg.user_template, &USER_PLACEHOLDERS)?;
    check_known(
        "answer_template",
        &cfg.answer_template,
        &ANSWER_PLACEHOLDERS,
    )?;
    if !placeholders(&cfg.user_template).any(|p| p == "dialogue") {
        return Err(PromptError::MissingPlaceholder {
            field: "user_template",
            name: "dialogue",
        });
    }
    if !placeholders(&cfg.answer_template).any(|p| p == "code" || p == "code_undotted") {
        return Err(PromptError::MissingPlaceholder {
            field: "answer_template",
            name: "code",
        });
    }
    Ok(())
}

fn check_known(field: &'static str, template: &str, allowed: &[&str]) -> Result<(), PromptError> {
    match placeholders(template).find(|p| !allowed.contains(p)) {
        Some(name) => Err(PromptError::UnknownPlaceholder {
            field,
            name: name.to_string(),
            allowed: if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed
                    .iter()
                    .map(|a| format!("{{{a}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
        None => Ok(()),
    }
}

/// The names of `{name}` placeholders in a template (identifier characters only, so JSON-like braces
/// in prose such as `{"a": 1}` are not mistaken for placeholders).
fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    template.match_indices('{').filter_map(move |(start, _)| {
        let rest = &template[start + 1..];
        let end = rest.find('}')?;
        let name = &rest[..end];
        is_placeholder_name(name).then_some(name)
    })
}

fn is_placeholder_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces each `{name}` with its value in one pass; unknown names are left as written
/// ([`validate`] rejects them at config load).
fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v, close))
        });
        match value {
            Some((v, close)) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The system and user messages for one dialogue (an empty system prompt is left out, since some
/// chat templates inject their own default when there is no system message).
pub fn messages(cfg: &PromptConfig, dialogue: &str) -> Vec<ChatMessage> {
    let mut out = Vec::with_capacity(2);
    if !cfg.system.trim().is_empty() {
        out.push(ChatMessage::new(Role::System, cfg.system.clone()));
    }
    out.push(ChatMessage::new(
        Role::User,
        render(&cfg.user_template, &[("dialogue", dialogue)]),
    ));
    out
}

/// The assistant's target answer for training: `{code}` is the dotted code, `{code_undotted}` the
/// normalised one, `{description}` the code's description.
pub fn answer(cfg: &PromptConfig, code: &str, description: &str) -> String {
    let normalized = crate::icd10::normalize(code);
    let dotted = crate::icd10::dotted(&normalized);
    render(
        &cfg.answer_template,
        &[
            ("code", &dotted),
            ("code_undotted", &normalized),
            ("description", description),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(system: &str, user: &str, answer: &str) -> PromptConfig {
        PromptConfig {
            system: system.into(),
            user_template: user.into(),
            answer_template: answer.into(),
        }
    }

    fn has_unreplaced(text: &str) -> bool {
        placeholders(text).next().is_some()
    }

    #[test]
    fn default_messages_substitute_dialogue() {
        let c = PromptConfig::default();
        let m = messages(&c, "Doctor: Hello.\nPatient: My throat hurts.");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].role, Role::System);
        assert_eq!(m[0].content, c.system);
        assert_eq!(m[1].role, Role::User);
        assert!(m[1].content.contains("Patient: My throat hurts."));
        assert!(!m[1].content.contains("{dialogue}"));
        assert!(!has_unreplaced(&m[1].content));
        validate(&c).unwrap();
    }

    #[test]
    fn dialogue_containing_braces_is_not_substituted_again() {
        let c = cfg("sys", "A {dialogue} B", "{code}");
        let m = messages(&c, "literal {dialogue} and {code}");
        assert_eq!(m[1].content, "A literal {dialogue} and {code} B");
    }

    #[test]
    fn empty_system_is_omitted() {
        let m = messages(&cfg("  ", "{dialogue}", "{code}"), "x");
        assert_eq!(m, vec![ChatMessage::new(Role::User, "x")]);
    }

    #[test]
    fn repeated_placeholder_and_json_braces() {
        let c = cfg("s", "{dialogue} / {dialogue} {\"k\": 1}", "{code}");
        assert_eq!(messages(&c, "d")[1].content, "d / d {\"k\": 1}");
        validate(&c).unwrap();
    }

    #[test]
    fn role_serialises_lower_case() {
        let json = serde_json::to_string(&ChatMessage::new(Role::Assistant, "hi")).unwrap();
        assert_eq!(json, r#"{"role":"assistant","content":"hi"}"#);
        assert_eq!(Role::System.as_str(), "system");
    }

    #[test]
    fn validate_rejects_typos_and_missing_placeholders() {
        let err = validate(&cfg("s", "{dialog}", "{code}")).unwrap_err();
        assert_eq!(
            err,
            PromptError::UnknownPlaceholder {
                field: "user_template",
                name: "dialog".into(),
                allowed: "{dialogue}".into()
            }
        );
        assert!(
            err.to_string()
                .contains("prompt.user_template: unknown placeholder `{dialog}`")
        );
        assert_eq!(
            validate(&cfg("s", "no placeholder", "{code}")).unwrap_err(),
            PromptError::MissingPlaceholder {
                field: "user_template",
                name: "dialogue"
            }
        );
        assert_eq!(
            validate(&cfg("s", "{dialogue}", "{description}")).unwrap_err(),
            PromptError::MissingPlaceholder {
                field: "answer_template",
                name: "code"
            }
        );
        assert!(matches!(
            validate(&cfg("{x}", "{dialogue}", "{code}")).unwrap_err(),
            PromptError::UnknownPlaceholder {
                field: "system",
                ..
            }
        ));
        validate(&cfg("s", "{dialogue}", "{code_undotted} - {description}")).unwrap();
    }
    #[test]
    fn answer_uses_the_dotted_code_by_default() {
        let c = PromptConfig::default();
        assert_eq!(answer(&c, "S72001A", "Fracture"), "S72.001A");
        assert_eq!(answer(&c, "u071", "COVID-19"), "U07.1");
        assert_eq!(answer(&c, "I10", "Essential hypertension"), "I10");
        let c = cfg("s", "{dialogue}", "{code} ({code_undotted}): {description}");
        let a = answer(
            &c,
            "E11.9",
            "Type 2 diabetes mellitus without complications {code}",
        );
        assert_eq!(
            a,
            "E11.9 (E119): Type 2 diabetes mellitus without complications {code}"
        );
    }
}
