//! `weir-simulator`: simulated Istio traffic for one namespace, served as Prometheus
//! metrics. See the library documentation for what it simulates.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use weir_simulator::{Reporter, Simulator, SimulatorConfig};

/// Simulates the traffic an Istio mesh would carry for the routes of one namespace and
/// serves Istio's request metrics for it on /metrics.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The namespace whose VirtualServices, HTTPRoutes, DestinationRules, Services and
    /// Deployments are simulated.
    #[arg(long)]
    namespace: String,
    /// The `reporter` label: `destination` (sidecars) or `waypoint` (ambient).
    #[arg(long, default_value = "destination")]
    reporter: Reporter,
    /// Requests per second per HTTP route, unless its Service sets sim.weir.dev/rps.
    #[arg(long, default_value_t = 50.0)]
    rps: f64,
    /// Where to serve /metrics.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Noisy traffic (Poisson arrivals, random routing, Bernoulli errors, log-normal
    /// latencies), reproducible from this seed; without it, exact apportioning.
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client from KUBECONFIG or the in-cluster config")?;
    let config = SimulatorConfig {
        reporter: args.reporter,
        default_rps: args.rps,
        listen: args.listen,
        noise: args.seed,
        ..SimulatorConfig::new(args.namespace)
    };
    let simulator = Simulator::start(client, config).await?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot handle Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping");
    drop(simulator);
    Ok(())
}
