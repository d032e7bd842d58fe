//! Measured throughputs (`shared/data/throughput.toml`, rows of bench/RESULTS.md) and the wall-time
//! estimates made from them: a task gets a time only where a row matches its card, model size
//! class, task kind and weights; otherwise it says why not, never a guess.
use serde::{Deserialize, Serialize};

/// The data file, embedded so `plan` works from any directory.
const TABLE: &str = include_str!("../../../shared/data/throughput.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    pub card: Vec<Card>,
    pub row: Vec<Row>,
}

/// A card kind whose total memory was measured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Card {
    pub card: String,
    pub memory_mib: u64,
    pub source: String,
}

/// One measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub card: String,
    pub class: String,
    pub task: String,
    pub weights: String,
    pub rate: f64,
    pub unit: String,
    pub commit: String,
    pub source: String,
    pub note: String,
}

/// The embedded table; a malformed file is a build-time fact, caught by the tests.
pub fn table() -> Result<Table, String> {
    toml::from_str(TABLE).map_err(|e| format!("shared/data/throughput.toml: {e}"))
}

/// The size class of a model with `billions` parameters, as the table names them.
pub fn size_class(billions: f64) -> Option<&'static str> {
    match billions {
        b if b < 1.0 => Some("small"),
        b if (2.0..=4.5).contains(&b) => Some("3B"),
        b if (6.0..=9.0).contains(&b) => Some("8B"),
        _ => None,
    }
}

impl Table {
    /// The table's card kind a device name belongs to (`"NVIDIA H100 80GB HBM3"` → `H100`).
    pub fn card_of(&self, device_name: &str) -> Option<&Card> {
        let name = device_name.to_ascii_lowercase();
        self.card
            .iter()
            .find(|c| name.contains(&c.card.to_ascii_lowercase()))
    }

    /// The measurement for this card, class, task kind and weights.
    pub fn rate(&self, card: &str, class: &str, task: &str, weights: &str) -> Option<&Row> {
        self.row
            .iter()
            .find(|r| r.card == card && r.class == class && r.task == task && r.weights == weights)
    }
}

/// How long one task would take on one card kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskTime {
    pub task: String,
    /// `None` when there is no measurement to base it on (`why` says what is missing).
    pub seconds: Option<f64>,
    /// The work counted (`"120 samples"`, `"3 epochs × 51,230 tokens"`).
    pub work: String,
    /// The measurement used (`"48.6 samples/s, commit 1e6d96e: <source>"`), or why there is none.
    pub basis: String,
}

/// A card kind's estimates for every task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CardEstimate {
    /// The device name as given (an agent's device, a local GPU or `--card`).
    pub device: String,
    /// The table's card kind, `None` for an unknown card.
    pub card: Option<String>,
    pub tasks: Vec<TaskTime>,
    /// Every task one after another on one such card, when every task has a time.
    pub total_s: Option<f64>,
}

/// What a task's time depends on.
#[derive(Debug, Clone)]
pub struct Work {
    pub task: String,
    pub class: Option<&'static str>,
    pub kind: WorkKind,
}

#[derive(Debug, Clone)]
pub enum WorkKind {
    Eval {
        samples: usize,
        q4: bool,
    },
    /// `tokens` per epoch, `None` when no tokenizer counted them.
    Finetune {
        epochs: u32,
        tokens: Option<u64>,
    },
}

/// Thousands separated by commas, for the human-readable work descriptions.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Estimates for `device` (a device name): every task of `work`.
pub fn estimate(table: &Table, device: &str, work: &[Work]) -> CardEstimate {
    let card = table.card_of(device).map(|c| c.card.clone());
    let tasks: Vec<TaskTime> = work
        .iter()
        .map(|w| {
            let (task_kind, weights, work_text, amount) = match &w.kind {
                WorkKind::Eval { samples, q4 } => (
                    "eval",
                    if *q4 { "q4" } else { "bf16" },
                    format!("{} samples", thousands(*samples as u64)),
                    Some(*samples as f64),
                ),
                WorkKind::Finetune { epochs, tokens } => (
                    "finetune",
                    "bf16",
                    match tokens {
                        Some(t) => format!("{epochs} epochs × {} tokens", thousands(*t)),
                        None => format!("{epochs} epochs × ? tokens"),
                    },
                    tokens.map(|t| t as f64 * f64::from(*epochs)),
                ),
            };
            let none = |why: String| TaskTime {
                task: w.task.clone(),
                seconds: None,
                work: work_text.clone(),
                basis: why,
            };
            let Some(card) = &card else {
                return none("unknown card".into());
            };
            let Some(class) = w.class else {
                return none("model size class unknown (size label or shape)".into());
            };
            let Some(row) = table.rate(card, class, task_kind, weights) else {
                return none(format!(
                    "not measured: no {task_kind} ({weights}) row for a {class} model on {card} in shared/data/throughput.toml"
                ));
            };
            let Some(amount) = amount else {
                return none("tokenizer not available: training tokens not counted".into());
            };
            TaskTime {
                task: w.task.clone(),
                seconds: Some(amount / row.rate),
                work: work_text,
                basis: format!(
                    "{} {} (commit {}; {}; {})",
                    row.rate, row.unit, row.commit, row.note, row.source
                ),
            }
        })
        .collect();
    let total_s = tasks
        .iter()
        .map(|t| t.seconds)
        .sum::<Option<f64>>()
        .filter(|_| !tasks.is_empty());
    CardEstimate {
        device: device.to_string(),
        card,
        tasks,
        total_s,
    }
}

/// `1 h 02 min`, `3 min 20 s`, `12 s`, `0.5 s`.
pub fn duration_words(s: f64) -> String {
    if s < 10.0 {
        return format!("{s:.1} s");
    }
    let s = s.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
    }
}
