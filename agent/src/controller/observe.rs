//! Reads: the watch caches → the planner's view of one Service, and watch events →
//! the Services they concern.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::{Stream, StreamExt};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::template::identities;
use super::validate::Misconfiguration;
use super::{opted_in, service_ref};
use crate::mesh::{self, DestinationRule, VirtualService};
use crate::plan::Version;
use crate::spec::keys;
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

/// Wakes the Services a routing object (VirtualService, DestinationRule) concerns, now
/// **or before** its latest change: an edit that takes the managed route out of a
/// VirtualService names the Service no more, yet it is the Service that must hear of
/// it, at once, to report itself misconfigured. Remembers, per object, the Services it
/// woke last; a deletion wakes them too, and so does a re-list that no longer has the
/// object (deleted while the watch was down, which sends no delete event).
pub struct RoutingWakes<K: Resource<DynamicType = ()>> {
    woke: HashMap<ObjectRef<K>, HashSet<ObjectRef<Service>>>,
    /// The objects of the re-list under way, between `Init` and `InitDone`.
    listing: Option<HashSet<ObjectRef<K>>>,
}

impl<K: Resource<DynamicType = ()>> Default for RoutingWakes<K> {
    fn default() -> Self {
        RoutingWakes {
            woke: HashMap::new(),
            listing: None,
        }
    }
}

impl<K: Resource<DynamicType = ()>> RoutingWakes<K> {
    /// The Services to wake for one watch event; `concerned` names the Services an
    /// object concerns as it is now.
    pub fn wake(
        &mut self,
        event: watcher::Event<K>,
        concerned: impl Fn(&K) -> Vec<ObjectRef<Service>>,
    ) -> Vec<ObjectRef<Service>> {
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                let key = ObjectRef::from_obj(&object);
                if let Some(listing) = &mut self.listing {
                    listing.insert(key.clone());
                }
                let now: HashSet<_> = concerned(&object).into_iter().collect();
                let before = self.woke.insert(key, now.clone()).unwrap_or_default();
                now.union(&before).cloned().collect()
            }
            watcher::Event::Delete(object) => {
                let before = self
                    .woke
                    .remove(&ObjectRef::from_obj(&object))
                    .unwrap_or_default();
                let now: HashSet<_> = concerned(&object).into_iter().collect();
                now.union(&before).cloned().collect()
            }
            watcher::Event::Init => {
                self.listing = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitDone => {
                let Some(listed) = self.listing.take() else {
                    return Vec::new();
                };
                let gone: Vec<ObjectRef<K>> = self
                    .woke
                    .keys()
                    .filter(|key| !listed.contains(key))
                    .cloned()
                    .collect();
                let mut wake = HashSet::new();
                for key in gone {
                    wake.extend(self.woke.remove(&key).unwrap_or_default());
                }
                wake.into_iter().collect()
            }
        }
    }
}

/// The Services to reconcile for a watch of routing objects (see [`RoutingWakes`]).
pub fn routing_wakes<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    concerned: impl Fn(&K) -> Vec<ObjectRef<Service>> + Send + 'static,
) -> impl Stream<Item = ObjectRef<Service>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Send + 'static,
{
    let mut wakes = RoutingWakes::<K>::default();
    events.flat_map(move |event| {
        let services = match event {
            Ok(event) => wakes.wake(event, &concerned),
            Err(e) => {
                warn!(kind = %K::kind(&()), error = %e, "watching routing objects failed; retrying");
                Vec::new()
            }
        };
        futures::stream::iter(services)
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::api::core::v1::{PodTemplateSpec, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::controller::template::{legacy_template_hash, template_identity};

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

    fn routed(name: &str, routes_to: &[&str]) -> VirtualService {
        let http: Vec<serde_json::Value> = routes_to
            .iter()
            .map(|host| serde_json::json!({"route": [{"destination": {"host": host}}]}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"hosts": ["shop.example"], "http": http}
        }))
        .unwrap()
    }

    /// The Services of the namespace that `vs` routes to, as the controller's mapper
    /// finds them.
    fn concerned(vs: &VirtualService) -> Vec<ObjectRef<Service>> {
        ["checkout", "payments"]
            .into_iter()
            .filter(|s| mesh::routes_to(vs, s, "shop"))
            .map(|s| ObjectRef::new(s).within("shop"))
            .collect()
    }

    fn names(mut refs: Vec<ObjectRef<Service>>) -> Vec<String> {
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn an_edit_that_drops_a_route_wakes_the_service_it_routed_to() {
        let mut wakes = RoutingWakes::default();
        let both = routed("front", &["checkout", "payments"]);
        let only_payments = routed("front", &["payments"]);
        let wake =
            |wakes: &mut RoutingWakes<VirtualService>, event| names(wakes.wake(event, concerned));

        assert_eq!(
            wake(&mut wakes, watcher::Event::Apply(both)),
            ["checkout", "payments"]
        );
        // checkout's route is gone: checkout must hear of it.
        assert_eq!(
            wake(&mut wakes, watcher::Event::Apply(only_payments.clone())),
            ["checkout", "payments"]
        );
        // Told once: the next edit concerns payments only.
        assert_eq!(
            wake(&mut wakes, watcher::Event::Apply(only_payments.clone())),
            ["payments"]
        );
        // A route to nobody any more still wakes whom it routed to.
        let none = routed("front", &[]);
        assert_eq!(
            wake(&mut wakes, watcher::Event::Apply(none.clone())),
            ["payments"]
        );
        assert!(wake(&mut wakes, watcher::Event::Apply(none)).is_empty());
    }

    #[test]
    fn a_deletion_wakes_whom_the_object_routed_to_even_when_seen_only_in_a_relist() {
        let mut wakes = RoutingWakes::default();
        let wake =
            |wakes: &mut RoutingWakes<VirtualService>, event| names(wakes.wake(event, concerned));
        wake(
            &mut wakes,
            watcher::Event::Apply(routed("front", &["checkout"])),
        );
        wake(
            &mut wakes,
            watcher::Event::Apply(routed("back", &["payments"])),
        );

        // A delete event carries the object's last state; the memory answers too, should
        // that state be stale.
        assert_eq!(
            wake(&mut wakes, watcher::Event::Delete(routed("front", &[]))),
            ["checkout"]
        );

        // `back` is deleted while the watch is down: the re-list does not have it.
        assert!(wake(&mut wakes, watcher::Event::Init).is_empty());
        let other = routed("other", &["checkout"]);
        assert_eq!(
            wake(&mut wakes, watcher::Event::InitApply(other)),
            ["checkout"]
        );
        assert_eq!(wake(&mut wakes, watcher::Event::InitDone), ["payments"]);
        // Forgotten: a second re-list without it wakes nobody for it.
        wake(&mut wakes, watcher::Event::Init);
        wake(
            &mut wakes,
            watcher::Event::InitApply(routed("other", &["checkout"])),
        );
        assert!(wake(&mut wakes, watcher::Event::InitDone).is_empty());
    }

    #[tokio::test]
    async fn the_stream_wakes_each_service_named_now_or_before() {
        let events = futures::stream::iter([
            Ok(watcher::Event::Apply(routed("front", &["checkout"]))),
            Err(watcher::Error::NoResourceVersion),
            Ok(watcher::Event::Apply(routed("front", &[]))),
        ]);
        let woken: Vec<String> = routing_wakes(events, concerned)
            .map(|r| r.name)
            .collect()
            .await;
        assert_eq!(woken, ["checkout", "checkout"]);
    }
}
