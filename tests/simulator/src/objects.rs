//! Kubernetes objects → the plain [`Mesh`] the simulator plans from.
//!
//! Only the fields the simulator needs are read. Istio and Gateway API objects arrive as
//! [`DynamicObject`]s and are read through small serde structs, so the simulator does
//! not depend on weir's own mesh types.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::Reporter;
use crate::annotations::{self, AnnotationError};
use crate::mesh::{
    Behaviour, DestinationRule, HttpRoute, Labels, Mesh, RouteDestination, RouteKey, RouteKind,
    Service, Subset, Workload,
};

/// The version reported for a Deployment without the version label (as Istio does).
pub const UNKNOWN_VERSION: &str = "unknown";

/// `networking.istio.io/v1` VirtualService.
pub fn virtual_service_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1",
        "VirtualService",
    ))
}

/// `networking.istio.io/v1` DestinationRule.
pub fn destination_rule_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1",
        "DestinationRule",
    ))
}

/// `gateway.networking.k8s.io/v1` HTTPRoute.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
    ))
}

/// An Istio or Gateway API object whose spec the simulator cannot read.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: spec does not have the shape its schema requires: {source}")]
pub struct SpecError {
    /// `VirtualService`, `DestinationRule` or `HTTPRoute`.
    pub kind: &'static str,
    /// The object's name.
    pub name: String,
    /// Which field did not fit.
    #[source]
    pub source: serde_json::Error,
}

#[derive(Default, Deserialize)]
struct VirtualServiceSpec {
    #[serde(default)]
    http: Vec<HttpRouteSpec>,
}

#[derive(Deserialize)]
struct HttpRouteSpec {
    #[serde(default)]
    route: Vec<RouteDestinationSpec>,
}

#[derive(Deserialize)]
struct RouteDestinationSpec {
    destination: DestinationSpec,
    weight: Option<i64>,
}

#[derive(Deserialize)]
struct DestinationSpec {
    host: String,
    subset: Option<String>,
}

#[derive(Default, Deserialize)]
struct GatewayHttpRouteSpec {
    #[serde(default)]
    rules: Vec<HttpRouteRuleSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpRouteRuleSpec {
    #[serde(default)]
    backend_refs: Vec<BackendRefSpec>,
}

#[derive(Deserialize)]
struct BackendRefSpec {
    name: String,
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    weight: Option<i64>,
}

#[derive(Default, Deserialize)]
struct DestinationRuleSpec {
    #[serde(default)]
    host: String,
    #[serde(default)]
    subsets: Vec<SubsetSpec>,
}

#[derive(Deserialize)]
struct SubsetSpec {
    name: String,
    #[serde(default)]
    labels: Labels,
}

fn spec<T: DeserializeOwned + Default>(
    object: &DynamicObject,
    kind: &'static str,
) -> Result<T, SpecError> {
    match object.data.get("spec") {
        None => Ok(T::default()),
        Some(spec) => T::deserialize(spec).map_err(|source| SpecError {
            kind,
            name: object.name_any(),
            source,
        }),
    }
}

/// The HTTP routes of a VirtualService. Routes without a `route` list (redirects,
/// direct responses, delegates) carry no destinations.
pub fn http_routes(virtual_service: &DynamicObject) -> Result<Vec<HttpRoute>, SpecError> {
    let spec: VirtualServiceSpec = spec(virtual_service, "VirtualService")?;
    let name = virtual_service.name_any();
    Ok(spec
        .http
        .into_iter()
        .enumerate()
        .map(|(index, route)| HttpRoute {
            key: RouteKey {
                kind: RouteKind::VirtualService,
                name: name.clone(),
                index,
            },
            destinations: route
                .route
                .into_iter()
                .map(|d| RouteDestination {
                    host: d.destination.host,
                    subset: d.destination.subset,
                    weight: d.weight.map(|w| u32::try_from(w).unwrap_or(0)),
                })
                .collect(),
        })
        .collect())
}

/// The rules of a Gateway API HTTPRoute, each an HTTP route whose destinations are its
/// `backendRefs` (weights as written; a missing one is read as Gateway API reads it).
/// A backendRef to a Service (no group or the core group `""`, no kind or `Service`)
/// names it as a host, `name` or, with a namespace, `name.namespace` (which reaches
/// nothing unless it is this namespace: the simulator has no ReferenceGrants). A
/// backendRef to any other kind keeps its share of requests but reaches nothing: those
/// requests are dropped (where a mesh answers an invalid backendRef's share with 500s).
/// Rules without backendRefs (redirects) carry no destinations. `parentRefs` are not
/// read: every rule carries mesh traffic, as every VirtualService route does.
pub fn http_route_rules(http_route: &DynamicObject) -> Result<Vec<HttpRoute>, SpecError> {
    let spec: GatewayHttpRouteSpec = spec(http_route, "HTTPRoute")?;
    let name = http_route.name_any();
    Ok(spec
        .rules
        .into_iter()
        .enumerate()
        .map(|(index, rule)| HttpRoute {
            key: RouteKey {
                kind: RouteKind::HttpRoute,
                name: name.clone(),
                index,
            },
            destinations: rule
                .backend_refs
                .into_iter()
                .map(|b| {
                    let service = b.group.as_deref().unwrap_or("").is_empty()
                        && b.kind.as_deref().unwrap_or("Service") == "Service";
                    let host = match (service, b.namespace) {
                        (true, None) => b.name,
                        (true, Some(namespace)) => format!("{}.{namespace}", b.name),
                        // A '/' is in no DNS label: this host names no Service.
                        (false, namespace) => format!(
                            "{}/{}/{}/{}",
                            b.group.unwrap_or_default(),
                            b.kind.unwrap_or_default(),
                            namespace.unwrap_or_default(),
                            b.name
                        ),
                    };
                    RouteDestination {
                        host,
                        subset: None,
                        weight: b.weight.map(|w| u32::try_from(w).unwrap_or(0)),
                    }
                })
                .collect(),
        })
        .collect())
}

/// A DestinationRule's host and subsets.
pub fn destination_rule(destination_rule: &DynamicObject) -> Result<DestinationRule, SpecError> {
    let spec: DestinationRuleSpec = spec(destination_rule, "DestinationRule")?;
    Ok(DestinationRule {
        name: destination_rule.name_any(),
        host: spec.host,
        subsets: spec
            .subsets
            .into_iter()
            .map(|s| Subset {
                name: s.name,
                labels: s.labels,
            })
            .collect(),
    })
}

/// A Service's selector and request rate; a malformed rate annotation counts as absent.
pub fn service(service: &KubeService) -> Service {
    Service {
        name: service.name_any(),
        selector: service
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default(),
        rps: annotations::rps(service.annotations()).unwrap_or(None),
    }
}

/// What `reporter` puts in `destination_version` for pods labelled `labels`, as Istio
/// does: a sidecar reports its pod's `version` label (`unknown` without one); a waypoint
/// reports the workload's canonical revision, the first of
/// `service.istio.io/canonical-revision`, `app.kubernetes.io/version` and `version`,
/// else `latest` (istio/istio `pkg/kube/labels/labels.go`; istio/proxy
/// `source/extensions/filters/http/istio_stats/istio_stats.cc` and
/// `source/extensions/common/workload_discovery/api.cc`).
pub fn reported_version(labels: &Labels, reporter: Reporter) -> String {
    match reporter {
        Reporter::Destination => labels
            .get("version")
            .cloned()
            .unwrap_or_else(|| UNKNOWN_VERSION.to_owned()),
        Reporter::Waypoint => [
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ]
        .iter()
        .find_map(|key| labels.get(*key))
        .cloned()
        .unwrap_or_else(|| "latest".to_owned()),
    }
}

/// A Deployment as a version: its pod template labels, the `destination_version`
/// `reporter` gives it, and its behaviour; malformed annotations count as absent.
pub fn workload(deployment: &Deployment, reporter: Reporter) -> Workload {
    let pod_labels: Labels = deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let defaults = Behaviour::default();
    let annotations = deployment.annotations();
    Workload {
        name: deployment.name_any(),
        version: reported_version(&pod_labels, reporter),
        pod_labels,
        behaviour: Behaviour {
            error_rate: annotations::error_rate(annotations).unwrap_or(defaults.error_rate),
            mean_latency_ms: annotations::latency_ms(annotations)
                .unwrap_or(defaults.mean_latency_ms),
            p99_latency_ms: annotations::latency_p99_ms(annotations).unwrap_or(None),
        },
    }
}

/// Every malformed `sim.weir.dev/*` annotation on an object.
pub fn annotation_problems(meta: &ObjectMeta) -> Vec<AnnotationError> {
    let none = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&none);
    [
        annotations::error_rate(annotations).err(),
        annotations::latency_p99_ms(annotations).err(),
        annotations::latency_ms(annotations).err(),
        annotations::rps(annotations).err(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The objects of one namespace as a [`Mesh`], each list ordered by name (the routes of
/// VirtualServices before the rules of HTTPRoutes). Istio and Gateway API objects whose
/// spec cannot be read are left out.
pub fn mesh(
    namespace: &str,
    virtual_services: &[Arc<DynamicObject>],
    http_routes: &[Arc<DynamicObject>],
    destination_rules: &[Arc<DynamicObject>],
    services: &[Arc<KubeService>],
    deployments: &[Arc<Deployment>],
    reporter: Reporter,
) -> Mesh {
    let mut virtual_services: Vec<&DynamicObject> = virtual_services.iter().map(|o| &**o).collect();
    virtual_services.sort_by_key(|o| o.name_any());
    let mut http_route_objects: Vec<&DynamicObject> = http_routes.iter().map(|o| &**o).collect();
    http_route_objects.sort_by_key(|o| o.name_any());
    let mut mesh = Mesh {
        namespace: namespace.to_owned(),
        routes: virtual_services
            .into_iter()
            .filter_map(|vs| self::http_routes(vs).ok())
            .flatten()
            .chain(
                http_route_objects
                    .into_iter()
                    .filter_map(|route| http_route_rules(route).ok())
                    .flatten(),
            )
            .collect(),
        destination_rules: destination_rules
            .iter()
            .filter_map(|dr| destination_rule(dr).ok())
            .collect(),
        services: services.iter().map(|s| service(s)).collect(),
        workloads: deployments.iter().map(|d| workload(d, reporter)).collect(),
    };
    mesh.destination_rules.sort_by(|a, b| a.name.cmp(&b.name));
    mesh.services.sort_by(|a, b| a.name.cmp(&b.name));
    mesh.workloads.sort_by(|a, b| a.name.cmp(&b.name));
    mesh
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn istio(resource: &ApiResource, name: &str, spec: serde_json::Value) -> DynamicObject {
        DynamicObject::new(name, resource)
            .within("shop")
            .data(json!({ "spec": spec }))
    }

    #[test]
    fn virtual_service_routes_keep_their_order_hosts_subsets_and_weights() {
        let vs = istio(
            &virtual_service_resource(),
            "checkout",
            json!({
                "hosts": ["checkout"],
                "http": [
                    { "name": "primary", "route": [
                        { "destination": { "host": "checkout", "subset": "stable" }, "weight": 80 },
                        { "destination": { "host": "checkout.shop.svc.cluster.local", "subset": "canary" }, "weight": 20 }
                    ]},
                    { "redirect": { "uri": "/elsewhere" } },
                    { "route": [ { "destination": { "host": "checkout" } } ] }
                ]
            }),
        );
        let routes = http_routes(&vs).unwrap();
        assert_eq!(routes.len(), 3);
        assert_eq!(
            routes[0].key,
            RouteKey {
                kind: RouteKind::VirtualService,
                name: "checkout".to_owned(),
                index: 0
            }
        );
        assert_eq!(
            routes[0].destinations,
            vec![
                RouteDestination {
                    host: "checkout".to_owned(),
                    subset: Some("stable".to_owned()),
                    weight: Some(80)
                },
                RouteDestination {
                    host: "checkout.shop.svc.cluster.local".to_owned(),
                    subset: Some("canary".to_owned()),
                    weight: Some(20),
                },
            ]
        );
        assert!(routes[1].destinations.is_empty());
        assert_eq!(routes[2].key.index, 2);
        assert_eq!(
            routes[2].destinations,
            vec![RouteDestination {
                host: "checkout".to_owned(),
                subset: None,
                weight: None
            }]
        );
    }

    #[test]
    fn malformed_istio_spec_is_an_error_naming_the_object() {
        let vs = istio(
            &virtual_service_resource(),
            "broken",
            json!({ "http": "not a list" }),
        );
        let err = http_routes(&vs).unwrap_err();
        assert_eq!((err.kind, err.name.as_str()), ("VirtualService", "broken"));
    }

    /// An HTTPRoute as the apiserver returns it (defaults filled: `group: ""`,
    /// `kind: Service`, `weight: 1`) and with fields left out.
    #[test]
    fn http_route_rules_keep_their_order_backends_and_weights() {
        let route = istio(
            &http_route_resource(),
            "checkout",
            json!({
                "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout", "port": 80 }],
                "rules": [
                    {
                        "matches": [{ "headers": [{ "type": "Exact", "name": "x-debug", "value": "1" }] }],
                        "backendRefs": [{ "group": "", "kind": "Service", "name": "checkout-debug", "port": 80, "weight": 1 }]
                    },
                    {
                        "name": "primary",
                        "filters": [{ "type": "RequestHeaderModifier", "requestHeaderModifier": { "set": [{ "name": "x-a", "value": "b" }] } }],
                        "backendRefs": [
                            { "group": "", "kind": "Service", "name": "checkout-stable", "port": 80, "weight": 75,
                              "filters": [{ "type": "ResponseHeaderModifier", "responseHeaderModifier": { "remove": ["x-internal"] } }] },
                            { "name": "checkout-canary", "namespace": "shop", "port": 80 }
                        ]
                    },
                    {
                        "filters": [{ "type": "RequestRedirect", "requestRedirect": { "hostname": "example.com" } }]
                    },
                    {
                        "backendRefs": [
                            { "name": "checkout", "namespace": "other", "port": 80, "weight": 2 },
                            { "group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": "checkout", "port": 80, "weight": 3 },
                            { "group": "", "kind": "Pod", "name": "checkout", "weight": 4 }
                        ]
                    }
                ]
            }),
        );
        let rules = http_route_rules(&route).unwrap();
        assert_eq!(rules.len(), 4);
        assert_eq!(
            rules.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
            (0..4)
                .map(|index| RouteKey {
                    kind: RouteKind::HttpRoute,
                    name: "checkout".to_owned(),
                    index
                })
                .collect::<Vec<_>>()
        );
        let destination = |host: &str, weight: Option<u32>| RouteDestination {
            host: host.to_owned(),
            subset: None,
            weight,
        };
        assert_eq!(
            rules[0].destinations,
            vec![destination("checkout-debug", Some(1))]
        );
        assert_eq!(
            rules[1].destinations,
            vec![
                destination("checkout-stable", Some(75)),
                destination("checkout-canary.shop", None),
            ]
        );
        assert!(rules[2].destinations.is_empty());
        assert_eq!(
            rules[3].destinations,
            vec![
                destination("checkout.other", Some(2)),
                destination("multicluster.x-k8s.io/ServiceImport//checkout", Some(3)),
                destination("/Pod//checkout", Some(4)),
            ]
        );
        // Backends of other kinds name no Service, whichever the namespace.
        for d in &rules[3].destinations[1..] {
            assert_eq!(
                crate::mesh::ServiceRef::from_host(&d.host, "shop"),
                None,
                "{d:?}"
            );
        }
    }

    #[test]
    fn malformed_http_route_spec_is_an_error_naming_the_object() {
        let route = istio(
            &http_route_resource(),
            "broken",
            json!({ "rules": [{ "backendRefs": [{ "port": 80 }] }] }),
        );
        let err = http_route_rules(&route).unwrap_err();
        assert_eq!((err.kind, err.name.as_str()), ("HTTPRoute", "broken"));
        assert!(err.to_string().starts_with("HTTPRoute broken: "), "{err}");
    }

    /// A VirtualService and an HTTPRoute of the same name both route: their routes
    /// come in order (VirtualServices first, each kind by name) under distinct keys,
    /// and an HTTPRoute whose spec cannot be read is left out.
    #[test]
    fn mesh_holds_the_routes_of_virtual_services_and_http_routes() {
        let vs = Arc::new(istio(
            &virtual_service_resource(),
            "checkout",
            json!({ "http": [{ "route": [{ "destination": { "host": "checkout-stable" }, "weight": 100 }] }] }),
        ));
        let backend =
            |name: &str| json!({ "rules": [{ "backendRefs": [{ "name": name, "port": 80 }] }] });
        let routes = [
            Arc::new(istio(
                &http_route_resource(),
                "payments",
                backend("payments"),
            )),
            Arc::new(istio(
                &http_route_resource(),
                "checkout",
                backend("checkout-stable"),
            )),
            Arc::new(istio(
                &http_route_resource(),
                "broken",
                json!({ "rules": "not a list" }),
            )),
        ];
        let mesh = mesh("shop", &[vs], &routes, &[], &[], &[], Reporter::Destination);
        let keys: Vec<(RouteKind, &str, usize)> = mesh
            .routes
            .iter()
            .map(|r| (r.key.kind, r.key.name.as_str(), r.key.index))
            .collect();
        assert_eq!(
            keys,
            vec![
                (RouteKind::VirtualService, "checkout", 0),
                (RouteKind::HttpRoute, "checkout", 0),
                (RouteKind::HttpRoute, "payments", 0),
            ]
        );
        assert_eq!(mesh.routes[1].destinations[0].host, "checkout-stable");
    }

    #[test]
    fn destination_rule_subsets_carry_their_labels() {
        let dr = istio(
            &destination_rule_resource(),
            "checkout",
            json!({
                "host": "checkout",
                "trafficPolicy": { "tls": { "mode": "ISTIO_MUTUAL" } },
                "subsets": [
                    { "name": "stable", "labels": { "version": "v1" } },
                    { "name": "all" }
                ]
            }),
        );
        let rule = destination_rule(&dr).unwrap();
        assert_eq!(rule.host, "checkout");
        assert_eq!(
            rule.subsets[0].labels,
            Labels::from([("version".to_owned(), "v1".to_owned())])
        );
        assert!(rule.subsets[1].labels.is_empty());
    }

    #[test]
    fn deployment_becomes_a_version_with_its_behaviour() {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {
                "name": "checkout-v2",
                "namespace": "shop",
                "annotations": { "sim.weir.dev/error-rate": "10%", "sim.weir.dev/latency-ms": "250" }
            },
            "spec": {
                "selector": { "matchLabels": { "app": "checkout" } },
                "template": { "metadata": { "labels": { "app": "checkout", "app.kubernetes.io/version": "1.5.0" } } }
            }
        }))
        .unwrap();
        let workload = workload(&deployment, Reporter::Waypoint);
        assert_eq!(workload.name, "checkout-v2");
        assert_eq!(workload.version, "1.5.0");
        assert_eq!(workload.behaviour.error_rate.parts_per_million(), 100_000);
        assert_eq!(workload.behaviour.mean_latency_ms, 250.0);
        // A sidecar reports the `version` label, which these pods lack.
        assert_eq!(
            super::workload(&deployment, Reporter::Destination).version,
            UNKNOWN_VERSION
        );
    }

    #[test]
    fn each_reporter_names_a_version_as_istio_does() {
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let both = labels(&[("version", "v2"), ("app.kubernetes.io/version", "1.5.0")]);
        assert_eq!(reported_version(&both, Reporter::Destination), "v2");
        assert_eq!(reported_version(&both, Reporter::Waypoint), "1.5.0");
        let pinned = labels(&[
            ("version", "v2"),
            ("service.istio.io/canonical-revision", "r7"),
        ]);
        assert_eq!(reported_version(&pinned, Reporter::Waypoint), "r7");
        assert_eq!(reported_version(&labels(&[]), Reporter::Waypoint), "latest");
    }

    #[test]
    fn malformed_annotations_fall_back_to_defaults_and_are_reported() {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {
                "name": "checkout-v1",
                "annotations": { "sim.weir.dev/error-rate": "often", "sim.weir.dev/latency-ms": "5" }
            },
            "spec": { "selector": {}, "template": {} }
        }))
        .unwrap();
        let workload = workload(&deployment, Reporter::Destination);
        assert_eq!(workload.behaviour.error_rate.parts_per_million(), 0);
        assert_eq!(workload.behaviour.mean_latency_ms, 5.0);
        let problems = annotation_problems(&deployment.metadata);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].annotation, annotations::ERROR_RATE);
    }

    #[test]
    fn service_reads_selector_and_rate() {
        let svc: KubeService = serde_json::from_value(json!({
            "metadata": { "name": "checkout", "annotations": { "sim.weir.dev/rps": "0" } },
            "spec": { "selector": { "app": "checkout" } }
        }))
        .unwrap();
        let service = service(&svc);
        assert_eq!(
            service.selector,
            Labels::from([("app".to_owned(), "checkout".to_owned())])
        );
        assert_eq!(service.rps, Some(0.0));
    }
}
