//! The workloads the benchmarks and the memory trace run: seeded random token ids, a LoRA training
//! step (forward, backward, AdamW), a prefill, and batched greedy generation without early stop.
use candle_core::{Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shared::config::{GenerationConfig, LoraConfig};
use tokio_util::sync::CancellationToken;

use super::Result;
use engine::generate::{GenerationStats, generate};
use engine::model::{Mode, Model, PROJECTIONS};
use engine::train::optim::{AdamW, AdamWParams};
use engine::train::{Backward, Batch, Example, collate};

/// Token ids in `[3, min(vocab, 32000))`, as `torch_ref.py`'s `fixed_ids` draws them (not the same
/// numbers: the workloads match in shape and range, not token for token).
pub fn random_ids(vocab: usize, len: usize, rng: &mut ChaCha8Rng) -> Vec<u32> {
    let hi = vocab.min(32_000) as u32;
    (0..len).map(|_| rng.random_range(3..hi.max(4))).collect()
}

/// `[b, t]` random ids as a tensor on the model's device.
pub fn random_batch(model: &Model, b: usize, t: usize, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ids = random_ids(model.config().vocab_size, b * t, &mut rng);
    Ok(Tensor::from_vec(ids, (b, t), model.device())?)
}

/// Prompt lengths ~ N(mean, sd) clamped to `[lo, hi]` (MedSynth dialogues: ~1,200 ± 300 tokens).
pub fn prompt_lengths(n: usize, mean: f64, sd: f64, lo: usize, hi: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            // Box-Muller: one standard normal from two uniforms.
            let u1: f64 = rng.random_range(f64::EPSILON..1.0);
            let u2: f64 = rng.random();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            ((mean + sd * z).round() as i64).clamp(lo as i64, hi as i64) as usize
        })
        .collect()
}

/// Random prompts of the given lengths.
pub fn random_prompts(vocab: usize, lengths: &[usize], seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    lengths
        .iter()
        .map(|&l| random_ids(vocab, l, &mut rng))
        .collect()
}

/// A LoRA fine-tuning setup: adapters of rank `r` (alpha `2 r`, no dropout) on all seven
/// projections, AdamW over them, and one fixed batch whose labels are every token but the first
/// (HF's `labels = input_ids`).
pub struct Trainer {
    pub batch: Batch,
    vars: Vec<Var>,
    opt: AdamW,
    backward: Backward,
}

impl Trainer {
    pub fn new(
        model: &mut Model,
        r: usize,
        b: usize,
        t: usize,
        backward: Backward,
    ) -> Result<Self> {
        let lora = LoraConfig {
            r,
            alpha: 2.0 * r as f64,
            dropout: 0.0,
            target_modules: PROJECTIONS.iter().map(|s| s.to_string()).collect(),
        };
        model.add_lora(&lora, 0)?;
        model.set_mode(Mode::Train);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let examples: Vec<Example> = (0..b)
            .map(|_| Example {
                ids: random_ids(model.config().vocab_size, t, &mut rng),
                prompt_len: 1,
            })
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let batch = collate(&refs, 0, model.device())?;
        let vars: Vec<Var> = model.lora_vars().into_iter().map(|(_, v)| v).collect();
        let opt = AdamW::new(vars.clone(), AdamWParams::default())?;
        Ok(Self {
            batch,
            vars,
            opt,
            backward,
        })
    }

    /// One optimiser step; returns the mean loss.
    pub fn step(&mut self, model: &Model) -> Result<f64> {
        let scale = 1.0 / self.batch.label_tokens as f64;
        let (sum, grads) = engine::train::step::loss_and_grads(
            model,
            &self.batch,
            &self.vars,
            scale,
            self.backward,
        )?;
        self.opt.step(&grads, 1e-4)?;
        engine::gpu::prof::lap(model.device(), "optimizer");
        if let Some(r) = engine::gpu::prof::report() {
            eprint!("{r}");
        }
        Ok(sum * scale)
    }
}

/// Last-position logits of a full prefill without a cache (`logits_to_keep=1` on the torch side).
pub fn prefill(model: &Model, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let ctx = model.attn_ctx(&vec![0; b], 0, t)?;
    Ok(model.forward_last(ids, &ctx, None)?)
}

/// Greedy generation of exactly `new` tokens per prompt (no stop ids), `batch` prompts at a time.
pub fn generate_all(
    model: &Model,
    prompts: &[Vec<u32>],
    new: usize,
    batch: usize,
) -> Result<GenerationStats> {
    let cfg = GenerationConfig {
        max_new_tokens: new,
        batch_size: batch,
    };
    let (_, stats) = generate(model, prompts, &[], &cfg, &CancellationToken::new(), |_| {})?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_lengths_follow_the_distribution_and_clamp() {
        let l = prompt_lengths(4000, 1200.0, 300.0, 400, 2400, 8);
        let mean = l.iter().sum::<usize>() as f64 / l.len() as f64;
        let var = l.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / l.len() as f64;
        assert!((mean - 1200.0).abs() < 20.0, "mean {mean}");
        assert!((var.sqrt() - 300.0).abs() < 20.0, "sd {}", var.sqrt());
        assert!(l.iter().all(|&x| (400..=2400).contains(&x)));
        assert_eq!(l, prompt_lengths(4000, 1200.0, 300.0, 400, 2400, 8));
    }
}
