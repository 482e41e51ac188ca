//! Batched checks: every check due in one round is evaluated with a number of queries
//! that does not grow with the number of Services.
//!
//! A round groups its checks by window. Each check's window is [`Window::since`] its
//! step began, rounded by [`Window::grouped`] to the round's quantum: checks whose steps
//! began within the same quantum share a window, and so share its queries. Per window,
//! one query counts requests by Service, version and response code (each check reads its
//! request count, and its error count through its own error codes, from it), one counts
//! the latency buckets when a check needs them, and one per quantile computes the
//! threshold rule's latency. A round therefore runs at most
//! `2 + quantiles` queries per distinct window, whatever the number of Services; the
//! number of distinct windows is bounded by the longest step over the quantum. Custom
//! metrics are arbitrary PromQL: they stay two queries per metric per check, as in
//! [`PrometheusApi::check`], and a failing one concerns only its own Service.
//!
//! **Approximation.** A window is at most half a quantum longer or shorter than the
//! step: its start moves, its end is the round's instant. An agent that starts steps
//! when a round's verdict arrives starts them a few milliseconds after a round instant,
//! so their windows are whole quanta and the rounding moves them by those milliseconds
//! only (windows are whole seconds, as in a single check); a step that began between rounds (the first one, or one resumed) is measured
//! from at most half a quantum after, or before, its start.
//!
//! Everything else is as in a single check: the same judge, the same multi-series
//! detection (a Service's series are grouped by version, as a single check's are), the
//! same per-check inconclusive reasons (a query that fails makes the checks that read it
//! inconclusive with its error; the others are unaffected), and the same client, so
//! Mimir's tenant and credentials apply.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use jiff::Timestamp;
use tokio::time::Instant;

use crate::gates::{Reporter, Rule};
use crate::judge::{self, Observations, QueryOutcome, Series};
use crate::prometheus::{
    BUCKETS_QUERY, CheckReport, CheckRequest, PrometheusApi, RanQuery, conclude,
    custom_observations, custom_queries, not_run,
};
use crate::promql::{Fleet, SERVICE_LABEL, VERSION_LABEL, Window};

/// The metric name in [`RanQuery`] of a round's request count query, which holds both
/// the request and the error counts.
pub const REQUESTS_BY_CODE_QUERY: &str = "requests-by-code";

/// The checks of one round that share a window, and the queries they read.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The window, as [`Window::grouped`] rounded it.
    pub window: Window,
    /// The checks, as indices into the round's requests.
    pub members: Vec<usize>,
    /// Requests by Service, version and response code.
    pub requests_by_code: String,
    /// Latency buckets by Service, version and `le`, when a member needs them.
    pub buckets: Option<String>,
    /// Latency by Service and version, per quantile the threshold rule's members ask for
    /// (the quantile's bits, for an exact key).
    pub latency: BTreeMap<u64, String>,
}

/// How the checks of a round are grouped, and the PromQL each group runs. Pure.
///
/// Every request is evaluated at `at`; `quantum` is the round's period.
pub fn plan_round(requests: &[CheckRequest], at: Timestamp, quantum: Duration) -> Vec<Group> {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Key<'a> {
        reporter: &'static str,
        namespace: &'a str,
        window: Window,
    }
    let mut groups: BTreeMap<Key<'_>, (Reporter, Vec<usize>)> = BTreeMap::new();
    for (i, request) in requests.iter().enumerate() {
        let window = window_of(request, at, quantum);
        groups
            .entry(Key {
                reporter: request.reporter.label(),
                namespace: &request.namespace,
                window,
            })
            .or_insert_with(|| (request.reporter, Vec::new()))
            .1
            .push(i);
    }
    groups
        .into_iter()
        .map(|(key, (reporter, members))| {
            let mut services: Vec<&str> = members
                .iter()
                .flat_map(|&i| [&requests[i].canary_service, &requests[i].stable_service])
                .map(String::as_str)
                .collect();
            services.sort_unstable();
            services.dedup();
            let fleet = Fleet {
                reporter,
                namespace: key.namespace,
                services,
            };
            let needs_buckets = members.iter().any(|&i| requests[i].gates.reads_buckets());
            let latency = members
                .iter()
                .map(|&i| &requests[i].gates)
                .filter(|gates| gates.rule == Rule::Threshold)
                .map(|gates| {
                    let q = gates.latency_quantile;
                    (q.to_bits(), fleet.latency(key.window, q))
                })
                .collect();
            Group {
                window: key.window,
                requests_by_code: fleet.requests_by_code(key.window),
                buckets: needs_buckets.then(|| fleet.bucket_counts(key.window)),
                latency,
                members,
            }
        })
        .collect()
}

/// The window `request`'s check reads in a round at `at` of period `quantum`.
pub fn window_of(request: &CheckRequest, at: Timestamp, quantum: Duration) -> Window {
    Window::since(request.step_started_at, at, request.min_window)
        .grouped(quantum, request.min_window)
}

impl PrometheusApi {
    /// Evaluates every check of a round at `at`, with the queries [`plan_round`] plans:
    /// one report per request, in order. Each request's `evaluate_at` is ignored: a
    /// round has one instant.
    ///
    /// Never fails: as in [`PrometheusApi::check`], a query that cannot be answered
    /// before the round's deadline makes the checks that read it inconclusive.
    pub async fn check_round(
        &self,
        requests: &[CheckRequest],
        at: Timestamp,
        quantum: Duration,
    ) -> Vec<CheckReport> {
        let groups = plan_round(requests, at, quantum);
        let deadline = Instant::now() + self.check_timeout();

        // Every query of the round at once: the groups' and each check's custom ones.
        let shared = join_all(groups.iter().map(|group| async move {
            let counts = self.outcome(&group.requests_by_code, at, deadline);
            let buckets = async {
                match &group.buckets {
                    Some(promql) => Some(self.outcome(promql, at, deadline).await),
                    None => None,
                }
            };
            let latency =
                join_all(group.latency.iter().map(|(q, promql)| async move {
                    (*q, self.outcome(promql, at, deadline).await)
                }));
            let (counts, buckets, latency) = futures::join!(counts, buckets, latency);
            (
                counts,
                buckets,
                latency.into_iter().collect::<BTreeMap<_, _>>(),
            )
        }));
        let custom = join_all(groups.iter().map(|group| {
            join_all(group.members.iter().map(|&i| async move {
                let queries = custom_queries(&requests[i], group.window);
                let outcomes = join_all(
                    queries
                        .iter()
                        .map(|query| self.outcome(&query.promql, at, deadline)),
                )
                .await;
                (queries, outcomes)
            }))
        }));
        let (shared, custom) = futures::join!(shared, custom);

        let mut reports: Vec<Option<CheckReport>> = vec![None; requests.len()];
        for ((group, (counts, buckets, latency)), custom) in groups.iter().zip(shared).zip(custom) {
            for (&i, (custom_ran, custom_outcomes)) in group.members.iter().zip(custom) {
                let request = &requests[i];
                let mut queries = vec![RanQuery {
                    metric: REQUESTS_BY_CODE_QUERY.to_string(),
                    version: None,
                    promql: group.requests_by_code.clone(),
                }];
                let (request_count, error_count) = match &counts {
                    Ok(series) => {
                        let (requests, errors) = split_counts(series, request);
                        (Ok(requests), Ok(errors))
                    }
                    Err(failure) => (Err(failure.clone()), Err(failure.clone())),
                };
                let buckets = match (&buckets, request.gates.reads_buckets()) {
                    (Some(outcome), true) => {
                        queries.push(RanQuery {
                            metric: BUCKETS_QUERY.to_string(),
                            version: None,
                            promql: group.buckets.clone().unwrap_or_default(),
                        });
                        Some(of_service(outcome, request, &["le"]))
                    }
                    _ => None,
                };
                let latency = if request.gates.rule == Rule::Threshold {
                    let q = request.gates.latency_quantile.to_bits();
                    if let Some(promql) = group.latency.get(&q) {
                        queries.push(RanQuery {
                            metric: judge::LATENCY.to_string(),
                            version: None,
                            promql: promql.clone(),
                        });
                    }
                    latency.get(&q).map_or_else(
                        || Err(not_run()),
                        |outcome| of_service(outcome, request, &[]),
                    )
                } else {
                    Ok(Vec::new())
                };
                let mut outcomes = custom_outcomes.into_iter();
                let custom = custom_observations(request, || {
                    outcomes.next().unwrap_or_else(|| Err(not_run()))
                });
                queries.extend(custom_ran);
                let observations = Observations {
                    request_count,
                    error_count,
                    latency,
                    buckets,
                    custom,
                };
                reports[i] = Some(conclude(request, observations, group.window, queries));
            }
        }
        reports
            .into_iter()
            .map(|report| report.expect("plan_round puts every request in one group"))
            .collect()
    }
}

/// The series of `request`'s Service and two versions, labelled by version (and by
/// `keep`'s labels) only, as a single check's query returns them.
fn of_service(outcome: &QueryOutcome, request: &CheckRequest, keep: &[&str]) -> QueryOutcome {
    let series = outcome.as_ref().map_err(Clone::clone)?;
    Ok(series
        .iter()
        .filter(|s| concerns(s, request))
        .map(|s| Series {
            labels: s
                .labels
                .iter()
                .filter(|(k, _)| *k == VERSION_LABEL || keep.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            value: s.value,
        })
        .collect())
}

/// Whether `series` is of one of `request`'s two versions, under the Service the mesh
/// reports that version's requests under.
fn concerns(series: &Series, request: &CheckRequest) -> bool {
    let (Some(service), Some(version)) = (
        series.labels.get(SERVICE_LABEL),
        series.labels.get(VERSION_LABEL),
    ) else {
        return false;
    };
    (*service == request.canary_service && *version == request.canary_version)
        || (*service == request.stable_service && *version == request.stable_version)
}

/// The request count and the error count per version of `request`'s Service, from
/// requests by Service, version and response code. Like the single check's queries, a
/// version without any request has no request series, and one without any error
/// response has no error series.
pub fn split_counts(series: &[Series], request: &CheckRequest) -> (Vec<Series>, Vec<Series>) {
    let mut requests: BTreeMap<&str, f64> = BTreeMap::new();
    let mut errors: BTreeMap<&str, f64> = BTreeMap::new();
    for s in series.iter().filter(|s| concerns(s, request)) {
        let version = s.labels[VERSION_LABEL].as_str();
        *requests.entry(version).or_default() += s.value;
        let code = s.labels.get("response_code").map_or("", String::as_str);
        if request.gates.error_codes.matches(code) {
            *errors.entry(version).or_default() += s.value;
        }
    }
    let series = |counts: BTreeMap<&str, f64>| {
        counts
            .into_iter()
            .map(|(version, value)| Series::of_version(version, value))
            .collect()
    };
    (series(requests), series(errors))
}

#[cfg(test)]
mod tests;
