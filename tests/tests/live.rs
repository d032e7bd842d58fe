//! The live page: `/` serves the page, `/api/state` follows the experiment to its end (tasks,
//! agents, loss curve), `/report/...` refuses anything but report files.
use std::sync::Arc;
use std::time::Duration;
use tests::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_follows_an_experiment() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let c = start_coordinator(
        &dir.path().join("data"),
        demo_plan("live", &dir.path().join("out"), 4, 100),
        None,
        stop.clone(),
    )
    .await;
    let http_addr = serve_live_page(&c, &stop).await;

    assert_eq!(
        http_get(http_addr, "/healthz").await,
        (200, "ok".to_string()),
        "the probe endpoint answers while the state owner runs"
    );
    let (status, body) = http_get(http_addr, "/api/state").await;
    assert_eq!(status, 200);
    let idle: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(idle["phase"], "idle");

    let url = format!("http://{}", c.addr);
    let counts = Arc::new(RunCounts::default());
    let runner = Arc::new(FakeRunner {
        batch_delay: Duration::from_millis(1),
        batch_size: 2,
        counts,
    });
    let _agent = start_agent(&url, "live-agent", 1000, runner, None, dir.path());
    let (id, _, _) = submit_and_wait(&url, None, Duration::from_secs(60)).await;

    let (status, body) = http_get(http_addr, "/api/state").await;
    assert_eq!(status, 200);
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["experiment"], id.as_str());
    assert_eq!(st["tasks"].as_array().unwrap().len(), 4);
    assert!(
        st["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "succeeded"),
        "{st}"
    );
    assert_eq!(st["agents"][0]["id"], "live-agent");
    let curve = &st["curves"][0];
    assert_eq!(curve["model"], "SLM_Qwen-3B");
    assert_eq!(
        curve["points"].as_array().unwrap().len(),
        3,
        "three train steps reported"
    );

    assert_eq!(
        st["phase"], "done",
        "the report is written with the outputs"
    );
    assert_eq!(st["report"], "/report/report.html");
    let (status, report) = http_get(http_addr, "/report/report.html").await;
    assert_eq!(status, 200);
    assert!(report.contains("<html"), "serves the report");
    let (status, page) = http_get(http_addr, "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("/api/state"),
        "the page polls the state endpoint"
    );
    assert_eq!(http_get(http_addr, "/report/../results.json").await.0, 404);
    assert_eq!(
        http_get(http_addr, "/report/config.resolved.toml").await.0,
        404
    );
    stop.cancel();
}
