//! Reads: the watch caches → the planner's view of one Service, and watch events →
//! the Services they concern.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::routing::Touched;
use super::template::identities;
use super::validate::Misconfiguration;
use super::{opted_in, service_ref};
use crate::plan::Version;
use crate::spec;
use weir_analysis::Reporter;

/// The versions of `service`: its Deployments (pod template labels ⊇ the Service's
/// selector), each named by the value of `version_label`.
///
/// A Deployment that matches but has no version label, or two Deployments claiming the
/// same version, make the Service misconfigured: weir could not tell versions apart.
pub fn versions(
    service: &Service,
    deployments: &[std::sync::Arc<Deployment>],
    version_label: &str,
    reporter: Reporter,
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
        let (template, legacy_template) = identities(deployment);
        found.push(Version {
            name: name.clone(),
            deployment: deployment.name_any(),
            template,
            legacy_template,
            available: is_available(deployment),
            created: deployment
                .creation_timestamp()
                .map(|t| t.0)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            reported: reporter.reported_version(&labels),
            replicas: deployment.spec.replicas,
            resource_version: deployment.resource_version(),
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

/// Opted-in Services whose host-level split (`weir.dev/stable-service` or
/// `weir.dev/canary-service`) names `service`.
pub fn services_splitting(store: &Store<Service>, service: &Service) -> Vec<ObjectRef<Service>> {
    let name = service.name_any();
    store
        .state()
        .iter()
        .filter(|s| opted_in(s))
        .filter(|s| spec::split_service_names(s.annotations()).any(|split| split == name))
        .map(|s| service_ref(s))
        .collect()
}

/// Opted-in Services a change of routing objects concerns (see [`Touched`]): those the
/// objects name now or named before, those whose split Services (`weir.dev/stable-service`,
/// `weir.dev/canary-service`) the objects name, and those whose `annotation`
/// (`weir.dev/virtual-service` or `weir.dev/destination-rule`) names one of the objects.
pub fn services_touched(
    store: &Store<Service>,
    annotation: &str,
    touched: &Touched,
) -> Vec<ObjectRef<Service>> {
    store
        .state()
        .iter()
        .filter(|s| opted_in(s))
        .filter(|s| {
            let named = |name: &str| touched.services.contains(&name.to_ascii_lowercase());
            named(&s.name_any())
                || spec::split_service_names(s.annotations()).any(named)
                || s.annotations()
                    .get(annotation)
                    .is_some_and(|named| touched.objects.contains(named))
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
    use crate::controller::template::{legacy_template_hash, template_identity};
    use crate::spec::keys;

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
        let vs = versions(&service(), &ds, "version", Reporter::Destination).unwrap();
        let names: Vec<&str> = vs.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["v1", "v2"]);
        assert!(!vs[0].available, "no status means not available");
    }

    #[test]
    fn a_selected_deployment_without_a_version_label_is_a_misconfiguration() {
        let ds = vec![deployment("checkout", &[("app", "checkout")], "a:1")];
        let err = versions(&service(), &ds, "version", Reporter::Destination).unwrap_err();
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
        let err = versions(&service(), &ds, "version", Reporter::Destination).unwrap_err();
        assert!(
            matches!(&err, Misconfiguration::SharedVersion { first, second, .. } if first == "a" && second == "b"),
            "{err:?}"
        );
        assert!(err.to_string().contains("both have version=v1"), "{err}");
    }

    #[test]
    fn a_slimmed_deployment_keeps_its_identities_labels_and_replicas() {
        let whole = deployment(
            "checkout-v2",
            &[("app", "checkout"), ("version", "v2")],
            "img:2",
        );
        let mut slimmed = (*whole).clone();
        super::super::template::slim(&mut slimmed);
        assert!(
            slimmed.spec.template.spec.is_none(),
            "the pod spec is dropped"
        );
        let of = |d: Deployment| {
            versions(
                &service(),
                &[std::sync::Arc::new(d)],
                "version",
                Reporter::Destination,
            )
            .unwrap()
        };
        assert_eq!(of(slimmed.clone()), of((*whole).clone()));
        // Slimming again (a re-list of the same object) changes nothing.
        let mut twice = slimmed.clone();
        super::super::template::slim(&mut twice);
        assert_eq!(of(twice), of((*whole).clone()));
    }

    #[test]
    fn a_version_carries_both_template_identities() {
        let a = deployment("a", &[("app", "checkout"), ("version", "v1")], "a:1");
        let v = versions(
            &service(),
            std::slice::from_ref(&a),
            "version",
            Reporter::Destination,
        )
        .unwrap();
        assert_eq!(v[0].template, template_identity(&a.spec.template));
        assert_eq!(v[0].legacy_template, legacy_template_hash(&a.spec.template));
        assert!(v[0].built_as(&v[0].template) && v[0].built_as(&v[0].legacy_template));
        assert!(!v[0].built_as("t2:0000000000000000"));
    }

    #[test]
    fn a_touch_wakes_opted_in_services_named_or_naming_the_object() {
        let (store, mut writer) = kube::runtime::reflector::store::<Service>();
        let svc = |name: &str, opted: bool, names: Option<&str>| {
            let mut s = service();
            s.metadata.name = Some(name.into());
            s.metadata.namespace = Some("shop".into());
            let mut annotations = BTreeMap::new();
            if opted {
                annotations.insert(keys::ENABLED.to_string(), "true".to_string());
            }
            if let Some(vs) = names {
                annotations.insert(keys::VIRTUAL_SERVICE.to_string(), vs.to_string());
            }
            s.metadata.annotations = Some(annotations);
            s
        };
        for s in [
            svc("checkout", true, None),
            svc("payments", true, Some("edge")),
            svc("search", true, Some("other")),
            svc("cart", false, None),
        ] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(s));
        }
        let touched = Touched {
            objects: ["edge".to_string()].into(),
            services: ["checkout".to_string(), "cart".to_string()].into(),
        };
        let mut woken: Vec<String> = services_touched(&store, keys::VIRTUAL_SERVICE, &touched)
            .into_iter()
            .map(|r| r.name)
            .collect();
        woken.sort();
        // cart is named but not opted in; search names another object.
        assert_eq!(woken, ["checkout", "payments"]);
        // The DestinationRule annotation is another key: payments' names no DestinationRule.
        let woken = services_touched(&store, keys::DESTINATION_RULE, &touched);
        assert_eq!(woken.len(), 1);

        // A host-level split: a route on `shop-canary` concerns the Service that names it.
        let mut split = svc("shop", true, None);
        split.annotations_mut().extend([
            (keys::STABLE_SERVICE.to_string(), "shop-stable".to_string()),
            (keys::CANARY_SERVICE.to_string(), "shop-canary".to_string()),
        ]);
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(split));
        let touched = Touched {
            objects: ["shop".to_string()].into(),
            services: ["shop-canary".to_string()].into(),
        };
        let woken: Vec<String> = services_touched(&store, keys::VIRTUAL_SERVICE, &touched)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(woken, ["shop"]);

        // An edit of the split Service itself wakes it too; another Service wakes nobody.
        let mut canary = service();
        canary.metadata.name = Some("shop-canary".into());
        let woken: Vec<String> = services_splitting(&store, &canary)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(woken, ["shop"]);
        canary.metadata.name = Some("shop-debug".into());
        assert!(services_splitting(&store, &canary).is_empty());
    }
}
