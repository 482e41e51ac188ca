//! Finding the route and subsets weir manages for a Service, and reading their live state.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use super::MeshError;
use super::gateway::HttpRoute;
use super::istio::virtual_service::{VirtualServiceHttp, VirtualServiceHttpRoute};
use super::istio::{DestinationRule, VirtualService};
use crate::plan::{Subset, Subsets, Traffic};
use crate::spec::{RolloutSpec, SplitServices, keys};

/// An object weir patches, as it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectVersion {
    pub name: String,
    pub resource_version: Option<String>,
}

/// The HTTP route weir manages inside the VirtualService.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedRoute {
    /// Index in `spec.http`.
    pub index: usize,
    pub name: Option<String>,
}

/// The stable or canary destination of the managed route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedDestination {
    /// Index in the route's `route` list.
    pub index: usize,
    /// The host exactly as written (one of the Service's host forms).
    pub host: String,
    /// The subset, in a split between subsets; `None` in a host-level split.
    pub subset: Option<String>,
    pub port: Option<i64>,
    /// As written; `None` when the destination has no `weight` field.
    pub weight: Option<i32>,
}

/// The stable or canary subset of the DestinationRule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedSubset {
    /// Index in `spec.subsets`.
    pub index: usize,
    pub name: String,
    /// `None` when the subset has no `labels` map.
    pub labels: Option<BTreeMap<String, String>>,
}

/// The stable or canary Service of a host-level split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedService {
    pub object: ObjectVersion,
    /// Its selector, never empty.
    pub selector: BTreeMap<String, String>,
}

/// What selects each version's pods: where weir writes the version label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selectors {
    /// Two subsets of a DestinationRule, by their labels.
    Subsets {
        destination_rule: ObjectVersion,
        stable: ManagedSubset,
        canary: ManagedSubset,
    },
    /// Two Services, by their selectors (a host-level split).
    Services {
        stable: ManagedService,
        canary: ManagedService,
    },
}

impl Selectors {
    /// The labels that select `subset`'s version, as read; `None` for a subset without
    /// a `labels` map.
    pub fn labels(&self, subset: Subset) -> Option<&BTreeMap<String, String>> {
        match (self, subset) {
            (Selectors::Subsets { stable, .. }, Subset::Stable) => stable.labels.as_ref(),
            (Selectors::Subsets { canary, .. }, Subset::Canary) => canary.labels.as_ref(),
            (Selectors::Services { stable, .. }, Subset::Stable) => Some(&stable.selector),
            (Selectors::Services { canary, .. }, Subset::Canary) => Some(&canary.selector),
        }
    }

    /// How messages name what selects `subset`'s version: `subset "stable"` or
    /// `Service "shop-stable"`.
    pub fn describe(&self, subset: Subset) -> String {
        match (self, subset) {
            (Selectors::Subsets { stable, .. }, Subset::Stable) => {
                format!("subset {:?}", stable.name)
            }
            (Selectors::Subsets { canary, .. }, Subset::Canary) => {
                format!("subset {:?}", canary.name)
            }
            (Selectors::Services { stable, .. }, Subset::Stable) => {
                format!("Service {:?}", stable.object.name)
            }
            (Selectors::Services { canary, .. }, Subset::Canary) => {
                format!("Service {:?}", canary.object.name)
            }
        }
    }
}

/// The kind of object that holds the managed route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// An HTTP route (`spec.http[i]`) of an Istio VirtualService.
    VirtualService,
    /// A rule (`spec.rules[i]`) of a Gateway API HTTPRoute; its destinations are
    /// backendRefs, their `host` the backendRef's Service name.
    HttpRoute,
}

impl RouteKind {
    /// The kind, as Kubernetes names it.
    pub fn kind(self) -> &'static str {
        match self {
            RouteKind::VirtualService => "VirtualService",
            RouteKind::HttpRoute => "HTTPRoute",
        }
    }
}

/// Everything needed to read and patch one Service's traffic, found by [`resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub route_kind: RouteKind,
    /// The VirtualService or HTTPRoute.
    pub route_object: ObjectVersion,
    pub route: ManagedRoute,
    pub stable_destination: ManagedDestination,
    /// `None` until the route has a canary destination: [`super::weight_patch`] adds it
    /// ([`Target::new_canary_destination`]).
    pub canary_destination: Option<ManagedDestination>,
    pub selectors: Selectors,
    /// The route's live weights.
    pub traffic: Traffic,
    /// The versions the subsets (or split Services) select: their version label's values.
    pub subsets: Subsets,
}

impl Target {
    /// The host and subset of the canary destination [`super::weight_patch`] adds to a
    /// route that has none. In a subset split, the stable destination's host with the
    /// canary subset. In a host-level split, the canary Service, written in the form
    /// the stable host is written in (`shop-stable.store` gives `shop-canary.store`).
    pub fn new_canary_destination(&self) -> (String, Option<String>) {
        let stable = &self.stable_destination.host;
        match &self.selectors {
            Selectors::Subsets { canary, .. } => (stable.clone(), Some(canary.name.clone())),
            Selectors::Services { canary, .. } => {
                let rest = stable.find('.').map_or("", |dot| &stable[dot..]);
                (format!("{}{rest}", canary.object.name), None)
            }
        }
    }
}

/// The routing objects of a namespace that [`resolve`] chooses from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Routing<'a> {
    pub virtual_services: &'a [VirtualService],
    /// Not read in a host-level split.
    pub destination_rules: &'a [DestinationRule],
    /// Read only in a host-level split.
    pub http_routes: &'a [HttpRoute],
    /// Need hold only the two split Services of a host-level split; not read otherwise.
    pub services: &'a [Service],
}

/// Finds the VirtualService or HTTPRoute, route, destinations, and the DestinationRule
/// subsets or split Services that manage `spec.service`'s traffic among the objects of
/// `namespace`, following the annotations in `spec` and the defaults of the user
/// contract, and reads their live weights and versions.
pub fn resolve(
    spec: &RolloutSpec,
    namespace: &str,
    routing: Routing<'_>,
) -> Result<Target, MeshError> {
    let split = match &spec.split_services {
        Some(split) => Split::Hosts {
            stable: ServiceHost {
                service: &split.stable,
                namespace,
            },
            canary: ServiceHost {
                service: &split.canary,
                namespace,
            },
        },
        None => {
            if spec.stable_subset == spec.canary_subset {
                return Err(MeshError::SameSubset {
                    subset: spec.stable_subset.clone(),
                });
            }
            Split::Subsets {
                service: ServiceHost {
                    service: &spec.service,
                    namespace,
                },
            }
        }
    };
    // The host the route is found by: the Service's, or the stable Service's.
    let routed = split.routed();

    let found = match choose_route_object(spec, &split, routing)? {
        RouteObject::VirtualService(vs) => virtual_service_route(spec, &split, vs)?,
        RouteObject::HttpRoute(hr) => {
            let Split::Hosts { stable, canary } = &split else {
                unreachable!("an HTTPRoute is chosen only in a host-level split");
            };
            super::gateway_target::http_route_rule(spec, stable, canary, hr)?
        }
    };

    let selectors = match &spec.split_services {
        None => {
            let destination_rule = find_destination_rule(spec, routed, routing.destination_rules)?;
            let dr_name = destination_rule.name_any();
            let subsets = destination_rule.spec.subsets.as_deref().unwrap_or_default();
            let find = |name: &str, key| find_subset(&dr_name, subsets, name, key);
            Selectors::Subsets {
                stable: find(&spec.stable_subset, keys::STABLE_SUBSET)?,
                canary: find(&spec.canary_subset, keys::CANARY_SUBSET)?,
                destination_rule: ObjectVersion {
                    resource_version: destination_rule.resource_version(),
                    name: dr_name,
                },
            }
        }
        Some(split) => Selectors::Services {
            stable: find_split_service(
                routing.services,
                &split.stable,
                keys::STABLE_SERVICE,
                namespace,
            )?,
            canary: find_split_service(
                routing.services,
                &split.canary,
                keys::CANARY_SERVICE,
                namespace,
            )?,
        },
    };
    let version = |subset| {
        selectors
            .labels(subset)
            .and_then(|labels| labels.get(&spec.version_label))
            .cloned()
    };

    Ok(Target {
        route_kind: found.kind,
        route_object: found.object,
        route: found.route,
        subsets: Subsets {
            stable: version(Subset::Stable),
            canary: version(Subset::Canary),
        },
        stable_destination: found.stable,
        canary_destination: found.canary,
        selectors,
        traffic: found.traffic,
    })
}

/// The managed route as found in its object, before the selectors are.
pub(super) struct FoundRoute {
    pub kind: RouteKind,
    pub object: ObjectVersion,
    pub route: ManagedRoute,
    pub stable: ManagedDestination,
    pub canary: Option<ManagedDestination>,
    pub traffic: Traffic,
}

enum RouteObject<'a> {
    VirtualService(&'a VirtualService),
    HttpRoute(&'a HttpRoute),
}

/// The VirtualService, or in a host-level split possibly the HTTPRoute, that holds the
/// managed route: the one an annotation names, else the only one routing to the host.
fn choose_route_object<'a>(
    spec: &RolloutSpec,
    split: &Split,
    routing: Routing<'a>,
) -> Result<RouteObject<'a>, MeshError> {
    let routed = split.routed();
    let Split::Hosts { .. } = split else {
        return find_virtual_service(spec, routed, routing.virtual_services)
            .map(RouteObject::VirtualService);
    };
    if let Some(name) = &spec.http_route {
        return routing
            .http_routes
            .iter()
            .find(|hr| hr.name_any() == *name)
            .map(RouteObject::HttpRoute)
            .ok_or_else(|| MeshError::HttpRouteNotFound {
                name: name.clone(),
                namespace: routed.namespace.to_owned(),
                available: sorted_names(routing.http_routes),
            });
    }
    if spec.virtual_service.is_some() {
        return find_virtual_service(spec, routed, routing.virtual_services)
            .map(RouteObject::VirtualService);
    }
    let virtual_services: Vec<&VirtualService> = routing
        .virtual_services
        .iter()
        .filter(|vs| {
            vs.spec
                .http
                .iter()
                .flatten()
                .any(|route| routed.routes_to(route))
        })
        .collect();
    let http_routes: Vec<&HttpRoute> = routing
        .http_routes
        .iter()
        .filter(|hr| super::gateway_target::routes_to(hr, routed))
        .collect();
    match (virtual_services.as_slice(), http_routes.as_slice()) {
        ([one], []) => Ok(RouteObject::VirtualService(one)),
        ([], [one]) => Ok(RouteObject::HttpRoute(one)),
        ([], []) => Err(MeshError::NoRouteToService {
            namespace: routed.namespace.to_owned(),
            service: routed.service.to_owned(),
        }),
        (several, []) => Err(MeshError::SeveralVirtualServices {
            service: routed.service.to_owned(),
            names: sorted_names(several.iter().copied()),
        }),
        (virtual_services, http_routes) => {
            let mut names: Vec<String> = virtual_services
                .iter()
                .map(|vs| format!("VirtualService {:?}", vs.name_any()))
                .chain(
                    http_routes
                        .iter()
                        .map(|hr| format!("HTTPRoute {:?}", hr.name_any())),
                )
                .collect();
            names.sort();
            Err(MeshError::SeveralRoutingObjects {
                service: routed.service.to_owned(),
                names,
            })
        }
    }
}

/// The managed HTTP route of a VirtualService.
fn virtual_service_route(
    spec: &RolloutSpec,
    split: &Split,
    virtual_service: &VirtualService,
) -> Result<FoundRoute, MeshError> {
    let vs_name = virtual_service.name_any();
    let http = virtual_service.spec.http.as_deref().unwrap_or_default();
    let (route_index, route) = find_route(spec, split.routed(), &vs_name, http)?;
    let route_label = route_label(route_index, route);
    let (stable, canary) = find_destinations(spec, split, &vs_name, &route_label, route)?;
    let traffic = live_traffic(&vs_name, &route_label, &stable, canary.as_ref())?;
    Ok(FoundRoute {
        kind: RouteKind::VirtualService,
        object: ObjectVersion {
            name: vs_name,
            resource_version: virtual_service.resource_version(),
        },
        route: ManagedRoute {
            index: route_index,
            name: route.name.clone(),
        },
        stable,
        canary,
        traffic,
    })
}

/// How the managed route's destinations are told apart.
pub(super) enum Split<'a> {
    /// One host, the Service's; stable and canary are subsets.
    Subsets { service: ServiceHost<'a> },
    /// Two hosts, the stable and the canary Service; no subsets.
    Hosts {
        stable: ServiceHost<'a>,
        canary: ServiceHost<'a>,
    },
}

impl<'a> Split<'a> {
    fn routed(&self) -> &ServiceHost<'a> {
        match self {
            Split::Subsets { service } => service,
            Split::Hosts { stable, .. } => stable,
        }
    }
}

/// A Service, for matching the host names that refer to it.
pub(super) struct ServiceHost<'a> {
    pub service: &'a str,
    pub namespace: &'a str,
}

impl ServiceHost<'_> {
    /// `svc`, `svc.ns`, `svc.ns.svc` or `svc.ns.svc.<cluster domain>`. Short forms are
    /// relative to the namespace of the object that holds them, which is always ours.
    pub fn matches(&self, host: &str) -> bool {
        let mut labels = host.split('.');
        let same =
            |label: Option<&str>, want: &str| label.is_some_and(|l| l.eq_ignore_ascii_case(want));
        if !same(labels.next(), self.service) {
            return false;
        }
        match labels.next() {
            None => return true,
            Some(label) if !label.eq_ignore_ascii_case(self.namespace) => return false,
            Some(_) => {}
        }
        match labels.next() {
            None => return true,
            Some(label) if !label.eq_ignore_ascii_case("svc") => return false,
            Some(_) => {}
        }
        // Any cluster domain, as long as it has no empty label.
        labels.all(|label| !label.is_empty())
    }

    fn routes_to(&self, route: &VirtualServiceHttp) -> bool {
        destinations(route)
            .iter()
            .any(|d| self.matches(&d.destination.host))
    }
}

fn destinations(route: &VirtualServiceHttp) -> &[VirtualServiceHttpRoute] {
    route.route.as_deref().unwrap_or_default()
}

/// How messages name a route: its name, or its position when it has none.
fn route_label(index: usize, route: &VirtualServiceHttp) -> String {
    label(index, route.name.as_deref())
}

/// How messages name a route or rule: its name, or its position when it has none.
pub(super) fn label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{name:?}"),
        None => format!("#{index} (unnamed)"),
    }
}

pub(super) fn sorted_names<'a, K: ResourceExt + 'a>(
    objects: impl IntoIterator<Item = &'a K>,
) -> Vec<String> {
    let mut names: Vec<String> = objects.into_iter().map(ResourceExt::name_any).collect();
    names.sort();
    names
}

fn find_virtual_service<'a>(
    spec: &RolloutSpec,
    service: &ServiceHost,
    virtual_services: &'a [VirtualService],
) -> Result<&'a VirtualService, MeshError> {
    if let Some(name) = &spec.virtual_service {
        return virtual_services
            .iter()
            .find(|vs| vs.name_any() == *name)
            .ok_or_else(|| MeshError::VirtualServiceNotFound {
                name: name.clone(),
                namespace: service.namespace.to_owned(),
                available: sorted_names(virtual_services),
            });
    }
    let routing: Vec<&VirtualService> = virtual_services
        .iter()
        .filter(|vs| {
            vs.spec
                .http
                .iter()
                .flatten()
                .any(|route| service.routes_to(route))
        })
        .collect();
    match routing.as_slice() {
        [one] => Ok(one),
        [] => Err(MeshError::NoVirtualService {
            namespace: service.namespace.to_owned(),
            service: service.service.to_owned(),
        }),
        several => Err(MeshError::SeveralVirtualServices {
            service: service.service.to_owned(),
            names: sorted_names(several.iter().copied()),
        }),
    }
}

fn find_route<'a>(
    spec: &RolloutSpec,
    service: &ServiceHost,
    vs_name: &str,
    http: &'a [VirtualServiceHttp],
) -> Result<(usize, &'a VirtualServiceHttp), MeshError> {
    if let Some(name) = &spec.route {
        let named: Vec<_> = http
            .iter()
            .enumerate()
            .filter(|(_, route)| route.name.as_ref() == Some(name))
            .collect();
        let (index, route) = match named.as_slice() {
            [one] => *one,
            [] => {
                return Err(MeshError::RouteNotFound {
                    virtual_service: vs_name.to_owned(),
                    route: name.clone(),
                    available: http.iter().filter_map(|route| route.name.clone()).collect(),
                });
            }
            _ => {
                return Err(MeshError::DuplicateRouteName {
                    virtual_service: vs_name.to_owned(),
                    route: name.clone(),
                });
            }
        };
        if !service.routes_to(route) {
            return Err(MeshError::RouteNotOnService {
                virtual_service: vs_name.to_owned(),
                route: route_label(index, route),
                service: service.service.to_owned(),
            });
        }
        return Ok((index, route));
    }
    let routing: Vec<_> = http
        .iter()
        .enumerate()
        .filter(|(_, route)| service.routes_to(route))
        .collect();
    match routing.as_slice() {
        [one] => Ok(*one),
        [] => Err(MeshError::NoRoute {
            virtual_service: vs_name.to_owned(),
            service: service.service.to_owned(),
        }),
        several => Err(MeshError::SeveralRoutes {
            virtual_service: vs_name.to_owned(),
            service: service.service.to_owned(),
            routes: several
                .iter()
                .map(|(index, route)| route_label(*index, route))
                .collect(),
        }),
    }
}

/// The stable and (if present) canary destinations. Any other destination is an error:
/// weir would have to rebalance weights it does not own.
fn find_destinations(
    spec: &RolloutSpec,
    split: &Split,
    vs_name: &str,
    route_label: &str,
    route: &VirtualServiceHttp,
) -> Result<(ManagedDestination, Option<ManagedDestination>), MeshError> {
    let mut stable = None;
    let mut canary = None;
    for (index, destination) in destinations(route).iter().enumerate() {
        let host = &destination.destination.host;
        let subset = destination.destination.subset.as_deref();
        let (slot, duplicate) = match split {
            Split::Subsets { service } => {
                if !service.matches(host) {
                    return Err(MeshError::ForeignDestination {
                        virtual_service: vs_name.to_owned(),
                        route: route_label.to_owned(),
                        host: host.clone(),
                        service: service.service.to_owned(),
                    });
                }
                let slot = match subset {
                    Some(subset) if subset == spec.stable_subset => &mut stable,
                    Some(subset) if subset == spec.canary_subset => &mut canary,
                    _ => {
                        return Err(MeshError::UnmanagedDestination {
                            virtual_service: vs_name.to_owned(),
                            route: route_label.to_owned(),
                            subset: subset.map(str::to_owned),
                            stable: spec.stable_subset.clone(),
                            canary: spec.canary_subset.clone(),
                        });
                    }
                };
                (slot, format!("subset {:?}", subset.unwrap_or_default()))
            }
            Split::Hosts {
                stable: stable_host,
                canary: canary_host,
            } => {
                let slot = if stable_host.matches(host) {
                    &mut stable
                } else if canary_host.matches(host) {
                    &mut canary
                } else {
                    return Err(MeshError::ForeignHost {
                        virtual_service: vs_name.to_owned(),
                        route: route_label.to_owned(),
                        host: host.clone(),
                        split: Box::new(SplitServices {
                            stable: stable_host.service.to_owned(),
                            canary: canary_host.service.to_owned(),
                        }),
                    });
                };
                if let Some(subset) = subset {
                    return Err(MeshError::SubsetInHostSplit {
                        virtual_service: vs_name.to_owned(),
                        route: route_label.to_owned(),
                        host: host.clone(),
                        subset: subset.to_owned(),
                    });
                }
                (slot, format!("host {host:?}"))
            }
        };
        if slot.is_some() {
            return Err(MeshError::DuplicateDestination {
                virtual_service: vs_name.to_owned(),
                route: route_label.to_owned(),
                destination: duplicate,
            });
        }
        *slot = Some(ManagedDestination {
            index,
            host: host.clone(),
            subset: subset.map(str::to_owned),
            port: destination
                .destination
                .port
                .as_ref()
                .and_then(|port| port.number),
            weight: destination.weight,
        });
    }
    let stable = stable.ok_or_else(|| match split {
        Split::Subsets { service } => MeshError::NoStableDestination {
            virtual_service: vs_name.to_owned(),
            route: route_label.to_owned(),
            service: service.service.to_owned(),
            subset: spec.stable_subset.clone(),
        },
        // Unreachable in practice: the route was found by a destination on this host.
        Split::Hosts { stable, .. } => MeshError::NoStableHost {
            virtual_service: vs_name.to_owned(),
            route: route_label.to_owned(),
            service: stable.service.to_owned(),
        },
    })?;
    Ok((stable, canary))
}

/// The stable or canary Service of a host-level split (`key` names it), with its
/// selector.
fn find_split_service(
    services: &[Service],
    name: &str,
    key: &'static str,
    namespace: &str,
) -> Result<ManagedService, MeshError> {
    let service = services
        .iter()
        .find(|service| service.name_any() == name)
        .ok_or_else(|| MeshError::SplitServiceNotFound {
            name: name.to_owned(),
            key,
            namespace: namespace.to_owned(),
        })?;
    let selector = service
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.clone())
        .filter(|selector| !selector.is_empty())
        .ok_or_else(|| MeshError::SplitServiceWithoutSelector {
            name: name.to_owned(),
            key,
        })?;
    Ok(ManagedService {
        object: ObjectVersion {
            name: name.to_owned(),
            resource_version: service.resource_version(),
        },
        selector,
    })
}

/// A sole destination without a weight takes all traffic; next to a canary destination,
/// a missing weight is 0. Weights that are not 0..=100 summing to 100 are reported, not
/// fixed: the user has to say what they meant.
fn live_traffic(
    vs_name: &str,
    route_label: &str,
    stable: &ManagedDestination,
    canary: Option<&ManagedDestination>,
) -> Result<Traffic, MeshError> {
    let (stable_weight, canary_weight) = match canary {
        None => (i64::from(stable.weight.unwrap_or(100)), 0),
        Some(canary) => (
            i64::from(stable.weight.unwrap_or(0)),
            i64::from(canary.weight.unwrap_or(0)),
        ),
    };
    match (u8::try_from(stable_weight), u8::try_from(canary_weight)) {
        (Ok(stable), Ok(canary)) if stable_weight + canary_weight == 100 => {
            Ok(Traffic { stable, canary })
        }
        _ => Err(MeshError::WeightsNotHundred {
            virtual_service: vs_name.to_owned(),
            route: route_label.to_owned(),
            stable: stable_weight,
            canary: canary_weight,
            canary_present: canary.is_some(),
        }),
    }
}

fn find_destination_rule<'a>(
    spec: &RolloutSpec,
    service: &ServiceHost,
    destination_rules: &'a [DestinationRule],
) -> Result<&'a DestinationRule, MeshError> {
    if let Some(name) = &spec.destination_rule {
        let rule = destination_rules
            .iter()
            .find(|dr| dr.name_any() == *name)
            .ok_or_else(|| MeshError::DestinationRuleNotFound {
                name: name.clone(),
                namespace: service.namespace.to_owned(),
                available: sorted_names(destination_rules),
            })?;
        if !service.matches(&rule.spec.host) {
            return Err(MeshError::DestinationRuleForOtherHost {
                name: name.clone(),
                host: rule.spec.host.clone(),
                service: service.service.to_owned(),
            });
        }
        return Ok(rule);
    }
    let matching: Vec<&DestinationRule> = destination_rules
        .iter()
        .filter(|dr| service.matches(&dr.spec.host))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(MeshError::NoDestinationRule {
            namespace: service.namespace.to_owned(),
            service: service.service.to_owned(),
        }),
        several => Err(MeshError::SeveralDestinationRules {
            service: service.service.to_owned(),
            names: sorted_names(several.iter().copied()),
        }),
    }
}

fn find_subset(
    dr_name: &str,
    subsets: &[super::istio::destination_rule::DestinationRuleSubsets],
    name: &str,
    key: &'static str,
) -> Result<ManagedSubset, MeshError> {
    let named: Vec<_> = subsets
        .iter()
        .enumerate()
        .filter(|(_, subset)| subset.name == name)
        .collect();
    match named.as_slice() {
        [(index, subset)] => Ok(ManagedSubset {
            index: *index,
            name: subset.name.clone(),
            labels: subset.labels.clone(),
        }),
        [] => Err(MeshError::SubsetNotFound {
            destination_rule: dr_name.to_owned(),
            subset: name.to_owned(),
            key,
            available: subsets.iter().map(|subset| subset.name.clone()).collect(),
        }),
        _ => Err(MeshError::DuplicateSubset {
            destination_rule: dr_name.to_owned(),
            subset: name.to_owned(),
        }),
    }
}

/// Whether any HTTP route of `virtual_service` has a destination on `service`'s host:
/// the controller uses it to wake the Services a VirtualService change concerns.
pub fn routes_to(virtual_service: &VirtualService, service: &str, namespace: &str) -> bool {
    let host = ServiceHost { service, namespace };
    virtual_service
        .spec
        .http
        .iter()
        .flatten()
        .any(|route| host.routes_to(route))
}

/// Whether `host` (as written in a route or a DestinationRule) names `service`.
pub fn host_matches(host: &str, service: &str, namespace: &str) -> bool {
    ServiceHost { service, namespace }.matches(host)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::mesh::fixtures::{
        NAMESPACE, destination_rule, remove, set, spec, typed_destination_rule,
        typed_virtual_service, virtual_service,
    };

    fn named(value: Value, name: &str) -> Value {
        set(value, "/metadata/name", json!(name))
    }

    const STABLE: &str = "/spec/http/2/route/0";
    const CANARY: &str = "/spec/http/2/route/1";

    fn run(
        spec: &RolloutSpec,
        virtual_services: &[Value],
        destination_rules: &[Value],
    ) -> Result<Target, MeshError> {
        let virtual_services: Vec<_> = virtual_services.iter().map(typed_virtual_service).collect();
        let destination_rules: Vec<_> = destination_rules
            .iter()
            .map(typed_destination_rule)
            .collect();
        let routing = Routing {
            virtual_services: &virtual_services,
            destination_rules: &destination_rules,
            ..Routing::default()
        };
        resolve(spec, NAMESPACE, routing)
    }

    fn resolve_fixtures(
        annotations: &[(&str, &str)],
        vs: Value,
        dr: Value,
    ) -> Result<Target, MeshError> {
        run(&spec(annotations), &[vs], &[dr])
    }

    #[test]
    fn defaults_find_the_only_route_to_the_service() {
        let target = resolve_fixtures(&[], virtual_service(), destination_rule()).unwrap();
        assert_eq!(
            target,
            Target {
                route_kind: RouteKind::VirtualService,
                route_object: ObjectVersion {
                    name: "shop".into(),
                    resource_version: Some("4711".into())
                },
                route: ManagedRoute {
                    index: 2,
                    name: Some("main".into())
                },
                stable_destination: ManagedDestination {
                    index: 0,
                    host: "shop.store.svc.cluster.local".into(),
                    subset: Some("stable".into()),
                    port: Some(8080),
                    weight: Some(90),
                },
                canary_destination: Some(ManagedDestination {
                    index: 1,
                    host: "shop.store.svc.cluster.local".into(),
                    subset: Some("canary".into()),
                    port: Some(8080),
                    weight: Some(10),
                }),
                selectors: Selectors::Subsets {
                    destination_rule: ObjectVersion {
                        name: "shop".into(),
                        resource_version: Some("815".into())
                    },
                    stable: ManagedSubset {
                        index: 0,
                        name: "stable".into(),
                        labels: Some(
                            [
                                ("app".into(), "shop".into()),
                                ("version".into(), "v1".into())
                            ]
                            .into()
                        ),
                    },
                    canary: ManagedSubset {
                        index: 1,
                        name: "canary".into(),
                        labels: Some(
                            [
                                ("app".into(), "shop".into()),
                                ("version".into(), "v2".into())
                            ]
                            .into()
                        ),
                    },
                },
                traffic: Traffic {
                    stable: 90,
                    canary: 10
                },
                subsets: Subsets {
                    stable: Some("v1".into()),
                    canary: Some("v2".into())
                },
            }
        );
        assert_eq!(
            target.selectors.describe(Subset::Stable),
            r#"subset "stable""#
        );
        assert_eq!(
            target.selectors.describe(Subset::Canary),
            r#"subset "canary""#
        );
    }

    #[test]
    fn names_in_annotations_choose_among_several() {
        let second_route = set(
            virtual_service(),
            "/spec/http/0/route/0/destination/host",
            json!("shop"),
        );
        let other_vs = named(virtual_service(), "shop-internal");
        let other_dr = named(destination_rule(), "shop-internal");
        let target = run(
            &spec(&[
                (keys::VIRTUAL_SERVICE, "shop"),
                (keys::ROUTE, "main"),
                (keys::DESTINATION_RULE, "shop"),
            ]),
            &[other_vs, second_route],
            &[other_dr, destination_rule()],
        )
        .unwrap();
        assert_eq!(target.route_object.name, "shop");
        assert_eq!(
            target.route,
            ManagedRoute {
                index: 2,
                name: Some("main".into())
            }
        );
        assert!(
            matches!(&target.selectors, Selectors::Subsets { destination_rule, .. } if destination_rule.name == "shop")
        );
    }

    #[test]
    fn every_host_form_of_the_service_matches() {
        let service = ServiceHost {
            service: "shop",
            namespace: "store",
        };
        for host in [
            "shop",
            "shop.store",
            "shop.store.svc",
            "shop.store.svc.cluster.local",
            "shop.store.svc.corp.example",
            "Shop.Store.SVC.cluster.local",
        ] {
            assert!(service.matches(host), "{host} should name shop in store");
        }
        for host in [
            "shopping",
            "shop.other",
            "shop.other.svc.cluster.local",
            "shop.store.cluster.local",
            "shop.store.svc.",
            "shop.store.svc..local",
            "cart.store.svc.cluster.local",
            "shop.example.com",
            "*.store.svc.cluster.local",
            "",
        ] {
            assert!(
                !service.matches(host),
                "{host} should not name shop in store"
            );
        }
    }

    #[test]
    fn the_controller_maps_objects_back_to_services() {
        let vs = typed_virtual_service(&virtual_service());
        assert!(routes_to(&vs, "shop", NAMESPACE));
        assert!(
            routes_to(&vs, "admin", NAMESPACE),
            "another route's Service"
        );
        assert!(
            !routes_to(&vs, "shop", "other"),
            "the namespace is part of the host"
        );
        assert!(
            !routes_to(&vs, "shop-shadow", NAMESPACE),
            "a mirror is not a route"
        );
        assert!(host_matches(
            "shop.store.svc.cluster.local",
            "shop",
            NAMESPACE
        ));
        assert!(!host_matches(
            "shop.store.svc.cluster.local",
            "cart",
            NAMESPACE
        ));
    }

    #[test]
    fn short_host_forms_resolve_like_long_ones() {
        let vs = set(
            virtual_service(),
            &format!("{STABLE}/destination/host"),
            json!("shop"),
        );
        let vs = set(
            vs,
            &format!("{CANARY}/destination/host"),
            json!("shop.store"),
        );
        let dr = set(destination_rule(), "/spec/host", json!("shop.store.svc"));
        let target = resolve_fixtures(&[], vs, dr).unwrap();
        assert_eq!(target.stable_destination.host, "shop");
        assert_eq!(target.canary_destination.unwrap().host, "shop.store");
    }

    #[test]
    fn live_traffic_defaults() {
        let only_stable = |weight: Option<i64>| {
            let vs = remove(virtual_service(), CANARY);
            match weight {
                Some(weight) => set(vs, &format!("{STABLE}/weight"), json!(weight)),
                None => remove(vs, &format!("{STABLE}/weight")),
            }
        };
        let cases = [
            (
                "sole destination without weight",
                only_stable(None),
                Traffic {
                    stable: 100,
                    canary: 0,
                },
            ),
            (
                "sole destination with weight 100",
                only_stable(Some(100)),
                Traffic {
                    stable: 100,
                    canary: 0,
                },
            ),
            (
                "canary without weight",
                set(
                    remove(virtual_service(), &format!("{CANARY}/weight")),
                    &format!("{STABLE}/weight"),
                    json!(100),
                ),
                Traffic {
                    stable: 100,
                    canary: 0,
                },
            ),
            (
                "stable without weight",
                set(
                    remove(virtual_service(), &format!("{STABLE}/weight")),
                    &format!("{CANARY}/weight"),
                    json!(100),
                ),
                Traffic {
                    stable: 0,
                    canary: 100,
                },
            ),
            (
                "90/10",
                virtual_service(),
                Traffic {
                    stable: 90,
                    canary: 10,
                },
            ),
        ];
        for (case, vs, want) in cases {
            let target = resolve_fixtures(&[], vs, destination_rule())
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(target.traffic, want, "{case}");
        }
        let target = resolve_fixtures(&[], only_stable(None), destination_rule()).unwrap();
        assert_eq!(target.canary_destination, None);
        assert_eq!(target.stable_destination.weight, None);
    }

    #[test]
    fn subset_versions_come_from_the_version_label() {
        let dr = remove(destination_rule(), "/spec/subsets/1/labels");
        let dr = set(
            dr,
            "/spec/subsets/0/labels/app.kubernetes.io~1version",
            json!("1.4.0"),
        );
        let target = resolve_fixtures(&[], virtual_service(), dr.clone()).unwrap();
        assert_eq!(
            target.subsets,
            Subsets {
                stable: Some("v1".into()),
                canary: None
            }
        );
        assert_eq!(target.selectors.labels(Subset::Canary), None);

        let target = resolve_fixtures(
            &[(keys::VERSION_LABEL, "app.kubernetes.io/version")],
            virtual_service(),
            dr,
        )
        .unwrap();
        assert_eq!(
            target.subsets,
            Subsets {
                stable: Some("1.4.0".into()),
                canary: None
            }
        );
    }

    struct Case {
        name: &'static str,
        annotations: &'static [(&'static str, &'static str)],
        virtual_services: fn() -> Vec<Value>,
        destination_rules: fn() -> Vec<Value>,
        want: MeshError,
    }

    fn s(text: &str) -> String {
        text.to_owned()
    }

    fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|text| s(text)).collect()
    }

    fn cases() -> Vec<Case> {
        let vs = || vec![virtual_service()];
        let dr = || vec![destination_rule()];
        vec![
            Case {
                name: "no VirtualService at all",
                annotations: &[],
                virtual_services: Vec::new,
                destination_rules: dr,
                want: MeshError::NoVirtualService {
                    namespace: s(NAMESPACE),
                    service: s("shop"),
                },
            },
            Case {
                name: "only a TCP route and another namespace's shop route to it",
                annotations: &[],
                virtual_services: || vec![remove(virtual_service(), "/spec/http/2")],
                destination_rules: dr,
                want: MeshError::NoVirtualService {
                    namespace: s(NAMESPACE),
                    service: s("shop"),
                },
            },
            Case {
                name: "two VirtualServices route to the Service",
                annotations: &[],
                virtual_services: || vec![virtual_service(), named(virtual_service(), "a-shop")],
                destination_rules: dr,
                want: MeshError::SeveralVirtualServices {
                    service: s("shop"),
                    names: strings(&["a-shop", "shop"]),
                },
            },
            Case {
                name: "the named VirtualService does not exist",
                annotations: &[(keys::VIRTUAL_SERVICE, "shop-v2")],
                virtual_services: vs,
                destination_rules: dr,
                want: MeshError::VirtualServiceNotFound {
                    name: s("shop-v2"),
                    namespace: s(NAMESPACE),
                    available: strings(&["shop"]),
                },
            },
            Case {
                name: "the named VirtualService has no route to the Service",
                annotations: &[(keys::VIRTUAL_SERVICE, "front")],
                virtual_services: || {
                    vec![
                        virtual_service(),
                        named(remove(virtual_service(), "/spec/http/2"), "front"),
                    ]
                },
                destination_rules: dr,
                want: MeshError::NoRoute {
                    virtual_service: s("front"),
                    service: s("shop"),
                },
            },
            Case {
                name: "the named route does not exist",
                annotations: &[(keys::ROUTE, "primary")],
                virtual_services: vs,
                destination_rules: dr,
                want: MeshError::RouteNotFound {
                    virtual_service: s("shop"),
                    route: s("primary"),
                    available: strings(&["admin", "old-shop", "main", "maintenance"]),
                },
            },
            Case {
                name: "two routes carry the named route's name",
                annotations: &[(keys::ROUTE, "main")],
                virtual_services: || {
                    vec![set(virtual_service(), "/spec/http/0/name", json!("main"))]
                },
                destination_rules: dr,
                want: MeshError::DuplicateRouteName {
                    virtual_service: s("shop"),
                    route: s("main"),
                },
            },
            Case {
                name: "the named route goes elsewhere",
                annotations: &[(keys::ROUTE, "old-shop")],
                virtual_services: vs,
                destination_rules: dr,
                want: MeshError::RouteNotOnService {
                    virtual_service: s("shop"),
                    route: s("\"old-shop\""),
                    service: s("shop"),
                },
            },
            Case {
                name: "two routes go to the Service",
                annotations: &[],
                virtual_services: || {
                    let vs = set(
                        virtual_service(),
                        "/spec/http/0/route/0/destination/host",
                        json!("shop"),
                    );
                    vec![remove(vs, "/spec/http/0/name")]
                },
                destination_rules: dr,
                want: MeshError::SeveralRoutes {
                    virtual_service: s("shop"),
                    service: s("shop"),
                    routes: strings(&["#0 (unnamed)", "\"main\""]),
                },
            },
            Case {
                name: "the managed route also goes to another Service",
                annotations: &[],
                virtual_services: || {
                    let mirror = json!({ "destination": { "host": "cart" }, "weight": 0 });
                    vec![set(virtual_service(), "/spec/http/2/route/2", mirror)]
                },
                destination_rules: dr,
                want: MeshError::ForeignDestination {
                    virtual_service: s("shop"),
                    route: s("\"main\""),
                    host: s("cart"),
                    service: s("shop"),
                },
            },
            Case {
                name: "a destination with a third subset",
                annotations: &[],
                virtual_services: || {
                    vec![set(
                        virtual_service(),
                        &format!("{CANARY}/destination/subset"),
                        json!("debug"),
                    )]
                },
                destination_rules: dr,
                want: MeshError::UnmanagedDestination {
                    virtual_service: s("shop"),
                    route: s("\"main\""),
                    subset: Some(s("debug")),
                    stable: s("stable"),
                    canary: s("canary"),
                },
            },
            Case {
                name: "a destination without subset",
                annotations: &[],
                virtual_services: || {
                    vec![remove(
                        virtual_service(),
                        &format!("{STABLE}/destination/subset"),
                    )]
                },
                destination_rules: dr,
                want: MeshError::UnmanagedDestination {
                    virtual_service: s("shop"),
                    route: s("\"main\""),
                    subset: None,
                    stable: s("stable"),
                    canary: s("canary"),
                },
            },
            Case {
                name: "two destinations with the stable subset",
                annotations: &[],
                virtual_services: || {
                    vec![set(
                        virtual_service(),
                        &format!("{CANARY}/destination/subset"),
                        json!("stable"),
                    )]
                },
                destination_rules: dr,
                want: MeshError::DuplicateDestination {
                    virtual_service: s("shop"),
                    route: s("\"main\""),
                    destination: s("subset \"stable\""),
                },
            },
            Case {
                name: "only a canary destination",
                annotations: &[],
                virtual_services: || vec![remove(virtual_service(), STABLE)],
                destination_rules: dr,
                want: MeshError::NoStableDestination {
                    virtual_service: s("shop"),
                    route: s("\"main\""),
                    service: s("shop"),
                    subset: s("stable"),
                },
            },
            Case {
                name: "weights summing to 110",
                annotations: &[],
                virtual_services: || {
                    vec![set(
                        virtual_service(),
                        &format!("{CANARY}/weight"),
                        json!(20),
                    )]
                },
                destination_rules: dr,
                want: MeshError::WeightsNotHundred {
                    virtual_service: s("shop"),
                    route: s("\"main\""),
                    stable: 90,
                    canary: 20,
                    canary_present: true,
                },
            },
            Case {
                name: "two destinations without weights",
                annotations: &[],
                virtual_services: || {
                    let vs = remove(virtual_service(), &format!("{CANARY}/weight"));
                    vec![remove(vs, &format!("{STABLE}/weight"))]
                },
                destination_rules: dr,
                want: MeshError::WeightsNotHundred {
                    virtual_service: s("shop"),
                    route: s("\"main\""),
                    stable: 0,
                    canary: 0,
                    canary_present: true,
                },
            },
            Case {
                name: "weights out of range that sum to 100",
                annotations: &[],
                virtual_services: || {
                    let vs = set(virtual_service(), &format!("{STABLE}/weight"), json!(120));
                    vec![set(vs, &format!("{CANARY}/weight"), json!(-20))]
                },
                destination_rules: dr,
                want: MeshError::WeightsNotHundred {
                    virtual_service: s("shop"),
                    route: s("\"main\""),
                    stable: 120,
                    canary: -20,
                    canary_present: true,
                },
            },
            Case {
                name: "a sole destination with weight 50",
                annotations: &[],
                virtual_services: || {
                    vec![set(
                        remove(virtual_service(), CANARY),
                        &format!("{STABLE}/weight"),
                        json!(50),
                    )]
                },
                destination_rules: dr,
                want: MeshError::WeightsNotHundred {
                    virtual_service: s("shop"),
                    route: s("\"main\""),
                    stable: 50,
                    canary: 0,
                    canary_present: false,
                },
            },
            Case {
                name: "no DestinationRule",
                annotations: &[],
                virtual_services: vs,
                destination_rules: || vec![set(destination_rule(), "/spec/host", json!("cart"))],
                want: MeshError::NoDestinationRule {
                    namespace: s(NAMESPACE),
                    service: s("shop"),
                },
            },
            Case {
                name: "two DestinationRules for the Service",
                annotations: &[],
                virtual_services: vs,
                destination_rules: || {
                    vec![
                        destination_rule(),
                        set(
                            named(destination_rule(), "b-shop"),
                            "/spec/host",
                            json!("shop"),
                        ),
                    ]
                },
                want: MeshError::SeveralDestinationRules {
                    service: s("shop"),
                    names: strings(&["b-shop", "shop"]),
                },
            },
            Case {
                name: "the named DestinationRule does not exist",
                annotations: &[(keys::DESTINATION_RULE, "shop-subsets")],
                virtual_services: vs,
                destination_rules: dr,
                want: MeshError::DestinationRuleNotFound {
                    name: s("shop-subsets"),
                    namespace: s(NAMESPACE),
                    available: strings(&["shop"]),
                },
            },
            Case {
                name: "the named DestinationRule is another host's",
                annotations: &[(keys::DESTINATION_RULE, "cart")],
                virtual_services: vs,
                destination_rules: || {
                    vec![
                        destination_rule(),
                        set(
                            named(destination_rule(), "cart"),
                            "/spec/host",
                            json!("cart"),
                        ),
                    ]
                },
                want: MeshError::DestinationRuleForOtherHost {
                    name: s("cart"),
                    host: s("cart"),
                    service: s("shop"),
                },
            },
            Case {
                name: "the stable subset is missing",
                annotations: &[(keys::STABLE_SUBSET, "primary")],
                virtual_services: || {
                    vec![set(
                        virtual_service(),
                        &format!("{STABLE}/destination/subset"),
                        json!("primary"),
                    )]
                },
                destination_rules: dr,
                want: MeshError::SubsetNotFound {
                    destination_rule: s("shop"),
                    subset: s("primary"),
                    key: keys::STABLE_SUBSET,
                    available: strings(&["stable", "canary", "debug"]),
                },
            },
            Case {
                name: "the canary subset is missing",
                annotations: &[],
                virtual_services: vs,
                destination_rules: || vec![remove(destination_rule(), "/spec/subsets/1")],
                want: MeshError::SubsetNotFound {
                    destination_rule: s("shop"),
                    subset: s("canary"),
                    key: keys::CANARY_SUBSET,
                    available: strings(&["stable", "debug"]),
                },
            },
            Case {
                name: "the canary subset is there twice",
                annotations: &[],
                virtual_services: vs,
                destination_rules: || {
                    vec![set(
                        destination_rule(),
                        "/spec/subsets/2/name",
                        json!("canary"),
                    )]
                },
                want: MeshError::DuplicateSubset {
                    destination_rule: s("shop"),
                    subset: s("canary"),
                },
            },
        ]
    }

    #[test]
    fn each_misconfiguration_is_named() {
        for case in cases() {
            let got = run(
                &spec(case.annotations),
                &(case.virtual_services)(),
                &(case.destination_rules)(),
            );
            assert_eq!(got, Err(case.want), "{}", case.name);
        }
    }

    #[test]
    fn stable_and_canary_must_be_different_subsets() {
        let mut same = spec(&[]);
        same.canary_subset = same.stable_subset.clone();
        let got = run(&same, &[virtual_service()], &[destination_rule()]);
        assert_eq!(
            got,
            Err(MeshError::SameSubset {
                subset: s("stable")
            })
        );
    }

    #[test]
    fn messages_say_what_is_wrong_and_the_fix() {
        let route = MeshError::RouteNotFound {
            virtual_service: s("shop"),
            route: s("main"),
            available: strings(&["api", "web"]),
        };
        assert_eq!(
            route.to_string(),
            r#"VirtualService "shop" has no HTTP route named "main" (routes: "api", "web"); set weir.dev/route to one of them"#
        );
        let several = run(
            &spec(&[]),
            &[virtual_service(), named(virtual_service(), "a-shop")],
            &[destination_rule()],
        );
        assert_eq!(
            several.unwrap_err().to_string(),
            r#"several VirtualServices have an HTTP route to Service "shop" ("a-shop", "shop"); set weir.dev/virtual-service to the one weir should edit"#
        );
        let unmanaged = run(
            &spec(&[]),
            &[remove(
                virtual_service(),
                &format!("{STABLE}/destination/subset"),
            )],
            &[destination_rule()],
        );
        assert_eq!(
            unmanaged.unwrap_err().to_string(),
            r#"route "main" of VirtualService "shop" has a destination on this Service without a subset; weir only manages a route whose destinations are the stable subset "stable" and the canary subset "canary": set its subset to "stable", or set weir.dev/stable-subset and weir.dev/canary-subset to the subsets you use"#
        );
        let missing = run(
            &spec(&[]),
            &[virtual_service()],
            &[remove(destination_rule(), "/spec/subsets/1")],
        );
        assert_eq!(
            missing.unwrap_err().to_string(),
            r#"DestinationRule "shop" has no subset named "canary" (subsets: "stable", "debug"); add it, or set weir.dev/canary-subset to one of them"#
        );
        let weights = MeshError::WeightsNotHundred {
            virtual_service: s("shop"),
            route: s("#1 (unnamed)"),
            stable: 50,
            canary: 0,
            canary_present: false,
        };
        assert_eq!(
            weights.to_string(),
            "route #1 (unnamed) of VirtualService \"shop\" has weights stable 50 and canary 0 (no canary destination); \
             weir only changes weights that are 0 to 100 and sum to 100: fix them (for example stable 100, canary 0)"
        );
    }
}
