//! Which VirtualServices, DestinationRules and HTTPRoutes name which Services: an index kept from
//! watch events, so that a reconcile reads only the routing objects that concern its
//! Service, not every object of the namespace.
//!
//! Listing both kinds on every reconcile made the agent's start-up work grow with the
//! square of the namespace's size (each of N reconciles decoded N objects of each
//! kind). The index holds names only; a reconcile still GETs the objects it may write,
//! fresh, because the watch may lag behind the agent's own last write.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use kube::ResourceExt;
use kube::runtime::watcher;

use crate::mesh::{self, DestinationRule, HttpRoute, VirtualService};

/// Services named by one kind of routing object, by object name.
#[derive(Debug, Default)]
struct Names {
    /// Object name → the Services (short names) it names.
    by_object: HashMap<String, BTreeSet<String>>,
    /// Service short name → the objects that name it.
    by_service: HashMap<String, BTreeSet<String>>,
    /// The objects of the re-list under way, between `Init` and `InitDone`.
    listing: Option<HashSet<String>>,
    /// Whether a first full list has been seen.
    synced: bool,
}

impl Names {
    /// Records what `object` names; returns what it named before.
    fn set(&mut self, object: String, services: BTreeSet<String>) -> BTreeSet<String> {
        let before = self.remove(&object);
        for service in &services {
            self.by_service
                .entry(service.clone())
                .or_default()
                .insert(object.clone());
        }
        self.by_object.insert(object, services);
        before
    }

    /// Forgets `object`; returns what it named.
    fn remove(&mut self, object: &str) -> BTreeSet<String> {
        let named = self.by_object.remove(object).unwrap_or_default();
        for service in &named {
            if let Some(objects) = self.by_service.get_mut(service) {
                objects.remove(object);
                if objects.is_empty() {
                    self.by_service.remove(service);
                }
            }
        }
        named
    }

    fn apply<K: ResourceExt>(
        &mut self,
        event: &watcher::Event<K>,
        named: impl Fn(&K) -> BTreeSet<String>,
    ) -> Touched {
        let mut touched = Touched::default();
        match event {
            watcher::Event::Init => self.listing = Some(HashSet::new()),
            watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
                let name = object.name_any();
                if let Some(listing) = &mut self.listing {
                    listing.insert(name.clone());
                }
                let now = named(object);
                touched.services.extend(now.iter().cloned());
                touched.services.extend(self.set(name.clone(), now));
                touched.objects.insert(name);
            }
            watcher::Event::Delete(object) => {
                let name = object.name_any();
                // The object's last state, and the index's memory of it, should that
                // state be stale.
                touched.services.extend(named(object));
                touched.services.extend(self.remove(&name));
                touched.objects.insert(name);
            }
            watcher::Event::InitDone => {
                // A re-list that no longer has an object: it was deleted while the
                // watch was down, which sends no delete event.
                if let Some(listed) = self.listing.take() {
                    let gone: Vec<String> = self
                        .by_object
                        .keys()
                        .filter(|name| !listed.contains(*name))
                        .cloned()
                        .collect();
                    for name in gone {
                        touched.services.extend(self.remove(&name));
                        touched.objects.insert(name);
                    }
                }
                self.synced = true;
            }
        }
        touched
    }

    fn naming(&self, service: &str) -> Vec<String> {
        self.by_service
            .get(&service.to_ascii_lowercase())
            .map(|objects| objects.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The short name of the Service `host` refers to, when it is one of this namespace's
/// Services (`svc`, `svc.ns`, `svc.ns.svc[.<domain>]`).
fn local_service(host: &str, namespace: &str) -> Option<String> {
    let first = host.split('.').next()?.to_ascii_lowercase();
    (!first.is_empty() && mesh::host_matches(host, &first, namespace)).then_some(first)
}

/// The Services a VirtualService routes to, in any of its HTTP routes.
fn routed_by(virtual_service: &VirtualService, namespace: &str) -> BTreeSet<String> {
    virtual_service
        .spec
        .http
        .iter()
        .flatten()
        .flat_map(|route| route.route.iter().flatten())
        .filter_map(|destination| local_service(&destination.destination.host, namespace))
        .collect()
}

/// The Service a DestinationRule's host is.
fn subsets_of(destination_rule: &DestinationRule, namespace: &str) -> BTreeSet<String> {
    local_service(&destination_rule.spec.host, namespace)
        .into_iter()
        .collect()
}

/// What one watch event changed in the index: the objects it concerned, and the
/// Services (short names) they name now **or named before** it. An edit that takes a
/// Service's route out of a VirtualService names that Service no more, yet it is the one
/// that must hear of it, at once, to report itself misconfigured. The Services to wake
/// are these, and those whose annotations name one of the objects.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    pub objects: BTreeSet<String>,
    pub services: BTreeSet<String>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// The index of routing objects by the Services they name, for one namespace.
#[derive(Debug)]
pub struct RoutingIndex {
    namespace: String,
    virtual_services: Mutex<Names>,
    destination_rules: Mutex<Names>,
    /// `None` where the cluster does not serve the Gateway API's HTTPRoute.
    http_routes: Option<Mutex<Names>>,
}

impl RoutingIndex {
    /// An index of the VirtualServices and DestinationRules of `namespace`, and of its
    /// HTTPRoutes when `gateway_api` (the cluster serves them).
    pub fn new(namespace: &str, gateway_api: bool) -> Self {
        RoutingIndex {
            namespace: namespace.to_owned(),
            virtual_services: Mutex::default(),
            destination_rules: Mutex::default(),
            http_routes: gateway_api.then(Mutex::default),
        }
    }

    /// Whether the cluster serves HTTPRoutes, which the index then follows.
    pub fn gateway_api(&self) -> bool {
        self.http_routes.is_some()
    }

    /// Records an HTTPRoute watch event (the index follows HTTPRoutes only where the
    /// cluster serves them: otherwise this touches nothing).
    pub fn apply_http_route(&self, event: &watcher::Event<HttpRoute>) -> Touched {
        match &self.http_routes {
            Some(names) => lock(names).apply(event, |hr| {
                mesh::http_route_services(hr, &self.namespace)
                    .into_iter()
                    .collect()
            }),
            None => Touched::default(),
        }
    }

    /// The HTTPRoutes with a backendRef on `service`, by name, sorted.
    pub fn http_routes_routing_to(&self, service: &str) -> Vec<String> {
        self.http_routes
            .as_ref()
            .map(|names| lock(names).naming(service))
            .unwrap_or_default()
    }

    pub fn apply_virtual_service(&self, event: &watcher::Event<VirtualService>) -> Touched {
        lock(&self.virtual_services).apply(event, |vs| routed_by(vs, &self.namespace))
    }

    pub fn apply_destination_rule(&self, event: &watcher::Event<DestinationRule>) -> Touched {
        lock(&self.destination_rules).apply(event, |dr| subsets_of(dr, &self.namespace))
    }

    /// Whether both kinds have been listed in full at least once. Before that, an
    /// absent entry means "not observed yet", never "none".
    pub fn synced(&self) -> bool {
        lock(&self.virtual_services).synced
            && lock(&self.destination_rules).synced
            && self
                .http_routes
                .as_ref()
                .is_none_or(|names| lock(names).synced)
    }

    /// The VirtualServices with a destination on `service`, by name, sorted.
    pub fn virtual_services_routing_to(&self, service: &str) -> Vec<String> {
        lock(&self.virtual_services).naming(service)
    }

    /// The DestinationRules whose host is `service`, by name, sorted.
    pub fn destination_rules_of(&self, service: &str) -> Vec<String> {
        lock(&self.destination_rules).naming(service)
    }
}

fn lock(names: &Mutex<Names>) -> std::sync::MutexGuard<'_, Names> {
    names
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vs(name: &str, hosts: &[&str]) -> VirtualService {
        let route: Vec<_> = hosts
            .iter()
            .map(|host| json!({ "destination": { "host": host } }))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": { "name": name, "namespace": "shop" },
            "spec": { "hosts": ["edge"], "http": [{ "route": route }] },
        }))
        .expect("a valid VirtualService")
    }

    fn dr(name: &str, host: &str) -> DestinationRule {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": { "name": name, "namespace": "shop" },
            "spec": { "host": host },
        }))
        .expect("a valid DestinationRule")
    }

    fn hr(name: &str, backends: serde_json::Value) -> HttpRoute {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": { "name": name, "namespace": "shop" },
            "spec": { "rules": [{ "backendRefs": backends }] },
        }))
        .expect("a valid HTTPRoute")
    }

    #[test]
    fn http_routes_are_indexed_by_their_local_service_backends_when_served() {
        let index = RoutingIndex::new("shop", true);
        assert!(!index.synced(), "HTTPRoutes not listed yet");
        index.apply_virtual_service(&watcher::Event::InitDone);
        index.apply_destination_rule(&watcher::Event::InitDone);
        assert!(!index.synced(), "HTTPRoutes still not listed");
        let touched = index.apply_http_route(&watcher::Event::Apply(hr(
            "web",
            json!([
                { "name": "web-stable", "port": 80 },
                { "name": "web-canary", "port": 80, "kind": "Service", "group": "" },
                { "name": "elsewhere", "namespace": "other", "port": 80 },
                { "name": "bucket", "kind": "Bucket", "group": "storage.example", "port": 80 },
            ]),
        )));
        assert_eq!(
            touched.services,
            ["web-canary".to_string(), "web-stable".to_string()].into()
        );
        index.apply_http_route(&watcher::Event::InitDone);
        assert!(index.synced());
        assert_eq!(index.http_routes_routing_to("web-stable"), ["web"]);
        assert!(index.http_routes_routing_to("elsewhere").is_empty());

        // Where the cluster does not serve them, HTTPRoutes neither block sync nor index.
        let index = RoutingIndex::new("shop", false);
        index.apply_virtual_service(&watcher::Event::InitDone);
        index.apply_destination_rule(&watcher::Event::InitDone);
        assert!(index.synced() && !index.gateway_api());
        assert!(index.apply_http_route(&watcher::Event::InitDone).is_empty());
    }

    #[test]
    fn indexes_local_hosts_in_every_form_and_ignores_other_namespaces() {
        let index = RoutingIndex::new("shop", false);
        index.apply_virtual_service(&watcher::Event::Apply(vs(
            "edge",
            &[
                "checkout",
                "Cart.shop",
                "pay.shop.svc.cluster.local",
                "search.other.svc.cluster.local",
            ],
        )));
        for service in ["checkout", "cart", "pay"] {
            assert_eq!(index.virtual_services_routing_to(service), ["edge"]);
        }
        assert!(index.virtual_services_routing_to("search").is_empty());
    }

    #[test]
    fn an_edit_moves_the_object_between_services_and_a_delete_removes_it() {
        let index = RoutingIndex::new("shop", false);
        index.apply_virtual_service(&watcher::Event::Apply(vs("a", &["checkout"])));
        index.apply_virtual_service(&watcher::Event::Apply(vs("b", &["checkout"])));
        assert_eq!(index.virtual_services_routing_to("checkout"), ["a", "b"]);
        index.apply_virtual_service(&watcher::Event::Apply(vs("a", &["cart"])));
        assert_eq!(index.virtual_services_routing_to("checkout"), ["b"]);
        assert_eq!(index.virtual_services_routing_to("cart"), ["a"]);
        index.apply_virtual_service(&watcher::Event::Delete(vs("b", &["checkout"])));
        assert!(index.virtual_services_routing_to("checkout").is_empty());
    }

    #[test]
    fn a_relist_drops_what_it_no_longer_has_and_marks_the_index_synced() {
        let index = RoutingIndex::new("shop", false);
        assert!(!index.synced());
        index.apply_destination_rule(&watcher::Event::Apply(dr("old", "checkout")));
        index.apply_destination_rule(&watcher::Event::Init);
        index.apply_destination_rule(&watcher::Event::InitApply(dr("new", "checkout.shop")));
        index.apply_destination_rule(&watcher::Event::InitDone);
        assert_eq!(index.destination_rules_of("checkout"), ["new"]);
        assert!(!index.synced(), "VirtualServices are not listed yet");
        index.apply_virtual_service(&watcher::Event::Init);
        index.apply_virtual_service(&watcher::Event::InitDone);
        assert!(index.synced());
    }

    fn services(touched: &Touched) -> Vec<&str> {
        touched.services.iter().map(String::as_str).collect()
    }

    #[test]
    fn an_edit_that_drops_a_route_touches_the_service_it_routed_to() {
        let index = RoutingIndex::new("shop", false);
        let apply = |v| index.apply_virtual_service(&watcher::Event::Apply(v));
        assert_eq!(
            services(&apply(vs("front", &["checkout", "payments"]))),
            ["checkout", "payments"]
        );
        // checkout's route is gone: checkout must hear of it.
        let touched = apply(vs("front", &["payments"]));
        assert_eq!(services(&touched), ["checkout", "payments"]);
        assert_eq!(touched.objects, BTreeSet::from(["front".to_string()]));
        // Told once: the next edit concerns payments only.
        assert_eq!(services(&apply(vs("front", &["payments"]))), ["payments"]);
        // A route to nobody any more still touches whom it routed to.
        assert_eq!(services(&apply(vs("front", &[]))), ["payments"]);
        let touched = apply(vs("front", &[]));
        assert!(touched.services.is_empty());
        // The object itself is still named, for Services whose annotation names it.
        assert!(!touched.is_empty());
    }

    #[test]
    fn a_deletion_touches_whom_the_object_named_even_when_seen_only_in_a_relist() {
        let index = RoutingIndex::new("shop", false);
        let apply = |event| index.apply_virtual_service(&event);
        apply(watcher::Event::Apply(vs("front", &["checkout"])));
        apply(watcher::Event::Apply(vs("back", &["payments"])));

        // A delete event carries the object's last state; the index answers too, should
        // that state be stale.
        assert_eq!(
            services(&apply(watcher::Event::Delete(vs("front", &[])))),
            ["checkout"]
        );

        // `back` is deleted while the watch is down: the re-list does not have it.
        assert!(apply(watcher::Event::Init).is_empty());
        assert_eq!(
            services(&apply(watcher::Event::InitApply(vs(
                "other",
                &["checkout"]
            )))),
            ["checkout"]
        );
        let touched = apply(watcher::Event::InitDone);
        assert_eq!(services(&touched), ["payments"]);
        assert_eq!(touched.objects, BTreeSet::from(["back".to_string()]));
        // Forgotten: a second re-list without it touches nothing for it.
        apply(watcher::Event::Init);
        apply(watcher::Event::InitApply(vs("other", &["checkout"])));
        assert!(apply(watcher::Event::InitDone).is_empty());
    }
}
