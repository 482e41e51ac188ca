//! kube-runtime wiring: watches, the reconcile pipeline, status, events.
//!
//! One reconcile reads top to bottom like DESIGN.md's lifecycle:
//! [`observe`] (reads the Service, VirtualServices and DestinationRules fresh and the
//! Deployments from the watch cache) → [`crate::spec`] and [`crate::mesh`]
//! (validate, pure) → the gates (Prometheus, only when a check is due) →
//! [`crate::plan`] (pure) → [`apply`] (the only writes).

mod apply;
pub mod lease;
mod observe;
mod reconcile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::controller::{self, Action as Requeue, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};
use weir_analysis::{PrometheusApi, Reporter};

use crate::mesh::{DestinationRule, VirtualService};
use crate::server::{Metrics, Readiness, Telemetry};
use crate::spec::{self, Defaults};

pub use reconcile::Error;

/// Everything the agent is configured with (from its flags).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The only namespace the agent reads and writes.
    pub namespace: String,
    /// Defaults for every optional annotation.
    pub defaults: Defaults,
    /// Whose reports the gates read: sidecars or waypoints.
    pub reporter: Reporter,
    /// Prometheus's scrape interval; a check's window is never shorter than four.
    pub scrape_interval: Duration,
    /// Plan and log, but write nothing.
    pub dry_run: bool,
    /// Names this agent in Events (`reportingInstance`).
    pub instance: String,
}

/// Reconciles that may run at once. Bounds the agent's memory (each holds a fresh read
/// of the Service, the namespace's VirtualServices and DestinationRules, and a
/// Prometheus response) and its connections, whatever the number of Services; a
/// reconcile takes milliseconds, so four keep up with hundreds of Services.
const RECONCILE_CONCURRENCY: u16 = 4;

/// What every reconcile shares.
pub struct Context {
    pub config: AgentConfig,
    pub client: Client,
    pub prometheus: PrometheusApi,
    /// The namespace's Deployments, trimmed by [`trim`].
    pub deployments: Store<Deployment>,
    /// The agent's own metrics (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// When the gates of each Service's current step were last evaluated. Memory only:
    /// see [`crate::plan::Observed::last_check_at`].
    pub last_checks: Mutex<HashMap<String, Timestamp>>,
}

/// Runs the agent's controller until `shutdown` resolves.
///
/// Services and Deployments are cached (trimmed); VirtualServices and DestinationRules
/// are only watched, to wake the Services they concern: a reconcile reads them fresh,
/// because it writes them.
pub async fn run(
    client: Client,
    config: AgentConfig,
    prometheus: PrometheusApi,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = config.namespace.clone();
    let watch = watcher::Config::default();

    let (services, services_writer) = reflector::store();
    let service_events = watcher(
        Api::<Service>::namespaced(client.clone(), &ns),
        watch.clone(),
    )
    .modify(trim)
    .default_backoff()
    .reflect(services_writer)
    .applied_objects();
    let (deployments, deployments_writer) = reflector::store();
    let deployment_events = watcher(
        Api::<Deployment>::namespaced(client.clone(), &ns),
        watch.clone(),
    )
    .modify(trim)
    .default_backoff()
    .reflect(deployments_writer)
    .touched_objects();
    let vs_events = watcher(
        Api::<VirtualService>::namespaced(client.clone(), &ns),
        watch.clone(),
    )
    .default_backoff()
    .touched_objects();
    let dr_events = watcher(
        Api::<DestinationRule>::namespaced(client.clone(), &ns),
        watch.clone(),
    )
    .default_backoff()
    .touched_objects();

    tokio::spawn(ready_when_synced(
        services.clone(),
        deployments.clone(),
        telemetry.readiness,
    ));
    let context = Arc::new(Context {
        metrics: telemetry.metrics,
        config,
        client,
        prometheus,
        deployments,
        last_checks: Mutex::new(HashMap::new()),
    });

    let (s1, s2, s3) = (services.clone(), services.clone(), services.clone());
    Controller::for_stream(service_events, services)
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .watches_stream(deployment_events, move |d| {
            observe::services_selecting(&s1, &d)
        })
        .watches_stream(vs_events, move |vs| observe::services_routed_by(&s2, &vs))
        .watches_stream(dr_events, move |dr| {
            observe::services_with_subsets_in(&s3, &dr)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(service = %object.name, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
    info!("controller stopped");
}

/// Drops what the agent never reads from a cached object: its field-ownership records
/// and `kubectl apply`'s copy of the last applied manifest, together often larger than
/// the rest of the object.
fn trim<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
    object.annotations_mut().remove(LAST_APPLIED);
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Reports the agent ready once both caches hold their first full list.
async fn ready_when_synced(
    services: Store<Service>,
    deployments: Store<Deployment>,
    readiness: Readiness,
) {
    let synced = tokio::try_join!(services.wait_until_ready(), deployments.wait_until_ready());
    if synced.is_ok() {
        readiness.set_ready();
        info!("watch caches synced: ready");
    }
}

/// Whether a Service asks for weir (see [`spec::opted_in`]).
fn opted_in(service: &Service) -> bool {
    spec::opted_in(service.annotations())
}

fn service_ref(service: &Service) -> ObjectRef<Service> {
    ObjectRef::from_obj(service)
}

/// Re-export for tests and the CLI: how a requeue is expressed.
pub type ReconcileAction = Requeue;
