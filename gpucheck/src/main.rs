//! `gpucheck`: the engine's GPU correctness checks and benchmarks against `bench/gpu/torch_ref.py`
//! (see the `gpucheck` library and `bench/gpu/README.md`). Prints one JSON line per check and a PASS/FAIL
//! summary; exits non-zero when a check fails.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use engine::train::Backward;
use gpucheck::bench::{self, Sizes, What};
use gpucheck::lora_grad::{self, BackwardChoice};
use gpucheck::memtrace::{self, MemtraceOptions};
use gpucheck::quant::{self, QType, QuantOptions};
use gpucheck::{Common, DTypeArg, DeviceArg, logits};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "GPU correctness checks and benchmarks of the sizespec engine")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
struct Dev {
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: DTypeArg,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Prefill and cached-decode logits against `torch_ref.py logits`.
    Logits {
        #[command(flatten)]
        dev: Dev,
        /// HF folder (config.json + model.safetensors).
        #[arg(long)]
        model: PathBuf,
        /// The reference written by `torch_ref.py logits`.
        #[arg(long = "ref")]
        reference: PathBuf,
        /// Largest relative error ‖ours − ref‖ / ‖ref‖ per tensor.
        #[arg(long, default_value_t = 1e-2)]
        tol: f64,
    },
    /// Loss and LoRA gradients against `torch_ref.py lora-grad` (peft).
    LoraGrad {
        #[command(flatten)]
        dev: Dev,
        #[arg(long)]
        model: PathBuf,
        /// The reference written by `torch_ref.py lora-grad`.
        #[arg(long = "ref")]
        reference: PathBuf,
        #[arg(long, default_value_t = 2e-2)]
        tol: f64,
        /// peft's lora_alpha (default: 2 r, as torch_ref.py).
        #[arg(long)]
        alpha: Option<f64>,
        /// Gradient path(s) to check: plain, recompute (layer by layer) or both.
        #[arg(long, default_value = "both")]
        backward: BackwardChoice,
    },
    /// Our throughput for the workloads of `torch_ref.py bench`, same JSON keys.
    Bench {
        #[command(flatten)]
        dev: Dev,
        #[arg(long)]
        model: PathBuf,
        /// Comma-separated sections: train, prefill, generate, decode.
        #[arg(
            long,
            default_value = "train,prefill,generate,decode",
            value_delimiter = ','
        )]
        what: Vec<What>,
        /// Label for the `shape` key (default: the folder name).
        #[arg(long)]
        shape: Option<String>,
        /// Training gradient path: plain, recompute (layer by layer), keep:N or auto.
        #[arg(long, default_value = "recompute")]
        backward: BackwardArg,
        /// Load the model quantised (q4_0, q4_1, q4k or q8_0) through the cache in `--qcache`
        /// (inference sections only).
        #[arg(long)]
        quant: Option<QType>,
        #[arg(long, default_value = "/tmp/sizespec-quant-cache")]
        qcache: PathBuf,
        #[command(flatten)]
        sizes: SizeArgs,
    },
    /// Dense vs 4-bit load: peak memory, cold/cached load time, logits agreement.
    Quant {
        #[command(flatten)]
        dev: Dev,
        #[arg(long)]
        model: PathBuf,
        /// q4_0, q4_1, q4k or q8_0.
        #[arg(long, default_value = "q4k")]
        qtype: QType,
        /// Quantised-weights cache folder (this model's entry is deleted first, for a cold load).
        #[arg(long, default_value = "/tmp/sizespec-quant-cache")]
        cache_dir: PathBuf,
        /// Fixed ids `[batch, seq]` for the logits comparison.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        seq: usize,
    },
    /// Write a GGUF's tokenizer and chat template as `tokenizer.json` + `tokenizer_config.json`
    /// into an HF folder (the end-to-end run on a GPU gives a random-weight SmolLM2-shaped model
    /// the real tokenizer).
    HfTokenizer {
        #[arg(long)]
        gguf: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// The seed's six tasks on one device: used memory before, at peak, after drop.
    Memtrace {
        #[command(flatten)]
        dev: Dev,
        /// Four HF folders: LLM 1, LLM 2 (4-bit eval), SLM 1, SLM 2 (finetune + eval).
        #[arg(long, value_delimiter = ',', required = true)]
        shapes: Vec<PathBuf>,
        /// Optimiser steps per finetune task.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value_t = 4)]
        ft_batch: usize,
        #[arg(long, default_value_t = 512)]
        ft_seq: usize,
        #[arg(long, default_value_t = 16)]
        rank: usize,
        #[arg(long, default_value = "recompute")]
        backward: BackwardArg,
        #[arg(long, default_value_t = 16)]
        eval_prompts: usize,
        #[arg(long, default_value_t = 1200)]
        eval_len: usize,
        #[arg(long, default_value_t = 16)]
        eval_new: usize,
        #[arg(long, default_value_t = 16)]
        eval_batch: usize,
        #[arg(long, default_value = "q4k")]
        qtype: QType,
        #[arg(long, default_value = "/tmp/sizespec-quant-cache")]
        cache_dir: PathBuf,
        /// How far (MiB) after-drop may be from before-load and still count as returned.
        #[arg(long, default_value_t = 300.0)]
        tolerance_mib: f64,
    },
}

/// `plain`, `recompute` (layer by layer), `keep:N` (the last N layers keep their graph) or `auto`
/// (what the worker picks from the free device memory).
#[derive(Debug, Clone, Copy)]
struct BackwardArg(Backward);

impl std::str::FromStr for BackwardArg {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(Self(match s {
            "plain" => Backward::Plain,
            "recompute" => Backward::RecomputeLayers,
            // Resolved once the model is loaded (`KeepLast(usize::MAX)` marks it).
            "auto" => Backward::KeepLast(usize::MAX),
            _ => match s.strip_prefix("keep:").map(str::parse::<usize>) {
                Some(Ok(n)) => Backward::KeepLast(n),
                _ => return Err(format!("`{s}`: expected plain, recompute, keep:N or auto")),
            },
        }))
    }
}

/// Workload sizes (defaults = torch_ref.py's).
#[derive(Args, Debug, Clone)]
struct SizeArgs {
    #[arg(long, default_value_t = 8)]
    train_batch: usize,
    #[arg(long, default_value_t = 512)]
    train_seq: usize,
    #[arg(long, default_value_t = 3)]
    train_steps: usize,
    #[arg(long, default_value = "16,64", value_delimiter = ',')]
    ranks: Vec<usize>,
    #[arg(long, default_value_t = 8)]
    prefill_batch: usize,
    #[arg(long, default_value_t = 512)]
    prefill_seq: usize,
    #[arg(long, default_value_t = 256)]
    gen_prompts: usize,
    /// Mean prompt length (sd = mean/4, clamped to [mean/3, 2 mean]).
    #[arg(long, default_value_t = 1200)]
    gen_mean_len: usize,
    #[arg(long, default_value_t = 16)]
    gen_new: usize,
    #[arg(long, default_value = "8,16,32,64", value_delimiter = ',')]
    gen_batches: Vec<usize>,
    #[arg(long, default_value_t = 256)]
    decode_prompt: usize,
    #[arg(long, default_value_t = 64)]
    decode_new: usize,
}

impl From<BackwardArg> for Backward {
    fn from(b: BackwardArg) -> Self {
        b.0
    }
}

impl From<SizeArgs> for Sizes {
    fn from(a: SizeArgs) -> Self {
        Self {
            train_batch: a.train_batch,
            train_seq: a.train_seq,
            train_steps: a.train_steps,
            ranks: a.ranks,
            prefill_batch: a.prefill_batch,
            prefill_seq: a.prefill_seq,
            gen_prompts: a.gen_prompts,
            gen_mean_len: a.gen_mean_len,
            gen_new: a.gen_new,
            gen_batches: a.gen_batches,
            decode_prompt: a.decode_prompt,
            decode_new: a.decode_new,
        }
    }
}

/// Print the report's check lines, write its JSON, and say PASS or FAIL.
fn finish<R: Serialize>(
    what: &str,
    report: &R,
    lines: &[serde_json::Value],
    pass: bool,
    json: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    for l in lines {
        println!("{l}");
    }
    finish_quiet(what, report, lines, pass, json)
}

/// [`finish`] for reports whose lines were already printed as they came.
fn finish_quiet<R: Serialize>(
    what: &str,
    report: &R,
    lines: &[serde_json::Value],
    pass: bool,
    json: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        shared::fsutil::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed = lines
        .iter()
        .filter(|l| l.get("pass").and_then(|p| p.as_bool()) == Some(false))
        .count();
    if pass {
        println!("PASS {what}: {} checks", lines.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAIL {what}: {failed} of {} checks failed", lines.len());
        Ok(ExitCode::FAILURE)
    }
}

/// mimalloc keeping freed pages: candle allocates a buffer per op (`engine::alloc`).
#[global_allocator]
static GLOBAL: engine::alloc::MiMalloc = engine::alloc::MiMalloc;

fn main() -> anyhow::Result<ExitCode> {
    engine::alloc::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::HfTokenizer { gguf, out } => {
            engine::load::export::write_hf_tokenizer(&gguf, &out)?;
            println!(
                "wrote {}/tokenizer.json and tokenizer_config.json",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Logits {
            dev,
            model,
            reference,
            tol,
        } => {
            let common = Common::new(dev.device, dev.dtype)?;
            let report = logits::run(
                &common,
                &logits::LogitsOptions {
                    model,
                    reference,
                    tol,
                },
            )?;
            let lines = report
                .checks
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<Vec<_>, _>>()?;
            finish("logits", &report, &lines, report.pass, dev.json.as_ref())
        }
        Cmd::LoraGrad {
            dev,
            model,
            reference,
            tol,
            alpha,
            backward,
        } => {
            let common = Common::new(dev.device, dev.dtype)?;
            let report = lora_grad::run(
                &common,
                &lora_grad::LoraGradOptions {
                    model,
                    reference,
                    tol,
                    alpha,
                    backward,
                },
            )?;
            let lines = report
                .checks
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<Vec<_>, _>>()?;
            finish("lora-grad", &report, &lines, report.pass, dev.json.as_ref())
        }
        Cmd::Bench {
            dev,
            model,
            what,
            shape,
            backward,
            quant,
            qcache,
            sizes,
        } => {
            let common = Common::new(dev.device, dev.dtype)?;
            let json = dev.json.clone();
            let save = |v: &serde_json::Value| -> anyhow::Result<()> {
                if let Some(path) = &json {
                    shared::fsutil::write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                Ok(())
            };
            let report = bench::run(
                &common,
                &bench::BenchOptions {
                    model,
                    what,
                    shape,
                    backward: backward.into(),
                    quant: quant.map(|q| (q.0, qcache)),
                    sizes: sizes.into(),
                },
                |partial| {
                    if let Err(e) = save(partial) {
                        eprintln!("{e:#}");
                    }
                },
            )?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            save(&report)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Quant {
            dev,
            model,
            qtype,
            cache_dir,
            batch,
            seq,
        } => {
            let common = Common::new(dev.device, dev.dtype)?;
            let report = quant::run(
                &common,
                &QuantOptions {
                    model,
                    qtype,
                    cache_dir,
                    batch,
                    seq,
                },
            )?;
            let text = serde_json::to_string_pretty(&report)?;
            println!("{text}");
            if let Some(path) = &dev.json {
                shared::fsutil::write_atomic(path, text.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Memtrace {
            dev,
            shapes,
            steps,
            ft_batch,
            ft_seq,
            rank,
            backward,
            eval_prompts,
            eval_len,
            eval_new,
            eval_batch,
            qtype,
            cache_dir,
            tolerance_mib,
        } => {
            let common = Common::new(dev.device, dev.dtype)?;
            let opts = MemtraceOptions {
                shapes,
                ft_steps: steps,
                ft_batch,
                ft_seq,
                ft_rank: rank,
                backward: backward.into(),
                eval_prompts,
                eval_len,
                eval_new,
                eval_batch,
                qtype: qtype.0,
                cache_dir,
                tolerance_mib,
            };
            let report = memtrace::run(&common, &opts, |s| {
                if let Ok(line) = serde_json::to_string(s) {
                    println!("{line}");
                }
            })?;
            let lines = report
                .steps
                .iter()
                .filter(|s| s.step > 0)
                .map(|s| {
                    serde_json::json!({"check": format!("step {} {:?}", s.step, s.kind), "pass": s.returned})
                })
                .collect::<Vec<_>>();
            if !report.all_returned {
                eprintln!(
                    "memory did not return to the pre-load level after every task: candle's CUDA \
                     allocator may keep freed memory cached; the fallback is one process per task"
                );
            }
            let code = finish_quiet(
                "memtrace",
                &report,
                &lines,
                report.all_returned,
                dev.json.as_ref(),
            )?;
            Ok(code)
        }
    }
}
