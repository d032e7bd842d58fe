//! The learning test: a tiny random model, a word-level tokenizer with ChatML, and a synthetic
//! symptom → ICD-10 code task. Zero-shot it gets ~nothing right; after LoRA training it codes
//! held-out phrasings, its validation loss fell, it stops on `<|im_end|>`, and the same seed gives
//! the same adapter bit for bit. Plus one test per data pitfall (docs/data.md, pitfalls 1-4).

/// The allocator the engine is tuned for (`engine::alloc`), as in the binaries.
#[global_allocator]
static GLOBAL: engine::alloc::MiMalloc = engine::alloc::MiMalloc;

use engine::testkit;

use engine::generate::{Generation, StopReason, generate};
use engine::model::Model;
use engine::template::ChatTemplate;
use engine::tokenizer::{ModelTokenizer, SpecialTokens};
use engine::train::examples::ExampleBuilder;
use engine::train::{Backward, IGNORE, Layout, Resume, TrainOptions, collate, train};
use shared::config::{GenerationConfig, LoraConfig, LrSchedule, PromptConfig, TrainingConfig};
use shared::dataset::Record;
use testkit::{Tiny, codes, words};
use tokio_util::sync::CancellationToken;

fn prompt_cfg() -> PromptConfig {
    PromptConfig {
        system: "map the symptom to its code".into(),
        user_template: "{dialogue}".into(),
        answer_template: "{code}".into(),
    }
}

fn vocab() -> Vec<String> {
    let mut w = codes::words();
    w.extend(prompt_cfg().system.split_whitespace().map(String::from));
    w
}

fn tiny(vocab_size: usize) -> Tiny {
    Tiny {
        vocab: vocab_size,
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 128,
        // Small enough that the tied head's initial logits are moderate (loss starts near ln(vocab)).
        embed_scale: 0.3,
        tied: true,
    }
}

fn training() -> TrainingConfig {
    TrainingConfig {
        learning_rate: 5e-3,
        schedule: LrSchedule::Cosine,
        warmup_ratio: 0.05,
        epochs: 30,
        early_stopping_patience: 0,
        eval_every_steps: 0,
        max_length: 64,
        batch_size: 8,
        gradient_accumulation_steps: 1,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        seed: 7,
        ..TrainingConfig::default()
    }
}

fn lora() -> LoraConfig {
    LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.05,
        target_modules: shared::config::ALL_PROJECTIONS.map(String::from).to_vec(),
    }
}

/// Exact-match rate and the generations on `records`.
fn exact_match(
    model: &Model,
    tok: &ModelTokenizer,
    template: &ChatTemplate,
    records: &[Record],
) -> (f64, Vec<Generation>) {
    let p = prompt_cfg();
    let b = ExampleBuilder {
        tokenizer: tok,
        template,
        prompt: &p,
        max_length: usize::MAX,
    };
    let prompts: Vec<Vec<u32>> = records
        .iter()
        .map(|r| b.prompt_ids(&r.dialogue).unwrap())
        .collect();
    let cfg = GenerationConfig {
        max_new_tokens: 6,
        batch_size: 16,
    };
    let (gens, _) = generate(
        model,
        &prompts,
        tok.stop_ids(),
        &cfg,
        &CancellationToken::new(),
        |_| {},
    )
    .unwrap();
    let correct = gens
        .iter()
        .zip(records)
        .filter(|(g, r)| {
            let text = tok.decode(g.content(), SpecialTokens::Omit).unwrap();
            shared::icd10::extract(&text).as_deref() == Some(r.code.as_str())
        })
        .count();
    (correct as f64 / records.len() as f64, gens)
}

#[test]
fn lora_learns_the_code_mapping_and_to_stop() {
    let (tok, template) = words::tokenizer(&vocab());
    let t = tiny(tok.vocab_size());
    let (train_recs, val_recs) = codes::train_and_validation();
    let test_recs = codes::test();
    let p = prompt_cfg();
    let cfg = training();
    let b = ExampleBuilder {
        tokenizer: &tok,
        template: &template,
        prompt: &p,
        max_length: cfg.max_length,
    };
    let train_ex = b.examples(&train_recs).unwrap();
    let val_ex = b.examples(&val_recs).unwrap();

    let run = || {
        let mut model = t.model(21);
        let opts = TrainOptions {
            backward: Backward::Plain,
            layout: Layout::Fixed,
            pad_id: tok.pad_id(),
            checkpoint_dir: None,
            resume: Resume::Fresh,
            base_model: "tiny".into(),
            revision: None,
        };
        let out = train(
            &mut model,
            &train_ex,
            &val_ex,
            &cfg,
            &lora(),
            &opts,
            &CancellationToken::new(),
            |_| {},
        )
        .unwrap();
        (model, out)
    };

    let base = t.model(21);
    let (zero_shot, _) = exact_match(&base, &tok, &template, &test_recs);
    assert!(
        zero_shot <= 0.05,
        "zero-shot exact match should be near 0, got {zero_shot}"
    );

    let started = std::time::Instant::now();
    let (mut model, out) = run();
    let secs = started.elapsed().as_secs_f64();
    let first = out.first_val_loss().unwrap();
    let best = out.best_val_loss.unwrap();
    assert!(best < first * 0.5, "validation loss fell: {first} → {best}");

    model.merge_lora().unwrap();
    let (trained, gens) = exact_match(&model, &tok, &template, &test_recs);
    eprintln!(
        "zero-shot {zero_shot:.3}, trained {trained:.3} on held-out phrasings; val loss {first:.3} → {best:.3}; {secs:.1}s"
    );
    assert!(
        trained >= 0.9,
        "held-out exact match after training: {trained}"
    );
    // EOS learned: the trained model ends its answer with <|im_end|> well before max_new_tokens.
    let stopped = gens
        .iter()
        .filter(|g| g.stop == StopReason::StopToken && g.generated.len() == 2)
        .count();
    assert!(
        stopped as f64 >= 0.9 * gens.len() as f64,
        "only {stopped} of {} answers stop right after the code",
        gens.len()
    );
    assert!(
        gens.iter()
            .filter(|g| g.stop == StopReason::StopToken)
            .all(|g| *g.generated.last().unwrap() == tok.eos_id().unwrap())
    );

    let (_, again) = run();
    assert_eq!(
        out.adapter.content_hash().unwrap(),
        again.adapter.content_hash().unwrap(),
        "same seed, bit-identical adapter"
    );
}

#[test]
fn pitfall_1_examples_use_the_models_own_tokenizer() {
    // Two models' tokenizers with different vocabularies (the same words in another order).
    let mut reversed = vocab();
    reversed.reverse();
    let (tok_a, tpl_a) = words::tokenizer(&vocab());
    let (tok_b, tpl_b) = words::tokenizer(&reversed);
    let p = prompt_cfg();
    let rec = &codes::train_and_validation().0[0];
    let a = ExampleBuilder {
        tokenizer: &tok_a,
        template: &tpl_a,
        prompt: &p,
        max_length: 64,
    }
    .example(rec)
    .unwrap();
    let b = ExampleBuilder {
        tokenizer: &tok_b,
        template: &tpl_b,
        prompt: &p,
        max_length: 64,
    }
    .example(rec)
    .unwrap();
    assert_ne!(a.ids, b.ids, "different vocabularies give different ids");
    let (_, full) = tpl_b
        .render_full(&shared::prompt::messages(&p, &rec.dialogue), "J02.9")
        .unwrap();
    assert_eq!(
        b.ids,
        tok_b.encode(&full, SpecialTokens::Omit).unwrap(),
        "model B's example is model B's encoding"
    );
    let text_b = tok_b.decode(&b.ids, SpecialTokens::Add).unwrap();
    assert!(
        text_b.contains("sore throat") && text_b.contains("J02.9"),
        "{text_b}"
    );
}

#[test]
fn pitfalls_2_3_4_answer_only_labels_with_eos_and_the_inference_prompt() {
    let (tok, template) = words::tokenizer(&vocab());
    let p = prompt_cfg();
    let recs = codes::train_and_validation().0;
    let b = ExampleBuilder {
        tokenizer: &tok,
        template: &template,
        prompt: &p,
        max_length: 64,
    };
    let ex: Vec<_> = recs[..3].iter().map(|r| b.example(r).unwrap()).collect();
    for (e, r) in ex.iter().zip(&recs) {
        // Pitfall 4: the training prompt is token for token the inference prompt.
        let inference = template
            .render_prompt(&shared::prompt::messages(&p, &r.dialogue))
            .unwrap();
        assert_eq!(
            e.ids[..e.prompt_len],
            tok.encode(&inference, SpecialTokens::Omit).unwrap()[..]
        );
    }
    // Pad with EOS on purpose: the mask must come from lengths, not ids.
    let batch = collate(
        &ex.iter().collect::<Vec<_>>(),
        tok.eos_id().unwrap(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for (row, e) in batch.labels.iter().zip(&ex) {
        let pad = batch.width - e.ids.len();
        let labelled: Vec<u32> = row
            .iter()
            .filter(|&&l| l != IGNORE)
            .map(|&l| l as u32)
            .collect();
        // Pitfall 2: prompt and padding positions are ignored...
        assert!(row[..pad + e.prompt_len].iter().all(|&l| l == IGNORE));
        // ...pitfall 3: the answer and the closing <|im_end|> are the labels.
        assert_eq!(
            tok.decode(&labelled, SpecialTokens::Add).unwrap(),
            "J02.9 <|im_end|>".replace("J02.9", &shared::icd10::dotted(&recs[0].code))
        );
        assert_eq!(*labelled.last().unwrap(), tok.eos_id().unwrap());
    }
}

#[test]
fn long_dialogues_lose_their_end_never_the_answer() {
    let (tok, template) = words::tokenizer(&vocab());
    let p = prompt_cfg();
    let mut rec = codes::train_and_validation().0[0].clone();
    rec.dialogue = format!("{} {}", rec.dialogue, "patient reports ".repeat(40));
    let b = ExampleBuilder {
        tokenizer: &tok,
        template: &template,
        prompt: &p,
        max_length: 30,
    };
    let e = b.example(&rec).unwrap();
    assert!(e.ids.len() <= 30, "{} tokens", e.ids.len());
    let answer = tok
        .decode(&e.ids[e.prompt_len..], SpecialTokens::Add)
        .unwrap();
    assert_eq!(answer, "J02.9 <|im_end|>");
    let prompt = tok
        .decode(&e.ids[..e.prompt_len], SpecialTokens::Add)
        .unwrap();
    assert!(
        prompt.contains("patient reports sore throat"),
        "the dialogue's start is kept: {prompt}"
    );
    let tight = ExampleBuilder { max_length: 8, ..b };
    let err = tight.example(&rec).unwrap_err().to_string();
    assert!(
        err.contains(&rec.id) && err.contains("max_length 8"),
        "{err}"
    );
}
