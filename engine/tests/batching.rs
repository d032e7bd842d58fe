//! Micro-batch layouts on a tiny random model: a step's loss and gradients do not depend on how it
//! is cut into micro-batches; length-grouped training is reproducible, learns, and pads less.

/// The allocator the engine is tuned for (`engine::alloc`), as in the binaries.
#[global_allocator]
static GLOBAL: engine::alloc::MiMalloc = engine::alloc::MiMalloc;

use candle_core::{Device, Tensor, Var};
use engine::model::Mode;
use engine::testkit::Tiny;
use engine::train::{Backward, Example, Layout, Resume, TrainOptions, collate, step, train};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shared::config::{LoraConfig, LrSchedule, TrainingConfig};
use tokio_util::sync::CancellationToken;

const EOS: u32 = 2;

/// Prompts of skewed length (mostly short, a few long) whose answer is a token determined by the
/// prompt's first content token.
fn examples(n: usize, seed: u64) -> Vec<Example> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let key = rng.random_range(10u32..20);
            let len = if rng.random_range(0..5) == 0 {
                rng.random_range(30..60)
            } else {
                rng.random_range(3..10)
            };
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

/// Summed loss and gradients of one optimiser step made of `micro` (indices into `ex`), each
/// micro-batch scaled by one over the step's label tokens as the training loop does.
fn step_grads(
    model: &engine::model::Model,
    vars: &[Var],
    ex: &[Example],
    micro: &[Vec<usize>],
) -> (f64, Vec<Tensor>) {
    let labels: usize = micro.iter().flatten().map(|&i| ex[i].label_count()).sum();
    let mut sum = 0.0;
    let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
    for m in micro {
        let refs: Vec<&Example> = m.iter().map(|&i| &ex[i]).collect();
        let b = collate(&refs, 0, &Device::Cpu).unwrap();
        let (s, g) =
            step::loss_and_grads(model, &b, vars, 1.0 / labels as f64, Backward::Plain).unwrap();
        sum += s;
        for (a, g) in acc.iter_mut().zip(g) {
            let g = g.unwrap();
            *a = Some(match a.take() {
                Some(prev) => (prev + g).unwrap(),
                None => g,
            });
        }
    }
    (
        sum / labels as f64,
        acc.into_iter().map(Option::unwrap).collect(),
    )
}

#[test]
fn a_step_cut_into_other_micro_batches_has_the_same_loss_and_gradients() {
    let tiny = Tiny::default();
    let mut model = tiny.model(3);
    model.add_lora(&lora(0.0), 5).unwrap();
    // Non-zero B so every adapter tensor gets a gradient.
    for (name, var) in model.lora_vars() {
        if name.contains("lora_B") {
            let mut rng = ChaCha8Rng::seed_from_u64(name.len() as u64);
            let v: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(-0.1f32..0.1))
                .collect();
            var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    model.set_mode(Mode::Train);
    let vars: Vec<Var> = model.lora_vars().into_iter().map(|(_, v)| v).collect();
    let ex = examples(6, 9);
    let whole = step_grads(&model, &vars, &ex, &[vec![0, 1, 2, 3, 4, 5]]);
    for split in [
        vec![vec![0, 1], vec![2, 3, 4, 5]],
        vec![vec![5], vec![1, 3], vec![0, 2, 4]],
    ] {
        let (loss, grads) = step_grads(&model, &vars, &ex, &split);
        assert!((loss - whole.0).abs() < 1e-5, "loss {loss} vs {}", whole.0);
        for (a, b) in grads.iter().zip(&whole.1) {
            let d: f32 = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let n: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(n > 0.0, "every adapter tensor has a gradient");
            assert!(
                d <= 1e-5 * n.max(1.0),
                "{split:?}: gradients differ by {d} (max {n})"
            );
        }
    }
}

fn cfg() -> TrainingConfig {
    TrainingConfig {
        learning_rate: 1e-2,
        schedule: LrSchedule::Cosine,
        warmup_ratio: 0.1,
        epochs: 3,
        early_stopping_patience: 0,
        eval_every_steps: 0,
        max_length: 64,
        batch_size: 4,
        gradient_accumulation_steps: 2,
        seed: 11,
        ..TrainingConfig::default()
    }
}

#[test]
fn length_grouped_training_is_reproducible_learns_and_pads_less() {
    let tiny = Tiny::default();
    let data = examples(48, 1);
    let val = examples(8, 2);
    let run = |layout| {
        let mut model = tiny.model(3);
        let opts = TrainOptions {
            backward: Backward::Plain,
            layout,
            pad_id: 0,
            checkpoint_dir: None,
            resume: Resume::Fresh,
            base_model: "tiny".into(),
            revision: None,
        };
        train(
            &mut model,
            &data,
            &val,
            &cfg(),
            &lora(0.1),
            &opts,
            &CancellationToken::new(),
            |_| {},
        )
        .unwrap()
    };
    let grouped = Layout::LengthGrouped {
        max_tokens: Some(64),
    };
    let (a, b) = (run(grouped), run(grouped));
    assert_eq!(
        a.adapter.content_hash().unwrap(),
        b.adapter.content_hash().unwrap(),
        "same seed, same adapter"
    );
    let fixed = run(Layout::Fixed);
    // Same examples per step in both layouts: the same number of steps and trained tokens.
    assert_eq!(
        (a.steps, fixed.steps),
        (18, 18),
        "48 / (4 × 2) per step × 3"
    );
    assert_eq!(a.trained_tokens, fixed.trained_tokens);
    assert!(
        a.padding_fraction() < fixed.padding_fraction() / 3.0,
        "padding {:.3} grouped vs {:.3} fixed",
        a.padding_fraction(),
        fixed.padding_fraction()
    );
    let first = a.first_val_loss().unwrap();
    assert!(
        a.best_val_loss.unwrap() < first,
        "validation loss fell: {first} → {:?}",
        a.best_val_loss
    );
}
