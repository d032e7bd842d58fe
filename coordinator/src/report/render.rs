//! Renders `report.html` (self-contained: inline CSS, inline SVG figures) and `report.md` from
//! the analysis with minijinja templates. Numbers are formatted here, once, so both outputs agree.
use minijinja::Environment;
use serde::Serialize;

use super::ReportError;
use super::analysis::{Analysis, Breakdown, Comparison, Precision};
use super::input::{Perf, ReportInput};
use super::mcnemar::EXACT_BELOW;
use super::plots::RenderedPlot;
use super::stats::Estimate;

const HTML: &str = include_str!("templates/report.html.j2");
const MARKDOWN: &str = include_str!("templates/report.md.j2");

#[derive(Serialize)]
struct MetricRow {
    model: String,
    kind: &'static str,
    samples: usize,
    exact: String,
    category: String,
    macro_f1: String,
    invalid: String,
    latency: String,
}

#[derive(Serialize)]
struct ComparisonRow {
    first: String,
    second: String,
    samples: usize,
    exact: String,
    category: String,
    macro_f1: String,
    only_first: u64,
    only_second: u64,
    test: &'static str,
    p: String,
    sentence: String,
}

#[derive(Serialize)]
struct TableRow {
    cells: Vec<String>,
}

#[derive(Serialize)]
struct Table {
    title: String,
    note: String,
    header: Vec<String>,
    rows: Vec<TableRow>,
}

#[derive(Serialize)]
struct FailedRow {
    model: String,
    task: String,
    error: String,
}

#[derive(Serialize)]
struct Context<'a> {
    title: String,
    /// Planned models with no results, each with the task that failed and why.
    failed: Vec<FailedRow>,
    /// The CI level in percent, e.g. 95 (an integer, so templates print no decimals).
    conf: u32,
    headline: &'a str,
    verdicts: Vec<&'a str>,
    context_sentences: Vec<&'a str>,
    finetuning_sentences: Vec<&'a str>,
    metrics: Vec<MetricRow>,
    comparisons: Vec<ComparisonRow>,
    method: Vec<String>,
    plots: &'a [RenderedPlot],
    breakdowns: Vec<Table>,
    performance: Table,
    training: Option<Table>,
    config_toml: Option<&'a str>,
    data_hash: &'a str,
    created: Option<&'a str>,
    notes: Vec<String>,
}

fn ci(e: Option<Estimate>, precision: Precision) -> String {
    match (e, precision) {
        (None, _) => "–".to_string(),
        (Some(e), Precision::PointOnly) => format!("{:.1} (no CI)", e.point * 100.0),
        (Some(e), Precision::Bootstrap) if e.lo.is_nan() => {
            format!("{:.1} (no CI)", e.point * 100.0)
        }
        (Some(e), Precision::Bootstrap) => interval(&e),
    }
}

fn interval(e: &Estimate) -> String {
    format!(
        "{:.1} [{:.1}, {:.1}]",
        e.point * 100.0,
        e.lo * 100.0,
        e.hi * 100.0
    )
}

fn diff(e: &Estimate) -> String {
    if e.lo.is_nan() {
        return format!("{:+.1} (no CI)", e.point * 100.0);
    }
    format!(
        "{:+.1} [{:+.1}, {:+.1}]",
        e.point * 100.0,
        e.lo * 100.0,
        e.hi * 100.0
    )
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.digits$}"))
}

fn comparison_row(c: &Comparison) -> ComparisonRow {
    ComparisonRow {
        first: c.first.clone(),
        second: c.second.clone(),
        samples: c.samples,
        exact: diff(&c.differences[0]),
        category: diff(&c.differences[1]),
        macro_f1: diff(&c.differences[2]),
        only_first: c.mcnemar.only_a,
        only_second: c.mcnemar.only_b,
        test: c.mcnemar.method.describe(),
        p: super::analysis::format_p(c.mcnemar.p_value)
            .trim_start_matches("= ")
            .to_string(),
        sentence: c.sentence.clone(),
    }
}

fn breakdown_table(b: &Breakdown) -> Table {
    let mut header = vec!["group".to_string(), "n".to_string()];
    header.extend(b.models.iter().map(|m| format!("{m}: exact / category %")));
    Table {
        title: b.title.clone(),
        note: b.note.clone(),
        header,
        rows: b
            .rows
            .iter()
            .map(|r| {
                let mut cells = vec![r.group.clone(), r.samples.to_string()];
                cells.extend(
                    r.exact_pct
                        .iter()
                        .zip(&r.category_pct)
                        .map(|(e, c)| match (e, c) {
                            (Some(e), Some(c)) => format!("{e:.1} / {c:.1}"),
                            _ => "–".to_string(),
                        }),
                );
                TableRow { cells }
            })
            .collect(),
    }
}

fn perf_tables(input: &ReportInput) -> (Table, Option<Table>) {
    let perf = Table {
        title: "Inference performance".into(),
        note: "From results.json; tokens/s counts generated tokens only (no prompt, no padding)."
            .into(),
        header: [
            "model",
            "device",
            "load (s)",
            "eval (s)",
            "samples/s",
            "tokens/s",
            "peak memory (MiB)",
        ]
        .map(String::from)
        .to_vec(),
        rows: input
            .models
            .iter()
            .map(|m| {
                let p: &Perf = &m.perf;
                TableRow {
                    cells: vec![
                        m.key.display(),
                        p.device.clone().unwrap_or_else(|| "–".into()),
                        opt(p.load_s, 1),
                        opt(p.eval_s, 1),
                        opt(p.samples_per_s, 2),
                        opt(p.tokens_per_s, 1),
                        opt(p.peak_memory_mib, 0),
                    ],
                }
            })
            .collect(),
    };
    let rows: Vec<TableRow> = input
        .models
        .iter()
        .filter(|m| m.perf.train_s.is_some() || !m.curve.is_empty())
        .map(|m| {
            let p = &m.perf;
            TableRow {
                cells: vec![
                    m.key.display(),
                    opt(p.train_s, 1),
                    opt(p.train_steps, 0),
                    opt(p.train_tokens_per_s, 1),
                    opt(p.train_peak_memory_mib, 0),
                    opt(p.final_train_loss, 4),
                    opt(p.best_validation_loss, 4),
                ],
            }
        })
        .collect();
    let resumes: Vec<String> = input
        .models
        .iter()
        .filter_map(|m| {
            let r = m.perf.resumed.as_ref()?;
            Some(format!(
                " {} lost its agent ({}) and resumed from its checkpoint at step {} on {}.",
                m.key.display(),
                r.checkpoint_by_agent,
                r.resumed_from_step,
                r.resumed_on_agent
            ))
        })
        .collect();
    let training = (!rows.is_empty()).then(|| Table {
        title: "LoRA training".into(),
        note: format!(
            "From training/<model key>.json (or results.json).{}",
            resumes.concat()
        ),
        header: [
            "model",
            "train (s)",
            "steps",
            "tokens/s",
            "peak memory (MiB)",
            "final train loss",
            "best validation loss",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    });
    (perf, training)
}

fn kind(m: &super::analysis::ModelStats) -> &'static str {
    use super::input::Training;
    use shared::task::ModelRole;
    match (m.role, m.training) {
        (ModelRole::Llm, _) => "large, zero-shot",
        (ModelRole::Slm, Training::Finetuned) => "small, LoRA",
        (ModelRole::Slm, Training::Untrained) => "small, zero-shot",
    }
}

/// Renders both documents: `(html, markdown)`.
pub fn render(
    input: &ReportInput,
    analysis: &Analysis,
    plots: &[RenderedPlot],
) -> Result<(String, String), ReportError> {
    let b = &analysis.bootstrap;
    let conf = (b.confidence * 100.0).round();
    let bootstrap = if b.resamples == 0 {
        [
            "Confidence intervals: none (`bootstrap_resamples = 0`).".to_string(),
            format!(
                "Differences: a difference is significant when McNemar's p is below {:.2}.",
                1.0 - b.confidence
            ),
        ]
    } else {
        [
            format!(
                "Confidence intervals: percentile bootstrap, {} resamples of the samples with replacement (ChaCha8 seed {}), {conf}% interval = the {:.1}th and {:.1}th percentiles of the resampled statistic (linear interpolation).",
                b.resamples,
                b.seed,
                (1.0 - b.confidence) * 50.0,
                100.0 - (1.0 - b.confidence) * 50.0
            ),
            "Differences: paired bootstrap over the samples both models evaluated (the same resampled indices for both); a difference is significant when its CI excludes 0.".to_string(),
        ]
    };
    let mut method = bootstrap.to_vec();
    method.extend([
        format!(
            "McNemar's test on exact match: exact two-sided binomial test when the discordant pairs number fewer than {EXACT_BELOW}, otherwise chi-square with continuity correction, (|b − c| − 1)² / (b + c), 1 df."
        ),
        "Exact match: the first valid ICD-10-CM code extracted from the output equals the reference. Category match: same 3-character category. Macro-F1: unweighted mean of per-code F1 over the codes occurring in the references or the predictions; a missing code is a false negative for its reference.".to_string(),
    ]);
    let mut notes = Vec::new();
    if b.resamples == 0 {
        notes.push("bootstrap_resamples = 0: no confidence intervals; comparisons are decided by McNemar's test alone.".to_string());
    } else if b.resamples < super::MIN_RESAMPLES {
        notes.push(format!(
            "bootstrap_resamples = {} (as configured) is below {}: the interval ends are noisy.",
            b.resamples,
            super::MIN_RESAMPLES
        ));
    }
    for m in &input.models {
        if m.rows.is_empty() {
            notes.push(format!(
                "{}: no predictions file; it appears only in the performance tables.",
                m.key.display()
            ));
        }
    }
    if input.converted_from_old {
        notes.push("results.json was converted from the old results shape: metrics it did not record read \"–\".".to_string());
    }
    if analysis
        .models
        .iter()
        .any(|m| m.precision == Precision::PointOnly)
    {
        notes.push("Models marked \"no CI\" have no per-sample predictions: their numbers are results.json's point estimates, without confidence intervals or tests.".to_string());
    }
    if input.train_code_counts.is_none() {
        notes
            .push("train_code_counts.json is missing: no breakdown by code frequency.".to_string());
    }
    let mut breakdowns = Vec::new();
    if let Some(f) = &analysis.by_frequency {
        breakdowns.push(breakdown_table(f));
    }
    breakdowns.push(breakdown_table(&analysis.by_chapter));
    let (performance, training) = perf_tables(input);
    let failed = input
        .failed
        .iter()
        .map(|f| FailedRow {
            model: super::input::ModelKey::parse(&f.model)
                .map_or_else(|| f.model.clone(), |k| k.display()),
            task: f.task.clone(),
            error: f.error.clone(),
        })
        .collect();
    let ctx = Context {
        failed,
        conf: conf as u32,
        title: match &input.experiment {
            Some(e) => format!("sizespec report: {e}"),
            None => "sizespec report".to_string(),
        },
        headline: &analysis.headline,
        verdicts: analysis
            .comparisons
            .iter()
            .map(|c| c.sentence.as_str())
            .collect(),
        context_sentences: analysis
            .zero_shot_comparisons
            .iter()
            .map(|c| c.sentence.as_str())
            .collect(),
        finetuning_sentences: analysis
            .finetuning_effect
            .iter()
            .map(|c| c.sentence.as_str())
            .collect(),
        metrics: analysis
            .models
            .iter()
            .map(|m| MetricRow {
                model: m.display.clone(),
                kind: kind(m),
                samples: m.samples,
                exact: ci(m.estimates[0], m.precision),
                category: ci(m.estimates[1], m.precision),
                macro_f1: ci(m.estimates[2], m.precision),
                invalid: opt(m.invalid_rate.map(|r| r * 100.0), 1),
                latency: opt(m.mean_latency_ms, 0),
            })
            .collect(),
        comparisons: analysis
            .comparisons
            .iter()
            .chain(&analysis.zero_shot_comparisons)
            .chain(&analysis.finetuning_effect)
            .map(comparison_row)
            .collect(),
        method,
        plots,
        breakdowns,
        performance,
        training,
        config_toml: input.config_toml.as_deref(),
        data_hash: input.data_hash.as_deref().unwrap_or("not recorded"),
        created: input.created.as_deref(),
        notes,
    };
    let mut env = Environment::new();
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            minijinja::AutoEscape::Html
        } else {
            minijinja::AutoEscape::None
        }
    });
    // Markdown table cells must not contain a raw `|`.
    env.add_filter("cell", |s: String| s.replace('|', "\\|"));
    let template_err = |source: minijinja::Error| ReportError::Template { source };
    env.add_template("report.html", HTML)
        .map_err(template_err)?;
    env.add_template("report.md", MARKDOWN)
        .map_err(template_err)?;
    let html = env
        .get_template("report.html")
        .and_then(|t| t.render(&ctx))
        .map_err(template_err)?;
    let md = env
        .get_template("report.md")
        .and_then(|t| t.render(&ctx))
        .map_err(template_err)?;
    Ok((html, md))
}
