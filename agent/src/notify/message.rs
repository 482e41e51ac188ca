//! What a notification says: one pure function from a transition's Event and the status
//! written with it, so that notifications never re-derive the state machine.

use jiff::Timestamp;
use serde::Serialize;
use weir_analysis::{Bound, Measurement, Verdict, format_value};

use crate::plan::{CheckRecord, Event, EventType, Phase, Status, Traffic, reason};

/// The version of the payload's shape, sent as `schema`.
pub const SCHEMA: &str = "weir.dev/notification/v1";

/// The transitions people are notified of. The others (a check that failed but did not
/// abort, a person's retry, an ignored control, …) stay Kubernetes Events only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A version's rollout began at its first step.
    Started,
    /// A step passed: the canary weight went up.
    Advanced,
    /// A person paused the rollout.
    Paused,
    /// A check could not conclude (no data, a query error, …): the step holds, and
    /// aborts if that lasts `no-data-timeout`. Not the quiet wait for evidence.
    Inconclusive,
    /// The canary's traffic went back to stable.
    Aborted,
    /// The canary became the stable version.
    Promoted,
    /// The Service's configuration is invalid: no traffic moves until it is fixed.
    Misconfigured,
}

impl Kind {
    /// The kind of notification an Event with `reason` makes, if any.
    pub fn of(event_reason: &str) -> Option<Kind> {
        Some(match event_reason {
            reason::ROLLOUT_STARTED => Kind::Started,
            reason::WEIGHT_CHANGED => Kind::Advanced,
            reason::PAUSED => Kind::Paused,
            reason::CHECK_INCONCLUSIVE => Kind::Inconclusive,
            reason::ABORTED => Kind::Aborted,
            reason::PROMOTED => Kind::Promoted,
            reason::MISCONFIGURED => Kind::Misconfigured,
            _ => return None,
        })
    }
}

/// How urgent: a Warning Event is a `warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
}

/// Where a rollout is among its steps, from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StepPosition {
    pub number: usize,
    pub of: usize,
}

/// One notification, as the generic webhook receives it (JSON, camelCase keys, every
/// key present, `null` when it has no value). docs/notifications.md documents it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    pub kind: Kind,
    /// The reason of the Kubernetes Event it comes with (`RolloutStarted`, …).
    pub reason: String,
    pub severity: Severity,
    pub namespace: String,
    pub service: String,
    /// The version it is about: the canary, or the version just promoted.
    pub version: Option<String>,
    /// The version the stable subset selects (after a promotion, the promoted one).
    pub stable: Option<String>,
    /// The version being released or last aborted; `null` after a promotion.
    pub canary: Option<String>,
    /// The route's weights as the status intends them.
    pub weights: Traffic,
    /// Where the rollout is, while one is in progress.
    pub step: Option<StepPosition>,
    pub phase: Phase,
    /// One line for people: what happened, to which version, and why.
    pub summary: String,
    /// The Event's message, in full.
    pub message: String,
    /// The gates whose failure aborted the canary, with their measured values (canary,
    /// stable, bound); empty unless the last check failed and the canary was aborted.
    pub failed_gates: Vec<Measurement>,
    /// The last check of the rollout, as the status records it.
    pub last_check: Option<CheckRecord>,
    /// The command that says more.
    pub explain: String,
    /// A link for more (a dashboard), when the agent has `--notify-link`.
    pub link: Option<String>,
    /// When the transition happened.
    pub at: Timestamp,
}

/// The notification of `event`, emitted on Service `service` of `namespace` with
/// `status` written; `None` for an Event that is no transition people are notified of.
pub fn notification(
    namespace: &str,
    service: &str,
    event: &Event,
    status: &Status,
) -> Option<Notification> {
    let kind = Kind::of(&event.reason)?;
    let version = match kind {
        Kind::Promoted => status.stable.clone(),
        _ => status.canary.clone(),
    };
    let step = status.step.and_then(|index| {
        (index < status.steps.len()).then_some(StepPosition {
            number: index + 1,
            of: status.steps.len(),
        })
    });
    let failed_gates = match (kind, &status.last_check) {
        (
            Kind::Aborted,
            Some(CheckRecord {
                verdict:
                    Verdict::Fail {
                        failed,
                        measurements,
                        ..
                    },
                ..
            }),
        ) => measurements
            .iter()
            .filter(|m| failed.contains(&m.metric))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let mut notification = Notification {
        schema: SCHEMA,
        kind,
        reason: event.reason.clone(),
        severity: match event.type_ {
            EventType::Normal => Severity::Info,
            EventType::Warning => Severity::Warning,
        },
        namespace: namespace.to_owned(),
        service: service.to_owned(),
        version,
        stable: status.stable.clone(),
        canary: status.canary.clone(),
        weights: Traffic {
            stable: 100u8.saturating_sub(status.weight),
            canary: status.weight,
        },
        step,
        phase: status.phase,
        summary: String::new(),
        message: event.message.clone(),
        failed_gates,
        last_check: status.last_check.clone(),
        explain: format!("weir explain {service} -n {namespace}"),
        link: None,
        at: status.last_transition_at,
    };
    notification.summary = summary(&notification, status);
    Some(notification)
}

/// The longest part of a message a summary quotes.
const QUOTED: usize = 200;

/// `shop/checkout: aborted v3 on error-rate 20.00% (stable 0.10%, max 1.00%); all
/// traffic back to v1`, and the like: one line, in the words of the Events.
fn summary(n: &Notification, status: &Status) -> String {
    let what = n.version.as_deref().unwrap_or("the canary");
    let stable = n.stable.as_deref().unwrap_or("stable");
    let at = format!("canary weight {}", n.weights.canary);
    let step = n
        .step
        .map_or_else(String::new, |s| format!(" (step {}/{})", s.number, s.of));
    let happened = match n.kind {
        Kind::Started => format!("releasing {what} at {at}{step}; stable is {stable}"),
        Kind::Advanced => format!("{what} advanced to {at}{step}"),
        Kind::Paused => format!("{what} paused at {at}{step}"),
        Kind::Inconclusive => {
            let why = match status.last_check.as_ref().map(|c| &c.verdict) {
                Some(Verdict::Inconclusive { reason, .. }) => serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .map_or_else(String::new, |r| format!(" ({r})")),
                _ => String::new(),
            };
            format!("{what} held at {at}{step}: check inconclusive{why}")
        }
        Kind::Aborted if n.failed_gates.is_empty() => {
            format!("aborted {what}; all traffic back to {stable}")
        }
        Kind::Aborted => {
            let gates: Vec<String> = n.failed_gates.iter().map(gate).collect();
            format!(
                "aborted {what} on {}; all traffic back to {stable}",
                gates.join(", ")
            )
        }
        Kind::Promoted => format!("promoted {what}; it takes all traffic"),
        Kind::Misconfigured => format!(
            "misconfigured, no traffic moves until it is fixed: {}",
            first_line(&n.message, QUOTED)
        ),
    };
    format!("{}/{}: {happened}", n.namespace, n.service)
}

/// `error-rate 20.00% (stable 0.10%, max 1.00%)`.
fn gate(m: &Measurement) -> String {
    let value = |v| format_value(&m.metric, v);
    let bound = match &m.bound {
        Some(Bound::Max(b)) => format!(", max {}", value(Some(*b))),
        Some(Bound::Min(b)) => format!(", min {}", value(Some(*b))),
        None => String::new(),
    };
    format!(
        "{} {} (stable {}{bound})",
        m.metric,
        value(m.canary),
        value(m.stable)
    )
}

/// The first line of `text`, cut at `max` characters.
pub(super) fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    cut(line, max)
}

/// `text`, cut at `max` characters with an ellipsis.
pub(super) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
