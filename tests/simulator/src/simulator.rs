//! The running simulator: watches, the tick loop and the `/metrics` endpoint.

use std::fmt::Debug;
use std::hash::Hash;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::core::DynamicObject;
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::SimulatorConfig;
use crate::mesh::plan_traffic;
use crate::metrics::{self, Metrics};
use crate::objects;
use crate::traffic::TrafficGenerator;

/// Why a simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The metrics address cannot be bound.
    #[error("cannot serve metrics on {addr}: {source} (is another process using the port?)")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: io::Error,
    },
}

/// A running traffic simulator. Dropping it stops its watches, its traffic and its
/// metrics endpoint.
pub struct Simulator {
    metrics_addr: SocketAddr,
    dropped: Counter,
    tasks: Vec<JoinHandle<()>>,
}

impl Simulator {
    /// Starts watching `config.namespace`, generating traffic every `config.tick` and
    /// serving `/metrics` on `config.listen`. Watch failures are retried with backoff
    /// and logged; they do not stop the simulator.
    pub async fn start(client: Client, config: SimulatorConfig) -> Result<Simulator, Error> {
        let listen_error = |source| Error::Listen {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(listen_error)?;
        let metrics_addr = listener.local_addr().map_err(listen_error)?;
        let metrics = Arc::new(Metrics::new(config.reporter));
        let dropped = metrics.dropped();

        let namespace = config.namespace.as_str();
        let vs = objects::virtual_service_resource();
        let dr = objects::destination_rule_resource();
        let hr = objects::http_route_resource();
        let (virtual_services, vs_watch) = reflect(
            Api::namespaced_with(client.clone(), namespace, &vs),
            vs,
            |o| {
                objects::http_routes(o)
                    .err()
                    .map(|e| e.to_string())
                    .into_iter()
                    .collect()
            },
        );
        let (http_routes, hr_watch) = reflect(
            Api::namespaced_with(client.clone(), namespace, &hr),
            hr,
            |o| {
                objects::http_route_rules(o)
                    .err()
                    .map(|e| e.to_string())
                    .into_iter()
                    .collect()
            },
        );
        let (destination_rules, dr_watch) = reflect(
            Api::namespaced_with(client.clone(), namespace, &dr),
            dr,
            |o| {
                objects::destination_rule(o)
                    .err()
                    .map(|e| e.to_string())
                    .into_iter()
                    .collect()
            },
        );
        let (services, svc_watch) = reflect(
            Api::<Service>::namespaced(client.clone(), namespace),
            (),
            |o| problems(&o.metadata),
        );
        let (deployments, deploy_watch) =
            reflect(Api::<Deployment>::namespaced(client, namespace), (), |o| {
                problems(&o.metadata)
            });
        let stores = Stores {
            virtual_services,
            http_routes,
            destination_rules,
            services,
            deployments,
        };
        tracing::info!(namespace, %metrics_addr, reporter = %config.reporter, "traffic simulator started");
        let tasks = vec![
            tokio::spawn(serve_metrics(listener, metrics.clone())),
            vs_watch,
            hr_watch,
            dr_watch,
            svc_watch,
            deploy_watch,
            tokio::spawn(generate_traffic(stores, metrics, config)),
        ];
        Ok(Simulator {
            metrics_addr,
            dropped,
            tasks,
        })
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Requests sent so far to destinations that resolve to no Deployment.
    pub fn dropped_requests(&self) -> u64 {
        self.dropped.get()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn problems(meta: &kube::api::ObjectMeta) -> Vec<String> {
    objects::annotation_problems(meta)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// A store of `api`'s objects kept current by a spawned watch, which logs the problems
/// `check` finds in each object it sees change.
fn reflect<K>(
    api: Api<K>,
    dyntype: K::DynamicType,
    check: fn(&K) -> Vec<String>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let kind = K::kind(&dyntype).into_owned();
    let writer = Writer::new(dyntype);
    let store = writer.as_reader();
    let watch = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .for_each(move |event| {
            match event {
                Ok(object) => {
                    for problem in check(&object) {
                        tracing::warn!(kind, name = object.name_any(), "{problem}");
                    }
                }
                Err(error) => tracing::warn!(kind, %error, "watch failed; retrying"),
            }
            futures::future::ready(())
        });
    (store, tokio::spawn(watch))
}

struct Stores {
    virtual_services: Store<DynamicObject>,
    http_routes: Store<DynamicObject>,
    destination_rules: Store<DynamicObject>,
    services: Store<Service>,
    deployments: Store<Deployment>,
}

async fn generate_traffic(stores: Stores, metrics: Arc<Metrics>, config: SimulatorConfig) {
    let mut ticks = tokio::time::interval(config.tick);
    // After a stall, one longer tick catches up (its elapsed time is measured).
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut generator = match config.noise {
        Some(seed) => TrafficGenerator::noisy(seed),
        None => TrafficGenerator::exact(),
    };
    let mut last = Instant::now();
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let mesh = objects::mesh(
            &config.namespace,
            &stores.virtual_services.state(),
            &stores.http_routes.state(),
            &stores.destination_rules.state(),
            &stores.services.state(),
            &stores.deployments.state(),
            config.reporter,
        );
        let plans = plan_traffic(&mesh, config.default_rps);
        metrics.record(&generator.tick(&plans, now - last));
        last = now;
    }
}

async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics.encode()) }
        }),
    );
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "metrics endpoint stopped");
    }
}
