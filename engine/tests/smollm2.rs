//! The real-model tests: SmolLM2-135M-Instruct (Q4_1 GGUF) loads, its GGUF tokenizer and chat
//! template behave, and greedy decoding answers a factual question.
//!
//! The model file comes from `scripts/fetch-smollm2.sh`; these tests fail (never skip) without it.

/// The allocator the engine is tuned for (`engine::alloc`), as in the binaries.
#[global_allocator]
static GLOBAL: engine::alloc::MiMalloc = engine::alloc::MiMalloc;

use std::path::PathBuf;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use engine::generate::generate;
use engine::load::{self, LoadedModel, ModelSource};
use engine::model::{LoadOptions, WeightFormat};
use engine::tokenizer::SpecialTokens;
use shared::config::GenerationConfig;
use shared::prompt::{ChatMessage, Role};
use tokio_util::sync::CancellationToken;

fn model_path() -> PathBuf {
    let dir = std::env::var_os("SIZESPEC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/sizespec/models")
        });
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run `bash scripts/fetch-smollm2.sh` first (or set SIZESPEC_MODELS)",
        p.display()
    );
    p
}

fn source() -> ModelSource {
    let p = model_path();
    let s = load::resolve(p.to_str().unwrap(), None).unwrap();
    assert_eq!(s, ModelSource::Gguf(p));
    s
}

fn question() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, "You are a helpful assistant."),
        ChatMessage::new(Role::User, "What is the capital of France?"),
    ]
}

fn answer(lm: &LoadedModel, max_new_tokens: usize) -> (String, Vec<u32>) {
    let prompt = lm.template.render_prompt(&question()).unwrap();
    let ids = lm.tokenizer.encode(&prompt, SpecialTokens::Omit).unwrap();
    let cfg = GenerationConfig {
        max_new_tokens,
        batch_size: 1,
    };
    let (gens, _) = generate(
        &lm.model,
        &[ids],
        lm.tokenizer.stop_ids(),
        &cfg,
        &CancellationToken::new(),
        |_| {},
    )
    .unwrap();
    let text = lm
        .tokenizer
        .decode(gens[0].content(), SpecialTokens::Omit)
        .unwrap();
    (text, gens[0].generated.clone())
}

#[test]
fn gguf_config_and_tokenizer() {
    let (tok, template, cfg) = load::load_tokenizer(&source()).unwrap();
    assert_eq!(
        (
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads
        ),
        (30, 576, 9, 3)
    );
    assert_eq!((cfg.vocab_size, cfg.head_dim), (49152, 64));
    assert!(cfg.tie_word_embeddings);
    assert_eq!(cfg.rope_theta, 100000.0);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert!(tok.is_stop(2));
    assert_eq!(
        tok.encode("<|im_start|>", SpecialTokens::Omit).unwrap(),
        vec![1]
    );
    assert_eq!(
        tok.encode("<|im_end|>", SpecialTokens::Omit).unwrap(),
        vec![2]
    );
    let text = "The patient's code is J45.909 — asthma, unspecified. Naïve café 2026!\n  Done.";
    let ids = tok.encode(text, SpecialTokens::Omit).unwrap();
    assert_eq!(tok.decode(&ids, SpecialTokens::Omit).unwrap(), text);
    // Digits are one token each.
    assert_eq!(tok.encode("2026", SpecialTokens::Omit).unwrap().len(), 4);
    // "hello" is a single learned merge, not five bytes: the merges were applied.
    assert_eq!(tok.encode("hello", SpecialTokens::Omit).unwrap().len(), 1);
    // The training prompt prefix tokenizes exactly like the inference prompt (pitfall 4).
    assert_eq!(template.end_of_turn(), "<|im_end|>");
    let (prompt, full) = template.render_full(&question(), "Paris.").unwrap();
    assert_eq!(prompt, template.render_prompt(&question()).unwrap());
    let p = tok.encode(&prompt, SpecialTokens::Omit).unwrap();
    let f = tok.encode(&full, SpecialTokens::Omit).unwrap();
    assert_eq!(&f[..p.len()], p.as_slice());
    assert_eq!(
        *f.last().unwrap(),
        2,
        "the training text ends with <|im_end|>"
    );
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
}

#[test]
fn greedy_answer_quantized_q8_0() {
    let opts = LoadOptions {
        dtype: DType::F32,
        device: Device::Cpu,
        format: WeightFormat::Quantized(GgmlDType::Q8_0),
    };
    let lm = load::load(&source(), &opts).unwrap();
    let (text, generated) = answer(&lm, 24);
    assert!(text.contains("Paris"), "answer was {text:?}");
    assert_eq!(
        *generated.last().unwrap(),
        2,
        "stops on <|im_end|>: {text:?}"
    );
}

#[test]
fn greedy_answer_dense_f32_and_close_to_quantized() {
    let dense = load::load(&source(), &LoadOptions::cpu_f32()).unwrap();
    let (text, _) = answer(&dense, 24);
    assert!(text.contains("Paris"), "answer was {text:?}");
    // Dense (dequantised Q4_1) and as-shipped Q4_1 weights give nearly the same logits.
    let opts = LoadOptions {
        format: WeightFormat::Quantized(GgmlDType::Q4_1),
        ..LoadOptions::cpu_f32()
    };
    let quant = load::load(&source(), &opts).unwrap();
    let prompt = dense.template.render_prompt(&question()).unwrap();
    let ids = dense
        .tokenizer
        .encode(&prompt, SpecialTokens::Omit)
        .unwrap();
    let n = ids.len();
    let x = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
    let a = dense
        .model
        .forward_last(&x, &dense.model.attn_ctx(&[0], 0, n).unwrap(), None)
        .unwrap();
    let b = quant
        .model
        .forward_last(&x, &quant.model.attn_ctx(&[0], 0, n).unwrap(), None)
        .unwrap();
    let diff: f32 = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let range: f32 = a.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    // Q4_1 matmuls quantise the activations to Q8_1 on the fly: small but non-zero drift.
    assert!(
        diff < 0.05 * range,
        "max abs diff {diff} vs logit range {range}"
    );
    let argmax = |t: &Tensor| t.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(argmax(&a), argmax(&b));
}

#[test]
fn exported_hf_tokenizer_matches_the_gguf() {
    let dir = tempfile::tempdir().unwrap();
    load::export::write_hf_tokenizer(&model_path(), dir.path()).unwrap();
    let (gtok, gtemplate, _) = load::load_tokenizer(&source()).unwrap();
    // The HF folder needs a config.json to be a model source; the tokenizer files alone are what
    // is compared here.
    let htok = engine::tokenizer::ModelTokenizer::from_files(
        &dir.path().join("tokenizer.json"),
        Some(&dir.path().join("tokenizer_config.json")),
        &[],
    )
    .unwrap();
    let cfg = engine::tokenizer::TokenizerConfig::read(&dir.path().join("tokenizer_config.json"))
        .unwrap();
    let htemplate =
        engine::template::ChatTemplate::new(cfg.chat_template.as_deref(), &htok).unwrap();
    let prompt = gtemplate.render_prompt(&question()).unwrap();
    assert_eq!(htemplate.render_prompt(&question()).unwrap(), prompt);
    let text = format!("{prompt}The code is J45.909 — naïve café 2026!<|im_end|>");
    let ids = gtok.encode(&text, SpecialTokens::Omit).unwrap();
    assert_eq!(htok.encode(&text, SpecialTokens::Omit).unwrap(), ids);
    assert_eq!(
        (htok.bos_id(), htok.eos_id()),
        (gtok.bos_id(), gtok.eos_id())
    );
    assert_eq!(htok.stop_ids(), gtok.stop_ids());
}
