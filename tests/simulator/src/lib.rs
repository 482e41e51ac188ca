//! A traffic simulator that stands in for an Istio mesh's data plane in weir's test bed.
//!
//! There are no pods and no sidecars in the test bed, so nothing would ever report
//! `istio_requests_total`. The simulator reads the live routing configuration of one
//! namespace from the API server and emits the metrics the mesh would emit if real
//! clients sent traffic through it:
//!
//! - [`objects`]: VirtualServices, Gateway API HTTPRoutes, DestinationRules, Services
//!   and Deployments → a [`mesh::Mesh`] snapshot (pure);
//! - [`mesh`]: which versions each HTTP route (or HTTPRoute rule) sends requests to, and
//!   at what rate (pure);
//! - [`annotations`]: the `sim.weir.dev/*` annotations that configure a version's
//!   error rate and latency and a Service's request rate (pure);
//! - [`traffic`]: deterministic apportioning of requests, errors and latencies (pure);
//! - [`Simulator`]: the watches, the tick loop and the `/metrics` endpoint.
//!
//! Requests are split by exact apportioning rather than at random, so a route at 80/20
//! sends exactly one request in five to the second destination, and a version with a 10%
//! error rate fails exactly one request in ten. Tests can then hold weir's decisions to
//! tight tolerances.

pub mod annotations;
pub mod mesh;
mod metrics;
pub mod objects;
mod simulator;
pub mod traffic;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

pub use simulator::{Error, Simulator};

/// Which Istio component the simulated metrics claim to come from.
///
/// Sidecar deployments report on the destination side (`reporter="destination"`);
/// ambient mode reports from the waypoint proxy (`reporter="waypoint"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// `reporter="destination"`, as sidecars report.
    #[default]
    Destination,
    /// `reporter="waypoint"`, as an ambient waypoint reports.
    Waypoint,
}

impl Reporter {
    /// The value of the `reporter` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Destination => "destination",
            Reporter::Waypoint => "waypoint",
        }
    }
}

impl fmt::Display for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reporter name other than `destination` or `waypoint`.
#[derive(Debug, thiserror::Error)]
#[error("unknown reporter {0:?}: expected \"destination\" or \"waypoint\"")]
pub struct UnknownReporter(pub String);

impl FromStr for Reporter {
    type Err = UnknownReporter;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "destination" => Ok(Reporter::Destination),
            "waypoint" => Ok(Reporter::Waypoint),
            other => Err(UnknownReporter(other.to_owned())),
        }
    }
}

/// How a [`Simulator`] behaves.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// The one namespace whose routes are simulated.
    pub namespace: String,
    /// The `reporter` label on every series.
    pub reporter: Reporter,
    /// Requests per second per HTTP route, unless the route's Service overrides it
    /// with [`annotations::RPS`].
    pub default_rps: f64,
    /// Where `/metrics` is served; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How often requests are generated.
    pub tick: Duration,
    /// `Some(seed)`: the noisy mode, reproducible from the seed; `None`: exact
    /// apportioning.
    pub noise: Option<u64>,
}

impl SimulatorConfig {
    /// A configuration for `namespace` with the defaults: reporter `destination`, 50
    /// requests per second per route, metrics on a free
    /// loopback port, a 100 ms tick, exact apportioning.
    pub fn new(namespace: impl Into<String>) -> Self {
        SimulatorConfig {
            namespace: namespace.into(),
            reporter: Reporter::Destination,
            default_rps: 50.0,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tick: Duration::from_millis(100),
            noise: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporter_round_trips_through_its_label_value() {
        for reporter in [Reporter::Destination, Reporter::Waypoint] {
            assert_eq!(reporter.as_str().parse::<Reporter>().unwrap(), reporter);
        }
        assert!("sidecar".parse::<Reporter>().is_err());
    }
}
