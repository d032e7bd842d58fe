//! The live experiment page over plain HTTP/1.1 (read-only, no token: bind it to localhost or
//! put it behind your own proxy): `/` the page, `/api/state` its JSON, `/report/...` the report,
//! `/healthz` a plain-text liveness answer for probes (kubelet cannot send gRPC health checks over
//! TLS, so with TLS on this is the coordinator's only probe-able endpoint).
use crate::state::{Command, StateHandle};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// `report.html` or `plots/<name>.{png,svg}` only: nothing else of the output folder is served.
fn report_file(rel: &str) -> Option<(&str, &'static str)> {
    let ok_name = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && !n.starts_with('.')
    };
    match rel.split_once('/') {
        None if rel == "report.html" => Some((rel, "text/html; charset=utf-8")),
        Some(("plots", name)) if ok_name(name) && name.ends_with(".png") => {
            Some((rel, "image/png"))
        }
        Some(("plots", name)) if ok_name(name) && name.ends_with(".svg") => {
            Some((rel, "image/svg+xml"))
        }
        _ => None,
    }
}

async fn handle(
    state: StateHandle,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != hyper::Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only",
        ));
    }
    let path = req.uri().path().to_string();
    let Ok((live, dir)) = state.ask(|reply| Command::Live { reply }).await else {
        return Ok(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "shutting down",
        ));
    };
    Ok(match path.as_str() {
        // Reached only when the state owner answered: a live coordinator, not just an open port.
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok"),
        "/" | "/index.html" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::report::live::LIVE_PAGE,
        ),
        "/api/state" => reply(
            StatusCode::OK,
            "application/json",
            crate::report::live::state_json(&live),
        ),
        p => match (p.strip_prefix("/report/").and_then(report_file), dir) {
            (Some((rel, ct)), Some(dir)) => match tokio::fs::read(dir.join(rel)).await {
                Ok(bytes) => reply(StatusCode::OK, ct, bytes),
                Err(_) => reply(StatusCode::NOT_FOUND, "text/plain", "not written yet"),
            },
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found"),
        },
    })
}

/// Serves the page until `shutdown`.
pub async fn serve_live(listener: TcpListener, state: StateHandle, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "live page at http://{addr}/");
    }
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "live page: accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(error = %e, "live page connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_report_files_are_served() {
        use super::report_file;
        assert!(report_file("report.html").is_some());
        assert!(report_file("plots/accuracy.png").is_some());
        assert!(report_file("plots/curves.svg").is_some());
        for bad in [
            "../results.json",
            "plots/../../x.png",
            "results.json",
            "plots/.hidden.png",
            ".sizespec/plan.json",
            "plots/a/b.png",
        ] {
            assert!(report_file(bad).is_none(), "{bad}");
        }
    }
}
