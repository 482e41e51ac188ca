//! weir: unattended progressive delivery on Istio.
//!
//! A rollout flows through these modules, top to bottom:
//! - [`spec`]: Service annotations → a validated [`spec::RolloutSpec`] (pure);
//! - [`mesh`]: the user's VirtualService/DestinationRule → the managed route and
//!   subsets, and the JSON Patches that change them (pure);
//! - [`plan`]: (spec, observed state, verdict, now) → ordered actions (pure);
//! - [`controller`]: reads the cluster, calls the three above, performs the actions;
//! - [`notify`]: tells a team's webhook or Slack about the transitions it performed.
//!
//! [`cli`] is the `weir` command line; [`server`] the agent's admin endpoints.

pub mod cli;
pub mod controller;
pub mod mesh;
pub mod notify;
pub mod plan;
pub mod server;
pub mod spec;
