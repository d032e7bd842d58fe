//! The live page in a real headless browser (Debian's `chromium`): its JavaScript renders the
//! agents and tasks of a running experiment, one page load keeps polling until it shows the
//! finished state, and the report it links carries the verdict.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::*;
use tokio_util::sync::CancellationToken;

/// `$CHROMIUM`, else `/usr/bin/chromium`; fails (never skips) when neither exists.
fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "the browser test needs Debian's chromium at {} (or set $CHROMIUM): \
         run `apt-get install -y --no-install-recommends chromium`",
        path.display()
    );
    path
}

/// Loads `url` in a fresh headless chromium and returns the DOM after its scripts ran.
/// `--virtual-time-budget` lets timers run in virtual time; virtual time stands still while a
/// fetch is in flight, so the page's first `/api/state` poll has rendered when the DOM is dumped.
fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let mut child = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=4000", "--dump-dom", url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start chromium");
    // Read the pipes on threads so a chatty chromium cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for chromium") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish loading {url} in 20 s: {}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = out.join().expect("stdout thread").expect("chromium stdout");
    let err = err.join().unwrap_or_default();
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium on {url} exited with {status}, stderr:\n{err}\nstdout:\n{dom}"
    );
    dom
}

async fn dump(url: String) -> String {
    tokio::task::spawn_blocking(move || dump_dom(&url))
        .await
        .expect("chromium thread")
}

/// The live page's `/api/state` as JSON, fetched over a plain socket.
async fn state(addr: std::net::SocketAddr) -> serde_json::Value {
    let (_, body) = http_get(addr, "/api/state").await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/state: {e}: {body}"))
}

/// A one-request-per-connection proxy to the live server that answers the page's first
/// `/api/state` poll at once (recording its body) and holds every later poll until `done`: a
/// page load through it can end on the finished state only by polling again on its own.
async fn gated_proxy(
    listener: tokio::net::TcpListener,
    upstream: std::net::SocketAddr,
    done: tokio::sync::watch::Receiver<bool>,
    first_state: Arc<std::sync::Mutex<Option<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while let Ok((mut client, _)) = listener.accept().await {
        let (mut done, first_state, polls) = (done.clone(), first_state.clone(), polls.clone());
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut chunk = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let first_poll = path == "/api/state"
                && polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            if path == "/api/state" && !first_poll {
                let _ = done.wait_for(|d| *d).await;
            }
            let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let req =
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            let mut resp = Vec::new();
            if up.write_all(req.as_bytes()).await.is_err()
                || up.read_to_end(&mut resp).await.is_err()
            {
                return;
            }
            if first_poll {
                let text = String::from_utf8_lossy(&resp);
                let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                *first_state.lock().unwrap() = Some(body.to_string());
            }
            let _ = client.write_all(&resp).await;
            let _ = client.shutdown().await;
        });
    }
}

fn assert_has(dom: &str, what: &str, why: &str) {
    assert!(dom.contains(what), "{why}: no `{what}` in the DOM:\n{dom}");
}

fn assert_lacks(dom: &str, what: &str, why: &str) {
    assert!(!dom.contains(what), "{why}: `{what}` in the DOM:\n{dom}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_renders_the_running_and_the_finished_experiment() {
    // Fail at once, before any setup, when the browser is missing.
    chromium();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    // 3 evaluations of 30 samples at 150 ms each, one task at a time: ~14 s of running state,
    // enough for chromium to start and poll while it lasts (and for a retried first load).
    let c = start_coordinator(
        &dir.path().join("data"),
        demo_plan("browser", &dir.path().join("out"), 30, 100),
        None,
        stop.clone(),
    )
    .await;
    let http_addr = serve_live_page(&c, &stop).await;
    let page = format!("http://{http_addr}/");

    let url = format!("http://{}", c.addr);
    let runner = Arc::new(FakeRunner {
        batch_delay: Duration::from_millis(150),
        batch_size: 1,
        counts: Arc::new(RunCounts::default()),
    });
    let _agent = start_agent(&url, "browser-agent", 1000, runner, None, dir.path());
    let run = tokio::spawn({
        let url = url.clone();
        async move { submit_and_wait(&url, None, Duration::from_secs(60)).await }
    });

    // Wait until a task runs on the agent, so the first load has something running to show. Tasks
    // run one at a time, so a load can land in the gap between two of them (one finished, the
    // next not yet accepted: seen once under CI load); such a load is retried, at most twice.
    let running_row = r#"<td class="state-running">running</td><td>browser-agent</td>"#;
    let mut first = String::new();
    for _ in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = state(http_addr).await;
            let running = st["tasks"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| t["state"] == "running"));
            if st["phase"] == "running" && running {
                break;
            }
            assert!(Instant::now() < deadline, "no task started running: {st}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        first = dump(page.clone()).await;
        if first.contains(running_row) || run.is_finished() {
            break;
        }
    }
    assert!(
        !run.is_finished(),
        "the experiment ended before the first page load finished; slow the fake runner down"
    );
    // The static page says `idle` / `no experiment`; these come only from the script's render.
    assert_has(
        &first,
        r#"<span id="experiment">browser</span>"#,
        "the script rendered the experiment's id",
    );
    assert_has(
        &first,
        r#"<span id="phase" class="phase running">running</span>"#,
        "the phase is running",
    );
    assert_has(
        &first,
        "<td>browser-agent</td>",
        "the agents table lists the agent",
    );
    assert_has(
        &first,
        "<td>fake device</td>",
        "the agent's device is shown",
    );
    assert_has(&first, running_row, "a task runs on the agent");
    assert_has(
        &first,
        " / 30 samples</span>",
        "the running evaluation shows its progress",
    );
    // Only the markup is checked: the script itself contains the link's words.
    assert_has(
        &first,
        r#"<div id="report" class="report" hidden=""></div>"#,
        "no report link while running",
    );

    // A second page load, started while the experiment runs: its first poll sees it running,
    // its later polls are held until the report is written.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let first_state = Arc::new(std::sync::Mutex::new(None));
    tokio::spawn(gated_proxy(proxy, http_addr, done_rx, first_state.clone()));
    let followed = tokio::spawn(dump(format!("http://{proxy_addr}/")));

    let (_, finished, _) = run.await.expect("experiment task");
    assert_eq!(
        finished,
        proto::pb::ExperimentStateKind::ExperimentStateSucceeded as i32
    );
    // The report is written with the outputs, just after `finished` is sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(http_addr).await["phase"] != "done" {
        assert!(
            Instant::now() < deadline,
            "the live state never reached done"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    done_tx.send(true).unwrap();
    let followed = followed.await.expect("second page load");
    let seen_first: serde_json::Value = serde_json::from_str(
        first_state
            .lock()
            .unwrap()
            .as_deref()
            .expect("the second load polled /api/state"),
    )
    .unwrap();
    assert_eq!(
        seen_first["phase"], "running",
        "the second load's first poll saw the experiment running"
    );
    assert_has(
        &followed,
        r#"<span id="phase" class="phase done">done</span>"#,
        "the page kept polling and rendered the finished state in the same load",
    );
    assert_has(
        &followed,
        r#"<a href="/report/report.html">open the report</a>"#,
        "the same load shows the report link once done",
    );

    let last = dump(page.clone()).await;
    assert_has(
        &last,
        r#"<span id="phase" class="phase done">done</span>"#,
        "the phase is done",
    );
    assert_has(
        &last,
        r#"<div id="report" class="report">Done: <a href="/report/report.html">open the report</a></div>"#,
        "the finished page shows the report link, unhidden",
    );
    assert_eq!(
        last.matches(r#"<td class="state-succeeded">succeeded</td>"#)
            .count(),
        4,
        "every task succeeded:\n{last}"
    );
    assert_lacks(&last, r#"class="state-running""#, "nothing runs any more");
    assert_ne!(first, last, "the page changed between the loads");

    // Follow the page's link: the report the browser gets carries the verdict.
    let report = dump(format!("http://{http_addr}/report/report.html")).await;
    assert_has(&report, "<h2>Verdict</h2>", "the report has a verdict");
    let verdicts = report
        .split_once(r#"<ul class="verdicts">"#)
        .and_then(|(_, rest)| rest.split_once("</ul>"))
        .map_or("", |(list, _)| list);
    assert!(
        verdicts.contains("<li>"),
        "the verdict lists its comparisons:\n{report}"
    );
    stop.cancel();
}
