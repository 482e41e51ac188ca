//! The sequential rule: the canary's requests since the rollout began, weighed as
//! evidence (see [`crate::sequential`] for the tests, `docs/analysis.md` for the whole
//! story in plain words). Pure.
//!
//! Per gate, two questions, each an anytime-valid e-value over every request of the
//! rollout so far (the current step's counts are measured now; earlier steps' come from
//! the status):
//!
//! - **Against the canary** (abort when any reaches `abort_at`): does its error rate
//!   exceed `max-error-rate`? Is its share of errors more than `1 + tolerance` times
//!   stable's? Does its share of requests slower than `max-latency` exceed
//!   `1 - latency-quantile`? Is its share of requests slower than stable's tail more than
//!   `1 + tolerance` times stable's? (And the slow-share gate, when on.) `abort_at` is
//!   `tests / (1 - confidence)`, so that all of them together abort a canary that is
//!   acceptable on every count in at most `1 - confidence` of rollouts.
//! - **For the canary** (a step may advance when every gate reaches the step's
//!   `pass_at`): is its error rate below twice `max-error-rate`, and is it either below
//!   `2 (1 + tolerance)` times stable's or below three quarters of `max-error-rate`? The
//!   same for latency, with the shares of slow requests (its quantile below half of
//!   `max-latency`, for the absolute alternative). A canary this bad is promoted in at most
//!   `1 - confidence` of rollouts.
//!
//! Between the two lies the indifference zone (an error rate between the SLO and twice
//! it, a ratio between `1 + tolerance` and twice that): there the data decide which
//! comes first.

use super::{
    ERROR_RATE, LATENCY, Observations, Problem, REQUEST_COUNT, Series, custom_metric, describe,
    failure, finite, millis, per_version, slow_share_metric,
};
use crate::gates::Gates;
use crate::promql::VERSION_LABEL;
use crate::sequential::{
    self, Counts, LatencyBaseline, Pair, RolloutEvidence, StepCounts, Tally, requests_to_reach,
};
use crate::verdict::{Bound, Evidence, InconclusiveReason, Measurement, Verdict};

/// A canary whose error rate is below this share of `max-error-rate` needs no
/// comparison with stable: its errors are immaterial, whatever their ratio. Below it, a
/// regression 3 times stable's is held only when stable is at a quarter of the SLO or
/// more (0.25% at the default 1%).
pub const IMMATERIAL_SHARE_OF_SLO: f64 = 0.75;

/// The metric name of the canary's errors compared with stable's.
pub const ERRORS_VS_STABLE: &str = "errors-vs-stable";
/// The start of the relative latency measurement's name; the baseline bucket completes
/// it: `slower-than-250ms-vs-stable`.
pub const SLOWER_VS_STABLE_SUFFIX: &str = "-vs-stable";

/// What the sequential rule concluded, and what the planner records for the next check.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    /// The current step's counts, recorded in the status when the step completes.
    pub step: Option<StepCounts>,
    /// The relative latency test's baseline, when this check chose it.
    pub baseline: Option<LatencyBaseline>,
}

/// Where the rollout stands: its earlier steps' evidence and what this step needs.
#[derive(Clone, Copy, Debug)]
pub struct Standing<'a> {
    pub earlier: &'a RolloutEvidence,
    /// The e-value "for the canary" this step needs ([`sequential::required_for`]).
    pub pass_at: f64,
}

/// A version's latency histogram: `(upper bound in ms, requests at or below it)`,
/// ascending, `+Inf` last when present.
type Histogram = Vec<(f64, f64)>;

/// Weighs the evidence of the rollout so far. See the module documentation.
pub fn weigh(
    observations: &Observations,
    canary: &str,
    stable: &str,
    gates: &Gates,
    standing: Standing<'_>,
) -> Judgement {
    let mut shape: Vec<Problem> = Vec::new();
    let mut values: Vec<Problem> = Vec::new();
    let mut take = |outcome, metric: &str| {
        per_version(outcome, metric, canary, stable)
            .map_err(|problem| shape.push(problem))
            .ok()
    };
    let counts = take(&observations.request_count, REQUEST_COUNT);
    let errors = take(&observations.error_count, ERROR_RATE);
    let histograms = match &observations.buckets {
        None => None,
        Some(Err(f)) => {
            shape.push(failure(f, LATENCY));
            None
        }
        Some(Ok(series)) => match (histogram(series, canary), histogram(series, stable)) {
            (Ok(c), Ok(s)) => Some((c, s)),
            _ => {
                shape.push(problem(
                    InconclusiveReason::NotANumber,
                    LATENCY,
                    "a latency bucket series has no numeric `le` label".into(),
                ));
                None
            }
        },
    };

    let canary_requests = counts.and_then(|c| c.canary).filter(|v| v.is_finite());
    match counts.map(|c| c.canary) {
        Some(None) => values.push(problem(
            InconclusiveReason::NoData,
            REQUEST_COUNT,
            format!("no series for canary {canary} in the window"),
        )),
        Some(Some(v)) if !v.is_finite() => values.push(problem(
            InconclusiveReason::NotANumber,
            REQUEST_COUNT,
            format!("canary {canary} measured {v}"),
        )),
        Some(Some(v)) if v <= 0.0 => values.push(problem(
            InconclusiveReason::NoData,
            REQUEST_COUNT,
            format!("canary {canary} served no requests in the window"),
        )),
        _ => {}
    }
    if let Some((c, _)) = &histograms
        && c.is_empty()
        && canary_requests.is_some_and(|n| n > 0.0)
    {
        values.push(problem(
            InconclusiveReason::NoData,
            LATENCY,
            format!("no latency histogram buckets for canary {canary} in the window"),
        ));
    }

    // The bucket bounds the latency tests count at, from the canary's histogram (both
    // versions report the same buckets).
    let bounds: Vec<f64> = histograms
        .as_ref()
        .map(|(c, s)| {
            let source = if c.is_empty() { s } else { c };
            source
                .iter()
                .map(|(le, _)| *le)
                .filter(|le| le.is_finite())
                .collect()
        })
        .unwrap_or_default();
    let max_latency = millis(gates.max_latency);
    let slo_bound = bounds.iter().copied().find(|le| *le >= max_latency);
    let half_bound = bounds
        .iter()
        .copied()
        .rev()
        .find(|le| *le <= max_latency / 2.0)
        .or(bounds.first().copied());
    let slow_gate_bound = gates.max_slow_share.map(|gate| {
        let threshold = millis(gate.threshold);
        (gate, bounds.iter().copied().find(|le| *le >= threshold))
    });
    if !bounds.is_empty() && slo_bound.is_none() {
        values.push(problem(
            InconclusiveReason::Misconfigured,
            LATENCY,
            format!(
                "max-latency {max_latency}ms is above the largest latency bucket bound {}ms: \
                 choose a max-latency of at most {}ms",
                bounds.last().copied().unwrap_or_default(),
                bounds.last().copied().unwrap_or_default()
            ),
        ));
    }
    if let Some((gate, None)) = slow_gate_bound
        && !bounds.is_empty()
    {
        values.push(problem(
            InconclusiveReason::Misconfigured,
            &slow_share_metric(millis(gate.threshold)),
            format!(
                "the threshold {}ms is above the largest latency bucket bound {}ms: \
                 choose a threshold of at most {}ms",
                millis(gate.threshold),
                bounds.last().copied().unwrap_or_default(),
                bounds.last().copied().unwrap_or_default()
            ),
        ));
    }

    // The baseline of the relative latency test: kept once chosen; otherwise chosen now
    // from both versions' requests together, once there are enough of them to place the
    // quantile. Choosing it from the pooled traffic leaves which version each slow
    // request came from as random as before, so the test stays exact for equal versions.
    //
    // What the tolerance means at that bound is read off stable's histogram at the same
    // moment (see [`LatencyBaseline`]).
    let tail = 1.0 - gates.latency_quantile;
    let mut chosen_now = None;
    let baseline = standing.earlier.baseline.or_else(|| {
        let (c, s) = histograms.as_ref()?;
        let pooled = pool(c, s);
        let timed = at(&pooled, f64::INFINITY)?;
        if timed < 20.0 / tail.max(1e-6) {
            return None;
        }
        let bound = choose_baseline(&pooled, timed, tail)?;
        let (median, sigma) = fit_log_normal(s).unwrap_or((f64::NAN, f64::NAN));
        let chosen = LatencyBaseline::fitted(bound, median, sigma, gates.tolerance);
        chosen_now = Some(chosen);
        Some(chosen)
    });
    let baseline_bound = baseline.map(|b| b.bound_ms);

    let count = |h: Option<&Histogram>, requests: Option<f64>, errors: Option<f64>| {
        let over = |bound: Option<f64>| match (h, bound) {
            (Some(h), Some(b)) => over(h, b),
            _ => 0.0,
        };
        Counts {
            requests: requests.filter(|v| v.is_finite()).unwrap_or(0.0),
            errors: errors.filter(|v| v.is_finite()).unwrap_or(0.0),
            timed: h.and_then(|h| at(h, f64::INFINITY)).unwrap_or(0.0),
            over_slo: over(slo_bound),
            over_half_slo: over(half_bound),
            over_baseline: over(baseline_bound),
            over_slow_threshold: over(slow_gate_bound.and_then(|(_, b)| b)),
        }
    };
    let step = StepCounts {
        canary: count(
            histograms.as_ref().map(|(c, _)| c),
            canary_requests,
            errors.and_then(|e| e.canary).or(Some(0.0)),
        ),
        stable: count(
            histograms.as_ref().map(|(_, s)| s),
            counts.and_then(|c| c.stable),
            errors.and_then(|e| e.stable).or(Some(0.0)),
        ),
    };

    let steps: Vec<StepCounts> = standing
        .earlier
        .steps
        .iter()
        .copied()
        .chain(std::iter::once(step))
        .collect();
    let total = |field: fn(&Counts) -> (f64, f64)| {
        steps.iter().fold(Tally::default(), |sum, s| {
            let (requests, events) = field(&s.canary);
            sum + Tally { requests, events }
        })
    };
    let strata = |field: fn(&Counts) -> (f64, f64)| -> Vec<Pair> {
        steps
            .iter()
            .map(|s| {
                let tally = |c: &Counts| {
                    let (requests, events) = field(c);
                    Tally { requests, events }
                };
                Pair {
                    canary: tally(&s.canary),
                    stable: tally(&s.stable),
                }
            })
            .collect()
    };
    let all_errors = total(|c| (c.requests, c.errors));
    let all_over_slo = total(|c| (c.timed, c.over_slo));
    let all_over_half = total(|c| (c.timed, c.over_half_slo));
    let error_strata = strata(|c| (c.requests, c.errors));
    let baseline_strata = strata(|c| (c.timed, c.over_baseline));
    let stable_errors = steps.iter().fold(Tally::default(), |sum, s| {
        sum + Tally {
            requests: s.stable.requests,
            events: s.stable.errors,
        }
    });

    let alpha = 1.0 - gates.confidence;
    let tolerated = 1.0 + gates.tolerance.max(0.0);
    let bad_ratio = 2.0 * tolerated;
    let latency_measured = histograms.is_some() && slo_bound.is_some();
    let fail_tests = 2 + 2 * usize::from(latency_measured) + usize::from(slow_gate_bound.is_some());
    let abort_at = fail_tests as f64 / alpha;
    let pass_at = standing.pass_at;
    let evidence = |against: f64, for_canary: f64, requests: f64| Evidence {
        against: rounded(against),
        abort_at: rounded(abort_at),
        for_canary: rounded(for_canary),
        pass_at: rounded(pass_at),
        more_requests: requests_to_reach(for_canary, pass_at, requests),
    };
    let canary_total = all_errors.requests;

    let mut measurements = vec![Measurement {
        metric: REQUEST_COUNT.to_string(),
        canary: canary_requests,
        stable: counts.and_then(|c| finite(c.stable)),
        bound: Some(Bound::Min(gates.min_requests as f64)),
        evidence: None,
    }];
    let mut against_canary: Vec<String> = Vec::new();
    let mut short_of: Vec<String> = Vec::new();
    let mut weigh_gate = |measurement: Measurement, against: f64, for_canary: f64| {
        if against >= abort_at {
            against_canary.push(measurement.metric.clone());
        } else if for_canary < pass_at {
            let more = measurement
                .evidence
                .as_ref()
                .and_then(|e| e.more_requests)
                .map_or_else(String::new, |n| format!(", about {n} more canary requests"));
            short_of.push(format!(
                "{}: evidence for the canary {} of the {} this step needs{more}",
                measurement.metric,
                short(for_canary),
                short(pass_at)
            ));
        }
        measurements.push(measurement);
    };

    if errors.is_some() && counts.is_some() {
        let against = sequential::exceeds(all_errors, gates.max_error_rate);
        let for_canary = sequential::below(all_errors, 2.0 * gates.max_error_rate);
        weigh_gate(
            Measurement {
                metric: ERROR_RATE.to_string(),
                canary: all_errors.rate(),
                stable: stable_errors.rate(),
                bound: Some(Bound::Max(gates.max_error_rate)),
                evidence: Some(evidence(against, for_canary, canary_total)),
            },
            against,
            for_canary,
        );
        let against = sequential::worse(&error_strata, tolerated);
        let for_canary = either(
            sequential::better(&error_strata, bad_ratio, tolerated),
            sequential::below(all_errors, IMMATERIAL_SHARE_OF_SLO * gates.max_error_rate),
        );
        weigh_gate(
            Measurement {
                metric: ERRORS_VS_STABLE.to_string(),
                canary: all_errors.rate(),
                stable: stable_errors.rate(),
                bound: None,
                evidence: Some(evidence(against, for_canary, canary_total)),
            },
            against,
            for_canary,
        );
    }
    if let Some((c, s)) = histograms.as_ref().filter(|_| latency_measured) {
        let quantile = |h: &Histogram| finite(quantile(h, gates.latency_quantile));
        let against = sequential::exceeds(all_over_slo, tail);
        let for_canary = sequential::below(all_over_slo, 2.0 * tail);
        weigh_gate(
            Measurement {
                metric: LATENCY.to_string(),
                canary: quantile(c),
                stable: quantile(s),
                bound: Some(Bound::Max(max_latency)),
                evidence: Some(evidence(against, for_canary, all_over_slo.requests)),
            },
            against,
            for_canary,
        );
        let immaterial = sequential::below(all_over_half, tail);
        let (against, for_canary, metric) = match baseline {
            Some(b) => (
                sequential::worse(&baseline_strata, b.acceptable_ratio),
                either(
                    sequential::better(&baseline_strata, b.bad_ratio, b.acceptable_ratio),
                    immaterial,
                ),
                format!("{}{SLOWER_VS_STABLE_SUFFIX}", slow_share_metric(b.bound_ms)),
            ),
            // No baseline yet: only "fast in absolute terms" can speak for the canary.
            None => (
                1.0,
                either(1.0, immaterial),
                format!("latency{SLOWER_VS_STABLE_SUFFIX}"),
            ),
        };
        let share = |f: fn(&Counts) -> (f64, f64), of: fn(&StepCounts) -> &Counts| {
            steps
                .iter()
                .fold(Tally::default(), |sum, st| {
                    let (requests, events) = f(of(st));
                    sum + Tally { requests, events }
                })
                .rate()
        };
        weigh_gate(
            Measurement {
                metric,
                canary: share(|c| (c.timed, c.over_baseline), |s| &s.canary),
                stable: share(|c| (c.timed, c.over_baseline), |s| &s.stable),
                bound: None,
                evidence: Some(evidence(against, for_canary, all_over_slo.requests)),
            },
            against,
            for_canary,
        );
    }
    if let Some((gate, Some(bound))) = slow_gate_bound
        && histograms.is_some()
    {
        let slow = total(|c| (c.timed, c.over_slow_threshold));
        let against = sequential::exceeds(slow, gate.max_share);
        let for_canary = sequential::below(slow, 2.0 * gate.max_share);
        let stable_slow = steps.iter().fold(Tally::default(), |sum, s| {
            sum + Tally {
                requests: s.stable.timed,
                events: s.stable.over_slow_threshold,
            }
        });
        weigh_gate(
            Measurement {
                metric: slow_share_metric(bound),
                canary: slow.rate(),
                stable: stable_slow.rate(),
                bound: Some(Bound::Max(gate.max_share)),
                evidence: Some(evidence(against, for_canary, slow.requests)),
            },
            against,
            for_canary,
        );
    }

    // Custom metrics are held to fixed bounds at every check, as under the threshold
    // rule: a miss counts toward the failure limit.
    let mut later = Vec::new();
    let mut missed_custom = Vec::new();
    for custom in &observations.custom {
        let m = custom_metric(custom, canary, stable, &mut shape, &mut later);
        let missed = match (m.canary, &m.bound) {
            (Some(v), Some(Bound::Max(max))) => v > *max,
            (Some(v), Some(Bound::Min(min))) => v < *min,
            _ => false,
        };
        if missed && canary_requests.is_some_and(|n| n >= gates.min_requests as f64) {
            missed_custom.push(m.metric.clone());
        }
        measurements.push(m);
    }

    let enough = canary_requests.is_some_and(|n| n > 0.0 && n >= gates.min_requests as f64);
    if canary_requests.is_some_and(|n| n > 0.0) && !enough {
        values.push(problem(
            InconclusiveReason::TooFewRequests,
            REQUEST_COUNT,
            format!(
                "canary {canary} served {} requests in this step, fewer than min-requests {}",
                canary_requests.unwrap_or_default(),
                gates.min_requests
            ),
        ));
    }
    let problems: Vec<Problem> = shape.into_iter().chain(values).chain(later).collect();
    let verdict = if !against_canary.is_empty() {
        Verdict::Fail {
            failed: against_canary,
            measurements,
            conclusive: true,
        }
    } else if !missed_custom.is_empty() {
        Verdict::Fail {
            failed: missed_custom,
            measurements,
            conclusive: false,
        }
    } else if let Some(first) = problems.first() {
        Verdict::Inconclusive {
            reason: first.reason,
            detail: describe(&problems),
            measurements,
        }
    } else if !short_of.is_empty() {
        Verdict::Inconclusive {
            reason: InconclusiveReason::AwaitingEvidence,
            detail: short_of.join("; "),
            measurements,
        }
    } else {
        Verdict::Pass { measurements }
    };
    Judgement {
        verdict,
        step: counts.is_some().then(|| StepCounts {
            canary: step.canary.rounded(),
            stable: step.stable.rounded(),
        }),
        baseline: chosen_now,
    }
}

/// Evidence that the canary is not bad relative to stable *or* is good in absolute
/// terms: either would do, and the mean of two e-values is an e-value.
fn either(relative: f64, absolute: f64) -> f64 {
    (relative + absolute) / 2.0
}

fn problem(reason: InconclusiveReason, metric: &str, detail: String) -> Problem {
    Problem {
        reason,
        metric: metric.to_string(),
        detail,
    }
}

/// `version`'s cumulative bucket counts, ascending by bound, buckets whose `le` reads as
/// the same number added together; `Err` when a bucket's `le` is not a number.
fn histogram(series: &[Series], version: &str) -> Result<Histogram, ()> {
    let mut buckets: Histogram = Vec::new();
    for s in series
        .iter()
        .filter(|s| s.labels.get(VERSION_LABEL).map(String::as_str) == Some(version))
    {
        let le: f64 = s
            .labels
            .get("le")
            .and_then(|le| le.parse().ok())
            .filter(|le: &f64| !le.is_nan())
            .ok_or(())?;
        let value = if s.value.is_finite() { s.value } else { 0.0 };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, n)) => *n += value,
            None => buckets.push((le, value)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(buckets)
}

/// The count at bound `le`.
fn at(histogram: &Histogram, le: f64) -> Option<f64> {
    histogram.iter().find(|(b, _)| *b == le).map(|(_, n)| *n)
}

/// Requests slower than `bound`: the `+Inf` count minus the count at `bound`, never
/// negative (extrapolation can leave a bucket a hair above the total).
fn over(histogram: &Histogram, bound: f64) -> f64 {
    match (at(histogram, f64::INFINITY), at(histogram, bound)) {
        (Some(total), Some(within)) => (total - within).max(0.0),
        _ => 0.0,
    }
}

/// Two versions' histograms added bucket by bucket.
fn pool(a: &Histogram, b: &Histogram) -> Histogram {
    let mut pooled = a.clone();
    for (le, n) in b {
        match pooled.iter_mut().find(|(p, _)| p == le) {
            Some((_, m)) => *m += n,
            None => pooled.push((*le, *n)),
        }
    }
    pooled.sort_by(|x, y| x.0.total_cmp(&y.0));
    pooled
}

/// The largest finite bound above which at least `tail` of the requests lie: the
/// bucket at or below the `1 - tail` quantile, so that the relative test counts many
/// slow requests. The smallest bound when even it has fewer above it.
fn choose_baseline(pooled: &Histogram, timed: f64, tail: f64) -> Option<f64> {
    let finite_bounds = pooled.iter().filter(|(le, _)| le.is_finite());
    finite_bounds
        .clone()
        .rev()
        .find(|(_, within)| (timed - within) / timed >= tail)
        .or_else(|| finite_bounds.clone().next())
        .map(|(le, _)| *le)
}

/// The log-normal distribution closest to a histogram: a least-squares line through the
/// points `(z, ln bound)`, where `z` is the standard normal quantile of the share of
/// requests at or below `bound` (a probit plot). Reads the shape from every bucket, not
/// from interpolated quantiles, which coarse buckets skew. `(median, sigma)`, or `None`
/// with fewer than two usable buckets.
fn fit_log_normal(histogram: &Histogram) -> Option<(f64, f64)> {
    let total = at(histogram, f64::INFINITY)?;
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let points: Vec<(f64, f64)> = histogram
        .iter()
        .filter(|(le, _)| le.is_finite() && *le > 0.0)
        .filter_map(|&(le, within)| {
            let share = within / total;
            // Shares within one request of 0 or 1 say nothing about the shape.
            let margin = (1.0 / total).max(0.001);
            (share > margin && share < 1.0 - margin)
                .then(|| (sequential::normal_quantile(share), le.ln()))
        })
        .collect();
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let (mz, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (z, y)| (a + z / n, b + y / n));
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(a, b), (z, y)| {
        (a + (z - mz) * (y - my), b + (z - mz) * (z - mz))
    });
    if sxx <= 0.0 {
        return None;
    }
    let sigma = sxy / sxx;
    let median = (my - sigma * mz).exp();
    (sigma > 0.0 && median.is_finite()).then_some((median, sigma))
}

/// The `q` quantile of a histogram by linear interpolation within its bucket, as
/// Prometheus's `histogram_quantile` estimates it (for display).
fn quantile(histogram: &Histogram, q: f64) -> Option<f64> {
    let total = at(histogram, f64::INFINITY)?;
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in histogram {
        if count >= rank {
            if !le.is_finite() {
                // Beyond the last finite bucket: its bound is the best estimate.
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let fraction = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    None
}

/// The largest e-value recorded: beyond it, more digits say nothing.
const MAX_RECORDED: f64 = 1e9;

fn rounded(e: f64) -> f64 {
    if e.is_nan() || e >= MAX_RECORDED {
        return if e.is_nan() { 0.0 } else { MAX_RECORDED };
    }
    if e >= 100.0 {
        e.round()
    } else {
        (e * 100.0).round() / 100.0
    }
}

fn short(e: f64) -> String {
    if e >= 100.0 || !e.is_finite() {
        format!("{e:.0}")
    } else {
        format!("{e:.2}")
    }
}

#[cfg(test)]
mod tests;
