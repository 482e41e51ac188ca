//! What the commands show about a Service, read from its annotations, and the formatting
//! they share: tables, measured values against their bounds, ages. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use serde::Serialize;
use weir_analysis::{Bound, Measurement, Rule, Verdict};

use crate::plan::{Phase, Settings, Status};
use crate::spec::{self, Weight, keys};

/// What the CLI says of the settings of a Service the agent has not recorded any for: it
/// does not know the agent's `--default-*` flags, and does not guess them.
pub const NOT_OBSERVED: &str =
    "not yet observed by the agent: settings shown once the agent records them";

/// What the CLI says of the settings of a Service whose status records none.
pub const NOT_RECORDED: &str = "none recorded in the status (misconfigured since the agent first saw it, or written by an earlier agent)";

/// One opted-in Service as the agent last recorded it.
#[derive(Clone, Debug)]
pub struct ServiceView {
    pub name: String,
    pub annotations: BTreeMap<String, String>,
    /// The agent's status annotation: `Ok(None)` before the agent's first write, `Err`
    /// when it cannot be read.
    pub status: Result<Option<Status>, String>,
    /// The canary weights in effect: during a rollout the agent's record of them, else
    /// the settings it recorded, else the Service's `weir.dev/steps`; empty when unknown
    /// (the agent's default is not known to the CLI).
    pub steps: Vec<Weight>,
    /// For writes that must not race a change made since this read.
    pub resource_version: String,
}

/// The JSON/YAML form of [`ServiceView`]: the status annotation as the agent wrote it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord<'a> {
    pub service: &'a str,
    pub namespace: &'a str,
    #[serde(skip_serializing_if = "<[Weight]>::is_empty")]
    pub steps: &'a [Weight],
    pub status: Option<&'a Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_error: Option<&'a str>,
}

impl ServiceView {
    /// Reads `service`'s annotations, the agent's status among them.
    pub fn new(service: &Service) -> ServiceView {
        let annotations = service.annotations().clone();
        let status = match annotations.get(keys::STATUS) {
            None => Ok(None),
            Some(raw) => serde_json::from_str::<Status>(raw)
                .map(Some)
                .map_err(|e| format!("{} cannot be read: {e}", keys::STATUS)),
        };
        let recorded = match &status {
            Ok(Some(status)) if !status.steps.is_empty() => Some(status.steps.clone()),
            Ok(Some(status)) => status.settings.as_ref().map(|s| s.steps.clone()),
            _ => None,
        };
        let steps = recorded.unwrap_or_else(|| {
            annotations
                .get(keys::STEPS)
                .and_then(|text| spec::parse_steps(text).ok())
                .unwrap_or_default()
        });
        ServiceView {
            name: service.name_any(),
            annotations,
            status,
            steps,
            resource_version: service.resource_version().unwrap_or_default(),
        }
    }

    /// The status, when there is a readable one.
    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref().ok().and_then(Option::as_ref)
    }

    /// The settings the agent recorded for the Service, if it has.
    pub fn settings(&self) -> Option<&Settings> {
        self.status().and_then(|s| s.settings.as_ref())
    }

    /// Why the agent's settings are not known, when they are not: never recorded, or
    /// not yet observed.
    pub fn settings_unknown(&self) -> Option<&'static str> {
        match (self.status(), self.settings()) {
            (_, Some(_)) => None,
            (Some(_), None) => Some(NOT_RECORDED),
            (None, None) => Some(NOT_OBSERVED),
        }
    }

    /// The `weir.dev/` annotations a person set (`key=value`), the status aside.
    pub fn set_annotations(&self) -> Vec<String> {
        self.annotations
            .iter()
            .filter(|(key, _)| keys::is_weir(key) && key.as_str() != keys::STATUS)
            .map(|(key, value)| format!("{key}={value}"))
            .collect()
    }

    /// For `-o json|yaml`.
    pub fn record<'a>(&'a self, namespace: &'a str) -> ServiceRecord<'a> {
        ServiceRecord {
            service: &self.name,
            namespace,
            steps: &self.steps,
            status: self.status(),
            status_error: self.status.as_ref().err().map(String::as_str),
        }
    }

    /// `Progressing`, …; `Pending` before the agent's first status; `Unreadable`.
    pub fn phase(&self) -> String {
        match &self.status {
            Ok(Some(status)) => format!("{:?}", status.phase),
            Ok(None) => "Pending".to_owned(),
            Err(_) => "Unreadable".to_owned(),
        }
    }

    /// The version being released or last aborted, while that is the news.
    pub fn canary(&self) -> Option<&str> {
        let status = self.status()?;
        match status.phase {
            Phase::Progressing | Phase::Paused | Phase::Promoting | Phase::Aborted => {
                status.canary.as_deref()
            }
            Phase::Misconfigured if status.step.is_some() => status.canary.as_deref(),
            _ => None,
        }
    }

    /// `2/3` while a step is current (`2/?` when the steps are unknown), else `-`.
    pub fn step(&self) -> String {
        match self.status().and_then(|s| s.step) {
            Some(index) if self.steps.is_empty() => format!("{}/?", index + 1),
            Some(index) => format!("{}/{}", index + 1, self.steps.len()),
            None => "-".to_owned(),
        }
    }

    /// The last check's verdict and values, or `-`.
    pub fn last_check(&self) -> String {
        self.status()
            .and_then(|s| s.last_check.as_ref())
            .map_or_else(|| "-".to_owned(), |c| verdict_summary(&c.verdict))
    }

    /// A row of the status table; with `now`, ending with the time since the last
    /// transition.
    pub fn row(&self, now: Option<Timestamp>) -> Vec<String> {
        let status = self.status();
        let mut row = vec![
            self.name.clone(),
            self.phase(),
            status
                .and_then(|s| s.stable.clone())
                .unwrap_or_else(|| "-".to_owned()),
            self.canary().unwrap_or("-").to_owned(),
            status.map_or_else(|| "-".to_owned(), |s| format!("{}%", s.weight)),
            self.step(),
            self.last_check(),
        ];
        if let Some(now) = now {
            row.push(status.map_or_else(|| "-".to_owned(), |s| age(s.last_transition_at, now)));
        }
        row
    }
}

/// The settings the agent resolved, for people: one line per concern.
pub fn settings(settings: &Settings) -> Vec<String> {
    let gates = &settings.gates;
    let steps: Vec<String> = settings.steps.iter().map(ToString::to_string).collect();
    let mut limits = vec![
        format!(
            "errors ≤ {} (codes {})",
            percent(gates.max_error_rate),
            gates.error_codes
        ),
        format!(
            "latency ≤ {} at {}",
            duration_ms(gates.max_latency),
            gates.latency_quantile
        ),
    ];
    if let Some(slow) = &gates.max_slow_share {
        limits.push(format!(
            "slower than {} ≤ {}",
            duration_ms(slow.threshold),
            percent(slow.max_share)
        ));
    }
    limits.push(format!("at least {} requests a step", gates.min_requests));
    let judge = match gates.rule {
        Rule::Sequential => format!(
            "on evidence (sequential), tolerance {} of stable, confidence {}; a step waits at most {} for evidence after its interval",
            percent(gates.tolerance),
            percent(gates.confidence),
            duration(settings.decision_timeout)
        ),
        Rule::Threshold => "on fixed limits at each check (threshold)".to_owned(),
    };
    let mut lines = vec![
        format!(
            "steps {}, each held at least {}; checks every {}",
            steps.join(","),
            duration(settings.step_interval),
            duration(settings.check_interval)
        ),
        format!("gates: {}", limits.join(", ")),
        format!("decided {judge}"),
        format!(
            "aborts at {} failed check{}, or after {} without conclusive data",
            settings.failure_limit,
            if settings.failure_limit == 1 { "" } else { "s" },
            duration(settings.no_data_timeout)
        ),
        format!(
            "stable subset {}, canary subset {}, versions named by the label {}",
            settings.stable_subset, settings.canary_subset, settings.version_label
        ),
    ];
    if let Some(metrics) = &settings.metrics {
        lines.push(format!("custom metrics from the ConfigMap {metrics}"));
    }
    lines.push(match settings.scale_down_delay {
        Some(delay) => format!(
            "the superseded version is scaled to zero {} after a promotion",
            duration(delay)
        ),
        None => "the superseded version keeps its replicas (scale-down-delay never)".to_owned(),
    });
    lines
}

/// `2%`, `0.5%`, `99.9%`: a fraction as people write a percentage.
pub fn percent(fraction: f64) -> String {
    format!("{}%", (fraction * 100_000.0).round() / 1000.0)
}

/// A latency bound, to the millisecond: `500ms`, `1s 500ms`.
fn duration_ms(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// The status table's header, matching [`ServiceView::row`].
pub fn header(with_age: bool) -> Vec<&'static str> {
    let mut header = vec![
        "SERVICE",
        "PHASE",
        "STABLE",
        "CANARY",
        "WEIGHT",
        "STEP",
        "LAST CHECK",
    ];
    if with_age {
        header.push("AGE");
    }
    header
}

/// Columns aligned by padding, two spaces apart; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < columns {
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `pass: requests 120 ≥ 50, errors 0.00% ≤ 1.00%, latency 20ms ≤ 500ms`, with the failed
/// gates or the inconclusive reason after the verdict.
pub fn verdict_summary(verdict: &Verdict) -> String {
    let head = match verdict {
        Verdict::Pass { .. } => "pass".to_owned(),
        Verdict::Fail { failed, .. } => format!("fail ({})", failed.join(", ")),
        Verdict::Inconclusive { reason, .. } => format!("inconclusive ({})", kebab(reason)),
    };
    let values: Vec<String> = verdict.measurements().iter().map(measurement).collect();
    if values.is_empty() {
        head
    } else {
        format!("{head}: {}", values.join(", "))
    }
}

/// `errors 20.00% > 1.00%`: the canary's value against its bound, the comparison showing
/// whether it is met.
pub fn measurement(m: &Measurement) -> String {
    let name = short_name(&m.metric);
    let value = value(&m.metric, m.canary);
    match &m.bound {
        Some(bound) => format!(
            "{name} {value} {} {}",
            comparison(m.canary, bound),
            bound_value(&m.metric, bound)
        ),
        None => format!("{name} {value}"),
    }
}

/// `≤`/`≥` when the canary's value meets the bound, `>`/`<` when it misses it, `vs`
/// when there is no value.
pub fn comparison(canary: Option<f64>, bound: &Bound) -> &'static str {
    match (canary, bound) {
        (None, _) => "vs",
        (Some(v), Bound::Max(max)) if v <= *max => "≤",
        (Some(_), Bound::Max(_)) => ">",
        (Some(v), Bound::Min(min)) if v >= *min => "≥",
        (Some(_), Bound::Min(_)) => "<",
    }
}

/// The bound's limit, formatted like the metric's values.
pub fn bound_value(metric: &str, bound: &Bound) -> String {
    let (Bound::Max(limit) | Bound::Min(limit)) = bound;
    value(metric, Some(*limit))
}

/// A metric's value in its unit: `20.00%`, `20ms`, `120`; `none` when missing.
pub fn value(metric: &str, v: Option<f64>) -> String {
    weir_analysis::format_value(metric, v)
}

fn short_name(metric: &str) -> &str {
    match metric {
        "request-count" => "requests",
        "error-rate" => "errors",
        other => other,
    }
}

/// A serde enum's name as it is written in JSON (`too-few-requests`).
pub fn kebab(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// kubectl's style of age: `45s`, `3m20s`, `47m`, `5h`, `3d`.
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let seconds = now.as_second().saturating_sub(since.as_second()).max(0);
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86_400);
    if seconds < 120 {
        format!("{seconds}s")
    } else if m < 10 {
        match seconds % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 48 {
        format!("{h}h")
    } else {
        format!("{d}d")
    }
}

/// A duration for people, to the second: `1m 30s`.
pub fn duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// `later - earlier`, zero when `later` is not later.
pub fn between(earlier: Timestamp, later: Timestamp) -> Duration {
    Duration::try_from(later.duration_since(earlier)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use weir_analysis::InconclusiveReason;

    use super::*;

    fn measurements(requests: f64, error_rate: f64, latency: f64) -> Vec<Measurement> {
        vec![
            Measurement {
                metric: "request-count".into(),
                canary: Some(requests),
                stable: Some(1000.0),
                bound: Some(Bound::Min(50.0)),
                evidence: None,
            },
            Measurement {
                metric: "error-rate".into(),
                canary: Some(error_rate),
                stable: Some(0.0),
                bound: Some(Bound::Max(0.01)),
                evidence: None,
            },
            Measurement {
                metric: "latency".into(),
                canary: Some(latency),
                stable: None,
                bound: Some(Bound::Max(500.0)),
                evidence: None,
            },
        ]
    }

    #[test]
    fn verdicts_read_as_values_against_bounds() {
        let pass = Verdict::Pass {
            measurements: measurements(120.0, 0.0, 20.0),
        };
        assert_eq!(
            verdict_summary(&pass),
            "pass: requests 120 ≥ 50, errors 0.00% ≤ 1.00%, latency 20ms ≤ 500ms"
        );
        let fail = Verdict::Fail {
            failed: vec!["error-rate".into()],
            measurements: measurements(118.0, 0.2, 20.0),
            conclusive: false,
        };
        assert_eq!(
            verdict_summary(&fail),
            "fail (error-rate): requests 118 ≥ 50, errors 20.00% > 1.00%, latency 20ms ≤ 500ms"
        );
        let mut few = measurements(8.0, 0.0, 20.0);
        few[2].canary = None;
        let inconclusive = Verdict::Inconclusive {
            reason: InconclusiveReason::TooFewRequests,
            detail: String::new(),
            measurements: few,
        };
        assert_eq!(
            verdict_summary(&inconclusive),
            "inconclusive (too-few-requests): requests 8 < 50, errors 0.00% ≤ 1.00%, latency none vs 500ms"
        );
    }

    #[test]
    fn custom_metric_values_drop_trailing_zeros() {
        assert_eq!(value("apdex", Some(0.95)), "0.95");
        assert_eq!(value("apdex", Some(3.0)), "3");
        assert_eq!(value("apdex", Some(0.0)), "0");
        assert_eq!(value("apdex", None), "none");
        assert_eq!(value("slower-than-500ms", Some(0.015)), "1.50%");
    }

    #[test]
    fn tables_align_columns_and_do_not_pad_the_last() {
        let rows = vec![
            vec!["checkout".to_owned(), "Idle".to_owned(), "-".to_owned()],
            vec![
                "db".to_owned(),
                "Progressing".to_owned(),
                "pass: x".to_owned(),
            ],
        ];
        assert_eq!(
            table(&["SERVICE", "PHASE", "LAST"], &rows),
            "SERVICE   PHASE        LAST\n\
             checkout  Idle         -\n\
             db        Progressing  pass: x\n"
        );
    }

    #[test]
    fn settings_read_as_people_write_them() {
        let annotations = BTreeMap::from([
            (keys::ENABLED.to_owned(), "true".to_owned()),
            (keys::MAX_ERROR_RATE.to_owned(), "0.5%".to_owned()),
            (keys::MAX_SLOW_SHARE.to_owned(), "5%".to_owned()),
            (keys::SLOW_THRESHOLD.to_owned(), "1.5s".to_owned()),
            (keys::FAILURE_LIMIT.to_owned(), "1".to_owned()),
            (keys::SCALE_DOWN_DELAY.to_owned(), "never".to_owned()),
            (keys::METRICS.to_owned(), "checkout-metrics".to_owned()),
        ]);
        let defaults = crate::spec::Defaults {
            step_interval: Duration::from_secs(120),
            ..Default::default()
        };
        let spec = crate::spec::parse("checkout", &annotations, &defaults).unwrap();
        let lines = settings(&Settings::of(&spec));
        assert_eq!(
            lines,
            [
                "steps 10,25,50, each held at least 2m; checks every 15s",
                "gates: errors ≤ 0.5% (codes 5..), latency ≤ 500ms at 0.99, slower than 1s 500ms ≤ 5%, at least 50 requests a step",
                "decided on evidence (sequential), tolerance 50% of stable, confidence 99%; a step waits at most 2h for evidence after its interval",
                "aborts at 1 failed check, or after 10m without conclusive data",
                "stable subset stable, canary subset canary, versions named by the label version",
                "custom metrics from the ConfigMap checkout-metrics",
                "the superseded version keeps its replicas (scale-down-delay never)",
            ]
        );
        assert_eq!(percent(0.999), "99.9%");
        assert_eq!(percent(0.0001), "0.01%");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let t = |s: i64| Timestamp::from_second(1_700_000_000 + s).unwrap();
        assert_eq!(age(t(0), t(45)), "45s");
        assert_eq!(age(t(0), t(200)), "3m20s");
        assert_eq!(age(t(0), t(47 * 60)), "47m");
        assert_eq!(age(t(0), t(5 * 3600)), "5h");
        assert_eq!(age(t(0), t(3 * 86_400)), "3d");
        assert_eq!(age(t(10), t(0)), "0s", "clock skew is not negative");
    }
}
