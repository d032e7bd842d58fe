//! The compute thread: a finetune job and an evaluation job with its adapter run to `Finished`
//! with streamed progress and predictions; cancellation stops training between steps; a bad model
//! path fails with a message naming it. Model files are a tiny HF folder written by the test.

/// The allocator the engine is tuned for (`engine::alloc`), as in the binaries.
#[global_allocator]
static GLOBAL: engine::alloc::MiMalloc = engine::alloc::MiMalloc;

use engine::testkit;

use std::path::Path;

use agent::worker::{DeviceSpec, Job, JobConfig, JobOutput, Worker, WorkerEvent};
use shared::config::{GenerationConfig, LoraConfig, LrSchedule, PromptConfig, TrainingConfig};
use shared::task::{
    EvalPayload, FinetunePayload, ModelRole, ModelSpec, ProgressEvent, Quantization, TaskId,
    TaskKind, TaskSpec,
};
use testkit::{Tiny, codes};
use tokio_util::sync::CancellationToken;

fn prompt() -> PromptConfig {
    PromptConfig {
        system: "map the symptom to its code".into(),
        user_template: "{dialogue}".into(),
        answer_template: "{code}".into(),
    }
}

fn model_dir(dir: &Path) {
    let mut words = codes::words();
    words.extend(prompt().system.split_whitespace().map(String::from));
    let t = Tiny {
        hidden: 64,
        intermediate: 128,
        embed_scale: 0.3,
        ..Tiny::default()
    };
    t.write_hf_dir(dir, 21, &words);
}

fn task(kind: TaskKind, model: &Path) -> TaskSpec {
    TaskSpec {
        id: TaskId(format!("{kind:?}:tiny")),
        kind,
        model: ModelSpec {
            key: "SLM_Tiny".into(),
            name: model.display().to_string(),
            revision: None,
            label: "Tiny".into(),
            size: "0M".into(),
            role: ModelRole::Slm,
            quantization: Quantization::None,
        },
        depends_on: vec![],
        estimate_mib: 1,
    }
}

fn finetune_payload(epochs: u32) -> FinetunePayload {
    let (train, validation) = codes::train_and_validation();
    FinetunePayload {
        train,
        validation,
        prompt: prompt(),
        lora: LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: shared::config::ALL_PROJECTIONS.map(String::from).to_vec(),
        },
        training: TrainingConfig {
            learning_rate: 5e-3,
            schedule: LrSchedule::Cosine,
            warmup_ratio: 0.05,
            epochs,
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
    }
}

/// All events of one job, up to and including its terminal event.
fn drain(
    mut rx: tokio::sync::mpsc::Receiver<WorkerEvent>,
    mut on: impl FnMut(&WorkerEvent),
) -> Vec<WorkerEvent> {
    let mut out = Vec::new();
    while let Some(e) = rx.blocking_recv() {
        on(&e);
        let terminal = matches!(
            e,
            WorkerEvent::Finished(_) | WorkerEvent::Failed(_) | WorkerEvent::Rejected(_)
        );
        out.push(e);
        if terminal {
            break;
        }
    }
    out
}

#[test]
fn finetune_then_evaluate_with_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    model_dir(dir.path());
    let out = tempfile::tempdir().unwrap();
    let worker = Worker::spawn_with(
        DeviceSpec::Cpu,
        JobConfig {
            cache_dir: cache.path().to_path_buf(),
        },
    )
    .unwrap();

    let job = Job::Finetune {
        task: task(TaskKind::Finetune, dir.path()),
        payload: finetune_payload(30),
        out_dir: out.path().to_path_buf(),
    };
    let events = drain(worker.submit(job, CancellationToken::new()), |_| {});
    let steps = events
        .iter()
        .filter(|e| matches!(e, WorkerEvent::Progress(ProgressEvent::TrainStep { .. })))
        .count();
    assert_eq!(steps, 300, "80 examples / 8 × 30 epochs");
    let Some(WorkerEvent::Finished(JobOutput::Finetuned(summary))) = events.last() else {
        panic!("finetune did not finish: {:?}", events.last());
    };
    assert_eq!(summary.steps, 300);
    assert!(summary.best_val_loss.unwrap() < summary.first_val_loss.unwrap());
    let adapter =
        engine::peft::PeftAdapter::load(&summary.adapter_dir, &candle_core::Device::Cpu).unwrap();
    assert_eq!(adapter.content_hash().unwrap(), summary.adapter_hash);
    assert_eq!(
        adapter.config.base_model_name_or_path.as_deref(),
        Some(dir.path().to_str().unwrap())
    );

    let samples = codes::test();
    let payload = EvalPayload {
        samples: samples.clone(),
        prompt: prompt(),
        generation: GenerationConfig {
            max_new_tokens: 6,
            batch_size: 16,
        },
        adapter: Some("tiny-adapter".into()),
    };
    let job = Job::Evaluate {
        task: task(TaskKind::Evaluate, dir.path()),
        payload,
        adapter_dir: Some(summary.adapter_dir.clone()),
    };
    let events = drain(worker.submit(job, CancellationToken::new()), |_| {});
    let rows: Vec<_> = events
        .iter()
        .filter_map(|e| {
            if let WorkerEvent::Predictions(r) = e {
                Some(r.clone())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        rows.len(),
        3,
        "40 samples in generation batches of 16 arrive as 3 batches"
    );
    let rows: Vec<_> = rows.into_iter().flatten().collect();
    assert_eq!(rows.len(), samples.len());
    let correct = rows.iter().filter(|r| r.correct).count();
    assert!(
        correct as f64 >= 0.9 * rows.len() as f64,
        "with the adapter: {correct} of {}",
        rows.len()
    );
    assert!(
        rows.iter()
            .all(|r| r.correct == (r.extracted.as_deref() == Some(r.reference.as_str())))
    );
    let Some(WorkerEvent::Finished(JobOutput::Evaluated(perf))) = events.last() else {
        panic!("evaluation did not finish: {:?}", events.last());
    };
    assert_eq!(perf.samples, 40);
    assert_eq!(
        perf.generated_tokens,
        rows.iter()
            .map(|r| u64::from(r.generated_tokens))
            .sum::<u64>()
    );
    assert!(perf.tokens_per_s > 0.0 && perf.device_name.starts_with("cpu"));
}

#[test]
fn cancellation_stops_training_between_steps() {
    let dir = tempfile::tempdir().unwrap();
    model_dir(dir.path());
    let out = tempfile::tempdir().unwrap();
    let worker = Worker::spawn(DeviceSpec::Cpu).unwrap();
    let cancel = CancellationToken::new();
    let job = Job::Finetune {
        task: task(TaskKind::Finetune, dir.path()),
        payload: finetune_payload(50),
        out_dir: out.path().to_path_buf(),
    };
    let c = cancel.clone();
    let events = drain(worker.submit(job, cancel), |e| {
        if let WorkerEvent::Progress(ProgressEvent::TrainStep { step: 3, .. }) = e {
            c.cancel();
        }
    });
    let steps = events
        .iter()
        .filter(|e| matches!(e, WorkerEvent::Progress(ProgressEvent::TrainStep { .. })))
        .count();
    assert!(
        (3..=4).contains(&steps),
        "stopped right after the cancel, at step {steps} of 500"
    );
    match events.last() {
        Some(WorkerEvent::Failed(msg)) => assert!(msg.contains("cancelled"), "{msg}"),
        other => panic!("expected a cancelled failure, got {other:?}"),
    }
    // The thread is free for the next job.
    let bad = Job::Evaluate {
        task: task(TaskKind::Evaluate, &dir.path().join("missing.gguf")),
        payload: EvalPayload {
            samples: codes::test(),
            prompt: prompt(),
            generation: GenerationConfig::default(),
            adapter: None,
        },
        adapter_dir: None,
    };
    match drain(worker.submit(bad, CancellationToken::new()), |_| {}).last() {
        // A missing model file is the input's fault: rejected, so the coordinator does not retry.
        Some(WorkerEvent::Rejected(msg)) => assert!(msg.contains("missing.gguf"), "{msg}"),
        other => panic!("expected a rejection naming the file, got {other:?}"),
    }
}

#[test]
fn a_job_whose_consumer_went_away_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    model_dir(dir.path());
    let out = tempfile::tempdir().unwrap();
    let worker = Worker::spawn(DeviceSpec::Cpu).unwrap();
    let caller = CancellationToken::new();
    let job = Job::Finetune {
        task: task(TaskKind::Finetune, dir.path()),
        payload: finetune_payload(500),
        out_dir: out.path().to_path_buf(),
    };
    drop(worker.submit(job, caller.clone()));
    // The next job runs only after the abandoned one stopped; 500 epochs would take minutes.
    let started = std::time::Instant::now();
    let bad = Job::Evaluate {
        task: task(TaskKind::Evaluate, &dir.path().join("missing.gguf")),
        payload: EvalPayload {
            samples: codes::test(),
            prompt: prompt(),
            generation: GenerationConfig::default(),
            adapter: None,
        },
        adapter_dir: None,
    };
    assert!(matches!(
        drain(worker.submit(bad, CancellationToken::new()), |_| {}).last(),
        Some(WorkerEvent::Rejected(_))
    ));
    assert!(
        started.elapsed().as_secs() < 60,
        "the abandoned job kept running"
    );
    assert!(!caller.is_cancelled(), "the caller's token is left alone");
}
