//! Mid-epoch checkpoints: a run resumed from a checkpoint taken every N steps, or on
//! cancellation, ends with the adapter bytes of an uninterrupted run (data order, optimiser moments
//! and dropout stream restored); checkpointing itself changes nothing; a checkpoint of another
//! run is refused.

/// The allocator the engine is tuned for (`engine::alloc`), as in the binaries.
#[global_allocator]
static GLOBAL: engine::alloc::MiMalloc = engine::alloc::MiMalloc;

use std::path::{Path, PathBuf};

use engine::testkit::Tiny;
use engine::train::{
    Backward, Example, Layout, Resume, TrainError, TrainOptions, TrainOutcome, train, train_with,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shared::config::{LoraConfig, LrSchedule, TrainingConfig};
use shared::task::ProgressEvent;
use tokio_util::sync::CancellationToken;

const EOS: u32 = 2;

fn examples(n: usize, seed: u64) -> Vec<Example> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let key = rng.random_range(10u32..20);
            let len = rng.random_range(3..9);
            let mut ids = vec![1, key];
            ids.extend((0..len).map(|_| rng.random_range(20u32..60)));
            let prompt_len = ids.len();
            ids.push(key + 30);
            ids.push(EOS);
            Example { ids, prompt_len }
        })
        .collect()
}

fn lora() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        // Dropout on: the resumed run must replay the same masks.
        dropout: 0.1,
        target_modules: shared::config::ALL_PROJECTIONS.map(String::from).to_vec(),
    }
}

/// 24 examples, 4 per step: 6 optimiser steps an epoch, 12 in all; validation every 3 steps.
fn cfg(every_steps: u64) -> TrainingConfig {
    TrainingConfig {
        learning_rate: 1e-2,
        schedule: LrSchedule::Cosine,
        warmup_ratio: 0.1,
        epochs: 2,
        early_stopping_patience: 0,
        eval_every_steps: 3,
        max_length: 64,
        batch_size: 2,
        gradient_accumulation_steps: 2,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        seed: 11,
        checkpoint_every_steps: every_steps,
        checkpoint_every_s: 0,
        ..TrainingConfig::default()
    }
}

fn opts(dir: Option<&Path>) -> TrainOptions {
    TrainOptions {
        backward: Backward::Plain,
        layout: Layout::Fixed,
        pad_id: 0,
        checkpoint_dir: dir.map(Path::to_path_buf),
        resume: Resume::IfPresent,
        base_model: "tiny".into(),
        revision: None,
    }
}

fn run(dir: Option<&Path>, c: &TrainingConfig) -> TrainOutcome {
    let mut model = Tiny::default().model(3);
    train(
        &mut model,
        &examples(24, 4),
        &examples(4, 5),
        c,
        &lora(),
        &opts(dir),
        &CancellationToken::new(),
        |_| {},
    )
    .unwrap()
}

/// The adapter's safetensors bytes as saved in PEFT layout.
fn adapter_bytes(out: &TrainOutcome) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    out.adapter.save(d.path()).unwrap();
    std::fs::read(d.path().join(engine::peft::WEIGHTS_FILE)).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn state(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("trainer_state.json")).unwrap()).unwrap()
}

#[test]
fn a_run_resumed_from_a_mid_epoch_step_checkpoint_has_the_uninterrupted_adapter_bytes() {
    let plain = run(None, &cfg(0));
    assert_eq!(plain.total_steps, 12);
    assert_eq!(plain.resumed_from, None);

    // Checkpoints every 4 steps; the one at step 4 (epoch 1, 4 of its 6 steps) is kept aside.
    let dir = tempfile::tempdir().unwrap();
    let kept: PathBuf = dir.path().join("kept-at-4");
    let ckpt = dir.path().join("checkpoint");
    let mut seen = Vec::new();
    let mut model = Tiny::default().model(3);
    let full = train_with(
        &mut model,
        &examples(24, 4),
        &examples(4, 5),
        &cfg(4),
        &lora(),
        &opts(Some(&ckpt)),
        &CancellationToken::new(),
        |_| {},
        |d, s| {
            seen.push((s.global_step, s.epochs_completed, s.steps_in_epoch));
            if s.global_step == 4 {
                copy_dir(d, &kept);
            }
        },
    )
    .unwrap();
    // Every 4 steps (mid-epoch) and at both epoch ends.
    assert_eq!(seen, vec![(4, 0, 4), (6, 1, 0), (8, 1, 2), (12, 2, 0)]);
    let want = adapter_bytes(&plain);
    assert_eq!(adapter_bytes(&full), want, "checkpointing changes nothing");

    let resumed = run(Some(&kept), &cfg(4));
    assert_eq!(resumed.resumed_from, Some(4));
    assert_eq!(resumed.steps, 12);
    assert_eq!(resumed.curve, plain.curve, "same losses at every step");
    assert!(
        adapter_bytes(&resumed) == want,
        "resumed adapter bytes differ"
    );
}

#[test]
fn a_cancelled_run_checkpoints_before_returning_and_resumes_bit_identically() {
    let want = adapter_bytes(&run(None, &cfg(0)));
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let mut checkpoints = Vec::new();
    let mut model = Tiny::default().model(3);
    let err = train_with(
        &mut model,
        &examples(24, 4),
        &examples(4, 5),
        &cfg(0),
        &lora(),
        &opts(Some(dir.path())),
        &cancel,
        |e| {
            // Step 9: epoch 2, 3 of its 6 steps done, no interval checkpoint since step 6.
            if let ProgressEvent::TrainStep { step: 9, .. } = e {
                c2.cancel();
            }
        },
        |_, s| checkpoints.push(s.global_step),
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::Cancelled { step: 9 }), "{err}");
    assert_eq!(checkpoints, vec![6, 9], "epoch end, then the cancellation");
    let s = state(dir.path());
    assert_eq!(
        (s["global_step"].as_u64(), s["steps_in_epoch"].as_u64()),
        (Some(9), Some(3))
    );

    let resumed = run(Some(dir.path()), &cfg(0));
    assert_eq!(resumed.resumed_from, Some(9));
    assert!(
        adapter_bytes(&resumed) == want,
        "resumed adapter bytes differ"
    );
}

#[test]
fn a_cancellation_right_after_a_checkpoint_writes_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let mut checkpoints = Vec::new();
    let mut model = Tiny::default().model(3);
    let err = train_with(
        &mut model,
        &examples(24, 4),
        &examples(4, 5),
        &cfg(4),
        &lora(),
        &opts(Some(dir.path())),
        &cancel,
        |_| {},
        |_, s| {
            checkpoints.push(s.global_step);
            c2.cancel();
        },
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::Cancelled { step: 4 }), "{err}");
    assert_eq!(checkpoints, vec![4]);
}

#[test]
fn a_checkpoint_of_a_run_with_other_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    run(Some(dir.path()), &cfg(4));
    let other = TrainingConfig {
        epochs: 3,
        ..cfg(4)
    };
    let mut model = Tiny::default().model(3);
    let err = train(
        &mut model,
        &examples(24, 4),
        &examples(4, 5),
        &other,
        &lora(),
        &opts(Some(dir.path())),
        &CancellationToken::new(),
        |_| {},
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("trainer_state.json") && text.contains("12") && text.contains("18"),
        "{text}"
    );
}
