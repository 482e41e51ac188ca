//! Sending one notification to one sink: at least once, retried with backoff, never
//! longer than its retries allow.
//!
//! A sink's URL is a secret: it is read from its file at every attempt (so a rotated
//! Secret is used as soon as the kubelet updates the file) and never logged; errors
//! name the file instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::{StatusCode, Url, header};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::message::{Notification, first_line};
use super::payload;
use crate::cli::error_chain;
use crate::server::{Delivery, Metrics};
use crate::spec::Sink;

/// How a sink is retried: exponential backoff with jitter, from `first_delay` up to
/// `max_delay` between attempts, `attempts` in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retries {
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub attempts: usize,
}

impl Default for Retries {
    /// Eight attempts over about two to four minutes: a receiver that restarts or a
    /// proxy that blips is waited for; one that is down for longer costs a counter.
    fn default() -> Self {
        Retries {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            attempts: 8,
        }
    }
}

impl Retries {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.attempts.saturating_sub(1))
            .with_jitter()
    }
}

/// Why a notification was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Retried: a Secret's file can be missing for a moment while it is updated.
    #[error("cannot read the URL from {path}: {source}")]
    UrlFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not retried: the file must change.
    #[error("{path} does not hold an http(s) URL ({problem}); put the sink's URL in it")]
    InvalidUrl { path: PathBuf, problem: String },
    /// Retried.
    #[error("the sink could not be reached: {0}")]
    Unreachable(String),
    /// HTTP 5xx, 408 or 429. Retried, after `Retry-After` when the sink says so.
    #[error("the sink is unavailable (HTTP {status}): {body}")]
    Unavailable {
        status: StatusCode,
        body: String,
        retry_after: Option<Duration>,
    },
    /// Any other HTTP error. Not retried: the URL (or the receiver) must change.
    #[error("the sink refused the notification (HTTP {status}): {body}; check its URL")]
    Refused { status: StatusCode, body: String },
}

impl DeliveryError {
    fn is_transient(&self) -> bool {
        matches!(
            self,
            DeliveryError::UrlFile { .. }
                | DeliveryError::Unreachable(_)
                | DeliveryError::Unavailable { .. }
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One configured sink: which it is, and the file its URL is in.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub sink: Sink,
    pub url_file: PathBuf,
}

impl Endpoint {
    /// The sink's URL, read from its file now.
    pub fn url(&self) -> Result<Url, DeliveryError> {
        read_url(&self.url_file)
    }

    /// The body this sink is sent for `notification`.
    fn body(&self, notification: &Notification) -> Value {
        match self.sink {
            Sink::Webhook => payload::webhook(notification),
            Sink::Slack => payload::slack(notification),
        }
    }

    /// Delivers `notification`, retrying transient failures as `retries` allows.
    pub async fn deliver(
        &self,
        client: &reqwest::Client,
        notification: &Notification,
        retries: Retries,
    ) -> Result<(), DeliveryError> {
        let body =
            serde_json::to_vec(&self.body(notification)).expect("a JSON value serializes to bytes");
        let max_delay = retries.max_delay;
        (|| self.post(client, &body))
            .retry(retries.backoff())
            .when(DeliveryError::is_transient)
            .adjust(|error, delay| {
                // A sink that asks for a pause gets it, within the policy's bound.
                delay.map(|delay| error.retry_after().map_or(delay, |d| d.min(max_delay)))
            })
            .notify(|error, delay| {
                debug!(sink = self.sink.name(), %error, ?delay, "retrying a notification");
            })
            .await
    }

    async fn post(&self, client: &reqwest::Client, body: &[u8]) -> Result<(), DeliveryError> {
        let url = self.url()?;
        let response = client
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            // The URL is a secret: it stays out of the message.
            .map_err(|e| DeliveryError::Unreachable(error_chain(&e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = first_line(&response.text().await.unwrap_or_default(), 200);
        let transient = status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT;
        Err(if transient {
            DeliveryError::Unavailable {
                status,
                body,
                retry_after,
            }
        } else {
            DeliveryError::Refused { status, body }
        })
    }
}

/// Reads an http(s) URL from `path` (surrounding whitespace, such as the newline of
/// `echo url > file`, is ignored).
fn read_url(path: &Path) -> Result<Url, DeliveryError> {
    let text = std::fs::read_to_string(path).map_err(|source| DeliveryError::UrlFile {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |problem: String| DeliveryError::InvalidUrl {
        path: path.to_owned(),
        problem,
    };
    let url = Url::parse(text.trim()).map_err(|e| invalid(e.to_string()))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        "http" | "https" => Err(invalid("no host".into())),
        other => Err(invalid(format!("its scheme is {other}"))),
    }
}

/// Delivers what `queue` holds to `endpoint`, one notification at a time (so that a
/// sink sees a rollout's transitions in order), until the queue closes.
pub async fn drain(
    endpoint: Endpoint,
    client: reqwest::Client,
    retries: Retries,
    mut queue: mpsc::Receiver<Notification>,
    metrics: Arc<Metrics>,
) {
    while let Some(notification) = queue.recv().await {
        let outcome = match endpoint.deliver(&client, &notification, retries).await {
            Ok(()) => {
                debug!(
                    sink = endpoint.sink.name(), service = %notification.service,
                    kind = ?notification.kind, "notification sent"
                );
                Delivery::Sent
            }
            Err(error) => {
                warn!(
                    sink = endpoint.sink.name(), url_file = %endpoint.url_file.display(),
                    service = %notification.service, kind = ?notification.kind, %error,
                    "notification not delivered"
                );
                Delivery::Failed
            }
        };
        metrics.notification(endpoint.sink, outcome);
    }
}
