//! Batched greedy generation against one-at-a-time generation on a tiny random model (f32, CPU).
mod common;

use agent::generate::{StopReason, generate};
use common::Tiny;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shared::config::GenerationConfig;
use tokio_util::sync::CancellationToken;

fn prompts(n: usize, vocab: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            (0..(3 + (i * 5) % 11))
                .map(|_| rng.random_range(3..vocab))
                .collect()
        })
        .collect()
}

#[test]
fn left_padded_batches_generate_exactly_what_single_rows_generate() {
    let tiny = Tiny::default();
    let model = tiny.model(7);
    let ps = prompts(7, tiny.vocab as u32, 1);
    let cancel = CancellationToken::new();
    // Stop ids taken from an unstopped run, so some rows finish early and at different steps.
    let free_cfg = GenerationConfig {
        max_new_tokens: 12,
        batch_size: 8,
    };
    let (free, _) = generate(&model, &ps, &[], &free_cfg, &cancel, |_| {}).unwrap();
    let stop = [free[0].generated[2], free[3].generated[5]];
    let batched_cfg = GenerationConfig {
        max_new_tokens: 12,
        batch_size: 4,
    };
    let mut streamed = 0;
    let (batched, stats) = generate(&model, &ps, &stop, &batched_cfg, &cancel, |b| {
        streamed += b.len()
    })
    .unwrap();
    assert_eq!(streamed, ps.len(), "every row is streamed once");
    let single_cfg = GenerationConfig {
        max_new_tokens: 12,
        batch_size: 1,
    };
    let mut total = 0;
    for (i, p) in ps.iter().enumerate() {
        let (one, _) = generate(
            &model,
            std::slice::from_ref(p),
            &stop,
            &single_cfg,
            &cancel,
            |_| {},
        )
        .unwrap();
        assert_eq!(batched[i].index, i);
        assert_eq!(
            batched[i].generated, one[0].generated,
            "row {i} differs when batched"
        );
        assert_eq!(batched[i].stop, one[0].stop);
        assert_eq!(batched[i].prompt_tokens, p.len());
        match batched[i].stop {
            StopReason::StopToken => assert!(stop.contains(batched[i].generated.last().unwrap())),
            StopReason::MaxNewTokens => assert_eq!(batched[i].generated.len(), 12),
        }
        total += batched[i].generated.len();
    }
    assert_eq!(
        stats.generated_tokens, total,
        "token counts exclude padding"
    );
    assert_eq!(stats.prompt_tokens, ps.iter().map(Vec::len).sum::<usize>());
}

#[test]
fn cancellation_stops_generation() {
    let tiny = Tiny::default();
    let model = tiny.model(7);
    let ps = prompts(3, tiny.vocab as u32, 2);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let cfg = GenerationConfig {
        max_new_tokens: 8,
        batch_size: 2,
    };
    let err = generate(&model, &ps, &[], &cfg, &cancel, |_| {}).unwrap_err();
    assert!(matches!(err, agent::error::AgentError::Cancelled), "{err}");
}
