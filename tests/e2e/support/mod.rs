//! The end-to-end fixture: a control plane, the traffic simulator, Prometheus scraping
//! it, one namespace with an application, and the real `weir` binary as a process.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tempfile::TempDir;
use weir::plan::{Phase, Status};
use weir_simulator::{Simulator, SimulatorConfig};
use weir_testbed::{ControlPlane, OwnedProcess, Prometheus, mark_deployment_available, wait_until};

pub mod browser;

/// Generous: the machine may be a loaded 2-core box.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Requests per second per route of the simulated mesh.
pub const RPS: f64 = 500.0;
/// The simulator's seed: every run draws the same traffic, as far as timing allows.
pub const SEED: u64 = 20261130;

pub struct Bed {
    pub control_plane: ControlPlane,
    pub client: Client,
    pub namespace: String,
    pub simulator: Simulator,
    pub prometheus: Prometheus,
    pub logs: TempDir,
}

/// A Service opted in to weir, with its first version (v1) deployed and routed.
pub struct App {
    pub name: String,
    pub annotations: BTreeMap<String, String>,
}

impl App {
    /// An application with the fast timings the end-to-end tests use.
    pub fn new(name: &str) -> App {
        let mut annotations = BTreeMap::new();
        annotations.insert("weir.dev/enabled".into(), "true".into());
        App {
            name: name.into(),
            annotations,
        }
    }

    /// An application whose steps never end by themselves within a test: each holds for
    /// an hour and never times out, so only the controls or a failing check move it.
    pub fn held(name: &str) -> App {
        App::new(name)
            .with("step-interval", "1h")
            .with("no-data-timeout", "1h")
    }

    pub fn with(mut self, key: &str, value: &str) -> App {
        self.annotations
            .insert(format!("weir.dev/{key}"), value.into());
        self
    }
}

impl Bed {
    pub async fn start() -> anyhow::Result<Bed> {
        Bed::start_reporting(weir_simulator::Reporter::Destination).await
    }

    /// A bed whose simulated mesh reports as `reporter` does: sidecars
    /// (`destination`) or ambient's waypoints (`waypoint`).
    pub async fn start_reporting(reporter: weir_simulator::Reporter) -> anyhow::Result<Bed> {
        let control_plane = ControlPlane::start().await?;
        let client = control_plane.client();
        let namespace = "shop".to_string();
        control_plane.create_namespace(&namespace).await?;
        // Decisions are tested as a mesh would exercise them: noisy traffic (Poisson
        // arrivals, random routing, Bernoulli errors, log-normal latencies), at a rate
        // that lets the sequential judge gather its evidence in seconds.
        let simulator = Simulator::start(
            client.clone(),
            SimulatorConfig {
                default_rps: RPS,
                noise: Some(SEED),
                reporter,
                ..SimulatorConfig::new(&namespace)
            },
        )
        .await?;
        let prometheus = Prometheus::start(&[simulator.metrics_addr()]).await?;
        prometheus.wait_for_scrape().await?;
        Ok(Bed {
            control_plane,
            client,
            namespace,
            simulator,
            prometheus,
            logs: tempfile::tempdir()?,
        })
    }

    /// Creates the Service, Deployment v1, a VirtualService with the managed route at
    /// 100/0 and a DestinationRule whose stable subset selects v1.
    pub async fn deploy_app(&self, app: &App) -> anyhow::Result<()> {
        let name = &app.name;
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": app.annotations},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}
        }))?;
        self.services()
            .create(&PostParams::default(), &service)
            .await?;
        self.deploy_version(name, "v1", 0.0).await?;
        let vs = json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name},
            "spec": {
                "hosts": [name],
                "http": [{
                    "name": "primary",
                    "route": [{"destination": {"host": name, "subset": "stable"}, "weight": 100}]
                }]
            }
        });
        self.create_dynamic(&vs).await?;
        let dr = json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": name},
            "spec": {
                "host": name,
                "subsets": [
                    {"name": "stable", "labels": {"version": "v1"}},
                    {"name": "canary", "labels": {"version": "v1"}}
                ]
            }
        });
        self.create_dynamic(&dr).await?;
        Ok(())
    }

    /// Deploys `version` of `app` (Deployment `<app>-<version>`) with the simulated
    /// error rate, and marks it Available.
    pub async fn deploy_version(
        &self,
        app: &str,
        version: &str,
        error_rate: f64,
    ) -> anyhow::Result<()> {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {
                "name": format!("{app}-{version}"),
                "annotations": {"sim.weir.dev/error-rate": error_rate.to_string(), "sim.weir.dev/latency-ms": "20"}
            },
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": app, "version": version}},
                "template": {
                    "metadata": {"labels": {"app": app, "version": version}},
                    "spec": {"containers": [{"name": "app", "image": format!("example.test/{app}:{version}")}]}
                }
            }
        }))?;
        self.deployments()
            .create(&PostParams::default(), &deployment)
            .await?;
        mark_deployment_available(&self.client, &self.namespace, &format!("{app}-{version}")).await
    }

    /// Deploys a healthy `version` of `app` and waits until the agent releases it at its
    /// first step (canary weight 10).
    pub async fn release_to_first_step(&self, app: &str, version: &str) -> anyhow::Result<()> {
        self.deploy_version(app, version, 0.0).await?;
        self.wait_status(app, &format!("{version} at its first step"), |s| {
            s.phase == Phase::Progressing && s.step == Some(0) && s.weight == 10
        })
        .await?;
        Ok(())
    }

    /// A finished promotion as the cluster shows it: `app`'s route sends everything to
    /// stable, and the stable subset selects `version`.
    pub async fn assert_promoted(&self, app: &str, version: &str) -> anyhow::Result<()> {
        let (live, _) = self.route(app).await?;
        anyhow::ensure!(
            live == Weights {
                stable: 100,
                canary: 0
            },
            "the route of {app} is {live:?}, not 100/0"
        );
        let stable = self.subset_version(app, "stable").await?;
        anyhow::ensure!(
            stable.as_deref() == Some(version),
            "the stable subset of {app} selects {stable:?}, not {version}"
        );
        Ok(())
    }

    /// Changes the pod template of a version (a new build), keeping it Available.
    pub async fn rebuild(
        &self,
        app: &str,
        version: &str,
        image_tag: &str,
        error_rate: f64,
    ) -> anyhow::Result<()> {
        let name = format!("{app}-{version}");
        let patch = json!({
            "metadata": {"annotations": {"sim.weir.dev/error-rate": error_rate.to_string()}},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": format!("example.test/{app}:{image_tag}")}]}}}
        });
        self.deployments()
            .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        mark_deployment_available(&self.client, &self.namespace, &name).await
    }

    /// Creates `n` small Deployments (`filler-<i>`) that no Service selects, to make the
    /// namespace's Deployment list long.
    pub async fn create_filler_deployments(&self, n: usize) -> anyhow::Result<()> {
        use futures::{StreamExt as _, TryStreamExt as _};
        let api = self.deployments();
        futures::stream::iter(0..n)
            .map(|i| {
                let api = api.clone();
                async move {
                    let name = format!("filler-{i}");
                    let deployment: Deployment = serde_json::from_value(json!({
                        "metadata": {"name": name},
                        "spec": {
                            "selector": {"matchLabels": {"app": name}},
                            "template": {
                                "metadata": {"labels": {"app": name}},
                                "spec": {"containers": [{"name": "app", "image": "filler:1"}]}
                            }
                        }
                    }))?;
                    api.create(&PostParams::default(), &deployment).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(16)
            .try_collect::<()>()
            .await
    }

    pub async fn delete_deployment(&self, name: &str) -> anyhow::Result<()> {
        self.deployments()
            .delete(name, &DeleteParams::default())
            .await?;
        Ok(())
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn virtual_services(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
        Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &ApiResource::from_gvk(&gvk),
        )
    }

    pub fn destination_rules(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule");
        Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &ApiResource::from_gvk(&gvk),
        )
    }

    /// The API of `object`'s kind in the test namespace, from its apiVersion and kind.
    pub fn dynamic_api(&self, object: &Value) -> anyhow::Result<Api<DynamicObject>> {
        let kind = object["kind"].as_str().unwrap_or_default();
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        if kind.is_empty() || version.is_empty() {
            bail!("an object without apiVersion or kind: {object}");
        }
        let gvk = GroupVersionKind::gvk(group, version, kind);
        Ok(Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &ApiResource::from_gvk(&gvk),
        ))
    }

    pub async fn create_dynamic(&self, object: &Value) -> anyhow::Result<()> {
        let kind = object["kind"].as_str().unwrap_or_default();
        let api = self.dynamic_api(object)?;
        let obj: DynamicObject = serde_json::from_value(object.clone())?;
        api.create(&PostParams::default(), &obj)
            .await
            .with_context(|| format!("creating {kind} {:?}", obj.metadata.name))?;
        Ok(())
    }

    /// Sets (or with `None` removes) an annotation on a Service, as `kubectl annotate` would.
    pub async fn annotate(
        &self,
        service: &str,
        key: &str,
        value: Option<&str>,
    ) -> anyhow::Result<()> {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.services()
            .patch(service, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// The agent's status annotation on `service`.
    pub async fn status(&self, service: &str) -> anyhow::Result<Option<Status>> {
        let svc = self.services().get(service).await?;
        match svc.annotations().get("weir.dev/status") {
            None => Ok(None),
            Some(raw) => Ok(Some(
                serde_json::from_str(raw).context("parsing weir.dev/status")?,
            )),
        }
    }

    /// Waits until the status of `service` satisfies `pred`.
    pub async fn wait_status(
        &self,
        service: &str,
        what: &str,
        pred: impl Fn(&Status) -> bool,
    ) -> anyhow::Result<Status> {
        let pred = &pred;
        wait_until(what, DEADLINE, || async move {
            match self.status(service).await? {
                Some(s) if pred(&s) => Ok(s),
                Some(s) => Err(anyhow!(
                    "phase {:?}, weight {}, message {:?}",
                    s.phase,
                    s.weight,
                    s.message
                )),
                None => Err(anyhow!("no status yet")),
            }
        })
        .await
    }

    /// Waits until the Deployment `name` asks for `replicas` (`spec.replicas`).
    pub async fn wait_replicas(&self, name: &str, replicas: i32) -> anyhow::Result<()> {
        wait_until(
            &format!("Deployment {name} at {replicas} replicas"),
            DEADLINE,
            || async move {
                let deployment = self.deployments().get(name).await?;
                match deployment.spec.replicas {
                    Some(n) if n == replicas => Ok(()),
                    other => Err(anyhow!("spec.replicas is {other:?}")),
                }
            },
        )
        .await
    }

    pub async fn wait_phase(&self, service: &str, phase: Phase) -> anyhow::Result<Status> {
        self.wait_status(service, &format!("{service} to be {phase:?}"), |s| {
            s.phase == phase
        })
        .await
    }

    /// The managed route's (stable, canary) weights and the whole VirtualService.
    pub async fn route(&self, vs: &str) -> anyhow::Result<(Weights, Value)> {
        let obj = self.virtual_services().get(vs).await?;
        let value = serde_json::to_value(&obj)?;
        Ok((weights_of(&value, "primary"), value))
    }

    /// The version label value of a subset.
    pub async fn subset_version(&self, dr: &str, subset: &str) -> anyhow::Result<Option<String>> {
        let obj = serde_json::to_value(self.destination_rules().get(dr).await?)?;
        Ok(obj["spec"]["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == subset)
            .and_then(|s| s["labels"]["version"].as_str().map(String::from)))
    }

    /// The (reason, note) of every Event about `service`, oldest first.
    pub async fn events(&self, service: &str) -> anyhow::Result<Vec<(String, String)>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut events: Vec<Event> = api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(service))
            .collect();
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        Ok(events
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect())
    }

    /// When the first Event with `reason` on `service` happened.
    pub async fn event_time(
        &self,
        service: &str,
        reason: &str,
    ) -> anyhow::Result<Option<jiff::Timestamp>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(service))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.event_time.map(|t| t.0))
            .min())
    }

    /// The Deployment `name`'s `spec.replicas`.
    pub async fn replicas(&self, name: &str) -> anyhow::Result<Option<i32>> {
        Ok(self.deployments().get(name).await?.spec.replicas)
    }

    pub async fn wait_event(&self, service: &str, reason: &str) -> anyhow::Result<String> {
        wait_until(
            &format!("a {reason} event on {service}"),
            DEADLINE,
            || async {
                let events = self.events(service).await?;
                events
                    .iter()
                    .find(|(r, _)| r == reason)
                    .map(|(_, note)| note.clone())
                    .ok_or_else(|| anyhow!("events so far: {events:?}"))
            },
        )
        .await
    }

    /// Starts the real `weir agent` for this namespace with fast timings.
    pub fn agent(&self, extra: &[&str]) -> anyhow::Result<Agent> {
        Agent::start(self, extra)
    }

    /// Records every distinct (stable, canary) weight of `vs`'s managed route, from a
    /// watch: every revision the apiserver stores is seen, however briefly it lasted.
    pub fn record_weights(&self, vs: &str) -> WeightLog {
        self.record_weights_by(vs, |value| weights_of(value, "primary"))
    }

    /// Records every distinct weight pair of `vs`, as [`Bed::record_weights`] does, read
    /// from each revision by `weights`.
    fn record_weights_by(
        &self,
        vs: &str,
        weights: impl Fn(&Value) -> Weights + Send + 'static,
    ) -> WeightLog {
        self.record_object_weights_by(self.virtual_services(), vs, weights)
    }

    /// Records every distinct weight pair of the object `name` of `api`'s kind, read
    /// from each revision by `weights`.
    fn record_object_weights_by(
        &self,
        api: Api<DynamicObject>,
        name: &str,
        weights: impl Fn(&Value) -> Weights + Send + 'static,
    ) -> WeightLog {
        use futures::StreamExt as _;
        use kube::runtime::{WatchStreamExt as _, watcher};
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let log = Arc::new(Mutex::new(Vec::<Weights>::new()));
        let sink = log.clone();
        let task = tokio::spawn(async move {
            let mut revisions =
                std::pin::pin!(watcher(api, config).default_backoff().touched_objects());
            while let Some(revision) = revisions.next().await {
                if let Ok(obj) = revision
                    && let Ok(value) = serde_json::to_value(&obj)
                {
                    let w = weights(&value);
                    let mut log = sink.lock().unwrap();
                    if log.last() != Some(&w) {
                        log.push(w);
                    }
                }
            }
        });
        WeightLog { log, task }
    }
}

/// (stable, canary) weights of a route; a missing canary destination is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weights {
    pub stable: i64,
    pub canary: i64,
}

pub fn weights_of(vs: &Value, route: &str) -> Weights {
    let routes = vs["spec"]["http"].as_array().cloned().unwrap_or_default();
    let Some(r) = routes.iter().find(|r| r["name"] == route) else {
        return Weights {
            stable: -1,
            canary: -1,
        };
    };
    let mut w = Weights {
        stable: 0,
        canary: 0,
    };
    let dests = r["route"].as_array().cloned().unwrap_or_default();
    let sole = dests.len() == 1;
    for d in dests {
        let weight = d["weight"].as_i64().unwrap_or(if sole { 100 } else { 0 });
        match d["destination"]["subset"].as_str() {
            Some("stable") => w.stable = weight,
            Some("canary") => w.canary = weight,
            _ => {}
        }
    }
    w
}

pub struct WeightLog {
    log: Arc<Mutex<Vec<Weights>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WeightLog {
    pub fn history(&self) -> Vec<Weights> {
        self.log.lock().unwrap().clone()
    }

    /// The canary weights seen, in order, without repeats.
    pub fn canary(&self) -> Vec<i64> {
        let mut out: Vec<i64> = Vec::new();
        for w in self.history() {
            if out.last() != Some(&w.canary) {
                out.push(w.canary);
            }
        }
        out
    }
}

impl WeightLog {
    /// The canary weights seen, once the log has caught up with a canary weight of 0
    /// (where every finished rollout ends): the log samples, so it lags the route.
    pub async fn settled_canary(&self) -> anyhow::Result<Vec<i64>> {
        wait_until(
            "the weight log to record canary weight 0",
            DEADLINE,
            || async {
                let canary = self.canary();
                match canary.last() {
                    Some(0) => Ok(canary),
                    _ => Err(anyhow!("canary weights so far: {canary:?}")),
                }
            },
        )
        .await
    }
}

impl Drop for WeightLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `weir agent` process.
pub struct Agent {
    process: Option<OwnedProcess>,
    log: PathBuf,
    first_log: PathBuf,
    runs: usize,
    args: Vec<String>,
    kubeconfig: PathBuf,
}

impl Agent {
    fn start(bed: &Bed, extra: &[&str]) -> anyhow::Result<Agent> {
        Agent::start_as(bed, bed.control_plane.kubeconfig_path(), extra)
    }

    fn start_as(bed: &Bed, kubeconfig: &std::path::Path, extra: &[&str]) -> anyhow::Result<Agent> {
        Agent::start_full(bed, kubeconfig, &bed.prometheus.url(), extra)
    }

    fn start_full(
        bed: &Bed,
        kubeconfig: &std::path::Path,
        prometheus: &str,
        extra: &[&str],
    ) -> anyhow::Result<Agent> {
        let port = weir_testbed::free_port()?;
        let mut args: Vec<String> = [
            "agent",
            "--namespace",
            &bed.namespace,
            "--prometheus-url",
            prometheus,
            "--scrape-interval",
            "1s",
            "--query-timeout",
            "2s",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // The fast timings, unless `extra` sets the same flag (the agent takes each once).
        for (flag, value) in [
            ("--default-step-interval", "4s"),
            ("--default-check-interval", "2s"),
            ("--default-min-requests", "10"),
            ("--default-failure-limit", "1"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let n = std::fs::read_dir(bed.logs.path())?.count();
        let log = bed.logs.path().join(format!("agent-{n}.log"));
        let mut agent = Agent {
            process: None,
            first_log: log.clone(),
            runs: 0,
            log,
            args,
            kubeconfig: kubeconfig.to_path_buf(),
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let env = [
            ("KUBECONFIG", self.kubeconfig.display().to_string()),
            ("RUST_LOG", "info,weir=debug,kube=warn".to_string()),
        ];
        let binary = env!("CARGO_BIN_EXE_weir");
        // A profiler to run the agent under, e.g. `WEIR_AGENT_WRAPPER="heaptrack -o
        // /tmp/weir"`: for benchmarks only (the pid is then the wrapper's).
        let (program, args) = match std::env::var("WEIR_AGENT_WRAPPER") {
            Ok(wrapper) if !wrapper.trim().is_empty() => {
                let mut words = wrapper.split_whitespace().map(str::to_owned);
                let program = words.next().unwrap_or_default();
                let mut args: Vec<String> = words.collect();
                args.push(binary.to_owned());
                args.extend(self.args.iter().cloned());
                (program, args)
            }
            _ => (binary.to_owned(), self.args.clone()),
        };
        self.process = Some(OwnedProcess::spawn(
            "weir-agent",
            std::path::Path::new(&program),
            &args,
            &env,
            self.log.clone(),
        )?);
        Ok(())
    }

    /// SIGKILL: no graceful shutdown, as when a node dies.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// SIGKILLs the agent if it runs, and starts it again with the same flags; each run
    /// logs to a file of its own (`agent-0.log`, `agent-0.1.log`, …).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.runs += 1;
        let stem = self
            .first_log
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.log = self
            .first_log
            .with_file_name(format!("{stem}.{}.log", self.runs));
        self.spawn()
    }

    /// Whether the agent process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- weir agent log ({}) ----\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

impl Bed {
    /// Starts the real `weir agent` like [`Bed::agent`], but authenticating with
    /// `kubeconfig` (for example one for a ServiceAccount token) instead of as the admin.
    pub fn agent_with_kubeconfig(
        &self,
        kubeconfig: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Agent> {
        Agent::start_as(self, kubeconfig, extra)
    }

    /// Starts the real `weir agent` like [`Bed::agent`], but reading metrics from
    /// `prometheus` (for example a proxy that injects faults) instead of the bed's.
    pub fn agent_with_prometheus(&self, prometheus: &str, extra: &[&str]) -> anyhow::Result<Agent> {
        Agent::start_full(
            self,
            self.control_plane.kubeconfig_path(),
            prometheus,
            extra,
        )
    }
}

/// How one run of the `weir` CLI ended, and what it printed.
#[derive(Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Bed {
    /// Runs the `weir` CLI as a person would: with the bed's kubeconfig in `KUBECONFIG`
    /// and `-n <namespace>` after `args`.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<CliRun> {
        let program = std::path::Path::new(env!("CARGO_BIN_EXE_weir"));
        self.cli_as(program, self.control_plane.kubeconfig_path(), args)
            .await
    }

    /// Runs `program` (the `weir` binary, or a link to it) with `kubeconfig` and `args`
    /// followed by `-n <namespace>`.
    pub async fn cli_as(
        &self,
        program: &std::path::Path,
        kubeconfig: &std::path::Path,
        args: &[&str],
    ) -> anyhow::Result<CliRun> {
        let output = tokio::process::Command::new(program)
            .args(args)
            .args(["-n", &self.namespace])
            .env("KUBECONFIG", kubeconfig)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(DEADLINE * 2, output)
            .await
            .with_context(|| format!("weir {args:?} did not exit"))??;
        Ok(CliRun {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

impl Agent {
    /// The base URL of the agent's admin server (`/metrics`, `/healthz`, `/readyz`).
    pub fn admin_url(&self) -> String {
        let listen = self
            .args
            .iter()
            .skip_while(|arg| *arg != "--listen")
            .nth(1)
            .expect("the agent is started with --listen");
        format!("http://{listen}")
    }

    /// The agent's `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.admin_url()))
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}

/// The value of the series `series` (name and labels exactly as exposed) in `text`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

impl Bed {
    /// Sets a version's simulated mean latency (ms) on its Deployment. (An annotation
    /// change bumps a Deployment's generation, so it is marked Available again, as its
    /// controller would.)
    pub async fn set_latency(
        &self,
        app: &str,
        version: &str,
        latency_ms: u32,
    ) -> anyhow::Result<()> {
        let name = format!("{app}-{version}");
        let patch = json!({"metadata": {"annotations": {"sim.weir.dev/latency-ms": latency_ms.to_string()}}});
        self.deployments()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        mark_deployment_available(&self.client, &self.namespace, &name).await
    }

    /// Creates a ConfigMap in the namespace.
    pub async fn create_config_map(&self, name: &str, data: &[(&str, &str)]) -> anyhow::Result<()> {
        let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name},
            "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        }))?;
        Api::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &cm)
            .await?;
        Ok(())
    }
}

impl Agent {
    /// The agent's process id while it runs (`None` after [`Agent::kill`]).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(OwnedProcess::pid)
    }
}

/// A host-level split: the route is between two Services, `<app>-stable` and
/// `<app>-canary`, each selecting one version, instead of two DestinationRule subsets.
impl App {
    /// An application released by a host-level split between the Services
    /// `<name>-stable` and `<name>-canary` (see [`Bed::deploy_host_split_app`]).
    pub fn host_split(name: &str) -> App {
        App::new(name)
            .with("stable-service", &stable_service(name))
            .with("canary-service", &canary_service(name))
    }
}

/// The Service that selects `app`'s stable version in a host-level split.
pub fn stable_service(app: &str) -> String {
    format!("{app}-stable")
}

/// The Service that selects `app`'s canary version in a host-level split.
pub fn canary_service(app: &str) -> String {
    format!("{app}-canary")
}

/// A VirtualService `<app>` whose route `primary` sends everything to the Service
/// `<app>-stable` (port 80) and has no canary destination yet: weir adds it.
pub fn host_split_virtual_service(app: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": app},
        "spec": {
            "hosts": [app],
            "http": [{
                "name": "primary",
                "route": [{"destination": {"host": stable_service(app), "port": {"number": 80}}, "weight": 100}]
            }]
        }
    })
}

/// (stable, canary) weights of a host-level split's route, its destinations told apart
/// by host (`stable` and `canary` are Service names; any host form of them counts); a
/// missing canary destination is 0.
pub fn host_weights_of(vs: &Value, route: &str, stable: &str, canary: &str) -> Weights {
    let routes = vs["spec"]["http"].as_array().cloned().unwrap_or_default();
    let Some(r) = routes.iter().find(|r| r["name"] == route) else {
        return Weights {
            stable: -1,
            canary: -1,
        };
    };
    let names = |host: &str, service: &str| {
        host == service
            || host
                .strip_prefix(service)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    let mut w = Weights {
        stable: 0,
        canary: 0,
    };
    let dests = r["route"].as_array().cloned().unwrap_or_default();
    let sole = dests.len() == 1;
    for d in dests {
        let weight = d["weight"].as_i64().unwrap_or(if sole { 100 } else { 0 });
        let host = d["destination"]["host"].as_str().unwrap_or_default();
        if names(host, stable) {
            w.stable = weight;
        } else if names(host, canary) {
            w.canary = weight;
        }
    }
    w
}

impl Bed {
    /// Creates a host-level split of `app`: the opted-in Service `<app>` selecting every
    /// version, the Services `<app>-stable` and `<app>-canary` both selecting v1,
    /// Deployment v1 and `route`, a VirtualService (for example
    /// [`host_split_virtual_service`]) or an HTTPRoute (for example
    /// [`host_split_http_route`]). No DestinationRule.
    pub async fn deploy_host_split_app(&self, app: &App, route: &Value) -> anyhow::Result<()> {
        let name = &app.name;
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": app.annotations},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}
        }))?;
        self.services()
            .create(&PostParams::default(), &service)
            .await?;
        for service in [stable_service(name), canary_service(name)] {
            self.create_service(&service, json!({"app": name, "version": "v1"}))
                .await?;
        }
        self.deploy_version(name, "v1", 0.0).await?;
        self.create_dynamic(route).await
    }

    /// Creates a Service `name` (port 80, `http`) that weir does not manage, selecting
    /// the pods labelled `selector`.
    pub async fn create_service(&self, name: &str, selector: Value) -> anyhow::Result<()> {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 80}]}
        }))?;
        self.services()
            .create(&PostParams::default(), &service)
            .await?;
        Ok(())
    }

    /// A Service's `spec.selector` (empty without one).
    pub async fn service_selector(
        &self,
        service: &str,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let svc = self.services().get(service).await?;
        Ok(svc.spec.and_then(|s| s.selector).unwrap_or_default())
    }

    /// The version (the `version` label's value) a Service's selector picks.
    pub async fn selector_version(&self, service: &str) -> anyhow::Result<Option<String>> {
        Ok(self.service_selector(service).await?.remove("version"))
    }

    /// The (stable, canary) weights of the route `primary` of the host-level split of
    /// `app` in VirtualService `vs`, and the whole VirtualService.
    pub async fn host_route(&self, vs: &str, app: &str) -> anyhow::Result<(Weights, Value)> {
        let obj = self.virtual_services().get(vs).await?;
        let value = serde_json::to_value(&obj)?;
        let weights = host_weights_of(
            &value,
            "primary",
            &stable_service(app),
            &canary_service(app),
        );
        Ok((weights, value))
    }

    /// Records the weights of the host-level split of `app` in `vs`, as
    /// [`Bed::record_weights`] does for subsets.
    pub fn record_host_weights(&self, vs: &str, app: &str) -> WeightLog {
        let (stable, canary) = (stable_service(app), canary_service(app));
        self.record_weights_by(vs, move |value| {
            host_weights_of(value, "primary", &stable, &canary)
        })
    }

    /// After an abort of `app`'s host-level split, whatever the route object: the
    /// stable Service still selects v1, and well past a 2 s scale-down delay v1 keeps
    /// its replica and the rollout is still Aborted.
    pub async fn assert_split_abort_holds(&self, app: &str, mode: &str) -> anyhow::Result<()> {
        assert_eq!(
            self.selector_version(&stable_service(app))
                .await?
                .as_deref(),
            Some("v1"),
            "{mode}: the stable Service after the abort"
        );
        // Nothing is scaled down after an abort, well past the scale-down delay.
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        assert_eq!(
            self.replicas(&format!("{app}-v1")).await?,
            Some(1),
            "{mode}"
        );
        assert_eq!(
            self.status(app).await?.map(|s| s.phase),
            Some(weir::plan::Phase::Aborted)
        );
        Ok(())
    }

    /// A finished promotion of a host-level split as the cluster shows it: `app`'s route
    /// keeps both destinations, stable at 100 and canary at 0, and the stable Service
    /// selects `version`.
    pub async fn assert_host_split_promoted(&self, app: &str, version: &str) -> anyhow::Result<()> {
        let (live, vs) = self.host_route(app, app).await?;
        anyhow::ensure!(
            live == Weights {
                stable: 100,
                canary: 0
            },
            "the route of {app} is {live:?}, not 100/0"
        );
        let primary = vs["spec"]["http"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == "primary");
        let destinations = primary.map(|r| r["route"].clone()).unwrap_or_default();
        anyhow::ensure!(
            destinations.as_array().map(Vec::len) == Some(2),
            "the route of {app} does not keep its two destinations: {destinations}"
        );
        let stable = self.selector_version(&stable_service(app)).await?;
        anyhow::ensure!(
            stable.as_deref() == Some(version),
            "the stable Service of {app} selects {stable:?}, not {version}"
        );
        Ok(())
    }
}

/// A host-level split through a Gateway API HTTPRoute (GAMMA: attached to the opted-in
/// Service) instead of a VirtualService: the managed rule's backendRefs are the Services
/// `<app>-stable` and `<app>-canary`.
impl Bed {
    pub fn http_routes(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
        Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &ApiResource::from_gvk(&gvk),
        )
    }

    /// The HTTPRoute `name` as the apiserver stores it (defaults filled in).
    pub async fn http_route_value(&self, name: &str) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(self.http_routes().get(name).await?)?)
    }

    /// The (stable, canary) weights of the rule `primary` of the host-level split of
    /// `app` in HTTPRoute `name` (see [`http_route_weights_of`]), and the whole HTTPRoute.
    pub async fn http_route(&self, name: &str, app: &str) -> anyhow::Result<(Weights, Value)> {
        let value = self.http_route_value(name).await?;
        let weights = http_route_weights_of(
            &value,
            "primary",
            &stable_service(app),
            &canary_service(app),
        );
        Ok((weights, value))
    }

    /// Records the weights of the host-level split of `app` in the rule `primary` of
    /// HTTPRoute `name`, as [`Bed::record_host_weights`] does for a VirtualService.
    pub fn record_http_route_weights(&self, name: &str, app: &str) -> WeightLog {
        let (stable, canary) = (stable_service(app), canary_service(app));
        self.record_object_weights_by(self.http_routes(), name, move |value| {
            http_route_weights_of(value, "primary", &stable, &canary)
        })
    }

    /// A finished promotion of a host-level split through HTTPRoute `app` as the cluster
    /// shows it: the rule `primary` keeps both backendRefs, stable at 100 and canary at
    /// 0, and the stable Service selects `version`.
    pub async fn assert_http_route_split_promoted(
        &self,
        app: &str,
        version: &str,
    ) -> anyhow::Result<()> {
        let (live, route) = self.http_route(app, app).await?;
        anyhow::ensure!(
            live == Weights {
                stable: 100,
                canary: 0
            },
            "the rule of {app} is {live:?}, not 100/0"
        );
        let backends = http_route_rule(&route, "primary")
            .map(|r| r["backendRefs"].clone())
            .unwrap_or_default();
        anyhow::ensure!(
            backends.as_array().map(Vec::len) == Some(2),
            "the rule of {app} does not keep its two backendRefs: {backends}"
        );
        let stable = self.selector_version(&stable_service(app)).await?;
        anyhow::ensure!(
            stable.as_deref() == Some(version),
            "the stable Service of {app} selects {stable:?}, not {version}"
        );
        Ok(())
    }
}

/// An HTTPRoute `<app>` attached to the Service `<app>` (GAMMA: `parentRefs` to a core
/// Service, port 80) whose rule `primary` sends everything to the Service `<app>-stable`
/// (port 80) and has no canary backendRef yet: weir adds it. The backendRef's weight is
/// left out, so the apiserver stores its default, 1 (all of the traffic).
pub fn host_split_http_route(app: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": app},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": app, "port": 80}],
            "rules": [{
                "name": "primary",
                "backendRefs": [{"name": stable_service(app), "port": 80}]
            }]
        }
    })
}

/// The rule named `rule` of an HTTPRoute.
pub fn http_route_rule<'a>(route: &'a Value, rule: &str) -> Option<&'a Value> {
    route["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == rule)
}

/// (stable, canary) weights of a host-level split's HTTPRoute rule `rule` (-1, -1
/// without it), its backendRefs told apart by name (`stable` and `canary` are Service
/// names; a backendRef of another kind, or of a namespace other than the HTTPRoute's,
/// does not count). A missing weight
/// is 1 (Gateway API's default); a missing canary backendRef is 0. A sole backendRef
/// with a weight above 0 has all the traffic and counts as 100, whatever its weight;
/// with several, the weights are read as written (weir writes percentages).
pub fn http_route_weights_of(route: &Value, rule: &str, stable: &str, canary: &str) -> Weights {
    let Some(r) = http_route_rule(route, rule) else {
        return Weights {
            stable: -1,
            canary: -1,
        };
    };
    let backends = r["backendRefs"].as_array().cloned().unwrap_or_default();
    let sole = backends.len() == 1;
    let mut w = Weights {
        stable: 0,
        canary: 0,
    };
    for b in backends {
        let service = b["group"].as_str().unwrap_or("").is_empty()
            && b["kind"].as_str().unwrap_or("Service") == "Service"
            && b.get("namespace")
                .is_none_or(|ns| *ns == route["metadata"]["namespace"]);
        if !service {
            continue;
        }
        let weight = b["weight"].as_i64().unwrap_or(1);
        let weight = if sole && weight > 0 { 100 } else { weight };
        match b["name"].as_str() {
            Some(name) if name == stable => w.stable = weight,
            Some(name) if name == canary => w.canary = weight,
            _ => {}
        }
    }
    w
}

/// An HTTPRoute's `spec` without any backendRef's weight: what weir must never change.
pub fn http_route_spec_without_weights(spec: &Value) -> Value {
    let mut spec = spec.clone();
    for rule in spec["rules"].as_array_mut().into_iter().flatten() {
        *rule = http_route_rule_without_weights(rule);
    }
    spec
}

/// An HTTPRoute rule without its backendRefs' weights.
pub fn http_route_rule_without_weights(rule: &Value) -> Value {
    let mut rule = rule.clone();
    for backend in rule["backendRefs"].as_array_mut().into_iter().flatten() {
        if let Some(backend) = backend.as_object_mut() {
            backend.remove("weight");
        }
    }
    rule
}
