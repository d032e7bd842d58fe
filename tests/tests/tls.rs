//! Mutual TLS: with a client CA configured, an agent presenting a signed certificate registers
//! and runs tasks; a client without one, or speaking plaintext, gets nowhere. Certificates are
//! test-only fixtures (`tests/fixtures/tls/gen.sh`).
use coordinator::server::{ServeOptions, TlsFiles};
use proto::client::{ClientTls, Connection};
use proto::pb;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tests::*;
use tokio_util::sync::CancellationToken;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

fn client_tls(with_cert: bool) -> Option<ClientTls> {
    Some(ClientTls {
        ca: Some(fixture("ca.pem")),
        cert: with_cert.then(|| fixture("client.pem")),
        key: with_cert.then(|| fixture("client.key")),
        domain: Some("localhost".into()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_signed_clients_only() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plan = demo_plan("tls", &dir.path().join("out"), 4, 100);
    let mut opts = ServeOptions::new(dir.path().join("data"), Arc::new(StaticPlanner(plan)));
    opts.settings = fast_settings();
    opts.tls = Some(TlsFiles {
        cert: fixture("server.pem"),
        key: fixture("server.key"),
        client_ca: Some(fixture("ca.pem")),
    });
    let c = coordinator::server::start(listener, opts, stop.clone())
        .await
        .unwrap();
    let url = format!("https://{}", c.addr);

    let counts = Arc::new(RunCounts::default());
    let runner = Arc::new(FakeRunner {
        batch_delay: Duration::ZERO,
        batch_size: 2,
        counts: counts.clone(),
    });
    let conn = Connection {
        url: url.clone(),
        token: None,
        tls: client_tls(true),
    };
    let _agent = start_agent_on(conn.clone(), "tls-agent", 1000, runner, dir.path());
    let ch = conn.channel().await.unwrap();
    let mut ctl = pb::control_service_client::ControlServiceClient::new(ch);
    let id = ctl
        .submit(pb::SubmitRequest {
            config_toml: String::new(),
            no_cache: false,
        })
        .await
        .unwrap()
        .into_inner()
        .experiment_id;
    let mut stream = ctl
        .watch(pb::WatchRequest { experiment_id: id })
        .await
        .unwrap()
        .into_inner();
    let state = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(ev) = stream.message().await.unwrap() {
            if let Some(pb::experiment_event::Event::Finished(s)) = ev.event {
                return s;
            }
        }
        0
    })
    .await
    .unwrap();
    assert_eq!(
        state,
        pb::ExperimentStateKind::ExperimentStateSucceeded as i32
    );

    // No client certificate: the handshake (or the first call) fails.
    let anonymous = Connection {
        url: url.clone(),
        token: None,
        tls: client_tls(false),
    };
    let refused = match anonymous.channel().await {
        Err(_) => true,
        Ok(ch) => pb::control_service_client::ControlServiceClient::new(ch)
            .status(pb::StatusRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate must be refused");
    // Plaintext to a TLS port.
    let plain = Connection {
        url: format!("http://{}", c.addr),
        token: None,
        tls: None,
    };
    let refused = match plain.channel().await {
        Err(_) => true,
        Ok(ch) => pb::control_service_client::ControlServiceClient::new(ch)
            .status(pb::StatusRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "plaintext must be refused");
    stop.cancel();
}
