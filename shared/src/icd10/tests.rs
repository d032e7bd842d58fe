//! Table tests for normalising, formatting, validating and extracting ICD-10-CM codes.
use super::*;

#[test]
fn normalize_table() {
    let cases = [
        ("s72.001a ", "S72001A"),
        (
            "  E11.9",
            "E11.9".replace('.', "").as_str().to_owned().leak(),
        ),
        ("t38.3x5a", "T383X5A"),
        ("U07.1", "U071"),
        ("M25562", "M25562"),
        ("I10", "I10"),
        ("c7a.00", "C7A00"),
        ("S72 001A", "S72001A"),
        ("", ""),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize(raw), want, "normalize({raw:?})");
    }
}

#[test]
fn dotted_table() {
    let cases = [
        ("S72001A", "S72.001A"),
        ("U071", "U07.1"),
        ("I10", "I10"),
        ("E119", "E11.9"),
        ("T383X5A", "T38.3X5A"),
        ("C7A00", "C7A.00"),
        ("M25562", "M25.562"),
        ("s72.001a", "S72.001A"),
        ("R5", "R5"),
    ];
    for (code, want) in cases {
        assert_eq!(dotted(code), want, "dotted({code:?})");
    }
}

#[test]
fn validity_and_billable() {
    // (code, valid, billable)
    let cases = [
        ("I10", true, true),
        ("E11.9", true, true),
        ("E11", true, false),
        ("M54.5", true, false), // a parent since 2021: M54.50-M54.59
        ("M54.50", true, true),
        ("R51", true, false),
        ("R51.9", true, true),
        ("S93.401", true, false), // needs its 7th character
        ("S93.401A", true, true),
        ("S72.001A", true, true),
        ("T38.3X5A", true, true),
        ("T38.35XA", false, false), // placeholder in the wrong place
        ("C7A.00", true, true),
        ("U07.1", true, true),
        ("M25562", true, true),
        ("F32.A", true, true),
        ("QA0", true, false),
        ("J45.909", true, true),
        ("J45.9090", false, false),
        ("E11.99", false, false),
        ("B12", false, false),
        ("A1C", false, false),
        ("ZZZ", false, false),
        ("A00-A09", false, false), // a block, not a code
        ("1", false, false),       // a chapter, not a code
        ("", false, false),
    ];
    for (code, valid, billable) in cases {
        assert_eq!(is_valid(code), valid, "is_valid({code:?})");
        assert_eq!(is_billable(code), billable, "is_billable({code:?})");
    }
}

#[test]
fn release_counts_and_descriptions() {
    let all = codes();
    // The April 2026 release: 98,186 codes of which 74,719 billable (checked by derive.py
    // against the release's own code list).
    assert_eq!(all.len(), 98_186);
    assert_eq!(all.iter().filter(|c| c.billable).count(), 74_719);
    assert!(all.windows(2).all(|w| w[0].code < w[1].code));
    assert_eq!(describe("i10"), Some("Essential (primary) hypertension"));
    assert_eq!(describe("U07.1"), Some("COVID-19"));
    assert_eq!(describe("M54.50"), Some("Low back pain, unspecified"));
    assert_eq!(
        describe("S93401A"),
        Some("Sprain of unspecified ligament of right ankle, initial encounter")
    );
    assert_eq!(describe("E11.99"), None);
}

#[test]
fn category_table() {
    for (code, want) in [
        ("S72.001A", "S72"),
        ("i10", "I10"),
        ("C7A00", "C7A"),
        ("U071", "U07"),
        ("R5", "R5"),
    ] {
        assert_eq!(category(code), want, "category({code:?})");
    }
}

#[test]
fn chapters_from_release() {
    let all = chapters();
    assert_eq!(all.len(), 22);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, c)| usize::from(c.number) == i + 1)
    );
    assert_eq!((all[1].first, all[1].last), ("C00", "D49"));
    assert_eq!(all[1].title, "Neoplasms");
    assert_eq!((all[21].first, all[21].last), ("U00", "U85"));
    // Every code of the release falls in exactly one chapter.
    for c in codes() {
        let n = all
            .iter()
            .filter(|ch| ch.first <= &c.code[..3] && &c.code[..3] <= ch.last)
            .count();
        assert_eq!(n, 1, "code {} is in {n} chapters", c.code);
    }
}

#[test]
fn chapter_table() {
    let cases: [(&str, Option<u8>); 28] = [
        ("A09", Some(1)),
        ("B99.9", Some(1)),
        ("C50.911", Some(2)),
        ("C7A.00", Some(2)),
        ("D3A.010", Some(2)),
        ("D49.9", Some(2)),
        ("D50.9", Some(3)),
        ("D89.9", Some(3)),
        ("E11.9", Some(4)),
        ("F41.1", Some(5)),
        ("G43.909", Some(6)),
        ("H10.9", Some(7)),
        ("H66.90", Some(8)),
        ("I10", Some(9)),
        ("J02.9", Some(10)),
        ("K21.9", Some(11)),
        ("L03.115", Some(12)),
        ("M1A.00X0", Some(13)),
        ("N39.0", Some(14)),
        ("O9A.111", Some(15)),
        ("P07.30", Some(16)),
        ("QA0.0", Some(17)),
        ("R51.9", Some(18)),
        ("T38.3X5A", Some(19)),
        ("W19.XXXA", Some(20)),
        ("Z00.00", Some(21)),
        ("U07.1", Some(22)),
        ("E99", None), // between E89 and F01: in no chapter
    ];
    for (code, want) in cases {
        assert_eq!(chapter(code).map(|c| c.number), want, "chapter({code:?})");
    }
    // By range, not validity: an invalid code in a range still has its chapter.
    assert_eq!(chapter("E11.999").map(|c| c.number), Some(4));
    for junk in ["", "E1", "11", "1E1", "E-1"] {
        assert_eq!(chapter(junk), None, "chapter({junk:?})");
    }
}

#[test]
fn extract_table() {
    let cases: &[(&str, Option<&str>)] = &[
        // plain answers, every shape
        ("E11.9", Some("E119")),
        ("I10", Some("I10")),
        ("S72.001A", Some("S72001A")),
        ("T38.3X5A", Some("T383X5A")),
        ("C7A.00", Some("C7A00")),
        ("U07.1", Some("U071")),
        ("M25562", Some("M25562")),
        ("F32.A", Some("F32A")),
        ("s72.001a", Some("S72001A")),
        ("t38.3x5a", Some("T383X5A")),
        // prose, markdown, labels, quotes, punctuation
        (
            "The most likely diagnosis is E11.9 (type 2 diabetes without complications).",
            Some("E119"),
        ),
        ("ICD-10-CM: J02.9", Some("J029")),
        ("ICD-10-CM code: **E11.9**", Some("E119")),
        (
            "**ICD-10-CM Code:** `N39.0` - Urinary tract infection",
            Some("N390"),
        ),
        ("Code: I10.", Some("I10")),
        ("Answer: \"K21.9\"", Some("K219")),
        ("'R51.9'", Some("R519")),
        ("Diagnosis code (M54.50), low back pain", Some("M5450")),
        (
            "The code is L03.115, cellulitis of right lower limb",
            Some("L03115"),
        ),
        ("codes: H66.90; J02.9", Some("H6690")),
        ("<answer>S93.401A</answer>", Some("S93401A")),
        ("ICD10:E11.9", Some("E119")),
        ("E11.9-", Some("E119")),
        ("1. J45.909\n2. J45.901", Some("J45909")),
        // whole answers as models write them
        (
            "The ICD-10-CM code for this patient's condition is **J02.9** (Acute pharyngitis, unspecified).",
            Some("J029"),
        ),
        (
            "Based on the dialogue, the most appropriate code is: S93.401A",
            Some("S93401A"),
        ),
        (
            "I would code this as R51.9 (Headache, unspecified). Alternatively, G44.209 could apply.",
            Some("R519"),
        ),
        (
            "Diagnosis: Essential hypertension\nICD-10-CM: I10",
            Some("I10"),
        ),
        (
            "{\"code\": \"E11.9\", \"description\": \"Type 2 diabetes\"}",
            Some("E119"),
        ),
        ("E11.9,E78.5", Some("E119")),
        ("J02.9<|im_end|>", Some("J029")),
        ("assistant\nICD-10-CM code: m54.50", Some("M5450")),
        ("1) H66.90 – otitis media", Some("H6690")),
        ("ICD-9 401.9 maps to I10 in ICD-10-CM.", Some("I10")),
        ("Code: 250.00 (ICD-9)", None),
        (
            "The patient (age 45, BMI 31.2) likely has GERD; K21.9.",
            Some("K219"),
        ),
        ("O9A.211", Some("O9A211")),
        ("Z00.00 annual exam", Some("Z0000")),
        // tricky non-codes before a real one
        (
            "Seen on 2023-05-11, BP 120/80; assessment: I10",
            Some("I10"),
        ),
        ("vitamin B12 deficiency anemia, D51.0", Some("D510")),
        ("COVID-19 infection: U07.1", Some("U071")),
        ("type 2 diabetes, E11.9", Some("E119")),
        ("Patient in room A1, bed 3. Dx F41.1", Some("F411")),
        ("HbA1c 8.2%, SpO2 97%, code E11.65", Some("E1165")),
        ("L4-L5 disc, T12 level; code M51.26", Some("M5126")),
        // an invalid candidate first: the first valid one wins
        ("E11.99 or rather E11.9", Some("E119")),
        ("J45.9090 (invalid), J45.909", Some("J45909")),
        ("Z99.99 then I10", Some("I10")),
        // a candidate is taken whole, no valid prefix salvaged
        ("I10x", None),
        ("E11.9ABC", None),
        ("room B201", None),
        // not inside longer words or numbers
        ("XI10", None),
        ("123I10", None),
        ("I10456789", None),
        ("caféE11.9", None),
        // nothing
        ("", None),
        ("I am not sure which code applies.", None),
        ("The patient has type 2 diabetes.", None),
        ("Dates 2023-05-11 and BP 120/80", None),
        ("vitamin B12", None),
        ("COVID-19", None),
        ("ICD-10-CM", None),
        ("A1", None),
    ];
    for (text, want) in cases {
        assert_eq!(extract(text).as_deref(), *want, "extract({text:?})");
    }
}
