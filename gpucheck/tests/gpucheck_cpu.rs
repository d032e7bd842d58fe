//! `gpucheck` end to end on the CPU (f32, tiny shapes): a random HF folder written here, reference
//! tensors computed independently of our engine (candle-transformers' llama for logits; an f64
//! Qwen2 forward written here and central finite differences for LoRA gradients), then the
//! `gpucheck` binary must PASS on them and FAIL when the reference is perturbed.
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

mod gpucheck_support;

use gpucheck_support::{
    dims, f32_map, int_tensor, llama_config, qwen2_config, qwen2_logits_f64, random_rows,
    random_weights, write_hf_folder,
};

const GPUCHECK: &str = env!("CARGO_BIN_EXE_gpucheck");

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
    // loss + 28 gradients, for the plain, the layer-by-layer and the hybrid backward.
    assert_eq!(lines.len(), 3 * (1 + 28), "{stdout}");
    assert!(stdout.contains("PASS lora-grad: 87 checks"), "{stdout}");

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
        [
            format!("plain:{victim}"),
            format!("recompute:{victim}"),
            format!("keep1:{victim}")
        ]
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
    // Step 0 is the warm-up (the first task once more), then the seed's six.
    assert_eq!(
        kinds,
        [
            "eval4bit", "eval4bit", "eval4bit", "finetune", "eval", "finetune", "eval"
        ]
    );
    let models: Vec<&str> = steps.iter().map(|s| s["model"].as_str().unwrap()).collect();
    assert_eq!(
        models,
        [
            &dirs[0], &dirs[0], &dirs[1], &dirs[2], &dirs[2], &dirs[3], &dirs[3]
        ]
    );
    let numbers: Vec<u64> = steps.iter().map(|s| s["step"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4, 5, 6]);
    for s in steps {
        assert!(s["peak_mib"].as_f64() >= s["before_mib"].as_f64(), "{s}");
        if s["step"] != 0 {
            assert_eq!(s["returned"], true, "{s}");
        }
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
