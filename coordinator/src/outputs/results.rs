//! Aggregation: the finished tasks of an experiment → `results.json` (`shared::results`), metrics
//! computed from the journalled predictions (`shared::metrics`).
use super::{OutputsError, OutputsInput, results_key};
use crate::outcome::{TaskOutput, TrainingOutcome};
use sha2::{Digest, Sha256};
use shared::results::{
    CurvePoint, FailedModel, Performance, ResultEntry, Results, ResultsMeta, TrainingMetrics,
    TrainingStatus, parse_result_key, tool_version,
};
use shared::task::{TaskKind, TaskState};

fn training_metrics(t: &TrainingOutcome) -> TrainingMetrics {
    TrainingMetrics {
        train_time_s: Some(t.train_s),
        steps: Some(t.steps),
        final_train_loss: Some(t.final_train_loss),
        best_validation_loss: t.best_validation_loss,
        epochs_run: Some(f64::from(t.epochs_run)),
        stopped_early: Some(t.stopped_early),
        tokens_per_s: Some(t.tokens_per_s),
        peak_memory_mib: Some(t.peak_memory_mib as f64),
        resumed: t.resumed.clone(),
        curve: t
            .curve
            .iter()
            .map(|c| CurvePoint {
                step: c.step,
                train_loss: c.train_loss,
                validation_loss: c.validation_loss,
            })
            .collect(),
    }
}

/// The task at fault for task `i` not succeeding, and its error: a task cancelled because a task
/// it depends on did not succeed points at that task (and so on down the chain).
fn failure_of(input: &OutputsInput, i: usize) -> (String, String) {
    let mut seen = vec![i];
    let mut i = i;
    loop {
        let t = &input.tasks[i];
        let dep = (t.state == TaskState::Cancelled)
            .then(|| {
                t.spec.depends_on.iter().find_map(|d| {
                    input
                        .tasks
                        .iter()
                        .position(|x| &x.spec.id == d && x.state != TaskState::Succeeded)
                })
            })
            .flatten()
            .filter(|d| !seen.contains(d));
        match dep {
            Some(d) => {
                seen.push(d);
                i = d;
            }
            None => {
                let error = if t.detail.is_empty() {
                    format!("ended {:?}", t.state)
                } else {
                    t.detail.clone()
                };
                return (t.spec.id.0.clone(), error);
            }
        }
    }
}

/// Every planned evaluation that did not succeed, under the key its model would have had.
fn failed_models(input: &OutputsInput) -> Vec<FailedModel> {
    input
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.spec.kind == TaskKind::Evaluate)
        .filter(|(_, t)| {
            !(t.state == TaskState::Succeeded && matches!(t.output, Some(TaskOutput::Evaluated(_))))
        })
        .map(|(i, t)| {
            let (task, error) = failure_of(input, i);
            FailedModel {
                model: results_key(&input.plan, &t.spec),
                task,
                error,
            }
        })
        .collect()
}

/// Every succeeded evaluation becomes one entry; a finetuned entry also carries its finetune's
/// training metrics; every other planned evaluation is named in `meta.failed` with the task at
/// fault. `created` is the caller's timestamp (kept out so the rest is reproducible).
pub fn build(input: &OutputsInput, created: Option<String>) -> Results {
    let mut results = Results {
        meta: Some(ResultsMeta {
            experiment: input.plan.name.clone(),
            config_hash: Some(hex::encode(Sha256::digest(
                input.plan.config_toml.as_bytes(),
            ))),
            split_hash: Some(input.plan.split_hash.clone()),
            created,
            tool_version: tool_version(),
            converted_from_old: false,
            dataset: input.plan.dataset.clone(),
            failed: failed_models(input),
        }),
        entries: Default::default(),
    };
    for t in &input.tasks {
        let (TaskKind::Evaluate, TaskState::Succeeded, Some(TaskOutput::Evaluated(perf))) =
            (t.spec.kind, &t.state, &t.output)
        else {
            continue;
        };
        let key = results_key(&input.plan, &t.spec);
        let training = parse_result_key(&key).map_or(TrainingStatus::Untrained, |(_, _, tr)| tr);
        let training_metrics = (training == TrainingStatus::Finetuned)
            .then(|| {
                input
                    .tasks
                    .iter()
                    .find_map(|f| match (&f.spec.kind, &f.output) {
                        (TaskKind::Finetune, Some(TaskOutput::Finetuned(tr)))
                            if t.spec.depends_on.contains(&f.spec.id) =>
                        {
                            Some(training_metrics(tr))
                        }
                        _ => None,
                    })
            })
            .flatten();
        let entry = ResultEntry {
            model_type: t.spec.model.role.into(),
            size: t.spec.model.size.clone(),
            training,
            model_name: t.spec.model.name.clone(),
            metrics: shared::metrics::compute(&t.predictions, perf.eval_s),
            missing_metrics: Vec::new(),
            performance: Performance {
                load_time_s: Some(perf.load_s),
                eval_time_s: Some(perf.eval_s),
                samples_per_s: Some(perf.samples_per_s),
                tokens_per_s: Some(perf.tokens_per_s),
                peak_memory_mib: Some(perf.peak_memory_mib as f64),
                device_name: Some(perf.device_name.clone()),
            },
            training_metrics,
            extra: cache_extra(input, t),
        };
        results.entries.insert(key, entry);
    }
    results
}

/// For an evaluation that took rows from the prediction cache, how many (the output folder's
/// `prediction_cache.json` says when and by which experiment they were computed).
fn cache_extra(
    input: &OutputsInput,
    t: &super::TaskResultView,
) -> std::collections::BTreeMap<String, f64> {
    let mut extra = std::collections::BTreeMap::new();
    if let Some(n) = input
        .plan
        .cache
        .as_ref()
        .and_then(|c| c.hits.get(&t.spec.id))
        .map(|h| h.rows.len())
    {
        extra.insert("rows_from_prediction_cache".into(), n as f64);
    }
    extra
}

/// RFC 3339 UTC timestamp of now (civil-from-days; no date crate needed for one format).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    rfc3339(secs)
}

/// RFC 3339 UTC timestamp of unix seconds `secs`.
pub fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days → civil date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes `results.json` atomically.
pub fn write_results(input: &OutputsInput) -> Result<(), OutputsError> {
    let results = build(input, Some(now_rfc3339()));
    let path = input.plan.output_dir.join("results.json");
    shared::fsutil::write_json_atomic(&path, &results)
        .map_err(|source| OutputsError::Io { path, source })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_has_the_shape() {
        let s = super::now_rfc3339();
        assert_eq!(s.len(), 20, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && &s[10..11] == "T",
            "{s}"
        );
    }
}
