//! The routing configuration of one namespace as plain data, and the traffic plan it
//! implies: for every HTTP route (a VirtualService's `http` entry or a Gateway API
//! HTTPRoute's rule), its request rate and, for every destination, its weight and the
//! versions (Deployments) its requests reach.

use std::collections::BTreeMap;

use crate::annotations::DEFAULT_LATENCY_MS;

/// Label keys and values, as in a selector or a pod template.
pub type Labels = BTreeMap<String, String>;

/// Everything the simulator reads from one namespace, each list ordered by name.
#[derive(Clone, Debug, Default)]
pub struct Mesh {
    /// The namespace short host names are relative to.
    pub namespace: String,
    /// The HTTP routes of every VirtualService, then the rules of every HTTPRoute.
    pub routes: Vec<HttpRoute>,
    /// DestinationRules, which name subsets.
    pub destination_rules: Vec<DestinationRule>,
    /// Services, whose selectors pick Deployments.
    pub services: Vec<Service>,
    /// Deployments: one per version.
    pub workloads: Vec<Workload>,
}

/// One entry of a VirtualService's `http` list, or one rule of a Gateway API HTTPRoute.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRoute {
    /// Where the route sits, and so how its weights are read.
    pub key: RouteKey,
    /// Its `route` list (a VirtualService's) or `backendRefs` (an HTTPRoute rule's):
    /// where requests go, with their weights.
    pub destinations: Vec<RouteDestination>,
}

/// The kind of object an HTTP route belongs to, which decides its weights' semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// `networking.istio.io` VirtualService: a lone destination takes all traffic
    /// whatever its weight; among several, a missing weight is 0.
    VirtualService,
    /// `gateway.networking.k8s.io` HTTPRoute: traffic is proportional to each
    /// backendRef's weight over the rule's sum; a missing weight is 1, and a weight of
    /// 0 takes none (even a lone backendRef's).
    HttpRoute,
}

/// Identifies an HTTP route: its object and its position in that object's list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// VirtualService or HTTPRoute.
    pub kind: RouteKind,
    /// The object's name.
    pub name: String,
    /// The route's index in the VirtualService's `http` list, or the rule's in the
    /// HTTPRoute's `rules`.
    pub index: usize,
}

/// One `route[]` entry of a VirtualService's HTTP route, or one `backendRefs[]` entry of
/// an HTTPRoute rule.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteDestination {
    /// `destination.host` as written; for a backendRef, the Service's name (`name.ns`
    /// with a namespace), or a host that names no Service for a backend of another kind.
    pub host: String,
    /// `destination.subset`, if any.
    pub subset: Option<String>,
    /// `weight`, if written.
    pub weight: Option<u32>,
}

/// A DestinationRule's host and subsets.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationRule {
    /// The DestinationRule's name.
    pub name: String,
    /// `host` as written.
    pub host: String,
    /// `subsets`.
    pub subsets: Vec<Subset>,
}

/// A named subset of a Service's pods.
#[derive(Clone, Debug, PartialEq)]
pub struct Subset {
    /// The subset's name, referenced by routes.
    pub name: String,
    /// Pod labels the subset adds to the Service's selector.
    pub labels: Labels,
}

/// A Kubernetes Service.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// The Service's name.
    pub name: String,
    /// `spec.selector`; a Service without one selects no pods.
    pub selector: Labels,
    /// Requests per second for routes whose first destination is this Service, if
    /// overridden by annotation.
    pub rps: Option<f64>,
}

/// A Deployment: one version of a Service.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// The Deployment's name, reported as `destination_workload`.
    pub name: String,
    /// The value of the version label, reported as `destination_version`.
    pub version: String,
    /// The pod template's labels.
    pub pod_labels: Labels,
    /// How its simulated pods respond.
    pub behaviour: Behaviour,
}

/// How a version responds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Behaviour {
    /// Share of responses that are 5xx.
    pub error_rate: ErrorRate,
    /// Mean latency in milliseconds (the exact mode); the median in the noisy mode.
    pub mean_latency_ms: f64,
    /// The 99th-percentile latency in milliseconds (noisy mode); `None`: four times the
    /// median.
    pub p99_latency_ms: Option<f64>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            error_rate: ErrorRate::ZERO,
            mean_latency_ms: DEFAULT_LATENCY_MS,
            p99_latency_ms: None,
        }
    }
}

/// A share of responses that fail, held in parts per million so that counting errors
/// is exact integer arithmetic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ErrorRate(u32);

impl ErrorRate {
    /// Parts per million in one.
    pub const ONE_PPM: u32 = 1_000_000;
    /// No errors.
    pub const ZERO: ErrorRate = ErrorRate(0);

    /// The rate for `fraction` (0.1 is 10%), rounded to a part per million; `None`
    /// outside 0..=1.
    pub fn from_fraction(fraction: f64) -> Option<Self> {
        (0.0..=1.0)
            .contains(&fraction)
            .then(|| ErrorRate((fraction * f64::from(Self::ONE_PPM)).round() as u32))
    }

    /// The rate in parts per million.
    pub fn parts_per_million(self) -> u32 {
        self.0
    }

    /// The rate as a fraction of one.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / f64::from(Self::ONE_PPM)
    }
}

/// The Kubernetes Service an Istio host names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    /// The Service's name.
    pub name: String,
    /// The Service's namespace.
    pub namespace: String,
}

impl ServiceRef {
    /// The Service named by `host`, which is `name`, `name.ns`, `name.ns.svc` or
    /// `name.ns.svc.cluster.local`; a bare `name` lives in `namespace`. Anything else
    /// (wildcards, external hosts) names no Service.
    pub fn from_host(host: &str, namespace: &str) -> Option<ServiceRef> {
        let parts: Vec<&str> = host.split('.').collect();
        let (name, namespace) = match parts.as_slice() {
            [name] => (*name, namespace),
            [name, ns] | [name, ns, "svc"] | [name, ns, "svc", "cluster", "local"] => (*name, *ns),
            _ => return None,
        };
        let is_dns_label = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        (is_dns_label(name) && is_dns_label(namespace)).then(|| ServiceRef {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    /// `name.namespace.svc.cluster.local`, reported as `destination_service`.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// The traffic one HTTP route receives.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePlan {
    /// The route.
    pub route: RouteKey,
    /// Requests per second.
    pub rps: f64,
    /// Its destinations in order, with effective weights.
    pub destinations: Vec<PlannedDestination>,
}

/// A route destination with its effective weight and the versions serving it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedDestination {
    /// `destination.host` as written.
    pub host: String,
    /// `destination.subset`, if any.
    pub subset: Option<String>,
    /// The weight requests are apportioned by.
    pub weight: u32,
    /// The Deployments whose pods serve it, ordered by name. Empty when the host or
    /// subset resolves to nothing: its requests are dropped.
    pub backends: Vec<Backend>,
}

/// A version serving a destination.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// The Service the destination names.
    pub service: ServiceRef,
    /// The Deployment's name.
    pub workload: String,
    /// Its version.
    pub version: String,
    /// How it responds.
    pub behaviour: Behaviour,
}

/// The traffic every HTTP route of `mesh` receives. Routes of a Service annotated with
/// rate 0 get none; other routes get `default_rps` unless their first destination's
/// Service overrides it.
pub fn plan_traffic(mesh: &Mesh, default_rps: f64) -> Vec<RoutePlan> {
    mesh.routes
        .iter()
        .filter_map(|route| {
            let rps = route
                .destinations
                .first()
                .and_then(|first| mesh.local_service(&first.host))
                .and_then(|service| service.rps)
                .unwrap_or(default_rps);
            let plan = RoutePlan {
                route: route.key.clone(),
                rps,
                destinations: effective_weights(route)
                    .zip(&route.destinations)
                    .map(|(weight, destination)| PlannedDestination {
                        host: destination.host.clone(),
                        subset: destination.subset.clone(),
                        weight,
                        backends: mesh.backends(destination),
                    })
                    .collect(),
            };
            (rps.is_finite() && rps > 0.0).then_some(plan)
        })
        .collect()
}

/// The weights requests are apportioned by (each destination's share is its weight over
/// the route's sum). A VirtualService's lone destination takes all traffic whatever its
/// weight, and among several a missing weight is 0 (Istio's semantics). An HTTPRoute
/// rule's backendRefs keep their weights, a missing one being 1 (Gateway API's
/// semantics): a lone backendRef takes everything unless its weight is 0.
fn effective_weights(route: &HttpRoute) -> impl Iterator<Item = u32> + '_ {
    let kind = route.key.kind;
    let lone = route.destinations.len() == 1;
    route.destinations.iter().map(move |d| match kind {
        RouteKind::VirtualService if lone => 100,
        RouteKind::VirtualService => d.weight.unwrap_or(0),
        RouteKind::HttpRoute => d.weight.unwrap_or(1),
    })
}

impl Mesh {
    /// The Service in this namespace that `host` names.
    fn local_service(&self, host: &str) -> Option<&Service> {
        let service = ServiceRef::from_host(host, &self.namespace)?;
        if service.namespace != self.namespace {
            return None;
        }
        self.services.iter().find(|s| s.name == service.name)
    }

    /// The Deployments whose pod templates match the destination's Service selector
    /// plus its subset's labels.
    fn backends(&self, destination: &RouteDestination) -> Vec<Backend> {
        let Some(service) = self.local_service(&destination.host) else {
            return Vec::new();
        };
        if service.selector.is_empty() {
            return Vec::new();
        }
        let service_ref = ServiceRef {
            name: service.name.clone(),
            namespace: self.namespace.clone(),
        };
        let subset_labels = match &destination.subset {
            None => Labels::new(),
            Some(subset) => match self.subset_labels(&service_ref, subset) {
                Some(labels) => labels.clone(),
                None => return Vec::new(),
            },
        };
        let selects = |labels: &Labels, pod_labels: &Labels| {
            labels.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
        };
        self.workloads
            .iter()
            .filter(|w| selects(&service.selector, &w.pod_labels))
            .filter(|w| selects(&subset_labels, &w.pod_labels))
            .map(|w| Backend {
                service: service_ref.clone(),
                workload: w.name.clone(),
                version: w.version.clone(),
                behaviour: w.behaviour,
            })
            .collect()
    }

    /// The labels of `subset` in the first DestinationRule for `service` that defines it.
    fn subset_labels(&self, service: &ServiceRef, subset: &str) -> Option<&Labels> {
        self.destination_rules
            .iter()
            .filter(|dr| ServiceRef::from_host(&dr.host, &self.namespace).as_ref() == Some(service))
            .flat_map(|dr| &dr.subsets)
            .find(|s| s.name == subset)
            .map(|s| &s.labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn destination(host: &str, subset: Option<&str>, weight: Option<u32>) -> RouteDestination {
        RouteDestination {
            host: host.to_owned(),
            subset: subset.map(str::to_owned),
            weight,
        }
    }

    fn route(vs: &str, index: usize, destinations: Vec<RouteDestination>) -> HttpRoute {
        HttpRoute {
            key: RouteKey {
                kind: RouteKind::VirtualService,
                name: vs.to_owned(),
                index,
            },
            destinations,
        }
    }

    /// Rule `index` of the HTTPRoute `name`.
    fn rule(name: &str, index: usize, destinations: Vec<RouteDestination>) -> HttpRoute {
        HttpRoute {
            key: RouteKey {
                kind: RouteKind::HttpRoute,
                name: name.to_owned(),
                index,
            },
            destinations,
        }
    }

    fn workload(name: &str, app: &str, version: &str) -> Workload {
        Workload {
            name: name.to_owned(),
            version: version.to_owned(),
            pod_labels: labels(&[("app", app), ("version", version)]),
            behaviour: Behaviour::default(),
        }
    }

    /// `checkout` with v1 and v2, subsets stable→v1 and canary→v2, and no routes.
    fn checkout() -> Mesh {
        Mesh {
            namespace: "shop".to_owned(),
            routes: Vec::new(),
            destination_rules: vec![DestinationRule {
                name: "checkout".to_owned(),
                host: "checkout".to_owned(),
                subsets: vec![
                    Subset {
                        name: "stable".to_owned(),
                        labels: labels(&[("version", "v1")]),
                    },
                    Subset {
                        name: "canary".to_owned(),
                        labels: labels(&[("version", "v2")]),
                    },
                ],
            }],
            services: vec![Service {
                name: "checkout".to_owned(),
                selector: labels(&[("app", "checkout")]),
                rps: None,
            }],
            workloads: vec![
                workload("checkout-v1", "checkout", "v1"),
                workload("checkout-v2", "checkout", "v2"),
            ],
        }
    }

    /// A destination's weight and the workloads serving it.
    type Planned<'a> = (u32, Vec<&'a str>);

    /// (weight, workloads) of each destination of each planned route.
    fn summary(plans: &[RoutePlan]) -> Vec<Vec<Planned<'_>>> {
        plans
            .iter()
            .map(|p| {
                p.destinations
                    .iter()
                    .map(|d| {
                        (
                            d.weight,
                            d.backends.iter().map(|b| b.workload.as_str()).collect(),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn host_forms_name_the_service() {
        let shop_checkout = ServiceRef {
            name: "checkout".to_owned(),
            namespace: "shop".to_owned(),
        };
        let checkout = Some(shop_checkout.clone());
        let cases = [
            ("checkout", checkout.clone()),
            ("checkout.shop", checkout.clone()),
            ("checkout.shop.svc", checkout.clone()),
            ("checkout.shop.svc.cluster.local", checkout.clone()),
            (
                "checkout.other.svc.cluster.local",
                Some(ServiceRef {
                    name: "checkout".to_owned(),
                    namespace: "other".to_owned(),
                }),
            ),
            ("checkout.shop.svc.cluster", None),
            ("checkout.shop.example", None),
            ("checkout.shop.svc.example.com", None),
            ("*.shop.svc.cluster.local", None),
            ("", None),
        ];
        for (host, expected) in cases {
            assert_eq!(ServiceRef::from_host(host, "shop"), expected, "{host:?}");
        }
        assert_eq!(shop_checkout.fqdn(), "checkout.shop.svc.cluster.local");
    }

    #[test]
    fn destinations_resolve_to_versions_with_effective_weights() {
        let cases: Vec<(&str, Vec<RouteDestination>, Vec<Planned>)> = vec![
            (
                "100/0",
                vec![
                    destination("checkout", Some("stable"), Some(100)),
                    destination("checkout", Some("canary"), Some(0)),
                ],
                vec![(100, vec!["checkout-v1"]), (0, vec!["checkout-v2"])],
            ),
            (
                "80/20 with every host form",
                vec![
                    destination("checkout.shop.svc.cluster.local", Some("stable"), Some(80)),
                    destination("checkout.shop", Some("canary"), Some(20)),
                ],
                vec![(80, vec!["checkout-v1"]), (20, vec!["checkout-v2"])],
            ),
            (
                "lone destination without weight",
                vec![destination("checkout.shop.svc", Some("stable"), None)],
                vec![(100, vec!["checkout-v1"])],
            ),
            (
                "lone destination with a weight below 100",
                vec![destination("checkout", Some("canary"), Some(30))],
                vec![(100, vec!["checkout-v2"])],
            ),
            (
                "missing weight among several is 0",
                vec![
                    destination("checkout", Some("stable"), Some(100)),
                    destination("checkout", Some("canary"), None),
                ],
                vec![(100, vec!["checkout-v1"]), (0, vec!["checkout-v2"])],
            ),
            (
                "unknown subset resolves to nothing",
                vec![
                    destination("checkout", Some("stable"), Some(50)),
                    destination("checkout", Some("preview"), Some(50)),
                ],
                vec![(50, vec!["checkout-v1"]), (50, vec![])],
            ),
            (
                "no subset reaches every version",
                vec![destination("checkout", None, None)],
                vec![(100, vec!["checkout-v1", "checkout-v2"])],
            ),
            (
                "unknown service, other namespace and external host resolve to nothing",
                vec![
                    destination("payments", None, Some(40)),
                    destination("checkout.other", Some("stable"), Some(30)),
                    destination("api.example.com", None, Some(30)),
                ],
                vec![(40, vec![]), (30, vec![]), (30, vec![])],
            ),
        ];
        for (name, destinations, expected) in cases {
            let mut mesh = checkout();
            mesh.routes = vec![route("checkout", 0, destinations)];
            let plans = plan_traffic(&mesh, 50.0);
            assert_eq!(summary(&plans), vec![expected], "{name}");
        }
    }

    #[test]
    fn subset_whose_labels_match_no_deployment_resolves_to_nothing() {
        let mut mesh = checkout();
        mesh.destination_rules[0].subsets[1].labels = labels(&[("version", "v3")]);
        mesh.routes = vec![route(
            "checkout",
            0,
            vec![
                destination("checkout", Some("stable"), Some(90)),
                destination("checkout", Some("canary"), Some(10)),
            ],
        )];
        assert_eq!(
            summary(&plan_traffic(&mesh, 50.0)),
            vec![vec![(90, vec!["checkout-v1"]), (10, vec![])]]
        );
    }

    #[test]
    fn destination_rule_for_another_host_does_not_name_subsets() {
        let mut mesh = checkout();
        mesh.destination_rules[0].host = "payments.shop.svc.cluster.local".to_owned();
        mesh.routes = vec![route(
            "checkout",
            0,
            vec![destination("checkout", Some("stable"), None)],
        )];
        assert_eq!(
            summary(&plan_traffic(&mesh, 50.0)),
            vec![vec![(100, vec![])]]
        );
    }

    /// A host-level split: one route between two Services (`checkout-stable`,
    /// `checkout-canary`) without subsets. Each destination reaches the versions its own
    /// Service selects, is reported under that Service's name, and follows a change of
    /// that selector.
    #[test]
    fn destinations_on_two_hosts_follow_each_service_selector() {
        let mut mesh = checkout();
        mesh.destination_rules.clear();
        for name in ["checkout-stable", "checkout-canary"] {
            mesh.services.push(Service {
                name: name.to_owned(),
                selector: labels(&[("app", "checkout"), ("version", "v1")]),
                rps: None,
            });
        }
        mesh.routes = vec![route(
            "checkout",
            0,
            vec![
                destination("checkout-stable", None, Some(90)),
                destination("checkout-canary.shop.svc.cluster.local", None, Some(10)),
            ],
        )];
        let plans = plan_traffic(&mesh, 50.0);
        assert_eq!(
            summary(&plans),
            vec![vec![(90, vec!["checkout-v1"]), (10, vec!["checkout-v1"])]]
        );
        let services: Vec<&str> = plans[0]
            .destinations
            .iter()
            .flat_map(|d| &d.backends)
            .map(|b| b.service.name.as_str())
            .collect();
        assert_eq!(services, vec!["checkout-stable", "checkout-canary"]);

        // The canary Service is pointed at v2, then the stable one too (a promotion).
        let select = |mesh: &mut Mesh, service: &str, version: &str| {
            let service = mesh.services.iter_mut().find(|s| s.name == service);
            service
                .unwrap()
                .selector
                .insert("version".to_owned(), version.to_owned());
        };
        select(&mut mesh, "checkout-canary", "v2");
        assert_eq!(
            summary(&plan_traffic(&mesh, 50.0)),
            vec![vec![(90, vec!["checkout-v1"]), (10, vec!["checkout-v2"])]]
        );
        select(&mut mesh, "checkout-stable", "v2");
        assert_eq!(
            summary(&plan_traffic(&mesh, 50.0)),
            vec![vec![(90, vec!["checkout-v2"]), (10, vec!["checkout-v2"])]]
        );
    }

    /// `checkout` split between `checkout-stable` (v1) and `checkout-canary` (v2), with
    /// no DestinationRule and no routes.
    fn checkout_host_split() -> Mesh {
        let mut mesh = checkout();
        mesh.destination_rules.clear();
        for (name, version) in [("checkout-stable", "v1"), ("checkout-canary", "v2")] {
            mesh.services.push(Service {
                name: name.to_owned(),
                selector: labels(&[("app", "checkout"), ("version", version)]),
                rps: None,
            });
        }
        mesh
    }

    /// An HTTPRoute rule's backendRefs keep Gateway API's weights: proportional to their
    /// sum, a missing weight being 1, a lone backendRef taking everything unless its
    /// weight is 0.
    #[test]
    fn http_route_backends_are_weighted_in_proportion() {
        let cases: Vec<(&str, Vec<RouteDestination>, Vec<Planned>)> = vec![
            (
                "percentages",
                vec![
                    destination("checkout-stable", None, Some(90)),
                    destination("checkout-canary", None, Some(10)),
                ],
                vec![(90, vec!["checkout-v1"]), (10, vec!["checkout-v2"])],
            ),
            (
                "missing weights are 1 each",
                vec![
                    destination("checkout-stable", None, None),
                    destination("checkout-canary", None, None),
                ],
                vec![(1, vec!["checkout-v1"]), (1, vec!["checkout-v2"])],
            ),
            (
                "a missing weight beside a written one is 1",
                vec![
                    destination("checkout-stable", None, Some(3)),
                    destination("checkout-canary.shop.svc.cluster.local", None, None),
                ],
                vec![(3, vec!["checkout-v1"]), (1, vec!["checkout-v2"])],
            ),
            (
                "a lone backend with the defaulted weight 1",
                vec![destination("checkout-stable", None, Some(1))],
                vec![(1, vec!["checkout-v1"])],
            ),
            (
                "a lone backend at weight 0 takes none",
                vec![destination("checkout-canary", None, Some(0))],
                vec![(0, vec!["checkout-v2"])],
            ),
            (
                "100/0",
                vec![
                    destination("checkout-stable", None, Some(100)),
                    destination("checkout-canary", None, Some(0)),
                ],
                vec![(100, vec!["checkout-v1"]), (0, vec!["checkout-v2"])],
            ),
            (
                "another namespace and a host that names no Service resolve to nothing",
                vec![
                    destination("checkout-stable.other", None, Some(5)),
                    destination("example.com/Backend/shop/checkout", None, Some(5)),
                ],
                vec![(5, vec![]), (5, vec![])],
            ),
        ];
        for (name, destinations, expected) in cases {
            let mut mesh = checkout_host_split();
            mesh.routes = vec![rule("checkout", 0, destinations)];
            let plans = plan_traffic(&mesh, 50.0);
            assert_eq!(summary(&plans), vec![expected], "{name}");
        }
    }

    /// The same destinations in a VirtualService and in an HTTPRoute: Istio's weights
    /// for the one, Gateway API's for the other, and the two routes are told apart.
    #[test]
    fn virtual_service_and_http_route_weights_keep_their_own_semantics() {
        let mut mesh = checkout_host_split();
        let lone = || vec![destination("checkout-stable", None, Some(0))];
        let unweighted = || {
            vec![
                destination("checkout-stable", None, Some(100)),
                destination("checkout-canary", None, None),
            ]
        };
        mesh.routes = vec![
            route("checkout", 0, lone()),
            route("checkout", 1, unweighted()),
            rule("checkout", 0, lone()),
            rule("checkout", 1, unweighted()),
        ];
        let plans = plan_traffic(&mesh, 50.0);
        assert_eq!(
            summary(&plans),
            vec![
                vec![(100, vec!["checkout-v1"])],
                vec![(100, vec!["checkout-v1"]), (0, vec!["checkout-v2"])],
                vec![(0, vec!["checkout-v1"])],
                vec![(100, vec!["checkout-v1"]), (1, vec!["checkout-v2"])],
            ]
        );
        let keys: Vec<(RouteKind, usize)> = plans
            .iter()
            .map(|p| (p.route.kind, p.route.index))
            .collect();
        assert_eq!(
            keys,
            vec![
                (RouteKind::VirtualService, 0),
                (RouteKind::VirtualService, 1),
                (RouteKind::HttpRoute, 0),
                (RouteKind::HttpRoute, 1),
            ]
        );
    }

    /// Requests through an HTTPRoute rule at weights 3:1 (not percentages) reach the
    /// two Services' versions three to one, under each Service's name; at 1:0, only
    /// stable; a lone backendRef at 0 sends nothing and drops nothing.
    #[test]
    fn http_route_traffic_follows_weights_that_are_not_percentages() {
        use crate::traffic::TrafficGenerator;
        let served = |mesh: &Mesh| {
            let plans = plan_traffic(mesh, 400.0);
            let tick = TrafficGenerator::exact().tick(&plans, std::time::Duration::from_secs(1));
            let mut counts = BTreeMap::<(String, String), u32>::new();
            for request in &tick.served {
                let key = (
                    request.backend.service.name.clone(),
                    request.backend.version.clone(),
                );
                *counts.entry(key).or_default() += 1;
            }
            (counts.into_iter().collect::<Vec<_>>(), tick.dropped)
        };
        let pair =
            |service: &str, version: &str, n: u32| ((service.to_owned(), version.to_owned()), n);
        let mut mesh = checkout_host_split();
        mesh.routes = vec![rule(
            "checkout",
            0,
            vec![
                destination("checkout-stable", None, Some(3)),
                destination("checkout-canary", None, None),
            ],
        )];
        assert_eq!(
            served(&mesh),
            (
                vec![
                    pair("checkout-canary", "v2", 100),
                    pair("checkout-stable", "v1", 300)
                ],
                0
            )
        );
        mesh.routes[0].destinations[1].weight = Some(0);
        assert_eq!(served(&mesh), (vec![pair("checkout-stable", "v1", 400)], 0));
        mesh.routes = vec![rule(
            "checkout",
            0,
            vec![destination("checkout-canary", None, Some(0))],
        )];
        assert_eq!(served(&mesh), (vec![], 0));
    }

    #[test]
    fn service_selector_and_subset_labels_both_apply() {
        let mut mesh = checkout();
        mesh.workloads
            .push(workload("payments-v1", "payments", "v1"));
        mesh.routes = vec![route(
            "checkout",
            0,
            vec![destination("checkout", Some("stable"), None)],
        )];
        assert_eq!(
            summary(&plan_traffic(&mesh, 50.0)),
            vec![vec![(100, vec!["checkout-v1"])]]
        );

        mesh.services[0].selector.clear();
        assert_eq!(
            summary(&plan_traffic(&mesh, 50.0)),
            vec![vec![(100, vec![])]]
        );
    }

    #[test]
    fn every_route_is_planned_at_its_service_rate() {
        let mut mesh = checkout();
        mesh.services.push(Service {
            name: "payments".to_owned(),
            selector: labels(&[("app", "payments")]),
            rps: Some(5.0),
        });
        mesh.services.push(Service {
            name: "quiet".to_owned(),
            selector: labels(&[("app", "quiet")]),
            rps: Some(0.0),
        });
        mesh.workloads.push(workload("payments", "payments", "v7"));
        mesh.routes = vec![
            route(
                "checkout",
                0,
                vec![destination("checkout", Some("canary"), None)],
            ),
            route(
                "checkout",
                1,
                vec![destination("checkout", Some("stable"), None)],
            ),
            route("payments", 0, vec![destination("payments", None, None)]),
            route("quiet", 0, vec![destination("quiet", None, None)]),
        ];
        let plans = plan_traffic(&mesh, 50.0);
        let planned: Vec<(&str, usize, f64)> = plans
            .iter()
            .map(|p| (p.route.name.as_str(), p.route.index, p.rps))
            .collect();
        assert_eq!(
            planned,
            vec![
                ("checkout", 0, 50.0),
                ("checkout", 1, 50.0),
                ("payments", 0, 5.0)
            ]
        );
        assert_eq!(plans[2].destinations[0].backends[0].version, "v7");
        assert_eq!(
            plans[2].destinations[0].backends[0].service.fqdn(),
            "payments.shop.svc.cluster.local"
        );
    }

    #[test]
    fn error_rate_rounds_to_parts_per_million() {
        assert_eq!(
            ErrorRate::from_fraction(0.1).map(ErrorRate::parts_per_million),
            Some(100_000)
        );
        assert_eq!(
            ErrorRate::from_fraction(1.0).map(ErrorRate::parts_per_million),
            Some(1_000_000)
        );
        assert_eq!(ErrorRate::from_fraction(1.000_001), None);
        assert_eq!(ErrorRate::from_fraction(-0.0001), None);
        assert_eq!(ErrorRate::from_fraction(f64::NAN), None);
    }
}
