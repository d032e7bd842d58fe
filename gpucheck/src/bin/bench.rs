//! `bench`: CPU throughput of the engine on SmolLM2-135M-Instruct (the GGUF fetched by
//! `scripts/fetch-smollm2.sh`): batched greedy generation (Q8_0 as the worker loads a 4-bit GGUF on
//! the CPU, and dense f32 as a finetuned SLM is evaluated) and LoRA training steps (f32, plain and
//! layer-by-layer backward), and whole LoRA training runs with fixed vs length-grouped micro-batches
//! on a skewed length distribution (`--only batching`). Prints a table and appends it to `bench/RESULTS.md` with machine,
//! date and commit. See `bench/README.md`.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Var};
use clap::Parser;
use engine::generate::generate;
use engine::load::{self, ModelSource};
use engine::model::{LoadOptions, WeightFormat};
use engine::train::examples::ExampleBuilder;
use engine::train::{Backward, Example, Layout, Resume, TrainOptions, collate, step, train};
use shared::config::{GenerationConfig, LoraConfig, PromptConfig, TrainingConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "CPU tokens/s of generation and LoRA training with SmolLM2-135M")]
struct Cli {
    /// The GGUF (or, for batching runs, an HF folder); default
    /// `${SIZESPEC_MODELS:-~/.cache/sizespec/models}/SmolLM2-135M-Instruct.Q4_1.gguf`.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompts per generation run.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// New tokens per prompt (no stop: every row generates exactly this many).
    #[arg(long, default_value_t = 16)]
    max_new_tokens: usize,
    /// Sequences per training micro-batch.
    #[arg(long, default_value_t = 4)]
    train_batch: usize,
    /// Timed training steps (after one warm-up step).
    #[arg(long, default_value_t = 2)]
    train_steps: usize,
    /// Examples in each batching run (`--only batching`, also part of `all`).
    #[arg(long, default_value_t = 48)]
    batching_examples: usize,
    /// Batching runs: mean example length (log-normal, σ 0.6).
    #[arg(long, default_value_t = 240)]
    mean_len: usize,
    /// Batching runs: the longest example (= `training.max_length`).
    #[arg(long, default_value_t = 1000)]
    max_len: usize,
    /// Batching runs: LoRA rank on all seven projections (alpha = 2 × rank).
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Batching runs: `fixed`, `grouped` (batch_size rows), `budget` (length-grouped under
    /// `--batch-tokens`), or `all` of them; on a GPU run one per process, so each peak is its own.
    #[arg(long, default_value = "all")]
    layout: String,
    /// Batching runs' token budget; 0 = the finetune job's choice on a GPU (sized to free
    /// memory), 1024 on the CPU.
    #[arg(long, default_value_t = 0)]
    batch_tokens: usize,
    /// Batching runs' device (`cpu`, `cuda:0`: needs `--features cuda`); f32 on the CPU, bf16 on
    /// a GPU, as the finetune job loads. `--model` may then be an HF folder.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Which workloads to run.
    #[arg(long, value_enum, default_value = "all")]
    only: Only,
    /// Where to append the results; `-` = don't write.
    #[arg(long, default_value = "bench/RESULTS.md")]
    results: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    All,
    Generate,
    Train,
    Batching,
}

struct Row {
    what: String,
    setting: String,
    tokens: usize,
    seconds: f64,
    note: String,
}

impl Row {
    fn tok_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

fn model_path(cli: &Cli) -> PathBuf {
    cli.model.clone().unwrap_or_else(|| {
        let dir = std::env::var_os("SIZESPEC_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/sizespec/models")
            });
        dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
    })
}

/// Clinical-sounding dialogues of ~120-160 tokens, the shape of the default task's prompts.
fn dialogues(n: usize) -> Vec<shared::dataset::Record> {
    let mut recs = shared::embedded::embedded_dataset();
    recs.truncate(n.max(1));
    recs
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpu}, {} threads", candle_core::utils::get_num_threads())
}

/// The 1-minute load average (`/proc/loadavg`).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn gen_rows(
    cli: &Cli,
    source: &ModelSource,
    format: WeightFormat,
    label: &str,
) -> anyhow::Result<Vec<Row>> {
    let opts = LoadOptions {
        dtype: DType::F32,
        device: Device::Cpu,
        format,
    };
    let t0 = Instant::now();
    let loaded = load::load(source, &opts)?;
    let load_s = t0.elapsed().as_secs_f64();
    let prompt_cfg = PromptConfig::default();
    let b = ExampleBuilder {
        tokenizer: &loaded.tokenizer,
        template: &loaded.template,
        prompt: &prompt_cfg,
        max_length: usize::MAX,
    };
    let prompts: Vec<Vec<u32>> = dialogues(cli.prompts)
        .iter()
        .map(|r| b.prompt_ids(&r.dialogue))
        .collect::<Result<_, _>>()?;
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    let mut rows = Vec::new();
    let run = |batch: usize, new_tokens: usize| {
        let cfg = GenerationConfig {
            max_new_tokens: new_tokens,
            batch_size: batch,
        };
        // No stop ids: every row generates exactly `new_tokens`, so runs are comparable.
        generate(
            &loaded.model,
            &prompts,
            &[],
            &cfg,
            &CancellationToken::new(),
            |_| {},
        )
        .map(|(_, s)| s)
    };
    for batch in [1usize, prompts.len()] {
        let full = run(batch, cli.max_new_tokens)?;
        let (p_s, g_s) = (full.prefill.as_secs_f64(), full.elapsed.as_secs_f64());
        rows.push(Row {
            what: "prefill".into(),
            setting: format!("{label}, batch {batch}"),
            tokens: prompt_tokens,
            seconds: p_s,
            note: format!(
                "{} prompts, {:.0} tokens avg, left-padded; load {load_s:.1}s",
                prompts.len(),
                prompt_tokens as f64 / prompts.len() as f64
            ),
        });
        rows.push(Row {
            what: "decode".into(),
            setting: format!("{label}, batch {batch}"),
            tokens: full.generated_tokens - prompts.len(),
            seconds: (g_s - p_s).max(1e-9),
            note: format!("tokens 2..{} of each prompt", cli.max_new_tokens),
        });
        rows.push(Row {
            what: "generate".into(),
            setting: format!("{label}, batch {batch}"),
            tokens: full.generated_tokens,
            seconds: g_s,
            note: format!(
                "{} new tokens/prompt, prefill included, padding not counted",
                cli.max_new_tokens
            ),
        });
    }
    Ok(rows)
}

fn train_rows(cli: &Cli, source: &ModelSource) -> anyhow::Result<Vec<Row>> {
    let opts = LoadOptions {
        dtype: DType::F32,
        device: Device::Cpu,
        format: WeightFormat::Dense,
    };
    let mut rows = Vec::new();
    let settings = [
        ("r8 q,v", vec!["q_proj", "v_proj"], Backward::Plain),
        (
            "r8 q,v",
            vec!["q_proj", "v_proj"],
            Backward::RecomputeLayers,
        ),
        (
            "r8 all 7",
            shared::config::ALL_PROJECTIONS.to_vec(),
            Backward::Plain,
        ),
    ];
    for (label, targets, backward) in settings {
        let mut loaded = load::load(source, &opts)?;
        let lora = LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
        };
        loaded.model.add_lora(&lora, 1)?;
        loaded.model.set_mode(engine::model::Mode::Train);
        let prompt_cfg = PromptConfig::default();
        let b = ExampleBuilder {
            tokenizer: &loaded.tokenizer,
            template: &loaded.template,
            prompt: &prompt_cfg,
            max_length: 512,
        };
        let examples: Vec<Example> = b.examples(&dialogues(cli.train_batch))?;
        let refs: Vec<&Example> = examples.iter().collect();
        let batch = collate(&refs, loaded.tokenizer.pad_id(), &Device::Cpu)?;
        let vars: Vec<Var> = loaded
            .model
            .lora_vars()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let scale = 1.0 / batch.label_tokens as f64;
        step::loss_and_grads(&loaded.model, &batch, &vars, scale, backward)?; // warm-up
        let t0 = Instant::now();
        for _ in 0..cli.train_steps {
            step::loss_and_grads(&loaded.model, &batch, &vars, scale, backward)?;
        }
        let secs = t0.elapsed().as_secs_f64();
        rows.push(Row {
            what: "LoRA fwd+bwd".into(),
            setting: format!("f32, {label}, {backward:?}"),
            tokens: batch.real_tokens * cli.train_steps,
            seconds: secs,
            note: format!(
                "batch {} × {:.0} tokens, {:.2} s/sequence",
                cli.train_batch,
                batch.real_tokens as f64 / cli.train_batch as f64,
                secs / (cli.train_steps * cli.train_batch) as f64
            ),
        });
    }
    Ok(rows)
}

/// Synthetic examples with a MedSynth-like skewed length distribution (scaled down for the CPU by
/// default): log-normal (σ 0.6) with a mean near `mean` tokens, cut to [32, `max`]; random token ids, the last 7
/// of each (6 answer tokens and the end-of-turn) are labels.
fn skewed_examples(n: usize, vocab: usize, eos: u32, mean: usize, max: usize) -> Vec<Example> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(975);
    let mu = (mean as f64).ln() - 0.6f64.powi(2) / 2.0;
    (0..n)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            let len = ((mu + 0.6 * z).exp() as usize).clamp(32, max.max(32));
            let mut ids: Vec<u32> = (0..len - 1)
                .map(|_| rng.random_range(100..vocab as u32))
                .collect();
            ids.push(eos);
            Example {
                ids,
                prompt_len: len - 7,
            }
        })
        .collect()
}

/// Whole training runs (one epoch, optimiser included) over the same skewed examples with each
/// micro-batch layout; tokens are real tokens, the note gives the padding fraction.
fn batching_rows(cli: &Cli, source: &ModelSource) -> anyhow::Result<Vec<Row>> {
    let spec = match cli.device.strip_prefix("cuda:") {
        Some(i) => engine::job::DeviceSpec::Cuda(i.parse().context("--device cuda:N")?),
        None if cli.device == "cpu" => engine::job::DeviceSpec::Cpu,
        None => bail!("--device {}: expected cpu or cuda:N", cli.device),
    };
    let device = spec.open()?;
    let opts = LoadOptions {
        dtype: engine::job::dense_dtype(&device),
        device: device.clone(),
        format: WeightFormat::Dense,
    };
    let lora = LoraConfig {
        r: cli.rank,
        alpha: 2.0 * cli.rank as f64,
        dropout: 0.0,
        target_modules: shared::config::ALL_PROJECTIONS.map(String::from).to_vec(),
    };
    let cfg = TrainingConfig {
        epochs: 1,
        early_stopping_patience: 0,
        max_length: cli.max_len,
        batch_size: 4,
        gradient_accumulation_steps: 4,
        ..TrainingConfig::default()
    };
    let mut rows = Vec::new();
    for name in ["fixed", "grouped", "budget"] {
        if cli.layout != "all" && cli.layout != name {
            continue;
        }
        let mut loaded = load::load(source, &opts)?;
        let model = &loaded.model;
        let layout = match name {
            "fixed" => Layout::Fixed,
            "grouped" => Layout::LengthGrouped { max_tokens: None },
            _ => match (cli.batch_tokens, device.is_cuda()) {
                (0, true) => engine::job::layout_for(model, &cfg),
                (0, false) => Layout::LengthGrouped {
                    max_tokens: Some(1024),
                },
                (n, _) => Layout::LengthGrouped {
                    max_tokens: Some(n),
                },
            },
        };
        let label = match layout {
            Layout::LengthGrouped {
                max_tokens: Some(n),
            } => format!("length_grouped, {n}-token budget"),
            Layout::LengthGrouped { max_tokens: None } => "length_grouped, 4 rows".into(),
            Layout::Fixed => "fixed, 4 rows".into(),
        };
        // As the finetune job: the plain graph on the CPU, KeepLast(n) from free memory on a GPU.
        let backward = if device.is_cuda() {
            let tokens = match layout {
                Layout::LengthGrouped {
                    max_tokens: Some(n),
                } => n.max(cli.max_len),
                _ => cfg.batch_size * cli.max_len,
            };
            let free = engine::gpu::mem::memory_free_bytes(&device).unwrap_or(0);
            step::auto_backward(model, tokens, free)
        } else {
            Backward::Plain
        };
        let vocab = model.config().vocab_size;
        let eos = *loaded
            .tokenizer
            .stop_ids()
            .first()
            .context("no stop token")?;
        let examples =
            skewed_examples(cli.batching_examples, vocab, eos, cli.mean_len, cli.max_len);
        let topts = TrainOptions {
            backward,
            layout,
            pad_id: loaded.tokenizer.pad_id(),
            checkpoint_dir: None,
            resume: Resume::Fresh,
            base_model: "bench".into(),
            revision: None,
        };
        let (mut steps, mut peak_mib) = (0usize, 0u64);
        let out = train(
            &mut loaded.model,
            &examples,
            &[],
            &cfg,
            &lora,
            &topts,
            &CancellationToken::new(),
            |e| {
                if let shared::task::ProgressEvent::TrainStep { memory_mib, .. } = e {
                    steps += 1;
                    peak_mib = peak_mib.max(memory_mib);
                }
            },
        )?;
        rows.push(Row {
            what: "LoRA training".into(),
            setting: format!(
                "{:?}, r{} all 7, {label}, {backward:?}",
                opts.dtype, cli.rank
            ),
            tokens: out.trained_tokens as usize,
            seconds: out.train_seconds,
            note: format!(
                "{} examples ({:.0} tokens avg), {steps} steps of 16, padding {:.1}% of {} \
                 forwarded tokens, {peak_mib} MiB at most after a step",
                examples.len(),
                out.trained_tokens as f64 / examples.len() as f64,
                100.0 * out.padding_fraction(),
                out.padded_tokens
            ),
        });
    }
    Ok(rows)
}

/// mimalloc keeping freed pages: candle allocates a buffer per op (`engine::alloc`).
#[global_allocator]
static GLOBAL: engine::alloc::MiMalloc = engine::alloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    engine::alloc::keep_freed_memory();
    let cli = Cli::parse();
    let path = model_path(&cli);
    if !path.exists() {
        bail!(
            "{} is missing: run scripts/fetch-smollm2.sh first",
            path.display()
        );
    }
    let source = load::resolve(path.to_str().context("model path is not UTF-8")?, None)?;
    let load_before = loadavg();
    let mut rows = Vec::new();
    if matches!(cli.only, Only::All | Only::Generate) {
        rows.extend(gen_rows(
            &cli,
            &source,
            WeightFormat::Quantized(GgmlDType::Q8_0),
            "Q4_1→Q8_0",
        )?);
        rows.extend(gen_rows(&cli, &source, WeightFormat::Dense, "f32")?);
    }
    if matches!(cli.only, Only::All | Only::Train) {
        rows.extend(train_rows(&cli, &source)?);
    }
    if matches!(cli.only, Only::All | Only::Batching) {
        rows.extend(batching_rows(&cli, &source)?);
    }

    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // Other processes' load skews CPU numbers: record it with them.
    let header = format!(
        "### {date} · commit {} · {} · load average {load_before} → {}\n",
        commit(),
        machine(),
        loadavg()
    );
    let mut table = String::from(
        "| workload | setting | tokens | seconds | tokens/s | note |\n|---|---|---:|---:|---:|---|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.1} | {} |\n",
            r.what,
            r.setting,
            r.tokens,
            r.seconds,
            r.tok_s(),
            r.note
        ));
    }
    println!("{header}\n{table}");
    if cli.results != "-" {
        let path = std::path::Path::new(&cli.results);
        let mut text = std::fs::read_to_string(path).unwrap_or_default();
        text.push_str(&format!("\n{header}\n{table}"));
        shared::fsutil::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
