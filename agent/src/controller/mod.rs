//! kube-runtime wiring: watches, the reconcile pipeline, status, events.
//!
//! One reconcile reads top to bottom like DESIGN.md's lifecycle:
//! [`observe`] (reads the Service and the VirtualServices and DestinationRules that
//! [`routing`] says name it fresh, and the Deployments from the watch cache) → [`validate`] (through [`crate::spec`] and
//! [`crate::mesh`], pure) → the gates (Prometheus, only when a check is due) →
//! [`crate::plan`] (pure) → [`apply`] (the only writes).

mod apply;
pub mod checks;
pub mod lease;
mod observe;
mod reconcile;
pub mod routing;
pub mod template;
pub mod validate;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::future::Either;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::controller::{self, Action as Requeue, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{error, info, warn};
use weir_analysis::{PrometheusApi, Reporter};

use crate::mesh::{DestinationRule, HttpRoute, VirtualService};
use crate::notify::Notifier;
use crate::server::{Metrics, Telemetry};
use crate::spec::{self, Defaults, keys};
use checks::Checks;
use lease::Leadership;
use routing::{RoutingIndex, Touched};

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
    /// The period of the rounds the namespace's due checks are evaluated in together.
    pub check_round: Duration,
    /// Plan and log, but write nothing.
    pub dry_run: bool,
    /// Names this agent in Events (`reportingInstance`).
    pub instance: String,
}

/// Reconciles that may run at once. Bounds the agent's memory (each holds a fresh read
/// of the Service, the VirtualServices and DestinationRules that name it, and a
/// Prometheus response) and its connections, whatever the number of Services; a
/// reconcile takes milliseconds, so four keep up with hundreds of Services.
const RECONCILE_CONCURRENCY: u16 = 4;

/// What every reconcile shares.
pub struct Context {
    pub config: AgentConfig,
    pub client: Client,
    pub prometheus: PrometheusApi,
    /// The namespace's Deployments, trimmed by [`trim`] and [`template::slim`].
    pub deployments: Store<Deployment>,
    /// Whether `deployments` holds its first full list. Reconciles start only after it
    /// does; the planner is told either way, so that it can never read an empty cache as
    /// every version gone.
    pub deployments_synced: AtomicBool,
    /// Which VirtualServices and DestinationRules name which Services, so that a
    /// reconcile reads only those. Complete before the first reconcile.
    pub routing: RoutingIndex,
    /// Whether this agent may write: reconciles and writes happen only while it leads.
    pub leadership: Leadership,
    /// The agent's own metrics (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// Where transitions are told, besides Events.
    pub notifier: Notifier,
    /// When the gates of each Service's current step were last evaluated. Memory only:
    /// see [`crate::plan::Observed::last_check_at`].
    pub last_checks: Mutex<HashMap<String, Timestamp>>,
    /// The checks handed in for the next round, and the reports of the last ones.
    pub checks: Arc<Checks>,
}

impl Context {
    /// Releases what the agent keeps in memory about a Service: its gauges and its last
    /// check time. Called when a Service is deleted or opts out.
    pub fn forget(&self, service: &str) {
        self.metrics.forget(service);
        self.last_checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(service);
        self.checks.forget(service);
    }
}

/// Objects broadcast to subscribers that have not taken them yet, per shared cache.
/// The reflector waits when a subscriber falls this far behind.
const SUBSCRIBER_BUFFER: usize = 1024;

/// Objects per page of the watches' initial lists (kube-runtime's default is 500). The
/// four watches list at once at start-up, and each page is decoded whole before its
/// objects are trimmed or indexed: with a thousand Services, pages of 500 made the
/// start-up the agent's peak of memory. Smaller pages cost one more request per 100
/// objects.
const LIST_PAGE: u32 = 100;

/// Runs the agent's controller until `shutdown` resolves.
///
/// Services and Deployments are cached (trimmed) by reflectors that run on every
/// replica, leader or not, so that a failover starts with hot caches. Reconciles start
/// only once both caches hold their first full list: before that, a Service's versions
/// are "not observed yet", never "gone" (DESIGN.md, invariant 7). VirtualServices and
/// DestinationRules are watched from the start too, into an index of the Services they
/// name (complete before the first reconcile) and to wake the Services they concern (now,
/// or before an edit): a reconcile GETs the few it needs fresh, because it writes them.
/// Reconciles and writes
/// happen only while `leadership` says this agent leads; so are notifications, which
/// `notifier` sends.
pub async fn run(
    client: Client,
    config: AgentConfig,
    prometheus: PrometheusApi,
    telemetry: Telemetry,
    leadership: Leadership,
    notifier: Notifier,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = config.namespace.clone();
    let watch = watcher::Config::default().page_size(LIST_PAGE);

    let (services, services_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let service_events = services_writer
        .subscribe()
        .expect("a shared store has subscribers");
    // The same events again, for the opted-in Services whose split Services they are.
    let split_events = services_writer
        .subscribe()
        .expect("a shared store has subscribers");
    let (deployments, deployments_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let deployment_events = deployments_writer
        .subscribe()
        .expect("a shared store has subscribers");

    let gateway_api = serves_http_routes(&client).await;
    let checks = Arc::new(Checks::new(
        &ns,
        config.check_round,
        // A report is used by the reconcile it wakes, milliseconds later; a long queue of
        // reconciles may take a few rounds.
        config.check_round * 4 + Duration::from_secs(5),
    ));
    let (check_wakes, checked) = futures::channel::mpsc::unbounded();
    let rounds = tokio::spawn(checks.clone().run(
        prometheus.clone(),
        telemetry.metrics.clone(),
        check_wakes,
    ));
    let context = Arc::new(Context {
        metrics: telemetry.metrics.clone(),
        notifier,
        config,
        client: client.clone(),
        prometheus,
        deployments: deployments.clone(),
        deployments_synced: AtomicBool::new(false),
        routing: RoutingIndex::new(&ns, gateway_api),
        leadership: leadership.clone(),
        last_checks: Mutex::new(HashMap::new()),
        checks,
    });

    // The root streams fill the caches, on every replica, whether or not a controller
    // consumes their events yet.
    let service_cache = {
        let context = context.clone();
        let services = services.clone();
        watcher(
            Api::<Service>::namespaced(client.clone(), &ns),
            watch.clone(),
        )
        .modify(trim)
        .default_backoff()
        .reflect_shared(services_writer)
        .for_each(move |event| {
            release_deleted(&context, &services, event);
            futures::future::ready(())
        })
    };
    let deployment_cache = watcher(
        Api::<Deployment>::namespaced(client.clone(), &ns),
        watch.clone(),
    )
    .modify(|deployment| {
        trim(deployment);
        template::slim(deployment);
    })
    .default_backoff()
    .reflect_shared(deployments_writer)
    .for_each(|_| futures::future::ready(()));
    // Routing objects: indexed at once; what each event touched is handed to the
    // controller (once it runs) to wake the Services it concerns.
    let (vs_cache, vs_touched, vs_synced) = {
        let context = context.clone();
        follow_routing(
            Api::<VirtualService>::namespaced(client.clone(), &ns),
            &watch,
            move |event| context.routing.apply_virtual_service(event),
        )
    };
    let (dr_cache, dr_touched, dr_synced) = {
        let context = context.clone();
        follow_routing(
            Api::<DestinationRule>::namespaced(client.clone(), &ns),
            &watch,
            move |event| context.routing.apply_destination_rule(event),
        )
    };
    // HTTPRoutes only where the cluster serves them: a watch of an absent kind would
    // never list, and the agent would never be ready.
    let (hr_cache, hr_touched, hr_synced) = if gateway_api {
        let context = context.clone();
        let (cache, touched, synced) = follow_routing(
            Api::<HttpRoute>::namespaced(client.clone(), &ns),
            &watch,
            move |event| context.routing.apply_http_route(event),
        );
        (
            Either::Left(cache),
            Either::Left(touched),
            Either::Left(synced),
        )
    } else {
        let (cache, touched, synced) = (
            futures::future::ready(()),
            futures::stream::empty(),
            futures::future::ready(Ok(())),
        );
        (
            Either::Right(cache),
            Either::Right(touched),
            Either::Right(synced),
        )
    };
    let caches = tokio::spawn(futures::future::join5(
        service_cache,
        deployment_cache,
        vs_cache,
        dr_cache,
        hr_cache,
    ));

    // The only waiter on each store's readiness: kube-runtime's `DelayedInit` wakes only
    // the latest of several concurrent waiters, so a second one could sleep forever.
    // The Controller waits on the Service store again below, once it is already ready.
    let synced = async {
        let text = |e: &dyn std::error::Error| e.to_string();
        tokio::try_join!(
            async { services.wait_until_ready().await.map_err(|e| text(&e)) },
            async { deployments.wait_until_ready().await.map_err(|e| text(&e)) },
            async { vs_synced.await.map_err(|_| text(&RoutingNotListed)) },
            async { dr_synced.await.map_err(|_| text(&RoutingNotListed)) },
            async { hr_synced.await.map_err(|_| text(&RoutingNotListed)) },
        )
    };
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    tokio::select! {
        result = synced => {
            if let Err(e) = result {
                warn!(error = %e, "a watch cache stopped before its first list");
                caches.abort();
                rounds.abort();
                return;
            }
        }
        () = shutdown.clone() => {
            caches.abort();
            rounds.abort();
            return;
        }
    }
    context.deployments_synced.store(true, Ordering::Release);
    telemetry.readiness.caches_synced();
    debug_assert!(context.routing.synced());
    info!(
        services = services.state().len(),
        deployments = deployments.state().len(),
        "watch caches synced: ready"
    );

    let (s1, s2, s3, s4, s5) = (
        services.clone(),
        services.clone(),
        services.clone(),
        services.clone(),
        services.clone(),
    );
    let hr_wakes = hr_touched.flat_map(move |touched| {
        futures::stream::iter(observe::services_touched(&s5, keys::HTTP_ROUTE, &touched))
    });
    let vs_wakes = vs_touched.flat_map(move |touched| {
        futures::stream::iter(observe::services_touched(
            &s2,
            keys::VIRTUAL_SERVICE,
            &touched,
        ))
    });
    let dr_wakes = dr_touched.flat_map(move |touched| {
        futures::stream::iter(observe::services_touched(
            &s3,
            keys::DESTINATION_RULE,
            &touched,
        ))
    });

    Controller::for_shared_stream(service_events, services)
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .watches_shared_stream(deployment_events, move |d| {
            observe::services_selecting(&s1, &d)
        })
        // A host-level split's Service, created or edited, wakes the Service it splits.
        .watches_shared_stream(split_events, move |s| observe::services_splitting(&s4, &s))
        // Routing objects wake the Services they concern now or concerned before an
        // edit (see `routing::Touched`).
        .reconcile_on(vs_wakes)
        .reconcile_on(dr_wakes)
        .reconcile_on(hr_wakes)
        // A round of checks wakes the Services it evaluated.
        .reconcile_on(checked)
        // A new leader looks at every Service at once, from its hot caches.
        .reconcile_all_on(leadership.acquisitions())
        .graceful_shutdown_on(shutdown)
        .run(reconcile_contained, reconcile::error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(service = %object.name, "reconciled"),
                Err(controller::Error::ObjectNotFound(object)) => {
                    tracing::debug!(service = %object.name, "deleted before its reconcile")
                }
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
    caches.abort();
    rounds.abort();
    info!("controller stopped");
}

/// Whether the cluster serves Gateway API HTTPRoutes (`gateway.networking.k8s.io/v1`),
/// from API discovery, which every authenticated client may read.
async fn serves_http_routes(client: &Client) -> bool {
    match client
        .list_api_group_resources("gateway.networking.k8s.io/v1")
        .await
    {
        Ok(resources) => {
            let served = resources.resources.iter().any(|r| r.name == "httproutes");
            info!(served, "Gateway API HTTPRoutes");
            served
        }
        Err(kube::Error::Api(status)) if status.code == 404 => {
            info!("the cluster does not serve the Gateway API: HTTPRoutes are not followed");
            false
        }
        Err(e) => {
            warn!(
                error = %e,
                "cannot tell whether the cluster serves HTTPRoutes; not following them \
                 (restart the agent to try again)"
            );
            false
        }
    }
}

/// The routing watch never listed: it ended (only at shutdown) before its first list.
#[derive(Debug, thiserror::Error)]
#[error("the watch of routing objects stopped before its first list")]
struct RoutingNotListed;

/// Follows one kind of routing object: each event goes into the index (`index`), and
/// what it touched — object and Service names, never the object — to the returned
/// stream, for the controller's wake-ups. The channel is unbounded, but holds at most one
/// list's worth of names before the controller starts to drain it; after that, they pass
/// straight through. The oneshot says when the first full list is in.
#[allow(clippy::type_complexity)]
fn follow_routing<K>(
    api: Api<K>,
    config: &watcher::Config,
    index: impl Fn(&watcher::Event<K>) -> Touched + Send + 'static,
) -> (
    impl Future<Output = ()> + Send + 'static,
    futures::channel::mpsc::UnboundedReceiver<Touched>,
    futures::channel::oneshot::Receiver<()>,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let (touched, touched_rx) = futures::channel::mpsc::unbounded();
    let (listed, listed_rx) = futures::channel::oneshot::channel();
    let events = watcher(api, config.clone()).default_backoff();
    let follow = async move {
        let mut listed = Some(listed);
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    warn!(kind = %K::kind(&()), error = %e, "watching routing objects failed; retrying");
                    continue;
                }
            };
            let change = index(&event);
            if matches!(event, watcher::Event::InitDone)
                && let Some(listed) = listed.take()
            {
                let _ = listed.send(());
            }
            if !change.is_empty() {
                // The receiver is gone only once the controller has stopped.
                let _ = touched.unbounded_send(change);
            }
        }
    };
    (follow, touched_rx, listed_rx)
}

/// One reconcile, with any panic in it contained: see [`contain_panics`].
async fn reconcile_contained(service: Arc<Service>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let name = service.name_any();
    let metrics = ctx.metrics.clone();
    contain_panics(&name, &metrics, reconcile::reconcile(service, ctx)).await
}

/// Awaits one reconcile of `service`, turning a panic in it into [`Error::Panicked`]:
/// logged, counted (`weir_reconcile_panics_total`) and requeued by the error policy.
///
/// kube-runtime runs each reconcile in a task and re-raises its panic in the
/// controller's stream, which would end the agent and every other Service's rollout
/// with it. Unwinding past the reconcile is safe: what it shares is behind mutexes that
/// ignore poisoning, and a reconcile that stopped mid-way is one whose next run
/// re-reads and re-plans, as after a failed write. (The release profile keeps
/// `panic = "unwind"` for this.)
pub async fn contain_panics<T>(
    service: &str,
    metrics: &Metrics,
    reconcile: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match AssertUnwindSafe(reconcile).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            error!(service, panic = %message, "reconcile panicked; the agent carries on and retries it");
            metrics.reconcile_panic(service);
            Err(Error::Panicked { message })
        }
    }
}

/// Releases the memory of Services that are gone: on their delete event, and after a
/// re-list (a Service deleted while the watch was disconnected sends no delete event).
fn release_deleted(
    context: &Context,
    services: &Store<Service>,
    event: Result<watcher::Event<Service>, watcher::Error>,
) {
    match event {
        Ok(watcher::Event::Delete(service)) => context.forget(&service.name_any()),
        Ok(watcher::Event::InitDone) => {
            let present: std::collections::HashSet<String> =
                services.state().iter().map(|s| s.name_any()).collect();
            for name in context.metrics.services() {
                if !present.contains(&name) {
                    context.forget(&name);
                }
            }
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "watching Services failed; retrying"),
    }
}

/// Drops what the agent never reads from a cached object: its field-ownership records
/// and `kubectl apply`'s copy of the last applied manifest, together often larger than
/// the rest of the object.
fn trim<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
    object.annotations_mut().remove(LAST_APPLIED);
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether a Service asks for weir (see [`spec::opted_in`]).
fn opted_in(service: &Service) -> bool {
    spec::opted_in(service.annotations())
}

fn service_ref(service: &Service) -> ObjectRef<Service> {
    ObjectRef::from_obj(service)
}

/// Re-export for tests and the CLI: how a requeue is expressed.
pub type ReconcileAction = Requeue;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Error, contain_panics};
    use crate::server::Metrics;

    /// Stands in for a reconcile with a bug: it panics on some inputs.
    fn reconcile_with_a_bug(steps: &[u8], step: usize) -> Result<u8, Error> {
        Ok(steps[step])
    }

    #[tokio::test]
    async fn a_panicking_reconcile_becomes_an_error_and_is_counted() {
        let metrics = Metrics::new();
        let panics = |metrics: &Metrics| {
            let series = r#"weir_reconcile_panics_total{service="checkout"} "#;
            metrics
                .encode()
                .lines()
                .find_map(|line| line.strip_prefix(series)?.parse::<f64>().ok())
        };
        let steps = vec![10, 25, 50];

        let fine = contain_panics("checkout", &metrics, async {
            reconcile_with_a_bug(&steps, 1)
        });
        assert_eq!(fine.await.unwrap(), 25);
        assert_eq!(panics(&metrics), None, "nothing panicked yet");

        let buggy = contain_panics("checkout", &metrics, async {
            reconcile_with_a_bug(&steps, 3)
        });
        match buggy.await {
            Err(Error::Panicked { message }) => {
                assert!(message.contains("index out of bounds"), "{message}")
            }
            other => panic!("not converted: {other:?}"),
        }
        assert_eq!(panics(&metrics), Some(1.0));

        // A `panic!` with a literal message, and the agent still going afterwards.
        let literal = contain_panics("checkout", &metrics, async {
            if steps.len() == 3 {
                panic!("three steps");
            }
            Ok(())
        });
        assert!(
            matches!(literal.await, Err(Error::Panicked { message }) if message == "three steps")
        );
        assert_eq!(panics(&metrics), Some(2.0));
        let after = contain_panics("checkout", &metrics, async {
            reconcile_with_a_bug(&steps, 0)
        });
        assert_eq!(after.await.unwrap(), 10);
    }

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    /// The reproduction behind `run`'s single waiter per store, kept as a test so that a
    /// kube-runtime upgrade that fixes it is noticed (then the rule may be relaxed).
    ///
    /// `Store::wait_until_ready` polls one `futures` oneshot receiver kept behind a mutex
    /// (`utils/delayed_init.rs` in kube-runtime 5.0). A oneshot receiver remembers only
    /// the waker of its latest poll, so of two tasks waiting at once, only the one that
    /// polled last is woken when the store becomes ready; the other sleeps until
    /// something else polls it, which for an agent's readiness task is never. That is
    /// how `/readyz` stayed 503 for good in one run in a few.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kube_runtime_wakes_only_the_latest_of_two_readiness_waiters() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let first = tokio::spawn({
            let store = store.clone();
            async move { store.wait_until_ready().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = tokio::spawn({
            let store = store.clone();
            async move { store.wait_until_ready().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        let woke = |task: tokio::task::JoinHandle<_>| async move {
            tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_ok()
        };
        let (first, second) = (woke(first).await, woke(second).await);
        assert!(second, "the latest waiter is woken");
        assert!(
            !first,
            "kube-runtime now wakes every readiness waiter: controller::run's one-waiter rule is no longer needed"
        );
        // Whoever looks again finds the store ready: only the wake-up was lost.
        assert!(store.wait_until_ready().await.is_ok());
    }
}
