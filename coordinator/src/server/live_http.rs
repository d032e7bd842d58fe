//! The live experiment page over plain HTTP/1.1 (read-only, unauthenticated: bind it to loopback
//! or put it behind your own proxy): `/` the page, `/api/state` its JSON, `/report/...` the report,
//! `/healthz` a plain-text liveness answer for probes (kubelet cannot send gRPC health checks over
//! TLS, so with TLS on this is the coordinator's only probe-able endpoint), `/metrics` the
//! Prometheus metrics (`super::metrics`).
//!
//! Every request but `/healthz` must name an allowed `Host` ([`AllowedHosts`]), so a web page
//! whose own name an attacker points at this address (DNS rebinding) cannot read the experiment.
//! `/healthz` answers any Host: probes send the pod's IP, and "ok" tells nobody anything.
//! `/metrics` names experiments, tasks and agents, so it keeps the Host check: Prometheus scrapes
//! a pod's or host's `IP:port`, which names the address the request arrives on and is answered;
//! a scrape through a DNS name needs that name in `--allowed-host`.
use crate::state::{Command, StateHandle};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
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

/// The `Host` names the live page answers: `localhost`, loopback addresses (`127.0.0.1`, `[::1]`),
/// the IP address a request arrived on, and names added here (`--allowed-host`, e.g. a reverse
/// proxy's). Any port: an SSH tunnel or `kubectl port-forward` may use another local port, and
/// DNS rebinding is defeated by the name alone (the attacker's page names its own domain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    names: Vec<String>,
}

/// A `Host` value split into its lowercase name (IPv6 without brackets, no trailing dot) and port.
fn split_host(host: &str) -> Option<(String, Option<u16>)> {
    let host = host.trim();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        match after {
            "" => (name, None),
            p => (name, Some(p.strip_prefix(':')?)),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if !name.contains(':') => (name, Some(port)),
            Some(_) => return None,
            None => (host, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty()).then_some((name, port))
}

impl AllowedHosts {
    /// Host names (or `host:port`, whose port is ignored) from `--allowed-host`; each must be a
    /// bare name or address, not a URL.
    pub fn new(names: &[String]) -> Result<AllowedHosts, String> {
        let mut out = Vec::new();
        for n in names {
            let bad = n.contains('/') || n.contains('@') || n.chars().any(char::is_whitespace);
            match split_host(n) {
                Some((name, _)) if !bad => out.push(name),
                _ => {
                    return Err(format!(
                        "--allowed-host `{n}`: expected a host name or address (e.g. \
                         sizespec.example.org or 10.0.0.5), not a URL"
                    ));
                }
            }
        }
        Ok(AllowedHosts { names: out })
    }

    /// Whether a request that arrived on `local` naming `host` is answered.
    pub fn allows(&self, host: &str, local: SocketAddr) -> bool {
        let Some((name, _port)) = split_host(host) else {
            return false;
        };
        if self.names.contains(&name) || name == "localhost" {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip.to_canonical() == local.ip().to_canonical(),
            Err(_) => false,
        }
    }
}

/// The `Host` a request names: the request target's authority, else the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle(
    state: StateHandle,
    hosts: std::sync::Arc<AllowedHosts>,
    local: SocketAddr,
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
    if path != "/healthz" {
        match request_host(&req) {
            Some(h) if hosts.allows(&h, local) => {}
            Some(h) => {
                tracing::debug!(host = %h, "live page: request for another host refused");
                return Ok(reply(
                    StatusCode::MISDIRECTED_REQUEST,
                    "text/plain",
                    format!(
                        "this live page does not answer for Host `{h}`: use http://localhost:{}/ \
                         (e.g. through an SSH tunnel or port-forward), or start the coordinator \
                         with --allowed-host NAME for the name you use",
                        local.port()
                    ),
                ));
            }
            None => {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "a Host header is required",
                ));
            }
        }
    }
    let down = || {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "shutting down",
        )
    };
    if path == "/metrics" {
        let Ok(snapshot) = state.ask(|reply| Command::Metrics { reply }).await else {
            return Ok(down());
        };
        let text = super::metrics::encode_snapshot(&snapshot);
        return Ok(reply(StatusCode::OK, super::metrics::CONTENT_TYPE, text));
    }
    let Ok((live, dir)) = state.ask(|reply| Command::Live { reply }).await else {
        return Ok(down());
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

/// Serves the page until `shutdown`, answering only the built-in local names.
pub async fn serve_live(listener: TcpListener, state: StateHandle, shutdown: CancellationToken) {
    serve_live_allowing(listener, state, AllowedHosts::default(), shutdown).await;
}

/// Serves the page until `shutdown`, answering the local names and `hosts`.
pub async fn serve_live_allowing(
    listener: TcpListener,
    state: StateHandle,
    hosts: AllowedHosts,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "live page at http://{addr}/ (unauthenticated)");
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "the live page has no authentication and listens beyond loopback: anyone who \
                 reaches this address can read the experiment's progress and report"
            );
        }
    }
    let hosts = std::sync::Arc::new(hosts);
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
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let (state, hosts) = (state.clone(), hosts.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                handle(state.clone(), hosts.clone(), local, req)
            });
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
    use super::AllowedHosts;
    use std::net::SocketAddr;

    #[test]
    fn only_local_names_the_arrival_address_and_the_allow_list_are_answered() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let pod: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        let none = AllowedHosts::default();
        for ok in [
            "localhost:8080",
            "localhost",
            "LOCALHOST.:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::1]",
            "localhost:18080",
            "127.0.0.1:1",
        ] {
            assert!(
                none.allows(ok, lo),
                "{ok}: any port (a tunnel may use another)"
            );
        }
        assert!(
            none.allows("10.1.2.3:8080", pod),
            "the address it arrived on"
        );
        assert!(none.allows("localhost:8080", v6));
        for bad in [
            "evil.example:8080",
            "evil.example",
            "10.1.2.4:8080",
            "localhost.evil.example:8080",
            "",
            "[::1",
            "a:b:c",
            "localhost:99999",
        ] {
            assert!(!none.allows(bad, lo), "{bad:?}");
        }
        assert!(!none.allows("10.1.2.3:8080", lo), "not the arrival address");
        let proxy =
            AllowedHosts::new(&["Sizespec.Example.org".into(), "10.9.9.9:1".into()]).unwrap();
        assert!(proxy.allows("sizespec.example.org", lo));
        assert!(proxy.allows("sizespec.example.org:443", lo), "any port");
        assert!(proxy.allows("10.9.9.9:8080", lo));
        assert!(!proxy.allows("example.org", lo));
        for url in ["http://x.example", "x.example/path", "a b", "user@x"] {
            let err = AllowedHosts::new(&[url.into()]).unwrap_err();
            assert!(err.contains("--allowed-host"), "{err}");
        }
    }

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
