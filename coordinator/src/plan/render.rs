//! The plan report as text for a terminal.
use super::PlanReport;
use super::throughput::{duration_words, thousands};
use std::fmt::Write;

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "fits",
        Some(false) => "too small",
        None => "memory unknown",
    }
}

fn mib(m: Option<u64>) -> String {
    m.map_or_else(|| "?".into(), |m| format!("{} MiB", thousands(m)))
}

/// The report as lines of text (what `coordinator plan` prints without `--json`).
pub fn text(r: &PlanReport) -> String {
    let mut o = String::new();
    let d = &r.data;
    let s = &d.split;
    let _ = writeln!(o, "experiment {} → {}", r.experiment, r.output_dir);
    let _ = writeln!(o, "\ndata: {}", d.source);
    if let Some(h) = &d.hub {
        let _ = writeln!(
            o,
            "  hub file: {} {} @ {} = commit {}, sha256 {}",
            h.repo, h.file, h.revision, h.commit, h.sha256
        );
    }
    match &d.load {
        Some(l) => {
            for line in l.to_string().lines().skip(1) {
                let _ = writeln!(o, "{line}");
            }
        }
        None => {
            let _ = writeln!(o, "  generated (no rows read, none skipped)");
        }
    }
    let _ = writeln!(
        o,
        "  records: {} ({} distinct codes)",
        d.records, d.distinct_codes
    );
    let _ = writeln!(
        o,
        "  split: train {} / validation {} / test {} (hash {})",
        s.train,
        s.validation,
        s.test,
        &s.hash[..s.hash.len().min(12)]
    );
    let _ = writeln!(
        o,
        "  used: {} training examples, {} evaluated samples",
        s.train_used, s.eval_samples
    );
    let _ = writeln!(
        o,
        "  codes: {} in train, {} in test, {} test codes never seen in train ({} evaluated samples have one)",
        s.train_codes, s.test_codes, s.test_codes_unseen_in_train, s.eval_samples_with_unseen_code
    );

    let _ = writeln!(o, "\ndevices ({}):", r.devices_from);
    if r.devices.is_empty() {
        let _ = writeln!(o, "  none known");
    }
    for dev in &r.devices {
        let _ = writeln!(
            o,
            "  {:<12} {:<10} {:<28} free {:>11} of {:>11}",
            dev.agent,
            dev.device,
            dev.name,
            mib(dev.free_mib),
            mib(dev.total_mib)
        );
    }

    let _ = writeln!(o, "\ntasks ({}):", r.tasks.len());
    for t in &r.tasks {
        let deps = if t.depends_on.is_empty() {
            String::new()
        } else {
            format!(" after {}", t.depends_on.join(", "))
        };
        let _ = writeln!(
            o,
            "  {:<34} {} rows, needs {}{deps}",
            t.id,
            t.rows,
            mib(Some(t.estimate_mib))
        );
        let _ = writeln!(o, "    model {}", t.model);
        for (f, dev) in t.fits.iter().zip(&r.devices) {
            let _ = writeln!(
                o,
                "    {:<24} now: {:<14} empty: {}",
                format!("{}/{}", dev.agent, dev.device),
                yes_no(f.fits_free),
                yes_no(f.fits_total)
            );
        }
    }

    let _ = writeln!(o, "\ntoken lengths:");
    for t in &r.tokens {
        let _ = writeln!(o, "  {}: {}", t.model, t.note);
        if let Some(l) = &t.train {
            let _ = writeln!(
                o,
                "    training examples: {} — mean {:.0}, median {}, p95 {}, max {} tokens; {} longer than max_length {} (their dialogue is cut)",
                l.count, l.mean, l.median, l.p95, l.max, l.over_max_length, t.max_length
            );
        }
        if let Some(l) = &t.eval_prompts {
            let _ = writeln!(
                o,
                "    eval prompts: {} — mean {:.0}, median {}, p95 {}, max {} tokens",
                l.count, l.mean, l.median, l.p95, l.max
            );
        }
    }

    let _ = writeln!(
        o,
        "\nwall time (one device, tasks one after another; model loading and downloads not included):"
    );
    if r.estimates.is_empty() {
        let _ = writeln!(
            o,
            "  no device known (give --card H100 to estimate for a card)"
        );
    }
    for e in &r.estimates {
        let card = e.card.as_deref().unwrap_or("unknown card");
        let total = e
            .total_s
            .map_or_else(|| "no total (see the tasks)".into(), duration_words);
        let _ = writeln!(o, "  {} [{card}]: {total}", e.device);
        for t in &e.tasks {
            let time = t.seconds.map_or_else(|| "—".into(), duration_words);
            let _ = writeln!(
                o,
                "    {:<34} {:>12}  {}: {}",
                t.task, time, t.work, t.basis
            );
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(o, "\nnotes:");
        for n in &r.notes {
            let _ = writeln!(o, "  {n}");
        }
    }
    o
}
