//! What can be wrong with the user's VirtualService and DestinationRule, each with the fix.

use thiserror::Error;

use crate::plan::Traffic;
use crate::spec::{SplitServices, keys};

/// Why weir cannot manage a Service's traffic. Every message names the objects involved
/// and says what to change; the controller reports it as `Misconfigured` and changes no
/// traffic.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MeshError {
    #[error(
        "no VirtualService in namespace {namespace:?} has an HTTP route to Service \
         {service:?}; create one, or set {key} to the VirtualService that routes to it",
        key = keys::VIRTUAL_SERVICE
    )]
    NoVirtualService { namespace: String, service: String },

    #[error(
        "several VirtualServices have an HTTP route to Service {service:?} ({}); set {key} \
         to the one weir should edit",
        quoted(names),
        key = keys::VIRTUAL_SERVICE
    )]
    SeveralVirtualServices { service: String, names: Vec<String> },

    #[error(
        "VirtualService {name:?} named by {key} does not exist in namespace {namespace:?} \
         (VirtualServices: {}); create it or fix {key}",
        quoted(available),
        key = keys::VIRTUAL_SERVICE
    )]
    VirtualServiceNotFound {
        name: String,
        namespace: String,
        available: Vec<String>,
    },

    #[error(
        "VirtualService {virtual_service:?} has no HTTP route named {route:?} (routes: {}); \
         set {key} to one of them",
        quoted(available),
        key = keys::ROUTE
    )]
    RouteNotFound {
        virtual_service: String,
        route: String,
        available: Vec<String>,
    },

    #[error(
        "VirtualService {virtual_service:?} has several HTTP routes named {route:?}; give \
         them distinct names and set {key} to the one weir should manage",
        key = keys::ROUTE
    )]
    DuplicateRouteName {
        virtual_service: String,
        route: String,
    },

    #[error(
        "VirtualService {virtual_service:?} has no HTTP route with a destination on Service \
         {service:?}; add one, or set {key} to the VirtualService that routes to it",
        key = keys::VIRTUAL_SERVICE
    )]
    NoRoute {
        virtual_service: String,
        service: String,
    },

    #[error(
        "route {route} of VirtualService {virtual_service:?} has no destination on Service \
         {service:?}; set {key} to the route that sends traffic to it",
        key = keys::ROUTE
    )]
    RouteNotOnService {
        virtual_service: String,
        route: String,
        service: String,
    },

    #[error(
        "VirtualService {virtual_service:?} has several HTTP routes with a destination on \
         Service {service:?} ({}); name the one weir should manage and set {key} to its name",
        routes.join(", "),
        key = keys::ROUTE
    )]
    SeveralRoutes {
        virtual_service: String,
        service: String,
        routes: Vec<String>,
    },

    #[error(
        "route {route} of VirtualService {virtual_service:?} also sends traffic to host \
         {host:?}, which is not Service {service:?}; weir only manages a route whose \
         destinations are this Service's stable and canary subsets, so move that destination \
         to another route"
    )]
    ForeignDestination {
        virtual_service: String,
        route: String,
        host: String,
        service: String,
    },

    #[error(
        "route {route} of VirtualService {virtual_service:?} has a destination on this \
         Service {}; weir only manages a route whose destinations are the stable subset \
         {stable:?} and the canary subset {canary:?}: set its subset to {stable:?}, or set \
         {stable_key} and {canary_key} to the subsets you use",
        match subset { Some(subset) => format!("with subset {subset:?}"), None => "without a subset".to_owned() },
        stable_key = keys::STABLE_SUBSET,
        canary_key = keys::CANARY_SUBSET
    )]
    UnmanagedDestination {
        virtual_service: String,
        route: String,
        subset: Option<String>,
        stable: String,
        canary: String,
    },

    #[error(
        "route {route} of VirtualService {virtual_service:?} has more than one destination \
         with {destination}; keep one"
    )]
    DuplicateDestination {
        virtual_service: String,
        route: String,
        /// `subset "canary"` or `host "shop-canary"`.
        destination: String,
    },

    #[error(
        "route {route} of VirtualService {virtual_service:?} also sends traffic to host \
         {host:?}, which is neither the stable Service {stable:?} nor the canary Service \
         {canary:?}; weir only manages a route whose destinations are those two, so move \
         that destination to another route, or fix {stable_key} and {canary_key}",
        stable = split.stable,
        canary = split.canary,
        stable_key = keys::STABLE_SERVICE,
        canary_key = keys::CANARY_SERVICE
    )]
    ForeignHost {
        virtual_service: String,
        route: String,
        host: String,
        /// Boxed: the error stays as small as the others.
        split: Box<SplitServices>,
    },

    #[error(
        "route {route} of VirtualService {virtual_service:?} sends traffic to host {host:?} \
         with subset {subset:?}, but in a host-level split ({stable_key} and {canary_key}) \
         each Service selects one version by itself: remove the subset, or remove the two \
         annotations to split by subsets",
        stable_key = keys::STABLE_SERVICE,
        canary_key = keys::CANARY_SERVICE
    )]
    SubsetInHostSplit {
        virtual_service: String,
        route: String,
        host: String,
        subset: String,
    },

    #[error(
        "route {route} of VirtualService {virtual_service:?} has no destination on the \
         stable Service {service:?}; add one, or fix {key}",
        key = keys::STABLE_SERVICE
    )]
    NoStableHost {
        virtual_service: String,
        route: String,
        service: String,
    },

    #[error(
        "Service {name:?} named by {key} does not exist in namespace {namespace:?}; create \
         it with the selector of the opted-in Service plus the version label, or fix {key}"
    )]
    SplitServiceNotFound {
        name: String,
        key: &'static str,
        namespace: String,
    },

    #[error(
        "Service {name:?} named by {key} has no selector, so no version label weir could \
         point at a version; give it the selector of the opted-in Service plus the version \
         label"
    )]
    SplitServiceWithoutSelector { name: String, key: &'static str },

    #[error(
        "route {route} of VirtualService {virtual_service:?} has no destination with the \
         stable subset {subset:?}; add one (host {service:?}, subset {subset:?}), or set {key}",
        key = keys::STABLE_SUBSET
    )]
    NoStableDestination {
        virtual_service: String,
        route: String,
        service: String,
        subset: String,
    },

    #[error(
        "route {route} of VirtualService {virtual_service:?} has weights stable {stable} and \
         canary {canary}{}; weir only changes weights that are 0 to 100 and sum to 100: fix \
         them (for example stable 100, canary 0)",
        if *canary_present { "" } else { " (no canary destination)" }
    )]
    WeightsNotHundred {
        virtual_service: String,
        route: String,
        stable: i64,
        canary: i64,
        canary_present: bool,
    },

    #[error(
        "no DestinationRule in namespace {namespace:?} has host {service:?}; create one with \
         the stable and canary subsets, or set {key} to the one that has them",
        key = keys::DESTINATION_RULE
    )]
    NoDestinationRule { namespace: String, service: String },

    #[error(
        "several DestinationRules have host {service:?} ({}); set {key} to the one holding \
         the stable and canary subsets",
        quoted(names),
        key = keys::DESTINATION_RULE
    )]
    SeveralDestinationRules { service: String, names: Vec<String> },

    #[error(
        "DestinationRule {name:?} named by {key} does not exist in namespace {namespace:?} \
         (DestinationRules: {}); create it or fix {key}",
        quoted(available),
        key = keys::DESTINATION_RULE
    )]
    DestinationRuleNotFound {
        name: String,
        namespace: String,
        available: Vec<String>,
    },

    #[error(
        "DestinationRule {name:?} is for host {host:?}, not Service {service:?}, so its \
         subsets do not apply to the route; set {key} to the DestinationRule of {service:?}",
        key = keys::DESTINATION_RULE
    )]
    DestinationRuleForOtherHost {
        name: String,
        host: String,
        service: String,
    },

    #[error(
        "DestinationRule {destination_rule:?} has no subset named {subset:?} (subsets: {}); \
         add it, or set {key} to one of them",
        quoted(available)
    )]
    SubsetNotFound {
        destination_rule: String,
        subset: String,
        /// The annotation that names this subset.
        key: &'static str,
        available: Vec<String>,
    },

    #[error(
        "DestinationRule {destination_rule:?} has more than one subset named {subset:?}; \
         keep one"
    )]
    DuplicateSubset {
        destination_rule: String,
        subset: String,
    },

    #[error(
        "the stable and canary subsets are both {subset:?}; set {stable_key} and {canary_key} \
         to two different subsets",
        stable_key = keys::STABLE_SUBSET,
        canary_key = keys::CANARY_SUBSET
    )]
    SameSubset { subset: String },

    #[error(
        "no VirtualService or HTTPRoute in namespace {namespace:?} routes to Service \
         {service:?}; create one, or set {vs_key} or {hr_key} to the one that routes to it",
        vs_key = keys::VIRTUAL_SERVICE,
        hr_key = keys::HTTP_ROUTE
    )]
    NoRouteToService { namespace: String, service: String },

    #[error(
        "several objects route to Service {service:?} ({}); set {vs_key} or {hr_key} to the \
         one weir should edit",
        names.join(", "),
        vs_key = keys::VIRTUAL_SERVICE,
        hr_key = keys::HTTP_ROUTE
    )]
    SeveralRoutingObjects { service: String, names: Vec<String> },

    #[error(
        "HTTPRoute {name:?} named by {key} does not exist in namespace {namespace:?} \
         (HTTPRoutes: {}); create it or fix {key}",
        quoted(available),
        key = keys::HTTP_ROUTE
    )]
    HttpRouteNotFound {
        name: String,
        namespace: String,
        available: Vec<String>,
    },

    #[error(
        "HTTPRoute {http_route:?} has no rule named {rule:?} (named rules: {}); set {key} to \
         one of them",
        quoted(available),
        key = keys::ROUTE
    )]
    RuleNotFound {
        http_route: String,
        rule: String,
        available: Vec<String>,
    },

    #[error(
        "HTTPRoute {http_route:?} has no rule with a backendRef on Service {service:?}; add \
         one, or set {key} to the HTTPRoute that routes to it",
        key = keys::HTTP_ROUTE
    )]
    NoRule { http_route: String, service: String },

    #[error(
        "rule {rule} of HTTPRoute {http_route:?} has no backendRef on Service {service:?}; \
         set {key} to the rule that sends traffic to it",
        key = keys::ROUTE
    )]
    RuleNotOnService {
        http_route: String,
        rule: String,
        service: String,
    },

    #[error(
        "HTTPRoute {http_route:?} has several rules with a backendRef on Service \
         {service:?} ({}); name the one weir should manage and set {key} to its name",
        rules.join(", "),
        key = keys::ROUTE
    )]
    SeveralRules {
        http_route: String,
        service: String,
        rules: Vec<String>,
    },

    #[error(
        "rule {rule} of HTTPRoute {http_route:?} also sends traffic to {backend}, which is \
         neither the stable Service {stable:?} nor the canary Service {canary:?}; weir only \
         manages a rule whose backendRefs are those two, so move that backendRef to another \
         rule, or fix {stable_key} and {canary_key}",
        stable = split.stable,
        canary = split.canary,
        stable_key = keys::STABLE_SERVICE,
        canary_key = keys::CANARY_SERVICE
    )]
    ForeignBackend {
        http_route: String,
        rule: String,
        backend: String,
        split: Box<SplitServices>,
    },

    #[error(
        "rule {rule} of HTTPRoute {http_route:?} has more than one backendRef on Service \
         {service:?}; keep one"
    )]
    DuplicateBackend {
        http_route: String,
        rule: String,
        service: String,
    },

    #[error(
        "rule {rule} of HTTPRoute {http_route:?} has weights stable {stable} and canary \
         {canary} (a missing weight is 1); weir reads and writes them as percentages: make \
         them sum to 100 (for example stable 100, canary 0)"
    )]
    BackendWeightsNotHundred {
        http_route: String,
        rule: String,
        stable: i64,
        canary: i64,
    },

    /// A bug in the caller, not a user error: weir never writes such weights.
    #[error(
        "refusing to write weights stable {} and canary {}: they must be 0 to 100 and sum \
         to 100",
        .0.stable,
        .0.canary
    )]
    InvalidTraffic(Traffic),
}

/// `"a", "b"`, or `none` for an empty list.
fn quoted(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names
        .iter()
        .map(|name| format!("{name:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
