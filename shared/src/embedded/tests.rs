//! Tests of the embedded dataset: determinism, coverage, validity, no code leak, variety, length.
use std::collections::{BTreeMap, HashSet};

use sha2::{Digest, Sha256};

use super::catalog::{self, CatalogError, SexConstraint};
use super::*;

fn by_code(d: &[Record]) -> BTreeMap<&str, Vec<&Record>> {
    let mut m: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in d {
        m.entry(r.code.as_str()).or_default().push(r);
    }
    m
}

#[test]
fn deterministic_and_pinned() {
    let a = embedded_dataset();
    assert_eq!(a, embedded_dataset());
    let digest = hex::encode(Sha256::digest(
        serde_json::to_vec(&a).expect("records serialise"),
    ));
    // Changing the profiles, the skeletons or the seed changes the dataset: update this on purpose.
    assert_eq!(
        digest,
        "fca6419e8024e12532ade149972c1b9703eee6536d6fa28dcf9e068d1d3118ba"
    );
}

#[test]
fn counts_and_coverage() {
    let d = embedded_dataset();
    let s = embedded_summary();
    assert!(s.codes >= 50, "{s:?}");
    assert!(s.chapters >= 10, "{s:?}");
    assert_eq!(s.dialogues, d.len());
    assert_eq!(s.dialogues, s.codes * DEFAULT_PER_CODE);
    let groups = by_code(&d);
    assert_eq!(groups.len(), s.codes);
    assert!(
        groups
            .values()
            .all(|g| g.len() == DEFAULT_PER_CODE && g.len() >= 20)
    );
    let ids: Vec<String> = (1..=d.len()).map(|n| format!("embedded-{n}")).collect();
    assert_eq!(d.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), ids);
    // Codes take turns, so the first `codes` records hold every code once.
    assert_eq!(
        d[..s.codes]
            .iter()
            .map(|r| &r.code)
            .collect::<HashSet<_>>()
            .len(),
        s.codes
    );
    assert_eq!(embedded_dataset_with(2).len(), 2 * s.codes);
}

#[test]
fn every_code_is_billable_with_the_release_description() {
    for r in embedded_dataset() {
        assert_eq!(
            r.code,
            icd10::normalize(&r.code),
            "{}: code not normalised",
            r.id
        );
        assert!(
            icd10::is_valid(&r.code) && icd10::is_billable(&r.code),
            "{}: {}",
            r.id,
            r.code
        );
        assert_eq!(
            Some(r.description.as_str()),
            icd10::describe(&r.code),
            "{}",
            r.id
        );
    }
}

#[test]
fn the_code_never_leaks_into_dialogue_or_note() {
    for r in embedded_dataset() {
        for (what, text) in [("dialogue", &r.dialogue), ("note", &r.note)] {
            let upper = text.to_uppercase();
            assert!(!upper.contains(&r.code), "{} {what} holds {}", r.id, r.code);
            assert!(
                !upper.contains(&icd10::dotted(&r.code)),
                "{} {what} holds the dotted code",
                r.id
            );
            // Stronger: no valid code at all, so extraction from the input can only be the model's.
            assert_eq!(icd10::extract(text), None, "{} {what}: {text}", r.id);
        }
    }
}

#[test]
fn variety() {
    let d = embedded_dataset();
    let distinct: HashSet<&str> = d.iter().map(|r| r.dialogue.as_str()).collect();
    assert_eq!(distinct.len(), d.len(), "repeated dialogues");
    let first_line = |r: &Record| r.dialogue.lines().next().unwrap_or_default().to_owned();
    let openings: HashSet<String> = d.iter().map(first_line).collect();
    assert!(
        openings.len() >= 30,
        "only {} distinct openings",
        openings.len()
    );
    for (code, group) in by_code(&d) {
        let openings: HashSet<String> = group.iter().map(|r| first_line(r)).collect();
        assert!(
            openings.len() >= 8,
            "{code}: only {} distinct openings",
            openings.len()
        );
        // Doctor-first and patient-first visits both occur for every code.
        assert!(
            group.iter().any(|r| r.dialogue.starts_with("Doctor:")),
            "{code}"
        );
        assert!(
            group.iter().any(|r| !r.dialogue.starts_with("Doctor:")),
            "{code}"
        );
        let notes: HashSet<&str> = group.iter().map(|r| r.note.as_str()).collect();
        assert!(notes.len() >= group.len() / 2, "{code}: notes barely vary");
    }
}

#[test]
fn length_and_shape() {
    for r in embedded_dataset() {
        let words = r.dialogue.split_whitespace().count();
        assert!((60..=150).contains(&words), "{}: {words} words", r.id);
        assert!(r.dialogue.lines().all(|l| {
            l.starts_with("Doctor: ") || l.starts_with("Patient: ") || l.starts_with("Parent: ")
        }));
        // Turns alternate: one speaker's consecutive sentences are one turn.
        let speakers: Vec<&str> = r
            .dialogue
            .lines()
            .map(|l| l.split(':').next().unwrap_or_default())
            .collect();
        assert!(
            speakers.windows(2).all(|w| w[0] != w[1]),
            "{}: {}",
            r.id,
            r.dialogue
        );
        assert!(
            !r.note.is_empty() && !r.note.contains('\n'),
            "{}: note {:?}",
            r.id,
            r.note
        );
        assert!(r.note.ends_with('.'), "{}", r.id);
    }
}

/// The age and sex in each note respect the code's profile.
#[test]
fn demographics_respect_the_profile() {
    let profiles = catalog::profiles();
    for r in embedded_dataset() {
        let p = profiles
            .iter()
            .find(|p| p.code == r.code)
            .expect("record of a profile");
        let before = r
            .note
            .split("-year-old")
            .next()
            .expect("note names the age");
        let age: u8 = before
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: no age in {:?}", r.id, r.note));
        assert!(
            p.ages.contains(&age),
            "{}: age {age} outside {:?}",
            r.id,
            p.ages
        );
        let female = r.note.contains(" woman") || r.note.contains(" girl");
        let male = r.note.contains(" man") || r.note.contains(" boy");
        assert!(female != male, "{}: {}", r.id, r.note);
        match p.sex {
            SexConstraint::Female => assert!(female, "{}: {}", r.id, r.note),
            SexConstraint::Male => assert!(male, "{}: {}", r.id, r.note),
            SexConstraint::Any => {}
        }
    }
}

#[test]
fn catalog_rows_are_checked() {
    const H: &str = "code\tdescription\tcondition\tsex\tage_min\tage_max\tonset\tsymptoms\tfindings\tnegatives\n";
    let ok = "I10\tEssential (primary) hypertension\thypertension\tany\t40\t80\ta | b\ts1 | s2 | s3 | s4\tf1 | q? => a\tn";
    let good = catalog::parse(format!("{H}{ok}\n").leak()).expect("a valid row parses");
    assert_eq!(good[0].code, "I10");
    let bad = |row: &str, want: &str| {
        let err = catalog::parse(format!("{H}{row}\n").leak()).expect_err(row);
        let msg = err.to_string();
        assert!(matches!(err, CatalogError::Row { line: 2, .. }), "{msg}");
        assert!(msg.contains(want), "{msg:?} should mention {want:?}");
    };
    bad(&ok.replace("I10\t", "M54.5\t"), "not a billable code");
    bad(
        &ok.replace("Essential", "Essentially"),
        "differs from the release",
    );
    bad(&ok.replace("\tany\t", "\tX\t"), "sex must be");
    bad(&ok.replace("\t40\t80\t", "\t80\t40\t"), "age range");
    bad(&ok.replace("s1 | s2 | s3 | s4", "s1 | s2"), "symptoms");
    bad(&ok.replace("\tn", ""), "10 tab-separated columns");
    assert!(matches!(
        catalog::parse("code\tdesc\n"),
        Err(CatalogError::Header(_))
    ));
}

#[test]
fn subsets_span_chapters_and_keep_the_full_set() {
    let s = embedded_summary();
    // A subset no larger than the chapter count takes one code per chapter.
    for n in [2, 8, 16, s.chapters] {
        let codes = subset_codes(n);
        assert_eq!(codes.len(), n);
        let chapters: HashSet<u8> = codes
            .iter()
            .map(|c| icd10::chapter(c).expect("a chapter").number)
            .collect();
        assert_eq!(chapters.len(), n, "{codes:?}");
    }
    // Past that, chapters repeat but codes do not; the whole catalog is every code.
    let more = subset_codes(s.chapters + 5);
    assert_eq!(more.iter().collect::<HashSet<_>>().len(), s.chapters + 5);
    assert_eq!(subset_codes(s.codes).len(), s.codes);
    assert_eq!(subset_codes(10_000).len(), s.codes);
    // Subsets nest: a larger one keeps the smaller one's codes.
    let small: HashSet<String> = subset_codes(8).into_iter().collect();
    assert!(small.iter().all(|c| subset_codes(16).contains(c)));
    // `None` is the full default set, byte for byte.
    assert_eq!(embedded_subset(None, DEFAULT_PER_CODE), embedded_dataset());
}

#[test]
fn a_subset_has_its_codes_evenly_and_no_repeats() {
    let d = embedded_subset(Some(16), 40);
    assert_eq!(d.len(), 16 * 40);
    let groups = by_code(&d);
    assert_eq!(
        groups.keys().map(|c| c.to_string()).collect::<Vec<_>>(),
        subset_codes(16)
    );
    assert!(groups.values().all(|g| g.len() == 40));
    let dialogues: HashSet<&str> = d.iter().map(|r| r.dialogue.as_str()).collect();
    assert_eq!(dialogues.len(), d.len(), "repeated dialogues");
    let ids: Vec<String> = (1..=d.len()).map(|n| format!("embedded-{n}")).collect();
    assert_eq!(d.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), ids);
}
