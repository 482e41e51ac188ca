//! kube-runtime wiring: watches, the reconcile pipeline, status, events.
//!
//! One reconcile reads top to bottom like DESIGN.md's lifecycle:
//! [`observe`] (reads from the watch caches) → [`crate::spec`] and [`crate::mesh`]
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
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Recorder, Reporter as EventReporter};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
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

/// What every reconcile shares.
pub struct Context {
    pub config: AgentConfig,
    pub client: Client,
    pub prometheus: PrometheusApi,
    pub recorder: Recorder,
    pub deployments: Store<Deployment>,
    pub virtual_services: Store<VirtualService>,
    pub destination_rules: Store<DestinationRule>,
    /// The agent's own metrics (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// When the gates of each Service's current step were last evaluated. Memory only:
    /// see [`crate::plan::Observed::last_check_at`].
    pub last_checks: Mutex<HashMap<String, Timestamp>>,
}

/// Runs the agent's controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: AgentConfig,
    prometheus: PrometheusApi,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = config.namespace.clone();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let watch = watcher::Config::default();

    let (deployments, deployments_writer) = reflector::store();
    let (virtual_services, vs_writer) = reflector::store();
    let (destination_rules, dr_writer) = reflector::store();
    let deployment_events = reflector(
        deployments_writer,
        watcher(
            Api::<Deployment>::namespaced(client.clone(), &ns),
            watch.clone(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let vs_events = reflector(
        vs_writer,
        watcher(
            Api::<VirtualService>::namespaced(client.clone(), &ns),
            watch.clone(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let dr_events = reflector(
        dr_writer,
        watcher(
            Api::<DestinationRule>::namespaced(client.clone(), &ns),
            watch.clone(),
        ),
    )
    .default_backoff()
    .touched_objects();

    let recorder = Recorder::new(
        client.clone(),
        EventReporter {
            controller: "weir".into(),
            instance: Some(config.instance.clone()),
        },
    );
    let caches = (
        deployments.clone(),
        virtual_services.clone(),
        destination_rules.clone(),
    );
    let context = Arc::new(Context {
        metrics: telemetry.metrics,
        config,
        client,
        prometheus,
        recorder,
        deployments,
        virtual_services,
        destination_rules,
        last_checks: Mutex::new(HashMap::new()),
    });

    let controller = Controller::new(services, watch);
    let store = controller.store();
    tokio::spawn(ready_when_synced(
        store.clone(),
        caches,
        telemetry.readiness,
    ));
    let (s1, s2, s3) = (store.clone(), store.clone(), store);
    controller
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

/// Reports the agent ready once every watch cache holds its first full list.
async fn ready_when_synced(
    services: Store<Service>,
    (deployments, virtual_services, destination_rules): (
        Store<Deployment>,
        Store<VirtualService>,
        Store<DestinationRule>,
    ),
    readiness: Readiness,
) {
    let synced = tokio::try_join!(
        services.wait_until_ready(),
        deployments.wait_until_ready(),
        virtual_services.wait_until_ready(),
        destination_rules.wait_until_ready(),
    );
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
