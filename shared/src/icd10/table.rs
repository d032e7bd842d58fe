//! The embedded release: the code table (decoded once) and the 22 chapters.
use std::io::Read;
use std::sync::OnceLock;

/// Every code of the release, `CODE<TAB>billable<TAB>description`, sorted by code (gzip).
const CODES_GZ: &[u8] = include_bytes!("../../data/icd10cm-2026.tsv.gz");
/// The chapters, `number<TAB>first<TAB>last<TAB>title`.
const CHAPTERS_TSV: &str = include_str!("../../data/icd10cm-chapters.tsv");

/// A chapter of ICD-10-CM and the category range it covers (inclusive, e.g. `C00`-`D49`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chapter {
    pub number: u8,
    pub first: &'static str,
    pub last: &'static str,
    pub title: &'static str,
}

/// One code of the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// Normalised (upper case, no dot).
    pub code: &'static str,
    /// A leaf of the hierarchy, usable on a claim.
    pub billable: bool,
    pub description: &'static str,
}

/// What is wrong with the embedded data (only a broken build of `shared/data/` can cause it).
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("embedded icd10cm-2026.tsv.gz: cannot decompress: {0}")]
    Decompress(#[from] std::io::Error),
    #[error("embedded {file} line {line}: {what}")]
    Line {
        file: &'static str,
        line: usize,
        what: String,
    },
}

/// All codes of the release, sorted by code.
pub fn codes() -> &'static [Code] {
    static CODES: OnceLock<Vec<Code>> = OnceLock::new();
    CODES.get_or_init(|| {
        // The embedded file is checked by the tests; failing here means a corrupt build.
        parse_codes(CODES_GZ).unwrap_or_else(|e| panic!("{e}; rerun scripts/icd10/derive.py"))
    })
}

/// The 22 chapters in release order.
pub fn chapters() -> &'static [Chapter] {
    static CHAPTERS: OnceLock<Vec<Chapter>> = OnceLock::new();
    CHAPTERS.get_or_init(|| {
        parse_chapters(CHAPTERS_TSV)
            .unwrap_or_else(|e| panic!("{e}; rerun scripts/icd10/derive.py"))
    })
}

/// The entry for an already-normalised code.
pub(crate) fn lookup(normalized: &str) -> Option<&'static Code> {
    let all = codes();
    all.binary_search_by(|c| c.code.cmp(normalized))
        .ok()
        .map(|i| &all[i])
}

fn parse_codes(gz: &[u8]) -> Result<Vec<Code>, TableError> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz).read_to_string(&mut text)?;
    // Leaked once (the OnceLock keeps it for the process anyway) so entries borrow `'static`
    // slices instead of owning ~98k small strings.
    let text: &'static str = text.leak();
    let err = |line: usize, what: String| TableError::Line {
        file: "icd10cm-2026.tsv.gz",
        line,
        what,
    };
    let mut out: Vec<Code> = Vec::with_capacity(100_000);
    for (i, row) in text.lines().enumerate() {
        let mut cols = row.split('\t');
        let (Some(code), Some(flag), Some(description), None) =
            (cols.next(), cols.next(), cols.next(), cols.next())
        else {
            return Err(err(
                i + 1,
                format!("expected 3 tab-separated columns, got {row:?}"),
            ));
        };
        let billable = match flag {
            "1" => true,
            "0" => false,
            other => {
                return Err(err(
                    i + 1,
                    format!("billable flag must be 0 or 1, got {other:?}"),
                ));
            }
        };
        if let Some(prev) = out.last()
            && prev.code >= code
        {
            return Err(err(
                i + 1,
                format!(
                    "code {code} is not after {} (file must be sorted)",
                    prev.code
                ),
            ));
        }
        out.push(Code {
            code,
            billable,
            description,
        });
    }
    Ok(out)
}

fn parse_chapters(tsv: &'static str) -> Result<Vec<Chapter>, TableError> {
    let err = |line: usize, what: String| TableError::Line {
        file: "icd10cm-chapters.tsv",
        line,
        what,
    };
    tsv.lines()
        .enumerate()
        .map(|(i, row)| {
            let cols: Vec<&'static str> = row.split('\t').collect();
            let [number, first, last, title] = cols[..] else {
                return Err(err(
                    i + 1,
                    format!("expected 4 tab-separated columns, got {row:?}"),
                ));
            };
            let number = number
                .parse()
                .map_err(|e| err(i + 1, format!("chapter number {number:?}: {e}")))?;
            Ok(Chapter {
                number,
                first,
                last,
                title,
            })
        })
        .collect()
}
