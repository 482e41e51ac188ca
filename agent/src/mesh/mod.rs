//! The user's VirtualService and DestinationRule: finding the route and subsets weir
//! manages, and the only place that builds the JSON Patches weir writes to them. Pure.
//!
//! The controller lists both kinds in the namespace, calls [`resolve`] to get a
//! [`Target`] (which also carries the live [`Traffic`](crate::plan::Traffic) and
//! [`Subsets`](crate::plan::Subsets) for the planner), and turns each planned action into
//! a patch with [`weight_patch`] or [`subset_version_patch`]. Each patch begins with
//! `test` operations, so if someone reordered routes or subsets since the read, the
//! apiserver rejects it and the controller re-reads and re-plans.

mod error;
pub mod gateway;
mod gateway_target;
pub mod istio;
mod patch;
mod target;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod host_split_tests;
#[cfg(test)]
mod http_route_tests;

pub use error::MeshError;
pub use gateway::HttpRoute;
pub use gateway_target::services_of as http_route_services;
pub use istio::{DestinationRule, VirtualService};
pub use patch::{SelectorObject, selector_patch, weight_patch};
pub use target::{
    ManagedDestination, ManagedRoute, ManagedService, ManagedSubset, ObjectVersion, RouteKind,
    Routing, Selectors, Target, host_matches, resolve, routes_to,
};
