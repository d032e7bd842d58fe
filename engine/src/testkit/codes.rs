//! A small synthetic code-mapping task: 20 symptom phrases, each with a code; several phrasings
//! for training and validation, different (held-out) phrasings for testing.
use shared::dataset::Record;

/// (symptom phrase, ICD-10-CM code, description).
pub const SYMPTOMS: [(&str, &str, &str); 20] = [
    ("sore throat", "J02.9", "Acute pharyngitis"),
    ("chest pain", "R07.9", "Chest pain"),
    ("bad headache", "R51.9", "Headache"),
    ("lower back pain", "M54.50", "Low back pain"),
    ("high fever", "R50.9", "Fever"),
    ("dry cough", "R05.9", "Cough"),
    ("itchy rash", "R21", "Rash"),
    ("burning urination", "R30.0", "Dysuria"),
    ("swollen ankle", "M25.471", "Effusion, right ankle"),
    ("ear pain", "H92.09", "Otalgia"),
    ("nausea and vomiting", "R11.2", "Nausea with vomiting"),
    ("short of breath", "R06.02", "Shortness of breath"),
    ("dizzy spells", "R42", "Dizziness"),
    ("stomach ache", "R10.9", "Abdominal pain"),
    ("knee pain", "M25.561", "Pain in right knee"),
    ("runny nose", "J00", "Common cold"),
    ("trouble sleeping", "G47.00", "Insomnia"),
    ("heart racing", "R00.0", "Tachycardia"),
    ("blurry vision", "H53.8", "Visual disturbance"),
    ("constant tiredness", "R53.83", "Fatigue"),
];

/// Training phrasings (`{s}` = symptom).
pub const TRAIN_PHRASINGS: [&str; 5] = [
    "patient reports {s}",
    "i have {s} since monday",
    "she complains of {s}",
    "he came in with {s} today",
    "the main problem is {s}",
];

/// Held-out phrasings, never seen in training.
pub const TEST_PHRASINGS: [&str; 2] = ["doctor notes {s} on exam", "my {s} started last week"];

fn record(i: usize, p: usize, phrasing: &str, kind: &str) -> Record {
    let (s, code, desc) = SYMPTOMS[i];
    Record {
        id: format!("{kind}-{i}-{p}"),
        dialogue: phrasing.replace("{s}", s),
        note: String::new(),
        code: shared::icd10::normalize(code),
        description: desc.to_string(),
    }
}

/// Every symptom under every training phrasing but the last (train), and under the last (validation).
pub fn train_and_validation() -> (Vec<Record>, Vec<Record>) {
    let mut train = Vec::new();
    let mut val = Vec::new();
    for i in 0..SYMPTOMS.len() {
        for (p, phrasing) in TRAIN_PHRASINGS.iter().enumerate() {
            if p + 1 == TRAIN_PHRASINGS.len() {
                val.push(record(i, p, phrasing, "val"));
            } else {
                train.push(record(i, p, phrasing, "train"));
            }
        }
    }
    (train, val)
}

/// Every symptom under the held-out phrasings.
pub fn test() -> Vec<Record> {
    let mut out = Vec::new();
    for i in 0..SYMPTOMS.len() {
        for (p, phrasing) in TEST_PHRASINGS.iter().enumerate() {
            out.push(record(i, p, phrasing, "test"));
        }
    }
    out
}

/// Every word the task uses (for a word-level test vocabulary), sorted and deduplicated.
pub fn words() -> Vec<String> {
    let mut w: Vec<String> = Vec::new();
    for (s, code, _) in SYMPTOMS {
        w.extend(s.split_whitespace().map(str::to_string));
        w.push(code.to_string());
    }
    for p in TRAIN_PHRASINGS.iter().chain(TEST_PHRASINGS.iter()) {
        w.extend(
            p.split_whitespace()
                .filter(|x| *x != "{s}")
                .map(str::to_string),
        );
    }
    w.sort();
    w.dedup();
    w
}
