//! The agent's HTTP endpoint (`--metrics-addr`):
//!
//! | path | answer |
//! |---|---|
//! | `/healthz` | 200 while the process serves (liveness) |
//! | `/readyz` | 200 when synced and the cluster state is accepted, else 503 with why (readiness) |
//! | `/status` | the agent's status as JSON |
//! | `/metrics` | Prometheus text format ([`crate::metrics`]) |
use std::{convert::Infallible, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::Agent;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts")
}

async fn route(agent: &Agent, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            let s = agent.status();
            if s.ready() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                let why = s.detail().unwrap_or_default();
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{why}\n"),
                )
            }
        }
        "/status" => {
            let body = serde_json::json!({
                "node": agent.node().name,
                "mode": agent.mode(),
                "ready": agent.status().ready(),
                "status": agent.status(),
            });
            reply(StatusCode::OK, "application/json", format!("{body}\n"))
        }
        "/metrics" => match crate::metrics::render(agent) {
            Ok(text) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            ),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves until the process ends.
pub async fn serve(agent: Arc<Agent>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let agent = agent.clone();
                async move { Ok::<_, Infallible>(route(&agent, &req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
