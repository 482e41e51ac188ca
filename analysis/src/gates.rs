//! The built-in SLO gates of a rollout.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which Envoy reports the request in Istio's standard metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    /// The server-side sidecar (`reporter="destination"`): sidecar mode.
    Destination,
    /// The waypoint proxy (`reporter="waypoint"`): ambient mode.
    Waypoint,
}

impl Reporter {
    /// The value of the `reporter` label in Istio's metrics.
    pub fn label(self) -> &'static str {
        match self {
            Reporter::Destination => "destination",
            Reporter::Waypoint => "waypoint",
        }
    }
}

/// The limits a canary must meet at every check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    /// Highest share of 5xx responses, as a fraction (0.01 = 1%).
    pub max_error_rate: f64,
    /// Highest latency at `latency_quantile`.
    #[serde(with = "humantime_millis")]
    pub max_latency: Duration,
    /// The quantile the latency gate reads, in (0, 1).
    pub latency_quantile: f64,
    /// Canary requests a check needs before it can pass.
    pub min_requests: u64,
}

mod humantime_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
