//! ICD-10-CM (April 2026 release, public domain): normalise, extract a code from model text,
//! validate, describe, 3-character category and chapter.
//!
//! The release is embedded in the binary (`shared/data/`, derived by `scripts/icd10/derive.py`)
//! and decoded once on first use, so every function here works offline and without setup.
mod extract;
mod table;
#[cfg(test)]
mod tests;

pub use extract::extract;
pub use table::{Chapter, Code, TableError, chapters, codes};

/// Trims, upper-cases and drops dots and spaces: `"s72.001a " -> "S72001A"`.
pub fn normalize(raw: &str) -> String {
    raw.chars()
        .filter(|c| *c != '.' && !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect()
}

/// The conventional dotted form: `"S72001A" -> "S72.001A"`, `"U071" -> "U07.1"`; codes of three
/// characters or fewer are returned unchanged. The input is normalised first, so a dotted or
/// lower-case code gives the same result.
pub fn dotted(code: &str) -> String {
    let code = normalize(code);
    match code.char_indices().nth(3) {
        Some((at, _)) => format!("{}.{}", &code[..at], &code[at..]),
        None => code,
    }
}

/// Whether `code` (after [`normalize`]) is a code of the release: a category, a subcategory or a
/// billable code. Chapters and blocks (`"A00-A09"`) are not codes.
pub fn is_valid(code: &str) -> bool {
    table::lookup(&normalize(code)).is_some()
}

/// Whether `code` is valid and billable (a leaf of the hierarchy, e.g. `M54.50` but not `M54.5`).
pub fn is_billable(code: &str) -> bool {
    table::lookup(&normalize(code)).is_some_and(|c| c.billable)
}

/// The release's description of `code`, if it is valid.
pub fn describe(code: &str) -> Option<&'static str> {
    table::lookup(&normalize(code)).map(|c| c.description)
}

/// The 3-character category of `code` (its first three characters once normalised; shorter
/// input is returned whole). Does not check validity, so an invalid reference code still has a
/// category to compare.
pub fn category(code: &str) -> String {
    normalize(code).chars().take(3).collect()
}

/// The chapter whose category range holds `code`'s category (e.g. `C00`-`D49` for `D3A.01`).
/// Decided by range, not by validity, so an invalid code inside a range still gets its chapter;
/// `None` when the category is malformed or in no chapter's range.
pub fn chapter(code: &str) -> Option<&'static Chapter> {
    let cat = category(code);
    let b = cat.as_bytes();
    // Categories are a letter and two digits-or-letters (`C7A`, `QA0`); anything else sorts
    // inside some range by accident ("C1" < "C10"), so it is rejected first.
    let shaped =
        b.len() == 3 && b[0].is_ascii_uppercase() && b[1..].iter().all(u8::is_ascii_alphanumeric);
    if !shaped {
        return None;
    }
    // ASCII order puts `O9A` after `O99` and `QA0` after `Q99`, matching the release's ranges.
    chapters()
        .iter()
        .find(|ch| ch.first <= cat.as_str() && cat.as_str() <= ch.last)
}
