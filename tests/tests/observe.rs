//! A served experiment watched from outside with a real agent session (the fake runner): `/metrics`
//! scraped over HTTP while the demo plan runs and after, then the output folder downloaded with
//! `DownloadResults` and compared byte for byte.
use coordinator::results_download::receive;
use proto::pb;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::*;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(60);

/// A scrape parsed: `name{labels}` (as the exposition writes them) → value.
async fn scrape(http: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("`series value`");
            (
                k.to_string(),
                v.parse().unwrap_or_else(|e| panic!("{l}: {e}")),
            )
        })
        .collect()
}

/// Every regular file under `root`, relative path → bytes.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_one_agent_shows_in_metrics_and_its_outputs_download_whole() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stop = CancellationToken::new();
    let plan = demo_plan("observed", &out, 6, 100);
    let planned = plan.tasks.len();
    let c = start_coordinator(&dir.path().join("data"), plan, None, stop.clone()).await;
    let http = serve_live_page(&c, &stop).await;
    let url = format!("http://{}", c.addr);
    // Slow batches and steps, so the running finetune is seen by a scrape.
    let runner = Arc::new(FakeRunner {
        batch_delay: Duration::from_millis(150),
        batch_size: 2,
        counts: Arc::new(RunCounts::default()),
    });
    let _agent = start_agent(&url, "watched", 1000, runner, None, dir.path());
    let u = url.clone();
    let run = tokio::spawn(async move { submit_and_wait(&u, None, LIMIT).await });

    // The fake runner reports 10 training tokens/s at each step.
    let series = "sizespec_task_train_tokens_per_second{experiment=\"observed\",\
                  task=\"finetune:SLM_Qwen-3B\"}";
    let deadline = Instant::now() + LIMIT;
    loop {
        let m = scrape(http).await;
        if m.get(series) == Some(&10.0) {
            assert_eq!(
                m["sizespec_tasks{experiment=\"observed\",state=\"running\"}"],
                1.0
            );
            break;
        }
        assert!(Instant::now() < deadline, "no training speed seen: {m:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (id, state, events) = run.await.unwrap();
    assert_eq!(
        state,
        pb::ExperimentStateKind::ExperimentStateSucceeded as i32,
        "{events:?}"
    );
    assert_eq!(id, "observed");

    let m = scrape(http).await;
    let tasks = |s: &str| m[&format!("sizespec_tasks{{experiment=\"observed\",state=\"{s}\"}}")];
    assert_eq!(tasks("succeeded"), planned as f64, "{m:#?}");
    assert_eq!(tasks("running") + tasks("ready") + tasks("failed"), 0.0);
    assert_eq!(m["sizespec_agents_connected"], 1.0);
    assert_eq!(m["sizespec_devices_connected"], 1.0);
    let dev = "{agent=\"watched\",device=\"dev-watched\"}";
    assert_eq!(
        m[&format!("sizespec_device_memory_total_bytes{dev}")],
        1000.0 * f64::from(1u32 << 20),
        "{m:#?}"
    );
    assert_eq!(m["sizespec_task_retries_total"], 0.0);
    assert_eq!(m["sizespec_lease_expiries_total"], 0.0);
    assert_eq!(
        m["sizespec_task_queue_wait_seconds_count"], planned as f64,
        "each task taken once"
    );
    assert!(
        !m.keys().any(|k| k.contains("per_second{")),
        "nothing runs, so no speed is reported: {m:#?}"
    );

    let dl = dir.path().join("downloaded");
    let stream = control(&url, None)
        .await
        .download_results(pb::ResultsRequest {
            experiment_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let got = receive(stream, &dl).await.unwrap();
    let (server, local) = (tree(&out), tree(&dl));
    assert!(
        server.contains_key("results.json")
            && server.contains_key("report.html")
            && server.keys().any(|k| k.starts_with("training/"))
            && server.keys().any(|k| k.starts_with("predictions/")),
        "{:?}",
        server.keys()
    );
    assert_eq!(got.files.len(), server.len());
    assert_eq!(
        local.keys().collect::<Vec<_>>(),
        server.keys().collect::<Vec<_>>()
    );
    for (rel, bytes) in &server {
        assert!(local[rel] == *bytes, "{rel} differs");
    }
    stop.cancel();
}
