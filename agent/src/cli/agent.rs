//! `weir agent`: flags → configuration → the controller and the admin server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tracing::info;

use super::prometheus::PrometheusArgs;
use crate::controller::lease::{self, Leadership, LeaseConfig};
use crate::controller::{self, AgentConfig};
use crate::notify::{Link, Notifier, NotifyConfig};
use crate::server;
use crate::spec::{self, Defaults};

/// Flags of `weir agent`. Every annotation default has a flag; the Helm chart sets them.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The namespace to manage (the only one the agent reads or writes).
    #[arg(long, env = "WEIR_NAMESPACE")]
    pub namespace: String,

    /// Where the gates read metrics: the same flags as `weir check`.
    #[command(flatten)]
    pub prometheus: PrometheusArgs,

    #[command(flatten)]
    pub defaults: DefaultArgs,

    #[command(flatten)]
    pub notify: NotifyArgs,

    /// Plan and log every action, but write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// The period of the rounds in which every due check of the namespace is evaluated
    /// together, with a number of Prometheus queries that does not grow with the number
    /// of Services. A check waits for the next round, so this adds at most a round to
    /// every check's (and abort's) latency; its window is rounded to the round (by at
    /// most half of it, and at least to the second). Default: a third of the scrape
    /// interval, within 500ms..=5s.
    #[arg(long, value_parser = super::parse_duration)]
    pub check_round: Option<Duration>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "WEIR_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// This agent's name in Events (defaults to the pod name).
    #[arg(long, env = "POD_NAME", default_value = "weir")]
    pub instance: String,

    /// Run the controller only while holding the Lease `--lease-name` in the namespace
    /// (identity: `--instance`), so that several replicas can run and only one writes.
    #[arg(long)]
    pub leader_election: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "weir")]
    pub lease_name: String,
    /// How long the Lease stays valid after its holder last renewed it; a standby takes
    /// over after that. The holder renews every third of it and stops writing after two
    /// thirds without a renewal.
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub lease_duration: Duration,
}

/// The default of every optional annotation (see docs/annotations.md).
#[derive(Debug, Args)]
pub struct DefaultArgs {
    #[arg(long, default_value = "stable")]
    pub default_stable_subset: String,
    #[arg(long, default_value = "canary")]
    pub default_canary_subset: String,
    #[arg(long, default_value = "version")]
    pub default_version_label: String,
    #[arg(long, default_value = "10,25,50")]
    pub default_steps: String,
    #[arg(long, default_value = "1m")]
    pub default_step_interval: String,
    #[arg(long, default_value = "15s")]
    pub default_check_interval: String,
    #[arg(long, default_value = "1%")]
    pub default_max_error_rate: String,
    #[arg(long, default_value = weir_analysis::gates::SERVER_ERRORS)]
    pub default_error_codes: String,
    #[arg(long, default_value = "500ms")]
    pub default_max_latency: String,
    #[arg(long, default_value = "0.99")]
    pub default_latency_quantile: String,
    /// Default weir.dev/max-slow-share (`5%`). The slow-share gate is on by default
    /// only when this and --default-slow-threshold are both set; empty or absent: off.
    #[arg(long)]
    pub default_max_slow_share: Option<String>,
    /// Default weir.dev/slow-threshold (`250ms`); see --default-max-slow-share.
    #[arg(long)]
    pub default_slow_threshold: Option<String>,
    #[arg(long, default_value = "50")]
    pub default_min_requests: String,
    #[arg(long, default_value = "2")]
    pub default_failure_limit: String,
    #[arg(long, default_value = "10m")]
    pub default_no_data_timeout: String,
    /// Default weir.dev/analysis: `sequential` (decide on evidence) or `threshold`.
    #[arg(long, default_value = "sequential")]
    pub default_analysis: String,
    /// Default weir.dev/tolerance: how much worse than stable a canary may be.
    #[arg(long, default_value = "50%")]
    pub default_tolerance: String,
    /// Default weir.dev/confidence of every decision.
    #[arg(long, default_value = "99%")]
    pub default_confidence: String,
    /// Default weir.dev/decision-timeout: how long a step may wait for evidence.
    #[arg(long, default_value = "2h")]
    pub default_decision_timeout: String,
    /// Default weir.dev/scale-down-delay: how long the superseded version keeps its
    /// replicas after a promotion (`never` keeps them).
    #[arg(long, default_value = "30s")]
    pub default_scale_down_delay: String,
}

/// Where transitions are notified, besides Events (docs/notifications.md).
/// A sink's URL is a secret: it is read from a file (a mounted Secret), at start and
/// again at every delivery, so that a rotated Secret is used without a restart.
#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// File holding the URL of a generic JSON webhook to notify.
    #[arg(long)]
    pub notify_webhook_url_file: Option<PathBuf>,
    /// File holding the URL of a Slack (or Slack-compatible) incoming webhook to notify.
    #[arg(long)]
    pub notify_slack_url_file: Option<PathBuf>,
    /// A link in every notification, such as the Grafana dashboard's URL; `{namespace}`
    /// and `{service}` are replaced with the Service's.
    #[arg(long)]
    pub notify_link: Option<String>,
}

impl NotifyArgs {
    /// The notification configuration these flags describe; the URL files are checked
    /// when the notifier starts.
    pub fn config(&self) -> anyhow::Result<NotifyConfig> {
        Ok(NotifyConfig {
            webhook_url_file: self.notify_webhook_url_file.clone(),
            slack_url_file: self.notify_slack_url_file.clone(),
            link: self.notify_link.as_deref().map(Link::parse).transpose()?,
            ..NotifyConfig::default()
        })
    }
}

/// How long a stopping agent waits for queued notifications to be delivered.
const NOTIFY_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Sidecar,
    Ambient,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl DefaultArgs {
    /// The defaults, parsed by the same functions that parse the annotations, so a
    /// flag accepts exactly what the annotation accepts.
    pub fn parse(&self) -> anyhow::Result<Defaults> {
        let flag = |name: &str, e: spec::InvalidValue| anyhow::anyhow!("--default-{name}: {e}");
        // The slow-share gate is on with both flags and off with neither (empty or absent).
        let max_share = self.default_max_slow_share.as_deref().map(str::trim);
        let threshold = self.default_slow_threshold.as_deref().map(str::trim);
        let max_slow_share = match (
            max_share.filter(|v| !v.is_empty()),
            threshold.filter(|v| !v.is_empty()),
        ) {
            (None, None) => None,
            (Some(max_share), Some(threshold)) => Some(weir_analysis::SlowShare {
                max_share: spec::parse_percent(max_share).map_err(|e| flag("max-slow-share", e))?,
                threshold: spec::parse_latency(threshold).map_err(|e| flag("slow-threshold", e))?,
            }),
            (Some(_), None) => anyhow::bail!(
                "--default-max-slow-share needs --default-slow-threshold: set both to turn the slow-share gate on, or neither"
            ),
            (None, Some(_)) => anyhow::bail!(
                "--default-slow-threshold needs --default-max-slow-share: set both to turn the slow-share gate on, or neither"
            ),
        };
        let gates = weir_analysis::Gates {
            max_error_rate: spec::parse_percent(&self.default_max_error_rate)
                .map_err(|e| flag("max-error-rate", e))?,
            max_latency: spec::parse_latency(&self.default_max_latency)
                .map_err(|e| flag("max-latency", e))?,
            latency_quantile: spec::parse_quantile(&self.default_latency_quantile)
                .map_err(|e| flag("latency-quantile", e))?,
            min_requests: spec::parse_min_requests(&self.default_min_requests)
                .map_err(|e| flag("min-requests", e))?,
            error_codes: spec::parse_error_codes(&self.default_error_codes)
                .map_err(|e| flag("error-codes", e))?,
            max_slow_share,
            rule: spec::parse_rule(&self.default_analysis).map_err(|e| flag("analysis", e))?,
            tolerance: spec::parse_tolerance(&self.default_tolerance)
                .map_err(|e| flag("tolerance", e))?,
            confidence: spec::parse_confidence(&self.default_confidence)
                .map_err(|e| flag("confidence", e))?,
        };
        Ok(Defaults {
            stable_subset: spec::parse_subset_name(&self.default_stable_subset)
                .map_err(|e| flag("stable-subset", e))?,
            canary_subset: spec::parse_subset_name(&self.default_canary_subset)
                .map_err(|e| flag("canary-subset", e))?,
            version_label: spec::parse_label_key(&self.default_version_label)
                .map_err(|e| flag("version-label", e))?,
            steps: spec::parse_steps(&self.default_steps).map_err(|e| flag("steps", e))?,
            step_interval: spec::parse_interval(&self.default_step_interval)
                .map_err(|e| flag("step-interval", e))?,
            check_interval: spec::parse_interval(&self.default_check_interval)
                .map_err(|e| flag("check-interval", e))?,
            gates,
            failure_limit: spec::parse_failure_limit(&self.default_failure_limit)
                .map_err(|e| flag("failure-limit", e))?,
            no_data_timeout: spec::parse_duration(&self.default_no_data_timeout)
                .map_err(|e| flag("no-data-timeout", e))?,
            decision_timeout: spec::parse_interval(&self.default_decision_timeout)
                .map_err(|e| flag("decision-timeout", e))?,
            scale_down_delay: spec::parse_scale_down_delay(&self.default_scale_down_delay)
                .map_err(|e| flag("scale-down-delay", e))?,
        })
    }
}

impl AgentArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        init_logging(self.log_format);
        let defaults = self.defaults.parse()?;
        // Defaults that contradict each other (a no-data timeout shorter than the check
        // interval, say) would make every Service misconfigured: refuse them at start.
        spec::parse("defaults", &Default::default(), &defaults)
            .map_err(|e| anyhow::anyhow!("the --default-* flags contradict each other: {e}"))?;
        let lease = self
            .leader_election
            .then(|| {
                LeaseConfig {
                    namespace: self.namespace.clone(),
                    name: self.lease_name.clone(),
                    holder: self.instance.clone(),
                    duration: self.lease_duration,
                }
                .validated()
            })
            .transpose()?;

        let prometheus = self.prometheus.api()?;
        let telemetry = server::Telemetry {
            readiness: server::Readiness::new(lease.is_some()),
            ..server::Telemetry::default()
        };
        let (notifier, deliveries) =
            Notifier::start(&self.notify.config()?, telemetry.metrics.clone())?;
        let client = kube::Client::try_default()
            .await
            .context("cannot configure a Kubernetes client (in-cluster or KUBECONFIG)")?;
        let config = AgentConfig {
            namespace: self.namespace.clone(),
            defaults,
            reporter: self.prometheus.reporter(),
            scrape_interval: self.prometheus.scrape_interval,
            check_round: self.check_round.unwrap_or_else(|| {
                (self.prometheus.scrape_interval / 3)
                    .clamp(Duration::from_millis(500), Duration::from_secs(5))
            }),
            dry_run: self.dry_run,
            instance: self.instance.clone(),
        };
        info!(namespace = %config.namespace, prometheus = %prometheus.endpoint(), dry_run = config.dry_run, "weir agent starting");

        let admin = server::serve(self.listen, telemetry.clone()).await?;
        let (leadership, elector) = match lease {
            Some(lease) => {
                info!(lease = %lease.name, holder = %lease.holder, "leader election on: caches warm, waiting to lead (only the Lease's holder writes)");
                let (leadership, elector) =
                    lease::elect(client.clone(), lease, telemetry.readiness.clone());
                (leadership, Some(elector))
            }
            None => (Leadership::always(), None),
        };
        controller::run(
            client,
            config,
            prometheus,
            telemetry,
            leadership,
            notifier,
            shutdown_signal(),
        )
        .await;
        deliveries.finish(NOTIFY_GRACE).await;
        if let Some(elector) = elector {
            elector.step_down().await;
        }
        admin.abort();
        Ok(ExitCode::SUCCESS)
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    spec::parse_duration(text).map_err(|e| e.to_string())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("can install a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("shutting down");
}
