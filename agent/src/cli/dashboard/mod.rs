//! `weir dashboard`: a local web server showing the opted-in Services of one or more
//! namespaces, live, with buttons for the controls.
//!
//! It reads the cluster with the person's kubeconfig, as the other commands do, and
//! listens on loopback unless `--address` says otherwise. One watch per namespace on
//! Services and one on Events feed a [`Model`]; every change of the snapshot it
//! builds is pushed to the page as a server-sent event. The buttons write the same
//! control annotations as `weir promote|abort|pause|resume|retry`, through the same
//! function ([`control::steer`]); a write the cluster refuses (RBAC, say) is shown with
//! the API's message.
//!
//! The page is plain HTML, CSS and JavaScript, embedded in the binary.

mod snapshot;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event as WatchEvent, watcher};
use kube::{Api, ResourceExt as _};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use snapshot::Model;

use super::cluster::{Cluster, ClusterArgs, Error};
use super::control::{self, Control};
use super::explain;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// The header every write must carry: a page of another site cannot send it without a
/// CORS preflight, which this server never grants.
const WRITE_HEADER: &str = "x-weir";

/// Flags of `weir dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Path to the kubeconfig file [default: $KUBECONFIG, else ~/.kube/config]
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use [default: its current context]
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// A namespace to show; repeat for several [default: the context's namespace, else
    /// `default`]
    #[arg(short = 'n', long = "namespace", value_name = "NAME")]
    pub namespaces: Vec<String>,
    /// The address to listen on. Only loopback unless this says otherwise: anyone who
    /// reaches the port acts with your kubeconfig's rights.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub address: IpAddr,
    /// The port to listen on; 0 picks a free one (the URL is printed either way).
    #[arg(long, default_value_t = 3100)]
    pub port: u16,
}

/// What the handlers share.
struct App {
    /// One connection per namespace shown.
    clusters: Vec<Cluster>,
    snapshots: watch::Receiver<Arc<String>>,
    /// The `Host` values a request may carry ([`hosts`]); `None`: any.
    hosts: Option<Vec<String>>,
}

impl DashboardArgs {
    pub async fn run(self, outer: &ClusterArgs) -> anyhow::Result<ExitCode> {
        let cluster = ClusterArgs {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: None,
        }
        .or(outer)
        .connect()
        .await?;
        let mut namespaces = self.namespaces.clone();
        if namespaces.is_empty() {
            namespaces.push(cluster.namespace.clone());
        }
        namespaces.sort();
        namespaces.dedup();
        let clusters: Vec<Cluster> = namespaces
            .iter()
            .map(|ns| {
                let mut cluster = cluster.clone();
                cluster.namespace = ns.clone();
                cluster
            })
            .collect();

        let model = Arc::new(Mutex::new(Model::new(&namespaces)));
        let (publish, snapshots) = watch::channel(Arc::new(render(&model)));
        let publish = Arc::new(publish);
        for cluster in &clusters {
            tokio::spawn(follow::<Service>(
                cluster.clone(),
                model.clone(),
                publish.clone(),
            ));
            tokio::spawn(follow::<Event>(
                cluster.clone(),
                model.clone(),
                publish.clone(),
            ));
        }

        let listener = tokio::net::TcpListener::bind(SocketAddr::new(self.address, self.port))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {}:{}: {e} (choose another with --port, or --port 0)",
                    self.address,
                    self.port
                )
            })?;
        let bound = listener.local_addr()?;
        if !self.address.is_loopback() {
            eprintln!(
                "weir dashboard: listening on {bound}, beyond loopback: anyone who reaches it acts on the cluster with your kubeconfig's rights"
            );
        }
        let app = Arc::new(App {
            clusters,
            snapshots,
            hosts: hosts(bound),
        });
        let router = Router::new()
            .route("/", get(index))
            .route("/app.js", get(app_js))
            .route("/style.css", get(style_css))
            .route("/api/snapshot", get(current))
            .route("/api/events", get(events))
            .route(
                "/api/namespaces/{namespace}/services/{service}/explain",
                get(explain_service),
            )
            .route(
                "/api/namespaces/{namespace}/services/{service}/{action}",
                post(steer),
            )
            .with_state(app);
        // `127.0.0.1:3100`, `[::1]:3100`: a socket address reads as a URL's host and port.
        println!("weir dashboard: http://{bound}");
        axum::serve(listener, router).await?;
        Ok(ExitCode::SUCCESS)
    }
}

/// The `Host` headers this server answers to: on loopback, its loopback names only (a
/// page of another site that rebinds its own name to 127.0.0.1 sends that name). `None`
/// beyond loopback, which `--address` asked for: the names people reach it by are
/// theirs to choose.
fn hosts(bound: SocketAddr) -> Option<Vec<String>> {
    let port = bound.port();
    bound.ip().is_loopback().then(|| {
        vec![
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ]
    })
}

fn render(model: &Mutex<Model>) -> String {
    let snapshot = model.lock().expect("model lock").snapshot();
    serde_json::to_string(&snapshot).expect("a snapshot serializes")
}

/// Publishes the model's snapshot when it changed.
fn publish(model: &Mutex<Model>, publish: &watch::Sender<Arc<String>>) {
    let rendered = render(model);
    publish.send_if_modified(|current| {
        if **current == rendered {
            return false;
        }
        *current = Arc::new(rendered);
        true
    });
}

/// A kind of object the dashboard follows into its model, per namespace.
trait Followed:
    kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + 'static
{
    /// The resource, as errors name it.
    const RESOURCE: &'static str;
    /// A full list of the namespace's objects.
    fn listed(model: &mut Model, ns: &str, all: Vec<Self>);
    fn applied(model: &mut Model, ns: &str, object: Self);
    fn deleted(model: &mut Model, ns: &str, name: &str);
    /// A watch failure, and whether the page shows it.
    fn failed(model: &mut Model, ns: &str, error: String) -> bool;
}

impl Followed for Service {
    const RESOURCE: &'static str = "services";
    fn listed(model: &mut Model, ns: &str, all: Vec<Self>) {
        model.set_services(ns, all);
    }
    fn applied(model: &mut Model, ns: &str, object: Self) {
        model.apply_service(ns, object);
    }
    fn deleted(model: &mut Model, ns: &str, name: &str) {
        model.delete_service(ns, name);
    }
    /// The page shows it until the watcher, which re-lists and resumes with backoff,
    /// recovers.
    fn failed(model: &mut Model, ns: &str, error: String) -> bool {
        model.set_error(ns, Some(error));
        true
    }
}

impl Followed for Event {
    const RESOURCE: &'static str = "events";
    fn listed(model: &mut Model, ns: &str, all: Vec<Self>) {
        model.set_events(ns, all);
    }
    fn applied(model: &mut Model, ns: &str, object: Self) {
        model.apply_event(ns, object);
    }
    fn deleted(model: &mut Model, ns: &str, name: &str) {
        model.delete_event(ns, name);
    }
    /// Events are for people: without the right to read them the page shows the
    /// Services all the same.
    fn failed(_: &mut Model, _: &str, _: String) -> bool {
        false
    }
}

/// Follows the namespace's objects of kind `K` into the model, and publishes every
/// change. The watcher re-lists and resumes with backoff after an error.
async fn follow<K: Followed>(
    cluster: Cluster,
    model: Arc<Mutex<Model>>,
    sender: Arc<watch::Sender<Arc<String>>>,
) {
    let ns = cluster.namespace.clone();
    let api: Api<K> = Api::namespaced(cluster.client.clone(), &ns);
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut listing: Vec<K> = Vec::new();
    while let Some(event) = stream.next().await {
        let changed = {
            let mut model = model.lock().expect("model lock");
            match event {
                // The model changes once the listing is complete.
                Ok(WatchEvent::Init) => {
                    listing.clear();
                    false
                }
                Ok(WatchEvent::InitApply(object)) => {
                    listing.push(object);
                    false
                }
                Ok(WatchEvent::InitDone) => {
                    K::listed(&mut model, &ns, std::mem::take(&mut listing));
                    true
                }
                Ok(WatchEvent::Apply(object)) => {
                    K::applied(&mut model, &ns, object);
                    true
                }
                Ok(WatchEvent::Delete(object)) => {
                    K::deleted(&mut model, &ns, &object.name_any());
                    true
                }
                Err(e) => K::failed(&mut model, &ns, watch_error(&cluster, e, K::RESOURCE)),
            }
        };
        if changed {
            publish(&model, &sender);
        }
    }
}

fn watch_error(cluster: &Cluster, error: watcher::Error, resource: &'static str) -> String {
    match error {
        watcher::Error::InitialListFailed(e) => cluster.error(e, "list", resource).to_string(),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            cluster.error(e, "watch", resource).to_string()
        }
        other => format!("watching {resource}: {}", super::error_chain(&other)),
    }
}

/// The request came through a name this server answers to ([`hosts`]).
fn check_host(app: &App, headers: &HeaderMap) -> Result<(), Refusal> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if app
        .hosts
        .as_ref()
        .is_none_or(|hosts| hosts.iter().any(|allowed| allowed == host))
    {
        Ok(())
    } else {
        Err(Refusal(
            StatusCode::FORBIDDEN,
            format!("this dashboard does not answer to the host {host:?}"),
        ))
    }
}

/// A request the dashboard (or the cluster) refused: the page shows the message.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, json_body(json!({ "error": self.1 }).to_string())).into_response()
    }
}

fn json_body(body: String) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
}

/// Assets: same-origin scripts and styles only.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn current(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, Refusal> {
    check_host(&app, &headers)?;
    let snapshot = app.snapshots.borrow().clone();
    Ok(json_body(snapshot.as_str().to_owned()).into_response())
}

/// The snapshot now, then every change of it.
async fn events(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, Refusal> {
    check_host(&app, &headers)?;
    Ok(Sse::new(snapshots(app.snapshots.clone()))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn snapshots(
    receiver: watch::Receiver<Arc<String>>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold((receiver, true), |(mut receiver, first)| async move {
        if !first {
            receiver.changed().await.ok()?;
        }
        let snapshot = receiver.borrow_and_update().clone();
        let event = SseEvent::default()
            .event("snapshot")
            .data(snapshot.as_str());
        Some((Ok(event), (receiver, false)))
    })
}

fn cluster_for<'a>(app: &'a App, namespace: &str) -> Result<&'a Cluster, Refusal> {
    app.clusters
        .iter()
        .find(|c| c.namespace == namespace)
        .ok_or_else(|| {
            Refusal(
                StatusCode::NOT_FOUND,
                format!("this dashboard does not show namespace {namespace}"),
            )
        })
}

/// `weir explain`'s account of one Service, for a misconfigured one.
async fn explain_service(
    State(app): State<Arc<App>>,
    Path((namespace, service)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    check_host(&app, &headers)?;
    let cluster = cluster_for(&app, &namespace)?;
    let text = explain::explain_now(cluster, &service)
        .await
        .map_err(api_error)?;
    Ok(json_body(json!({ "explanation": text }).to_string()).into_response())
}

/// The body of a control: the version the page showed.
#[derive(Debug, Deserialize)]
struct Steer {
    version: Option<String>,
}

/// A button: the control, as `weir <action> <service>` writes it.
async fn steer(
    State(app): State<Arc<App>>,
    Path((namespace, service, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    check_host(&app, &headers)?;
    if headers.get(WRITE_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            format!("a control must carry the header {WRITE_HEADER}: 1"),
        ));
    }
    let control = Control::from_name(&action).ok_or_else(|| {
        Refusal(
            StatusCode::NOT_FOUND,
            format!("no such control: {action} (promote, abort, pause, resume or retry)"),
        )
    })?;
    let request: Steer = serde_json::from_slice(&body).map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"version\": …}}: {e}"),
        )
    })?;
    let cluster = cluster_for(&app, &namespace)?;
    let decision = control::steer(cluster, control, &service, request.version.as_deref())
        .await
        .map_err(api_error)?;
    let written: Vec<String> = decision
        .annotations
        .iter()
        .map(|(key, value)| match value {
            Some(value) => format!("{key}={value}"),
            None => format!("{key} removed"),
        })
        .collect();
    Ok(
        json_body(json!({ "written": written, "outcome": decision.outcome }).to_string())
            .into_response(),
    )
}

/// A failed read or write, with the status the API (or the refusal) calls for.
fn api_error(e: Error) -> Refusal {
    let status = match &e {
        Error::Forbidden { .. } => StatusCode::FORBIDDEN,
        Error::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
        Error::ServiceNotFound { .. } | Error::NotOptedIn { .. } => StatusCode::NOT_FOUND,
        Error::Refused(_) => StatusCode::CONFLICT,
        Error::Kubeconfig(_) | Error::Unreachable { .. } | Error::Api { .. } => {
            StatusCode::BAD_GATEWAY
        }
    };
    Refusal(status, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_answered_on_loopback() {
        let hosts = hosts("127.0.0.1:3100".parse().unwrap()).unwrap();
        assert!(hosts.contains(&"localhost:3100".to_owned()));
        assert!(hosts.contains(&"127.0.0.1:3100".to_owned()));
        assert!(!hosts.iter().any(|h| h.contains("example")));
        assert_eq!(super::hosts("192.0.2.7:3100".parse().unwrap()), None);
        assert_eq!(super::hosts("0.0.0.0:3100".parse().unwrap()), None);
    }
}
