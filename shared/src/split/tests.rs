//! Split tests: sizes, determinism, order independence, seed and content sensitivity, limits.
use super::*;

fn records(n: usize) -> Vec<Record> {
    (1..=n)
        .map(|i| Record {
            id: format!("r-{i:04}"),
            dialogue: format!("dialogue {i}"),
            note: String::new(),
            code: format!("A{:02}", i % 7),
            description: String::new(),
        })
        .collect()
}

fn ids(part: &[Record]) -> Vec<&str> {
    part.iter().map(|r| r.id.as_str()).collect()
}

#[test]
fn default_sizes_cover_everything_once() {
    let data = records(1000);
    let s = split(&data, &SplitConfig::default()).unwrap();
    assert_eq!(
        (s.train.len(), s.validation.len(), s.test.len()),
        (800, 100, 100)
    );
    let mut all: Vec<&str> = ids(&s.train)
        .into_iter()
        .chain(ids(&s.validation))
        .chain(ids(&s.test))
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 1000);
    assert_eq!(s.hash.len(), 64);
    // shuffled, not the input order
    assert_ne!(ids(&s.train)[..10], ids(&data[..10])[..]);
}

#[test]
fn rounding_never_loses_or_duplicates_records() {
    // 7 × 0.8 = 5.6 → 6; 7 × 0.1 = 0.7 → 1; test gets the remaining 0.
    let cfg = SplitConfig::default();
    let s = split(&records(7), &cfg).unwrap();
    assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (6, 1, 0));
    // 0.5 / 0.5 / 0 on 3 records: 1.5 → 2, 1.5 → 2 capped to the 1 left.
    let half = SplitConfig {
        train: 0.5,
        validation: 0.5,
        test: 0.0,
        seed: 1,
        ..SplitConfig::default()
    };
    let s = split(&records(3), &half).unwrap();
    assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (2, 1, 0));
    let s = split(&[], &cfg).unwrap();
    assert!(s.train.is_empty() && s.validation.is_empty() && s.test.is_empty());
}

#[test]
fn deterministic_and_independent_of_input_order() {
    let data = records(200);
    let cfg = SplitConfig::default();
    let a = split(&data, &cfg).unwrap();
    let b = split(&data, &cfg).unwrap();
    assert_eq!(a, b);
    let mut reversed = data.clone();
    reversed.reverse();
    let mut rotated = data.clone();
    rotated.rotate_left(77);
    assert_eq!(split(&reversed, &cfg).unwrap(), a);
    assert_eq!(split(&rotated, &cfg).unwrap(), a);
}

#[test]
fn pinned_order_for_seed_42() {
    // Pins ChaCha8 + SliceRandom::shuffle: a dependency upgrade that changes the stream would
    // silently change every published split, so it must fail here first.
    let s = split(&records(10), &SplitConfig::default()).unwrap();
    let pinned: Vec<&str> = ids(&s.train)
        .into_iter()
        .chain(ids(&s.validation))
        .chain(ids(&s.test))
        .collect();
    assert_eq!(pinned, PINNED_SEED_42);
    // Pins the hash layout too: results.json files from earlier runs are compared by it.
    assert_eq!(
        s.hash,
        "66c9c13d31215ca59ecf47aa4f88c130b86a28a662000218ee4cd54903abd1cf"
    );
}

const PINNED_SEED_42: [&str; 10] = [
    "r-0008", "r-0002", "r-0006", "r-0005", "r-0007", "r-0010", "r-0004", "r-0009", "r-0003",
    "r-0001",
];

#[test]
fn seed_changes_order_and_hash() {
    let data = records(200);
    let a = split(&data, &SplitConfig::default()).unwrap();
    let b = split(
        &data,
        &SplitConfig {
            seed: 43,
            ..SplitConfig::default()
        },
    )
    .unwrap();
    assert_ne!(ids(&a.test), ids(&b.test));
    assert_ne!(a.hash, b.hash);
}

#[test]
fn hash_changes_with_any_content_or_fraction() {
    let data = records(50);
    let cfg = SplitConfig::default();
    let base = split(&data, &cfg).unwrap().hash;
    let mut changed_dialogue = data.clone();
    changed_dialogue[3].dialogue.push('!');
    let mut changed_code = data.clone();
    changed_code[3].code = "Z99".into();
    let mut changed_id = data.clone();
    changed_id[3].id = "r-9999".into();
    for variant in [changed_dialogue, changed_code, changed_id] {
        assert_ne!(split(&variant, &cfg).unwrap().hash, base);
    }
    // Same sizes (50 × 0.1 = 5 either way) but different fractions: still a different hash.
    let other = SplitConfig {
        train: 0.79,
        validation: 0.11,
        test: 0.1,
        seed: 42,
        ..SplitConfig::default()
    };
    let s = split(&data, &other).unwrap();
    assert_eq!(s.validation.len(), 6);
    assert_ne!(s.hash, base);
    // The note and description are not model input and are not hashed.
    let mut changed_note = data.clone();
    changed_note[3].note = "new note".into();
    assert_eq!(split(&changed_note, &cfg).unwrap().hash, base);
}

#[test]
fn invalid_fractions_and_duplicate_ids_are_errors() {
    let data = records(10);
    let err = split(
        &data,
        &SplitConfig {
            train: 0.8,
            validation: 0.1,
            test: 0.2,
            seed: 1,
            ..SplitConfig::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, SplitError::FractionsDoNotSumToOne { .. }));
    assert!(err.to_string().contains("must sum to 1"), "{err}");
    let err = split(
        &data,
        &SplitConfig {
            train: 1.2,
            validation: -0.1,
            test: -0.1,
            seed: 1,
            ..SplitConfig::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err,
        SplitError::FractionOutOfRange {
            name: "train",
            value: 1.2
        }
    );
    // within tolerance is fine
    split(
        &data,
        &SplitConfig {
            train: 0.7,
            validation: 0.2,
            test: 0.1 + 5e-10,
            seed: 1,
            ..SplitConfig::default()
        },
    )
    .unwrap();
    let mut dup = data.clone();
    dup[5].id = dup[2].id.clone();
    let err = split(&dup, &SplitConfig::default()).unwrap_err();
    assert_eq!(
        err,
        SplitError::DuplicateId {
            id: "r-0003".into()
        }
    );
    assert!(err.to_string().contains("`r-0003`"));
}

#[test]
fn limit_eval_takes_the_first_n_of_the_shuffled_test_split() {
    let s = split(&records(300), &SplitConfig::default()).unwrap();
    assert_eq!(s.test.len(), 30);
    assert_eq!(limit_eval(&s.test, None).len(), 30);
    let limited = limit_eval(&s.test, Some(7));
    assert_eq!(limited.len(), 7);
    assert_eq!(limited, &s.test[..7]);
    assert_eq!(s.eval_samples(Some(7)), limited);
    assert_eq!(limit_eval(&s.test, Some(1000)).len(), 30);
    assert!(limit_eval(&s.test, Some(0)).is_empty());
}

#[test]
fn train_code_counts_counts_the_train_part_only() {
    let s = split(&records(70), &SplitConfig::default()).unwrap();
    let counts = s.train_code_counts();
    assert_eq!(counts.values().sum::<usize>(), s.train.len());
    let a00 = s.train.iter().filter(|r| r.code == "A00").count();
    assert_eq!(counts.get("A00").copied().unwrap_or(0), a00);
}

/// MedSynth-like: 200 codes with 5 records and 20 codes with 10, ids interleaved across codes.
fn medsynth_like() -> Vec<Record> {
    let mut out = Vec::new();
    for c in 0..220 {
        let count = if c < 200 { 5 } else { 10 };
        for k in 0..count {
            out.push(Record {
                id: format!("m-{:05}", k * 1000 + c),
                dialogue: format!("d {c} {k}"),
                note: String::new(),
                code: format!("C{c:03}"),
                description: String::new(),
            });
        }
    }
    out
}

fn stratified_cfg(seed: u64) -> SplitConfig {
    SplitConfig {
        seed,
        strategy: SplitStrategy::StratifiedByCode,
        ..SplitConfig::default()
    }
}

#[test]
fn deal_hits_exact_sizes_and_stays_within_one_of_every_prefix_share() {
    for sizes in [
        [8, 1, 1],
        [800, 100, 100],
        [6, 1, 0],
        [0, 0, 5],
        [3, 3, 3],
        [7, 2, 4],
        [1, 0, 0],
    ] {
        let n: usize = sizes.iter().sum();
        let dealt = deal(sizes);
        assert_eq!(dealt.len(), n);
        let mut counts = [0usize; 3];
        for (i, &part) in dealt.iter().enumerate() {
            counts[part] += 1;
            for p in 0..3 {
                let share = (i + 1) as f64 * sizes[p] as f64 / n as f64;
                assert!(
                    (counts[p] as f64 - share).abs() < 1.0 + 1e-9,
                    "{sizes:?} at {i}: part {p} has {} of share {share}",
                    counts[p]
                );
            }
        }
        assert_eq!(counts, sizes);
    }
    assert!(deal([0, 0, 0]).is_empty());
}

#[test]
fn stratified_keeps_sizes_and_puts_every_test_code_in_training() {
    let data = medsynth_like();
    let random = split(&data, &SplitConfig::default()).unwrap();
    let s = split(&data, &stratified_cfg(42)).unwrap();
    let sizes = |s: &Split| (s.train.len(), s.validation.len(), s.test.len());
    assert_eq!(sizes(&s), sizes(&random));
    assert_eq!(sizes(&s), (960, 120, 120));
    let train_counts = s.train_code_counts();
    for r in s.test.iter().chain(&s.validation) {
        let seen = train_counts.get(&r.code).copied().unwrap_or(0);
        assert!(
            seen >= 3,
            "code {} has only {seen} training records",
            r.code
        );
    }
    // The random split leaves some test codes with fewer training examples: what stratifying fixes.
    let random_counts = random.train_code_counts();
    assert!(
        random
            .test
            .iter()
            .any(|r| random_counts.get(&r.code).copied().unwrap_or(0) < 3)
    );
    // Every record exactly once.
    let mut all: Vec<&str> = ids(&s.train)
        .into_iter()
        .chain(ids(&s.validation))
        .chain(ids(&s.test))
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), data.len());
}

#[test]
fn stratified_is_deterministic_order_independent_and_seeded() {
    let data = medsynth_like();
    let a = split(&data, &stratified_cfg(42)).unwrap();
    let mut reversed = data.clone();
    reversed.reverse();
    assert_eq!(split(&reversed, &stratified_cfg(42)).unwrap(), a);
    let b = split(&data, &stratified_cfg(7)).unwrap();
    assert_ne!(ids(&a.test), ids(&b.test));
    assert_ne!(a.hash, b.hash);
    assert_ne!(a.hash, split(&data, &SplitConfig::default()).unwrap().hash);
    // The test part is shuffled, not grouped by code: its first records are not in code order.
    let codes: Vec<&str> = a.test.iter().take(20).map(|r| r.code.as_str()).collect();
    let mut sorted = codes.clone();
    sorted.sort();
    assert_ne!(codes, sorted);
}

#[test]
fn split_config_reads_from_toml() {
    let cfg: SplitConfig = toml::from_str("strategy = \"stratified_by_code\"\nseed = 7").unwrap();
    assert_eq!(
        cfg,
        SplitConfig {
            seed: 7,
            strategy: SplitStrategy::StratifiedByCode,
            ..SplitConfig::default()
        }
    );
    let cfg: SplitConfig = toml::from_str("train = 0.7\nvalidation = 0.15\ntest = 0.15").unwrap();
    assert_eq!(cfg.strategy, SplitStrategy::Random);
    assert!(toml::from_str::<SplitConfig>("tran = 0.7").is_err());
}
