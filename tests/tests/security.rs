//! The edge rejects what it must: missing or wrong tokens, oversize messages, bad artifact names.
use proto::auth::{AttachToken, Token};
use proto::pb;
use std::time::Duration;
use tests::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_oversize_and_traversal_requests_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let token = Token::new("s3cret");
    let c = start_coordinator(
        &dir.path().join("data"),
        demo_plan("sec", &dir.path().join("out"), 2, 10),
        token.clone(),
        stop.clone(),
    )
    .await;
    let url = format!("http://{}", c.addr);

    for bad in [None, Token::new("wrong")] {
        let err = control(&url, bad)
            .await
            .status(pb::StatusRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    }
    let ok = control(&url, token.clone())
        .await
        .status(pb::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(ok.experiments.is_empty());

    // An agent with the wrong token is refused and stops instead of retrying forever.
    let counts = std::sync::Arc::new(RunCounts::default());
    let runner = std::sync::Arc::new(FakeRunner {
        batch_delay: Duration::ZERO,
        batch_size: 1,
        counts,
    });
    let _agent = start_agent(
        &url,
        "intruder",
        1000,
        runner,
        Token::new("wrong"),
        dir.path(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = control(&url, token.clone())
        .await
        .status(pb::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        st.agents.is_empty(),
        "an unauthenticated agent must not register"
    );

    // A control request over the 1 MiB limit.
    let huge = "#".repeat(2 * 1024 * 1024);
    let err = control(&url, token.clone())
        .await
        .submit(pb::SubmitRequest {
            config_toml: huge,
            no_cache: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "oversize submit: {err:?}"
    );

    // Artifact names cannot escape the store.
    let ch = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut art = pb::artifact_service_client::ArtifactServiceClient::with_interceptor(
        ch,
        AttachToken(token.clone()),
    );
    let err = art
        .download(pb::DownloadRequest {
            name: "../../etc/passwd".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let header = pb::ArtifactHeader {
        name: "a/../../x".into(),
        size: 1,
        sha256: String::new(),
    };
    let chunks = vec![pb::ArtifactChunk {
        part: Some(pb::artifact_chunk::Part::Header(header)),
    }];
    let err = art.upload(tokio_stream::iter(chunks)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // A checksum that does not match is refused and nothing is stored.
    let header = pb::ArtifactHeader {
        name: "e/file.bin".into(),
        size: 3,
        sha256: "00".repeat(32),
    };
    let chunks = vec![
        pb::ArtifactChunk {
            part: Some(pb::artifact_chunk::Part::Header(header)),
        },
        pb::ArtifactChunk {
            part: Some(pb::artifact_chunk::Part::Data(proto::Bytes::from_static(
                b"abc",
            ))),
        },
    ];
    let err = art.upload(tokio_stream::iter(chunks)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(!dir.path().join("data/artifacts/e/file.bin").exists());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_without_a_token() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let plan = demo_plan("h", &dir.path().join("out"), 1, 1);
    let c = start_coordinator(
        &dir.path().join("data"),
        plan,
        Token::new("t"),
        stop.clone(),
    )
    .await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: "sizespec.v1.ControlService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "sizespec.v1.AgentService",
        "sizespec.v1.ArtifactService",
        "sizespec.v1.ControlService",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
    }
    stop.cancel();
}
