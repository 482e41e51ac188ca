//! Smoke tests proving each piece of the test bed is the real thing.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weir_testbed::{ControlPlane, OwnedProcess, Prometheus, mark_deployment_available, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

async fn start_control_plane() -> ControlPlane {
    let started = Instant::now();
    let control_plane = ControlPlane::start().await.expect("control plane starts");
    eprintln!(
        "control plane ready with CRDs established in {:?}",
        started.elapsed()
    );
    control_plane
}

fn virtual_service_api(client: kube::Client, namespace: &str) -> (Api<DynamicObject>, ApiResource) {
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "virtualservices");
    (Api::namespaced_with(client, namespace, &resource), resource)
}

fn virtual_service(resource: &ApiResource, name: &str, spec: serde_json::Value) -> DynamicObject {
    let mut object = DynamicObject::new(name, resource);
    object.data = json!({ "spec": spec });
    object
}

fn api_error_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

async fn client_for(kubeconfig: &Path) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is complete");
    kube::Client::try_from(config).expect("client builds")
}

#[tokio::test]
async fn objects_created_in_the_apiserver_are_read_back() {
    let control_plane = start_control_plane().await;
    control_plane.create_namespace("shop").await.unwrap();
    let client = control_plane.client();

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".into()),
            ..Default::default()
        },
        data: Some([("color".to_owned(), "blue".to_owned())].into()),
        ..Default::default()
    };
    config_maps
        .create(&PostParams::default(), &config_map)
        .await
        .unwrap();
    let read = config_maps.get("settings").await.unwrap();
    assert_eq!(read.data.unwrap()["color"], "blue");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "checkout-v1", "labels": { "app": "checkout", "version": "v1" } },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": "checkout", "version": "v1" } },
            "template": {
                "metadata": { "labels": { "app": "checkout", "version": "v1" } },
                "spec": { "containers": [{ "name": "app", "image": "checkout:1" }] }
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let read = deployments.get("checkout-v1").await.unwrap();
    assert_eq!(read.spec.replicas, Some(3));
    assert_eq!(
        read.spec.template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("checkout:1")
    );

    // The kubeconfig file a child process would get reaches the same server as admin.
    let from_file = client_for(control_plane.kubeconfig_path()).await;
    let namespaces: Api<Namespace> = Api::all(from_file);
    assert!(namespaces.get("shop").await.is_ok());
    assert!(control_plane.server_url().starts_with("https://127.0.0.1:"));
    assert!(
        control_plane
            .ca_pem()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
}

/// The test bed's kubectl is the apiserver's own version and reaches a control plane
/// through its kubeconfig file, as the demo tells people to use it.
#[tokio::test]
async fn kubectl_of_the_apiserver_version_reads_the_control_plane() {
    let control_plane = start_control_plane().await;
    let run = |args: &[&str]| {
        let output = std::process::Command::new(weir_testbed::kubectl())
            .args(args)
            .env("KUBECONFIG", control_plane.kubeconfig_path())
            .output()
            .expect("the test bed has kubectl: run `make testbed`");
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let versions = run(&["version", "-o", "json"]);
    let versions: serde_json::Value = serde_json::from_str(&versions).unwrap();
    assert_eq!(
        versions["clientVersion"]["gitVersion"], versions["serverVersion"]["gitVersion"],
        "kubectl and the apiserver are built from one module version"
    );
    let crds = run(&["get", "crd", "-o", "name"]);
    assert!(
        crds.contains("virtualservices.networking.istio.io"),
        "{crds}"
    );
}

#[tokio::test]
async fn istio_schema_is_enforced_on_virtual_services() {
    let control_plane = start_control_plane().await;
    control_plane.create_namespace("shop").await.unwrap();
    let (api, resource) = virtual_service_api(control_plane.client(), "shop");

    let valid = virtual_service(
        &resource,
        "checkout",
        json!({
            "hosts": ["checkout"],
            "http": [{
                "name": "primary",
                "route": [
                    { "destination": { "host": "checkout", "subset": "stable" }, "weight": 80 },
                    { "destination": { "host": "checkout", "subset": "canary" }, "weight": 20 }
                ]
            }]
        }),
    );
    api.create(&PostParams::default(), &valid)
        .await
        .expect("a valid VirtualService is accepted");
    let read = api.get("checkout").await.unwrap();
    let weights: Vec<i64> = read.data["spec"]["http"][0]["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|route| route["weight"].as_i64().unwrap())
        .collect();
    assert_eq!(weights, [80, 20]);
    assert_eq!(
        read.data["spec"]["http"][0]["route"][1]["destination"]["subset"],
        "canary"
    );

    let wrong_type = virtual_service(
        &resource,
        "wrong-type",
        json!({
            "hosts": ["checkout"],
            "http": [{ "route": [{ "destination": { "host": "checkout" }, "weight": "ten" }] }]
        }),
    );
    let error = api
        .create(&PostParams::default(), &wrong_type)
        .await
        .expect_err("a string weight is rejected");
    assert_eq!(api_error_code(&error), Some(422), "{error}");

    let missing_host = virtual_service(
        &resource,
        "missing-host",
        json!({
            "hosts": ["checkout"],
            "http": [{ "route": [{ "destination": { "subset": "stable" }, "weight": 100 }] }]
        }),
    );
    let error = api
        .create(&PostParams::default(), &missing_host)
        .await
        .expect_err("a destination needs a host");
    assert_eq!(api_error_code(&error), Some(422), "{error}");
    assert!(api.get_opt("wrong-type").await.unwrap().is_none());
}

#[tokio::test]
async fn a_deployment_marked_available_reads_back_available() {
    let control_plane = start_control_plane().await;
    control_plane.create_namespace("shop").await.unwrap();
    let client = control_plane.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "checkout-v2" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "checkout" } },
            "template": {
                "metadata": { "labels": { "app": "checkout" } },
                "spec": { "containers": [{ "name": "app", "image": "checkout:2" }] }
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let before = deployments.get("checkout-v2").await.unwrap();
    assert!(
        before.status.and_then(|status| status.conditions).is_none(),
        "no controller runs here"
    );

    mark_deployment_available(&client, "shop", "checkout-v2")
        .await
        .unwrap();

    let after = deployments.get("checkout-v2").await.unwrap();
    let status = after.status.expect("status was written");
    assert_eq!(status.observed_generation, after.metadata.generation);
    assert_eq!(status.available_replicas, Some(2));
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(status.updated_replicas, Some(2));
    let conditions = status.conditions.unwrap();
    let condition = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_.as_deref() == Some(type_))
            .and_then(|c| c.status.clone())
    };
    assert_eq!(condition("Available").as_deref(), Some("True"));
    assert_eq!(condition("Progressing").as_deref(), Some("True"));
}

#[tokio::test]
async fn a_service_account_token_is_limited_by_rbac() {
    let control_plane = start_control_plane().await;
    control_plane.create_namespace("shop").await.unwrap();
    control_plane.create_namespace("billing").await.unwrap();
    let admin = control_plane.client();

    let service_account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("weir".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let service_accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "shop");
    service_accounts
        .create(&PostParams::default(), &service_account)
        .await
        .unwrap();
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "read-config-maps" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"] }]
    }))
    .unwrap();
    assert_eq!(role.rules.as_deref().map(<[PolicyRule]>::len), Some(1));
    Api::<Role>::namespaced(admin.clone(), "shop")
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "weir-reads-config-maps" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-config-maps" },
        "subjects": [{ "kind": "ServiceAccount", "name": "weir", "namespace": "shop" }]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "shop")
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    let kubeconfig = control_plane
        .kubeconfig_for_service_account("shop", "weir")
        .await
        .unwrap();
    let service_account_client = client_for(&kubeconfig).await;
    let own: Api<ConfigMap> = Api::namespaced(service_account_client.clone(), "shop");
    // The RBAC authorizer sees new bindings through an informer, so allow it a moment.
    wait_until("the RoleBinding to take effect", DEADLINE, || async {
        Ok(own.list(&Default::default()).await?)
    })
    .await
    .unwrap();

    let namespaces: Api<Namespace> = Api::all(service_account_client.clone());
    let error = namespaces
        .list(&Default::default())
        .await
        .expect_err("namespaces are not granted");
    assert_eq!(api_error_code(&error), Some(403), "{error}");
    let other: Api<ConfigMap> = Api::namespaced(service_account_client.clone(), "billing");
    let error = other
        .list(&Default::default())
        .await
        .expect_err("another namespace is not granted");
    assert_eq!(api_error_code(&error), Some(403), "{error}");
    let error = own
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("forbidden".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect_err("writes are not granted");
    assert_eq!(api_error_code(&error), Some(403), "{error}");
}

/// Serves a fixed Prometheus text exposition on every connection until the listener is
/// dropped with the task.
async fn serve_metrics(listener: TcpListener, body: &'static str) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn dropped_servers_leave_no_process_behind() {
    let control_plane = start_control_plane().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_metrics(listener, "weir_testbed_probe 1\n"));
    let prometheus = Prometheus::start(&[target]).await.unwrap();
    prometheus.wait_for_scrape().await.unwrap();

    let mut pids = control_plane.pids();
    pids.push(prometheus.pid());
    assert_eq!(pids.len(), 3);
    assert!(
        pids.iter().all(|&pid| pid_exists(pid)),
        "all servers run: {pids:?}"
    );

    drop(control_plane);
    drop(prometheus);
    server.abort();

    let left: Vec<u32> = pids.into_iter().filter(|&pid| pid_exists(pid)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// The chaos suite restarts the apiserver under the agent: objects survive, and the same
/// client reaches it again.
#[tokio::test]
async fn a_restarted_apiserver_serves_the_same_objects_on_the_same_address() {
    let mut control_plane = start_control_plane().await;
    control_plane.create_namespace("shop").await.unwrap();
    let pid = control_plane.pids()[0];
    control_plane
        .restart_apiserver(Duration::from_millis(500))
        .await
        .unwrap();
    assert_ne!(control_plane.pids()[0], pid, "a new apiserver process");
    let namespaces: Api<Namespace> = Api::all(control_plane.client());
    let shop = namespaces.get("shop").await.unwrap();
    assert_eq!(shop.metadata.name.as_deref(), Some("shop"));
}

/// A restarted Prometheus answers on the same address, with the data it had.
#[tokio::test]
async fn a_restarted_prometheus_answers_again_with_its_data() {
    let mut prometheus = Prometheus::start(&[]).await.unwrap();
    let pid = prometheus.pid();
    let before = prometheus.query("vector(1)").await.unwrap();
    prometheus
        .restart(Duration::from_millis(500))
        .await
        .unwrap();
    assert_ne!(prometheus.pid(), pid);
    assert_eq!(
        prometheus.query("vector(1)").await.unwrap()[0]["value"][1],
        before[0]["value"][1]
    );
}

#[tokio::test]
async fn prometheus_scrapes_a_target_and_answers_queries() {
    let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_target = live.local_addr().unwrap();
    // A port nobody listens on: Prometheus must report it down.
    let dead_target: SocketAddr = format!("127.0.0.1:{}", weir_testbed::free_port().unwrap())
        .parse()
        .unwrap();
    let prometheus = Prometheus::start(&[live_target, dead_target])
        .await
        .unwrap();
    assert!(prometheus.url().starts_with("http://127.0.0.1:") && !prometheus.url().ends_with('/'));

    let up = wait_until("both targets to have an up sample", DEADLINE, || async {
        let up = prometheus.query("up").await?;
        let samples = up.as_array().cloned().unwrap_or_default();
        anyhow::ensure!(samples.len() == 2, "up has {} series: {up}", samples.len());
        Ok(samples)
    })
    .await
    .unwrap();
    let up_of = |target: SocketAddr| {
        up.iter()
            .find(|sample| sample["metric"]["instance"] == target.to_string())
            .map(|sample| sample["value"][1].as_str().unwrap().to_owned())
    };
    assert_eq!(up_of(dead_target).as_deref(), Some("0"));
    // Nothing serves the live target yet either.
    assert_eq!(up_of(live_target).as_deref(), Some("0"));

    let server = tokio::spawn(serve_metrics(
        live,
        "# TYPE weir_testbed_probe_total counter\nweir_testbed_probe_total{route=\"primary\"} 42\n",
    ));
    let value = wait_until("the served metric to be queryable", DEADLINE, || async {
        let result = prometheus
            .query(r#"weir_testbed_probe_total{job="simulator"}"#)
            .await?;
        let sample = result
            .get(0)
            .ok_or_else(|| anyhow::anyhow!("no sample yet: {result}"))?;
        assert_eq!(sample["metric"]["route"], "primary");
        Ok(sample["value"][1].as_str().unwrap_or_default().to_owned())
    })
    .await
    .unwrap();
    assert_eq!(value, "42");

    let error = prometheus
        .query("sum(")
        .await
        .expect_err("a malformed query fails");
    assert!(format!("{error:#}").contains("bad_data"), "{error:#}");
    server.abort();
}

#[tokio::test]
async fn an_owned_process_gets_its_environment_and_dies_with_its_handle() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("child.log");
    let args = [
        "-c".to_owned(),
        "echo \"greeting=$WEIR_GREETING\"; exec sleep 600".to_owned(),
    ];
    let child = OwnedProcess::spawn(
        "sleeper",
        Path::new("/bin/sh"),
        &args,
        &[("WEIR_GREETING", "hello")],
        log.clone(),
    )
    .unwrap();
    let pid = child.pid();
    wait_until("the child to log its greeting", DEADLINE, || async {
        let logged = std::fs::read_to_string(&log)?;
        anyhow::ensure!(logged.contains("greeting=hello"), "log: {logged:?}");
        Ok(())
    })
    .await
    .unwrap();
    assert!(pid_exists(pid));
    drop(child);
    assert!(!pid_exists(pid), "pid {pid} outlived its handle");
}
