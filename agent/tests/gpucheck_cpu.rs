//! `gpucheck` end to end on the CPU (f32, tiny shapes): a random HF folder written here, reference
//! tensors computed independently of our engine (candle-transformers' llama for logits; an f64
//! Qwen2 forward written here and central finite differences for LoRA gradients), then the `gpucheck` binary must PASS on them and FAIL when the
//! reference is perturbed.
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

const GPUCHECK: &str = env!("CARGO_BIN_EXE_gpucheck");

fn llama_config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 96,
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        "max_position_embeddings": 256, "tie_word_embeddings": false, "bos_token_id": 1,
        "eos_token_id": [2, 3], "hidden_act": "silu", "torch_dtype": "bfloat16"
    })
}

fn qwen2_config() -> Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 40,
        "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 128, "sliding_window": 128, "max_window_layers": 2,
        "use_sliding_window": false, "tie_word_embeddings": true, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu"
    })
}

fn dims(cfg: &Value, key: &str) -> usize {
    cfg[key].as_u64().expect(key) as usize
}

/// Random weights under HF names (`std` like an initialised model, norms near 1), rounded through
/// bf16 as the torch side stores them.
fn random_weights(cfg: &Value, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (v, h, i) = (
        dims(cfg, "vocab_size"),
        dims(cfg, "hidden_size"),
        dims(cfg, "intermediate_size"),
    );
    let (nh, nkv) = (
        dims(cfg, "num_attention_heads"),
        dims(cfg, "num_key_value_heads"),
    );
    let hd = cfg["head_dim"].as_u64().map_or(h / nh, |d| d as usize);
    let bias = cfg["model_type"] == "qwen2";
    let mut m = HashMap::new();
    let mut put = |name: String, shape: &[usize], center: f32, spread: f32| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| center + rng.random_range(-spread..spread))
            .collect();
        let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
        m.insert(name, t.to_dtype(DType::BF16).unwrap());
    };
    put("model.embed_tokens.weight".into(), &[v, h], 0.0, 1.0);
    put("model.norm.weight".into(), &[h], 1.0, 0.2);
    if cfg["tie_word_embeddings"] == false {
        put("lm_head.weight".into(), &[v, h], 0.0, 0.3);
    }
    for l in 0..dims(cfg, "num_hidden_layers") {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.2);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            1.0,
            0.2,
        );
        for (name, out, inp) in [
            ("q_proj", nh * hd, h),
            ("k_proj", nkv * hd, h),
            ("v_proj", nkv * hd, h),
            ("o_proj", h, nh * hd),
        ] {
            put(
                format!("{p}.self_attn.{name}.weight"),
                &[out, inp],
                0.0,
                0.3,
            );
            if bias && name != "o_proj" {
                put(format!("{p}.self_attn.{name}.bias"), &[out], 0.0, 0.3);
            }
        }
        for (name, out, inp) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)] {
            put(format!("{p}.mlp.{name}.weight"), &[out, inp], 0.0, 0.3);
        }
    }
    m
}

/// An HF folder as `torch_ref.py weights` writes it: config.json + model.safetensors, no tokenizer.
fn write_hf_folder(dir: &Path, cfg: &Value, weights: &HashMap<String, Tensor>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(cfg)?)?;
    candle_core::safetensors::save(weights, dir.join("model.safetensors"))?;
    Ok(())
}

fn f32_map(weights: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    weights
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F32).unwrap()))
        .collect()
}

fn int_tensor(rows: &[Vec<i64>]) -> Tensor {
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<i32> = rows.iter().flatten().map(|&x| x as i32).collect();
    Tensor::from_vec(flat, (b, t), &Device::Cpu).unwrap()
}

fn random_rows(b: usize, t: usize, vocab: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..b)
        .map(|_| (0..t).map(|_| rng.random_range(3..vocab as i64)).collect())
        .collect()
}

/// The logits reference from candle-transformers' llama (its own attention, RoPE scaling and cache).
fn llama_reference(
    cfg: &Value,
    weights: &HashMap<String, Tensor>,
    ids: &[Vec<i64>],
    next: &[Vec<i64>],
) -> Result<HashMap<String, Tensor>> {
    let dev = Device::Cpu;
    let lcfg: llama::LlamaConfig = serde_json::from_value(cfg.clone())?;
    let lcfg = lcfg.into_config(false);
    let vb = VarBuilder::from_tensors(f32_map(weights), DType::F32, &dev);
    let model = llama::Llama::load(vb, &lcfg)?;
    let mut cache = llama::Cache::new(true, DType::F32, &lcfg, &dev)?;
    let to_u32 = |rows: &[Vec<i64>]| int_tensor(rows).to_dtype(DType::U32).unwrap();
    let (ids_t, next_t) = (to_u32(ids), to_u32(next));
    let t = ids[0].len();
    let mut out = HashMap::new();
    out.insert("ids".to_string(), int_tensor(ids));
    out.insert("next_ids".to_string(), int_tensor(next));
    out.insert(
        "prefill_last".to_string(),
        model.forward(&ids_t, 0, &mut cache)?,
    );
    for s in 0..next[0].len() {
        let x = next_t.i((.., s..s + 1))?.contiguous()?;
        out.insert(format!("decode_{s}"), model.forward(&x, t + s, &mut cache)?);
    }
    Ok(out)
}

fn run_gpucheck(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(GPUCHECK)
        .args(args)
        .output()
        .context("running gpucheck")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("gpucheck {args:?}\n{stdout}{stderr}");
    Ok((out.status.success(), stdout))
}

fn check_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn logits_pass_against_candle_transformers_llama_and_fail_when_perturbed() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = llama_config();
    let weights = random_weights(&cfg, 11);
    let model_dir = tmp.path().join("llama-tiny");
    write_hf_folder(&model_dir, &cfg, &weights)?;
    let ids = random_rows(2, 12, 96, 1);
    let next = random_rows(2, 3, 96, 2);
    let mut reference = llama_reference(&cfg, &weights, &ids, &next)?;
    let ref_path = tmp.path().join("ref.safetensors");
    candle_core::safetensors::save(&reference, &ref_path)?;

    let report = tmp.path().join("report.json");
    let args = [
        "logits",
        "--model",
        path(&model_dir),
        "--ref",
        path(&ref_path),
        "--device",
        "cpu",
        "--dtype",
        "f32",
        "--tol",
        "1e-4",
        "--json",
        path(&report),
    ];
    let (ok, stdout) = run_gpucheck(&args)?;
    assert!(
        ok,
        "gpucheck logits failed on a matching reference:\n{stdout}"
    );
    assert!(stdout.contains("PASS logits: 4 checks"), "{stdout}");
    let lines = check_lines(&stdout);
    let names: Vec<&str> = lines.iter().map(|l| l["check"].as_str().unwrap()).collect();
    assert_eq!(names, ["prefill_last", "decode_0", "decode_1", "decode_2"]);
    for l in &lines {
        assert!(l["rel_err"].as_f64().unwrap() < 1e-4, "{l}");
        assert_eq!(l["argmax_agree"].as_f64(), Some(1.0), "{l}");
    }
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    assert_eq!(written["pass"], true);

    // A 1% change to one decode step must be caught, and named.
    let d1 = reference["decode_1"].clone();
    let bumped = (&d1 + (d1.abs()?.mean_all()?.to_scalar::<f32>()? as f64 * 0.05))?;
    reference.insert("decode_1".into(), bumped);
    candle_core::safetensors::save(&reference, &ref_path)?;
    let (ok, stdout) = run_gpucheck(&args[..args.len() - 2])?;
    assert!(
        !ok,
        "gpucheck logits passed a perturbed reference:\n{stdout}"
    );
    assert!(stdout.contains("FAIL logits: 1 of 4"), "{stdout}");
    let failed: Vec<Value> = check_lines(&stdout)
        .into_iter()
        .filter(|l| l["pass"] == false)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["check"], "decode_1");
    Ok(())
}

#[test]
fn logits_reject_a_reference_without_a_decode_step() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = llama_config();
    let weights = random_weights(&cfg, 3);
    let model_dir = tmp.path().join("m");
    write_hf_folder(&model_dir, &cfg, &weights)?;
    let mut reference = llama_reference(
        &cfg,
        &weights,
        &random_rows(1, 5, 96, 1),
        &random_rows(1, 2, 96, 2),
    )?;
    reference.remove("decode_1");
    let ref_path = tmp.path().join("ref.safetensors");
    candle_core::safetensors::save(&reference, &ref_path)?;
    let out = Command::new(GPUCHECK)
        .args([
            "logits",
            "--model",
            path(&model_dir),
            "--ref",
            path(&ref_path),
        ])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`decode_1`") && err.contains("missing"),
        "{err}"
    );
    Ok(())
}

const R: usize = 2;
const ALPHA: f64 = 4.0;
const PROJ: [(&str, &str); 7] = [
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
];

/// peft-named adapters with random (non-zero) A and B, as f32 values.
fn random_adapters(cfg: &Value, weights: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut out = Vec::new();
    for l in 0..dims(cfg, "num_hidden_layers") {
        for (block, proj) in PROJ {
            let (o, i) = weights[&format!("model.layers.{l}.{block}.{proj}.weight")]
                .dims2()
                .unwrap();
            let base = format!("base_model.model.model.layers.{l}.{block}.{proj}");
            for (factor, shape) in [("lora_A", (R, i)), ("lora_B", (o, R))] {
                let data: Vec<f32> = (0..shape.0 * shape.1)
                    .map(|_| rng.random_range(-0.3f32..0.3))
                    .collect();
                let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
                out.push((format!("{base}.{factor}.weight"), t));
            }
        }
    }
    out
}

/// Qwen2 forward in f64 from basic candle ops, written from HF's `modeling_qwen2` independently of
/// the engine (candle-transformers' fused RMSNorm has no f64 kernel): full-sequence logits `[b, t, v]`.
fn qwen2_logits_f64(cfg: &Value, w: &HashMap<String, Tensor>, ids: &Tensor) -> Tensor {
    let r = |t: candle_core::Result<Tensor>| t.unwrap();
    let (b, t) = ids.dims2().unwrap();
    let h = dims(cfg, "hidden_size");
    let (nh, nkv) = (
        dims(cfg, "num_attention_heads"),
        dims(cfg, "num_key_value_heads"),
    );
    let hd = h / nh;
    let eps = cfg["rms_norm_eps"].as_f64().unwrap();
    let theta = cfg["rope_theta"].as_f64().unwrap();
    let norm = |x: &Tensor, name: &str| {
        let var = r(r(x.sqr()).mean_keepdim(D::Minus1));
        r(r(x.broadcast_div(&r(r(var + eps).sqrt()))).broadcast_mul(&w[name]))
    };
    let lin = |x: &Tensor, name: &str| {
        let y = r(x.broadcast_matmul(&r(w[&format!("{name}.weight")].t())));
        match w.get(&format!("{name}.bias")) {
            Some(bias) => r(y.broadcast_add(bias)),
            None => y,
        }
    };
    let inv: Vec<f64> = (0..hd / 2)
        .map(|i| theta.powf(-((2 * i) as f64) / hd as f64))
        .collect();
    let ang: Vec<f64> = (0..t)
        .flat_map(|p| inv.iter().map(move |f| p as f64 * f))
        .collect();
    let ang = r(Tensor::from_vec(ang, (t, hd / 2), &Device::Cpu));
    let cos = r(Tensor::cat(&[&r(ang.cos()), &r(ang.cos())], 1));
    let sin = r(Tensor::cat(&[&r(ang.sin()), &r(ang.sin())], 1));
    let rope = |x: &Tensor| {
        let x1 = r(x.narrow(3, 0, hd / 2));
        let x2 = r(x.narrow(3, hd / 2, hd / 2));
        let rot = r(Tensor::cat(&[&r(x2.neg()), &x1], 3));
        r(r(x.broadcast_mul(&cos)) + r(rot.broadcast_mul(&sin)))
    };
    let mask: Vec<f64> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f64::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = r(Tensor::from_vec(mask, (t, t), &Device::Cpu));
    let mut x = r(
        r(w["model.embed_tokens.weight"].index_select(&r(ids.flatten_all()), 0)).reshape((b, t, h)),
    );
    for l in 0..dims(cfg, "num_hidden_layers") {
        let p = format!("model.layers.{l}");
        let hn = norm(&x, &format!("{p}.input_layernorm.weight"));
        let heads = |y: Tensor, n: usize| r(r(y.reshape((b, t, n, hd))).transpose(1, 2));
        let q = rope(&heads(lin(&hn, &format!("{p}.self_attn.q_proj")), nh));
        let k = rope(&heads(lin(&hn, &format!("{p}.self_attn.k_proj")), nkv));
        let v = heads(lin(&hn, &format!("{p}.self_attn.v_proj")), nkv);
        let rep = |z: Tensor| {
            let z = r(r(z.unsqueeze(2)).broadcast_as((b, nkv, nh / nkv, t, hd)));
            r(r(z.contiguous()).reshape((b, nh, t, hd)))
        };
        let (k, v) = (rep(k), rep(v));
        let s = r(r(q.contiguous()).matmul(&r(r(k.t()).contiguous())));
        let s = r(r(s * (1.0 / (hd as f64).sqrt())).broadcast_add(&mask));
        let e = r(r(s.broadcast_sub(&r(s.max_keepdim(D::Minus1)))).exp());
        let pr = r(e.broadcast_div(&r(e.sum_keepdim(D::Minus1))));
        let y = r(r(r(pr.matmul(&v)).transpose(1, 2)).reshape((b, t, nh * hd)));
        x = r(&x + lin(&y, &format!("{p}.self_attn.o_proj")));
        let hn = norm(&x, &format!("{p}.post_attention_layernorm.weight"));
        let g = r(lin(&hn, &format!("{p}.mlp.gate_proj")).silu());
        let u = lin(&hn, &format!("{p}.mlp.up_proj"));
        x = r(&x + lin(&r(g * u), &format!("{p}.mlp.down_proj")));
    }
    let x = norm(&x, "model.norm.weight");
    r(x.broadcast_matmul(&r(w["model.embed_tokens.weight"].t())))
}

/// Mean cross-entropy over HF-style labels (shifted), in f64, with every adapter merged into its
/// base weight: `W + alpha/r · B·A`.
fn qwen2_loss(
    cfg: &Value,
    weights: &HashMap<String, Tensor>,
    adapters: &[(String, Tensor)],
    ids: &Tensor,
    labels: &[Vec<i64>],
) -> f64 {
    let mut w: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F64).unwrap()))
        .collect();
    for pair in adapters.chunks(2) {
        let (a_name, a) = &pair[0];
        let (_, b) = &pair[1];
        let name = a_name
            .strip_prefix("base_model.model.")
            .unwrap()
            .replace(".lora_A.weight", ".weight");
        let delta = (b.matmul(a).unwrap() * (ALPHA / R as f64)).unwrap();
        let merged = (&w[&name] + delta).unwrap();
        w.insert(name, merged);
    }
    let logits = qwen2_logits_f64(cfg, &w, ids);
    let lse = logits
        .exp()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .log()
        .unwrap();
    let logp: Vec<Vec<Vec<f64>>> = logits.broadcast_sub(&lse).unwrap().to_vec3().unwrap();
    let (mut sum, mut n) = (0.0, 0);
    for (r, row) in labels.iter().enumerate() {
        for j in 1..row.len() {
            if row[j] != -100 {
                sum -= logp[r][j - 1][row[j] as usize];
                n += 1;
            }
        }
    }
    sum / n as f64
}

#[test]
fn lora_grad_passes_against_finite_differences_and_fails_when_a_gradient_is_off() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = qwen2_config();
    let weights = random_weights(&cfg, 5);
    let model_dir = tmp.path().join("qwen2-tiny");
    write_hf_folder(&model_dir, &cfg, &weights)?;
    let ids = random_rows(2, 10, 40, 3);
    let mut labels = ids.clone();
    for row in &mut labels {
        row[..4].fill(-100);
    }
    let ids_t = int_tensor(&ids).to_dtype(DType::U32)?;
    let adapters: Vec<(String, Tensor)> = random_adapters(&cfg, &weights)
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::F64).unwrap()))
        .collect();
    let loss = qwen2_loss(&cfg, &weights, &adapters, &ids_t, &labels);

    let mut reference = HashMap::new();
    reference.insert("ids".to_string(), int_tensor(&ids));
    reference.insert("labels".to_string(), int_tensor(&labels));
    reference.insert(
        "loss".to_string(),
        Tensor::new(&[loss as f32], &Device::Cpu)?,
    );
    // Central differences in f64: exact to ~1e-8, far below the f32 engine's error.
    let eps = 1e-5;
    for (k, (name, value)) in adapters.iter().enumerate() {
        let shape = value.dims().to_vec();
        let flat: Vec<f64> = value.flatten_all()?.to_vec1()?;
        let mut grad = vec![0f64; flat.len()];
        for e in 0..flat.len() {
            let eval = |delta: f64| {
                let mut v = flat.clone();
                v[e] += delta;
                let mut adapters = adapters.clone();
                adapters[k].1 = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
                qwen2_loss(&cfg, &weights, &adapters, &ids_t, &labels)
            };
            grad[e] = (eval(eps) - eval(-eps)) / (2.0 * eps);
        }
        reference.insert(name.clone(), value.to_dtype(DType::F32)?);
        let g = Tensor::from_vec(grad, shape.as_slice(), &Device::Cpu)?;
        reference.insert(format!("{name}.grad"), g.to_dtype(DType::F32)?);
    }
    let ref_path = tmp.path().join("grad.safetensors");
    candle_core::safetensors::save(&reference, &ref_path)?;

    let args = [
        "lora-grad",
        "--model",
        path(&model_dir),
        "--ref",
        path(&ref_path),
        "--device",
        "cpu",
        "--dtype",
        "f32",
        "--tol",
        "1e-3",
    ];
    let (ok, stdout) = run_gpucheck(&args)?;
    assert!(ok, "lora-grad failed on a matching reference:\n{stdout}");
    let lines = check_lines(&stdout);
    // loss + 28 gradients, for the plain and the layer-by-layer backward.
    assert_eq!(lines.len(), 2 * (1 + 28), "{stdout}");
    assert!(stdout.contains("PASS lora-grad: 58 checks"), "{stdout}");

    let victim = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight.grad";
    let off = (&reference[victim] * 1.05)?;
    reference.insert(victim.to_string(), off);
    candle_core::safetensors::save(&reference, &ref_path)?;
    let (ok, stdout) = run_gpucheck(&args)?;
    assert!(!ok, "lora-grad passed a 5% wrong gradient:\n{stdout}");
    let failed: Vec<String> = check_lines(&stdout)
        .into_iter()
        .filter(|l| l["pass"] == false)
        .map(|l| l["check"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        failed,
        [format!("plain:{victim}"), format!("recompute:{victim}")]
    );
    Ok(())
}

fn run_json(args: &[&str]) -> Result<Value> {
    let (ok, _) = run_gpucheck(args)?;
    anyhow::ensure!(ok, "gpucheck {args:?} failed");
    let json_path = args[args.iter().position(|a| *a == "--json").unwrap() + 1];
    Ok(serde_json::from_str(&std::fs::read_to_string(json_path)?)?)
}

#[test]
fn quant_reports_cold_then_cached_load_and_agreement() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = llama_config();
    let model_dir = tmp.path().join("llama-tiny");
    write_hf_folder(&model_dir, &cfg, &random_weights(&cfg, 4))?;
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("quant.json");
    let args = [
        "quant",
        "--model",
        path(&model_dir),
        "--qtype",
        "q4_0",
        "--cache-dir",
        path(&cache),
        "--seq",
        "8",
        "--json",
        path(&out),
    ];
    let r = run_json(&args)?;
    assert_eq!(r["quant_cold"]["cache"], "written", "{r}");
    assert_eq!(r["quant_cached"]["cache"], "hit", "{r}");
    assert_eq!(r["cached_equals_cold"], true, "{r}");
    assert!(r["cache_file_mib"].as_f64().unwrap() > 0.0, "{r}");
    let rel = r["agreement"]["rel_err"].as_f64().unwrap();
    // 4-bit weights change the logits, but not beyond recognition.
    assert!(rel > 0.0 && rel < 0.5, "{r}");
    assert!(r["dense"]["load_s"].as_f64().unwrap() > 0.0, "{r}");
    // A second run is cold again: its own cache entry is removed first.
    let r2 = run_json(&args)?;
    assert_eq!(r2["quant_cold"]["cache"], "written", "{r2}");
    Ok(())
}

#[test]
fn memtrace_runs_the_six_tasks_in_the_seed_order() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (llama, qwen) = (llama_config(), qwen2_config());
    let dirs: Vec<String> = [
        ("l1", &llama, 1),
        ("l2", &llama, 2),
        ("q1", &qwen, 3),
        ("q2", &qwen, 4),
    ]
    .into_iter()
    .map(|(name, cfg, seed)| {
        let d = tmp.path().join(name);
        write_hf_folder(&d, cfg, &random_weights(cfg, seed)).unwrap();
        path(&d).to_string()
    })
    .collect();
    let out = tmp.path().join("memtrace.json");
    let shapes = dirs.join(",");
    let cache = tmp.path().join("c");
    let args = [
        "memtrace",
        "--shapes",
        &shapes,
        "--steps",
        "2",
        "--ft-batch",
        "2",
        "--ft-seq",
        "12",
        "--rank",
        "2",
        "--eval-prompts",
        "3",
        "--eval-len",
        "10",
        "--eval-new",
        "2",
        "--eval-batch",
        "2",
        "--qtype",
        "q4_0",
        "--cache-dir",
        path(&cache),
        "--json",
        path(&out),
    ];
    let (ok, stdout) = run_gpucheck(&args)?;
    assert!(ok, "{stdout}");
    assert!(stdout.contains("PASS memtrace: 6 checks"), "{stdout}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let steps = r["steps"].as_array().unwrap();
    let kinds: Vec<&str> = steps.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "eval4bit", "eval4bit", "finetune", "eval", "finetune", "eval"
        ]
    );
    let models: Vec<&str> = steps.iter().map(|s| s["model"].as_str().unwrap()).collect();
    assert_eq!(
        models,
        [&dirs[0], &dirs[1], &dirs[2], &dirs[2], &dirs[3], &dirs[3]]
    );
    for s in steps {
        assert!(s["peak_mib"].as_f64() >= s["before_mib"].as_f64(), "{s}");
        assert_eq!(s["returned"], true, "{s}");
    }
    Ok(())
}

#[test]
fn bench_writes_the_torch_ref_keys() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = llama_config();
    let model_dir = tmp.path().join("llama-tiny");
    write_hf_folder(&model_dir, &cfg, &random_weights(&cfg, 6))?;
    let out = tmp.path().join("bench.json");
    let r = run_json(&[
        "bench",
        "--model",
        path(&model_dir),
        "--shape",
        "tiny",
        "--train-batch",
        "2",
        "--train-seq",
        "16",
        "--train-steps",
        "1",
        "--ranks",
        "2,4",
        "--prefill-batch",
        "2",
        "--prefill-seq",
        "16",
        "--gen-prompts",
        "5",
        "--gen-mean-len",
        "12",
        "--gen-new",
        "3",
        "--gen-batches",
        "2,4",
        "--decode-prompt",
        "8",
        "--decode-new",
        "4",
        "--json",
        path(&out),
    ])?;
    assert_eq!(r["shape"], "tiny");
    assert_eq!(r["card"], "cpu");
    for key in ["train_r2", "train_r4"] {
        assert!(r[key]["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r[key]["peak_gib"].is_number(), "{r}");
    }
    assert!(r["prefill"]["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
    let all = r["generate"]["all"].as_array().unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all.iter()
            .all(|x| x["samples_per_s"].as_f64().unwrap() > 0.0),
        "{r}"
    );
    let best = &r["generate"]["best"];
    assert!(
        all.iter()
            .all(|x| x["samples_per_s"].as_f64() <= best["samples_per_s"].as_f64())
    );
    assert!(
        r["decode"]["tokens_per_s_incl_prefill"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    Ok(())
}
