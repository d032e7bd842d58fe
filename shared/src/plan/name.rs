//! Reading a model's size and a short label from its hub id (`Meta-Llama-3.1-8B-Instruct` → 8
//! billion, `Llama-8B`): used by the plan's rough memory estimate, the old-config migration and
//! the old-results converter, which all place a model by the size its name states.

/// Models at least this large (billions of parameters) are LLMs.
pub const LLM_MIN_BILLIONS: f64 = 7.0;

/// The model size in billions written in a hub id: `Meta-Llama-3.1-8B-Instruct` → 8,
/// `Qwen2.5-0.5B` → 0.5, `SmolLM2-135M` → 0.135. The size token is the one that is a number
/// followed by `B` or `M` (so version numbers like `3.1` or `v0.3` are not mistaken for it).
pub fn size_in_billions(name: &str) -> Option<(f64, String)> {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.split(['-', '_', ' ', ':']).find_map(|tok| {
        let (num, scale) = if let Some(n) = tok.strip_suffix(['B', 'b']) {
            (n, 1.0)
        } else if let Some(n) = tok.strip_suffix(['M', 'm']) {
            (n, 1e-3)
        } else {
            return None;
        };
        let v: f64 = num.parse().ok()?;
        (v > 0.0).then(|| (v * scale, tok.to_ascii_uppercase()))
    })
}

/// `Meta-Llama-3.1-8B-Instruct` → `Llama-8B`, `Qwen/Qwen2.5-3B-Instruct` → `Qwen-3B`: the family
/// word (a leading `Meta` skipped, trailing version digits cut) and the size token.
pub fn label_from_name(name: &str, size: Option<&str>) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let family = base
        .split(['-', '_', ' '])
        .find(|t| !t.eq_ignore_ascii_case("meta") && !t.is_empty())
        .map(|t| t.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.'))
        .filter(|t| !t.is_empty())
        .unwrap_or(base);
    match size {
        Some(s) => format!("{family}-{s}"),
        None => family.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_read_from_the_name_not_from_version_numbers() {
        let cases = [
            ("meta-llama/Meta-Llama-3.1-8B-Instruct", Some(8.0)),
            ("mistralai/Mistral-7B-Instruct-v0.3", Some(7.0)),
            ("meta-llama/Llama-3.1-70B-Instruct", Some(70.0)),
            ("Qwen/Qwen2.5-3B-Instruct", Some(3.0)),
            ("Qwen/Qwen2.5-0.5B-Instruct", Some(0.5)),
            ("HuggingFaceTB/SmolLM2-135M-Instruct", Some(0.135)),
            ("gpt2", None),
        ];
        for (name, want) in cases {
            assert_eq!(size_in_billions(name).map(|(b, _)| b), want, "{name}");
        }
    }

    #[test]
    fn labels_are_the_family_word_and_the_size() {
        assert_eq!(
            label_from_name("meta-llama/Meta-Llama-3.1-8B-Instruct", Some("8B")),
            "Llama-8B"
        );
        assert_eq!(
            label_from_name("Qwen/Qwen2.5-3B-Instruct", Some("3B")),
            "Qwen-3B"
        );
        assert_eq!(label_from_name("gpt2", None), "gpt");
    }
}
