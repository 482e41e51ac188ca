//! The identity is pinned: a change to it restarts in-flight canaries and re-releases
//! aborted versions after an agent upgrade. Change it only with a new
//! [`IDENTITY_PREFIX`], and keep recognising the old one.

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

use super::*;

/// A Deployment as the apiserver returns it: defaulted fields, status and all.
fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "checkout-v2",
            "namespace": "shop",
            "generation": 3,
            "annotations": {"deployment.kubernetes.io/revision": "2"}
        },
        "spec": {
            "replicas": 2,
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": {"app": "checkout", "version": "v2"}},
            "template": {
                "metadata": {
                    "labels": {"app": "checkout", "version": "v2"},
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "weir.dev/note": "ignored",
                        "kubectl.kubernetes.io/restartedAt": "2026-11-01T10:00:00Z"
                    }
                },
                "spec": {
                    "serviceAccountName": "checkout",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "initContainers": [{
                        "name": "migrate",
                        "image": "shop/checkout-migrate:2.0.0",
                        "args": ["--up"],
                        "terminationMessagePath": "/dev/termination-log"
                    }],
                    "containers": [{
                        "name": "app",
                        "image": "shop/checkout:2.0.0",
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/checkout"],
                        "args": ["--port=8080"],
                        "workingDir": "/srv",
                        "env": [
                            {"name": "MODE", "value": "live"},
                            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                            {"name": "POD", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}
                        ],
                        "envFrom": [{"configMapRef": {"name": "checkout-config"}, "prefix": "CFG_"}],
                        "ports": [{"containerPort": 8080, "protocol": "TCP", "name": "http"}],
                        "resources": {
                            "limits": {"memory": "256Mi"},
                            "requests": {"cpu": "100m", "memory": "128Mi"}
                        },
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/checkout", "readOnly": true}],
                        "readinessProbe": {
                            "httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"},
                            "periodSeconds": 10,
                            "timeoutSeconds": 1,
                            "successThreshold": 1,
                            "failureThreshold": 3
                        },
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File"
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "checkout-files", "defaultMode": 420}},
                        {"name": "scratch", "emptyDir": {}}
                    ]
                }
            }
        },
        "status": {"observedGeneration": 3, "replicas": 2, "availableReplicas": 2}
    })
}

fn identity_of(value: &Value) -> String {
    let deployment: Deployment = serde_json::from_value(value.clone()).unwrap();
    template_identity(&deployment.spec.template)
}

/// `deployment()` with the member at `pointer` (a JSON Pointer) set to `to`.
fn edited(pointer: &str, to: Value) -> Value {
    let mut value = deployment();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent).unwrap() {
        Value::Object(map) => {
            map.insert(key, to);
        }
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = to,
        other => panic!("cannot set {key} in {other}"),
    }
    value
}

/// `deployment()` without the member at `pointer`.
fn removed(pointer: &str) -> Value {
    let mut value = deployment();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent).unwrap() {
        Value::Object(map) => map.remove(&key).unwrap(),
        Value::Array(items) => items.remove(key.parse::<usize>().unwrap()),
        other => panic!("cannot remove {key} from {other}"),
    };
    value
}

const APP: &str = "/spec/template/spec/containers/0";
const POD: &str = "/spec/template/spec";
const META: &str = "/spec/template/metadata";

#[test]
fn the_identity_of_a_fixed_template_is_pinned() {
    let deployment: Deployment = serde_json::from_value(deployment()).unwrap();
    let text = canonical(&deployment.spec.template);
    assert_eq!(
        text,
        r#"annotations/"prometheus.io/scrape"="true"
containers/"app"/args=["--port=8080"]
containers/"app"/command=["/checkout"]
containers/"app"/env/"DB_PASSWORD"/secretKeyRef/key="password"
containers/"app"/env/"DB_PASSWORD"/secretKeyRef/name="db"
containers/"app"/env/"MODE"/value="live"
containers/"app"/env/"POD"/fieldRef="metadata.name"
containers/"app"/envFrom/0/configMapRef="checkout-config"
containers/"app"/envFrom/0/prefix="CFG_"
containers/"app"/image="shop/checkout:2.0.0"
containers/"app"/name="app"
containers/"app"/ports/8080/"TCP"/name="http"
containers/"app"/readinessProbe/failureThreshold=3
containers/"app"/readinessProbe/httpGet/path="/ready"
containers/"app"/readinessProbe/httpGet/port="http"
containers/"app"/readinessProbe/httpGet/scheme="HTTP"
containers/"app"/readinessProbe/periodSeconds=10
containers/"app"/readinessProbe/successThreshold=1
containers/"app"/readinessProbe/timeoutSeconds=1
containers/"app"/resources/limits/"memory"="256Mi"
containers/"app"/resources/requests/"cpu"="100m"
containers/"app"/resources/requests/"memory"="128Mi"
containers/"app"/volumeMounts/"/etc/checkout"/name="config"
containers/"app"/volumeMounts/"/etc/checkout"/readOnly=true
containers/"app"/workingDir="/srv"
initContainers/0/"migrate"/args=["--up"]
initContainers/0/"migrate"/image="shop/checkout-migrate:2.0.0"
initContainers/0/"migrate"/name="migrate"
labels/"app"="checkout"
labels/"version"="v2"
serviceAccountName="checkout"
volumes/"config"/configMap="checkout-files"
volumes/"scratch"/emptyDir=""
"#
    );
    assert_eq!(
        template_identity(&deployment.spec.template),
        "t2:0a1b319b07dacdbe"
    );
}

#[test]
fn a_change_to_a_field_that_makes_the_build_changes_the_identity() {
    let original = identity_of(&deployment());
    let changes = [
        (format!("{APP}/image"), json!("shop/checkout:2.0.1")),
        (format!("{APP}/name"), json!("server")),
        (format!("{APP}/command"), json!(["/checkout", "--safe"])),
        (format!("{APP}/args"), json!(["--port=9090"])),
        (format!("{APP}/workingDir"), json!("/")),
        (format!("{APP}/env/0/value"), json!("dry-run")),
        (
            format!("{APP}/env/1/valueFrom/secretKeyRef/key"),
            json!("old-password"),
        ),
        (
            format!("{APP}/env/2/valueFrom/fieldRef/fieldPath"),
            json!("metadata.uid"),
        ),
        (format!("{APP}/envFrom/0/prefix"), json!("C_")),
        (format!("{APP}/ports/0/containerPort"), json!(9090)),
        (format!("{APP}/resources/limits/memory"), json!("512Mi")),
        (format!("{APP}/resources/requests/cpu"), json!("1")),
        (
            format!("{APP}/volumeMounts/0/mountPath"),
            json!("/etc/other"),
        ),
        (format!("{APP}/volumeMounts/0/readOnly"), json!(false)),
        (
            format!("{APP}/readinessProbe/httpGet/path"),
            json!("/healthz"),
        ),
        (format!("{APP}/readinessProbe/failureThreshold"), json!(1)),
        (
            format!("{APP}/livenessProbe"),
            json!({"tcpSocket": {"port": 8080}}),
        ),
        (
            format!("{POD}/initContainers/0/image"),
            json!("shop/checkout-migrate:2.0.1"),
        ),
        (
            format!("{POD}/volumes/0/configMap/name"),
            json!("checkout-files-v2"),
        ),
        (
            format!("{POD}/volumes/1/emptyDir"),
            json!({"medium": "Memory"}),
        ),
        (format!("{POD}/serviceAccountName"), json!("checkout-v2")),
        (format!("{META}/labels/version"), json!("v3")),
        (
            format!("{META}/annotations/prometheus.io~1scrape"),
            json!("false"),
        ),
        (
            format!("{POD}/containers/1"),
            json!({"name": "sidecar", "image": "proxy:1"}),
        ),
    ];
    for (pointer, to) in changes {
        let changed = if pointer.ends_with("containers/1") {
            let mut value = deployment();
            value
                .pointer_mut(&format!("{POD}/containers"))
                .unwrap()
                .as_array_mut()
                .unwrap()
                .push(to.clone());
            value
        } else {
            edited(&pointer, to.clone())
        };
        assert_ne!(identity_of(&changed), original, "{pointer} := {to}");
    }
    for pointer in [
        format!("{APP}/env/0"),
        format!("{APP}/readinessProbe"),
        format!("{POD}/initContainers/0"),
        format!("{POD}/volumes/1"),
        format!("{META}/annotations/prometheus.io~1scrape"),
    ] {
        assert_ne!(
            identity_of(&removed(&pointer)),
            original,
            "without {pointer}"
        );
    }
}

#[test]
fn defaulted_and_irrelevant_fields_leave_the_identity_alone() {
    let original = identity_of(&deployment());
    let changes = [
        // Outside the template.
        ("/spec/replicas".to_owned(), json!(5)),
        ("/status/availableReplicas".to_owned(), json!(0)),
        ("/metadata/generation".to_owned(), json!(9)),
        (
            "/metadata/annotations/deployment.kubernetes.io~1revision".to_owned(),
            json!("3"),
        ),
        // Fields weir does not read, including ones the apiserver defaults and that a
        // newer k8s-openapi might start to serialise.
        (format!("{APP}/terminationMessagePath"), json!("/tmp/log")),
        (
            format!("{APP}/terminationMessagePolicy"),
            json!("FallbackToLogsOnError"),
        ),
        (format!("{APP}/imagePullPolicy"), json!("Always")),
        (
            format!("{APP}/readinessProbe/httpGet/protocol"),
            json!("HTTP"),
        ),
        (
            format!("{APP}/volumeMounts/0/recursiveReadOnly"),
            json!("Disabled"),
        ),
        (format!("{POD}/terminationGracePeriodSeconds"), json!(60)),
        (format!("{POD}/dnsPolicy"), json!("Default")),
        (format!("{POD}/schedulerName"), json!("default-scheduler")),
        (format!("{POD}/volumes/0/configMap/defaultMode"), json!(256)),
        // weir's own annotations, and a restart.
        (
            format!("{META}/annotations/weir.dev~1note"),
            json!("changed"),
        ),
        (
            format!("{META}/annotations/kubectl.kubernetes.io~1restartedAt"),
            json!("2026-11-02T10:00:00Z"),
        ),
    ];
    for (pointer, to) in changes {
        assert_eq!(
            identity_of(&edited(&pointer, to.clone())),
            original,
            "{pointer} := {to}"
        );
    }
}

#[test]
fn names_cannot_run_into_each_other() {
    // An env variable whose name holds a path separator is not another field.
    let a = edited(&format!("{APP}/env/0/name"), json!("MODE/value"));
    let b = edited(&format!("{APP}/env/0/value"), json!("live/value"));
    assert_ne!(identity_of(&a), identity_of(&b));
    assert!(identity_of(&a).starts_with(IDENTITY_PREFIX));
}

#[test]
fn the_legacy_hash_is_the_json_hash_earlier_agents_recorded() {
    let deployment: Deployment = serde_json::from_value(deployment()).unwrap();
    let legacy = legacy_template_hash(&deployment.spec.template);
    assert_eq!(legacy.len(), 16);
    assert!(!legacy.starts_with(IDENTITY_PREFIX));
    // As earlier agents computed it: FNV-1a over k8s-openapi's JSON.
    let json = serde_json::to_vec(&deployment.spec.template).unwrap();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in json {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    assert_eq!(legacy, format!("{hash:016x}"));
}
