//! End-to-end tests of the `weir` agent on the test bed: a real kube-apiserver with
//! Istio's CRDs, the traffic simulator standing in for the data plane, Prometheus
//! scraping it, and the `weir` binary as a process.

mod support;

mod bad_inputs;
mod cli;
mod controls;
mod dashboard;
mod demo;
mod faults;
mod gitops;
mod host_split;
mod http_route;
mod install;
mod leader;
mod mesh_versions;
mod misconfigured;
mod notify;
mod release;
mod scale_down;
