//! The real engine over gRPC: a tiny random-weight Llama-family model (written by the engine's
//! `testkit`) is evaluated zero-shot, LoRA-finetuned and evaluated with its adapter by agents
//! running `WorkerRunner` on the CPU; one agent and two agents give the same predictions.

/// The allocator the engine is tuned for (`engine::alloc`), as in the agent binary.
#[global_allocator]
static GLOBAL: engine::alloc::MiMalloc = engine::alloc::MiMalloc;

use agent::rpc::runner::TaskRunner;
use agent::rpc::worker_runner::WorkerRunner;
use agent::worker::DeviceSpec;
use coordinator::experiment::{ExperimentId, ExperimentPlan, PlannedTask, TaskPayload};
use engine::testkit::{Tiny, codes};
use proto::pb;
use shared::config::{GenerationConfig, LoraConfig, LrSchedule, PromptConfig, TrainingConfig};
use shared::task::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tests::*;
use tokio_util::sync::CancellationToken;

fn prompt() -> PromptConfig {
    PromptConfig {
        system: "map the symptom to its code".into(),
        user_template: "{dialogue}".into(),
        answer_template: "{code}".into(),
    }
}

fn model(key: &str, role: ModelRole, dir: &Path) -> ModelSpec {
    ModelSpec {
        key: key.into(),
        name: dir.display().to_string(),
        revision: None,
        label: key.split_once('_').unwrap().1.into(),
        size: "0M".into(),
        role,
        quantization: Quantization::None,
    }
}

fn plan(model_dir: &Path, out: &Path) -> ExperimentPlan {
    let (train, validation) = codes::train_and_validation();
    let eval = |m: ModelSpec, deps: Vec<TaskId>| PlannedTask {
        spec: TaskSpec {
            id: TaskId(format!("eval:{}", m.key)),
            kind: TaskKind::Evaluate,
            model: m,
            depends_on: deps,
            estimate_mib: 1,
        },
        payload: TaskPayload::Evaluate(EvalPayload {
            samples: codes::test(),
            prompt: prompt(),
            generation: GenerationConfig {
                max_new_tokens: 6,
                batch_size: 16,
            },
            adapter: None,
        }),
    };
    let slm = model("SLM_Tiny", ModelRole::Slm, model_dir);
    let ft = PlannedTask {
        spec: TaskSpec {
            id: TaskId("finetune:SLM_Tiny".into()),
            kind: TaskKind::Finetune,
            model: slm.clone(),
            depends_on: vec![],
            estimate_mib: 1,
        },
        payload: TaskPayload::Finetune(FinetunePayload {
            train,
            validation,
            prompt: prompt(),
            lora: LoraConfig {
                r: 8,
                alpha: 16.0,
                dropout: 0.0,
                target_modules: shared::config::ALL_PROJECTIONS.map(String::from).to_vec(),
            },
            training: TrainingConfig {
                learning_rate: 5e-3,
                schedule: LrSchedule::Cosine,
                warmup_ratio: 0.05,
                epochs: 15,
                early_stopping_patience: 0,
                eval_every_steps: 0,
                max_length: 64,
                batch_size: 8,
                gradient_accumulation_steps: 1,
                weight_decay: 0.0,
                max_grad_norm: 1.0,
                seed: 7,
                ..TrainingConfig::default()
            },
        }),
    };
    ExperimentPlan {
        id: ExperimentId("tiny".into()),
        name: "tiny".into(),
        config_toml: "name = \"tiny\"\n".into(),
        output_dir: out.to_path_buf(),
        split_hash: "tiny-split".into(),
        train_code_counts: BTreeMap::new(),
        result_keys: [
            ("eval:LLM_Tiny", "LLM_Tiny_untrained"),
            ("eval:SLM_Tiny", "SLM_Tiny_finetuned"),
        ]
        .into_iter()
        .map(|(t, k)| (TaskId(t.into()), k.to_string()))
        .collect(),
        tasks: vec![
            eval(model("LLM_Tiny", ModelRole::Llm, model_dir), vec![]),
            ft,
            eval(slm, vec![TaskId("finetune:SLM_Tiny".into())]),
        ],
        dataset: None,
        cache: None,
    }
}

/// `(results key, sample id) → extracted code` of a finished run, plus its exact-match rates.
async fn run(
    agents: usize,
) -> (
    BTreeMap<(String, String), Option<String>>,
    BTreeMap<String, f64>,
) {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny-model");
    std::fs::create_dir_all(&model_dir).unwrap();
    let mut words = codes::words();
    words.extend(prompt().system.split_whitespace().map(String::from));
    Tiny {
        hidden: 64,
        intermediate: 128,
        embed_scale: 0.3,
        ..Tiny::default()
    }
    .write_hf_dir(&model_dir, 21, &words);
    let out = dir.path().join("out");
    let stop = CancellationToken::new();
    let c = start_coordinator(
        &dir.path().join("data"),
        plan(&model_dir, &out),
        None,
        stop.clone(),
    )
    .await;
    let url = format!("http://{}", c.addr);
    let handles: Vec<_> = (0..agents)
        .map(|i| {
            let runner: Arc<dyn TaskRunner> =
                Arc::new(WorkerRunner::spawn(DeviceSpec::Cpu).unwrap());
            start_agent(&url, &format!("cpu-{i}"), 64_000, runner, None, dir.path())
        })
        .collect();
    let (_, state, events) = submit_and_wait(&url, None, Duration::from_secs(240)).await;
    assert_eq!(
        state,
        pb::ExperimentStateKind::ExperimentStateSucceeded as i32,
        "{events:?}"
    );
    drop(handles);
    stop.cancel();
    let mut preds = BTreeMap::new();
    for key in ["LLM_Tiny_untrained", "SLM_Tiny_finetuned"] {
        let text =
            std::fs::read_to_string(out.join("predictions").join(format!("{key}.jsonl"))).unwrap();
        for line in text.lines() {
            let r: PredictionRow = serde_json::from_str(line).unwrap();
            preds.insert((key.to_string(), r.sample_id), r.extracted);
        }
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let exact = ["LLM_Tiny_untrained", "SLM_Tiny_finetuned"]
        .iter()
        .map(|k| {
            (
                k.to_string(),
                results[k]["metrics"]["exact_match"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(out.join("training/SLM_Tiny_finetuned.json").is_file());
    (preds, exact)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_engine_runs_an_experiment_over_grpc_and_placement_does_not_change_predictions() {
    let (one, exact) = run(1).await;
    assert_eq!(
        one.len(),
        2 * codes::test().len(),
        "every sample predicted once per model"
    );
    assert!(
        exact["SLM_Tiny_finetuned"] > exact["LLM_Tiny_untrained"] + 0.3,
        "the finetuned adapter must have travelled and been applied: {exact:?}"
    );
    let (two, exact2) = run(2).await;
    assert_eq!(one, two, "two agents predict exactly what one does");
    assert_eq!(exact, exact2);
}

/// Forwards a real runner's events until the first checkpoint, then withholds the rest: the agent
/// looks busy (heartbeats go on) until the test kills it.
struct StallAfterCheckpoint(WorkerRunner);

impl TaskRunner for StallAfterCheckpoint {
    fn run(
        &self,
        job: agent::rpc::runner::RunJob,
        cancel: CancellationToken,
    ) -> tokio::sync::mpsc::Receiver<agent::rpc::runner::RunEvent> {
        use agent::rpc::runner::RunEvent;
        let mut inner = self.0.run(job, cancel);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(ev) = inner.recv().await {
                let stall = matches!(ev, RunEvent::Checkpoint { .. });
                if tx.send(ev).await.is_err() {
                    return;
                }
                if stall {
                    std::future::pending::<()>().await;
                }
            }
        });
        rx
    }
}

/// The finetune's adapter bytes in the coordinator's artifact store (checkpoints left out).
fn stored_adapter(data: &Path) -> Vec<u8> {
    fn walk(d: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.ends_with("adapter_model.safetensors")
                && !p.to_string_lossy().contains("checkpoint-")
            {
                out.push(p);
            }
        }
    }
    let mut found = Vec::new();
    walk(&data.join("artifacts"), &mut found);
    assert_eq!(found.len(), 1, "one final adapter: {found:?}");
    std::fs::read(&found[0]).unwrap()
}

/// How agent `cpu-a` leaves a checkpointed finetune.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leave {
    /// It does not: `cpu-a` runs the whole experiment.
    Never,
    /// Killed (no goodbye, like kill -9 or a lost node) once the coordinator journalled a
    /// checkpoint; its last events are withheld, so the checkpoint is all the coordinator has.
    Killed,
    /// Stopped as on SIGTERM (the agent binary's signal handler cancels the same token) once the
    /// coordinator journalled a checkpoint: the job checkpoints at its next step and is reported.
    Stopped,
}

/// One experiment of [`plan`] with checkpoints every 4 steps, LoRA dropout on and `epochs`; unless
/// `leave` is `Never`, agent `cpu-a` leaves as it says and `cpu-b` finishes. Returns the
/// results.json, the final adapter bytes, and the step of the checkpoint journalled when `cpu-a`
/// was told to leave.
async fn run_checkpointed(leave: Leave, epochs: u32) -> (serde_json::Value, Vec<u8>, Option<u64>) {
    let kill = leave != Leave::Never;
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny-model");
    std::fs::create_dir_all(&model_dir).unwrap();
    let mut words = codes::words();
    words.extend(prompt().system.split_whitespace().map(String::from));
    Tiny {
        hidden: 64,
        intermediate: 128,
        embed_scale: 0.3,
        ..Tiny::default()
    }
    .write_hf_dir(&model_dir, 21, &words);
    let out = dir.path().join("out");
    let mut p = plan(&model_dir, &out);
    for t in &mut p.tasks {
        if let TaskPayload::Finetune(f) = &mut t.payload {
            f.training.checkpoint_every_steps = 4;
            f.training.epochs = epochs;
            f.lora.dropout = 0.1;
        }
    }
    let data = dir.path().join("data");
    let stop = CancellationToken::new();
    let c = start_coordinator(&data, p, None, stop.clone()).await;
    let url = format!("http://{}", c.addr);
    let cpu = || WorkerRunner::spawn(DeviceSpec::Cpu).unwrap();
    let first: Arc<dyn TaskRunner> = if leave == Leave::Killed {
        Arc::new(StallAfterCheckpoint(cpu()))
    } else {
        Arc::new(cpu())
    };
    let a = start_agent(&url, "cpu-a", 64_000, first, None, &dir.path().join("a"));
    let watch = tokio::spawn({
        let url = url.clone();
        async move { submit_and_wait(&url, None, Duration::from_secs(240)).await }
    });
    let state_file = data.join("experiments/tiny/state.json");
    let checkpoint_step = || -> Option<u64> {
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state_file).ok()?).ok()?;
        j["tasks"]["finetune:SLM_Tiny"]["checkpoint"]["step"].as_u64()
    };
    let (b, step) = if kill {
        let t0 = std::time::Instant::now();
        while checkpoint_step().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no checkpoint journalled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let step = checkpoint_step();
        if leave == Leave::Killed {
            tokio::task::spawn_blocking(move || a.kill()).await.unwrap();
        } else {
            tokio::task::spawn_blocking(move || a.stop()).await.unwrap();
        }
        let runner: Arc<dyn TaskRunner> = Arc::new(cpu());
        let b = start_agent(&url, "cpu-b", 64_000, runner, None, &dir.path().join("b"));
        (b, step)
    } else {
        (a, None)
    };
    let (_, state, events) = watch.await.unwrap();
    assert_eq!(
        state,
        pb::ExperimentStateKind::ExperimentStateSucceeded as i32,
        "{events:?}"
    );
    drop(b);
    stop.cancel();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    if kill {
        let report = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(
            report.contains("lost its agent (cpu-a) and resumed from its checkpoint at step")
                && report.contains("on cpu-b"),
            "the report says the finetune resumed"
        );
    }
    (results, stored_adapter(&data), step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finetune_whose_agent_vanishes_resumes_from_its_checkpoint_on_another_agent() {
    let (whole, want, _) = run_checkpointed(Leave::Never, 4).await;
    let tm = &whole["SLM_Tiny_finetuned"]["training_metrics"];
    assert!(tm.get("resumed").is_none(), "{tm}");

    let (results, got, step) = run_checkpointed(Leave::Killed, 4).await;
    let step = step.expect("a journalled checkpoint");
    assert!(step > 0);
    let resumed = &results["SLM_Tiny_finetuned"]["training_metrics"]["resumed"];
    assert_eq!(
        resumed["resumed_from_step"].as_u64(),
        Some(step),
        "{resumed}"
    );
    assert_eq!(resumed["resumed_on_agent"], "cpu-b");
    assert_eq!(resumed["checkpoint_by_agent"], "cpu-a");
    assert_eq!(
        results["SLM_Tiny_finetuned"]["training_metrics"]["steps"],
        tm["steps"]
    );
    assert!(
        got == want,
        "the resumed adapter's bytes differ from the uninterrupted run's"
    );
}

/// SIGTERM (a pod evicted, a node drained): the agent checkpoints where it stands instead of
/// falling back to the last periodic checkpoint, and the next agent ends with the same bytes.
/// Enough epochs that training is far from its end when the stop arrives (the first checkpoint
/// is at step 4 of 80; the stop lands within a few steps of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finetune_whose_agent_is_stopped_checkpoints_on_the_way_out_and_resumes_elsewhere() {
    let (whole, want, _) = run_checkpointed(Leave::Never, 8).await;
    let tm = &whole["SLM_Tiny_finetuned"]["training_metrics"];
    let total = tm["steps"].as_u64().expect("steps");

    let (results, got, told) = run_checkpointed(Leave::Stopped, 8).await;
    let told = told.expect("a journalled checkpoint");
    let resumed = &results["SLM_Tiny_finetuned"]["training_metrics"]["resumed"];
    let from = resumed["resumed_from_step"].as_u64().expect("resumed");
    assert!(
        from > told && from < total,
        "the stopped agent checkpoints where it stands: after the checkpoint journalled when it \
         was told to stop (step {told}) and before the end (step {total}); resumed from {from}"
    );
    assert_eq!(resumed["resumed_on_agent"], "cpu-b");
    assert_eq!(resumed["checkpoint_by_agent"], "cpu-a");
    assert_eq!(
        results["SLM_Tiny_finetuned"]["training_metrics"]["steps"],
        tm["steps"]
    );
    assert!(
        got == want,
        "the resumed adapter's bytes differ from the uninterrupted run's"
    );
}
