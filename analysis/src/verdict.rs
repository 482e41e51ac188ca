//! What a check concluded, and the evidence behind it.

use serde::{Deserialize, Serialize};

/// The outcome of evaluating a rollout's gates once.
///
/// Only [`Verdict::Pass`] lets a step advance. [`Verdict::Inconclusive`] never advances a
/// step and never promotes; it is not a failure either, but a step that stays
/// inconclusive past its `no-data-timeout` is aborted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Verdict {
    /// Every gate was measured and met.
    Pass { measurements: Vec<Measurement> },
    /// At least one gate was measured and missed. `failed` names the metrics that missed.
    Fail {
        failed: Vec<String>,
        measurements: Vec<Measurement>,
        /// The evidence against the canary reached the confidence asked for: it is
        /// aborted at once. A fixed-threshold miss (a custom metric, or the `threshold`
        /// rule) is not conclusive: such misses count toward the failure limit.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        conclusive: bool,
    },
    /// The evidence was not good enough to judge.
    Inconclusive {
        reason: InconclusiveReason,
        detail: String,
        measurements: Vec<Measurement>,
    },
}

impl Verdict {
    /// The measured values behind the verdict, whatever it is.
    pub fn measurements(&self) -> &[Measurement] {
        match self {
            Verdict::Pass { measurements }
            | Verdict::Fail { measurements, .. }
            | Verdict::Inconclusive { measurements, .. } => measurements,
        }
    }

    /// `pass`, `fail` or `inconclusive`.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Pass { .. } => "pass",
            Verdict::Fail { .. } => "fail",
            Verdict::Inconclusive { .. } => "inconclusive",
        }
    }
}

/// Why a check could not conclude.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InconclusiveReason {
    /// The query returned no series for the canary.
    NoData,
    /// The canary served fewer requests than `min-requests`.
    TooFewRequests,
    /// A query returned NaN or ±Inf.
    NotANumber,
    /// Prometheus could not be asked, or answered with an error, within the deadline.
    QueryError,
    /// The query took longer than its timeout.
    QueryTimeout,
    /// A query returned several series where one was expected.
    SeveralSeries,
    /// Everything was measured, but the evidence does not yet show the canary healthy
    /// (nor bad) with the confidence asked for: the step waits for more requests, up to
    /// its decision timeout.
    AwaitingEvidence,
    /// Prometheus, or a proxy in front of it, refused a query (HTTP 4xx, `bad_data`, an
    /// unreadable token file, an untrusted certificate), or a gate cannot be measured as
    /// configured (a slow-share threshold above every histogram bucket). Retrying will
    /// not help until someone fixes the configuration; the detail says what to fix.
    Misconfigured,
}

/// The limit one metric is held to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// The canary's value must be at most this.
    Max(f64),
    /// The canary's value must be at least this.
    Min(f64),
}

/// One metric measured for canary and stable over the check's window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The metric's name: `request-count`, `error-rate`, `latency`,
    /// `slower-than-<bound>ms` (naming the histogram bucket bound used), or a custom
    /// metric's name.
    pub metric: String,
    /// The canary's value; `None` when there was none.
    pub canary: Option<f64>,
    /// The stable version's value, for comparison; `None` when there was none.
    pub stable: Option<f64>,
    /// The limit the canary's value is held to, if this metric is a gate.
    pub bound: Option<Bound>,
    /// The sequential tests' evidence behind this gate, when the judge weighs evidence
    /// rather than comparing one value with its bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// How far the sequential tests of one gate have come, as e-values: a likelihood ratio
/// that may be read after every check (see [`crate::sequential`]). 1 is no evidence
/// either way; the canary is aborted when `against` reaches `abort_at`, and the step may
/// advance when `for_canary` reaches `pass_at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// Evidence that the canary is worse than acceptable (its strongest test).
    pub against: f64,
    /// The level of `against` that aborts the canary.
    pub abort_at: f64,
    /// Evidence that the canary is better than bad (its weakest test).
    pub for_canary: f64,
    /// The level of `for_canary` this step needs to advance.
    pub pass_at: f64,
    /// Roughly how many more canary requests `for_canary` needs to reach `pass_at`, at
    /// the pace it has grown so far; absent when it has not grown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more_requests: Option<u64>,
}

/// A metric's value in its unit, for people: `20.00%` for shares (error rates, shares
/// of slow requests), `20ms` for latencies, `120` for request counts, the number itself
/// for custom metrics; `none` when missing. The one formatting the agent's messages and
/// the CLI share.
pub fn format_value(metric: &str, value: Option<f64>) -> String {
    let Some(v) = value else {
        return "none".to_owned();
    };
    let share = metric == crate::judge::ERROR_RATE
        || metric.starts_with(crate::judge::SLOW_SHARE_PREFIX)
        || metric.ends_with(crate::judge::SLOWER_VS_STABLE_SUFFIX);
    match metric {
        _ if share => format!("{:.2}%", v * 100.0),
        "latency" => format!("{v:.0}ms"),
        "request-count" => format!("{v:.0}"),
        _ => {
            let text = format!("{v:.4}");
            let text = text.trim_end_matches('0').trim_end_matches('.');
            if text.is_empty() || text == "-" {
                "0".to_owned()
            } else {
                text.to_owned()
            }
        }
    }
}

/// An e-value for people: two significant figures below 100, whole above, powers of ten
/// beyond a million.
pub fn format_evidence(e: f64) -> String {
    if e >= 1e6 {
        format!("{e:.0e}")
    } else if e >= 100.0 {
        format!("{e:.0}")
    } else if e >= 10.0 {
        format!("{e:.1}")
    } else {
        format!("{e:.2}")
    }
}

impl Evidence {
    /// `for 4.4/3.2, against 0.10/400`, and the requests still needed when the canary's
    /// evidence falls short: what `weir check` shows per gate.
    pub fn describe(&self) -> String {
        let more = match self.more_requests {
            Some(n) if self.for_canary < self.pass_at && n > 0 => {
                format!(" (~{n} more canary requests)")
            }
            _ => String::new(),
        };
        format!(
            "for {}/{}, against {}/{}{more}",
            format_evidence(self.for_canary),
            format_evidence(self.pass_at),
            format_evidence(self.against),
            format_evidence(self.abort_at)
        )
    }
}
