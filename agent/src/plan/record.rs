//! What the status records for its readers besides the rollout itself: the settings the
//! agent resolved, and how the last rollout ended. Readers (the metrics, the CLI) take
//! both from here rather than derive them again.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use weir_analysis::{Gates, Verdict};

use crate::spec::{Defaults, RolloutSpec, Weight};

/// Every setting the agent resolved for a Service: its annotations, else the agent's
/// `--default-*` flags. The optional routing annotations (`virtual-service`, `route`,
/// `destination-rule`) are not settings: they name objects that are resolved anew at
/// every reconcile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub stable_subset: String,
    pub canary_subset: String,
    pub version_label: String,
    pub steps: Vec<Weight>,
    #[serde(with = "text")]
    pub step_interval: Duration,
    #[serde(with = "text")]
    pub check_interval: Duration,
    /// The limits every check holds the canary to, and how the judge decides.
    pub gates: Gates,
    pub failure_limit: u32,
    #[serde(with = "text")]
    pub no_data_timeout: Duration,
    #[serde(with = "text")]
    pub decision_timeout: Duration,
    /// `None`: never.
    #[serde(with = "text_or_never")]
    pub scale_down_delay: Option<Duration>,
    /// The ConfigMap of custom metric templates, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

impl Settings {
    /// The settings `spec` resolved.
    pub fn of(spec: &RolloutSpec) -> Settings {
        Settings {
            stable_subset: spec.stable_subset.clone(),
            canary_subset: spec.canary_subset.clone(),
            version_label: spec.version_label.clone(),
            steps: spec.steps.clone(),
            step_interval: spec.step_interval,
            check_interval: spec.check_interval,
            gates: spec.gates.clone(),
            failure_limit: spec.failure_limit,
            no_data_timeout: spec.no_data_timeout,
            decision_timeout: spec.decision_timeout,
            scale_down_delay: spec.scale_down_delay,
            metrics: spec.metrics_config_map.clone(),
        }
    }

    /// How long a step holds at least, and how often it is checked.
    pub fn intervals(&self) -> Intervals {
        Intervals {
            step: self.step_interval,
            check: self.check_interval,
        }
    }

    /// These settings as the defaults of every optional annotation: reading the
    /// Service's annotations over them gives what the agent resolves, for a reader that
    /// does not know the agent's flags. An annotation changed since the agent recorded
    /// them wins, as it will at the agent's next reconcile.
    pub fn as_defaults(&self) -> Defaults {
        Defaults {
            stable_subset: self.stable_subset.clone(),
            canary_subset: self.canary_subset.clone(),
            version_label: self.version_label.clone(),
            steps: self.steps.clone(),
            step_interval: self.step_interval,
            check_interval: self.check_interval,
            gates: self.gates.clone(),
            failure_limit: self.failure_limit,
            no_data_timeout: self.no_data_timeout,
            decision_timeout: self.decision_timeout,
            scale_down_delay: self.scale_down_delay,
        }
    }
}

/// The timings of a step: how long it holds at least, and how often it is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intervals {
    pub step: Duration,
    pub check: Duration,
}

impl Intervals {
    /// The intervals `spec` resolved.
    pub fn of(spec: &RolloutSpec) -> Intervals {
        Intervals {
            step: spec.step_interval,
            check: spec.check_interval,
        }
    }
}

/// How a rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The canary became the stable version (after its last step, or by a person).
    Promoted,
    /// The canary's traffic went back to stable, and the version is remembered as failed.
    Aborted,
    /// The rollout stopped without either: the canary's Deployment went away.
    Abandoned,
}

/// The end of one rollout, as the planner decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ended {
    /// The version that was released.
    pub version: String,
    pub outcome: Outcome,
    /// Why, for people.
    pub reason: String,
    /// When the rollout began, if the status knew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    pub at: Timestamp,
}

impl Ended {
    /// From the rollout's start to its end; zero when the start is unknown.
    pub fn duration(&self) -> Duration {
        self.started_at
            .and_then(|start| Duration::try_from(self.at.duration_since(start)).ok())
            .unwrap_or_default()
    }
}

/// The most checks a rollout's history keeps (see [`remember`]).
pub const MAX_HISTORY: usize = 32;

/// One check of the rollout in progress, kept small for the status: when, at which canary
/// weight, the verdict, and each metric's canary and stable values to four significant
/// digits. What `weir dashboard` charts over the rollout; the bounds are the last
/// check's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckPoint {
    pub at: Timestamp,
    pub weight: Weight,
    /// `pass`, `fail` or `inconclusive`.
    pub verdict: String,
    /// Per metric: `[canary, stable]`; `null` where a version had no (finite) value.
    pub values: BTreeMap<String, [Option<f64>; 2]>,
}

impl CheckPoint {
    /// The point of `verdict`, reached at `at` with the canary at `weight`.
    pub fn of(at: Timestamp, weight: Weight, verdict: &Verdict) -> CheckPoint {
        CheckPoint {
            at,
            weight,
            verdict: verdict.kind().to_owned(),
            values: verdict
                .measurements()
                .iter()
                .map(|m| (m.metric.clone(), [rounded(m.canary), rounded(m.stable)]))
                .collect(),
        }
    }
}

/// `value` to four significant digits; `None` for no value or a non-finite one (JSON
/// has no NaN).
fn rounded(value: Option<f64>) -> Option<f64> {
    let v = value.filter(|v| v.is_finite())?;
    if v == 0.0 {
        return Some(0.0);
    }
    let digits = 3 - v.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits.clamp(-300, 300));
    let r = (v * scale).round() / scale;
    Some(if r.is_finite() { r } else { v })
}

/// Appends `point` to `history`. A full history first drops every second point of its
/// older half, so that it keeps covering the whole rollout, more sparsely the older it is,
/// and the status stays within a few kilobytes however long the rollout runs.
pub fn remember(history: &mut Vec<CheckPoint>, point: CheckPoint) {
    if history.len() >= MAX_HISTORY {
        let older = history.len() / 2;
        let mut i = 0;
        history.retain(|_| {
            let keep = i >= older || i % 2 == 0;
            i += 1;
            keep
        });
    }
    history.push(point);
}

/// A duration as people write it (`2m`, `1h 30m`, `500ms`), read back exactly.
mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// [`text`], or `never` for `None`.
mod text_or_never {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    const NEVER: &str = "never";

    pub fn serialize<S: Serializer>(
        d: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => serializer.collect_str(&humantime::format_duration(*d)),
            None => serializer.serialize_str(NEVER),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == NEVER {
            return Ok(None);
        }
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_four_significant_digits_and_no_nan() {
        assert_eq!(rounded(Some(0.012_345_678)), Some(0.01235));
        assert_eq!(rounded(Some(4552.222)), Some(4552.0));
        assert_eq!(rounded(Some(123_456.0)), Some(123_500.0));
        assert_eq!(rounded(Some(0.0)), Some(0.0));
        assert_eq!(rounded(Some(f64::NAN)), None);
        assert_eq!(rounded(Some(f64::INFINITY)), None);
        assert_eq!(rounded(None), None);
        for v in [1e-300, 5e-324, 1.7e308, -0.5] {
            let r = rounded(Some(v)).unwrap();
            assert!(r.is_finite(), "{v} -> {r}");
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<f64>(&json).unwrap(), r);
        }
    }
}
