//! Realistic objects for the mesh tests: Service `shop` in namespace `store`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{DestinationRule, VirtualService};
use crate::spec::{self, Defaults, RolloutSpec, keys};

pub const NAMESPACE: &str = "store";

/// The spec of Service `shop` with these annotations besides `weir.dev/enabled`.
pub fn spec(annotations: &[(&str, &str)]) -> RolloutSpec {
    let mut all: BTreeMap<String, String> = annotations
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    all.insert(keys::ENABLED.to_owned(), "true".to_owned());
    spec::parse("shop", &all, &Defaults::default()).expect("valid annotations")
}

/// A VirtualService the way people write them: several routes, a TCP route to the same
/// Service, and a managed route (`main`, index 2) carrying retries, timeout, headers, a
/// mirror, CORS and fault injection besides its stable and canary destinations.
pub fn virtual_service() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": "shop",
            "namespace": NAMESPACE,
            "resourceVersion": "4711",
            "generation": 7,
            "uid": "0b6f7a52-1d3c-4a57-9f8e-2f1a3c4d5e6f",
            "labels": { "app.kubernetes.io/part-of": "store" },
            "annotations": { "argocd.argoproj.io/tracking-id": "store:networking.istio.io/VirtualService:store/shop" }
        },
        "spec": {
            "hosts": ["shop", "shop.example.com"],
            "gateways": ["mesh", "istio-system/public"],
            "http": [
                {
                    "name": "admin",
                    "match": [{ "uri": { "prefix": "/admin" } }],
                    "route": [{ "destination": { "host": "admin.store.svc.cluster.local", "port": { "number": 8080 } } }],
                    "timeout": "5s"
                },
                {
                    "name": "old-shop",
                    "match": [{ "headers": { "x-legacy": { "exact": "1" } } }],
                    "route": [{ "destination": { "host": "shop.legacy.svc.cluster.local" }, "weight": 100 }]
                },
                {
                    "name": "main",
                    "match": [{ "uri": { "prefix": "/" } }],
                    "route": [
                        {
                            "destination": { "host": "shop.store.svc.cluster.local", "subset": "stable", "port": { "number": 8080 } },
                            "weight": 90,
                            "headers": { "request": { "set": { "x-release": "stable" } } }
                        },
                        {
                            "destination": { "host": "shop.store.svc.cluster.local", "subset": "canary", "port": { "number": 8080 } },
                            "weight": 10
                        }
                    ],
                    "retries": { "attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,connect-failure" },
                    "timeout": "10s",
                    "headers": { "response": { "add": { "x-served-by": "shop" } } },
                    "mirror": { "host": "shop-shadow.store.svc.cluster.local" },
                    "mirrorPercentage": { "value": 5.0 },
                    "corsPolicy": { "allowOrigins": [{ "exact": "https://shop.example.com" }], "allowMethods": ["GET", "POST"] },
                    "fault": { "delay": { "percentage": { "value": 0.1 }, "fixedDelay": "1s" } }
                },
                {
                    "name": "maintenance",
                    "match": [{ "uri": { "prefix": "/maintenance" } }],
                    "directResponse": { "status": 503, "body": { "string": "back soon" } }
                }
            ],
            "tcp": [{ "match": [{ "port": 9000 }], "route": [{ "destination": { "host": "shop", "port": { "number": 9000 } } }] }]
        }
    })
}

/// The DestinationRule of `shop`, with a traffic policy and a third subset.
pub fn destination_rule() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": { "name": "shop", "namespace": NAMESPACE, "resourceVersion": "815", "generation": 2 },
        "spec": {
            "host": "shop.store.svc.cluster.local",
            "trafficPolicy": {
                "loadBalancer": { "simple": "LEAST_REQUEST" },
                "connectionPool": { "http": { "h2UpgradePolicy": "UPGRADE", "http1MaxPendingRequests": 100 } },
                "outlierDetection": { "consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s" }
            },
            "subsets": [
                { "name": "stable", "labels": { "version": "v1", "app": "shop" } },
                { "name": "canary", "labels": { "version": "v2", "app": "shop" }, "trafficPolicy": { "loadBalancer": { "simple": "ROUND_ROBIN" } } },
                { "name": "debug", "labels": { "version": "debug" } }
            ]
        }
    })
}

pub fn typed_virtual_service(value: &Value) -> VirtualService {
    serde_json::from_value(value.clone()).expect("a valid VirtualService")
}

pub fn typed_destination_rule(value: &Value) -> DestinationRule {
    serde_json::from_value(value.clone()).expect("a valid DestinationRule")
}

/// `doc` with `patch` applied, as the apiserver would apply it.
pub fn applied(patch: &json_patch::Patch, doc: &Value) -> Result<Value, json_patch::PatchError> {
    let mut doc = doc.clone();
    json_patch::patch(&mut doc, patch)?;
    Ok(doc)
}

/// `value` with the member at `pointer` set (or added) to `new`.
pub fn set(mut value: Value, pointer: &str, new: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer below the root");
    match value.pointer_mut(parent).expect("parent exists") {
        Value::Object(map) => {
            map.insert(key.replace("~1", "/").replace("~0", "~"), new);
        }
        Value::Array(items) => match key.parse::<usize>().expect("an index") {
            end if end == items.len() => items.push(new),
            index => items[index] = new,
        },
        other => panic!("cannot set {key} in {other}"),
    }
    value
}

/// `value` without the member or item at `pointer`.
pub fn remove(mut value: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer below the root");
    match value.pointer_mut(parent).expect("parent exists") {
        Value::Object(map) => {
            map.remove(key).expect("member exists");
        }
        Value::Array(items) => {
            items.remove(key.parse::<usize>().expect("an index"));
        }
        other => panic!("cannot remove {key} from {other}"),
    }
    value
}

/// The fixture VirtualService split by host: the managed route `main` sends traffic to
/// the Services `shop-stable` and `shop-canary` (no subsets), keeping everything else.
pub fn host_split_virtual_service() -> Value {
    let vs = virtual_service();
    let vs = set(
        vs,
        "/spec/http/2/route/0/destination",
        json!({ "host": "shop-stable.store.svc.cluster.local", "port": { "number": 8080 } }),
    );
    set(
        vs,
        "/spec/http/2/route/1/destination",
        json!({ "host": "shop-canary.store.svc.cluster.local", "port": { "number": 8080 } }),
    )
}

/// A Service of a host-level split: `shop`'s selector plus `version`.
pub fn split_service(name: &str, version: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": NAMESPACE, "resourceVersion": "912", "labels": { "team": "store" } },
        "spec": {
            "selector": { "app": "shop", "version": version },
            "ports": [{ "name": "http", "port": 8080, "targetPort": 8080 }]
        }
    })
}

pub fn typed_service(value: &Value) -> k8s_openapi::api::core::v1::Service {
    serde_json::from_value(value.clone()).expect("a valid Service")
}

/// The annotations of a host-level split between `shop-stable` and `shop-canary`.
pub const HOST_SPLIT: [(&str, &str); 2] = [
    (keys::STABLE_SERVICE, "shop-stable"),
    (keys::CANARY_SERVICE, "shop-canary"),
];

/// An HTTPRoute for `shop` as the apiserver returns it (defaults filled in): a header
/// rule to `shop-debug`, the managed rule `primary` (index 1) with matches, filters,
/// timeouts and per-backend filters between `shop-stable` and `shop-canary`, and a rule
/// to `admin`.
pub fn http_route() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "name": "shop", "namespace": NAMESPACE, "resourceVersion": "5150", "generation": 3 },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "shop", "port": 8080 }],
            "rules": [
                {
                    "name": "debug",
                    "matches": [{ "headers": [{ "type": "Exact", "name": "x-debug", "value": "1" }], "path": { "type": "PathPrefix", "value": "/" } }],
                    "backendRefs": [{ "group": "", "kind": "Service", "name": "shop-debug", "port": 8080, "weight": 1 }]
                },
                {
                    "name": "primary",
                    "matches": [{ "path": { "type": "PathPrefix", "value": "/" } }],
                    "filters": [
                        { "type": "RequestHeaderModifier", "requestHeaderModifier": { "set": [{ "name": "x-served-by", "value": "shop" }] } },
                        { "type": "ResponseHeaderModifier", "responseHeaderModifier": { "remove": ["x-internal"] } }
                    ],
                    "timeouts": { "request": "10s" },
                    "backendRefs": [
                        {
                            "group": "", "kind": "Service", "name": "shop-stable", "port": 8080, "weight": 90,
                            "filters": [{ "type": "RequestHeaderModifier", "requestHeaderModifier": { "add": [{ "name": "x-pool", "value": "stable" }] } }]
                        },
                        { "group": "", "kind": "Service", "name": "shop-canary", "port": 8080, "weight": 10 }
                    ]
                },
                {
                    "matches": [{ "path": { "type": "PathPrefix", "value": "/admin" } }],
                    "backendRefs": [{ "group": "", "kind": "Service", "name": "admin", "port": 8080, "weight": 1 }]
                }
            ]
        }
    })
}

pub fn typed_http_route(value: &Value) -> super::HttpRoute {
    serde_json::from_value(value.clone()).expect("a valid HTTPRoute")
}
