//! The offline default dataset: short doctor–patient dialogues generated deterministically from
//! hand-written clinical profiles of common billable ICD-10-CM codes (`shared/data/embedded-codes.tsv`).
//!
//! It exists so the product's main command runs with no download: a tiny model finetuned on a
//! few hundred of these dialogues should visibly beat its zero-shot self. Each code's dialogues
//! reuse the same code-specific cues (the patient's symptom phrases, the clinician's findings,
//! what is denied, the onset), varied across six skeletons, shared greetings and questions, and
//! the patient's age and sex. The code itself, dotted or not, never appears in a dialogue or a
//! note; the note may name the diagnosis in words.
mod catalog;
mod dialogue;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashSet};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

pub use catalog::CatalogError;

use crate::dataset::Record;
use crate::icd10;

/// Dialogues per code in [`embedded_dataset`].
pub const DEFAULT_PER_CODE: usize = 24;
/// The generator's fixed seed: the dataset is the same on every machine and every run.
const SEED: u64 = 0x5_12E5_2026;
/// Redraws allowed when a dialogue repeats an earlier one (only a very large `per_code` needs
/// more; the default set has no repeats, which a test checks).
const REDRAWS: usize = 64;

/// What the embedded dataset holds, for the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EmbeddedSummary {
    /// Distinct codes.
    pub codes: usize,
    /// Distinct ICD-10-CM chapters of those codes.
    pub chapters: usize,
    /// Dialogues in all.
    pub dialogues: usize,
}

/// The default offline dataset: [`DEFAULT_PER_CODE`] dialogues for each code.
pub fn embedded_dataset() -> Vec<Record> {
    embedded_dataset_with(DEFAULT_PER_CODE)
}

/// `per_code` dialogues for each code, ids `embedded-1`, `embedded-2`, … Codes take turns (the
/// first dialogue of every code, then the second, …) so any prefix covers the codes evenly.
pub fn embedded_dataset_with(per_code: usize) -> Vec<Record> {
    embedded_subset(None, per_code)
}

/// Largest `per_code` a config may ask for (the skeletons and cue lists give each code a few
/// hundred distinct dialogues; past that, redraws would run out).
pub const MAX_PER_CODE: usize = 200;

/// The codes of a subset of `n`, in catalog order: one code from each chapter in turn (the
/// chapter's first code, then every chapter's second, …), so a small subset spans as many
/// chapters as it can. `n` past the catalog's size is all codes.
pub fn subset_codes(n: usize) -> Vec<String> {
    let profiles = catalog::profiles();
    let mut by_chapter: Vec<(u8, Vec<usize>)> = Vec::new();
    for (i, p) in profiles.iter().enumerate() {
        let ch = icd10::chapter(&p.code).map_or(0, |c| c.number);
        match by_chapter.iter_mut().find(|(c, _)| *c == ch) {
            Some((_, v)) => v.push(i),
            None => by_chapter.push((ch, vec![i])),
        }
    }
    let mut picked = Vec::with_capacity(n.min(profiles.len()));
    for round in 0.. {
        if picked.len() >= n.min(profiles.len()) {
            break;
        }
        for (_, members) in &by_chapter {
            if let Some(&i) = members.get(round)
                && picked.len() < n
            {
                picked.push(i);
            }
        }
    }
    picked.sort_unstable();
    picked
        .into_iter()
        .map(|i| profiles[i].code.clone())
        .collect()
}

/// `per_code` dialogues for each of [`subset_codes`]`(codes)` (all codes when `None`), generated
/// as [`embedded_dataset_with`] does. The full set (`None`, [`DEFAULT_PER_CODE`]) is
/// [`embedded_dataset`].
pub fn embedded_subset(codes: Option<usize>, per_code: usize) -> Vec<Record> {
    let all = catalog::profiles();
    let keep: Option<HashSet<String>> = codes.map(|n| subset_codes(n).into_iter().collect());
    let profiles: Vec<&catalog::Profile> = all
        .iter()
        .filter(|p| keep.as_ref().is_none_or(|k| k.contains(&p.code)))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(per_code * profiles.len());
    for round in 0..per_code {
        for (k, profile) in profiles.iter().enumerate() {
            // Rotating the skeleton by the code's position spreads every skeleton over every code.
            let skeleton = (round + k) % dialogue::SKELETONS;
            let mut visit = dialogue::visit(profile, skeleton, &mut rng);
            for _ in 0..REDRAWS {
                if !seen.contains(&visit.dialogue) {
                    break;
                }
                visit = dialogue::visit(profile, skeleton, &mut rng);
            }
            seen.insert(visit.dialogue.clone());
            out.push(Record {
                id: format!("embedded-{}", out.len() + 1),
                dialogue: visit.dialogue,
                note: visit.note,
                code: profile.code.clone(),
                description: profile.description.to_owned(),
            });
        }
    }
    out
}

/// Counts of the default dataset.
pub fn embedded_summary() -> EmbeddedSummary {
    let profiles = catalog::profiles();
    let chapters: BTreeSet<u8> = profiles
        .iter()
        .filter_map(|p| icd10::chapter(&p.code).map(|c| c.number))
        .collect();
    EmbeddedSummary {
        codes: profiles.len(),
        chapters: chapters.len(),
        dialogues: profiles.len() * DEFAULT_PER_CODE,
    }
}
