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
    /// The histogram bucket bound, in milliseconds, that the relative latency test
    /// counts requests above: at the pooled traffic's latency quantile when first chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_ms: Option<f64>,
}

impl RolloutEvidence {
    /// Whether nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.baseline_ms.is_none()
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
/// Alternatives of the test for the canary, as fractions of the bad rate.
const BELOW: [f64; 4] = [0.5, 0.25, 0.125, 0.0625];
/// Alternatives of the test against the canary relative to stable, as multiples of the
/// tolerated ratio.
const WORSE: [f64; 6] = [1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
/// Alternatives of the test for the canary relative to stable, as multiples of the bad
/// ratio, with their weights: most weight on "as good as stable" when the bad ratio is
/// three times it (the defaults).
const BETTER: [(f64, f64); 3] = [(1.0 / 3.0, 0.5), (0.5, 0.25), (1.0 / 6.0, 0.25)];

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
    mixture(BELOW.iter().map(|&m| {
        let alternative = (bad * m).max(RATE_FLOOR);
        (
            1.0 / BELOW.len() as f64,
            binomial_llr(canary, alternative, bad),
        )
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
pub fn better(steps: &[Pair], bad: f64) -> f64 {
    let bad = bad.max(RATE_FLOOR);
    mixture(BETTER.iter().map(|&(m, weight)| {
        (
            weight,
            steps.iter().map(|s| share_llr(*s, bad * m, bad)).sum(),
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
