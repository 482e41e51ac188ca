//! `make demo`: weir at work in a few minutes, without a cluster.
//!
//! On the test bed (a real kube-apiserver with Istio's CRDs, the traffic simulator
//! standing in for the data plane, and Prometheus scraping it) the demo deploys the
//! application of `manifests/checkout.yaml`, starts the real `weir agent`, then releases
//! a healthy v2, which is promoted step by step, and a v3 that fails one request in five,
//! which is aborted at its first step. Each release is followed with `weir watch`, as a
//! person or a pipeline would. Everything it starts is stopped when it returns.
//!
//! [`Options::short`] is CI's mode: fast timings, and the commands' output captured
//! (and printed after each command) rather than shown live.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::{Client, ResourceExt};
use serde::Deserialize as _;
use weir_simulator::{Simulator, SimulatorConfig};
use weir_testbed::{ControlPlane, OwnedProcess, Prometheus, mark_deployment_available, wait_until};

/// The namespace the demo works in.
pub const NAMESPACE: &str = "shop";
/// The demo's Service.
pub const SERVICE: &str = "checkout";

const CHECKOUT: &str = include_str!("../manifests/checkout.yaml");
const CHECKOUT_V2: &str = include_str!("../manifests/checkout-v2.yaml");
const CHECKOUT_V3: &str = include_str!("../manifests/checkout-v3.yaml");

/// The traffic simulator's seed.
const SIMULATOR_SEED: u64 = 2026;

/// Generous: the machine may be a loaded 2-core box.
const AGENT_READY: Duration = Duration::from_secs(120);

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `weir` binary, run as the agent and as the CLI.
    pub weir: PathBuf,
    /// CI's mode: fast timings, output captured.
    pub short: bool,
    /// Keep the cluster, the simulator, Prometheus and the agent running after the
    /// demo, until Ctrl-C, and say how to explore them with kubectl and weir.
    pub keep: bool,
}

/// How one release went.
#[derive(Clone, Debug)]
pub struct Release {
    pub version: &'static str,
    /// `weir watch`'s exit status: 0 promoted, 1 aborted, 2 timed out, 3 error.
    pub watch_exit: Option<i32>,
    /// What `weir watch` printed (empty when it was shown live).
    pub watch_output: String,
    /// The agent's `weir.dev/status` annotation when the watch ended.
    pub status: serde_json::Value,
    /// From deploying the version to the end of the watch.
    pub took: Duration,
}

/// What the demo did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Starting the test bed and the agent.
    pub setup: Duration,
    pub healthy: Release,
    pub faulty: Release,
    /// The agent's `/metrics` lines about rollouts and checks, at the end.
    pub metrics: Vec<String>,
    /// What `weir status` printed at the end.
    pub final_status: String,
}

/// Runs the whole demo and stops everything it started before returning.
pub async fn run(options: &Options) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let timings = if options.short {
        Timings {
            step_interval: "4s",
            check_interval: "2s",
            min_requests: "10",
            watch_timeout: "3m",
        }
    } else {
        Timings {
            step_interval: "20s",
            check_interval: "5s",
            min_requests: "20",
            watch_timeout: "5m",
        }
    };

    step(
        1,
        "Starting a Kubernetes control plane: etcd and kube-apiserver, with Istio's CRDs",
    );
    let control_plane = ControlPlane::start().await?;
    control_plane.create_namespace(NAMESPACE).await?;
    let client = control_plane.client();

    step(
        2,
        "Starting the traffic simulator (it stands in for Istio's data plane) and Prometheus scraping it",
    );
    // Noisy traffic, as a mesh would carry it: weir decides on evidence, not on luck.
    let simulator = Simulator::start(
        client.clone(),
        SimulatorConfig {
            noise: Some(SIMULATOR_SEED),
            ..SimulatorConfig::new(NAMESPACE)
        },
    )
    .await?;
    let prometheus = Prometheus::start(&[simulator.metrics_addr()]).await?;
    prometheus.wait_for_scrape().await?;

    step(
        3,
        &format!(
            "Deploying {SERVICE} v1 in namespace {NAMESPACE}: Service (opted in), Deployment, VirtualService, DestinationRule (tests/demo/manifests/checkout.yaml)"
        ),
    );
    apply(&client, CHECKOUT, &timings).await?;

    step(4, &format!("Starting `weir agent --namespace {NAMESPACE}`"));
    let logs = tempfile::Builder::new().prefix("weir-demo-").tempdir()?;
    let port = weir_testbed::free_port()?;
    let weir = Weir {
        binary: options.weir.clone(),
        kubeconfig: control_plane.kubeconfig_path().to_path_buf(),
        live: !options.short,
    };
    let agent = weir.agent(&prometheus.url(), port, logs.path().join("agent.log"))?;
    let agent_log = logs.path().join("agent.log");
    let ready = wait_for_agent(&client, port).await;
    if let Err(e) = ready {
        bail!(
            "{e:#}\n---- agent log ----\n{}",
            std::fs::read_to_string(&agent_log).unwrap_or_default()
        );
    }
    weir.show(&["status"]).await?;
    let setup = started.elapsed();

    step(
        5,
        "Releasing v2, a healthy version. Following it with `weir watch checkout`:",
    );
    let healthy = release(&client, &weir, "v2", CHECKOUT_V2, &timings).await?;

    // With v2 stable, its team retires v1, as they would after any release: a Deployment
    // that stays Available is a version weir may be asked to release.
    println!(
        "\nv2 is stable; retiring v1:\n$ kubectl delete deployment {SERVICE}-v1 -n {NAMESPACE}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    deployments
        .delete(&format!("{SERVICE}-v1"), &DeleteParams::default())
        .await
        .context("deleting Deployment checkout-v1")?;

    step(
        6,
        "Releasing v3, which fails one request in five. Following it with `weir watch checkout`:",
    );
    let faulty = release(&client, &weir, "v3", CHECKOUT_V3, &timings).await?;

    println!("\n$ weir status -n {NAMESPACE}");
    let final_status = weir.capture(&["status"]).await?;
    print!("{final_status}");
    let metrics = agent_metrics(port).await.unwrap_or_default();

    if options.keep {
        keep_running(&weir, port, &agent_log).await?;
    }
    drop(agent);
    drop(prometheus);
    drop(simulator);
    drop(control_plane);
    Ok(Summary {
        setup,
        healthy,
        faulty,
        metrics,
        final_status,
    })
}

/// Holds everything open until Ctrl-C, after saying how to look around.
async fn keep_running(weir: &Weir, port: u16, agent_log: &std::path::Path) -> anyhow::Result<()> {
    let kubeconfig = weir.kubeconfig.display();
    let kubectl = weir_testbed::kubectl();
    println!(
        "\nThe demo's cluster is still running (WEIR_DEMO_KEEP=1). In another terminal:\n\
         \n  export KUBECONFIG={kubeconfig}\
         \n  {kubectl} -n {NAMESPACE} get virtualservice,destinationrule,deployment,service\
         \n  {kubectl} -n {NAMESPACE} get events --sort-by=.metadata.creationTimestamp\
         \n  {weir} -n {NAMESPACE} status\
         \n  {weir} -n {NAMESPACE} explain {SERVICE}\
         \n  curl -s http://127.0.0.1:{port}/metrics | grep ^weir_\
         \n\nThe agent logs to {log}. Press Ctrl-C to stop everything.",
        kubectl = kubectl.display(),
        weir = weir.binary.display(),
        log = agent_log.display(),
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    println!("\nStopping the demo's cluster.");
    Ok(())
}

/// The Service's timings: the manifest's, or CI's faster ones.
struct Timings {
    step_interval: &'static str,
    check_interval: &'static str,
    min_requests: &'static str,
    watch_timeout: &'static str,
}

fn step(n: u32, what: &str) {
    println!("\n[{n}/6] {what}");
}

/// Deploys one version and follows its rollout with `weir watch`.
async fn release(
    client: &Client,
    weir: &Weir,
    version: &'static str,
    manifest: &str,
    timings: &Timings,
) -> anyhow::Result<Release> {
    let started = Instant::now();
    apply(client, manifest, timings).await?;
    println!("$ weir watch {SERVICE} -n {NAMESPACE}");
    let (watch_exit, watch_output) = weir
        .run(&["watch", SERVICE, "--timeout", timings.watch_timeout])
        .await?;
    let took = started.elapsed();
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let service = services.get(SERVICE).await?;
    let status = service
        .annotations()
        .get("weir.dev/status")
        .map(|raw| serde_json::from_str(raw))
        .transpose()?
        .unwrap_or_default();
    Ok(Release {
        version,
        watch_exit,
        watch_output,
        status,
        took,
    })
}

/// Server-side applies every object of `manifest` in the demo's namespace, with the
/// Service's timings from `timings`, and marks Deployments Available (the test bed has
/// no kubelet).
async fn apply(client: &Client, manifest: &str, timings: &Timings) -> anyhow::Result<()> {
    for document in serde_yaml::Deserializer::from_str(manifest) {
        let mut value = serde_json::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        if value["kind"] == "Service" {
            let annotations = &mut value["metadata"]["annotations"];
            annotations["weir.dev/step-interval"] = timings.step_interval.into();
            annotations["weir.dev/check-interval"] = timings.check_interval.into();
            annotations["weir.dev/min-requests"] = timings.min_requests.into();
        }
        let object: DynamicObject = serde_json::from_value(value.clone())?;
        let types = object
            .types
            .clone()
            .context("a manifest object without apiVersion/kind")?;
        let (group, version) = types
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", &types.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &types.kind);
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), NAMESPACE, &ApiResource::from_gvk(&gvk));
        let name = object.name_any();
        api.patch(
            &name,
            &PatchParams::apply("weir-demo").force(),
            &Patch::Apply(&value),
        )
        .await
        .with_context(|| format!("applying {} {name}", types.kind))?;
        if types.kind == "Deployment" {
            mark_deployment_available(client, NAMESPACE, &name).await?;
        }
    }
    Ok(())
}

/// Ready: `/readyz` answers 200 and the agent has adopted v1 as the stable version.
async fn wait_for_agent(client: &Client, port: u16) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    wait_until(
        "the weir agent to be ready and to adopt v1",
        AGENT_READY,
        || async {
            let ready = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await?
                .status();
            anyhow::ensure!(ready.is_success(), "/readyz answers {ready}");
            let service = services.get(SERVICE).await?;
            let status = service
                .annotations()
                .get("weir.dev/status")
                .context("no weir.dev/status yet")?;
            anyhow::ensure!(status.contains(r#""stable":"v1""#), "status {status}");
            Ok(())
        },
    )
    .await
}

/// The agent's series about rollouts and checks.
async fn agent_metrics(port: u16) -> anyhow::Result<Vec<String>> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("weir_rollouts_total{") || l.starts_with("weir_checks_total{"))
        .map(String::from)
        .collect())
}

/// The `weir` binary, pointed at the demo's cluster and namespace.
struct Weir {
    binary: PathBuf,
    kubeconfig: PathBuf,
    /// Commands print to the terminal as they run, rather than being captured.
    live: bool,
}

impl Weir {
    fn agent(&self, prometheus: &str, port: u16, log: PathBuf) -> anyhow::Result<OwnedProcess> {
        let args: Vec<String> = [
            "agent",
            "--namespace",
            NAMESPACE,
            "--prometheus-url",
            prometheus,
            // The test bed's Prometheus scrapes every second.
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
        OwnedProcess::spawn(
            "weir-agent",
            &self.binary,
            &args,
            &[
                ("KUBECONFIG", self.kubeconfig.as_os_str()),
                ("RUST_LOG", "info,weir=debug,kube=warn".as_ref()),
            ],
            log,
        )
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(args)
            .args(["-n", NAMESPACE])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs `weir <args>`: live on the terminal, or captured and then printed. Returns
    /// the exit status and what was captured.
    async fn run(&self, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
        if self.live {
            let status = self.command(args).status().await?;
            return Ok((status.code(), String::new()));
        }
        let output = self.command(args).output().await?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        print!("{text}");
        Ok((output.status.code(), text))
    }

    /// Runs `weir <args>` after showing the command, and fails if it fails.
    async fn show(&self, args: &[&str]) -> anyhow::Result<()> {
        println!("$ weir {} -n {NAMESPACE}", args.join(" "));
        match self.run(args).await? {
            (Some(0), _) => Ok(()),
            (code, text) => bail!("weir {} exited with {code:?}: {text}", args.join(" ")),
        }
    }

    /// What `weir <args>` prints, which must succeed.
    async fn capture(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.command(args).output().await?;
        anyhow::ensure!(
            output.status.success(),
            "weir {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Summary {
    /// A few lines for people: what happened to each version, and how long it took.
    pub fn describe(&self) -> String {
        let line = |release: &Release| {
            let took = release.took.as_secs();
            let version = release.version;
            match release.watch_exit {
                Some(0) => format!(
                    "  {version}: promoted after {took}s, step by step; it is the stable version"
                ),
                Some(1) => format!(
                    "  {version}: aborted after {took}s; the agent said: {}",
                    release.status["message"].as_str().unwrap_or("nothing")
                ),
                Some(2) => {
                    format!("  {version}: still going when `weir watch` timed out after {took}s")
                }
                code => format!("  {version}: unknown: `weir watch` exited with {code:?}"),
            }
        };
        let mut out = format!(
            "\nSummary (set-up took {}s)\n{}\n{}\n",
            self.setup.as_secs(),
            line(&self.healthy),
            line(&self.faulty)
        );
        if !self.metrics.is_empty() {
            out.push_str("  The agent's /metrics:\n");
            for series in &self.metrics {
                out.push_str(&format!("    {series}\n"));
            }
        }
        out
    }
}
