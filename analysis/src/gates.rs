//! The built-in SLO gates of a rollout.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which Envoy reports the request in Istio's standard metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    /// The server-side sidecar (`reporter="destination"`): sidecar mode.
    Destination,
    /// The waypoint proxy (`reporter="waypoint"`): ambient mode.
    Waypoint,
}

impl Reporter {
    /// The value of the `reporter` label in Istio's metrics.
    pub fn label(self) -> &'static str {
        match self {
            Reporter::Destination => "destination",
            Reporter::Waypoint => "waypoint",
        }
    }

    /// The `destination_version` this reporter gives the requests of a workload whose
    /// pods carry `labels`: the value the gates must query for it.
    ///
    /// - A sidecar reports its own pod's `version` label, and `unknown` without one
    ///   (istio/proxy, `source/extensions/filters/http/istio_stats/istio_stats.cc`: on
    ///   the server side `destination_version` is the proxy's `app_version`, which the
    ///   node metadata takes from the pod's `version` label).
    /// - A waypoint (ambient) reports the workload's canonical revision: it learns the
    ///   destination from workload discovery, which passes the canonical revision as the
    ///   workload's version (`source/extensions/common/workload_discovery/api.cc`), and
    ///   Istio derives that from the first of `service.istio.io/canonical-revision`,
    ///   `app.kubernetes.io/version` and `version` present, else `latest`
    ///   (istio/istio, `pkg/kube/labels/labels.go`).
    pub fn reported_version(self, labels: &std::collections::BTreeMap<String, String>) -> String {
        match self {
            Reporter::Destination => labels
                .get("version")
                .cloned()
                .unwrap_or_else(|| "unknown".to_owned()),
            Reporter::Waypoint => canonical_revision(labels),
        }
    }
}

/// Istio's canonical revision of a workload: the first of
/// `service.istio.io/canonical-revision`, `app.kubernetes.io/version` and `version` that
/// its pods carry, else `latest` (istio/istio, `pkg/kube/labels/labels.go`).
pub fn canonical_revision(labels: &std::collections::BTreeMap<String, String>) -> String {
    [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|key| labels.get(*key))
    .cloned()
    .unwrap_or_else(|| "latest".to_owned())
}

/// The limits a canary must meet at every check.
///
/// Fields added after the first release carry `#[serde(default)]`, so a status written
/// by an older agent still reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    /// Highest share of error responses (those matching `error_codes`), as a fraction
    /// (0.01 = 1%).
    pub max_error_rate: f64,
    /// Highest latency at `latency_quantile`.
    #[serde(with = "whole_millis")]
    pub max_latency: Duration,
    /// The quantile the latency gate reads, in (0, 1).
    pub latency_quantile: f64,
    /// Canary requests a check needs before it can pass.
    pub min_requests: u64,
    /// The response codes the error-rate gate counts as errors; every 5xx by default.
    #[serde(default)]
    pub error_codes: ResponseCodes,
    /// The optional "share of requests slower than a threshold" gate, read from the
    /// latency histogram's bucket at the threshold. More robust than a high quantile
    /// when a step sees few requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slow_share: Option<SlowShare>,
    /// How the gates decide: on evidence (the default) or on fixed thresholds.
    #[serde(default, skip_serializing_if = "Rule::is_default")]
    pub rule: Rule,
    /// How much worse than stable the canary may be, as a fraction: with 0.5 its share
    /// of errors (and of slow requests) may be up to 1.5 times stable's. A canary twice
    /// as far beyond (3 times stable's, with 0.5) is bad. Sequential rule only.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// The confidence every decision is made with, in (0, 1): a healthy canary is
    /// aborted, and a bad one promoted, in at most `1 - confidence` of rollouts.
    /// Sequential rule only.
    #[serde(default = "default_confidence")]
    pub confidence: f64,
}

impl Gates {
    /// Whether a check reads the latency buckets: every latency test of the sequential
    /// rule does, and the threshold rule's slow-share gate when it is on.
    pub fn reads_buckets(&self) -> bool {
        self.rule == Rule::Sequential || self.max_slow_share.is_some()
    }
}

impl Default for Gates {
    /// The gates of DESIGN.md's user contract: at most 1% errors (every 5xx), 500 ms at
    /// the 0.99 quantile, 50 requests a step, decided on evidence with a tolerance of 50%
    /// and 99% confidence.
    fn default() -> Self {
        Gates {
            max_error_rate: 0.01,
            max_latency: Duration::from_millis(500),
            latency_quantile: 0.99,
            min_requests: 50,
            error_codes: ResponseCodes::default(),
            max_slow_share: None,
            rule: Rule::default(),
            tolerance: DEFAULT_TOLERANCE,
            confidence: DEFAULT_CONFIDENCE,
        }
    }
}

/// How the gates turn measurements into a verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    /// Anytime-valid sequential tests of the canary against stable and against the
    /// SLO, on all the requests of the rollout so far ([`crate::sequential`]): a step
    /// advances on evidence of health, the canary is aborted on evidence of harm.
    #[default]
    Sequential,
    /// weir 0.1's rule, kept as the decision benchmark's baseline: each check compares
    /// the canary's error rate and latency quantile since the step began with their
    /// bounds, once `min-requests` requests were served; `failure-limit` failed checks
    /// abort.
    Threshold,
}

impl Rule {
    fn is_default(&self) -> bool {
        *self == Rule::default()
    }

    /// The annotation value: `sequential` or `threshold`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Sequential => "sequential",
            Rule::Threshold => "threshold",
        }
    }
}

/// Default relative tolerance: the canary may be up to 1.5 times as bad as stable.
pub const DEFAULT_TOLERANCE: f64 = 0.5;
/// Default confidence of every decision.
pub const DEFAULT_CONFIDENCE: f64 = 0.99;

fn default_tolerance() -> f64 {
    DEFAULT_TOLERANCE
}

fn default_confidence() -> f64 {
    DEFAULT_CONFIDENCE
}

/// The "share of requests slower than `threshold`" gate: at most `max_share` of the
/// canary's requests may take longer than `threshold`.
///
/// Histograms only know their bucket bounds, so the share is measured at the smallest
/// bucket bound at or above `threshold` (Istio's default bounds are 0.5, 1, 5, 10, 25,
/// 50, 100, 250, 500, 1000, 2500, 5000, 10000 ms and up); the measurement's metric name
/// says which bound was used (`slower-than-500ms`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlowShare {
    /// Requests slower than this count as slow. Serialized in milliseconds, with
    /// fractions (Istio's smallest bucket is 0.5 ms).
    #[serde(with = "fractional_millis")]
    pub threshold: Duration,
    /// Highest share of slow requests, as a fraction (0.05 = 5%).
    pub max_share: f64,
}

/// A pattern of HTTP response codes, as matched against Istio's `response_code` label.
///
/// A small, checked subset of regular expressions: alternatives separated by `|`, each
/// exactly three positions, each position a digit, `.` (any digit) or a class of digits
/// and digit ranges in brackets. `5..`, `5..|429`, `50[0-4]`, `5[0-9][0-9]|408`.
///
/// Anything else is refused rather than passed to Prometheus, because a pattern that
/// matches no code (`5xx`, say, which is a valid regular expression) would make every
/// error rate zero and every check pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResponseCodes(String);

/// The error-rate gate's default: every 5xx response.
pub const SERVER_ERRORS: &str = "5..";

impl ResponseCodes {
    /// The pattern as written, ready to be quoted into a `=~` matcher.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `code` (three digits) matches the pattern.
    pub fn matches(&self, code: &str) -> bool {
        let code = code.as_bytes();
        code.len() == 3
            && code.iter().all(u8::is_ascii_digit)
            && self.0.split('|').any(|alternative| {
                positions(alternative)
                    .is_some_and(|p| p.iter().zip(code).all(|(set, digit)| set.contains(digit)))
            })
    }
}

impl Default for ResponseCodes {
    fn default() -> Self {
        ResponseCodes(SERVER_ERRORS.to_string())
    }
}

/// Why a response-code pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{pattern:?} is not a response-code pattern: {problem}; write alternatives of three \
     positions separated by `|`, each position a digit, `.` or a bracketed digit class, \
     e.g. `5..`, `5..|429` or `50[0-4]`"
)]
pub struct InvalidResponseCodes {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub problem: String,
}

impl FromStr for ResponseCodes {
    type Err = InvalidResponseCodes;

    fn from_str(pattern: &str) -> Result<Self, Self::Err> {
        let invalid = |problem: String| InvalidResponseCodes {
            pattern: pattern.to_string(),
            problem,
        };
        if pattern.is_empty() {
            return Err(invalid("it is empty".to_string()));
        }
        for alternative in pattern.split('|') {
            if alternative.is_empty() {
                return Err(invalid("it has an empty alternative".to_string()));
            }
            let Some(positions) = positions(alternative) else {
                return Err(invalid(format!(
                    "{alternative:?} is not three digits, `.` or digit classes"
                )));
            };
            if positions[0].iter().all(|d| !(b'1'..=b'5').contains(d)) {
                return Err(invalid(format!(
                    "{alternative:?} matches no HTTP status code (100-599)"
                )));
            }
        }
        Ok(ResponseCodes(pattern.to_string()))
    }
}

impl TryFrom<String> for ResponseCodes {
    type Error = InvalidResponseCodes;

    fn try_from(pattern: String) -> Result<Self, Self::Error> {
        pattern.parse()
    }
}

impl From<ResponseCodes> for String {
    fn from(codes: ResponseCodes) -> String {
        codes.0
    }
}

impl fmt::Display for ResponseCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The digits each of the three positions of `alternative` accepts, or `None` when it is
/// not three positions.
fn positions(alternative: &str) -> Option<[Vec<u8>; 3]> {
    let mut sets: Vec<Vec<u8>> = Vec::with_capacity(3);
    let mut bytes = alternative.bytes();
    while let Some(b) = bytes.next() {
        let set = match b {
            b'0'..=b'9' => vec![b],
            b'.' => (b'0'..=b'9').collect(),
            b'[' => {
                let mut set = Vec::new();
                let mut class: Vec<u8> = Vec::new();
                loop {
                    match bytes.next()? {
                        b']' => break,
                        d @ (b'0'..=b'9' | b'-') => class.push(d),
                        _ => return None,
                    }
                }
                let mut i = 0;
                while i < class.len() {
                    match class.get(i..i + 3) {
                        Some([from, b'-', to]) if from.is_ascii_digit() && to.is_ascii_digit() => {
                            if from > to {
                                return None;
                            }
                            set.extend(*from..=*to);
                            i += 3;
                        }
                        _ if class[i].is_ascii_digit() => {
                            set.push(class[i]);
                            i += 1;
                        }
                        _ => return None,
                    }
                }
                if set.is_empty() {
                    return None;
                }
                set
            }
            _ => return None,
        };
        sets.push(set);
    }
    sets.try_into().ok()
}

mod whole_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod fractional_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_nanos() as f64 / 1e6)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let millis = f64::deserialize(d)?;
        Duration::try_from_secs_f64(millis / 1e3).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_code_patterns_are_checked() {
        let accepted: [(&str, &[&str], &[&str]); 7] = [
            (
                "5..",
                &["500", "503", "599"],
                &["404", "200", "50", "5000", "5a0"],
            ),
            ("5..|429", &["500", "429"], &["428", "200"]),
            ("50[0-4]", &["500", "504"], &["505", "510"]),
            ("5[0-9][0-9]|408", &["599", "408"], &["409"]),
            (
                "[45]0[0-36-9]",
                &["400", "503", "507"],
                &["404", "505", "600"],
            ),
            ("503", &["503"], &["502"]),
            ("...", &["100", "999"], &["abc"]),
        ];
        for (pattern, matching, not_matching) in accepted {
            let codes: ResponseCodes = pattern.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(codes.as_str(), pattern);
            for code in matching {
                assert!(codes.matches(code), "{pattern} should match {code}");
            }
            for code in not_matching {
                assert!(!codes.matches(code), "{pattern} should not match {code}");
            }
        }
        let refused = [
            ("", "it is empty"),
            ("5xx", "\"5xx\" is not three digits"),
            ("5..|", "an empty alternative"),
            ("5.*", "\"5.*\" is not three"),
            ("5.", "\"5.\" is not three"),
            ("5...", "\"5...\" is not three"),
            ("5[]0", "\"5[]0\" is not three"),
            ("5[9-0]0", "\"5[9-0]0\" is not three"),
            ("5[0-]0", "\"5[0-]0\" is not three"),
            ("5[a]0", "\"5[a]0\" is not three"),
            ("(5..)", "\"(5..)\" is not three"),
            ("5\"}..", "is not three"),
            ("6..", "matches no HTTP status code"),
            ("0..", "matches no HTTP status code"),
        ];
        for (pattern, problem) in refused {
            let error = pattern.parse::<ResponseCodes>().unwrap_err().to_string();
            assert!(error.contains(problem), "{pattern:?}: {error}");
            assert!(error.contains("e.g. `5..`"), "{error} names the fix");
        }
    }

    #[test]
    fn each_reporter_reports_the_version_istio_derives_for_it() {
        let labels = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        type Pod<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Pod, &str, &str); 5] = [
            (&[("version", "v2")], "v2", "v2"),
            (
                &[("app.kubernetes.io/version", "1.5.0")],
                "unknown",
                "1.5.0",
            ),
            (
                &[("version", "v2"), ("app.kubernetes.io/version", "1.5.0")],
                "v2",
                "1.5.0",
            ),
            (
                &[
                    ("version", "v2"),
                    ("app.kubernetes.io/version", "1.5.0"),
                    ("service.istio.io/canonical-revision", "canary-7"),
                ],
                "v2",
                "canary-7",
            ),
            (&[("app", "checkout")], "unknown", "latest"),
        ];
        for (pod, sidecar, waypoint) in cases {
            let pod = labels(pod);
            assert_eq!(
                Reporter::Destination.reported_version(&pod),
                sidecar,
                "{pod:?}"
            );
            assert_eq!(
                Reporter::Waypoint.reported_version(&pod),
                waypoint,
                "{pod:?}"
            );
        }
    }

    #[test]
    fn gates_written_before_the_new_fields_still_read() {
        let old = r#"{"max_error_rate":0.01,"max_latency":500,"latency_quantile":0.99,"min_requests":50}"#;
        let gates: Gates = serde_json::from_str(old).unwrap();
        assert_eq!(gates.error_codes.as_str(), "5..");
        assert_eq!(gates.max_slow_share, None);
        assert_eq!(gates.rule, Rule::Sequential);
        assert_eq!(gates.tolerance, DEFAULT_TOLERANCE);
        assert_eq!(gates.confidence, DEFAULT_CONFIDENCE);
        assert_eq!(
            serde_json::to_string(&gates).unwrap(),
            r#"{"max_error_rate":0.01,"max_latency":500,"latency_quantile":0.99,"min_requests":50,"error_codes":"5..","tolerance":0.5,"confidence":0.99}"#
        );
    }

    #[test]
    fn new_fields_round_trip_and_are_checked_when_read() {
        let gates = Gates {
            max_error_rate: 0.01,
            max_latency: Duration::from_millis(500),
            latency_quantile: 0.99,
            min_requests: 50,
            error_codes: "5..|429".parse().unwrap(),
            max_slow_share: Some(SlowShare {
                threshold: Duration::from_micros(500),
                max_share: 0.05,
            }),
            rule: Rule::Threshold,
            tolerance: 0.25,
            confidence: 0.95,
        };
        let json = serde_json::to_string(&gates).unwrap();
        assert!(
            json.contains(r#""max_slow_share":{"threshold":0.5,"max_share":0.05}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Gates>(&json).unwrap(), gates);

        let bad = json.replace("5..|429", "5xx");
        let error = serde_json::from_str::<Gates>(&bad).unwrap_err().to_string();
        assert!(
            error.contains("\"5xx\" is not a response-code pattern"),
            "{error}"
        );
    }
}
