//! Loader tests on files written in the test with every quirk of the hub CSV, and each malformed case.
use std::io::Write;

use super::*;

const HEADER: &str = " Note,Dialogue,ICD10,ICD10_desc\n";

fn write_file(suffix: &str, bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

/// Spreadsheet rows: 2 multi-line quoted dialogue (lines 2-5) with commas and quotes, 3 dotted code,
/// 4 invalid code, 5 empty dialogue, 6 non-billable category.
fn quirky_csv() -> String {
    let mut s = String::from(HEADER);
    s.push_str("\"Left knee pain, 3 weeks.\",\"Doctor: Hello, what brings you in?\nPatient: My left knee hurts, \"\"a lot\"\".\n\nDoctor: Any swelling?\",M25562,Pain in left knee\n");
    s.push_str("Positive test,Doctor: Fever? Patient: Yes and a cough.,U07.1,COVID-19\n");
    s.push_str("Odd,Doctor: Hi. Patient: Hello.,ZZZ99,Not a code\n");
    s.push_str("Nothing said,\"\",I10,Essential (primary) hypertension\n");
    s.push_str("Diabetes,Patient: I am thirsty all the time.,E11,Type 2 diabetes mellitus\n");
    s
}

fn keep() -> LoadOptions {
    LoadOptions {
        invalid_codes: InvalidCodePolicy::Keep,
    }
}

fn drop_invalid() -> LoadOptions {
    LoadOptions {
        invalid_codes: InvalidCodePolicy::Drop,
    }
}

fn err_text(result: Result<LoadedDataset, DatasetError>) -> (DatasetError, String) {
    let err = result.unwrap_err();
    let text = err.to_string();
    (err, text)
}

#[test]
fn medsynth_quirks_keep_invalid_codes() {
    let f = write_file(".csv", quirky_csv().as_bytes());
    let loaded = load_medsynth(f.path(), &keep()).unwrap();
    let ids: Vec<&str> = loaded.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["medsynth-1", "medsynth-2", "medsynth-3", "medsynth-5"]
    );
    let first = &loaded.records[0];
    assert_eq!(
        first.dialogue,
        "Doctor: Hello, what brings you in?\nPatient: My left knee hurts, \"a lot\".\n\nDoctor: Any swelling?"
    );
    assert_eq!(first.note, "Left knee pain, 3 weeks.");
    assert_eq!(first.code, "M25562");
    assert_eq!(first.description, "Pain in left knee");
    assert_eq!(
        loaded.records[1].code, "U071",
        "dotted codes are normalised"
    );
    assert_eq!(
        loaded.records[2].code, "ZZZ99",
        "kept as written (normalised) under Keep"
    );

    let r = &loaded.report;
    assert_eq!(r.rows_read, 5);
    assert_eq!(r.kept, 4);
    assert_eq!(r.empty_dialogues_dropped, 1);
    assert_eq!((r.invalid_codes_seen, r.invalid_codes_dropped), (1, 0));
    assert_eq!(
        r.invalid_code_examples,
        vec![InvalidCodeExample {
            row: 4,
            raw: "ZZZ99".into()
        }]
    );
    assert_eq!(r.non_billable_codes, 1);
    assert_eq!(r.distinct_codes, 4);
    assert_eq!(r.dotted_codes_seen, 1);
    let shown = r.to_string();
    assert!(
        shown.contains("records kept:            4 (4 distinct codes)"),
        "{shown}"
    );
    assert!(shown.contains("ZZZ99 (row 4)"), "{shown}");
}

#[test]
fn medsynth_drop_invalid_codes() {
    let f = write_file(".csv", quirky_csv().as_bytes());
    let loaded = load_medsynth(f.path(), &drop_invalid()).unwrap();
    let ids: Vec<&str> = loaded.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["medsynth-1", "medsynth-2", "medsynth-5"]);
    assert_eq!(
        (
            loaded.report.invalid_codes_seen,
            loaded.report.invalid_codes_dropped
        ),
        (1, 1)
    );
    assert_eq!(loaded.report.kept, 3);
    assert_eq!(loaded.report.distinct_codes, 3);
}

#[test]
fn header_matching_ignores_case_whitespace_bom_and_order() {
    let csv = "\u{feff}ICD10 , dialogue,  NOTE ,Icd10_Desc\nj02.9,Patient: My throat hurts.,Sore throat,Acute pharyngitis\n";
    let f = write_file(".csv", csv.as_bytes());
    let loaded = load_medsynth(f.path(), &keep()).unwrap();
    assert_eq!(loaded.records.len(), 1);
    let r = &loaded.records[0];
    assert_eq!(
        (r.code.as_str(), r.note.as_str(), r.dialogue.as_str()),
        ("J029", "Sore throat", "Patient: My throat hurts.")
    );
}

#[test]
fn invalid_code_examples_are_distinct_and_stop_at_ten() {
    let mut csv = String::from(HEADER);
    // Row 2 and row 3 repeat one invalid code: the examples list each code once.
    csv.push_str("n,d,QQ000,x\n");
    for i in 0..15 {
        csv.push_str(&format!("n,d{i},QQ{i:03},x\n"));
    }
    csv.push_str("n,valid,I10,x\n");
    let f = write_file(".csv", csv.as_bytes());
    let loaded = load_medsynth(f.path(), &drop_invalid()).unwrap();
    assert_eq!(loaded.report.invalid_codes_seen, 16);
    let examples = &loaded.report.invalid_code_examples;
    assert_eq!(examples.len(), MAX_INVALID_EXAMPLES);
    assert_eq!(
        examples[0],
        InvalidCodeExample {
            row: 2,
            raw: "QQ000".into()
        }
    );
    assert_eq!(
        examples[1],
        InvalidCodeExample {
            row: 4,
            raw: "QQ001".into()
        }
    );
    assert_eq!(examples[9].raw, "QQ009");
    assert_eq!(loaded.records.len(), 1);
}

#[test]
fn missing_column_lists_the_columns_found() {
    let f = write_file(".csv", b" Note,Dialogue,ICD10_desc\nn,d,x\n");
    let (err, text) = err_text(load_medsynth(f.path(), &keep()));
    assert!(
        matches!(
            err,
            DatasetError::MissingColumn {
                column: "ICD10",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(text.contains("no column `ICD10`"), "{text}");
    assert!(
        text.contains("columns found: ` Note`, `Dialogue`, `ICD10_desc`"),
        "{text}"
    );
    assert!(text.contains(&f.path().display().to_string()), "{text}");
}

#[test]
fn bad_utf8_names_row_and_column() {
    let mut bytes = HEADER.as_bytes().to_vec();
    bytes.extend_from_slice(b"n,fine,I10,x\nn,bad \xff byte,I10,x\n");
    let f = write_file(".csv", &bytes);
    let (err, text) = err_text(load_medsynth(f.path(), &keep()));
    assert!(
        matches!(
            err,
            DatasetError::BadUtf8 {
                row: 3,
                line: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        text.contains("row 3 (line 3): column `Dialogue` is not valid UTF-8"),
        "{text}"
    );
}

#[test]
fn empty_file_and_header_only_are_errors() {
    let f = write_file(".csv", b"");
    assert!(matches!(
        load_medsynth(f.path(), &keep()).unwrap_err(),
        DatasetError::EmptyFile { .. }
    ));
    let f = write_file(".csv", HEADER.as_bytes());
    let (err, text) = err_text(load_medsynth(f.path(), &keep()));
    assert!(matches!(err, DatasetError::HeaderOnly { .. }), "{err:?}");
    assert!(text.contains("no data rows"), "{text}");
}

#[test]
fn ragged_row_names_row_and_line_after_a_multiline_row() {
    // Row 2 spans lines 2-3, so row 3 starts on line 4.
    let csv = format!("{HEADER}n,\"two\nlines\",I10,x\nn,d,I10,x,extra\n");
    let f = write_file(".csv", csv.as_bytes());
    let (err, text) = err_text(load_medsynth(f.path(), &keep()));
    assert!(
        matches!(
            err,
            DatasetError::Ragged {
                row: 3,
                line: 4,
                expected: 4,
                found: 5,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        text.contains("row 3 (line 4) has 5 fields but the header has 4"),
        "{text}"
    );
}

#[test]
fn empty_code_on_a_row_with_a_dialogue_is_an_error() {
    let csv = format!("{HEADER}n,d,I10,x\nn,Patient: it hurts.,  ,x\n");
    let f = write_file(".csv", csv.as_bytes());
    let (err, text) = err_text(load_medsynth(f.path(), &keep()));
    assert!(
        matches!(err, DatasetError::EmptyField { row: 3, .. }),
        "{err:?}"
    );
    assert!(
        text.contains("row 3 (line 3): column `ICD10` is empty"),
        "{text}"
    );
    // ... but a row with neither dialogue nor code is just an empty dialogue to drop.
    let csv = format!("{HEADER}n,d,I10,x\nn,,,x\n");
    let f = write_file(".csv", csv.as_bytes());
    let loaded = load_medsynth(f.path(), &keep()).unwrap();
    assert_eq!(
        (
            loaded.report.rows_read,
            loaded.report.empty_dialogues_dropped
        ),
        (2, 1)
    );
}

#[test]
fn nothing_kept_is_an_error() {
    let csv = format!("{HEADER}n,,I10,x\nn,d,ZZZ99,x\n");
    let f = write_file(".csv", csv.as_bytes());
    let (err, text) = err_text(load_medsynth(f.path(), &drop_invalid()));
    assert!(
        matches!(err, DatasetError::NothingKept { dropped: 2, .. }),
        "{err:?}"
    );
    assert!(text.contains("no records left"), "{text}");
}

#[test]
fn missing_file_names_the_path() {
    let (err, text) = err_text(load_medsynth(
        Path::new("/nonexistent/medsynth.csv"),
        &keep(),
    ));
    assert!(matches!(err, DatasetError::Io { .. }));
    assert!(
        text.starts_with("/nonexistent/medsynth.csv: cannot read"),
        "{text}"
    );
}

#[test]
fn jsonl_loads_with_optional_fields_and_blank_lines() {
    let text = concat!(
        "{\"id\": \"a\", \"dialogue\": \"Patient: I cough.\", \"code\": \"J20.9\", \"description\": \"Acute bronchitis\"}\n",
        "\n",
        "{\"id\": \"b\", \"dialogue\": \"  \", \"code\": \"I10\"}\r\n",
        "{\"id\": \"c\", \"dialogue\": \"Patient: headache\", \"code\": \"zzz99\", \"note\": \"n\"}\n",
    );
    let f = write_file(".jsonl", text.as_bytes());
    let loaded = load_jsonl(f.path(), &keep()).unwrap();
    assert_eq!(loaded.records.len(), 2);
    assert_eq!(loaded.records[0].code, "J209");
    assert_eq!(loaded.records[0].description, "Acute bronchitis");
    assert_eq!(loaded.records[1].note, "n");
    let r = &loaded.report;
    assert_eq!(
        (
            r.rows_read,
            r.empty_dialogues_dropped,
            r.invalid_codes_seen,
            r.dotted_codes_seen
        ),
        (3, 1, 1, 1)
    );
    assert_eq!(
        r.invalid_code_examples,
        vec![InvalidCodeExample {
            row: 4,
            raw: "zzz99".into()
        }]
    );
    let dropped = load_jsonl(f.path(), &drop_invalid()).unwrap();
    assert_eq!(dropped.records.len(), 1);
}

#[test]
fn jsonl_errors_name_the_line_and_field() {
    let ok = "{\"id\": \"a\", \"dialogue\": \"d\", \"code\": \"I10\"}\n";
    let cases: [(&[u8], &str); 6] = [
        (
            b"{\"id\": \"a\", \"dialogue\": \"d\"",
            "line 2: EOF while parsing",
        ),
        (
            b"{\"id\": \"b\", \"dialogue\": \"d\", \"icd10\": \"I10\"}",
            "line 2: unknown field `icd10`",
        ),
        (
            b"{\"id\": \" \", \"dialogue\": \"d\", \"code\": \"I10\"}",
            "line 2: field `id` is empty",
        ),
        (
            b"{\"id\": \"b\", \"dialogue\": \"d\", \"code\": \"\"}",
            "line 2: field `code` is empty",
        ),
        (
            b"{\"id\": \"a\", \"dialogue\": \"d\", \"code\": \"I10\"}",
            "line 2: id `a` was already used on line 1",
        ),
        (
            b"{\"id\": \"b\", \"dialogue\": \"\xfe\", \"code\": \"I10\"}",
            "line 2 is not valid UTF-8",
        ),
    ];
    for (second_line, expected) in cases {
        let mut bytes = ok.as_bytes().to_vec();
        bytes.extend_from_slice(second_line);
        let f = write_file(".jsonl", &bytes);
        let text = load_jsonl(f.path(), &keep()).unwrap_err().to_string();
        assert!(text.contains(expected), "expected `{expected}` in: {text}");
        assert!(text.starts_with(&f.path().display().to_string()), "{text}");
    }
    let f = write_file(".jsonl", b"\n\n");
    assert!(matches!(
        load_jsonl(f.path(), &keep()).unwrap_err(),
        DatasetError::EmptyJsonl { .. }
    ));
}

#[test]
fn load_path_dispatches_on_extension() {
    let csv = write_file(".CSV", quirky_csv().as_bytes());
    assert_eq!(load_path(csv.path(), &keep()).unwrap().records.len(), 4);
    let jsonl = write_file(
        ".jsonl",
        b"{\"id\": \"a\", \"dialogue\": \"d\", \"code\": \"I10\"}\n",
    );
    assert_eq!(load_path(jsonl.path(), &keep()).unwrap().records[0].id, "a");
    let other = write_file(".txt", b"x");
    assert!(matches!(
        load_path(other.path(), &keep()).unwrap_err(),
        DatasetError::UnknownFormat { .. }
    ));
}

#[test]
fn invalid_code_policy_reads_lower_case() {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        policy: InvalidCodePolicy,
    }
    let w: Wrapper = toml::from_str("policy = \"drop\"").unwrap();
    assert_eq!(w.policy, InvalidCodePolicy::Drop);
    assert_eq!(InvalidCodePolicy::default(), InvalidCodePolicy::Keep);
}

#[test]
fn zero_width_and_control_characters_in_codes_are_ignored() {
    let csv = format!("{HEADER}n,d1,\u{feff}M25562\u{200b},x\nn,d2,\"I10\t\",x\nn,d3,\u{200b},x\n");
    let f = write_file(".csv", csv.as_bytes());
    let (err, text) = err_text(load_medsynth(f.path(), &keep()));
    assert!(
        matches!(err, DatasetError::EmptyField { row: 4, .. }),
        "a zero-width-only code is empty: {err:?}"
    );
    assert!(text.contains("row 4"), "{text}");
    let csv = format!("{HEADER}n,d1,\u{feff}M25562\u{200b},x\nn,d2,\"I10\t\",x\n");
    let f = write_file(".csv", csv.as_bytes());
    let loaded = load_medsynth(f.path(), &keep()).unwrap();
    let codes: Vec<&str> = loaded.records.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, ["M25562", "I10"]);
    assert_eq!(loaded.report.invalid_codes_seen, 0);
}
