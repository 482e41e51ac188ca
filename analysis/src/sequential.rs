//! Anytime-valid sequential tests: how much the requests seen so far say against a
//! hypothesis, as an e-value that may be looked at after every check without
//! inflating its error rate. Pure.
//!
//! # The idea, in plain words
//!
//! A likelihood ratio compares how probable the data are under two hypotheses. Under
//! the hypothesis in the denominator, its expected value is 1 whatever happened before,
//! and it stays a nonnegative martingale as data arrive. Ville's inequality then bounds
//! the chance that it *ever* reaches `1/α` by `α`, however often it is looked at: this
//! is what makes a check every 15 s as safe as one look at the end (Wald 1945;
//! Robbins 1970; Ramdas, Grünwald, Vovk & Shafer 2023, "Game-theoretic statistics and
//! safe anytime-valid inference"). Where the alternative is not one value but a range,
//! a mixture of likelihood ratios over a grid of alternatives is still a martingale,
//! and it is large as soon as any of them fits the data: the mixture SPRT.
//!
//! # Canary against stable
//!
//! Comparing the canary's error rate with stable's without knowing either rate follows
//! Lindon & Malek 2020, "Anytime-valid inference for multinomial count data" (arXiv
//! 2011.03567): condition on the events (errors, or requests slower than a threshold)
//! and ask only which version each came from. If the canary served a share `π` of the
//! requests and its rate is `ρ` times stable's, an event is the canary's with
//! probability `θ = πρ / (πρ + 1 − π)` (errors as Poisson counts given the requests:
//! exact for rare events, as errors are). The unknown base rate cancels, and so does
//! any load or time-of-day effect that hits both versions alike. `π` is the *observed*
//! share of requests, not the configured weight, and the data are stratified by step,
//! each step with its own `π`: the traffic share may change between steps, and may
//! differ from the route's weight (retries, locality, pods not yet ready).
//!
//! # Canary against an absolute limit
//!
//! The canary's own requests, each an event with probability `p`: a binomial likelihood
//! ratio of `p` against the limit, with a mixture over alternatives.
//!
//! Every test here runs in both directions: *against* the canary (evidence that it is
//! worse than acceptable, which aborts it) and *for* it (evidence that it is better than
//! bad, which lets a step advance). Between "acceptable" and "bad" lies an indifference
//! zone, where either conclusion is allowed and the data decide which comes first.

use serde::{Deserialize, Serialize};

/// Requests and the events among them (errors, or requests slower than a threshold).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub requests: f64,
    pub events: f64,
}

impl Tally {
    /// `events / requests`, or `None` without requests.
    pub fn rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.events / self.requests)
    }

    /// Counts as given by Prometheus can be fractional (extrapolation), a hair negative,
    /// or have more events than requests; tests see them clamped to what is possible.
    fn clean(self) -> Tally {
        let requests = finite_or_zero(self.requests).max(0.0);
        let events = finite_or_zero(self.events).clamp(0.0, requests);
        Tally { requests, events }
    }
}

impl std::ops::Add for Tally {
    type Output = Tally;

    fn add(self, other: Tally) -> Tally {
        Tally {
            requests: self.requests + other.requests,
            events: self.events + other.events,
        }
    }
}

/// The canary's and stable's tallies over one stratum: one step, during which the
/// traffic share held still.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub canary: Tally,
    pub stable: Tally,
}

/// What one version served during one step, as the sequential tests count it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Requests (`istio_requests_total`).
    pub requests: f64,
    /// Requests whose response code is an error.
    pub errors: f64,
    /// Requests in the latency histogram (its `+Inf` bucket).
    pub timed: f64,
    /// Requests slower than the latency SLO's bucket bound.
    pub over_slo: f64,
    /// Requests slower than half the latency SLO (the largest bucket bound at or below
    /// it).
    pub over_half_slo: f64,
    /// Requests slower than the rollout's baseline threshold, once chosen.
    #[serde(default)]
    pub over_baseline: f64,
    /// Requests slower than the slow-share gate's threshold, when that gate is on.
    #[serde(default)]
    pub over_slow_threshold: f64,
}

impl Counts {
    /// The counts rounded to tenths, as the status records them: Prometheus's
    /// `increase` extrapolates to fractions that are noise.
    pub fn rounded(self) -> Counts {
        let r = |v: f64| (v * 10.0).round() / 10.0;
        Counts {
            requests: r(self.requests),
            errors: r(self.errors),
            timed: r(self.timed),
            over_slo: r(self.over_slo),
            over_half_slo: r(self.over_half_slo),
            over_baseline: r(self.over_baseline),
            over_slow_threshold: r(self.over_slow_threshold),
        }
    }
}

/// The canary's and stable's counts over one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepCounts {
    pub canary: Counts,
    pub stable: Counts,
}

/// What a rollout's sequential tests carry from one check to the next, recorded in the
/// Service's status: the counts of every completed step, and the baseline threshold of
/// the relative latency test once it was chosen. The current step's counts are measured
/// afresh at every check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutEvidence {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepCounts>,
    /// The relative latency test's baseline, once chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<LatencyBaseline>,
}

impl RolloutEvidence {
    /// Whether nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.baseline.is_none()
    }
}

/// What the relative latency test compares: each version's share of requests slower
/// than `bound_ms`, a histogram bucket bound near stable's latency quantile.
///
/// Tolerance is stated in latency ("the canary may be 1.5 times as slow as stable"),
/// but a histogram only counts requests per bucket. The translation: a canary `k` times
/// as slow as stable (its latencies stable's scaled by `k`) has, above `bound_ms`, the
/// share stable has above `bound_ms / k`; with stable's latencies log-normal (fitted to
/// its median and quantile when the baseline is chosen), that is `ratio(k)` times
/// stable's share. The test is exact for the shares; the log-normal shape is only used
/// to say which share ratios a latency ratio means.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyBaseline {
    /// The bucket bound, in milliseconds.
    pub bound_ms: f64,
    /// The share ratio of a canary `1 + tolerance` times as slow as stable.
    pub acceptable_ratio: f64,
    /// The share ratio of a canary `1 + 2 tolerance` times as slow as stable.
    pub bad_ratio: f64,
}

impl LatencyBaseline {
    /// The baseline at `bound_ms` for a stable version whose latencies have median
    /// `median_ms` and log-standard-deviation `sigma`, with the given tolerance. Falls
    /// back to the share ratios themselves (`1 + tolerance`, twice that) when the fit
    /// is degenerate.
    pub fn fitted(bound_ms: f64, median_ms: f64, sigma: f64, tolerance: f64) -> LatencyBaseline {
        let tolerance = tolerance.max(0.0);
        let fallback = LatencyBaseline {
            bound_ms,
            acceptable_ratio: 1.0 + tolerance,
            bad_ratio: 2.0 * (1.0 + tolerance),
        };
        if !(median_ms > 0.0 && sigma > 0.0 && sigma.is_finite() && bound_ms > 0.0) {
            return fallback;
        }
        let tail = |scale: f64| normal_tail(((bound_ms / scale).ln() - median_ms.ln()) / sigma);
        let base = tail(1.0);
        if base <= 0.0 || !base.is_finite() {
            return fallback;
        }
        let ratio = |k: f64| (tail(k) / base).max(1.0);
        let acceptable_ratio = ratio(1.0 + tolerance);
        let bad_ratio = ratio(1.0 + 2.0 * tolerance).max(acceptable_ratio * 1.2);
        if acceptable_ratio.is_finite() && bad_ratio.is_finite() {
            LatencyBaseline {
                bound_ms,
                acceptable_ratio,
                bad_ratio,
            }
        } else {
            fallback
        }
    }
}

/// `P(Z > z)` for a standard normal `Z`, accurate in the far tail (Numerical Recipes'
/// Chebyshev fit of erfc, fractional error below 1.2e-7).
pub fn normal_tail(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The `p` quantile of the standard normal distribution (Acklam's algorithm, relative
/// error below 1.2e-9), for `p` in (0, 1).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let low = 0.024_25;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < low {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - low {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The e-value a step needs before the canary may take `next_weight` percent of the
/// traffic (100 for the promotion): `(1 / (1 - confidence))^(next_weight / 100)`. The
/// confidence demanded grows with the traffic at stake: at 99%, 3.2 to go to 25%, 10 to
/// go to 50%, and the full 100 to promote.
pub fn required_for(confidence: f64, next_weight: u8) -> f64 {
    let level = 1.0 / (1.0 - confidence.clamp(0.5, 0.999_999));
    level.powf(f64::from(next_weight.min(100)) / 100.0).max(2.0)
}

/// The smallest and largest rates a binomial test works with: a limit of 0% or 100% is
/// moved inside, so that one event is strong but finite evidence.
const RATE_FLOOR: f64 = 1e-6;
const RATE_CEILING: f64 = 1.0 - 1e-6;

/// Alternatives of the test against an absolute limit, as multiples of the limit.
const ABOVE: [f64; 6] = [1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
/// Alternatives of the test for the canary, as fractions of the bad rate, with their
/// weights: most on the rates nearest the limit, where a healthy canary is hardest to
/// tell from a bad one.
const BELOW: [(f64, f64); 4] = [(0.5, 0.4), (0.25, 0.3), (0.125, 0.2), (0.0625, 0.1)];
/// Alternatives of the test against the canary relative to stable, as multiples of the
/// tolerated ratio.
const WORSE: [f64; 6] = [1.5, 2.0, 3.0, 5.0, 10.0, 30.0];

/// Evidence that the canary's rate exceeds `limit`: an e-value against "rate ≤ limit".
///
/// A mixture over rates above the limit; under any rate at or below it, the chance that
/// this ever reaches `1/α` is at most `α`.
pub fn exceeds(canary: Tally, limit: f64) -> f64 {
    let canary = canary.clean();
    if limit <= 0.0 {
        // At a rate of 0 an event is impossible: one is proof.
        return if canary.events > 0.0 {
            f64::INFINITY
        } else {
            1.0
        };
    }
    let limit = limit.clamp(RATE_FLOOR, RATE_CEILING);
    mixture(ABOVE.iter().map(|&m| {
        let alternative = (limit * m).min(RATE_CEILING);
        (
            1.0 / ABOVE.len() as f64,
            binomial_llr(canary, alternative, limit),
        )
    }))
}

/// Evidence that the canary's rate is below `bad`: an e-value against "rate ≥ bad".
///
/// A limit of 100% or more cannot be reached: then one request served is all the
/// evidence there is to have, and the e-value is infinite.
pub fn below(canary: Tally, bad: f64) -> f64 {
    let canary = canary.clean();
    if bad >= 1.0 {
        return if canary.requests > canary.events {
            f64::INFINITY
        } else {
            1.0
        };
    }
    let bad = bad.clamp(RATE_FLOOR, RATE_CEILING);
    mixture(BELOW.iter().map(|&(m, weight)| {
        let alternative = (bad * m).max(RATE_FLOOR);
        (weight, binomial_llr(canary, alternative, bad))
    }))
}

/// Evidence that the canary's events are more than `tolerated` times as frequent as
/// stable's: an e-value against "ratio ≤ tolerated", stratified by step.
pub fn worse(steps: &[Pair], tolerated: f64) -> f64 {
    let tolerated = tolerated.max(RATE_FLOOR);
    mixture(WORSE.iter().map(|&m| {
        (
            1.0 / WORSE.len() as f64,
            steps
                .iter()
                .map(|s| share_llr(*s, tolerated * m, tolerated))
                .sum(),
        )
    }))
}

/// Evidence that the canary's events are less than `bad` times as frequent as stable's:
/// an e-value against "ratio ≥ bad", stratified by step.
///
/// The alternatives are the acceptable canaries: as good as stable (half the weight),
/// at the `acceptable` ratio, and halfway between.
pub fn better(steps: &[Pair], bad: f64, acceptable: f64) -> f64 {
    let bad = bad.max(RATE_FLOOR);
    let acceptable = acceptable.clamp(RATE_FLOOR, bad);
    let alternatives = [
        (1.0_f64.min(acceptable), 0.5),
        (acceptable, 0.25),
        ((1.0 + acceptable) / 2.0, 0.25),
    ];
    mixture(alternatives.iter().map(|&(ratio, weight)| {
        (
            weight,
            steps.iter().map(|s| share_llr(*s, ratio, bad)).sum(),
        )
    }))
}

/// `Σ weight · exp(llr)`, computed without overflow for large log-likelihoods.
fn mixture(components: impl Iterator<Item = (f64, f64)>) -> f64 {
    let terms: Vec<(f64, f64)> = components.collect();
    let top = terms
        .iter()
        .map(|(_, llr)| *llr)
        .fold(f64::NEG_INFINITY, f64::max);
    if top == f64::INFINITY {
        return f64::INFINITY;
    }
    if top == f64::NEG_INFINITY {
        return 0.0;
    }
    let sum: f64 = terms.iter().map(|(w, llr)| w * (llr - top).exp()).sum();
    (top + sum.ln()).exp()
}

/// The log-likelihood ratio of `tally` under event probability `alternative` against
/// `null`.
fn binomial_llr(tally: Tally, alternative: f64, null: f64) -> f64 {
    let Tally { requests, events } = tally;
    xlogy(events, alternative / null) + xlogy(requests - events, (1.0 - alternative) / (1.0 - null))
}

/// The log-likelihood ratio of which version the events of `pair` came from, under
/// a canary-to-stable rate ratio `alternative` against `null`.
fn share_llr(pair: Pair, alternative: f64, null: f64) -> f64 {
    let (canary, stable) = (pair.canary.clean(), pair.stable.clean());
    let total = canary.requests + stable.requests;
    if canary.requests <= 0.0 || stable.requests <= 0.0 || total <= 0.0 {
        return 0.0;
    }
    let share = canary.requests / total;
    let theta = |ratio: f64| share * ratio / (share * ratio + 1.0 - share);
    let (alt, nul) = (theta(alternative), theta(null));
    xlogy(canary.events, alt / nul) + xlogy(stable.events, (1.0 - alt) / (1.0 - nul))
}

/// `x · ln(y)`, with `0 · ln(anything) = 0`.
fn xlogy(x: f64, y: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x * y.ln() }
}

fn finite_or_zero(value: f64) -> f64 {
    if value.is_finite() { value } else { 0.0 }
}

/// Roughly how many more canary requests, at the rate the evidence has grown so far,
/// bring `evidence` from where it is to `needed`; `None` when it has not grown at all.
pub fn requests_to_reach(evidence: f64, needed: f64, canary_requests: f64) -> Option<u64> {
    if evidence >= needed {
        return Some(0);
    }
    if evidence.is_nan() || evidence <= 1.0 || canary_requests <= 0.0 {
        return None;
    }
    let per_request = evidence.ln() / canary_requests;
    let more = (needed.ln() - evidence.ln()) / per_request;
    more.is_finite()
        .then(|| more.ceil().min(u64::MAX as f64) as u64)
}

#[cfg(test)]
mod tests;
