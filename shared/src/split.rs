//! The seeded train / validation / test split of a dataset and its content hash.
//!
//! Records are first sorted by id, so the result does not depend on the order they were loaded in,
//! and every random choice comes from `ChaCha8Rng::seed_from_u64(seed)`, so it is identical across
//! runs and platforms. Two strategies ([`SplitStrategy`]):
//! - `random` (default): the sorted records are shuffled and cut into three parts. Not stratified:
//!   with ~5 rows per code in MedSynth, some test codes have few or no training examples (the
//!   report's frequency breakdowns show this).
//! - `stratified_by_code`: each code's records are shuffled and kept together, the groups are
//!   shuffled, and positions along that list are dealt to the parts in proportion (each part's
//!   share of every prefix stays within one record of its target). Part sizes are the same as for
//!   `random`, and every part gets its share of each code: with 5 rows per code and 0.8 / 0.1 / 0.1,
//!   a code has at most one test and one validation row, so every test code is seen in training.
use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::dataset::Record;

/// How records are assigned to the parts (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitStrategy {
    /// Shuffle all records and cut.
    #[default]
    Random,
    /// Spread each code's records over the parts in proportion.
    StratifiedByCode,
}

impl SplitStrategy {
    fn name(self) -> &'static str {
        match self {
            SplitStrategy::Random => "random",
            SplitStrategy::StratifiedByCode => "stratified_by_code",
        }
    }
}

/// Split fractions, strategy and seed (the `[data.split]` section of the experiment config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    pub train: f64,
    pub validation: f64,
    pub test: f64,
    pub seed: u64,
    pub strategy: SplitStrategy,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            train: 0.8,
            validation: 0.1,
            test: 0.1,
            seed: 42,
            strategy: SplitStrategy::Random,
        }
    }
}

/// Tolerance on `train + validation + test == 1`.
pub const FRACTION_SUM_TOLERANCE: f64 = 1e-9;

impl SplitConfig {
    /// Checks each fraction is in [0, 1] and that they sum to 1 (±[`FRACTION_SUM_TOLERANCE`]).
    pub fn validate(&self) -> Result<(), SplitError> {
        for (name, value) in [
            ("train", self.train),
            ("validation", self.validation),
            ("test", self.test),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(SplitError::FractionOutOfRange { name, value });
            }
        }
        let sum = self.train + self.validation + self.test;
        if (sum - 1.0).abs() > FRACTION_SUM_TOLERANCE {
            return Err(SplitError::FractionsDoNotSumToOne {
                train: self.train,
                validation: self.validation,
                test: self.test,
                sum,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum SplitError {
    #[error("split fraction `{name}` is {value}; it must be between 0 and 1")]
    FractionOutOfRange { name: &'static str, value: f64 },
    #[error(
        "split fractions train {train} + validation {validation} + test {test} = {sum}; they must sum to 1"
    )]
    FractionsDoNotSumToOne {
        train: f64,
        validation: f64,
        test: f64,
        sum: f64,
    },
    #[error(
        "record id `{id}` occurs more than once; the split needs unique ids to be reproducible"
    )]
    DuplicateId { id: String },
}

/// The three parts, each in shuffled order, and the hash of their content.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub train: Vec<Record>,
    pub validation: Vec<Record>,
    pub test: Vec<Record>,
    /// Hex SHA-256 over every part's ids, codes and dialogues in order, plus the fractions and the
    /// strategy.
    pub hash: String,
}

impl Split {
    /// The test records evaluation actually uses (see [`limit_eval`]).
    pub fn eval_samples(&self, max_eval_samples: Option<usize>) -> &[Record] {
        limit_eval(&self.test, max_eval_samples)
    }

    /// How often each (normalised) code occurs in the train split, sorted by code: the report's
    /// frequent / rare / unseen breakdowns use it.
    pub fn train_code_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in &self.train {
            *counts.entry(r.code.clone()).or_insert(0) += 1;
        }
        counts
    }
}

/// Splits `records` reproducibly: the same records (in any order), fractions, strategy and seed
/// always give the same parts in the same order and the same hash. Every part is in shuffled order,
/// so its first N records are a random subset ([`limit_eval`], `max_train_samples`).
///
/// Sizes: `train = round(n × train)`, `validation = round(n × validation)` (capped to what is left),
/// `test` = the rest, so the parts always cover every record exactly once.
pub fn split(records: &[Record], cfg: &SplitConfig) -> Result<Split, SplitError> {
    cfg.validate()?;
    let mut order: Vec<&Record> = records.iter().collect();
    order.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(w) = order.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(SplitError::DuplicateId {
            id: w[0].id.clone(),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let n = order.len();
    let n_train = part_size(n, cfg.train).min(n);
    let n_validation = part_size(n, cfg.validation).min(n - n_train);
    let sizes = [n_train, n_validation, n - n_train - n_validation];
    let (train, validation, test) = match cfg.strategy {
        SplitStrategy::Random => {
            order.shuffle(&mut rng);
            let (train, rest) = order.split_at(n_train);
            let (validation, test) = rest.split_at(n_validation);
            (train.to_vec(), validation.to_vec(), test.to_vec())
        }
        SplitStrategy::StratifiedByCode => stratified(order, sizes, &mut rng),
    };
    let owned = |part: &[&Record]| part.iter().map(|r| (*r).clone()).collect::<Vec<_>>();
    let (train, validation, test) = (owned(&train), owned(&validation), owned(&test));
    let hash = content_hash(&[&train, &validation, &test], cfg);
    Ok(Split {
        train,
        validation,
        test,
        hash,
    })
}

type Parts<'a> = (Vec<&'a Record>, Vec<&'a Record>, Vec<&'a Record>);

/// `order` is sorted by id; `sizes` are the train / validation / test sizes.
fn stratified<'a>(order: Vec<&'a Record>, sizes: [usize; 3], rng: &mut ChaCha8Rng) -> Parts<'a> {
    let mut groups: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in order {
        groups.entry(r.code.as_str()).or_default().push(r);
    }
    let mut groups: Vec<Vec<&Record>> = groups.into_values().collect();
    for group in &mut groups {
        group.shuffle(rng);
    }
    groups.shuffle(rng);
    let mut parts: [Vec<&Record>; 3] = Default::default();
    for (record, part) in groups.concat().into_iter().zip(deal(sizes)) {
        parts[part].push(record);
    }
    // Within a part the records are still grouped by code; shuffle so that the first N test records
    // (`limit_eval`) are a random subset, like for the random strategy.
    for part in &mut parts {
        part.shuffle(rng);
    }
    let [train, validation, test] = parts;
    (train, validation, test)
}

/// Deals positions `0..sum(sizes)` to parts 0, 1, 2 so that each part's count over every prefix
/// stays within one of its proportional share: each position goes to the part furthest behind its
/// share (exact integer arithmetic; ties go to the smaller parts, test first). A part that is full
/// gets no more, so the totals are exactly `sizes`.
fn deal(sizes: [usize; 3]) -> Vec<usize> {
    let n = sizes.iter().sum::<usize>() as u128;
    let mut assigned = [0u128; 3];
    (1..=n)
        .map(|position| {
            let mut best: Option<(usize, i128)> = None;
            for part in [2, 1, 0] {
                if assigned[part] == sizes[part] as u128 {
                    continue;
                }
                // (share of this prefix − records assigned) × n, kept integral.
                let behind =
                    (position * sizes[part] as u128) as i128 - (assigned[part] * n) as i128;
                if best.is_none_or(|(_, b)| behind > b) {
                    best = Some((part, behind));
                }
            }
            // Some part is always below its size while positions remain: sizes sum to n.
            let (part, _) = best.unwrap_or((0, 0));
            assigned[part] += 1;
            part
        })
        .collect()
}

fn part_size(n: usize, fraction: f64) -> usize {
    // `n` is far below 2^52, so the product is exact enough; round half away from zero.
    (n as f64 * fraction).round() as usize
}

/// Every field is length-prefixed so that moving text between fields or records changes the hash.
fn content_hash(parts: &[&Vec<Record>; 3], cfg: &SplitConfig) -> String {
    let mut h = Sha256::new();
    h.update(b"sizespec-split-v1");
    update_field(&mut h, cfg.strategy.name().as_bytes());
    for f in [cfg.train, cfg.validation, cfg.test] {
        h.update(f.to_le_bytes());
    }
    for (name, part) in ["train", "validation", "test"].iter().zip(parts) {
        update_field(&mut h, name.as_bytes());
        h.update((part.len() as u64).to_le_bytes());
        for r in part.iter() {
            update_field(&mut h, r.id.as_bytes());
            update_field(&mut h, r.code.as_bytes());
            update_field(&mut h, r.dialogue.as_bytes());
        }
    }
    hex::encode(h.finalize())
}

fn update_field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The first `max_eval_samples` records of the (already shuffled) test split, or all of them when
/// `None`: a deterministic random subset, so `--max-eval-samples` really limits evaluation
/// (`docs/data.md`, pitfall 6) and every model is scored on the same samples.
pub fn limit_eval(test: &[Record], max_eval_samples: Option<usize>) -> &[Record] {
    match max_eval_samples {
        Some(max) => &test[..max.min(test.len())],
        None => test,
    }
}

#[cfg(test)]
mod tests;
