//! A word-level `tokenizers` tokenizer with ChatML special tokens, built in the test.
use crate::template::ChatTemplate;
use crate::tokenizer::ModelTokenizer;

/// ChatML, as Qwen2 / SmolLM2 ship it.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub const SPECIALS: [&str; 3] = ["<unk>", "<|im_start|>", "<|im_end|>"];

/// `tokenizer.json` text: ids 0-2 are the specials, then `words` (in the given order) after the
/// three role names.
pub fn tokenizer_json(words: &[String]) -> String {
    let mut vocab = serde_json::Map::new();
    let mut all: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    all.extend(["system", "user", "assistant"].map(String::from));
    for w in words {
        if !all.contains(w) {
            all.push(w.clone());
        }
    }
    for (i, w) in all.iter().enumerate() {
        vocab.insert(w.clone(), serde_json::json!(i));
    }
    let added: Vec<serde_json::Value> = SPECIALS
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                                "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// The wrapped tokenizer (BOS `<|im_start|>`, EOS `<|im_end|>`) and its ChatML template.
pub fn tokenizer(words: &[String]) -> (ModelTokenizer, ChatTemplate) {
    let inner: tokenizers::Tokenizer = tokenizer_json(words)
        .parse()
        .expect("tokenizer.json parses");
    let tok = ModelTokenizer::new(inner, Some("<|im_start|>"), Some("<|im_end|>"), &[2], false);
    let template = ChatTemplate::new(Some(CHATML), &tok).expect("ChatML compiles");
    (tok, template)
}
