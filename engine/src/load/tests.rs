//! Loading tests on a tiny HF folder made in the test: single and sharded safetensors, tokenizer and
//! template files, error messages, and the quantised-weights cache.
use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::quant::{CacheOutcome, cache_path, cached_config_json, load_quantized_cached};
use super::*;
use crate::model::tests::{load_ours, max_abs_diff, random_weights};
use crate::model::{Config, LoadOptions};
use crate::tokenizer::SpecialTokens;

fn config_json() -> String {
    json!({
        "model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": false,
        "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16", "architectures": ["LlamaForCausalLM"]
    })
    .to_string()
}

fn tokenizer_json() -> String {
    let specials = ["<|im_start|>", "<|im_end|>"];
    let words = [
        "system",
        "user",
        "assistant",
        "hello",
        "code",
        "J45",
        "[UNK]",
    ];
    let mut vocab = serde_json::Map::new();
    for (i, w) in specials.iter().chain(words.iter()).enumerate() {
        vocab.insert(w.to_string(), json!(i));
    }
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true})
        })
        .collect();
    json!({"version": "1.0", "added_tokens": added, "pre_tokenizer": {"type": "Whitespace"},
           "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}})
    .to_string()
}

/// Write a complete HF folder; `shards` = 1 writes `model.safetensors`, 2 an index and two shards.
fn write_folder(dir: &Path, weights: &HashMap<String, Tensor>, shards: usize) {
    std::fs::write(dir.join("config.json"), config_json()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                    {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"bos_token": null, "eos_token": {"content": "<|im_end|>"}, "chat_template": template}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        json!({"eos_token_id": [1, 0]}).to_string(),
    )
    .unwrap();
    let bf16: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::BF16).unwrap()))
        .collect();
    if shards == 1 {
        candle_core::safetensors::save(&bf16, dir.join("model.safetensors")).unwrap();
        return;
    }
    let mut names: Vec<&String> = bf16.keys().collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (s, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
        let part: HashMap<String, Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), bf16[*n].clone()))
            .collect();
        candle_core::safetensors::save(&part, dir.join(&file)).unwrap();
        for n in chunk {
            map.insert((*n).clone(), json!(file));
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
}

fn cfg() -> Config {
    Config::from_hf_json(&config_json(), "test").unwrap()
}

/// The reference: the same (bf16-rounded) weights loaded from memory.
fn reference(weights: &HashMap<String, Tensor>) -> crate::model::Model {
    let rounded: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap(),
            )
        })
        .collect();
    load_ours(&cfg(), &rounded)
}

fn logits(m: &crate::model::Model) -> Tensor {
    let ids = Tensor::new(&[[3u32, 5, 7, 2, 60, 9]], &Device::Cpu).unwrap();
    m.forward(&ids, &m.attn_ctx(&[0], 0, 6).unwrap(), None)
        .unwrap()
}

#[test]
fn hf_folder_single_and_sharded_match_in_memory_weights() {
    let weights = random_weights(&cfg(), 21);
    let want = logits(&reference(&weights));
    for shards in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &weights, shards);
        let src = resolve(dir.path().to_str().unwrap(), None).unwrap();
        assert_eq!(src, ModelSource::HfDir(dir.path().to_path_buf()));
        let lm = load(&src, &LoadOptions::cpu_f32()).unwrap();
        assert_eq!(
            max_abs_diff(&logits(&lm.model), &want),
            0.0,
            "{shards} shard(s)"
        );
        // generation_config's ids join config.json's; <|im_end|> (id 1) is EOS and a stop id.
        assert_eq!(lm.model.config().eos_token_ids, vec![1, 0]);
        assert_eq!(lm.tokenizer.eos_id(), Some(1));
        assert!(lm.tokenizer.is_stop(1));
        let (p, full) = lm.template.render_full(&[], "J45").unwrap();
        assert_eq!(p, "<|im_start|>assistant\n");
        assert_eq!(full, "<|im_start|>assistant\nJ45<|im_end|>");
        assert_eq!(
            lm.tokenizer.encode(&full, SpecialTokens::Omit).unwrap(),
            vec![0, 4, 7, 1]
        );
    }
}

#[test]
fn missing_and_broken_files_are_named() {
    let weights = random_weights(&cfg(), 22);
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), &weights, 1);
    let src = ModelSource::HfDir(dir.path().to_path_buf());
    let err = |src: &ModelSource| load(src, &LoadOptions::cpu_f32()).unwrap_err().to_string();

    std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
    let e = err(&src);
    assert!(
        e.contains("tokenizer.json") && e.contains("not a valid tokenizer.json"),
        "{e}"
    );
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer_json()).unwrap();

    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = err(&src);
    assert!(
        e.contains("model.safetensors") && e.contains("missing"),
        "{e}"
    );

    let mut wrong = weights.clone();
    wrong.insert(
        "model.norm.weight".into(),
        Tensor::zeros(16, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&wrong, dir.path().join("model.safetensors")).unwrap();
    let e = err(&src);
    assert!(
        e.contains("model.norm.weight") && e.contains("[16]") && e.contains("[32]"),
        "{e}"
    );

    let mut missing = weights.clone();
    missing.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&missing, dir.path().join("model.safetensors")).unwrap();
    let e = err(&src);
    assert!(e.contains("model.layers.1.mlp.up_proj.weight"), "{e}");

    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = err(&src);
    assert!(e.contains("config.json") && e.contains("missing"), "{e}");

    let e = resolve("/nonexistent/model.gguf", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/model.gguf"), "{e}");
}

#[test]
fn quantized_load_is_cached_and_close_to_f32() {
    let weights = random_weights(&cfg(), 23);
    let want = logits(&reference(&weights));
    let range: f32 = want.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), &weights, 1);
    let cache = tempfile::tempdir().unwrap();
    let src = ModelSource::HfDir(dir.path().to_path_buf());
    let opts = LoadOptions::cpu_f32();
    // Tolerances: max abs logit error relative to the largest logit, measured on this tiny model
    // (random weights in [-0.3, 0.3]): Q8_0 ~3%, 4-bit ~20% (random
    // uniform weights are hard to quantise; activations are quantised to 8 bits too). Q4_1 rows of an
    // odd number of blocks (in = 32) stay dense: candle's Q4_1 dot product takes blocks in pairs.
    for (qtype, tol) in [
        (GgmlDType::Q8_0, 0.05f32),
        (GgmlDType::Q4_0, 0.3),
        (GgmlDType::Q4_1, 0.3),
    ] {
        let (first, outcome) =
            load_quantized_cached(&src, "org/tiny", None, qtype, &opts, cache.path()).unwrap();
        assert_eq!(outcome, CacheOutcome::Written, "{qtype:?}");
        let path = cache_path(cache.path(), "org/tiny", None, qtype, DType::F32);
        assert!(path.is_file());
        assert_eq!(cached_config_json(&path).unwrap(), config_json());
        let got = logits(&first.model);
        let d = max_abs_diff(&got, &want);
        println!("{qtype:?}: max abs logit diff {d} (largest logit {range})");
        assert!(
            d > 0.0 && d < tol * range,
            "{qtype:?}: max abs diff {d}, range {range}"
        );
        // The second load reads the cache and gives the very same model.
        let (second, outcome) =
            load_quantized_cached(&src, "org/tiny", None, qtype, &opts, cache.path()).unwrap();
        assert_eq!(outcome, CacheOutcome::Hit, "{qtype:?}");
        assert_eq!(max_abs_diff(&logits(&second.model), &got), 0.0, "{qtype:?}");
    }
    // Another revision is another cache entry.
    assert_ne!(
        cache_path(
            cache.path(),
            "org/tiny",
            Some("abc"),
            GgmlDType::Q4_0,
            DType::F32
        ),
        cache_path(cache.path(), "org/tiny", None, GgmlDType::Q4_0, DType::F32)
    );
}

/// Write `weights` as a llama.cpp-style GGUF: llama.cpp names, q/k rows permuted the way its
/// converter does, tokenizer metadata; projections in `proj_type`, the rest f32.
fn write_llama_cpp_gguf(path: &Path, weights: &HashMap<String, Tensor>, proj_type: GgmlDType) {
    use candle_core::quantized::QTensor;
    use candle_core::quantized::gguf_file::Value as V;
    let c = cfg();
    let mut md: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String("llama".into())),
        (
            "llama.embedding_length".into(),
            V::U32(c.hidden_size as u32),
        ),
        (
            "llama.block_count".into(),
            V::U32(c.num_hidden_layers as u32),
        ),
        (
            "llama.feed_forward_length".into(),
            V::U32(c.intermediate_size as u32),
        ),
        (
            "llama.attention.head_count".into(),
            V::U32(c.num_attention_heads as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            V::U32(c.num_key_value_heads as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            V::F32(c.rms_norm_eps as f32),
        ),
        ("llama.rope.freq_base".into(), V::F32(c.rope_theta as f32)),
        (
            "llama.context_length".into(),
            V::U32(c.max_position_embeddings as u32),
        ),
        ("llama.vocab_size".into(), V::U32(c.vocab_size as u32)),
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), V::String("smollm".into())),
        ("tokenizer.ggml.bos_token_id".into(), V::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(1)),
    ];
    let mut tokens: Vec<V> = ["<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|t| V::String(t.to_string()))
        .collect();
    let mut types = vec![V::I32(3), V::I32(3)];
    for c in (b'!'..=b'~').map(char::from) {
        tokens.push(V::String(c.to_string()));
        types.push(V::I32(1));
    }
    md.push(("tokenizer.ggml.tokens".into(), V::Array(tokens)));
    md.push(("tokenizer.ggml.token_type".into(), V::Array(types)));
    md.push(("tokenizer.ggml.merges".into(), V::Array(vec![])));
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in weights {
        let heads = if name.contains("q_proj") {
            Some(c.num_attention_heads)
        } else if name.contains("k_proj") {
            Some(c.num_key_value_heads)
        } else {
            None
        };
        let t = match heads {
            Some(h) => {
                // llama.cpp's permute: gguf row src[k] holds HF row k.
                let src = super::gguf::unpermute_rows(t.dim(0).unwrap(), h);
                let mut inv = vec![0u32; src.len()];
                for (k, &s) in src.iter().enumerate() {
                    inv[s] = k as u32;
                }
                let n = inv.len();
                t.index_select(&Tensor::from_vec(inv, n, &Device::Cpu).unwrap(), 0)
                    .unwrap()
            }
            None => t.clone(),
        };
        let is_proj = name.contains("_proj");
        let q = QTensor::quantize(&t, if is_proj { proj_type } else { GgmlDType::F32 }).unwrap();
        tensors.push((super::gguf::gguf_name(name).unwrap(), q));
    }
    let md_ref: Vec<(&str, &V)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_ref: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &md_ref, &t_ref).unwrap();
}

#[test]
fn llama_cpp_gguf_loads_with_q_k_unpermuted() {
    let weights = random_weights(&cfg(), 24);
    let dir = tempfile::tempdir().unwrap();
    let want = logits(&load_ours(&cfg(), &weights));

    let path = dir.path().join("tiny-f32.gguf");
    write_llama_cpp_gguf(&path, &weights, GgmlDType::F32);
    let src = resolve(path.to_str().unwrap(), None).unwrap();
    let lm = load(&src, &LoadOptions::cpu_f32()).unwrap();
    assert_eq!(lm.model.config().num_key_value_heads, 2);
    assert!(!lm.model.config().tie_word_embeddings);
    assert!(max_abs_diff(&logits(&lm.model), &want) < 1e-5, "dense GGUF");
    assert_eq!(
        lm.tokenizer
            .encode("<|im_start|>ab<|im_end|>", SpecialTokens::Omit)
            .unwrap()
            .len(),
        4
    );

    // Quantised rows are permuted block-wise: the same Q8_0 model as quantising the HF weights.
    let path = dir.path().join("tiny-q8.gguf");
    write_llama_cpp_gguf(&path, &weights, GgmlDType::Q8_0);
    let q8 = LoadOptions {
        format: crate::model::WeightFormat::Quantized(GgmlDType::Q8_0),
        ..LoadOptions::cpu_f32()
    };
    let lm = load(&ModelSource::Gguf(path), &q8).unwrap();
    let reference = crate::model::Model::load(
        &crate::model::TensorMap::new(weights.clone(), "mem"),
        &cfg(),
        &q8,
    )
    .unwrap();
    assert_eq!(
        max_abs_diff(&logits(&lm.model), &logits(&reference)),
        0.0,
        "Q8_0 GGUF"
    );
}

#[test]
fn bf16_model_is_close_to_f32() {
    let weights = random_weights(&cfg(), 25);
    let f32_model = reference(&weights);
    let opts = LoadOptions {
        dtype: DType::BF16,
        ..LoadOptions::cpu_f32()
    };
    let bf16 = crate::model::Model::load(
        &crate::model::TensorMap::new(weights.clone(), "mem"),
        &cfg(),
        &opts,
    )
    .unwrap();
    assert_eq!(bf16.dtype(), DType::BF16);
    let a = logits(&f32_model);
    let b = logits(&bf16);
    assert_eq!(b.dtype(), DType::F32, "logits are always f32");
    let range: f32 = a.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    let d = max_abs_diff(&a, &b);
    assert!(d < 0.05 * range, "bf16 vs f32: {d} (range {range})");
}
