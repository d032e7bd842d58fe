//! The hand-written clinical profiles behind the embedded dataset (`shared/data/embedded-codes.tsv`).
use std::ops::RangeInclusive;
use std::sync::OnceLock;

use crate::icd10;

const CODES_TSV: &str = include_str!("../../data/embedded-codes.tsv");
const FILE: &str = "embedded-codes.tsv";
const HEADER: &str =
    "code\tdescription\tcondition\tsex\tage_min\tage_max\tonset\tsymptoms\tfindings\tnegatives";

/// Which patients a code fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SexConstraint {
    Any,
    Female,
    Male,
}

/// A clinician's line: an exam or test finding, or a question with the patient's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    Statement(&'static str),
    Question {
        ask: &'static str,
        answer: &'static str,
    },
}

/// Everything the generator knows about one code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Normalised code (billable in the release).
    pub code: String,
    /// The release's description (checked against the embedded ICD-10-CM table).
    pub description: &'static str,
    /// The diagnosis in plain words, for the clinician's note.
    pub condition: &'static str,
    pub sex: SexConstraint,
    pub ages: RangeInclusive<u8>,
    /// Answers to "how long has this been going on?" ("for two days", "since last night").
    pub onset: Vec<&'static str>,
    /// First-person clauses the patient may say ("my throat is really sore").
    pub symptoms: Vec<&'static str>,
    pub findings: Vec<Finding>,
    /// Things the patient denies, as nouns ("fever" -> "No, no fever.").
    pub negatives: Vec<&'static str>,
}

/// What is wrong with a row of the profile table.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{FILE}: the header must be {HEADER:?}, got {0:?}")]
    Header(String),
    #[error("{FILE} line {line} ({code}): {what}")]
    Row {
        line: usize,
        code: String,
        what: String,
    },
}

/// The profiles in file order.
pub fn profiles() -> &'static [Profile] {
    static PROFILES: OnceLock<Vec<Profile>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        // The committed file is checked by the tests; an error here is a broken build.
        parse(CODES_TSV).unwrap_or_else(|e| panic!("{e}"))
    })
}

pub(crate) fn parse(tsv: &'static str) -> Result<Vec<Profile>, CatalogError> {
    let mut lines = tsv.lines();
    let header = lines.next().unwrap_or_default();
    if header != HEADER {
        return Err(CatalogError::Header(header.to_owned()));
    }
    lines
        .enumerate()
        .map(|(i, row)| parse_row(i + 2, row))
        .collect()
}

fn parse_row(line: usize, row: &'static str) -> Result<Profile, CatalogError> {
    let cols: Vec<&'static str> = row.split('\t').collect();
    let code = icd10::normalize(cols[0]);
    let err = |what: String| CatalogError::Row {
        line,
        code: code.clone(),
        what,
    };
    let [
        _,
        description,
        condition,
        sex,
        age_min,
        age_max,
        onset,
        symptoms,
        findings,
        negatives,
    ] = cols[..]
    else {
        return Err(err(format!(
            "expected 10 tab-separated columns, got {}",
            cols.len()
        )));
    };
    if !icd10::is_billable(&code) {
        return Err(err("not a billable code of the April 2026 release".into()));
    }
    let released = icd10::describe(&code).unwrap_or_default();
    if description != released {
        return Err(err(format!(
            "description {description:?} differs from the release's {released:?}"
        )));
    }
    let sex = match sex {
        "any" => SexConstraint::Any,
        "F" => SexConstraint::Female,
        "M" => SexConstraint::Male,
        other => return Err(err(format!("sex must be any, F or M, got {other:?}"))),
    };
    let age = |s: &str| s.parse::<u8>().map_err(|e| err(format!("age {s:?}: {e}")));
    let ages = age(age_min)?..=age(age_max)?;
    if ages.is_empty() {
        return Err(err(format!("age range {age_min}-{age_max} is empty")));
    }
    let list = |s: &'static str, name: &str, min: usize| {
        let items: Vec<&'static str> = s.split(" | ").map(str::trim).collect();
        if items.len() < min || items.iter().any(|i| i.is_empty()) {
            return Err(err(format!(
                "column `{name}` needs at least {min} non-empty items, got {s:?}"
            )));
        }
        Ok(items)
    };
    let findings = list(findings, "findings", 2)?
        .into_iter()
        .map(|f| match f.split_once(" => ") {
            Some((ask, answer)) => Finding::Question { ask, answer },
            None => Finding::Statement(f),
        })
        .collect();
    Ok(Profile {
        description: released,
        condition,
        sex,
        ages,
        onset: list(onset, "onset", 2)?,
        symptoms: list(symptoms, "symptoms", 4)?,
        findings,
        negatives: list(negatives, "negatives", 1)?,
        code,
    })
}
