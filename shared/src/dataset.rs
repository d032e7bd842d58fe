//! Dataset records and the MedSynth CSV loader.
use serde::{Deserialize, Serialize};

/// One example: a doctor–patient dialogue and its ICD-10-CM code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Stable id: `medsynth-<row>` for MedSynth (1-based data row), `embedded-<n>` for the default set.
    pub id: String,
    /// The dialogue text (model input for the honest task).
    pub dialogue: String,
    /// The clinical note (may state the diagnosis; not used as model input by default).
    pub note: String,
    /// The reference code, normalised by [`crate::icd10::normalize`] (upper case, no dot).
    pub code: String,
    /// The code's description as given by the source.
    pub description: String,
}
