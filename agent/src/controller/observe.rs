//! Reads: the watch caches → the planner's view of one Service, and watch events →
//! the Services they concern.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::template::{legacy_template_hash, template_identity};
use super::validate::Misconfiguration;
use super::{opted_in, service_ref};
use crate::mesh::{self, DestinationRule, VirtualService};
use crate::plan::Version;
use crate::spec::keys;

/// The versions of `service`: its Deployments (pod template labels ⊇ the Service's
/// selector), each named by the value of `version_label`.
///
/// A Deployment that matches but has no version label, or two Deployments claiming the
/// same version, make the Service misconfigured: weir could not tell versions apart.
pub fn versions(
    service: &Service,
    deployments: &[std::sync::Arc<Deployment>],
    version_label: &str,
) -> Result<Vec<Version>, Misconfiguration> {
    let Some(selector) = selector(service) else {
        return Err(Misconfiguration::NoSelector {
            service: service.name_any(),
        });
    };
    let mut found: Vec<Version> = Vec::new();
    for deployment in deployments.iter().filter(|d| selects(selector, d)) {
        let labels = template_labels(deployment).cloned().unwrap_or_default();
        let Some(name) = labels.get(version_label) else {
            return Err(Misconfiguration::NoVersionLabel {
                deployment: deployment.name_any(),
                service: service.name_any(),
                label: version_label.to_string(),
            });
        };
        if let Some(other) = found.iter().find(|v| &v.name == name) {
            return Err(Misconfiguration::SharedVersion {
                first: other.deployment.clone(),
                second: deployment.name_any(),
                label: version_label.to_string(),
                version: name.clone(),
            });
        }
        found.push(Version {
            name: name.clone(),
            deployment: deployment.name_any(),
            template: template_identity(&deployment.spec.template),
            legacy_template: legacy_template_hash(&deployment.spec.template),
            available: is_available(deployment),
            created: deployment
                .creation_timestamp()
                .map(|t| t.0)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
        });
    }
    Ok(found)
}

fn selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    service
        .spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

fn template_labels(deployment: &Deployment) -> Option<&BTreeMap<String, String>> {
    deployment.spec.template.metadata.as_ref()?.labels.as_ref()
}

fn selects(selector: &BTreeMap<String, String>, deployment: &Deployment) -> bool {
    let Some(labels) = template_labels(deployment) else {
        return false;
    };
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Available, and the status describes the current spec (not a stale generation).
fn is_available(deployment: &Deployment) -> bool {
    let Some(status) = &deployment.status else {
        return false;
    };
    let current = status.observed_generation.is_some()
        && status.observed_generation == deployment.metadata.generation;
    let available =
        status.conditions.iter().flatten().any(|c| {
            c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")
        });
    current && available
}

/// Opted-in Services whose selector picks `deployment`'s pods.
pub fn services_selecting(
    store: &Store<Service>,
    deployment: &Deployment,
) -> Vec<ObjectRef<Service>> {
    store
        .state()
        .iter()
        .filter(|s| opted_in(s))
        .filter(|s| selector(s).is_some_and(|sel| selects(sel, deployment)))
        .map(|s| service_ref(s))
        .collect()
}

/// Opted-in Services that `virtual_service` routes to, or that name it.
pub fn services_routed_by(
    store: &Store<Service>,
    virtual_service: &VirtualService,
) -> Vec<ObjectRef<Service>> {
    let name = virtual_service.name_any();
    let namespace = virtual_service.namespace().unwrap_or_default();
    store
        .state()
        .iter()
        .filter(|s| opted_in(s))
        .filter(|s| {
            s.annotations().get(keys::VIRTUAL_SERVICE) == Some(&name)
                || mesh::routes_to(virtual_service, &s.name_any(), &namespace)
        })
        .map(|s| service_ref(s))
        .collect()
}

/// Opted-in Services whose subsets `destination_rule` may hold.
pub fn services_with_subsets_in(
    store: &Store<Service>,
    destination_rule: &DestinationRule,
) -> Vec<ObjectRef<Service>> {
    let name = destination_rule.name_any();
    let namespace = destination_rule.namespace().unwrap_or_default();
    store
        .state()
        .iter()
        .filter(|s| opted_in(s))
        .filter(|s| {
            s.annotations().get(keys::DESTINATION_RULE) == Some(&name)
                || mesh::host_matches(&destination_rule.spec.host, &s.name_any(), &namespace)
        })
        .map(|s| service_ref(s))
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::api::core::v1::{PodTemplateSpec, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn deployment(name: &str, labels: &[(&str, &str)], image: &str) -> std::sync::Arc<Deployment> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": image}]}
        }))
        .unwrap();
        std::sync::Arc::new(Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: DeploymentSpec {
                template,
                ..Default::default()
            },
            status: None,
        })
    }

    fn service() -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("checkout".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "checkout".to_string())].into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn versions_are_the_selected_deployments_by_label() {
        let ds = vec![
            deployment(
                "checkout-v1",
                &[("app", "checkout"), ("version", "v1")],
                "a:1",
            ),
            deployment(
                "checkout-v2",
                &[("app", "checkout"), ("version", "v2")],
                "a:2",
            ),
            deployment("other", &[("app", "other"), ("version", "v9")], "b:1"),
        ];
        let vs = versions(&service(), &ds, "version").unwrap();
        let names: Vec<&str> = vs.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["v1", "v2"]);
        assert!(!vs[0].available, "no status means not available");
    }

    #[test]
    fn a_selected_deployment_without_a_version_label_is_a_misconfiguration() {
        let ds = vec![deployment("checkout", &[("app", "checkout")], "a:1")];
        let err = versions(&service(), &ds, "version").unwrap_err();
        assert_eq!(
            err,
            Misconfiguration::NoVersionLabel {
                deployment: "checkout".into(),
                service: "checkout".into(),
                label: "version".into(),
            }
        );
        assert!(
            err.to_string().contains("has no \"version\" label"),
            "{err}"
        );
    }

    #[test]
    fn two_deployments_with_one_version_are_a_misconfiguration() {
        let ds = vec![
            deployment("a", &[("app", "checkout"), ("version", "v1")], "a:1"),
            deployment("b", &[("app", "checkout"), ("version", "v1")], "a:2"),
        ];
        let err = versions(&service(), &ds, "version").unwrap_err();
        assert!(
            matches!(&err, Misconfiguration::SharedVersion { first, second, .. } if first == "a" && second == "b"),
            "{err:?}"
        );
        assert!(err.to_string().contains("both have version=v1"), "{err}");
    }

    #[test]
    fn a_version_carries_both_template_identities() {
        let a = deployment("a", &[("app", "checkout"), ("version", "v1")], "a:1");
        let v = versions(&service(), std::slice::from_ref(&a), "version").unwrap();
        assert_eq!(v[0].template, template_identity(&a.spec.template));
        assert_eq!(v[0].legacy_template, legacy_template_hash(&a.spec.template));
        assert!(v[0].built_as(&v[0].template) && v[0].built_as(&v[0].legacy_template));
        assert!(!v[0].built_as("t2:0000000000000000"));
    }
}
