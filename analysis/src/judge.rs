//! From measured values to a [`Verdict`]. Pure.
//!
//! The rules, in the order they apply:
//!
//! 1. A canary value is *sound* when its query answered, returned at most one series for
//!    the canary, and the value is a finite number. A gate can only be met or missed on
//!    sound values, and only once the canary served at least `min-requests` requests
//!    (themselves a sound value).
//! 2. **Fail** when any gate (built-in or custom) is missed on sound values with enough
//!    requests, even if
//!    another metric could not be measured: the evidence against the canary stands on
//!    its own. `failed` names every missed gate.
//! 3. **Inconclusive** when anything needed was not soundly measured: a query error or
//!    timeout, no canary series (or zero canary requests), fewer requests than
//!    `min-requests`, NaN or ±Inf, or several series for one version; or a query that
//!    was refused, or a gate that cannot be measured as configured (misconfigured). The
//!    reason is the first problem found: failed queries and malformed results first, as
//!    they explain whatever else is missing, then values in gate order (request count,
//!    error rate, latency, slow share, then custom metrics in name order). The detail
//!    lists every problem.
//! 4. **Pass** otherwise, which is only when every gate was soundly measured and met.
//!
//! Bounds are inclusive: an error rate equal to `max-error-rate` or a latency equal to
//! `max-latency` meets its gate.
//!
//! Stable values are measured for comparison, and gate only through a custom metric's
//! bound relative to stable (`max: stable * 1.2`): then a missing or non-finite stable
//! value makes the check inconclusive, as the bound is unknown. Otherwise a stable value
//! that is missing or not a number is shown as absent. Several series for the stable
//! version still make the check inconclusive: the query's shape is wrong.
//!
//! The slow-share gate reads the latency histogram's buckets: the share of requests
//! above the smallest bucket bound at or above the threshold, `1 - bucket / +Inf
//! bucket`, for canary and stable at that same bound. A threshold above every finite
//! bound is a misconfiguration. Custom metrics expect exactly one series per version.

use std::collections::BTreeMap;
use std::time::Duration;

mod evidence;

pub use evidence::{ERRORS_VS_STABLE, Judgement, SLOWER_VS_STABLE_SUFFIX, Standing, weigh};

use crate::custom::TemplateBound;
use crate::gates::{Gates, SlowShare};
use crate::promql::VERSION_LABEL;
use crate::verdict::{Bound, InconclusiveReason, Measurement, Verdict};

/// Metric name of the canary request count.
pub const REQUEST_COUNT: &str = "request-count";
/// Metric name of the 5xx share, a fraction.
pub const ERROR_RATE: &str = "error-rate";
/// Metric name of the latency at the gate's quantile, in milliseconds.
pub const LATENCY: &str = "latency";
/// The start of the slow-share gate's metric name; [`slow_share_metric`] completes it.
pub const SLOW_SHARE_PREFIX: &str = "slower-than-";

/// The slow-share gate's metric name, naming the bucket bound it was measured at:
/// `slower-than-500ms`.
pub fn slow_share_metric(bound_ms: f64) -> String {
    format!("{SLOW_SHARE_PREFIX}{bound_ms}ms")
}

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
    /// Prometheus or a proxy refused the query: a configuration to fix.
    Refused(String),
}

/// What one query returned: its series, or why there are none.
pub type QueryOutcome = Result<Vec<Series>, QueryFailure>;

/// The results of the queries of one check.
#[derive(Clone, Debug, PartialEq)]
pub struct Observations {
    /// Requests per version ([`crate::promql::request_count`]).
    pub request_count: QueryOutcome,
    /// Error responses per version ([`crate::promql::error_count`]).
    pub error_count: QueryOutcome,
    /// Latency in milliseconds per version ([`crate::promql::latency`]); read by the
    /// threshold rule only.
    pub latency: QueryOutcome,
    /// Requests per latency bucket per version ([`crate::promql::bucket_counts`]): always
    /// under the sequential rule, and under the threshold rule when the slow-share gate
    /// is on.
    pub buckets: Option<QueryOutcome>,
    /// Each custom metric's results.
    pub custom: Vec<CustomObservation>,
}

/// One custom metric's results: its template evaluated for each version.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomObservation {
    /// The metric's name.
    pub name: String,
    /// Its bound.
    pub bound: TemplateBound,
    /// The template evaluated for the canary.
    pub canary: QueryOutcome,
    /// The template evaluated for the stable version.
    pub stable: QueryOutcome,
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
    // Query failures and malformed results first: they explain everything else that is
    // missing. Then problems with the values, in gate order.
    let mut shape = Vec::new();
    let mut values = Vec::new();
    let mut take = |outcome: &QueryOutcome, metric: &str| {
        per_version(outcome, metric, canary, stable)
            .map_err(|problem| shape.push(problem))
            .ok()
    };
    let counts = take(&observations.request_count, REQUEST_COUNT);
    let errors = take(&observations.error_count, ERROR_RATE);
    let latencies = take(&observations.latency, LATENCY);
    let mut problem = |reason, metric: &str, detail: String| {
        values.push(Problem {
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
    let mut measurements = vec![
        Measurement {
            metric: REQUEST_COUNT.to_string(),
            canary: canary_requests,
            stable: counts.and_then(|c| finite(c.stable)),
            bound: Some(Bound::Min(min_requests)),
            evidence: None,
        },
        Measurement {
            metric: ERROR_RATE.to_string(),
            canary: canary_error_rate,
            stable: stable_error_rate,
            bound: Some(Bound::Max(gates.max_error_rate)),
            evidence: None,
        },
        Measurement {
            metric: LATENCY.to_string(),
            canary: canary_latency,
            stable: latencies.and_then(|l| finite(l.stable)),
            bound: Some(Bound::Max(max_latency)),
            evidence: None,
        },
    ];

    let mut failed: Vec<String> = [
        (ERROR_RATE, canary_error_rate, gates.max_error_rate),
        (LATENCY, canary_latency, max_latency),
    ]
    .into_iter()
    .filter(|(_, value, max)| enough_requests && value.is_some_and(|v| v > *max))
    .map(|(metric, _, _)| metric.to_string())
    .collect();

    let mut later = Vec::new();
    if let (Some(gate), Some(outcome)) = (&gates.max_slow_share, &observations.buckets) {
        let measurement = slow_share(outcome, gate, canary, stable, &mut shape, &mut later);
        measurements.push(measurement);
    }
    for custom in &observations.custom {
        measurements.push(custom_metric(
            custom, canary, stable, &mut shape, &mut later,
        ));
    }
    // Every gate after the first three is held to its bound the same way.
    for m in &measurements[3..] {
        let missed = match (m.canary, &m.bound) {
            (Some(v), Some(Bound::Max(max))) => v > *max,
            (Some(v), Some(Bound::Min(min))) => v < *min,
            _ => false,
        };
        if enough_requests && missed {
            failed.push(m.metric.clone());
        }
    }

    let problems: Vec<Problem> = shape.into_iter().chain(values).chain(later).collect();
    if !failed.is_empty() {
        Verdict::Fail {
            failed,
            measurements,
            conclusive: false,
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

/// The problem a failed query is.
fn failure(failure: &QueryFailure, metric: &str) -> Problem {
    let (reason, detail) = match failure {
        QueryFailure::Error(detail) => (InconclusiveReason::QueryError, detail),
        QueryFailure::Timeout(detail) => (InconclusiveReason::QueryTimeout, detail),
        QueryFailure::Refused(detail) => (InconclusiveReason::Misconfigured, detail),
    };
    Problem {
        reason,
        metric: metric.to_string(),
        detail: detail.clone(),
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
    let series = outcome.as_ref().map_err(|f| failure(f, metric))?;
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

/// The slow-share gate's measurement, from the bucket counts of both versions.
fn slow_share(
    outcome: &QueryOutcome,
    gate: &SlowShare,
    canary: &str,
    stable: &str,
    shape: &mut Vec<Problem>,
    values: &mut Vec<Problem>,
) -> Measurement {
    let threshold = millis(gate.threshold);
    let mut measurement = Measurement {
        metric: slow_share_metric(threshold),
        canary: None,
        stable: None,
        bound: Some(Bound::Max(gate.max_share)),
        evidence: None,
    };
    let problem = |reason, metric: &str, detail: String| Problem {
        reason,
        metric: metric.to_string(),
        detail,
    };
    let series = match outcome {
        Ok(series) => series,
        Err(f) => {
            shape.push(failure(f, &measurement.metric));
            return measurement;
        }
    };
    let (Ok(canary_buckets), Ok(stable_buckets)) =
        (buckets(series, canary), buckets(series, stable))
    else {
        shape.push(problem(
            InconclusiveReason::NotANumber,
            &measurement.metric,
            "a latency bucket series has no numeric `le` label".to_string(),
        ));
        return measurement;
    };
    if canary_buckets.is_empty() {
        values.push(problem(
            InconclusiveReason::NoData,
            &measurement.metric,
            format!("no latency histogram buckets for canary {canary} in the window"),
        ));
        return measurement;
    }
    let largest = canary_buckets
        .iter()
        .rev()
        .map(|(le, _)| *le)
        .find(|le| le.is_finite());
    let Some(bound) = canary_buckets
        .iter()
        .map(|(le, _)| *le)
        .find(|le| le.is_finite() && *le >= threshold)
    else {
        let detail = match largest {
            Some(largest) => format!(
                "the threshold {threshold}ms is above the largest latency bucket bound \
                 {largest}ms: choose a threshold of at most {largest}ms"
            ),
            None => "the latency histogram has no finite bucket bound".to_string(),
        };
        values.push(problem(
            InconclusiveReason::Misconfigured,
            &measurement.metric,
            detail,
        ));
        return measurement;
    };
    measurement.metric = slow_share_metric(bound);
    let share = |buckets: &[(f64, f64)]| {
        let at = |le: f64| buckets.iter().find(|(b, _)| *b == le).map(|(_, n)| *n);
        let (within, total) = (at(bound)?, at(f64::INFINITY)?);
        if total.is_nan() || total <= 0.0 {
            return Some(f64::NAN);
        }
        // `(total - within) / total` rather than `1 - within / total`: exact whenever
        // the share is, so a share equal to the bound meets it.
        let share = (total - within) / total;
        // Rounding in the extrapolation can leave a bucket a hair above the total.
        Some(if share < 0.0 { 0.0 } else { share })
    };
    match share(&canary_buckets) {
        Some(v) if v.is_finite() => measurement.canary = Some(v),
        Some(v) => values.push(problem(
            InconclusiveReason::NotANumber,
            &measurement.metric,
            format!("canary {canary} measured {v} (no requests in the histogram?)"),
        )),
        None => values.push(problem(
            InconclusiveReason::NoData,
            &measurement.metric,
            format!("canary {canary} has no bucket at {bound}ms or no +Inf bucket"),
        )),
    }
    measurement.stable = finite(share(&stable_buckets));
    if gate.max_share.is_nan() {
        values.push(problem(
            InconclusiveReason::NotANumber,
            &measurement.metric,
            "the bound max-slow-share is NaN".to_string(),
        ));
    }
    measurement
}

/// `version`'s buckets as `(upper bound, count)`, ascending, buckets whose `le` reads as
/// the same number added together; `Err` when a bucket's `le` is not a number.
fn buckets(series: &[Series], version: &str) -> Result<Vec<(f64, f64)>, ()> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for s in series.iter().filter(|s| s.version() == Some(version)) {
        let le: f64 = s
            .labels
            .get("le")
            .and_then(|le| le.parse().ok())
            .filter(|le: &f64| !le.is_nan())
            .ok_or(())?;
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, n)) => *n += s.value,
            None => buckets.push((le, s.value)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(buckets)
}

/// A custom metric's measurement, with its bound resolved against the stable value.
fn custom_metric(
    custom: &CustomObservation,
    canary: &str,
    stable: &str,
    shape: &mut Vec<Problem>,
    values: &mut Vec<Problem>,
) -> Measurement {
    let metric = custom.name.as_str();
    let problem = |reason, detail: String| Problem {
        reason,
        metric: metric.to_string(),
        detail,
    };
    let mut one = |outcome: &QueryOutcome, role: &str, version: &str| match outcome {
        Err(f) => {
            shape.push(failure(f, metric));
            None
        }
        Ok(series) => match series.as_slice() {
            [] => Some(None),
            [one] => Some(Some(one.value)),
            several => {
                shape.push(problem(
                    InconclusiveReason::SeveralSeries,
                    format!(
                        "{} series for {role} {version} where one was expected: {}; \
                         aggregate the query, e.g. with sum(...)",
                        several.len(),
                        several
                            .iter()
                            .map(|s| format!("{:?}", s.labels))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
                None
            }
        },
    };
    let canary_value = one(&custom.canary, "canary", canary);
    let stable_value = one(&custom.stable, "stable", stable);

    let canary_value = canary_value.and_then(|v| match v {
        None => {
            values.push(problem(
                InconclusiveReason::NoData,
                format!("the query returned no series for canary {canary}"),
            ));
            None
        }
        Some(v) if !v.is_finite() => {
            values.push(problem(
                InconclusiveReason::NotANumber,
                format!("canary {canary} measured {v}"),
            ));
            None
        }
        v => v,
    });
    // A failed stable query is already a problem; only an answer can lack a value.
    let stable_answered = stable_value.is_some();
    let stable_value = stable_value.flatten();
    let bound = custom.bound.resolve(stable_value);
    if custom.bound.is_relative() && stable_value.is_some_and(|v| !v.is_finite()) {
        values.push(problem(
            InconclusiveReason::NotANumber,
            format!(
                "stable {stable} measured {}, and the bound is relative to it",
                stable_value.unwrap_or(f64::NAN)
            ),
        ));
    } else if bound.is_none() && stable_answered {
        values.push(problem(
            InconclusiveReason::NoData,
            format!(
                "the query returned no series for stable {stable}, and the bound is relative to it"
            ),
        ));
    }
    Measurement {
        metric: metric.to_string(),
        canary: canary_value,
        stable: finite(stable_value),
        bound,
        evidence: None,
    }
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
            // A custom metric's canary and stable queries often fail alike: named once.
            Some((metrics, _)) if metrics.contains(&problem.metric.as_str()) => {}
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
