//! weir's SLO gates.
//!
//! The crate has a pure half and a thin I/O half:
//! - [`verdict`]: what a check concluded and what it measured (plain data);
//! - [`gates`]: the built-in gates a rollout is held to (plain data);
//! - [`promql`]: the queries of the built-in gates, with every outside value escaped;
//! - [`custom`]: custom metric templates from a ConfigMap, parsed and rendered;
//! - [`judge`]: measured values to a [`Verdict`], without any I/O;
//! - [`prometheus`]: asks Prometheus or Grafana Mimir, then the judge.

pub mod batch;
pub mod custom;
pub mod gates;
pub mod judge;
pub mod prometheus;
pub mod promql;
pub mod sequential;
pub mod verdict;

pub use custom::{
    Limit, MetricTemplate, MetricsConfigError, TemplateBound, TemplateProblem, parse_metrics,
};
pub use gates::{Gates, InvalidResponseCodes, Reporter, ResponseCodes, Rule, SlowShare};
pub use prometheus::{
    BasicAuth, CheckReport, CheckRequest, ConfigError, PrometheusApi, PrometheusConfig, QueryError,
    RanQuery,
};
pub use verdict::{
    Bound, Evidence, InconclusiveReason, Measurement, Verdict, format_evidence, format_value,
};
