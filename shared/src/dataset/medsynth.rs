//! The MedSynth CSV loader (`MedSynth_huggingface_final.csv`: columns ` Note`, `Dialogue`, `ICD10`,
//! `ICD10_desc`; quoted multi-line fields; the file's facts: `docs/data.md`).
//!
//! Rows are numbered as a spreadsheet shows them (header = row 1, first data row = row 2) in error
//! messages, with the physical line where the row starts, since quoted fields span lines. Record ids
//! use the 1-based *data* row: `medsynth-1` is spreadsheet row 2.
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use csv::{ByteRecord, ErrorKind, ReaderBuilder};

use super::{Candidate, Collector, DatasetError, LoadOptions, LoadedDataset};

/// The columns read, as the error messages name them.
const NOTE: &str = "Note";
const DIALOGUE: &str = "Dialogue";
const ICD10: &str = "ICD10";
const ICD10_DESC: &str = "ICD10_desc";

/// Header matching ignores surrounding whitespace (the hub file has `' Note'`), a UTF-8 byte-order
/// mark and case.
fn header_key(raw: &str) -> String {
    raw.trim_start_matches('\u{feff}').trim().to_lowercase()
}

struct Columns {
    note: usize,
    dialogue: usize,
    code: usize,
    description: usize,
}

fn find_columns(path: &Path, headers: &ByteRecord) -> Result<Columns, DatasetError> {
    let mut names = Vec::with_capacity(headers.len());
    for (index, field) in headers.iter().enumerate() {
        let name = std::str::from_utf8(field).map_err(|_| DatasetError::HeaderUtf8 {
            path: path.to_path_buf(),
            index: index + 1,
        })?;
        names.push(name);
    }
    let find = |column: &'static str| {
        let wanted = header_key(column);
        names
            .iter()
            .position(|n| header_key(n) == wanted)
            .ok_or_else(|| DatasetError::MissingColumn {
                path: path.to_path_buf(),
                column,
                found: names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    };
    Ok(Columns {
        note: find(NOTE)?,
        dialogue: find(DIALOGUE)?,
        code: find(ICD10)?,
        description: find(ICD10_DESC)?,
    })
}

/// Spreadsheet row and starting line of a csv position (the header is record 0 = row 1).
fn row_line(pos: Option<&csv::Position>) -> (u64, u64) {
    pos.map_or((0, 0), |p| (p.record() + 1, p.line()))
}

fn map_csv_error(path: &Path, err: csv::Error) -> DatasetError {
    let (row, line) = row_line(err.position());
    match err.kind() {
        ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => DatasetError::Ragged {
            path: path.to_path_buf(),
            row,
            line,
            expected: *expected_len,
            found: *len,
        },
        _ => DatasetError::Csv {
            path: path.to_path_buf(),
            row,
            line,
            source: err,
        },
    }
}

/// Loads the MedSynth CSV. Empty dialogues are dropped and counted; an empty `ICD10` on a row with a
/// dialogue is an error; codes are normalised and invalid ones kept or dropped per `opts`.
pub fn load_medsynth(path: &Path, opts: &LoadOptions) -> Result<LoadedDataset, DatasetError> {
    let file = File::open(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(BufReader::new(file));
    let headers = reader
        .byte_headers()
        .map_err(|e| map_csv_error(path, e))?
        .clone();
    if headers.is_empty() || headers.iter().all(|h| h.is_empty()) {
        return Err(DatasetError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let columns = find_columns(path, &headers)?;

    let mut collector = Collector::new(path, opts);
    let mut record = ByteRecord::new();
    while reader
        .read_byte_record(&mut record)
        .map_err(|e| map_csv_error(path, e))?
    {
        let (row, line) = row_line(record.position());
        let field = |index: usize, column: &str| -> Result<String, DatasetError> {
            let bytes = record.get(index).unwrap_or_default();
            std::str::from_utf8(bytes)
                .map(str::to_string)
                .map_err(|_| DatasetError::BadUtf8 {
                    path: path.to_path_buf(),
                    row,
                    line,
                    column: column.to_string(),
                })
        };
        let dialogue = field(columns.dialogue, DIALOGUE)?;
        let raw_code = field(columns.code, ICD10)?;
        // A row without a dialogue is dropped whatever its code; one with a dialogue needs a code.
        if !dialogue.trim().is_empty() && super::code_is_empty(&raw_code) {
            return Err(DatasetError::EmptyField {
                path: path.to_path_buf(),
                row,
                line,
                column: ICD10.to_string(),
            });
        }
        collector.push(Candidate {
            row,
            id: format!("medsynth-{}", row - 1),
            dialogue,
            note: field(columns.note, NOTE)?,
            raw_code,
            description: field(columns.description, ICD10_DESC)?,
        });
    }
    if collector.report.rows_read == 0 {
        return Err(DatasetError::HeaderOnly {
            path: path.to_path_buf(),
        });
    }
    collector.finish()
}
