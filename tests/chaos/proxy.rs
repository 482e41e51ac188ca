//! A proxy in front of Prometheus that the chaos suite turns bad: it passes queries
//! through, answers them with errors, or holds them past the agent's query timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What the proxy does with each query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forwards it to Prometheus.
    Pass = 0,
    /// Answers 503, as an overloaded Prometheus or a proxy in front of it would.
    Errors = 1,
    /// Waits this long before forwarding: past the agent's query timeout.
    Slow = 2,
}

/// How long a slow query is held: past the 2 s query timeout the suite gives the agent.
pub const SLOW: Duration = Duration::from_secs(3);

#[derive(Clone)]
struct Shared {
    upstream: String,
    mode: Arc<AtomicU8>,
    http: reqwest::Client,
}

/// The running proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding to `upstream` (Prometheus's base URL).
    pub async fn start(upstream: String) -> anyhow::Result<FaultProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let shared = Shared {
            upstream,
            mode: mode.clone(),
            http: reqwest::Client::new(),
        };
        let app = Router::new().fallback(forward).with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FaultProxy { addr, mode, task })
    }

    /// The URL to give the agent as `--prometheus-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(shared): State<Shared>, request: Request) -> Response {
    match shared.mode.load(Ordering::SeqCst) {
        m if m == Mode::Errors as u8 => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "chaos: Prometheus is unavailable",
            )
                .into_response();
        }
        m if m == Mode::Slow as u8 => tokio::time::sleep(SLOW).await,
        _ => {}
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 16 << 20).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut upstream = shared
        .http
        .request(parts.method.clone(), format!("{}{path}", shared.upstream))
        .body(body);
    if let Some(content_type) = parts.headers.get("content-type") {
        upstream = upstream.header("content-type", content_type);
    }
    match upstream.send().await {
        Ok(answer) => {
            let status = answer.status();
            let content_type = answer.headers().get("content-type").cloned();
            let bytes = answer.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            if let Some(content_type) = content_type {
                response.headers_mut().insert("content-type", content_type);
            }
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("chaos proxy: {e}")).into_response(),
    }
}
