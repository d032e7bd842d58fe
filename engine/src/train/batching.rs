//! Which examples form each micro-batch and optimiser step of an epoch: fixed-size micro-batches in
//! the seeded epoch order, or length-grouped micro-batches (similar lengths together, optionally
//! under a token budget), the "group by length" sampler of HF `group_by_length` / fairseq.
//!
//! Both layouts give an optimiser step the same examples count (`batch_size ×
//! gradient_accumulation_steps`, the epoch's last step takes the rest), so the number of steps and
//! the learning-rate schedule do not depend on the layout; the loss of a step is its summed
//! cross-entropy over all its label tokens (see [`super::step::loss_and_grads`]), which does not
//! depend on how the step is cut into micro-batches.
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Optimiser steps per sorting window of length-grouped batching: examples are sorted by length
/// within `WINDOW_STEPS` steps' worth of the shuffled order (HF sorts within 50 micro-batches).
pub const WINDOW_STEPS: usize = 16;

/// The micro-batch layout of a run, resolved for its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `batch_size` examples per micro-batch in the seeded epoch order.
    #[default]
    Fixed,
    /// Similar lengths share a micro-batch; with `max_tokens`, a micro-batch holds as many
    /// examples as keep `rows × padded width ≤ max_tokens` (an example longer than that goes
    /// alone), else `batch_size` examples.
    LengthGrouped { max_tokens: Option<usize> },
}

/// One epoch: optimiser steps, each a list of micro-batches of example indices.
pub type EpochPlan = Vec<Vec<Vec<usize>>>;

fn epoch_rng(seed: u64, epoch: u32) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (u64::from(epoch) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Epoch `epoch`'s example order: a permutation seeded by (seed, epoch) only, so a resumed run
/// sees the same order as an uninterrupted one.
pub fn epoch_order(n: usize, seed: u64, epoch: u32) -> Vec<usize> {
    shuffled(n, &mut epoch_rng(seed, epoch))
}

fn shuffled(n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order
}

/// Padded tokens (`rows × longest row`) of a micro-batch.
pub fn padded_tokens(micro: &[usize], lengths: &[usize]) -> usize {
    micro.len() * micro.iter().map(|&i| lengths[i]).max().unwrap_or(0)
}

/// Cuts `sorted` (longest first) into micro-batches: under `max_tokens` when given, else
/// `batch_size` examples each.
fn cut(
    sorted: &[usize],
    lengths: &[usize],
    batch_size: usize,
    max_tokens: Option<usize>,
) -> Vec<Vec<usize>> {
    let Some(budget) = max_tokens else {
        return sorted
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect();
    };
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut width = 0;
    for &i in sorted {
        match out.last_mut() {
            // Longest first: the micro-batch's width is its first example's length.
            Some(m) if (m.len() + 1) * width <= budget => m.push(i),
            _ => {
                width = lengths[i];
                out.push(vec![i]);
            }
        }
    }
    out
}

/// Sorts `indices` by length, longest first; ties keep their (shuffled) order.
fn longest_first(indices: &mut [usize], lengths: &[usize]) {
    indices.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
}

/// Epoch `epoch`'s steps for examples of `lengths` tokens. Deterministic in (seed, epoch,
/// lengths, settings), so a resumed run replays the same plan.
///
/// [`Layout::Fixed`]: the seeded order cut into `batch_size` micro-batches, grouped
/// `accumulation` to a step. [`Layout::LengthGrouped`]: the same seeded order cut into windows
/// of [`WINDOW_STEPS`] steps; each window sorted by length and cut into steps of `batch_size ×
/// accumulation` examples; each step cut into micro-batches ([`Layout`]); then the steps are
/// shuffled by the same random stream, and the step holding the most padded tokens goes first, so
/// the peak memory is met (and the allocator's pool sized) at the start.
pub fn plan_epoch(
    lengths: &[usize],
    layout: Layout,
    batch_size: usize,
    accumulation: usize,
    seed: u64,
    epoch: u32,
) -> EpochPlan {
    let (batch_size, accumulation) = (batch_size.max(1), accumulation.max(1));
    let mut rng = epoch_rng(seed, epoch);
    let order = shuffled(lengths.len(), &mut rng);
    let max_tokens = match layout {
        Layout::Fixed => {
            let micro: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
            return micro
                .chunks(accumulation)
                .map(<[Vec<usize>]>::to_vec)
                .collect();
        }
        Layout::LengthGrouped { max_tokens } => max_tokens,
    };
    let per_step = batch_size * accumulation;
    let mut steps: EpochPlan = Vec::with_capacity(lengths.len().div_ceil(per_step));
    for window in order.chunks(per_step * WINDOW_STEPS) {
        let mut window = window.to_vec();
        longest_first(&mut window, lengths);
        for step in window.chunks(per_step) {
            steps.push(cut(step, lengths, batch_size, max_tokens));
        }
    }
    steps.shuffle(&mut rng);
    let biggest = |s: &Vec<Vec<usize>>| s.iter().map(|m| padded_tokens(m, lengths)).max();
    if let Some(first) =
        (0..steps.len()).max_by_key(|&i| (biggest(&steps[i]), std::cmp::Reverse(i)))
    {
        steps.swap(0, first);
    }
    steps
}

/// Micro-batches for a loss over every example once (validation): in order, `batch_size` each,
/// with [`Layout::Fixed`]; sorted by length and cut as [`Layout`] says with length grouping.
pub fn eval_batches(lengths: &[usize], layout: Layout, batch_size: usize) -> Vec<Vec<usize>> {
    let mut all: Vec<usize> = (0..lengths.len()).collect();
    match layout {
        Layout::Fixed => all
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect(),
        Layout::LengthGrouped { max_tokens } => {
            longest_first(&mut all, lengths);
            cut(&all, lengths, batch_size, max_tokens)
        }
    }
}

/// Real and padded tokens over `micro` batches, for reporting the padding fraction.
pub fn token_counts<'a>(
    micro: impl IntoIterator<Item = &'a Vec<usize>>,
    lengths: &[usize],
) -> (usize, usize) {
    micro.into_iter().fold((0, 0), |(real, padded), m| {
        (
            real + m.iter().map(|&i| lengths[i]).sum::<usize>(),
            padded + padded_tokens(m, lengths),
        )
    })
}

#[cfg(test)]
#[path = "batching_tests.rs"]
mod tests;
