//! Notifications of transitions, to a generic JSON webhook and to Slack.
//!
//! The agent emits a Kubernetes Event for every transition; the transitions a team must
//! hear about (see [`Kind`]) are also sent to the agent's sinks. [`notification`] makes
//! one from the Event and the status written with it (pure); the controller hands it to
//! [`Notifier::publish`], which queues it for each sink the Service's `weir.dev/notify`
//! names and returns at once. A task per sink drains its queue, delivering each
//! notification at least once, with retries (see [`Retries`]). A reconcile never waits
//! on a sink: a full queue drops the new notification, and every outcome is counted in
//! `weir_notifications_total{sink,outcome}`.

mod deliver;
mod message;
mod payload;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use deliver::{DeliveryError, Endpoint, Retries};
pub use message::{Kind, Notification, SCHEMA, Severity, StepPosition, notification};
pub use payload::{slack, webhook};

use crate::server::{Delivery, Metrics};
use crate::spec::Sink;

/// Notifications a sink's queue holds while it is slow or down; one more is dropped.
pub const QUEUE_CAPACITY: usize = 256;

/// The longest one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where notifications go (from the agent's `--notify-*` flags).
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    /// The file holding the generic webhook's URL.
    pub webhook_url_file: Option<PathBuf>,
    /// The file holding the Slack incoming webhook's URL.
    pub slack_url_file: Option<PathBuf>,
    /// A link in every notification; see [`Link`].
    pub link: Option<Link>,
    pub retries: Retries,
    /// Notifications each sink's queue holds.
    pub queue_capacity: usize,
}

impl Default for NotifyConfig {
    /// No sinks.
    fn default() -> Self {
        NotifyConfig {
            webhook_url_file: None,
            slack_url_file: None,
            link: None,
            retries: Retries::default(),
            queue_capacity: QUEUE_CAPACITY,
        }
    }
}

impl NotifyConfig {
    /// The sinks configured, with their URL files.
    fn endpoints(&self) -> Vec<Endpoint> {
        [
            (Sink::Webhook, &self.webhook_url_file),
            (Sink::Slack, &self.slack_url_file),
        ]
        .into_iter()
        .filter_map(|(sink, file)| file.clone().map(|url_file| Endpoint { sink, url_file }))
        .collect()
    }
}

/// Why the notification flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--notify-{sink}-url-file: {source}", sink = .sink.name())]
    UrlFile { sink: Sink, source: DeliveryError },
    #[error(
        "--notify-link {template:?} is not an http(s) URL ({problem}); write one, with {{namespace}} and {{service}} where the Service's go"
    )]
    Link { template: String, problem: String },
    #[error("cannot set up the HTTP client for notifications: {0}")]
    HttpClient(reqwest::Error),
}

/// A link added to every notification, e.g. to the Grafana dashboard:
/// `https://grafana.example/d/weir-rollouts/weir?var-namespace={namespace}&var-service={service}`.
/// `{namespace}` and `{service}` are replaced with the Service's (DNS labels, which
/// need no escaping anywhere in a URL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link(String);

impl Link {
    /// Checks that `template` makes an http(s) URL.
    pub fn parse(template: &str) -> Result<Link, ConfigError> {
        let link = Link(template.trim().to_owned());
        let problem = |problem: String| ConfigError::Link {
            template: template.to_owned(),
            problem,
        };
        let url =
            Url::parse(&link.render("namespace", "service")).map_err(|e| problem(e.to_string()))?;
        match url.scheme() {
            "http" | "https" => Ok(link),
            other => Err(problem(format!("its scheme is {other}"))),
        }
    }

    /// The link for one Service.
    pub fn render(&self, namespace: &str, service: &str) -> String {
        self.0
            .replace("{namespace}", namespace)
            .replace("{service}", service)
    }
}

/// Hands notifications to the sinks' queues. Cheap to clone; a default one has no
/// sinks and publishes nothing.
#[derive(Clone, Default)]
pub struct Notifier {
    queues: Vec<(Sink, mpsc::Sender<Notification>)>,
    link: Option<Link>,
    metrics: Arc<Metrics>,
}

/// The sinks' delivery tasks, to let them finish at shutdown.
pub struct Deliveries(Vec<JoinHandle<()>>);

impl Notifier {
    /// Checks every configured sink's URL file and starts a delivery task per sink.
    /// Call from within the Tokio runtime.
    pub fn start(
        config: &NotifyConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Notifier, Deliveries), ConfigError> {
        let endpoints = config.endpoints();
        for endpoint in &endpoints {
            endpoint.url().map_err(|source| ConfigError::UrlFile {
                sink: endpoint.sink,
                source,
            })?;
        }
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .map_err(ConfigError::HttpClient)?;
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for endpoint in endpoints {
            info!(sink = endpoint.sink.name(), url_file = %endpoint.url_file.display(), "notifications on");
            metrics.notification_sink(endpoint.sink);
            let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
            queues.push((endpoint.sink, sender));
            tasks.push(tokio::spawn(deliver::drain(
                endpoint,
                client.clone(),
                config.retries,
                receiver,
                metrics.clone(),
            )));
        }
        let notifier = Notifier {
            queues,
            link: config.link.clone(),
            metrics,
        };
        Ok((notifier, Deliveries(tasks)))
    }

    /// Queues `notification` for each of `sinks` that the agent has, and returns at
    /// once: a sink whose queue is full loses it (counted as `dropped`).
    pub fn publish(&self, sinks: &[Sink], mut notification: Notification) {
        if let Some(link) = &self.link {
            notification.link = Some(link.render(&notification.namespace, &notification.service));
        }
        for (sink, queue) in self.queues.iter().filter(|(s, _)| sinks.contains(s)) {
            match queue.try_send(notification.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                    warn!(
                        sink = sink.name(), service = %notification.service,
                        kind = ?notification.kind, "notification dropped: the sink's queue is full"
                    );
                    self.metrics.notification(*sink, Delivery::Dropped);
                }
            }
        }
    }
}

impl Deliveries {
    /// Waits up to `grace` for the queues to be delivered, once every [`Notifier`] is
    /// gone (the controller stopped); what is left after that is not sent.
    pub async fn finish(self, grace: Duration) {
        let mut tasks = self.0;
        let all = futures::future::join_all(tasks.iter_mut());
        if tokio::time::timeout(grace, all).await.is_err() {
            warn!(
                ?grace,
                "notifications still queued at shutdown were not sent"
            );
            for task in tasks {
                task.abort();
            }
        }
    }
}
