//! Finding the managed rule of a Gateway API HTTPRoute and reading its live weights: the
//! HTTPRoute counterpart of a VirtualService's HTTP route, for a host-level split.
//!
//! Its destinations are backendRefs naming the stable and the canary Service. Gateway
//! API weights are proportions, not percentages: a missing weight is 1 (the apiserver
//! writes that default), and a sole backend with any positive weight takes everything.
//! weir writes percentages that sum to 100, and reads the live weights as such.

use kube::ResourceExt;

use super::MeshError;
use super::gateway::HttpRoute;
use super::gateway::http_route::{HttpRouteRules, HttpRouteRulesBackendRefs};
use super::target::{
    FoundRoute, ManagedDestination, ManagedRoute, ObjectVersion, RouteKind, ServiceHost, label,
};
use crate::plan::Traffic;
use crate::spec::{RolloutSpec, SplitServices};

/// The Service a backendRef names in the route's own namespace, if it names one.
fn local_service<'b>(backend: &'b HttpRouteRulesBackendRefs, namespace: &str) -> Option<&'b str> {
    let core = backend.group.as_deref().is_none_or(str::is_empty);
    let service = backend.kind.as_deref().is_none_or(|kind| kind == "Service");
    let local = backend
        .namespace
        .as_deref()
        .is_none_or(|ns| ns == namespace);
    (core && service && local).then_some(backend.name.as_str())
}

fn backends(rule: &HttpRouteRules) -> &[HttpRouteRulesBackendRefs] {
    rule.backend_refs.as_deref().unwrap_or_default()
}

fn rule_routes_to(rule: &HttpRouteRules, service: &ServiceHost) -> bool {
    backends(rule)
        .iter()
        .any(|b| local_service(b, service.namespace) == Some(service.service))
}

/// Whether any rule of `http_route` has a backendRef on `service`.
pub(super) fn routes_to(http_route: &HttpRoute, service: &ServiceHost) -> bool {
    http_route
        .spec
        .rules
        .iter()
        .flatten()
        .any(|rule| rule_routes_to(rule, service))
}

/// The Services (short names) an HTTPRoute's rules send traffic to, in `namespace`.
pub fn services_of(http_route: &HttpRoute, namespace: &str) -> Vec<String> {
    http_route
        .spec
        .rules
        .iter()
        .flatten()
        .flat_map(backends)
        .filter_map(|b| local_service(b, namespace))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The managed rule of `http_route`: the one `weir.dev/route` names, else the only one
/// with a backendRef on the stable Service; its stable and canary backendRefs, and its
/// live weights.
pub(super) fn http_route_rule(
    spec: &RolloutSpec,
    stable: &ServiceHost,
    canary: &ServiceHost,
    http_route: &HttpRoute,
) -> Result<FoundRoute, MeshError> {
    let name = http_route.name_any();
    let rules = http_route.spec.rules.as_deref().unwrap_or_default();
    let (index, rule) = find_rule(spec, stable, &name, rules)?;
    let rule_label = label(index, rule.name.as_deref());
    let mut found = [None, None];
    for (position, backend) in backends(rule).iter().enumerate() {
        let service = local_service(backend, stable.namespace);
        let slot = match service {
            Some(service) if service == stable.service => 0,
            Some(service) if service == canary.service => 1,
            _ => {
                return Err(MeshError::ForeignBackend {
                    http_route: name,
                    rule: rule_label,
                    backend: describe(backend),
                    split: Box::new(SplitServices {
                        stable: stable.service.to_owned(),
                        canary: canary.service.to_owned(),
                    }),
                });
            }
        };
        if found[slot].is_some() {
            return Err(MeshError::DuplicateBackend {
                http_route: name,
                rule: rule_label,
                service: backend.name.clone(),
            });
        }
        found[slot] = Some(ManagedDestination {
            index: position,
            host: backend.name.clone(),
            subset: None,
            port: backend.port.map(i64::from),
            weight: backend.weight,
        });
    }
    let [stable_backend, canary_backend] = found;
    // The rule was found by a backendRef on the stable Service, or named: then it must
    // have one.
    let stable_backend = stable_backend.ok_or_else(|| MeshError::RuleNotOnService {
        http_route: name.clone(),
        rule: rule_label.clone(),
        service: stable.service.to_owned(),
    })?;
    let traffic = live_traffic(&name, &rule_label, &stable_backend, canary_backend.as_ref())?;
    Ok(FoundRoute {
        kind: RouteKind::HttpRoute,
        object: ObjectVersion {
            name,
            resource_version: http_route.resource_version(),
        },
        route: ManagedRoute {
            index,
            name: rule.name.clone(),
        },
        stable: stable_backend,
        canary: canary_backend,
        traffic,
    })
}

fn find_rule<'a>(
    spec: &RolloutSpec,
    stable: &ServiceHost,
    http_route: &str,
    rules: &'a [HttpRouteRules],
) -> Result<(usize, &'a HttpRouteRules), MeshError> {
    if let Some(wanted) = &spec.route {
        // Gateway API keeps rule names unique within a route.
        let (index, rule) = rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.name.as_ref() == Some(wanted))
            .ok_or_else(|| MeshError::RuleNotFound {
                http_route: http_route.to_owned(),
                rule: wanted.clone(),
                available: rules.iter().filter_map(|rule| rule.name.clone()).collect(),
            })?;
        if !rule_routes_to(rule, stable) {
            return Err(MeshError::RuleNotOnService {
                http_route: http_route.to_owned(),
                rule: label(index, rule.name.as_deref()),
                service: stable.service.to_owned(),
            });
        }
        return Ok((index, rule));
    }
    let routing: Vec<_> = rules
        .iter()
        .enumerate()
        .filter(|(_, rule)| rule_routes_to(rule, stable))
        .collect();
    match routing.as_slice() {
        [one] => Ok(*one),
        [] => Err(MeshError::NoRule {
            http_route: http_route.to_owned(),
            service: stable.service.to_owned(),
        }),
        several => Err(MeshError::SeveralRules {
            http_route: http_route.to_owned(),
            service: stable.service.to_owned(),
            rules: several
                .iter()
                .map(|(index, rule)| label(*index, rule.name.as_deref()))
                .collect(),
        }),
    }
}

/// How a message names a backendRef: `Service "x"`, or its kind and namespace.
fn describe(backend: &HttpRouteRulesBackendRefs) -> String {
    let kind = backend.kind.as_deref().unwrap_or("Service");
    match backend.namespace.as_deref() {
        Some(namespace) => format!("{kind} {:?} in namespace {namespace:?}", backend.name),
        None => format!("{kind} {:?}", backend.name),
    }
}

/// Gateway API's weights as percentages: those weir writes sum to 100. A missing weight
/// is 1. One side at 0 and the other positive is all or nothing whatever the number
/// (the stable backend alone at the default weight 1 is 100%). Anything else is
/// reported, not guessed: the user has to say what they meant.
fn live_traffic(
    http_route: &str,
    rule: &str,
    stable: &ManagedDestination,
    canary: Option<&ManagedDestination>,
) -> Result<Traffic, MeshError> {
    let weight = |d: &ManagedDestination| i64::from(d.weight.unwrap_or(1));
    let stable_weight = weight(stable);
    let canary_weight = canary.map_or(0, weight);
    match (stable_weight, canary_weight) {
        (s, c) if s + c == 100 => {
            let (Ok(stable), Ok(canary)) = (u8::try_from(s), u8::try_from(c)) else {
                unreachable!("two weights ≥ 0 summing to 100 each fit in a u8");
            };
            Ok(Traffic { stable, canary })
        }
        (s, 0) if s > 0 => Ok(Traffic {
            stable: 100,
            canary: 0,
        }),
        (0, c) if c > 0 => Ok(Traffic {
            stable: 0,
            canary: 100,
        }),
        (stable_weight, canary_weight) => Err(MeshError::BackendWeightsNotHundred {
            http_route: http_route.to_owned(),
            rule: rule.to_owned(),
            stable: stable_weight,
            canary: canary_weight,
        }),
    }
}
