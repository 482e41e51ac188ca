//! The rollout state machine: (spec, observed state, verdict, now) → actions. Pure.
//!
//! The controller reads the cluster into an [`Observed`], asks [`check_due`] whether the
//! gates must be evaluated now, evaluates them if so, and hands everything to [`plan`].
//! The resulting [`Plan`] lists the writes in the order they must happen; the controller
//! performs them and stops at the first that fails (the next reconcile re-plans).

use std::time::Duration;

use jiff::Timestamp;
use serde::de::{DeserializeOwned, Error as _, Unexpected};
use serde::{Deserialize, Deserializer, Serialize};
use weir_analysis::Verdict;
use weir_analysis::sequential::RolloutEvidence;

use crate::spec::{MAX_STEPS, Weight};

pub mod record;
mod rollout;
#[cfg(test)]
mod tests;

pub use record::{CheckPoint, Ended, Intervals, MAX_HISTORY, Outcome, Settings};

pub use rollout::{add, check_due, misconfigured, next_check_at, plan};

/// One version of the Service: a Deployment whose pod template matches the Service
/// selector, named by the value of its version label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The version label's value.
    pub name: String,
    /// The Deployment's name.
    pub deployment: String,
    /// The identity of the Deployment's pod template (`t2:…`): a change means a new
    /// build. See `controller::template` for what it covers.
    pub template: String,
    /// The same template as agents before the `t2:` identity hashed it, to recognise
    /// what they recorded in a status (see [`Version::built_as`]).
    pub legacy_template: String,
    /// The Deployment reports the `Available` condition.
    pub available: bool,
    /// The Deployment's creation time: the newest candidate wins.
    pub created: Timestamp,
    /// The `destination_version` the mesh reports for this version's requests, by the
    /// agent's mode ([`weir_analysis::Reporter::reported_version`]): what the gates query.
    pub reported: String,
    /// The Deployment's `spec.replicas` (`None`: unset, which means 1).
    pub replicas: Option<i32>,
    /// The Deployment's resourceVersion when it was read: a scale-down is guarded by
    /// it, so that it never lands on a Deployment that changed since (re-labelled into
    /// another version, say).
    pub resource_version: Option<String>,
}

impl Version {
    /// Whether `recorded`, a template identity from a status, names this build. A
    /// status written by an earlier agent holds the legacy hash instead: it is compared
    /// with that, so that upgrading the agent neither restarts an in-flight canary nor
    /// releases an aborted version again. The two formats cannot be confused: only the
    /// identity has a prefix.
    pub fn built_as(&self, recorded: &str) -> bool {
        recorded == self.template || recorded == self.legacy_template
    }
}

/// The live weights of the managed route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub stable: Weight,
    /// 0 when the route has no canary destination yet.
    pub canary: Weight,
}

/// The versions the two subsets select, from the DestinationRule's subset labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subsets {
    /// `None` when the stable subset does not name a version yet (first start).
    pub stable: Option<String>,
    pub canary: Option<String>,
}

/// Controls written by a person or the CLI. Each names the version it is meant for, so
/// that a stale control is harmless.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Controls {
    pub pause: bool,
    pub promote: Option<String>,
    pub abort: Option<String>,
    pub retry: Option<String>,
}

/// Everything the planner may look at, read from the cluster in one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The Service's versions, or `None` while the Deployment cache has not finished
    /// its first list: "not observed yet", which the planner never reads as "gone"
    /// (DESIGN.md, invariant 7). It plans nothing until they are observed.
    pub versions: Option<Vec<Version>>,
    pub traffic: Traffic,
    pub subsets: Subsets,
    /// The agent's own status annotation, if any.
    pub status: Option<Status>,
    pub controls: Controls,
    /// When this agent last evaluated the gates of the current step. Kept in memory
    /// only (writing it on every check would cost an API write per check), so `None`
    /// after a restart: the restarted agent then checks at once.
    pub last_check_at: Option<Timestamp>,
}

/// Where a Service's release is. Persisted in the `weir.dev/status` annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Idle,
    Progressing,
    Paused,
    Promoting,
    Aborted,
    Misconfigured,
}

/// A version that was aborted, with the pod template it had: it is not released again
/// until its template changes or someone retries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedVersion {
    pub version: String,
    pub template: String,
}

/// A version that a promotion replaced as stable, and when: its Deployment is scaled to
/// zero once the Service's `scale-down-delay` has passed since `at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superseded {
    pub version: String,
    /// Its Deployment's name at the promotion, for people: the scale-down targets the
    /// Deployment observed for `version` when it is due.
    pub deployment: String,
    pub at: Timestamp,
}

/// The last verdict, as recorded in the status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub at: Timestamp,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The agent's record of a Service's release: the write-ahead intent that the route and
/// subsets converge to, and everything a restarted agent needs to resume exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub phase: Phase,
    /// The version the stable subset selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    /// The version being released (or last aborted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// The canary's pod template hash when its rollout began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_template: Option<String>,
    /// Index into the spec's steps (0-based) while progressing.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "step"
    )]
    pub step: Option<usize>,
    /// The canary weights `step` indexes, as the agent resolved them (the Service's
    /// annotation or the agent's default), while a rollout is in progress: readers of
    /// the status need not know the agent's flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Weight>,
    /// The canary weight the route is meant to have.
    #[serde(deserialize_with = "weight")]
    pub weight: Weight,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Timestamp>,
    /// Failed checks so far in this rollout.
    #[serde(default)]
    pub failed_checks: u32,
    /// When the current run of inconclusive checks began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<CheckRecord>,
    /// What the sequential tests carry over from the rollout's completed steps.
    #[serde(default, skip_serializing_if = "RolloutEvidence::is_empty")]
    pub evidence: RolloutEvidence,
    /// What the mesh's metrics call the canary and stable versions while a rollout is
    /// in progress (`destination_version`), when that differs from their names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_as: Option<ReportedAs>,
    /// Aborted versions not to be retried until their template changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedVersion>,
    /// The versions promotions replaced, until each one's Deployment has been scaled to
    /// zero (after the Service's `scale-down-delay`) or it is in use again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<Superseded>,
    /// What is happening, for people.
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_started_at: Option<Timestamp>,
    pub last_transition_at: Timestamp,
    /// Every setting the agent resolved for the Service at its last reconcile (its
    /// annotations, else the agent's defaults), so that readers of the status need not
    /// know the agent's flags. `None` in a status written by an earlier agent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "record"
    )]
    pub settings: Option<Settings>,
    /// How the last rollout ended, as the planner decided it: the one account of an
    /// outcome that the metrics, `weir watch` and people read. `None` before the first
    /// rollout ends (and in a status written by an earlier agent).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "record"
    )]
    pub ended: Option<Ended>,
    /// The checks of the rollout in progress, oldest first: at most [`MAX_HISTORY`],
    /// thinned as it grows (see [`record::remember`]). Emptied when the rollout ends, so
    /// that the statuses of idle Services stay small.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "history"
    )]
    pub history: Vec<CheckPoint>,
}

// A number the agent could not have written makes the whole status unreadable (read as
// absent: the planner starts over from Idle), rather than reaching arithmetic that
// assumes it: a weight the route cannot take, a step index past any spec's steps.

/// A record for readers (the settings, the last outcome): one that does not read (written
/// by a later agent, or edited by hand, say) is dropped and written again, never a reason
/// to distrust the rollout the rest of the status records. Only a record exactly as the
/// agent writes it reads, so that a status reads back as it was written.
fn record<'de, D: Deserializer<'de>, T: DeserializeOwned + Serialize>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value::<T>(value.clone())
        .ok()
        .filter(|record| serde_json::to_value(record).is_ok_and(|written| written == value)))
}

/// A history as the agent writes it, else none: like [`record`], and at most
/// [`MAX_HISTORY`] points.
fn history<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<CheckPoint>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value::<Vec<CheckPoint>>(value.clone())
        .ok()
        .filter(|points| points.len() <= MAX_HISTORY)
        .filter(|points| serde_json::to_value(points).is_ok_and(|written| written == value))
        .unwrap_or_default())
}

/// A weight the agent could have written, 0..=100.
fn weight<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Weight, D::Error> {
    let weight = Weight::deserialize(deserializer)?;
    if weight > 100 {
        return Err(D::Error::invalid_value(
            Unexpected::Unsigned(weight.into()),
            &"a weight in 0..=100",
        ));
    }
    Ok(weight)
}

/// A step index the agent could have written: below [`MAX_STEPS`].
fn step<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    let step = Option::<usize>::deserialize(deserializer)?;
    if let Some(index) = step
        && index >= MAX_STEPS
    {
        return Err(D::Error::invalid_value(
            Unexpected::Unsigned(index as u64),
            &format!("a step index below {MAX_STEPS}").as_str(),
        ));
    }
    Ok(step)
}

impl Status {
    /// A fresh status for a Service seen for the first time.
    pub fn new(now: Timestamp) -> Status {
        Status {
            phase: Phase::Idle,
            stable: None,
            canary: None,
            canary_template: None,
            step: None,
            steps: Vec::new(),
            weight: 0,
            step_started_at: None,
            failed_checks: 0,
            inconclusive_since: None,
            last_check: None,
            evidence: RolloutEvidence::default(),
            reported_as: None,
            failed: Vec::new(),
            superseded: Vec::new(),
            message: String::new(),
            rollout_started_at: None,
            last_transition_at: now,
            settings: None,
            ended: None,
            history: Vec::new(),
        }
    }

    /// Whether a rollout is under way: a canary is being released, held, or promoted.
    pub fn in_rollout(&self) -> bool {
        matches!(
            self.phase,
            Phase::Progressing | Phase::Paused | Phase::Promoting
        )
    }

    /// Whether this status could have been written by the agent: a rollout in progress
    /// names its canary, and its weight is its step's (of the steps it records, or else
    /// of `steps`, the spec's); otherwise the canary weight is 0. A status that fails this
    /// was edited by hand or corrupted, and the planner treats it as absent rather than
    /// let it set a weight.
    pub fn is_coherent(&self, steps: &[Weight]) -> bool {
        match self.phase {
            Phase::Progressing | Phase::Paused => {
                let steps = if self.steps.is_empty() {
                    steps
                } else {
                    &self.steps
                };
                self.canary.is_some()
                    && self
                        .step
                        .and_then(|i| steps.get(i))
                        .is_some_and(|w| *w == self.weight)
            }
            Phase::Promoting => self.canary.is_some() && self.weight <= 100,
            Phase::Idle | Phase::Aborted | Phase::Misconfigured => self.weight <= 100,
        }
    }

    /// Whether this build of `version` was aborted and not retried since.
    pub fn has_failed(&self, version: &Version) -> bool {
        self.failed
            .iter()
            .any(|f| f.version == version.name && version.built_as(&f.template))
    }
}

/// The `destination_version` values the gates query for a rollout's two versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedAs {
    pub canary: String,
    pub stable: String,
}

/// Which of the two subsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subset {
    Stable,
    Canary,
}

/// Kubernetes Event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// A Kubernetes Event to emit on the Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    /// CamelCase reason, one of [`reason`].
    pub reason: String,
    pub message: String,
}

/// The reason of every Event the planner emits: named once, because notifications are
/// derived from them (`crate::notify`).
pub mod reason {
    pub const STABLE_ADOPTED: &str = "StableAdopted";
    pub const ROLLOUT_STARTED: &str = "RolloutStarted";
    pub const WEIGHT_CHANGED: &str = "WeightChanged";
    pub const CHECK_FAILED: &str = "CheckFailed";
    pub const CHECK_INCONCLUSIVE: &str = "CheckInconclusive";
    pub const PROMOTED: &str = "Promoted";
    pub const PROMOTED_BY_PERSON: &str = "PromotedByPerson";
    pub const ABORTED: &str = "Aborted";
    pub const PAUSED: &str = "Paused";
    pub const RESUMED: &str = "Resumed";
    pub const RETRYING: &str = "Retrying";
    pub const IGNORED_CONTROL: &str = "IgnoredControl";
    pub const MISCONFIGURED: &str = "Misconfigured";
    pub const RECONFIGURED: &str = "Reconfigured";
    pub const CANARY_GONE: &str = "CanaryGone";
    pub const SCALED_DOWN: &str = "ScaledDown";
    pub const SCALE_DOWN_FAILED: &str = "ScaleDownFailed";
}

/// One write, in the order the plan lists them.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write the status annotation (and remove the named consumed controls). Boxed: a
    /// status is large next to the other actions.
    WriteStatus {
        status: Box<Status>,
        consumed: Vec<&'static str>,
    },
    /// Set the managed route's weights. `stable + canary == 100`.
    SetWeights(Traffic),
    /// Point a subset at a version by its version label.
    SetSubsetVersion {
        subset: Subset,
        version: String,
    },
    /// Scale a superseded version's Deployment to zero replicas through its `scale`
    /// subresource, guarded by the resourceVersion it was observed at. Never the stable
    /// version, nor one a subset or the status names. Best effort: a refused scale-down
    /// is reported and retried at a later reconcile, and never stops the plan.
    ScaleDown {
        version: String,
        deployment: String,
        resource_version: Option<String>,
    },
    Emit(Event),
}

/// What the planner decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// When to reconcile again at the latest, absent any watch event.
    pub requeue_after: Option<Duration>,
}

impl Plan {
    /// The status the plan writes last, if it writes one.
    pub fn written_status(&self) -> Option<&Status> {
        self.actions.iter().rev().find_map(|action| match action {
            Action::WriteStatus { status, .. } => Some(status.as_ref()),
            _ => None,
        })
    }
}

/// What the planner decided for a misconfigured Service: the status that records why,
/// and the Event that tells people. It has no place for a mesh write: a misconfigured
/// Service's traffic does not change, and there is no resolved route to write to.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub status: Box<Status>,
    pub event: Event,
}

/// A request to evaluate the gates now.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckRequest {
    pub canary: String,
    pub stable: String,
    /// The window starts here: when the current step began.
    pub since: Timestamp,
    /// The canary weight that passing this step leads to: the next step's, or 100 at the
    /// last step (the promotion). The evidence a step needs grows with it.
    pub next_weight: Weight,
    /// The rollout's evidence from its completed steps.
    pub earlier: RolloutEvidence,
}
