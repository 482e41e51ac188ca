//! What the status records for its readers besides the rollout itself: the settings the
//! agent resolved, and how the last rollout ended. Readers (the metrics, the CLI) take
//! both from here rather than derive them again.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use weir_analysis::Gates;

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
