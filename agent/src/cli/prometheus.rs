//! Where the gates' metrics are: the Prometheus (or Mimir) flags that `weir check` takes,
//! the same, with the same environment variables, as `weir agent`'s.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use weir_analysis::{BasicAuth, PrometheusApi, PrometheusConfig, Reporter};

use super::agent::Mode;

/// The Prometheus or Mimir the gates read.
#[derive(Debug, Args)]
pub struct PrometheusArgs {
    /// Base URL of the Prometheus HTTP API, or of Mimir's (`http://mimir/prometheus`).
    #[arg(long, env = "WEIR_PROMETHEUS_URL")]
    pub prometheus_url: String,
    /// Mimir tenant, sent as `X-Scope-OrgID`.
    #[arg(long, env = "WEIR_PROMETHEUS_TENANT")]
    pub prometheus_tenant: Option<String>,
    /// File holding a bearer token for Prometheus/Mimir.
    #[arg(long, env = "WEIR_PROMETHEUS_BEARER_TOKEN_FILE")]
    pub prometheus_bearer_token_file: Option<PathBuf>,
    /// Basic auth user for Prometheus/Mimir (the password comes from
    /// WEIR_PROMETHEUS_PASSWORD).
    #[arg(long, env = "WEIR_PROMETHEUS_USERNAME")]
    pub prometheus_username: Option<String>,
    #[arg(long, env = "WEIR_PROMETHEUS_PASSWORD", hide = true)]
    pub prometheus_password: Option<String>,
    /// PEM file of CA certificates to trust for Prometheus/Mimir.
    #[arg(long, env = "WEIR_PROMETHEUS_CA_FILE")]
    pub prometheus_ca_file: Option<PathBuf>,
    /// Timeout of one query attempt.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub query_timeout: Duration,
    /// Prometheus's scrape interval: the window is never shorter than four of them.
    #[arg(long, default_value = "15s", value_parser = super::parse_duration)]
    pub scrape_interval: Duration,
    /// Istio data plane mode: `sidecar` reads reporter="destination", `ambient`
    /// reads reporter="waypoint".
    #[arg(long, value_enum, default_value_t = Mode::Sidecar)]
    pub mode: Mode,
}

impl PrometheusArgs {
    /// The client these flags describe.
    pub fn api(&self) -> anyhow::Result<PrometheusApi> {
        let basic_auth = match (&self.prometheus_username, &self.prometheus_password) {
            (Some(username), Some(password)) => Some(BasicAuth {
                username: username.clone(),
                password: password.clone(),
            }),
            (None, None) => None,
            _ => anyhow::bail!(
                "basic auth needs both WEIR_PROMETHEUS_USERNAME and WEIR_PROMETHEUS_PASSWORD"
            ),
        };
        PrometheusApi::new(&PrometheusConfig {
            url: self.prometheus_url.clone(),
            tenant: self.prometheus_tenant.clone(),
            bearer_token_file: self.prometheus_bearer_token_file.clone(),
            basic_auth,
            ca_file: self.prometheus_ca_file.clone(),
            query_timeout: self.query_timeout,
            check_timeout: (self.query_timeout * 3).max(Duration::from_secs(10)),
        })
        .with_context(|| format!("--prometheus-url {}", self.prometheus_url))
    }

    /// Whose reports the gates read.
    pub fn reporter(&self) -> Reporter {
        match self.mode {
            Mode::Sidecar => Reporter::Destination,
            Mode::Ambient => Reporter::Waypoint,
        }
    }
}
