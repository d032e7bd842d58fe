//! The prediction cache through the planner and the scheduler: a second experiment sharing one
//! model evaluates only the other (the rows the agent is sent are counted), a changed prompt or
//! `max_new_tokens` misses, `--no-cache` evaluates everything, list and prune.
use super::*;
use crate::outcome::EvalPerformance;
use crate::prepare::{ConfigPlanner, Planner};
use crate::state::core::{
    Core, DeviceInfo, DeviceKind, OfferAnswer, Outcome, Registration, Settings, ToAgent,
};
use shared::config::{ExperimentConfig, ExperimentScope, ModelEntry};
use shared::task::AgentId;
use std::time::Instant;

fn perf() -> EvalPerformance {
    EvalPerformance {
        load_s: 1.0,
        eval_s: 2.0,
        samples_per_s: 60.0,
        tokens_per_s: 100.0,
        peak_memory_mib: 10,
        device_name: "cpu".into(),
    }
}

/// The offline default's data with two zero-shot models (`llm` scope: no finetune), both local
/// `.gguf` files in `models` (empty: nothing loads them here).
fn config(models: &Path, a: &str, b: &str) -> ExperimentConfig {
    let mut cfg = ExperimentConfig::offline_default();
    cfg.experiment = ExperimentScope::Llm;
    cfg.data.max_eval_samples = Some(10);
    cfg.llm_models = [a, b]
        .iter()
        .map(|n| {
            let path = models.join(format!("{n}.gguf"));
            if !path.exists() {
                std::fs::write(&path, n.as_bytes()).unwrap();
            }
            ModelEntry {
                name: path.display().to_string(),
                revision: None,
                size: "135M".into(),
                label: (*n).into(),
                description: String::new(),
                load_in_4bit: false,
            }
        })
        .collect();
    cfg
}

fn planner(models: &Path, cache: &Path) -> ConfigPlanner {
    let mut hub = hubclient::HubSettings::new("/nonexistent/hub-cache");
    hub.access = hubclient::HubAccess::Offline;
    ConfigPlanner {
        models_dir: Some(models.to_path_buf()),
        outputs_root: cache.join("outputs"),
        env: Default::default(),
        hub,
        cache: Some(PredictionCache::new(cache)),
    }
}

/// Runs `plan` to the end with one agent that answers every sample it is sent; returns the rows
/// each offer carried, by task, and what the output writer would get.
fn run(plan: ExperimentPlan) -> (BTreeMap<String, usize>, OutputsInput) {
    let t0 = Instant::now();
    let mut core = Core::new(Settings::default());
    let agent = AgentId("a".into());
    let s = core
        .register(
            Registration {
                agent: agent.clone(),
                host: "h".into(),
                version: "0".into(),
                devices: vec![DeviceInfo {
                    kind: DeviceKind::Cpu,
                    index: 0,
                    uuid: "cpu".into(),
                    name: "cpu".into(),
                    total_mib: 1 << 20,
                    free_mib: 1 << 20,
                    driver: String::new(),
                }],
            },
            t0,
        )
        .unwrap();
    core.submit(plan, t0);
    let mut sent = BTreeMap::new();
    loop {
        let fx = core.take_effects();
        if let Some(out) = fx.outputs.into_iter().next() {
            return (sent, *out);
        }
        let offers: Vec<_> = fx
            .to_agents
            .into_iter()
            .filter_map(|(_, _, m)| match m {
                ToAgent::Offer { task, payload, .. } => Some((task, payload)),
                _ => None,
            })
            .collect();
        assert!(!offers.is_empty(), "the experiment stalled");
        for (task, payload) in offers {
            let TaskPayload::Evaluate(p) = *payload else {
                panic!("only evaluations here")
            };
            *sent.entry(task.task.0.clone()).or_default() += p.samples.len();
            core.offer_reply(&agent, s, &task, OfferAnswer::Accept, t0)
                .unwrap();
            let rows = p
                .samples
                .iter()
                .map(|r| PredictionRow {
                    sample_id: r.id.clone(),
                    reference: r.code.clone(),
                    raw_output: format!("{} says {}", task.task.0, r.code),
                    extracted: Some(r.code.clone()),
                    correct: true,
                    latency_ms: 1.0,
                    generated_tokens: 3,
                    prompt_tokens: 50,
                })
                .collect();
            core.predictions(&agent, s, &task, rows, t0);
            core.result(
                &agent,
                s,
                &task,
                Outcome::Done(TaskOutput::Evaluated(perf())),
                t0,
            )
            .unwrap();
        }
    }
}

#[test]
fn a_second_experiment_evaluates_only_the_model_it_does_not_share() {
    let dir = tempfile::tempdir().unwrap();
    let (models, cache_dir) = (dir.path().join("models"), dir.path().join("cache"));
    std::fs::create_dir(&models).unwrap();
    let planner = planner(&models, &cache_dir);
    let cache = PredictionCache::new(&cache_dir);

    // Experiment 1: A and B, nothing cached yet; both evaluated in full, then stored.
    let cfg1 = config(&models, "A", "B");
    let plan1 = planner.plan(&cfg1.to_toml().unwrap()).unwrap();
    assert!(plan1.cache.as_ref().unwrap().hits.is_empty());
    assert_eq!(plan1.cache.as_ref().unwrap().keys.len(), 2);
    let (sent1, out1) = run(plan1);
    assert_eq!(sent1.values().sum::<usize>(), 20, "{sent1:?}");
    assert_eq!(cache.store(&out1, 1_000).unwrap(), 20);

    // Experiment 2: A and C. A comes wholly from the cache without an agent; only C's rows go out.
    let cfg2 = config(&models, "A", "C");
    let plan2 = planner.plan(&cfg2.to_toml().unwrap()).unwrap();
    let (sent2, out2) = run(plan2);
    assert_eq!(
        sent2,
        BTreeMap::from([("eval:LLM_C".to_string(), 10)]),
        "only the unshared model's rows are sent"
    );
    let a = out2
        .tasks
        .iter()
        .find(|t| t.spec.id.0 == "eval:LLM_A")
        .unwrap();
    assert_eq!(a.state, TaskState::Succeeded);
    assert_eq!(a.predictions.len(), 10);
    assert!(a.predictions[0].raw_output.starts_with("eval:LLM_A says"));
    assert_eq!(a.output, Some(TaskOutput::Evaluated(perf())));
    // The outputs say which rows came from the cache, computed when and by which experiment.
    let used = cache_use(&out2);
    assert_eq!(used.len(), 1);
    assert_eq!((used[0].rows_from_cache, used[0].rows_evaluated), (10, 0));
    assert_eq!(used[0].computed_first, "1970-01-01T00:16:40Z");
    assert_eq!(used[0].computed_by, std::slice::from_ref(&out1.plan.id.0));
    let results = crate::outputs::results::build(&out2, None);
    let extra = |k: &str| {
        results.entries[k]
            .extra
            .get("rows_from_prediction_cache")
            .copied()
    };
    assert_eq!(extra("LLM_A_untrained"), Some(10.0));
    assert_eq!(extra("LLM_C_untrained"), None);
    // Only C's rows are new in the cache.
    assert_eq!(cache.store(&out2, 2_000).unwrap(), 10);

    // A changed prompt or max_new_tokens never hits; neither does a changed model file.
    let mut changed = config(&models, "A", "C");
    changed.prompt.system.push_str(" Answer briefly.");
    let p = planner.plan(&changed.to_toml().unwrap()).unwrap();
    assert!(p.cache.unwrap().hits.is_empty());
    let mut changed = config(&models, "A", "C");
    changed.generation.max_new_tokens += 1;
    let p = planner.plan(&changed.to_toml().unwrap()).unwrap();
    assert!(p.cache.unwrap().hits.is_empty());
    std::fs::write(models.join("C.gguf"), b"other weights").unwrap();
    let p = planner.plan(&cfg2.to_toml().unwrap()).unwrap();
    let hits: Vec<&str> = p
        .cache
        .as_ref()
        .unwrap()
        .hits
        .keys()
        .map(|t| t.0.as_str())
        .collect();
    assert_eq!(hits, ["eval:LLM_A"], "C's file changed: C misses");

    // --no-cache: every row is evaluated again, and nothing is read or written.
    let p = planner
        .plan_with_cache(&cfg2.to_toml().unwrap(), false)
        .unwrap();
    assert!(p.cache.is_none());
    let (sent, _) = run(p);
    assert_eq!(sent.values().sum::<usize>(), 20, "{sent:?}");
}

#[test]
fn rows_of_a_partly_cached_evaluation_are_sent_and_the_rest_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (models, cache_dir) = (dir.path().join("models"), dir.path().join("cache"));
    std::fs::create_dir(&models).unwrap();
    let planner = planner(&models, &cache_dir);
    let mut cfg = config(&models, "A", "B");
    cfg.data.max_eval_samples = Some(4);
    let (_, out) = run(planner.plan(&cfg.to_toml().unwrap()).unwrap());
    PredictionCache::new(&cache_dir).store(&out, 5).unwrap();
    cfg.data.max_eval_samples = Some(10);
    let (sent, out) = run(planner.plan(&cfg.to_toml().unwrap()).unwrap());
    assert_eq!(
        sent.values().copied().collect::<Vec<_>>(),
        [6, 6],
        "{sent:?}"
    );
    assert!(out.tasks.iter().all(|t| t.predictions.len() == 10));
}

#[test]
fn list_and_prune_by_age_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let (models, cache_dir) = (dir.path().join("models"), dir.path().join("cache"));
    std::fs::create_dir(&models).unwrap();
    let cfg = config(&models, "A", "B");
    let (_, out) = run(planner(&models, &cache_dir)
        .plan(&cfg.to_toml().unwrap())
        .unwrap());
    let cache = PredictionCache::new(&cache_dir);
    cache.store(&out, 100).unwrap();
    let listed = cache.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|(_, m, rows)| *rows == 10 && m.updated == 100)
    );
    assert!(
        cache.prune(100, None).unwrap().is_empty(),
        "not older than 100"
    );
    let removed = cache.prune(101, Some("B.gguf")).unwrap();
    assert_eq!(removed.len(), 1);
    let left = cache.list().unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].1.model.ends_with("A.gguf"));
    assert_eq!(cache.prune(u64::MAX, None).unwrap().len(), 1);
    assert!(cache.list().unwrap().is_empty());
}
