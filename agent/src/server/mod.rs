//! The agent's admin endpoints: `/healthz`, `/readyz` and `/metrics`.
//!
//! - `/healthz`: 200 while the process serves HTTP (liveness).
//! - `/readyz`: 503 until the controller reports its watch caches synced (and, with
//!   leader election, the Lease seen) through [`Readiness`], 200 after.
//! - `/metrics`: [`Metrics`] in the OpenMetrics text format.

mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::task::JoinHandle;

pub use metrics::{CONTENT_TYPE, Delivery, Metrics, outcome_label, phase_label};

/// What `/readyz` waits for: the controller's watch caches hold their first full list,
/// and, with leader election, the elector has looked at the Lease once (a standby is
/// ready too: ready to take over, or a rolling upgrade would wait forever for a new
/// replica that does not lead). Cloned between the tasks that set each condition and
/// the admin server, which reports them.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<Conditions>);

#[derive(Debug)]
struct Conditions {
    caches_synced: AtomicBool,
    lease_seen: AtomicBool,
}

impl Default for Readiness {
    /// Readiness of an agent without leader election.
    fn default() -> Self {
        Readiness::new(false)
    }
}

impl Readiness {
    /// Not ready until the caches sync and, with `leader_election`, the Lease is seen.
    pub fn new(leader_election: bool) -> Self {
        Readiness(Arc::new(Conditions {
            caches_synced: AtomicBool::new(false),
            lease_seen: AtomicBool::new(!leader_election),
        }))
    }

    /// Every watch cache has its first full list.
    pub fn caches_synced(&self) {
        self.0.caches_synced.store(true, Ordering::Release);
    }

    /// The elector has read (or written) the Lease once.
    pub fn lease_seen(&self) {
        self.0.lease_seen.store(true, Ordering::Release);
    }

    /// Whether every condition holds.
    pub fn is_ready(&self) -> bool {
        self.waiting_for().is_empty()
    }

    /// The conditions that do not hold yet, for people.
    pub fn waiting_for(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.0.caches_synced.load(Ordering::Acquire) {
            missing.push("watch caches not synced yet");
        }
        if !self.0.lease_seen.load(Ordering::Acquire) {
            missing.push("the leader-election Lease not read yet");
        }
        missing
    }
}

/// What the controller reports and the admin server serves: cloned into both.
#[derive(Clone, Default)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
}

/// Binds `listen` and serves the admin endpoints in the background.
pub async fn serve(listen: SocketAddr, telemetry: Telemetry) -> anyhow::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {listen}: {e}"))?;
    let app = router(telemetry);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    }))
}

fn router(telemetry: Telemetry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(scrape))
        .with_state(telemetry)
}

async fn ready(State(telemetry): State<Telemetry>) -> impl IntoResponse {
    let missing = telemetry.readiness.waiting_for();
    if missing.is_empty() {
        (StatusCode::OK, "ok".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, missing.join("; "))
    }
}

async fn scrape(State(telemetry): State<Telemetry>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        telemetry.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Phase;

    /// A minimal HTTP/1.1 GET: (status code, content type, body). The agent crate has
    /// no HTTP client of its own.
    async fn get(base: &str, path: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = base.strip_prefix("http://").unwrap();
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_owned();
        (code, content_type, body.to_owned())
    }

    #[test]
    fn with_leader_election_readiness_also_waits_for_the_lease() {
        let readiness = Readiness::new(true);
        readiness.caches_synced();
        assert!(!readiness.is_ready());
        assert_eq!(
            readiness.waiting_for(),
            ["the leader-election Lease not read yet"]
        );
        readiness.lease_seen();
        assert!(readiness.is_ready());
    }

    #[tokio::test]
    async fn readyz_turns_ready_when_told_and_metrics_are_served() {
        let telemetry = Telemetry::default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let server = serve(listen, telemetry.clone()).await.unwrap();
        let base = format!("http://{listen}");

        assert_eq!(get(&base, "/healthz").await.0, 200);
        assert_eq!(get(&base, "/readyz").await.0, 503);
        telemetry.readiness.caches_synced();
        assert_eq!(get(&base, "/readyz").await.0, 200);

        telemetry
            .metrics
            .observe_phase("checkout", Phase::Progressing, 10);
        let (code, content_type, body) = get(&base, "/metrics").await;
        assert_eq!(code, 200);
        assert_eq!(content_type, CONTENT_TYPE);
        assert!(
            body.contains(r#"weir_canary_weight{service="checkout"} 10"#),
            "{body}"
        );
        server.abort();
    }
}
