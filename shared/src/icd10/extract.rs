//! Finding the code a model meant in its free-text answer (`docs/data.md`, pitfall 5).
//!
//! The text is cut into tokens: maximal runs of alphanumeric characters and dots (so a code is
//! never taken from inside a longer word or number), with leading and trailing dots dropped (a
//! sentence's full stop: `"Code: I10."`). A token is a candidate when it has a code's shape —
//! three ASCII letters/digits starting with a letter, then optionally a dot, then up to four more
//! — and the first candidate that is a valid code of the release wins.
//!
//! A candidate is taken whole or not at all: `"I10x"`, `"E11.9ABC"` or `"J45.9090"` are skipped
//! even though `I10`, `E11.9` and `J45.909` are valid, and no valid prefix is salvaged. Cutting
//! back to a valid prefix would turn room numbers (`"B201"` -> `B20`, HIV disease) and invented
//! over-specific codes into codes the model never wrote, and award them category credit.
use super::{normalize, table};

/// The first valid ICD-10-CM code in `text`, normalised (upper case, no dot); `None` when the
/// text holds none. Accepts every shape (`S72.001A`, `T38.3X5A`, `C7A.00`, `U07.1`, `M25562`,
/// `I10`), any case, inside prose, markdown, quotes or after a label. See the module docs for
/// what counts as a candidate.
pub fn extract(text: &str) -> Option<String> {
    tokens(text)
        .filter(|t| has_code_shape(t))
        .map(normalize)
        .find(|code| table::lookup(code).is_some())
}

fn tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '.'))
        .map(|t| t.trim_matches('.'))
        .filter(|t| !t.is_empty())
}

/// `A00`..`A0000000`-like: a letter, two alphanumerics, then either up to four more or a dot and
/// one to four more. ASCII only, so a token with accented letters is never a code.
fn has_code_shape(token: &str) -> bool {
    let b = token.as_bytes();
    if b.len() < 3 || !b[0].is_ascii_alphabetic() || !b[1..3].iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    let rest = match &b[3..] {
        [b'.', rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    rest.len() <= 4 && rest.iter().all(u8::is_ascii_alphanumeric)
}
