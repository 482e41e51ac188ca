//! From measured values to a [`Verdict`]. Pure.
//!
//! The rules, in the order they apply:
//!
//! 1. A canary value is *sound* when its query answered, returned at most one series for
//!    the canary, and the value is a finite number. A gate can only be met or missed on
//!    sound values, and only once the canary served at least `min-requests` requests
//!    (themselves a sound value).
//! 2. **Fail** when any gate is missed on sound values with enough requests, even if
//!    another metric could not be measured: the evidence against the canary stands on
//!    its own. `failed` names every missed gate.
//! 3. **Inconclusive** when anything needed was not soundly measured: a query error or
//!    timeout, no canary series (or zero canary requests), fewer requests than
//!    `min-requests`, NaN or ±Inf, or several series for one version. The reason is the
//!    first problem found: failed queries and malformed results first, as they explain
//!    whatever else is missing, then values in gate order (request count, error rate,
//!    latency). The detail lists every problem.
//! 4. **Pass** otherwise, which is only when every gate was soundly measured and met.
//!
//! Bounds are inclusive: an error rate equal to `max-error-rate` or a latency equal to
//! `max-latency` meets its gate.
//!
//! Stable values are measured for comparison only and never gate in this version; a
//! stable value that is missing or not a number is shown as absent. Several series for
//! the stable version still make the check inconclusive: the query's shape is wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::gates::Gates;
use crate::promql::VERSION_LABEL;
use crate::verdict::{Bound, InconclusiveReason, Measurement, Verdict};

/// Metric name of the canary request count.
pub const REQUEST_COUNT: &str = "request-count";
/// Metric name of the 5xx share, a fraction.
pub const ERROR_RATE: &str = "error-rate";
/// Metric name of the latency at the gate's quantile, in milliseconds.
pub const LATENCY: &str = "latency";

/// One series of an instant query's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// Its value at the evaluation time; may be NaN or ±Inf.
    pub value: f64,
}

impl Series {
    /// A series whose only label is `destination_version`.
    pub fn of_version(version: &str, value: f64) -> Series {
        Series {
            labels: BTreeMap::from([(VERSION_LABEL.to_string(), version.to_string())]),
            value,
        }
    }

    fn version(&self) -> Option<&str> {
        self.labels.get(VERSION_LABEL).map(String::as_str)
    }
}

/// Why a query has no result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryFailure {
    /// Prometheus could not be asked, or answered with an error.
    Error(String),
    /// The query did not answer within its timeout.
    Timeout(String),
}

/// What one query returned: its series, or why there are none.
pub type QueryOutcome = Result<Vec<Series>, QueryFailure>;

/// The results of the three built-in queries of one check.
#[derive(Clone, Debug, PartialEq)]
pub struct Observations {
    /// Requests per version ([`crate::promql::request_count`]).
    pub request_count: QueryOutcome,
    /// Server errors per version ([`crate::promql::error_count`]).
    pub error_count: QueryOutcome,
    /// Latency in milliseconds per version ([`crate::promql::latency`]).
    pub latency: QueryOutcome,
}

/// Something that keeps a value from being judged.
#[derive(Clone, Debug, PartialEq)]
struct Problem {
    reason: InconclusiveReason,
    metric: String,
    detail: String,
}

/// One query's values for the canary and the stable version, as returned (may be NaN).
#[derive(Clone, Copy, Debug, Default)]
struct PerVersion {
    canary: Option<f64>,
    stable: Option<f64>,
}

/// Judges the canary against `gates` from `observations`, comparing it with `stable`.
pub fn judge(observations: &Observations, canary: &str, stable: &str, gates: &Gates) -> Verdict {
    let mut problems = Vec::new();
    // Query failures first: they explain everything else that is missing.
    let mut take = |outcome: &QueryOutcome, metric: &str| {
        per_version(outcome, metric, canary, stable)
            .map_err(|problem| problems.push(problem))
            .ok()
    };
    let counts = take(&observations.request_count, REQUEST_COUNT);
    let errors = take(&observations.error_count, ERROR_RATE);
    let latencies = take(&observations.latency, LATENCY);
    let mut problem = |reason, metric: &str, detail: String| {
        problems.push(Problem {
            reason,
            metric: metric.to_string(),
            detail,
        })
    };

    let min_requests = gates.min_requests as f64;
    let canary_requests = counts.and_then(|c| match c.canary {
        None => {
            problem(
                InconclusiveReason::NoData,
                REQUEST_COUNT,
                format!("no series for canary {canary} in the window"),
            );
            None
        }
        Some(v) if !v.is_finite() => {
            problem(
                InconclusiveReason::NotANumber,
                REQUEST_COUNT,
                format!("canary {canary} measured {v}"),
            );
            None
        }
        Some(v) if v <= 0.0 => {
            problem(
                InconclusiveReason::NoData,
                REQUEST_COUNT,
                format!("canary {canary} served no requests in the window"),
            );
            Some(v)
        }
        Some(v) => {
            if v < min_requests {
                problem(
                    InconclusiveReason::TooFewRequests,
                    REQUEST_COUNT,
                    format!(
                        "canary {canary} served {v} requests, fewer than min-requests {}",
                        gates.min_requests
                    ),
                );
            }
            Some(v)
        }
    });
    let enough_requests = canary_requests.is_some_and(|v| v > 0.0 && v >= min_requests);

    // A version the error query has no series for served no errors: it was evaluated at
    // the same instant over the same data as the request count.
    let canary_error_rate = errors.and_then(|e| {
        let errors = e.canary.unwrap_or(0.0);
        if !errors.is_finite() {
            problem(
                InconclusiveReason::NotANumber,
                ERROR_RATE,
                format!("canary {canary} error count measured {errors}"),
            );
            return None;
        }
        // Without a positive request count the problem is already recorded above.
        canary_requests
            .filter(|total| *total > 0.0)
            .map(|total| errors / total)
    });
    let stable_error_rate = match (errors, counts) {
        (Some(e), Some(c)) => share(e.stable.unwrap_or(0.0), c.stable),
        _ => None,
    };

    let canary_latency = latencies.and_then(|l| match l.canary {
        None => {
            problem(
                InconclusiveReason::NoData,
                LATENCY,
                format!("no histogram series for canary {canary} in the window"),
            );
            None
        }
        Some(v) if !v.is_finite() => {
            problem(
                InconclusiveReason::NotANumber,
                LATENCY,
                format!("canary {canary} measured {v}"),
            );
            None
        }
        value => value,
    });

    // The spec parser rejects it; should one slip through, nothing is judged against it.
    if gates.max_error_rate.is_nan() {
        problem(
            InconclusiveReason::NotANumber,
            ERROR_RATE,
            "the bound max-error-rate is NaN".to_string(),
        );
    }

    let max_latency = millis(gates.max_latency);
    let measurements = vec![
        Measurement {
            metric: REQUEST_COUNT.to_string(),
            canary: canary_requests,
            stable: counts.and_then(|c| finite(c.stable)),
            bound: Some(Bound::Min(min_requests)),
        },
        Measurement {
            metric: ERROR_RATE.to_string(),
            canary: canary_error_rate,
            stable: stable_error_rate,
            bound: Some(Bound::Max(gates.max_error_rate)),
        },
        Measurement {
            metric: LATENCY.to_string(),
            canary: canary_latency,
            stable: latencies.and_then(|l| finite(l.stable)),
            bound: Some(Bound::Max(max_latency)),
        },
    ];

    let failed: Vec<String> = [
        (ERROR_RATE, canary_error_rate, gates.max_error_rate),
        (LATENCY, canary_latency, max_latency),
    ]
    .into_iter()
    .filter(|(_, value, max)| enough_requests && value.is_some_and(|v| v > *max))
    .map(|(metric, _, _)| metric.to_string())
    .collect();

    if !failed.is_empty() {
        Verdict::Fail {
            failed,
            measurements,
        }
    } else if let Some(first) = problems.first() {
        let detail = describe(&problems);
        Verdict::Inconclusive {
            reason: first.reason,
            detail,
            measurements,
        }
    } else {
        Verdict::Pass { measurements }
    }
}

/// The canary's and the stable version's value in one query's result. A query that
/// failed, or returned several series for either version, is a problem: picking one of
/// several series would judge on a guess.
fn per_version(
    outcome: &QueryOutcome,
    metric: &str,
    canary: &str,
    stable: &str,
) -> Result<PerVersion, Problem> {
    let series = match outcome {
        Ok(series) => series,
        Err(QueryFailure::Error(detail)) => {
            return Err(Problem {
                reason: InconclusiveReason::QueryError,
                metric: metric.to_string(),
                detail: detail.clone(),
            });
        }
        Err(QueryFailure::Timeout(detail)) => {
            return Err(Problem {
                reason: InconclusiveReason::QueryTimeout,
                metric: metric.to_string(),
                detail: detail.clone(),
            });
        }
    };
    let value_of = |version: &str, role: &str| {
        let matching: Vec<&Series> = series
            .iter()
            .filter(|s| s.version() == Some(version))
            .collect();
        match matching.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.value)),
            several => Err(Problem {
                reason: InconclusiveReason::SeveralSeries,
                metric: metric.to_string(),
                detail: format!(
                    "{} series for {role} {version} where one was expected: {}",
                    several.len(),
                    several
                        .iter()
                        .map(|s| format!("{:?}", s.labels))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    };
    Ok(PerVersion {
        canary: value_of(canary, "canary")?,
        stable: value_of(stable, "stable")?,
    })
}

/// Every problem as `metric: detail`, `; `-separated, with the metrics that share a
/// detail (one unreachable Prometheus fails all three queries) named together.
fn describe(problems: &[Problem]) -> String {
    let mut details: Vec<(Vec<&str>, &str)> = Vec::new();
    for problem in problems {
        match details
            .iter_mut()
            .find(|(_, detail)| *detail == problem.detail)
        {
            Some((metrics, _)) => metrics.push(&problem.metric),
            None => details.push((vec![&problem.metric], &problem.detail)),
        }
    }
    details
        .iter()
        .map(|(metrics, detail)| format!("{}: {detail}", metrics.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn finite(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite())
}

fn share(errors: f64, requests: Option<f64>) -> Option<f64> {
    let requests = finite(requests).filter(|r| *r > 0.0)?;
    finite(Some(errors / requests))
}

/// A duration in milliseconds, rounded once.
fn millis(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

#[cfg(test)]
mod tests;
