//! The first half of a reconcile: [`read`] what a Service's configuration names, then
//! [`validate`] it (pure) into the spec, the versions, the patch target and the custom
//! metrics; or the [`Misconfiguration`] that stops the Service. Shared by the agent and
//! `weir explain`, so that both read the same objects and name the same problem.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use weir_analysis::{MetricTemplate, MetricsConfigError, Reporter};

use super::observe;
use super::routing::RoutingIndex;
use crate::mesh::{self, DestinationRule, HttpRoute, MeshError, Routing, Target, VirtualService};
use crate::plan::{Controls, Version};
use crate::spec::{self, Defaults, RolloutSpec, SpecErrors, keys};

/// Why weir cannot manage a Service. Each variant carries what the user needs to fix it;
/// the agent reports it as the `Misconfigured` phase with an Event, and changes no
/// traffic until it is fixed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Misconfiguration {
    /// weir annotations that do not parse, conflict, or are unknown (typos); controls
    /// included. Each error names its annotation and a valid example.
    #[error("{0}")]
    Annotations(SpecErrors),

    #[error(
        "ConfigMap {config_map:?} named by {key} does not exist in namespace {namespace:?}; create it or remove the annotation",
        key = keys::METRICS
    )]
    MetricsConfigMapMissing {
        config_map: String,
        namespace: String,
    },

    /// The custom metric templates cannot be used; names every bad key.
    #[error("{0}")]
    MetricsConfigMap(#[from] MetricsConfigError),

    #[error(
        "Service {service:?} has no selector, so no Deployment can be told apart as a version; add spec.selector"
    )]
    NoSelector { service: String },

    #[error(
        "Deployment {deployment:?} matches the selector of Service {service:?} but its pod template has no {label:?} label; \
         add it (or set {key} to the label that names versions)",
        key = keys::VERSION_LABEL
    )]
    NoVersionLabel {
        deployment: String,
        service: String,
        label: String,
    },

    #[error(
        "Deployments {first:?} and {second:?} both have {label}={version}; give each version its own label value"
    )]
    SharedVersion {
        first: String,
        second: String,
        label: String,
        version: String,
    },

    /// Two versions the gates would compare are one version to the mesh's metrics.
    #[error(
        "Deployments {first:?} and {second:?} are both reported as destination_version {reported:?} \
         by {reporter}s, so their metrics cannot be told apart; {fix}"
    )]
    SameReportedVersion {
        first: String,
        second: String,
        reported: String,
        reporter: &'static str,
        fix: &'static str,
    },

    /// The VirtualService, route or DestinationRule cannot be resolved.
    #[error("{0}")]
    Mesh(#[from] MeshError),
}

/// Everything [`read`] read, for [`Inputs`]: the Deployments come from elsewhere (the
/// agent's cache, a list by the CLI).
pub struct Reads {
    pub service: Service,
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    /// The HTTPRoutes that may hold a host-level split's route; empty for a split
    /// between subsets, or where the Gateway API is not installed.
    pub http_routes: Vec<HttpRoute>,
    /// The stable and canary Services of a host-level split, those of the two that
    /// exist; empty for a split between subsets.
    pub split_services: Vec<Service>,
    /// The ConfigMap `weir.dev/metrics` names, if it names a valid one that exists.
    pub metrics: Option<ConfigMap>,
}

/// A read that failed, with what it was reading (for a message that says which
/// permission is missing).
#[derive(Debug, thiserror::Error)]
#[error("cannot {verb} {resource}: {source}")]
pub struct ReadError {
    pub verb: &'static str,
    pub resource: &'static str,
    #[source]
    pub source: kube::Error,
}

/// Fresh reads of the Service `name` and of the objects its configuration names, in
/// `namespace`: the agent's watch caches may lag behind its own last writes, and a plan
/// made from a stale status or stale weights would undo them.
///
/// With an `index` (the agent), only the routing objects that concern the Service are
/// read: those its annotations name, else those the index says name it, so a reconcile
/// costs the same in a namespace of ten Services or of a thousand. When that finds none
/// of a kind (the Service is misconfigured, or the object that would fix it is newer
/// than the index), the whole kind is listed once, so that the misconfiguration is
/// reported from the full picture. Without one (the CLI), both kinds are listed.
pub async fn read(
    client: &Client,
    namespace: &str,
    name: &str,
    index: Option<&RoutingIndex>,
) -> Result<Reads, ReadError> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service = services
        .get(name)
        .await
        .map_err(failed("get", "services"))?;
    let named = |key| {
        service
            .annotations()
            .get(key)
            .filter(|name| spec::parse_object_name(name).is_ok())
            .cloned()
    };
    let vs_named = named(keys::VIRTUAL_SERVICE);
    let dr_named = named(keys::DESTINATION_RULE);
    // A host-level split: the route is found through the stable Service's host, and
    // the two Services are read fresh like the routing objects.
    let split: Vec<String> = spec::split_service_names(service.annotations())
        .map(str::to_owned)
        .collect();
    let routed = split.first().map_or(name, String::as_str);
    let hr_named = named(keys::HTTP_ROUTE);
    let host_split = !split.is_empty();
    // Only a host-level split may be routed by an HTTPRoute. The agent reads them only
    // where the Gateway API is served (its index says); the CLI always, an absent API
    // being none.
    let served = index.is_none_or(RoutingIndex::gateway_api);
    let vs_indexed = index.map(|index| index.virtual_services_routing_to(routed));
    let hr_indexed = index
        .filter(|index| index.gateway_api())
        .map(|index| index.http_routes_routing_to(routed));
    // In a host-level split either kind may hold the route. An annotation naming one
    // rules the other out; so does the index knowing objects of only one kind that route
    // to the stable Service, so that the other kind is not listed on every reconcile for
    // want of any.
    let only = |this: &Option<Vec<String>>, other: &Option<Vec<String>>| {
        this.as_ref().is_some_and(Vec::is_empty) && other.as_ref().is_some_and(|o| !o.is_empty())
    };
    let read_vs = !host_split
        || vs_named.is_some()
        || (hr_named.is_none() && !only(&vs_indexed, &hr_indexed));
    let read_hr = host_split
        && served
        && vs_named.is_none()
        && (hr_named.is_some() || !only(&hr_indexed, &vs_indexed));
    let (virtual_services, destination_rules, http_routes, split_services) = tokio::try_join!(
        async {
            if !read_vs {
                return Ok(Vec::new());
            }
            related::<VirtualService>(
                client,
                namespace,
                vs_named.as_deref(),
                vs_indexed.clone(),
                "virtualservices",
            )
            .await
        },
        async {
            if host_split {
                return Ok(Vec::new());
            }
            related::<DestinationRule>(
                client,
                namespace,
                dr_named.as_deref(),
                index.map(|index| index.destination_rules_of(name)),
                "destinationrules",
            )
            .await
        },
        async {
            if !read_hr {
                return Ok(Vec::new());
            }
            related::<HttpRoute>(
                client,
                namespace,
                hr_named.as_deref(),
                hr_indexed.clone(),
                "httproutes",
            )
            .await
            .or_else(|e| match e.source {
                kube::Error::Api(status) if status.code == 404 => Ok(Vec::new()),
                source => Err(ReadError { source, ..e }),
            })
        },
        async {
            let found =
                futures::future::try_join_all(split.iter().map(|name| services.get_opt(name)))
                    .await
                    .map_err(failed("get", "services"))?;
            Ok(found.into_iter().flatten().collect::<Vec<Service>>())
        },
    )?;
    let metrics = match service.annotations().get(keys::METRICS) {
        Some(cm) if spec::parse_object_name(cm).is_ok() => {
            Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get_opt(cm)
                .await
                .map_err(failed("get", "configmaps"))?
        }
        _ => None,
    };
    Ok(Reads {
        service,
        virtual_services,
        destination_rules,
        http_routes,
        split_services,
        metrics,
    })
}

fn failed(verb: &'static str, resource: &'static str) -> impl Fn(kube::Error) -> ReadError {
    move |source| ReadError {
        verb,
        resource,
        source,
    }
}

/// The objects of one routing kind a Service needs: the one its annotation names, if
/// any, else the ones the index lists, each GET fresh; the whole kind when that finds
/// nothing or there is no index (see [`read`]).
async fn related<K>(
    client: &Client,
    namespace: &str,
    named: Option<&str>,
    indexed: Option<Vec<String>>,
    resource: &'static str,
) -> Result<Vec<K>, ReadError>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let names = match (named, indexed) {
        (Some(name), _) => Some(vec![name.to_owned()]),
        (None, indexed) => indexed,
    };
    if let Some(names) = names {
        let found: Vec<K> =
            futures::future::try_join_all(names.iter().map(|name| api.get_opt(name)))
                .await
                .map_err(failed("get", resource))?
                .into_iter()
                .flatten()
                .collect();
        if !found.is_empty() {
            return Ok(found);
        }
    }
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(failed("list", resource))?
        .items)
}

/// What one validation looks at, as read from the cluster.
pub struct Inputs<'a> {
    /// The agent's namespace.
    pub namespace: &'a str,
    /// The agent's defaults for every optional annotation (for the CLI, the settings
    /// the agent recorded).
    pub defaults: &'a Defaults,
    pub service: &'a Service,
    pub virtual_services: &'a [VirtualService],
    pub destination_rules: &'a [DestinationRule],
    /// The HTTPRoutes of a host-level split ([`Reads::http_routes`]).
    pub http_routes: &'a [HttpRoute],
    /// The split Services of a host-level split ([`Reads::split_services`]).
    pub split_services: &'a [Service],
    /// The ConfigMap `weir.dev/metrics` names, if it exists.
    pub metrics: Option<&'a ConfigMap>,
    /// The namespace's Deployments; `None` while they are not observed yet (a cache
    /// still listing), which is never read as "no versions".
    pub deployments: Option<&'a [Arc<Deployment>]>,
    /// Whose reports the gates read, which decides what each version is called in them;
    /// `None` when unknown (the CLI does not know the agent's mode): then versions are
    /// not checked for being told apart in the metrics.
    pub reporter: Option<Reporter>,
}

/// A Service whose configuration is valid: what the planner and the gates need.
#[derive(Debug)]
pub struct Valid {
    pub spec: RolloutSpec,
    pub controls: Controls,
    /// `None` when the Deployments are not observed yet.
    pub versions: Option<Vec<Version>>,
    pub target: Target,
    pub custom: Vec<MetricTemplate>,
}

/// Validates one Service's configuration, in the order a person would fix it:
/// annotations, the metrics ConfigMap, versions, then the mesh objects.
pub fn validate(inputs: &Inputs<'_>) -> Result<Valid, Misconfiguration> {
    let service = inputs.service;
    let annotations = service.annotations();
    // Every problem of the annotations at once, the controls' included.
    let (spec, controls) = match (
        spec::parse(&service.name_any(), annotations, inputs.defaults),
        spec::controls(annotations),
    ) {
        (Ok(spec), Ok(controls)) => (spec, controls),
        (spec, controls) => {
            let errors = spec.err().into_iter().chain(controls.err()).flatten();
            let errors = SpecErrors::from_vec(errors.collect()).expect("one of them failed");
            return Err(Misconfiguration::Annotations(errors));
        }
    };
    let custom = match (&spec.metrics_config_map, inputs.metrics) {
        (None, _) => Vec::new(),
        (Some(cm), None) => {
            return Err(Misconfiguration::MetricsConfigMapMissing {
                config_map: cm.clone(),
                namespace: inputs.namespace.to_string(),
            });
        }
        (Some(cm), Some(map)) => {
            let data = map.data.clone().unwrap_or_default();
            weir_analysis::parse_metrics(cm, &data)?
        }
    };
    let versions = inputs
        .deployments
        .map(|deployments| {
            observe::versions(
                service,
                deployments,
                &spec.version_label,
                inputs.reporter.unwrap_or(Reporter::Destination),
            )
        })
        .transpose()?;
    let routing = Routing {
        virtual_services: inputs.virtual_services,
        destination_rules: inputs.destination_rules,
        http_routes: inputs.http_routes,
        services: inputs.split_services,
    };
    let target = mesh::resolve(&spec, inputs.namespace, routing)?;
    if let (Some(versions), Some(reporter)) = (&versions, inputs.reporter) {
        reported_apart(versions, target.subsets.stable.as_deref(), reporter)?;
    }
    Ok(Valid {
        spec,
        controls,
        versions,
        target,
        custom,
    })
}

/// The stable version and every version that may be released after it must each have
/// their own `destination_version`, or a check would compare a version with itself.
/// Versions older than stable are never compared again, and may share theirs.
fn reported_apart(
    versions: &[Version],
    stable: Option<&str>,
    reporter: Reporter,
) -> Result<(), Misconfiguration> {
    let stable_created =
        stable.and_then(|s| versions.iter().find(|v| v.name == s).map(|v| v.created));
    let compared: Vec<&Version> = versions
        .iter()
        .filter(|v| stable_created.is_none_or(|at| v.created >= at))
        .collect();
    for (i, a) in compared.iter().enumerate() {
        if let Some(b) = compared[i + 1..].iter().find(|b| b.reported == a.reported) {
            return Err(Misconfiguration::SameReportedVersion {
                first: a.deployment.clone(),
                second: b.deployment.clone(),
                reported: a.reported.clone(),
                reporter: reporter.label(),
                fix: match reporter {
                    Reporter::Destination => {
                        "sidecars report the pods' `version` label: give each version's pods its own"
                    }
                    Reporter::Waypoint => {
                        "waypoints report the canonical revision (service.istio.io/canonical-revision, else app.kubernetes.io/version, else version): give each version's pods their own"
                    }
                },
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn service(annotations: &[(&str, &str)]) -> Service {
        let annotations: BTreeMap<&str, &str> = [(keys::ENABLED, "true")]
            .into_iter()
            .chain(annotations.iter().copied())
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "checkout", "namespace": "shop", "annotations": annotations},
            "spec": {"selector": {"app": "checkout"}}
        }))
        .unwrap()
    }

    fn virtual_service() -> VirtualService {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "checkout", "namespace": "shop"},
            "spec": {"hosts": ["checkout"], "http": [{
                "name": "primary",
                "route": [{"destination": {"host": "checkout", "subset": "stable"}, "weight": 100}]
            }]}
        }))
        .unwrap()
    }

    fn destination_rule() -> DestinationRule {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "checkout", "namespace": "shop"},
            "spec": {"host": "checkout", "subsets": [
                {"name": "stable", "labels": {"version": "v1"}},
                {"name": "canary", "labels": {"version": "v1"}}
            ]}
        }))
        .unwrap()
    }

    fn deployment(name: &str, version: &str) -> Arc<Deployment> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {
                    "selector": {"matchLabels": {"app": "checkout"}},
                    "template": {
                        "metadata": {"labels": {"app": "checkout", "version": version}},
                        "spec": {"containers": [{"name": "app", "image": "shop/checkout:1"}]}
                    }
                }
            }))
            .unwrap(),
        )
    }

    fn run(
        service: &Service,
        virtual_services: &[VirtualService],
        metrics: Option<&ConfigMap>,
        deployments: Option<&[Arc<Deployment>]>,
    ) -> Result<Valid, Misconfiguration> {
        validate(&Inputs {
            namespace: "shop",
            defaults: &Defaults::default(),
            service,
            virtual_services,
            destination_rules: &[destination_rule()],
            split_services: &[],
            http_routes: &[],
            metrics,
            deployments,
            reporter: Some(Reporter::Destination),
        })
    }

    #[test]
    fn a_valid_service_resolves_its_target_and_versions() {
        let deployments = [deployment("checkout-v1", "v1")];
        let valid = run(
            &service(&[]),
            &[virtual_service()],
            None,
            Some(&deployments),
        )
        .unwrap();
        assert_eq!(valid.target.route_object.name, "checkout");
        let versions = valid.versions.expect("observed");
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].name, "v1");
        // Deployments not observed yet are "not observed", never "no versions".
        let unobserved = run(&service(&[]), &[virtual_service()], None, None).unwrap();
        assert_eq!(unobserved.versions, None);
    }

    #[test]
    fn each_misconfiguration_is_its_own_variant_with_what_fixes_it() {
        let vs = [virtual_service()];
        let bad_steps = run(&service(&[(keys::STEPS, "10,5")]), &vs, None, None);
        match bad_steps {
            Err(Misconfiguration::Annotations(errors)) => {
                assert!(errors.get(keys::STEPS).is_some(), "{errors}")
            }
            other => panic!("{other:?}"),
        }
        let bad_control = run(&service(&[(keys::PAUSE, "maybe")]), &vs, None, None);
        assert!(
            matches!(&bad_control, Err(Misconfiguration::Annotations(e)) if e.get(keys::PAUSE).is_some()),
            "{bad_control:?}"
        );

        let missing = run(&service(&[(keys::METRICS, "absent")]), &vs, None, None).unwrap_err();
        assert_eq!(
            missing,
            Misconfiguration::MetricsConfigMapMissing {
                config_map: "absent".into(),
                namespace: "shop".into(),
            }
        );
        // The status message and Event text, as before the enum.
        assert_eq!(
            missing.to_string(),
            "ConfigMap \"absent\" named by weir.dev/metrics does not exist in namespace \"shop\"; create it or remove the annotation"
        );

        let empty: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "empty"}})).unwrap();
        let invalid = run(
            &service(&[(keys::METRICS, "empty")]),
            &vs,
            Some(&empty),
            None,
        );
        assert!(
            matches!(&invalid, Err(Misconfiguration::MetricsConfigMap(e)) if e.config_map == "empty"),
            "{invalid:?}"
        );

        let twice = [deployment("a", "v1"), deployment("b", "v1")];
        let shared = run(&service(&[]), &vs, None, Some(&twice));
        assert!(
            matches!(&shared, Err(Misconfiguration::SharedVersion { version, .. }) if version == "v1"),
            "{shared:?}"
        );

        let no_route = run(&service(&[]), &[], None, None).unwrap_err();
        assert!(
            matches!(
                no_route,
                Misconfiguration::Mesh(MeshError::NoVirtualService { .. })
            ),
            "{no_route:?}"
        );
    }
}
