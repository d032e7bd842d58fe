//! LoRA training on a tiny random model: recomputed gradients equal plain ones, runs are
//! bit-reproducible, a resumed run equals an uninterrupted one, cancellation stops between steps.

/// The allocator the engine is tuned for (`engine::alloc`), as in the binaries.
#[global_allocator]
static GLOBAL: engine::alloc::MiMalloc = engine::alloc::MiMalloc;

use engine::testkit;

use candle_core::Var;
use engine::model::Mode;
use engine::train::{
    Backward, Ending, Example, Layout, Resume, TrainError, TrainOptions, collate, step, train,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shared::config::{LoraConfig, LrSchedule, TrainingConfig};
use testkit::Tiny;
use tokio_util::sync::CancellationToken;

const EOS: u32 = 2;

/// Prompts of random ids whose answer is a token determined by the prompt's first content token.
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

fn lora(dropout: f64) -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout,
        target_modules: shared::config::ALL_PROJECTIONS.map(String::from).to_vec(),
    }
}

fn cfg(epochs: u32) -> TrainingConfig {
    TrainingConfig {
        learning_rate: 1e-2,
        schedule: LrSchedule::Cosine,
        warmup_ratio: 0.1,
        epochs,
        early_stopping_patience: 0,
        eval_every_steps: 3,
        max_length: 64,
        batch_size: 4,
        gradient_accumulation_steps: 2,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        seed: 11,
        ..TrainingConfig::default()
    }
}

fn opts(dir: Option<&std::path::Path>, backward: Backward) -> TrainOptions {
    TrainOptions {
        backward,
        layout: Layout::Fixed,
        pad_id: 0,
        checkpoint_dir: dir.map(|d| d.to_path_buf()),
        resume: Resume::IfPresent,
        base_model: "tiny".into(),
        revision: None,
    }
}

#[test]
fn layer_by_layer_recompute_gives_the_plain_gradients() {
    let tiny = Tiny {
        layers: 3,
        ..Tiny::default()
    };
    let mut model = tiny.model(3);
    model.add_lora(&lora(0.2), 5).unwrap();
    // Make B non-zero so gradients reach A and earlier layers through every adapter.
    for (name, var) in model.lora_vars() {
        if name.contains("lora_B") {
            let mut rng = ChaCha8Rng::seed_from_u64(name.len() as u64);
            let v: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(-0.1f32..0.1))
                .collect();
            let t =
                candle_core::Tensor::from_vec(v, var.dims(), &candle_core::Device::Cpu).unwrap();
            var.set(&t).unwrap();
        }
    }
    model.set_mode(Mode::Train);
    let vars: Vec<Var> = model.lora_vars().into_iter().map(|(_, v)| v).collect();
    let ex = examples(3, 9);
    let refs: Vec<&Example> = ex.iter().collect();
    let batch = collate(&refs, 0, &candle_core::Device::Cpu).unwrap();
    let start = model.dropout_rng().snapshot();
    let (l1, g1) = step::loss_and_grads(&model, &batch, &vars, 0.5, Backward::Plain).unwrap();
    let after_plain = model.dropout_rng().snapshot();
    model.dropout_rng().restore(&start);
    let (l2, g2) =
        step::loss_and_grads(&model, &batch, &vars, 0.5, Backward::RecomputeLayers).unwrap();
    assert_eq!(
        model.dropout_rng().snapshot(),
        after_plain,
        "stream ends where a plain step leaves it"
    );
    assert!((l1 - l2).abs() < 1e-5, "loss {l1} vs {l2}");
    let mut max = 0f32;
    let mut nonzero = 0;
    for (a, b) in g1.iter().zip(&g2) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        let d: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        max = max.max(d);
        let n: f32 = a.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        if n > 0.0 {
            nonzero += 1;
        }
    }
    assert!(max <= 1e-5, "gradients differ by {max}");
    assert_eq!(nonzero, vars.len(), "every LoRA tensor got a gradient");
}

#[test]
fn same_seed_gives_bit_identical_adapters_and_loss_falls() {
    let tiny = Tiny::default();
    let data = examples(24, 1);
    let val = examples(8, 2);
    let run = |backward| {
        let mut model = tiny.model(3);
        let mut events = 0;
        let out = train(
            &mut model,
            &data,
            &val,
            &cfg(3),
            &lora(0.1),
            &opts(None, backward),
            &CancellationToken::new(),
            |_| events += 1,
        )
        .unwrap();
        (out, events)
    };
    let (a, events) = run(Backward::Plain);
    let (b, _) = run(Backward::Plain);
    assert_eq!(
        a.adapter.content_hash().unwrap(),
        b.adapter.content_hash().unwrap(),
        "same seed, same adapter"
    );
    assert_eq!(a.steps, 9, "24 examples / (4 × 2) per step × 3 epochs");
    assert_eq!(a.ending, Ending::Completed);
    let first = a.first_val_loss().unwrap();
    assert!(
        a.best_val_loss.unwrap() < first,
        "validation loss fell: {first} → {:?}",
        a.best_val_loss
    );
    // 9 steps + validations at steps 3·k not at an epoch end (none here: 3 steps per epoch) + 3 epoch ends.
    assert_eq!(events, 9 + 3);
    let (c, _) = run(Backward::RecomputeLayers);
    let (ha, hc) = (
        a.adapter.content_hash().unwrap(),
        c.adapter.content_hash().unwrap(),
    );
    // Recomputation reorders float sums, so the adapters agree closely but need not be bit-equal.
    for (k, t) in &a.adapter.tensors {
        let d: f32 = (t - &c.adapter.tensors[k])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-4, "{k}: recompute drifts by {d} ({ha} vs {hc})");
    }
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let tiny = Tiny::default();
    let data = examples(16, 4);
    let val = examples(4, 5);
    let full_dir = tempfile::tempdir().unwrap();
    let mut model = tiny.model(3);
    let full = train(
        &mut model,
        &data,
        &val,
        &cfg(3),
        &lora(0.1),
        &opts(Some(full_dir.path()), Backward::Plain),
        &CancellationToken::new(),
        |_| {},
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let mut model = tiny.model(3);
    let c2 = cancel.clone();
    let err = train(
        &mut model,
        &data,
        &val,
        &cfg(3),
        &lora(0.1),
        &opts(Some(dir.path()), Backward::Plain),
        &cancel,
        |e| {
            // Stop once epoch 1's validation is in; its checkpoint is written before the next step.
            if let shared::task::ProgressEvent::Validation { epoch: 1, .. } = e {
                c2.cancel();
            }
        },
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::Cancelled { step: 2 }), "{err}");
    assert!(dir.path().join("trainer_state.json").exists());

    let mut model = tiny.model(3);
    let resumed = train(
        &mut model,
        &data,
        &val,
        &cfg(3),
        &lora(0.1),
        &opts(Some(dir.path()), Backward::Plain),
        &CancellationToken::new(),
        |_| {},
    )
    .unwrap();
    assert_eq!(resumed.steps, full.steps);
    assert_eq!(resumed.curve, full.curve, "same losses at every step");
    assert_eq!(
        resumed.adapter.content_hash().unwrap(),
        full.adapter.content_hash().unwrap()
    );
}

#[test]
fn cancellation_stops_before_the_next_step() {
    let tiny = Tiny::default();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let mut model = tiny.model(3);
    let err = train(
        &mut model,
        &examples(8, 1),
        &[],
        &cfg(1),
        &lora(0.0),
        &opts(None, Backward::Plain),
        &cancel,
        |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::Cancelled { step: 0 }), "{err}");
}

#[test]
fn early_stopping_ends_the_run_and_keeps_the_best_adapter() {
    let tiny = Tiny::default();
    let mut model = tiny.model(3);
    // A huge learning rate makes validation loss worse after the first epochs.
    let c = TrainingConfig {
        learning_rate: 0.5,
        early_stopping_patience: 1,
        eval_every_steps: 1,
        epochs: 6,
        ..cfg(6)
    };
    let out = train(
        &mut model,
        &examples(16, 1),
        &examples(4, 2),
        &c,
        &lora(0.0),
        &opts(None, Backward::Plain),
        &CancellationToken::new(),
        |_| {},
    )
    .unwrap();
    assert_eq!(out.ending, Ending::EarlyStopped);
    assert!(out.steps < out.total_steps);
    let ex = examples(4, 2);
    let best =
        engine::train::mean_loss(&mut model, &ex, engine::train::Layout::Fixed, 4, 0).unwrap();
    assert!(
        (best - out.best_val_loss.unwrap()).abs() < 1e-5,
        "model holds the best adapter: {best} vs {:?}",
        out.best_val_loss
    );
}
