//! `gpucheck`: the engine's GPU correctness checks and benchmarks against `bench/gpu/torch_ref.py`
//! (see `agent::gpucheck` and `bench/gpu/README.md`). Prints one JSON line per check and a PASS/FAIL
//! summary; exits non-zero when a check fails.
use std::path::PathBuf;
use std::process::ExitCode;

use agent::gpucheck::bench::{self, Sizes, What};
use agent::gpucheck::lora_grad::{self, BackwardChoice};
use agent::gpucheck::{Common, DTypeArg, DeviceArg, logits};
use agent::train::Backward;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
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
        /// Training gradient path: plain or recompute (layer by layer).
        #[arg(long, default_value = "recompute")]
        backward: BackwardArg,
        #[command(flatten)]
        sizes: SizeArgs,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BackwardArg {
    Plain,
    Recompute,
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

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
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
            sizes,
        } => {
            let common = Common::new(dev.device, dev.dtype)?;
            let report = bench::run(
                &common,
                &bench::BenchOptions {
                    model,
                    what,
                    shape,
                    backward: match backward {
                        BackwardArg::Plain => Backward::Plain,
                        BackwardArg::Recompute => Backward::RecomputeLayers,
                    },
                    sizes: sizes.into(),
                },
            )?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if let Some(path) = &dev.json {
                shared::fsutil::write_atomic(
                    path,
                    serde_json::to_string_pretty(&report)?.as_bytes(),
                )
                .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
