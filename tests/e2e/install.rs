//! The Helm chart on the test bed: it lints, renders with defaults and with every option
//! set, and the apiserver accepts what it renders; `values.schema.json` refuses bad
//! values; and the agent, given only the chart's ServiceAccount and Role, completes a
//! promotion and an abort while everything outside its namespace is denied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::pinned_kind;
use kube::{Client, ResourceExt};
use serde::Deserialize as _;
use serde_json::{Value, json};
use weir::plan::Phase;
use weir_testbed::{ControlPlane, testbed_dir, wait_until};

use crate::support::{App, Bed, DEADLINE};

/// The release name every test renders with: objects are named `weir`.
const RELEASE: &str = "weir";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/weir")
}

pub(crate) fn helm(args: &[&str]) -> anyhow::Result<Output> {
    let helm = testbed_dir().join("bin/helm");
    ensure!(
        helm.is_file(),
        "{} is missing: run `make testbed`",
        helm.display()
    );
    Command::new(&helm)
        .args(args)
        .output()
        .with_context(|| format!("running {}", helm.display()))
}

/// `helm template` of the chart into `namespace` with `values` (YAML, may be empty):
/// every rendered object, in order.
fn render(namespace: &str, values: &str, set: &[&str]) -> anyhow::Result<Vec<Value>> {
    let dir = tempfile::tempdir()?;
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, values)?;
    let chart = chart();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--values",
        values_file.to_str().unwrap(),
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    helm_template(&args)
}

/// `helm template` with `args` (which start with `template`): every rendered object, in
/// order.
pub(crate) fn helm_template(args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let out = helm(args)?;
    ensure!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(document).context("parsing helm's output")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// `helm template` with `values` must fail; returns helm's stderr.
fn refused(values: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, values)?;
    let chart = chart();
    let out = helm(&[
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--values",
        values_file.to_str().unwrap(),
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success(),
        "helm accepted {values:?}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(stderr)
}

fn find<'a>(objects: &'a [Value], kind: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .ok_or_else(|| anyhow!("no {kind} rendered"))
}

/// Server-side apply of `object` (strict field validation: an unknown or misspelt field
/// is an error), for real or as a dry run.
async fn apply(
    client: &Client,
    namespace: &str,
    object: &Value,
    dry_run: bool,
) -> anyhow::Result<()> {
    let (api_version, kind) = (
        object["apiVersion"].as_str().unwrap_or(""),
        object["kind"].as_str().unwrap_or(""),
    );
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {api_version} {kind}"))?;
    let api: Api<DynamicObject> = match capabilities.scope {
        kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let mut params = PatchParams::apply("weir-chart-test").validation_strict();
    if dry_run {
        params = params.dry_run();
    }
    api.patch(name, &params, &Patch::Apply(object))
        .await
        .with_context(|| format!("applying {kind} {name:?} (dry run: {dry_run})"))?;
    Ok(())
}

/// The Prometheus Operator's own ServiceMonitor CRD, which `make testbed` takes from the
/// operator's module (`tests/testbed/versions.env`). With strict field validation, the
/// apiserver refuses any field of the chart's ServiceMonitor that the operator lacks.
fn service_monitor_crd() -> anyhow::Result<Value> {
    let path =
        testbed_dir().join("crds/prometheus-operator/monitoring.coreos.com_servicemonitors.yaml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}: run `make testbed`", path.display()))?;
    let crd: Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    ensure!(
        crd["kind"] == "CustomResourceDefinition",
        "{} is not a CRD",
        path.display()
    );
    Ok(crd)
}

async fn install_service_monitor_crd(control_plane: &ControlPlane) -> anyhow::Result<()> {
    let client = control_plane.client();
    apply(&client, "", &service_monitor_crd()?, false).await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    wait_until(
        "the ServiceMonitor CRD to be Established",
        DEADLINE,
        || async {
            let crd = crds.get("servicemonitors.monitoring.coreos.com").await?;
            let established = crd
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                Ok(())
            } else {
                Err(anyhow!("not yet Established"))
            }
        },
    )
    .await
}

/// Every option set; bearer-token auth and a CA from a ConfigMap.
const EVERY_OPTION_BEARER: &str = r#"
image:
  repository: registry.example/platform/weir
  tag: "1.2.3"
  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  pullPolicy: Always
imagePullSecrets:
  - name: registry-credentials
replicas: 2
leaderElection:
  enabled: true
  leaseName: weir-leader
  leaseDuration: 20s
prometheus:
  url: https://mimir.example:8443/prometheus
  tenant: team-a
  auth:
    bearerToken:
      secretName: mimir-token
      key: token
  ca:
    configMap:
      name: mimir-ca
      key: ca.pem
  queryTimeout: 5s
  scrapeInterval: 30s
mode: ambient
notifications:
  webhook:
    secretName: team-hooks
    key: url
  slack:
    secretName: team-slack
    key: slack-url
  link: "https://grafana.example/d/weir?var-namespace={namespace}&var-service={service}"
defaults:
  stableSubset: primary
  canarySubset: candidate
  versionLabel: app.kubernetes.io/version
  steps: "5,20,60,100"
  stepInterval: 2m
  checkInterval: 20s
  maxErrorRate: 0.5%
  errorCodes: "5..|429"
  maxLatency: 250ms
  latencyQuantile: 0.95
  minRequests: 200
  failureLimit: 3
  noDataTimeout: 15m
  analysis: threshold
  tolerance: 25%
  confidence: 99.9%
  decisionTimeout: 45m
  scaleDownDelay: never
  maxSlowShare: 5%
  slowThreshold: 250ms
logFormat: text
logLevel: debug,kube=info
dryRun: true
adminPort: 9095
service:
  type: ClusterIP
  port: 9095
  annotations:
    example.com/owner: platform
serviceMonitor:
  enabled: true
  interval: 15s
  scrapeTimeout: 5s
  labels:
    release: prometheus
serviceAccount:
  create: true
  name: weir-agent
  annotations:
    example.com/role: weir
resources:
  requests:
    cpu: 50m
    memory: 64Mi
  limits:
    cpu: "1"
    memory: 128Mi
podAnnotations:
  sidecar.istio.io/inject: "false"
podLabels:
  team: platform
priorityClassName: platform-critical
nodeSelector:
  kubernetes.io/os: linux
tolerations:
  - key: dedicated
    operator: Equal
    value: platform
    effect: NoSchedule
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              app.kubernetes.io/name: weir
"#;

/// The other branches: basic auth and a CA from a Secret, with a ServiceAccount that
/// is not created by the chart.
const EVERY_OPTION_BASIC: &str = r#"
prometheus:
  url: http://prometheus.monitoring:9090
  auth:
    basic:
      secretName: prometheus-basic
      usernameKey: user
      passwordKey: pass
  ca:
    secret:
      name: prometheus-ca
      key: bundle.crt
serviceAccount:
  create: false
  name: existing-agent
"#;

fn container(objects: &[Value]) -> anyhow::Result<&Value> {
    Ok(&find(objects, "Deployment")?["spec"]["template"]["spec"]["containers"][0])
}

fn args(objects: &[Value]) -> anyhow::Result<Vec<String>> {
    Ok(container(objects)?["args"]
        .as_array()
        .ok_or_else(|| anyhow!("the container has no args"))?
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect())
}

/// Runs the real `weir` with the container's args, the Pod's mounted files replaced by
/// local copies, and a kubeconfig that does not exist: it must get past every flag and
/// fail only where it needs the cluster. This is what proves that the chart's flags
/// are the agent's.
fn agent_accepts(args: &[String], env: &[(&str, &str)], files: &Path) -> anyhow::Result<()> {
    let local: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace(
                "/var/run/secrets/weir/prometheus-token/",
                &format!("{}/", files.display()),
            )
            .replace("/etc/weir/prometheus-ca/", &format!("{}/", files.display()))
            .replace(
                "/var/run/secrets/weir/notify-webhook/",
                &format!("{}/", files.display()),
            )
            .replace(
                "/var/run/secrets/weir/notify-slack/",
                &format!("{}/", files.display()),
            )
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(&local)
        .env_clear()
        .env("KUBECONFIG", files.join("no-such-kubeconfig"))
        .envs(env.iter().copied())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("cannot configure a Kubernetes client"),
        "the agent should accept the rendered flags and stop only at the missing cluster; \
         it exited {} with:\n{stderr}",
        out.status
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn chart_lints_and_every_rendering_is_accepted_by_the_apiserver() -> anyhow::Result<()> {
    let chart = chart();
    let lint = helm(&["lint", "--strict", chart.to_str().unwrap()])?;
    ensure!(
        lint.status.success(),
        "helm lint --strict failed:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let control_plane = ControlPlane::start().await?;
    let client = control_plane.client();
    control_plane.create_namespace("shop").await?;
    install_service_monitor_crd(&control_plane).await?;

    let files = tempfile::tempdir()?;
    std::fs::write(files.path().join("token"), "a-token")?;
    std::fs::write(files.path().join("ca.pem"), control_plane.ca_pem())?;
    std::fs::write(files.path().join("bundle.crt"), control_plane.ca_pem())?;
    std::fs::write(files.path().join("url"), "https://hooks.example/weir\n")?;
    std::fs::write(
        files.path().join("slack-url"),
        "https://chat.example/services/T/B/x",
    )?;

    // Defaults: one replica, no leader election, Recreate so that two never overlap.
    let defaults = render("shop", "", &[])?;
    let kinds: Vec<&str> = defaults.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment"
        ]
    );
    for object in &defaults {
        apply(&client, "shop", object, true).await?;
        let labels = &object["metadata"]["labels"];
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ] {
            assert!(
                labels[key].is_string(),
                "{} has no {key} label",
                object["kind"]
            );
        }
    }
    let deployment = find(&defaults, "Deployment")?;
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = container(&defaults)?;
    let security = &c["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    assert_eq!(
        c["env"][0],
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    );
    let default_args = args(&defaults)?;
    assert!(
        default_args.contains(&"--namespace=shop".to_string()),
        "{default_args:?}"
    );
    assert!(
        !default_args
            .iter()
            .any(|a| a.starts_with("--leader-election") || a.contains("slow")),
        "{default_args:?}"
    );
    assert!(
        default_args.contains(&"--default-error-codes=5..".to_string()),
        "{default_args:?}"
    );
    agent_accepts(&default_args, &[("POD_NAME", "weir-0")], files.path())?;
    let role = find(&defaults, "Role")?;
    println!(
        "the chart's Role rules (defaults):\n{}",
        serde_yaml::to_string(&role["rules"])?
    );

    // Every option, bearer token + CA ConfigMap.
    let every = render("shop", EVERY_OPTION_BEARER, &[])?;
    let kinds: Vec<&str> = every.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
            "ServiceMonitor"
        ]
    );
    for object in &every {
        apply(&client, "shop", object, true).await?;
    }
    let every_args = args(&every)?;
    for expected in [
        "--namespace=shop",
        "--prometheus-url=https://mimir.example:8443/prometheus",
        "--prometheus-tenant=team-a",
        "--prometheus-bearer-token-file=/var/run/secrets/weir/prometheus-token/token",
        "--prometheus-ca-file=/etc/weir/prometheus-ca/ca.pem",
        "--query-timeout=5s",
        "--scrape-interval=30s",
        "--mode=ambient",
        "--default-stable-subset=primary",
        "--default-canary-subset=candidate",
        "--default-version-label=app.kubernetes.io/version",
        "--default-steps=5,20,60,100",
        "--default-step-interval=2m",
        "--default-check-interval=20s",
        "--default-max-error-rate=0.5%",
        "--default-error-codes=5..|429",
        "--default-max-slow-share=5%",
        "--default-slow-threshold=250ms",
        "--default-max-latency=250ms",
        "--default-latency-quantile=0.95",
        "--default-min-requests=200",
        "--default-failure-limit=3",
        "--default-no-data-timeout=15m",
        "--default-analysis=threshold",
        "--default-tolerance=25%",
        "--default-confidence=99.9%",
        "--default-decision-timeout=45m",
        "--default-scale-down-delay=never",
        "--log-format=text",
        "--listen=0.0.0.0:9095",
        "--dry-run",
        "--leader-election",
        "--lease-name=weir-leader",
        "--lease-duration=20s",
        "--notify-webhook-url-file=/var/run/secrets/weir/notify-webhook/url",
        "--notify-slack-url-file=/var/run/secrets/weir/notify-slack/slack-url",
        "--notify-link=https://grafana.example/d/weir?var-namespace={namespace}&var-service={service}",
    ] {
        assert!(
            every_args.iter().any(|a| a == expected),
            "no {expected} in {every_args:?}"
        );
    }
    agent_accepts(&every_args, &[("POD_NAME", "weir-0")], files.path())?;
    let deployment = find(&every, "Deployment")?;
    assert_eq!(deployment["spec"]["replicas"], 2);
    let volumes = serde_json::to_string(&deployment["spec"]["template"]["spec"]["volumes"])?;
    for expected in [
        r#"{"name":"notify-webhook","secret":{"items":[{"key":"url","path":"url"}],"secretName":"team-hooks"}}"#,
        r#"{"name":"notify-slack","secret":{"items":[{"key":"slack-url","path":"slack-url"}],"secretName":"team-slack"}}"#,
    ] {
        assert!(volumes.contains(expected), "no {expected} in {volumes}");
    }
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    let image = container(&every)?["image"].as_str().unwrap_or_default();
    assert!(
        image.starts_with("registry.example/platform/weir@sha256:"),
        "{image}"
    );
    let role = find(&every, "Role")?;
    let lease_rule = role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["resources"] == json!(["leases"]) && r["resourceNames"].is_array())
        .ok_or_else(|| anyhow!("no lease rule narrowed to the Lease's name"))?;
    assert_eq!(lease_rule["resourceNames"], json!(["weir-leader"]));
    let monitor = find(&every, "ServiceMonitor")?;
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        find(&every, "Service")?["spec"]["ports"][0]["name"]
    );

    // The other branches: basic auth, CA Secret, an existing ServiceAccount.
    let basic = render("shop", EVERY_OPTION_BASIC, &[])?;
    let kinds: Vec<&str> = basic.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds, ["Role", "RoleBinding", "Service", "Deployment"]);
    for object in &basic {
        apply(&client, "shop", object, true).await?;
    }
    assert_eq!(
        find(&basic, "Deployment")?["spec"]["template"]["spec"]["serviceAccountName"],
        "existing-agent"
    );
    let env = serde_json::to_string(&container(&basic)?["env"])?;
    for expected in [
        r#""WEIR_PROMETHEUS_USERNAME""#,
        r#""key":"user""#,
        r#""WEIR_PROMETHEUS_PASSWORD""#,
        r#""key":"pass""#,
    ] {
        assert!(env.contains(expected), "no {expected} in {env}");
    }
    agent_accepts(
        &args(&basic)?,
        &[
            ("POD_NAME", "weir-0"),
            ("WEIR_PROMETHEUS_USERNAME", "u"),
            ("WEIR_PROMETHEUS_PASSWORD", "p"),
        ],
        files.path(),
    )?;
    Ok(())
}

#[test]
fn invalid_values_are_refused_naming_the_value() -> anyhow::Result<()> {
    let cases: &[(&str, &[&str])] = &[
        (
            "mode: sidecars",
            &["/mode", "'sidecars'", "sidecar|ambient"],
        ),
        ("replicas: -1", &["/replicas", "-1"]),
        (
            "prometheus:\n  url: prometheus:9090",
            &["/prometheus/url", "'prometheus:9090'"],
        ),
        (
            "prometheus:\n  url: http://prom:9090\n  tennant: team-a",
            &["/prometheus", "'tennant'"],
        ),
        ("replica: 2", &["'replica'"]),
        ("logFormat: xml", &["/logFormat", "'xml'"]),
        (
            "defaults:\n  maxErrorRate: \"0.01\"",
            &["/defaults/maxErrorRate", "'0.01'"],
        ),
        (
            "defaults:\n  errorCodes: 5xx",
            &["/defaults/errorCodes", "'5xx'"],
        ),
        (
            "defaults:\n  maxSlowShare: \"0.05\"",
            &["/defaults/maxSlowShare", "'0.05'"],
        ),
        (
            "defaults:\n  failureLimit: 0",
            &["/defaults/failureLimit", "0"],
        ),
        (
            "defaults:\n  analysis: bayesian",
            &["/defaults/analysis", "'sequential', 'threshold'"],
        ),
        (
            "defaults:\n  tolerance: \"0.5\"",
            &["/defaults/tolerance", "'0.5'"],
        ),
        (
            "notifications:\n  link: grafana.example/d/weir",
            &["/notifications/link", "'grafana.example/d/weir'"],
        ),
        (
            "notifications:\n  teams:\n    secretName: hooks",
            &["/notifications", "'teams'"],
        ),
        (
            "leaderElection:\n  enabled: false\nreplicas: 2",
            &["replicas is 2", "leaderElection.enabled is false"],
        ),
        (
            "prometheus:\n  auth:\n    bearerToken:\n      secretName: a\n    basic:\n      secretName: b",
            &["bearerToken.secretName or basic.secretName"],
        ),
    ];
    for (values, expected) in cases {
        let stderr = refused(values)?;
        for fragment in *expected {
            assert!(
                stderr.contains(fragment),
                "refusing {values:?}, helm said:\n{stderr}\nwhich does not name {fragment:?}"
            );
        }
    }
    Ok(())
}

/// A client that authenticates as `kubeconfig`'s user, as the agent's process would.
async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

/// Asserts that `result` is the apiserver's 403.
fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) -> anyhow::Result<()> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
        other => bail!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_role_is_enough_for_a_release_and_nothing_outside_the_namespace()
-> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let ns = bed.namespace.clone();
    // Two replicas: leader election on, so the Lease rules are exercised too.
    let rendered = render(&ns, "", &["replicas=2"])?;
    for kind in ["ServiceAccount", "Role", "RoleBinding"] {
        apply(&bed.client, &ns, find(&rendered, kind)?, false).await?;
    }
    let role = find(&rendered, "Role")?;
    println!(
        "the chart's Role rules (replicas: 2):\n{}",
        serde_yaml::to_string(&role["rules"])?
    );
    let account = find(&rendered, "ServiceAccount")?["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let lease = args(&rendered)?
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name=").map(String::from))
        .ok_or_else(|| anyhow!("no --lease-name in the rendered args"))?;

    let kubeconfig = bed
        .control_plane
        .kubeconfig_for_service_account(&ns, &account)
        .await?;

    // The agent with nothing but that token: a promotion, then an abort.
    // A custom metric ConfigMap too, so that reading it is covered by the Role.
    let selector = r#"destination_workload_namespace="{namespace}",destination_service_name="{service}",destination_version="{version}""#;
    let mean_latency = format!(
        "query: sum(rate(istio_request_duration_milliseconds_sum{{{selector}}}[{{window}}])) / sum(rate(istio_request_duration_milliseconds_count{{{selector}}}[{{window}}]))\nmax: 1000\n"
    );
    bed.create_config_map("checkout-metrics", &[("mean-latency", &mean_latency)])
        .await?;
    // v1 is scaled down as soon as v2 is promoted, so that the scale subresource is
    // covered by the Role too.
    let app = App::new("checkout")
        .with("metrics", "checkout-metrics")
        .with("scale-down-delay", "0s");
    bed.deploy_app(&app).await?;
    let agent = bed.agent_with_kubeconfig(
        &kubeconfig,
        &[
            "--leader-election",
            "--lease-name",
            &lease,
            "--instance",
            "weir-0",
        ],
    )?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    let weights = bed.record_weights("checkout");
    bed.deploy_version("checkout", "v2", 0.0).await?;
    bed.wait_status("checkout", "v2 to be promoted", |s| {
        s.phase == Phase::Idle && s.stable.as_deref() == Some("v2")
    })
    .await?;
    assert_eq!(
        bed.subset_version("checkout", "stable").await?.as_deref(),
        Some("v2")
    );
    bed.wait_replicas("checkout-v1", 0).await?;
    bed.deploy_version("checkout", "v3", 0.2).await?;
    let aborted = bed.wait_phase("checkout", Phase::Aborted).await?;
    assert_eq!(aborted.canary.as_deref(), Some("v3"));
    assert_eq!(bed.route("checkout").await?.0.canary, 0);
    assert_eq!(
        weights.settled_canary().await?,
        vec![0, 10, 25, 50, 0, 10, 0],
        "canary weights over both releases"
    );
    // A refusal shows in the log as the apiserver's reason, "Forbidden"
    // (matching the bare code would also match timestamps like 10.014038).
    assert!(
        !agent.log().to_lowercase().contains("forbidden"),
        "the agent was refused something:\n{}",
        agent.log()
    );
    drop(agent);

    // With the same token, everything outside the namespace is denied.
    let elsewhere = "elsewhere";
    bed.control_plane.create_namespace(elsewhere).await?;
    let foreign: Service = serde_json::from_value(json!({
        "metadata": {"name": "payments"},
        "spec": {"selector": {"app": "payments"}, "ports": [{"port": 80}]}
    }))?;
    Api::<Service>::namespaced(bed.client.clone(), elsewhere)
        .create(&PostParams::default(), &foreign)
        .await?;
    let agent_client = client_from(&kubeconfig).await?;
    let vs_gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
    let (vs_resource, _) = pinned_kind(&bed.client, &vs_gvk).await?;
    let annotate = Patch::Merge(json!({"metadata": {"annotations": {"weir.dev/enabled": "true"}}}));
    let weights_patch = Patch::Merge(json!({"spec": {"http": []}}));

    let services: Api<Service> = Api::namespaced(agent_client.clone(), elsewhere);
    forbidden(
        "get a Service in another namespace",
        services.get("payments").await,
    )?;
    forbidden(
        "list Services in another namespace",
        services.list(&ListParams::default()).await,
    )?;
    forbidden(
        "patch a Service in another namespace",
        services
            .patch("payments", &PatchParams::default(), &annotate)
            .await,
    )?;
    let vss: Api<DynamicObject> =
        Api::namespaced_with(agent_client.clone(), elsewhere, &vs_resource);
    forbidden(
        "list VirtualServices in another namespace",
        vss.list(&ListParams::default()).await,
    )?;
    forbidden(
        "get a VirtualService in another namespace",
        vss.get("payments").await,
    )?;
    forbidden(
        "patch a VirtualService in another namespace",
        vss.patch("payments", &PatchParams::default(), &weights_patch)
            .await,
    )?;
    forbidden(
        "list Services in every namespace",
        Api::<Service>::all(agent_client.clone())
            .list(&ListParams::default())
            .await,
    )?;
    forbidden(
        "list Namespaces",
        Api::<Namespace>::all(agent_client.clone())
            .list(&ListParams::default())
            .await,
    )?;
    forbidden(
        "list Nodes",
        Api::<Node>::all(agent_client.clone())
            .list(&ListParams::default())
            .await,
    )?;
    forbidden(
        "list CustomResourceDefinitions",
        Api::<CustomResourceDefinition>::all(agent_client.clone())
            .list(&ListParams::default())
            .await,
    )?;
    // And inside the namespace, only what the Role lists.
    forbidden(
        "list Secrets in its own namespace",
        Api::<Secret>::namespaced(agent_client.clone(), &ns)
            .list(&ListParams::default())
            .await,
    )?;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(agent_client.clone(), &ns);
    // It may scale one (above), but not edit one.
    forbidden(
        "patch a Deployment in its own namespace",
        deployments
            .patch(
                "checkout-v2",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 3}})),
            )
            .await,
    )?;
    // The denials are not a broken token: the same client reads its own namespace.
    let own: Api<Service> = Api::namespaced(agent_client, &ns);
    let names: BTreeMap<String, ()> = own
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|s| (s.name_any(), ()))
        .collect();
    assert!(names.contains_key("checkout"), "{names:?}");
    Ok(())
}
