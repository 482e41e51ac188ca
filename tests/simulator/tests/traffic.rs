//! The simulator against the real test bed: routes in a real kube-apiserver, metrics
//! scraped and aggregated by a real Prometheus.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};
use weir_simulator::objects::{
    destination_rule_resource, http_route_resource, virtual_service_resource,
};
use weir_simulator::{Reporter, Simulator, SimulatorConfig};
use weir_testbed::{ControlPlane, Prometheus, wait_until};

const NAMESPACE: &str = "shop";
const DEADLINE: Duration = Duration::from_secs(60);
/// Faster than the default so a window holds enough requests sooner.
const RPS: f64 = 100.0;
/// Every checkout series the simulator reports.
const CHECKOUT: &str =
    r#"destination_service_name="checkout",destination_workload_namespace="shop""#;

/// How the `checkout` Service and its two versions are set up.
struct Scenario {
    reporter: Reporter,
    /// The weights of the stable and canary destinations.
    weights: (u32, u32),
    /// The version label the canary subset selects.
    canary_version: &'static str,
    /// Annotations on checkout-v2.
    v2_annotations: Value,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            reporter: Reporter::Destination,
            weights: (100, 0),
            canary_version: "v2",
            v2_annotations: json!({}),
        }
    }
}

/// A control plane holding `checkout`, a simulator watching it and a Prometheus
/// scraping the simulator. Fields drop in order: the simulator stops before the
/// servers it talks to.
struct Bed {
    simulator: Simulator,
    prometheus: Prometheus,
    client: Client,
    _control_plane: ControlPlane,
}

impl Bed {
    async fn start(scenario: Scenario) -> anyhow::Result<Bed> {
        let control_plane = checkout_control_plane(&scenario).await?;
        let client = control_plane.client();
        let config = SimulatorConfig {
            reporter: scenario.reporter,
            default_rps: RPS,
            ..SimulatorConfig::new(NAMESPACE)
        };
        let simulator = Simulator::start(client.clone(), config).await?;
        let prometheus = Prometheus::start(&[simulator.metrics_addr()]).await?;
        prometheus.wait_for_scrape().await?;
        Ok(Bed {
            simulator,
            prometheus,
            client,
            _control_plane: control_plane,
        })
    }

    /// The value of each series of `promql`, keyed by the values of `by` joined with `/`.
    async fn sample(&self, promql: &str, by: &[&str]) -> anyhow::Result<BTreeMap<String, f64>> {
        let result = self.prometheus.query(promql).await?;
        let series = result
            .as_array()
            .with_context(|| format!("{promql} did not return a vector: {result}"))?;
        series
            .iter()
            .map(|s| {
                let key: Vec<&str> = by
                    .iter()
                    .map(|label| s["metric"][label].as_str().unwrap_or(""))
                    .collect();
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .with_context(|| format!("unreadable sample {s}"))?;
                Ok((key.join("/"), value))
            })
            .collect()
    }

    /// Requests so far to each checkout version (and response code, if `by_code`).
    async fn requests(&self, by_code: bool) -> anyhow::Result<BTreeMap<String, f64>> {
        let by: &[&str] = if by_code {
            &["destination_version", "response_code"]
        } else {
            &["destination_version"]
        };
        let promql = format!(
            "sum by ({}) (istio_requests_total{{{CHECKOUT}}})",
            by.join(",")
        );
        self.sample(&promql, by).await
    }

    /// Waits until `version` has served at least `at_least` requests, and returns the
    /// counters of the same scrape.
    async fn wait_for_requests(
        &self,
        version: &str,
        at_least: f64,
        by_code: bool,
    ) -> anyhow::Result<BTreeMap<String, f64>> {
        let what = format!("Prometheus to count {at_least} requests to {version}");
        wait_until(&what, DEADLINE, || async {
            let counts = self.requests(by_code).await?;
            let served: f64 = counts
                .iter()
                .filter(|(key, _)| key.split('/').next() == Some(version))
                .map(|(_, n)| n)
                .sum();
            ensure!(served >= at_least, "{counts:?}");
            Ok(counts)
        })
        .await
    }

    async fn set_weights(&self, stable: u32, canary: u32) -> anyhow::Result<()> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), NAMESPACE, &virtual_service_resource());
        let patch = json!({ "spec": { "http": [http_route(stable, canary)] } });
        api.patch("checkout", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .context("patching the checkout VirtualService")?;
        Ok(())
    }
}

fn http_route(stable: u32, canary: u32) -> Value {
    json!({
        "name": "primary",
        "route": [
            { "destination": { "host": "checkout.shop.svc.cluster.local", "subset": "stable" }, "weight": stable },
            { "destination": { "host": "checkout", "subset": "canary" }, "weight": canary }
        ]
    })
}

/// A control plane whose namespace holds checkout as `scenario` describes.
async fn checkout_control_plane(scenario: &Scenario) -> anyhow::Result<ControlPlane> {
    let control_plane = ControlPlane::start().await?;
    control_plane.create_namespace(NAMESPACE).await?;
    create_checkout(&control_plane.client(), scenario).await?;
    Ok(control_plane)
}

async fn create_checkout(client: &Client, scenario: &Scenario) -> anyhow::Result<()> {
    let post = PostParams::default();
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": "checkout" },
        "spec": { "selector": { "app": "checkout" }, "ports": [{ "name": "http", "port": 80 }] }
    }))?;
    Api::<Service>::namespaced(client.clone(), NAMESPACE)
        .create(&post, &service)
        .await
        .context("creating Service checkout")?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
    for (version, annotations) in [("v1", json!({})), ("v2", scenario.v2_annotations.clone())] {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": { "name": format!("checkout-{version}"), "annotations": annotations },
            "spec": {
                "selector": { "matchLabels": { "app": "checkout", "version": version } },
                "template": {
                    "metadata": { "labels": { "app": "checkout", "version": version } },
                    "spec": { "containers": [{ "name": "checkout", "image": format!("checkout:{version}") }] }
                }
            }
        }))?;
        deployments
            .create(&post, &deployment)
            .await
            .with_context(|| format!("creating Deployment checkout-{version}"))?;
    }
    let dr = destination_rule_resource();
    let destination_rule = DynamicObject::new("checkout", &dr).data(json!({
        "spec": {
            "host": "checkout",
            "subsets": [
                { "name": "stable", "labels": { "version": "v1" } },
                { "name": "canary", "labels": { "version": scenario.canary_version } }
            ]
        }
    }));
    Api::<DynamicObject>::namespaced_with(client.clone(), NAMESPACE, &dr)
        .create(&post, &destination_rule)
        .await
        .context("creating DestinationRule checkout")?;
    let vs = virtual_service_resource();
    let (stable, canary) = scenario.weights;
    let virtual_service = DynamicObject::new("checkout", &vs).data(json!({
        "spec": { "hosts": ["checkout"], "http": [http_route(stable, canary)] }
    }));
    Api::<DynamicObject>::namespaced_with(client.clone(), NAMESPACE, &vs)
        .create(&post, &virtual_service)
        .await
        .context("creating VirtualService checkout")?;
    Ok(())
}

fn count(counts: &BTreeMap<String, f64>, key: &str) -> f64 {
    counts.get(key).copied().unwrap_or(0.0)
}

fn total(counts: &BTreeMap<String, f64>) -> f64 {
    counts.values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_share_follows_the_route_weights() -> anyhow::Result<()> {
    let bed = Bed::start(Scenario::default()).await?;

    let before = bed.wait_for_requests("v1", 200.0, false).await?;
    assert_eq!(
        count(&before, "v2"),
        0.0,
        "canary served requests at weight 0: {before:?}"
    );

    bed.set_weights(80, 20).await?;
    // The first scrape that holds canary requests was taken after the change, and so
    // was every request counted from here on.
    let start = bed.wait_for_requests("v2", 1.0, false).await?;
    let end = wait_until("1000 requests after the change", DEADLINE, || async {
        let now = bed.requests(false).await?;
        ensure!(total(&now) - total(&start) >= 1000.0, "{start:?} → {now:?}");
        Ok(now)
    })
    .await?;

    let canary = count(&end, "v2") - count(&start, "v2");
    let share = canary / (total(&end) - total(&start));
    eprintln!("canary share after 100/0 → 80/20: {share:.4} ({start:?} → {end:?})");
    assert!(
        (share - 0.20).abs() <= 0.05,
        "canary share {share:.3} is not 20% ± 5 points ({start:?} → {end:?})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_error_rate_and_latency_show_in_prometheus() -> anyhow::Result<()> {
    let bed = Bed::start(Scenario {
        weights: (50, 50),
        v2_annotations: json!({ "sim.weir.dev/error-rate": "10%", "sim.weir.dev/latency-ms": "200" }),
        ..Scenario::default()
    })
    .await?;

    let start = bed.wait_for_requests("v2", 1.0, true).await?;
    let end = wait_until("1000 requests to v2", DEADLINE, || async {
        let now = bed.requests(true).await?;
        let v2 = |c: &BTreeMap<String, f64>| count(c, "v2/200") + count(c, "v2/500");
        ensure!(v2(&now) - v2(&start) >= 1000.0, "{start:?} → {now:?}");
        Ok(now)
    })
    .await?;

    let delta = |key: &str| count(&end, key) - count(&start, key);
    let share = delta("v2/500") / (delta("v2/200") + delta("v2/500"));
    eprintln!("v2 5xx share at 10%: {share:.4} ({start:?} → {end:?})");
    assert!(
        (share - 0.10).abs() <= 0.03,
        "v2 5xx share {share:.3} is not 10% ± 3 points ({start:?} → {end:?})"
    );
    assert_eq!(count(&end, "v1/500"), 0.0, "v1 has no error rate: {end:?}");

    let mean = bed
        .sample(
            &format!(
                "sum by (destination_version) (istio_request_duration_milliseconds_sum{{{CHECKOUT}}}) \
                 / sum by (destination_version) (istio_request_duration_milliseconds_count{{{CHECKOUT}}})"
            ),
            &["destination_version"],
        )
        .await?;
    let (v1_mean, v2_mean) = (count(&mean, "v1"), count(&mean, "v2"));
    eprintln!(
        "mean latency: v1 {v1_mean:.2} ms (20 configured), v2 {v2_mean:.2} ms (200 configured)"
    );
    assert!(
        (18.0..=22.0).contains(&v1_mean),
        "v1 mean latency {v1_mean} ms, configured 20 (default)"
    );
    assert!(
        (180.0..=220.0).contains(&v2_mean),
        "v2 mean latency {v2_mean} ms, configured 200"
    );

    // v2's latencies spread over [100, 300] ms: Istio's buckets at 100, 250 and 500 ms
    // hold none, three quarters and all of them.
    let buckets = bed
        .sample(
            &format!(
                r#"sum by (le) (istio_request_duration_milliseconds_bucket{{{CHECKOUT},destination_version="v2"}})"#
            ),
            &["le"],
        )
        .await?;
    // Bounds are compared as numbers: OpenMetrics writes `le="100.0"`.
    let bucket = |le: f64| {
        buckets
            .iter()
            .find(|(bound, _)| bound.parse::<f64>().ok() == Some(le))
            .map_or(0.0, |(_, n)| *n)
    };
    let all = bucket(f64::INFINITY);
    let below = |le: f64| bucket(le) / all;
    assert!(all > 0.0 && below(100.0) < 0.01, "{buckets:?}");
    assert!((0.70..=0.80).contains(&below(250.0)), "{buckets:?}");
    assert_eq!(below(500.0), 1.0, "{buckets:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_reporter_labels_every_series_and_unresolved_subsets_drop() -> anyhow::Result<()> {
    let bed = Bed::start(Scenario {
        reporter: Reporter::Waypoint,
        weights: (50, 50),
        // No Deployment carries version v3: the canary destination resolves to nothing.
        canary_version: "v3",
        ..Scenario::default()
    })
    .await?;

    bed.wait_for_requests("v1", 200.0, false).await?;
    let reporters = bed
        .sample("count by (reporter) (istio_requests_total)", &["reporter"])
        .await?;
    assert_eq!(
        reporters.keys().collect::<Vec<_>>(),
        ["waypoint"],
        "{reporters:?}"
    );

    wait_until(
        "the simulator to drop 200 canary requests",
        DEADLINE,
        || async {
            let dropped = bed.simulator.dropped_requests();
            ensure!(dropped >= 200, "{dropped} dropped");
            Ok(())
        },
    )
    .await?;
    let versions = bed.requests(false).await?;
    assert_eq!(versions.keys().collect::<Vec<_>>(), ["v1"], "{versions:?}");
    wait_until("Prometheus to count dropped requests", DEADLINE, || async {
        let dropped = bed.sample("simulator_dropped_requests_total", &[]).await?;
        let dropped = dropped
            .get("")
            .copied()
            .ok_or_else(|| anyhow!("no series yet"))?;
        ensure!(dropped > 0.0, "{dropped}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_metrics_until_sigterm() -> anyhow::Result<()> {
    let control_plane = checkout_control_plane(&Scenario::default()).await?;
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, weir_testbed::free_port()?));
    let mut simulator = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir-simulator"))
        .args([
            "--namespace",
            NAMESPACE,
            "--reporter",
            "waypoint",
            "--rps",
            "20",
        ])
        .arg("--listen")
        .arg(listen.to_string())
        .env("KUBECONFIG", control_plane.kubeconfig_path())
        .kill_on_drop(true)
        .spawn()
        .context("starting weir-simulator")?;
    let prometheus = Prometheus::start(&[listen]).await?;
    prometheus.wait_for_scrape().await?;
    wait_until("Prometheus to count requests the binary simulated", DEADLINE, || async {
        let served = prometheus
            .query(&format!(r#"istio_requests_total{{{CHECKOUT},reporter="waypoint",destination_version="v1"}} > 0"#))
            .await?;
        ensure!(served.as_array().is_some_and(|s| !s.is_empty()), "{served}");
        Ok(())
    })
    .await?;

    let pid = simulator.id().context("weir-simulator exited early")?;
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(signalled.success(), "kill -TERM {pid} failed");
    let status = tokio::time::timeout(DEADLINE, simulator.wait())
        .await
        .context("weir-simulator did not stop on SIGTERM")??;
    assert!(
        status.success(),
        "weir-simulator exited with {status} on SIGTERM"
    );
    Ok(())
}

/// A Gateway API HTTPRoute rule between two Services, each selecting one version, at
/// weights that are not percentages: the apiserver defaults the stable backendRef's
/// missing weight to 1 and the canary's is 3, so v2 serves three requests in four,
/// reported under the canary Service's name. The VirtualService's route to `checkout`
/// goes on beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_route_splits_in_proportion_to_its_backend_weights() -> anyhow::Result<()> {
    let bed = Bed::start(Scenario::default()).await?;
    let services = Api::<Service>::namespaced(bed.client.clone(), NAMESPACE);
    for (name, version) in [("checkout-stable", "v1"), ("checkout-canary", "v2")] {
        let service: Service = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": {
                "selector": { "app": "checkout", "version": version },
                "ports": [{ "name": "http", "port": 80 }]
            }
        }))?;
        services
            .create(&PostParams::default(), &service)
            .await
            .with_context(|| format!("creating Service {name}"))?;
    }
    let hr = http_route_resource();
    let route = DynamicObject::new("checkout", &hr).data(json!({
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout", "port": 80 }],
            "rules": [{
                "backendRefs": [
                    { "name": "checkout-stable", "port": 80 },
                    { "name": "checkout-canary", "port": 80, "weight": 3 }
                ]
            }]
        }
    }));
    let created = Api::<DynamicObject>::namespaced_with(bed.client.clone(), NAMESPACE, &hr)
        .create(&PostParams::default(), &route)
        .await
        .context("creating HTTPRoute checkout")?;
    assert_eq!(
        created.data["spec"]["rules"][0]["backendRefs"][0]["weight"],
        json!(1),
        "the apiserver's default weight"
    );

    let split = r#"sum by (destination_service_name, destination_version) (istio_requests_total{destination_service_name=~"checkout-(stable|canary)"})"#;
    let by = ["destination_service_name", "destination_version"];
    let start = wait_until("requests through the HTTPRoute", DEADLINE, || async {
        let now = bed.sample(split, &by).await?;
        ensure!(
            count(&now, "checkout-stable/v1") > 0.0 && count(&now, "checkout-canary/v2") > 0.0,
            "{now:?}"
        );
        Ok(now)
    })
    .await?;
    let end = wait_until("1000 requests through the HTTPRoute", DEADLINE, || async {
        let now = bed.sample(split, &by).await?;
        ensure!(total(&now) - total(&start) >= 1000.0, "{start:?} → {now:?}");
        Ok(now)
    })
    .await?;
    assert_eq!(
        end.keys().collect::<Vec<_>>(),
        ["checkout-canary/v2", "checkout-stable/v1"],
        "each Service reports the one version it selects"
    );
    let canary = count(&end, "checkout-canary/v2") - count(&start, "checkout-canary/v2");
    let share = canary / (total(&end) - total(&start));
    eprintln!("canary share at HTTPRoute weights 1:3: {share:.4} ({start:?} → {end:?})");
    assert!(
        (share - 0.75).abs() <= 0.05,
        "canary share {share:.3} is not 75% ± 5 points ({start:?} → {end:?})"
    );
    // The VirtualService's route to `checkout` is simulated beside the HTTPRoute.
    bed.wait_for_requests("v1", 1.0, false).await?;
    Ok(())
}
