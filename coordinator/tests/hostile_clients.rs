//! Careless or hostile clients at the coordinator's edges: artifact uploads over the size cap,
//! longer than announced, too many at once or stalled; live-page requests naming another Host.
use coordinator::experiment::ExperimentPlan;
use coordinator::server::{Planner, Running, ServeOptions, UploadLimits};
use proto::pb;
use proto::pb::artifact_chunk::Part;
use proto::pb::artifact_service_client::ArtifactServiceClient;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct NoPlanner;

impl Planner for NoPlanner {
    fn plan(&self, _config_toml: &str) -> Result<ExperimentPlan, String> {
        Err("these tests submit nothing".into())
    }
}

async fn start(data: &Path, uploads: UploadLimits, stop: &CancellationToken) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut opts = ServeOptions::new(data.to_path_buf(), Arc::new(NoPlanner));
    opts.uploads = uploads;
    coordinator::server::start(listener, opts, stop.clone())
        .await
        .expect("coordinator starts")
}

async fn artifacts(c: &Running) -> ArtifactServiceClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ArtifactServiceClient::new(ch)
}

fn header(name: &str, size: u64, data: &[u8]) -> pb::ArtifactChunk {
    pb::ArtifactChunk {
        part: Some(Part::Header(pb::ArtifactHeader {
            name: name.into(),
            size,
            sha256: hex::encode(Sha256::digest(data)),
        })),
    }
}

fn data(bytes: &[u8]) -> pb::ArtifactChunk {
    pb::ArtifactChunk {
        part: Some(Part::Data(proto::Bytes::copy_from_slice(bytes))),
    }
}

/// Every file under `dir` (temp files included), relative.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn limits(max_bytes: u64, concurrent: usize, slot_wait_ms: u64, idle_ms: u64) -> UploadLimits {
    UploadLimits {
        max_bytes,
        concurrent,
        slot_wait: Duration::from_millis(slot_wait_ms),
        idle: Duration::from_millis(idle_ms),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_cap_or_longer_than_announced_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let c = start(&dir.path().join("data"), limits(1024, 2, 1000, 5000), &stop).await;
    let mut art = artifacts(&c).await;
    let store = dir.path().join("data/artifacts");

    // Announced over the cap: refused before a byte is written, naming the cap and the flag.
    let big = vec![7u8; 2048];
    let err = art
        .upload(tokio_stream::iter(vec![
            header("e/big.bin", 2048, &big),
            data(&big),
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("1024-byte limit") && err.message().contains("--max-artifact-mib"),
        "{}",
        err.message()
    );

    // More bytes than announced (the announced size under the cap): refused, no file left.
    let sent = vec![1u8; 600];
    let err = art
        .upload(tokio_stream::iter(vec![
            header("e/liar.bin", 300, &sent),
            data(&sent[..300]),
            data(&sent[300..]),
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("received 600 bytes"),
        "{}",
        err.message()
    );
    assert!(files(&store).is_empty(), "left behind: {:?}", files(&store));

    // Within the cap and as announced: stored, and downloaded back whole.
    let ok = vec![3u8; 1024];
    art.upload(tokio_stream::iter(vec![
        header("e/ok.bin", 1024, &ok),
        data(&ok[..1000]),
        data(&ok[1000..]),
    ]))
    .await
    .unwrap();
    assert_eq!(files(&store), ["e/ok.bin"]);
    let mut down = art
        .download(pb::DownloadRequest {
            name: "e/ok.bin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let mut head = None;
    while let Some(chunk) = down.message().await.unwrap() {
        match chunk.part {
            Some(Part::Header(h)) => head = Some(h),
            Some(Part::Data(b)) => got.extend(b),
            None => {}
        }
    }
    let head = head.expect("a header first");
    assert_eq!((head.size, got), (1024, ok.clone()));
    assert_eq!(head.sha256, hex::encode(Sha256::digest(&ok)));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_are_bounded_and_a_stalled_one_gives_its_slot_back() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    // One slot; a waiting upload gives up after 300 ms; a silent one is dropped after 2 s.
    let c = start(
        &dir.path().join("data"),
        limits(1 << 20, 1, 300, 2000),
        &stop,
    )
    .await;
    let store = dir.path().join("data/artifacts");

    // A holds the only slot: its header and one chunk, then silence.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let payload = vec![9u8; 100];
    tx.send(header("e/a.bin", 100, &payload)).await.unwrap();
    tx.send(data(&payload[..10])).await.unwrap();
    let mut a_client = artifacts(&c).await;
    let started = Instant::now();
    let a = tokio::spawn(async move {
        a_client
            .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    // Give A time to take the slot.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // B finds no slot within its wait: refused with the bound named.
    let b_data = vec![1u8; 10];
    let err = artifacts(&c)
        .await
        .upload(tokio_stream::iter(vec![
            header("e/b.bin", 10, &b_data),
            data(&b_data),
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("1 uploads are already in progress")
            && err.message().contains("--max-uploads"),
        "{}",
        err.message()
    );

    // A's silence ends it (its sender still open): refused, its temp file removed.
    let a_err = a.await.unwrap().unwrap_err();
    assert_eq!(a_err.code(), tonic::Code::DeadlineExceeded, "{a_err:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "dropped only after the idle timeout: {:?}",
        started.elapsed()
    );
    drop(tx);
    // The temp file goes on a blocking thread; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !files(&store).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(files(&store).is_empty(), "left behind: {:?}", files(&store));

    // The slot is free again.
    artifacts(&c)
        .await
        .upload(tokio_stream::iter(vec![
            header("e/b.bin", 10, &b_data),
            data(&b_data),
        ]))
        .await
        .unwrap();
    assert_eq!(files(&store), ["e/b.bin"]);
    stop.cancel();
}

/// `GET path` with `Host: host` over a plain socket: the status code and the body.
async fn get(addr: std::net::SocketAddr, path: &str, host: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_answers_only_its_own_hosts_but_healthz_answers_probes() {
    use coordinator::server::live_http::{AllowedHosts, serve_live, serve_live_allowing};
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let c = start(&dir.path().join("data"), UploadLimits::default(), &stop).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve_live(l, c.state.clone(), stop.clone()));
    let port = addr.port();

    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".to_string(),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(get(addr, "/api/state", Some(&host)).await.0, 200, "{host}");
    }
    // DNS rebinding: a page on rebind.example whose name now resolves to 127.0.0.1.
    for host in [
        format!("rebind.example:{port}"),
        "rebind.example".to_string(),
    ] {
        let (status, body) = get(addr, "/api/state", Some(&host)).await;
        assert_eq!(status, 421, "{host}: {body}");
        assert!(body.contains("--allowed-host"), "{body}");
        assert_eq!(get(addr, "/", Some(&host)).await.0, 421);
        assert_eq!(get(addr, "/report/report.html", Some(&host)).await.0, 421);
    }
    // A tunnel's local port may differ from the listening one.
    assert_eq!(
        get(addr, "/api/state", Some("localhost:18080")).await.0,
        200
    );
    assert_eq!(get(addr, "/api/state", None).await.0, 400);
    // Kubelet probes name the pod's IP: /healthz answers any Host.
    assert_eq!(
        get(addr, "/healthz", Some("10.244.0.17:8080")).await,
        (200, "ok".to_string())
    );

    // An allow-listed name (a reverse proxy) is answered, with any port.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxied = l.local_addr().unwrap();
    let hosts = AllowedHosts::new(&["sizespec.example.org".into()]).unwrap();
    tokio::spawn(serve_live_allowing(l, c.state.clone(), hosts, stop.clone()));
    assert_eq!(
        get(proxied, "/api/state", Some("sizespec.example.org"))
            .await
            .0,
        200
    );
    assert_eq!(
        get(proxied, "/api/state", Some("Sizespec.Example.org:443"))
            .await
            .0,
        200
    );
    assert_eq!(
        get(proxied, "/api/state", Some("rebind.example")).await.0,
        421
    );
    stop.cancel();
}
