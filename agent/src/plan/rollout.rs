//! The lifecycle of DESIGN.md, as one pure function per entry point.
//!
//! The status annotation is a write-ahead record of intent: a plan writes the status
//! first, then converges the route and subsets to it. A restarted agent therefore finds
//! either the old status with the old weights, or the new status with weights that
//! [`converge`] brings to it; never weights that no status explains.
//!
//! The one exception is a promotion, which writes the mesh first and the status last:
//! a stable subset that selects the canary is itself the record that a promotion is
//! under way, and a restarted agent that finds one finishes it.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use weir_analysis::judge::Judgement;
use weir_analysis::sequential::{RolloutEvidence, StepCounts};
use weir_analysis::{Bound, InconclusiveReason, Verdict, format_value};

use super::{
    Action, CheckPoint, CheckRecord, CheckRequest, Ended, Event, EventType, FailedVersion,
    Intervals, Observed, Outcome, Phase, Plan, Report, ReportedAs, Settings, Status, Subset,
    Superseded, Traffic, Version, reason, record,
};
use crate::spec::{RolloutSpec, keys};

/// How many aborted versions the status remembers.
const MAX_FAILED: usize = 10;

/// Whether the gates must be evaluated now, and for what.
pub fn check_due(spec: &RolloutSpec, observed: &Observed, now: Timestamp) -> Option<CheckRequest> {
    let status = observed
        .status
        .as_ref()
        .filter(|s| s.is_coherent(&spec.steps))?;
    if status.phase != Phase::Progressing || observed.controls.pause {
        return None;
    }
    let canary = status.canary.as_ref()?;
    // A stable subset that already selects the canary is a promotion under way: the
    // plan finishes it, and there is nothing left to compare.
    let stable = observed.subsets.stable.as_ref().filter(|s| *s != canary)?;
    let version = observed
        .versions
        .as_deref()?
        .iter()
        .find(|v| &v.name == canary)?;
    if !status
        .canary_template
        .as_deref()
        .is_some_and(|t| version.built_as(t))
    {
        // The plan restarts the rollout; a check of the old template means nothing.
        return None;
    }
    let since = status.step_started_at?;
    let due = next_check_at(Intervals::of(spec), status, observed.last_check_at)?;
    let next_weight = status
        .step
        .and_then(|step| spec.steps.get(step + 1))
        .copied()
        .unwrap_or(100);
    (now >= due).then(|| CheckRequest {
        canary: canary.clone(),
        stable: stable.clone(),
        since,
        next_weight,
        earlier: status.evidence.clone(),
    })
}

/// The next check of the current step: every `check-interval`, and also at the moment
/// the step has been held for `step-interval`, so that a healthy step advances on time.
/// `None` when no step is in progress.
pub fn next_check_at(
    intervals: Intervals,
    status: &Status,
    last_check_at: Option<Timestamp>,
) -> Option<Timestamp> {
    let since = status.step_started_at?;
    let last = last_check_at.filter(|t| *t >= since);
    let regular = add(last.unwrap_or(since), intervals.check);
    let held = add(since, intervals.step);
    Some(match last {
        Some(t) if t >= held => regular,
        _ => regular.min(held),
    })
}

/// The report for a Service whose configuration is invalid: record why, change no
/// traffic. `None` when the status already says so: it is reported once, not on every
/// reconcile. The rollout's progress stays in the status so that fixing the
/// configuration resumes it.
pub fn misconfigured(status: Option<&Status>, reason: &str, now: Timestamp) -> Option<Report> {
    let current = status.cloned().unwrap_or_else(|| Status::new(now));
    if current.phase == Phase::Misconfigured && current.message == bounded(reason) {
        return None;
    }
    let mut next = current;
    next.phase = Phase::Misconfigured;
    next.message = bounded(reason);
    next.last_transition_at = now;
    Some(Report {
        status: Box::new(next),
        event: warning(reason::MISCONFIGURED, bounded(reason)),
    })
}

/// Decide what to do now. `check` is the gates' judgement if [`check_due`] asked for one.
pub fn plan(
    spec: &RolloutSpec,
    observed: &Observed,
    check: Option<(&CheckRequest, &Judgement)>,
    now: Timestamp,
) -> Plan {
    let Some(versions) = observed.versions.as_deref() else {
        // A restarted agent whose Deployment cache is still listing: wait for it,
        // changing nothing (the controller does not reconcile before then either).
        return Plan {
            actions: Vec::new(),
            requeue_after: Some(Duration::from_secs(1)),
        };
    };
    let mut draft = Draft::new(spec, observed, versions, now);
    draft.recover_from_misconfiguration();
    draft.rerecord_legacy_templates();
    if !draft.settle_stable() {
        return draft.finish(false);
    }
    draft.apply_controls();
    let mut checked = false;
    match draft.status.phase {
        Phase::Idle | Phase::Aborted => draft.start_newest_candidate(),
        Phase::Progressing | Phase::Paused => checked = draft.progress(check),
        // A person's promote control, or a promotion recorded before it was cut short:
        // the message says why.
        Phase::Promoting => {
            let why = draft.status.message.clone();
            draft.promote(why)
        }
        // `recover_from_misconfiguration` replaced it with the phase to resume; were it
        // ever left, planning nothing changes no traffic.
        Phase::Misconfigured => {}
    }
    draft.scale_down_superseded();
    draft.finish(checked)
}

/// The next status being drafted, and the events that explain it.
struct Draft<'a> {
    spec: &'a RolloutSpec,
    observed: &'a Observed,
    /// `observed.versions`, observed.
    versions: &'a [Version],
    now: Timestamp,
    status: Status,
    /// The status differs from the stored one in a way that must be persisted.
    dirty: bool,
    consumed: Vec<&'static str>,
    events: Vec<Event>,
    /// What the route and subsets converge to when it is not `status`: during a
    /// promotion, the `Promoting` status, while `status` is already the idle outcome.
    converge_to: Option<Status>,
    /// Superseded versions due for their scale-down now.
    scale_downs: Vec<Action>,
    /// When the next superseded version falls due.
    next_scale_down: Option<Timestamp>,
}

impl<'a> Draft<'a> {
    fn new(
        spec: &'a RolloutSpec,
        observed: &'a Observed,
        versions: &'a [Version],
        now: Timestamp,
    ) -> Self {
        // A status that contradicts itself (hand-edited, corrupted) is not trusted to
        // move traffic: it is treated as absent, and the planner starts from Idle.
        let stored = observed
            .status
            .as_ref()
            .filter(|s| s.is_coherent(&spec.steps));
        let (status, dirty) = match stored {
            Some(s) => (s.clone(), false),
            None => (Status::new(now), true),
        };
        Draft {
            spec,
            observed,
            versions,
            now,
            status,
            dirty,
            consumed: Vec::new(),
            events: Vec::new(),
            converge_to: None,
            scale_downs: Vec::new(),
            next_scale_down: None,
        }
    }

    fn recover_from_misconfiguration(&mut self) {
        if self.status.phase != Phase::Misconfigured {
            return;
        }
        let s = &self.status;
        self.status.phase = match (&s.canary, s.step) {
            (Some(_), Some(_)) => Phase::Progressing,
            (Some(c), None) if s.failed.iter().any(|f| &f.version == c) => Phase::Aborted,
            _ => Phase::Idle,
        };
        self.status.message = "configuration is valid again".into();
        self.dirty = true;
        self.events.push(normal(
            reason::RECONFIGURED,
            "the configuration is valid again; resuming".into(),
        ));
    }

    /// Replaces template hashes recorded by earlier agents with the identity of the same
    /// build, once a version shows which build they meant: from then on the status no
    /// longer depends on how k8s-openapi serialises a pod template. A record whose
    /// version is not observed keeps its hash, which [`Version::built_as`] still reads.
    fn rerecord_legacy_templates(&mut self) {
        let versions = self.versions;
        let current = |name: &str, recorded: &str| {
            versions
                .iter()
                .find(|v| v.name == name && v.template != recorded && v.legacy_template == recorded)
                .map(|v| v.template.clone())
        };
        let s = &mut self.status;
        if let (Some(canary), Some(recorded)) = (&s.canary, &s.canary_template)
            && let Some(identity) = current(canary, recorded)
        {
            s.canary_template = Some(identity);
            self.dirty = true;
        }
        for failed in &mut s.failed {
            if let Some(identity) = current(&failed.version, &failed.template) {
                failed.template = identity;
                self.dirty = true;
            }
        }
    }

    /// Make `status.stable` agree with the stable subset, adopting a version when the
    /// subset names none yet. Returns false when there is no stable version to work from.
    fn settle_stable(&mut self) -> bool {
        match &self.observed.subsets.stable {
            Some(live) => {
                if self.status.phase != Phase::Promoting
                    && self.status.stable.as_ref() != Some(live)
                {
                    self.status.stable = Some(live.clone());
                    self.dirty = true;
                }
                true
            }
            None => {
                let remembered = self
                    .status
                    .stable
                    .as_ref()
                    .and_then(|s| self.versions.iter().find(|v| &v.name == s && v.available));
                let oldest = || {
                    self.versions
                        .iter()
                        .filter(|v| v.available)
                        .min_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)))
                };
                match remembered.or_else(oldest) {
                    Some(v) => {
                        let message = format!(
                            "the stable subset {:?} names no version; adopting {} (Deployment {}) as stable",
                            self.spec.stable_subset, v.name, v.deployment
                        );
                        self.status.phase = Phase::Idle;
                        self.status.stable = Some(v.name.clone());
                        self.set_message(message.clone());
                        self.events.push(normal(reason::STABLE_ADOPTED, message));
                        self.dirty = true;
                    }
                    None => self.set_message(
                        "waiting for an Available Deployment to adopt as the stable version".into(),
                    ),
                }
                false
            }
        }
    }

    fn apply_controls(&mut self) {
        let controls = &self.observed.controls;
        let canary = self.status.canary.clone();
        let in_rollout = matches!(self.status.phase, Phase::Progressing | Phase::Paused);
        let mut aborted = false;

        if let Some(v) = &controls.abort {
            self.consumed.push(keys::ABORT);
            if in_rollout && canary.as_ref() == Some(v) {
                self.abort(format!("aborted by {}={v}", keys::ABORT));
                aborted = true;
            } else {
                self.ignore_control(keys::ABORT, v);
            }
        }
        if let Some(v) = &controls.promote {
            self.consumed.push(keys::PROMOTE);
            // An abort in the same breath wins: safety first.
            let promotable = !aborted
                && matches!(
                    self.status.phase,
                    Phase::Progressing | Phase::Paused | Phase::Aborted
                )
                && canary.as_ref() == Some(v)
                && self.find(v).is_some();
            if promotable {
                self.status.failed.retain(|f| &f.version != v);
                self.status.phase = Phase::Promoting;
                self.set_message(format!(
                    "{}={v}: the remaining steps were skipped",
                    keys::PROMOTE
                ));
                self.events.push(normal(
                    reason::PROMOTED_BY_PERSON,
                    format!("{}={v}: skipping the remaining steps", keys::PROMOTE),
                ));
                self.dirty = true;
            } else {
                self.ignore_control(keys::PROMOTE, v);
            }
        }
        if let Some(v) = &controls.retry {
            self.consumed.push(keys::RETRY);
            let was_failed = self.status.failed.iter().any(|f| &f.version == v);
            if was_failed {
                self.status.failed.retain(|f| &f.version != v);
                self.dirty = true;
                self.events.push(normal(
                    reason::RETRYING,
                    format!("{}={v}: {v} may be released again", keys::RETRY),
                ));
                if self.status.phase == Phase::Aborted
                    && canary.as_ref() == Some(v)
                    && let Some(version) = self.find(v).filter(|v| v.available).cloned()
                {
                    self.start(&version, format!("retrying {v} by {}", keys::RETRY));
                }
            } else {
                self.ignore_control(keys::RETRY, v);
            }
        }
        match (controls.pause, self.status.phase) {
            (true, Phase::Progressing) => {
                self.status.phase = Phase::Paused;
                self.set_message(format!("paused by {}", keys::PAUSE));
                self.events.push(normal(
                    reason::PAUSED,
                    format!("paused at canary weight {}", self.status.weight),
                ));
                self.dirty = true;
            }
            (false, Phase::Paused) => {
                self.status.phase = Phase::Progressing;
                self.status.inconclusive_since = None;
                self.set_message("resumed".into());
                self.events.push(normal(
                    reason::RESUMED,
                    format!("resumed at canary weight {}", self.status.weight),
                ));
                self.dirty = true;
            }
            _ => {}
        }
    }

    fn ignore_control(&mut self, key: &str, version: &str) {
        let current = match (&self.status.canary, self.status.phase) {
            (Some(c), Phase::Progressing | Phase::Paused | Phase::Aborted | Phase::Promoting) => {
                format!("the canary is {c} ({:?})", self.status.phase)
            }
            _ => "no rollout is in progress".into(),
        };
        self.events.push(warning(
            reason::IGNORED_CONTROL,
            format!("ignored {key}={version}: {current}; removed the annotation"),
        ));
    }

    /// The versions that may be released now, newest first: Available, newer than the
    /// stable version (an older Deployment left running after a promotion is not a
    /// candidate: weir never rolls back by itself), and not aborted in this build.
    fn candidates(&self) -> Vec<&'a Version> {
        let stable = self.status.stable.as_deref();
        let stable_key = stable
            .and_then(|s| self.find(s))
            .map(|v| (v.created, v.name.as_str()));
        let mut found: Vec<&Version> = self
            .versions
            .iter()
            .filter(|v| v.available && Some(v.name.as_str()) != stable)
            .filter(|v| stable_key.is_none_or(|key| (v.created, v.name.as_str()) > key))
            .filter(|v| !self.status.has_failed(v))
            .collect();
        found.sort_by(|a, b| (b.created, &b.name).cmp(&(a.created, &a.name)));
        found
    }

    fn start_newest_candidate(&mut self) {
        let candidates = self.candidates();
        let Some(newest) = candidates.first().copied() else {
            if self.status.phase == Phase::Idle && self.status.canary.is_some() {
                self.status.canary = None;
                self.status.canary_template = None;
                self.dirty = true;
            }
            return;
        };
        let mut reason = format!("{} became available", newest.name);
        if candidates.len() > 1 {
            let others: Vec<&str> = candidates[1..].iter().map(|v| v.name.as_str()).collect();
            reason = format!(
                "several new versions are available; releasing the newest, {} (not {})",
                newest.name,
                others.join(", ")
            );
        }
        self.start(newest, reason);
    }

    fn start(&mut self, version: &Version, reason: String) {
        // The spec parser never yields empty steps; without a first step there is no
        // weight that is safe to start at.
        let Some(&weight) = self.spec.steps.first() else {
            return;
        };
        let paused = self.observed.controls.pause;
        let s = &mut self.status;
        s.phase = if paused {
            Phase::Paused
        } else {
            Phase::Progressing
        };
        s.canary = Some(version.name.clone());
        s.canary_template = Some(version.template.clone());
        s.step = Some(0);
        s.weight = weight;
        s.step_started_at = Some(self.now);
        s.failed_checks = 0;
        s.inconclusive_since = None;
        s.last_check = None;
        s.history.clear();
        s.evidence = RolloutEvidence::default();
        s.rollout_started_at = Some(self.now);
        self.dirty = true;
        let message = format!(
            "{reason}: releasing {} at canary weight {weight} (step 1/{})",
            version.name,
            self.spec.steps.len()
        );
        self.set_message(message.clone());
        self.events.push(normal(reason::ROLLOUT_STARTED, message));
    }

    /// One reconcile of a rollout in progress. Returns whether `check` was used.
    fn progress(&mut self, check: Option<(&CheckRequest, &Judgement)>) -> bool {
        let Some(canary) = self.status.canary.clone() else {
            self.go_idle("no canary is recorded; back to idle".into());
            return false;
        };
        let Some(version) = self.find(&canary).cloned() else {
            self.go_idle(format!(
                "the Deployment of {canary} is gone; all traffic back to stable"
            ));
            self.end(canary, Outcome::Abandoned, self.status.message.clone());
            self.events
                .push(warning(reason::CANARY_GONE, self.status.message.clone()));
            return false;
        };
        if self.status.stable.as_ref() == Some(&canary) {
            // The stable subset already selects the canary (a promotion was cut short, or
            // someone moved it by hand): finish the promotion.
            self.promote(format!(
                "the stable subset {:?} already selects {canary}",
                self.spec.stable_subset
            ));
            return false;
        }
        if let Some(newer) = self.candidates().first().copied()
            && newer.name != canary
            && (newer.created, &newer.name) > (version.created, &version.name)
        {
            self.start(newer, format!("{} supersedes {canary}", newer.name));
            return false;
        }
        if !self
            .status
            .canary_template
            .as_deref()
            .is_some_and(|t| version.built_as(t))
        {
            self.start(
                &version,
                format!("the pod template of {canary} changed; starting over"),
            );
            return false;
        }
        if self.status.phase == Phase::Paused {
            return false;
        }
        let Some((request, judgement)) = check else {
            return false;
        };
        if request.canary != canary || Some(request.since) != self.status.step_started_at {
            return false;
        }
        self.judge(judgement);
        true
    }

    fn judge(&mut self, judgement: &Judgement) {
        let now = self.now;
        let verdict = &judgement.verdict;
        // The recorded check is always the latest one.
        self.status.last_check = Some(CheckRecord {
            at: now,
            verdict: verdict.clone(),
        });
        record::remember(
            &mut self.status.history,
            CheckPoint::of(now, self.status.weight, verdict),
        );
        self.dirty = true;
        if let Some(baseline) = judgement.baseline
            && self.status.evidence.baseline.is_none()
        {
            self.status.evidence.baseline = Some(baseline);
        }
        let summary = summarize(verdict);
        match verdict {
            Verdict::Pass { .. } => {
                self.status.inconclusive_since = None;
                let held = self
                    .status
                    .step_started_at
                    .is_some_and(|t| now >= add(t, self.spec.step_interval));
                if held {
                    self.advance(&summary, judgement.step);
                } else {
                    self.set_message(format!(
                        "{}: healthy so far; holding the step for {}",
                        self.step_label(),
                        humantime::format_duration(self.spec.step_interval)
                    ));
                }
            }
            Verdict::Fail {
                failed,
                conclusive: true,
                ..
            } => {
                // Saturating: the count was read from the status, which may be edited.
                self.status.failed_checks = self.status.failed_checks.saturating_add(1);
                self.abort(format!(
                    "the evidence against it reached {} confidence on {}: {}",
                    percent(self.spec.gates.confidence),
                    failed.join(", "),
                    summarize_only(verdict, failed)
                ));
            }
            Verdict::Inconclusive {
                reason: InconclusiveReason::AwaitingEvidence,
                detail,
                ..
            } => {
                // The normal state of a step's first minutes: no Event, and not the
                // no-data clock, but a bound on how long a step may wait for evidence.
                self.status.inconclusive_since = None;
                let since = self.status.step_started_at.unwrap_or(now);
                let deadline = add(
                    add(since, self.spec.step_interval),
                    self.spec.decision_timeout,
                );
                if now >= deadline {
                    self.abort(format!(
                        "no evidence of health within the step interval and the decision timeout ({} + {}) at canary weight {}: {detail}",
                        humantime::format_duration(self.spec.step_interval),
                        humantime::format_duration(self.spec.decision_timeout),
                        self.status.weight
                    ));
                } else {
                    self.set_message(format!(
                        "{}: awaiting evidence: {detail}",
                        self.step_label()
                    ));
                }
            }
            Verdict::Fail { failed, .. } => {
                self.status.failed_checks = self.status.failed_checks.saturating_add(1);
                self.status.inconclusive_since = None;
                self.dirty = true;
                let (n, limit) = (self.status.failed_checks, self.spec.failure_limit);
                let message = format!(
                    "check failed ({n}/{limit}) on {}: {summary}",
                    failed.join(", ")
                );
                self.events
                    .push(warning(reason::CHECK_FAILED, message.clone()));
                if n >= limit {
                    self.abort(format!(
                        "{n} failed checks reached the failure limit; last: {summary}"
                    ));
                } else {
                    self.set_message(message);
                }
            }
            Verdict::Inconclusive { reason, detail, .. } => {
                let since = match self.status.inconclusive_since {
                    Some(t) => t,
                    None => {
                        self.status.inconclusive_since = Some(now);
                        self.dirty = true;
                        let message = format!("check inconclusive ({reason:?}): {detail}");
                        self.events
                            .push(normal(reason::CHECK_INCONCLUSIVE, message.clone()));
                        self.set_message(message);
                        now
                    }
                };
                if now >= add(since, self.spec.no_data_timeout) {
                    self.abort(format!(
                        "no conclusive evidence for {} ({reason:?}: {detail})",
                        humantime::format_duration(self.spec.no_data_timeout)
                    ));
                }
            }
        }
    }

    /// `step 2/3`, for messages.
    fn step_label(&self) -> String {
        format!(
            "step {}/{}",
            self.status.step.map_or(0, |s| s + 1),
            self.spec.steps.len()
        )
    }

    fn advance(&mut self, summary: &str, counts: Option<StepCounts>) {
        let step = self.status.step.unwrap_or(0);
        let total = self.spec.steps.len();
        self.dirty = true;
        if let Some(counts) = counts {
            self.status.evidence.steps.push(counts);
        }
        if let Some(&to) = self.spec.steps.get(step + 1) {
            let from = self.status.weight;
            self.status.step = Some(step + 1);
            self.status.weight = to;
            self.status.step_started_at = Some(self.now);
            self.status.inconclusive_since = None;
            let message = format!(
                "check passed ({summary}); canary weight {from} → {to} (step {}/{total})",
                step + 2
            );
            self.set_message(message.clone());
            self.events.push(normal(reason::WEIGHT_CHANGED, message));
        } else {
            self.promote(format!("all {total} steps passed ({summary})"));
        }
    }

    fn abort(&mut self, reason: String) {
        let s = &mut self.status;
        if let (Some(version), Some(template)) = (s.canary.clone(), s.canary_template.clone()) {
            s.failed.retain(|f| f.version != version);
            s.failed.push(FailedVersion { version, template });
            if s.failed.len() > MAX_FAILED {
                s.failed.remove(0);
            }
        }
        s.phase = Phase::Aborted;
        s.step = None;
        s.weight = 0;
        s.step_started_at = None;
        s.inconclusive_since = None;
        self.dirty = true;
        let message = format!(
            "aborted {}: {reason}; canary weight 0",
            s.canary.as_deref().unwrap_or("?")
        );
        if let Some(canary) = s.canary.clone() {
            self.end(canary, Outcome::Aborted, reason);
        }
        self.set_message(message.clone());
        self.events.push(warning(reason::ABORTED, message));
    }

    /// Records how the rollout of `version` ended: the one account of it that the
    /// agent's metrics and `weir watch` read.
    fn end(&mut self, version: String, outcome: Outcome, reason: String) {
        self.status.ended = Some(Ended {
            version,
            outcome,
            reason: bounded(&reason),
            started_at: self.status.rollout_started_at,
            at: self.now,
        });
        self.status.history.clear();
        self.dirty = true;
    }

    /// Promote the canary in this one plan: the stable subset selects it, then it takes
    /// all traffic, then the idle outcome is recorded. The mesh goes first (see the
    /// module documentation), so that a healthy promotion costs one status write and
    /// one Event rather than a `Promoting` record and its outcome.
    fn promote(&mut self, why: String) {
        let Some(canary) = self.status.canary.clone() else {
            self.go_idle("nothing to promote".into());
            return;
        };
        let mut intent = self.status.clone();
        intent.phase = Phase::Promoting;
        self.converge_to = Some(intent);
        let previous = self.status.stable.replace(canary.clone());
        if self.spec.scale_down_delay.is_some()
            && let Some(previous) = previous.filter(|p| *p != canary)
            && let Some(version) = self.find(&previous)
        {
            self.status.superseded.retain(|s| s.version != previous);
            self.status.superseded.push(Superseded {
                version: previous,
                deployment: version.deployment.clone(),
                at: self.now,
            });
        }
        self.go_idle(format!(
            "{why}; promoted {canary}: the stable subset selects it, canary weight 0"
        ));
        self.end(canary, Outcome::Promoted, why);
        self.events
            .push(normal(reason::PROMOTED, self.status.message.clone()));
    }

    /// Plans the scale-down of each superseded version whose `scale-down-delay` has
    /// passed, and forgets those that need none: in use again (the stable or canary
    /// version, or named by a subset), gone, already at zero replicas, or kept for good
    /// (`never`). A version is forgotten once it is seen at zero, so weir scales it at
    /// most once and never fights whoever scales it up again.
    fn scale_down_superseded(&mut self) {
        if self.status.superseded.is_empty() {
            return;
        }
        let delay = self.spec.scale_down_delay;
        if let (Some(_), Some(delay)) = (&self.converge_to, delay) {
            // This plan promotes: the subsets still name the version it supersedes until
            // its writes land. Decide at a later reconcile, from what they then name.
            self.next_scale_down = self
                .status
                .superseded
                .iter()
                .map(|s| add(s.at, delay))
                .min();
            return;
        }
        let in_use = |version: &str| {
            let s = &self.status;
            let subsets = &self.observed.subsets;
            [&s.stable, &s.canary, &subsets.stable, &subsets.canary]
                .iter()
                .any(|named| named.as_deref() == Some(version))
        };
        let mut kept = Vec::new();
        for superseded in &self.status.superseded {
            let Some(delay) = delay else { continue };
            if in_use(&superseded.version) {
                continue;
            }
            let Some(version) = self.find(&superseded.version) else {
                continue;
            };
            if version.replicas == Some(0) {
                continue;
            }
            let due = add(superseded.at, delay);
            if self.now >= due {
                self.scale_downs.push(Action::ScaleDown {
                    version: version.name.clone(),
                    deployment: version.deployment.clone(),
                    resource_version: version.resource_version.clone(),
                });
            } else {
                self.next_scale_down = Some(self.next_scale_down.map_or(due, |d| d.min(due)));
            }
            // Kept until it is seen at zero replicas: a scale-down the apiserver refused
            // is tried again.
            kept.push(superseded.clone());
        }
        if kept != self.status.superseded {
            self.status.superseded = kept;
            self.dirty = true;
        }
    }

    fn go_idle(&mut self, message: String) {
        let s = &mut self.status;
        s.phase = Phase::Idle;
        s.canary = None;
        s.canary_template = None;
        s.step = None;
        s.weight = 0;
        s.step_started_at = None;
        s.inconclusive_since = None;
        s.failed_checks = 0;
        self.dirty = true;
        self.set_message(message);
    }

    fn find(&self, version: &str) -> Option<&'a Version> {
        self.versions.iter().find(|v| v.name == version)
    }

    fn set_message(&mut self, message: String) {
        let message = bounded(&message);
        if self.status.message != message {
            self.status.message = message;
            self.dirty = true;
        }
    }

    /// What the metrics call the canary and stable, when a rollout is in progress and
    /// that differs from their names.
    fn reported_as(&self) -> Option<ReportedAs> {
        if !matches!(self.status.phase, Phase::Progressing | Phase::Paused) {
            return None;
        }
        let canary = self.find(self.status.canary.as_deref()?)?;
        let stable = self.find(self.status.stable.as_deref()?)?;
        (canary.reported != canary.name || stable.reported != stable.name).then(|| ReportedAs {
            canary: canary.reported.clone(),
            stable: stable.reported.clone(),
        })
    }

    fn finish(mut self, checked: bool) -> Plan {
        let reported_as = self.reported_as();
        if self.status.reported_as != reported_as {
            self.status.reported_as = reported_as;
            self.dirty = true;
        }
        let steps = match self.status.phase {
            Phase::Progressing | Phase::Paused => self.spec.steps.clone(),
            _ => Vec::new(),
        };
        if self.status.steps != steps {
            self.status.steps = steps;
            self.dirty = true;
        }
        // Kept current for readers, but no transition: an agent upgraded from one that
        // recorded no settings rewrites each status once, and then only when they change.
        let settings = Some(Settings::of(self.spec));
        let resettled = self.status.settings != settings;
        self.status.settings = settings;
        let promoting = self.converge_to.is_some();
        let intent = self.converge_to.as_ref().unwrap_or(&self.status);
        let Convergence { darken, mesh } = converge(intent, self.observed);
        // Taking a canary's traffic away needs no record to justify it, and doing it
        // before the status write means the weight never exceeds the step the status
        // names, even for the moment between the two writes.
        let mut actions: Vec<Action> = darken.into_iter().collect();
        let (mesh_first, mesh_after) = if promoting {
            (mesh, Vec::new())
        } else {
            (Vec::new(), mesh)
        };
        actions.extend(mesh_first);
        if self.dirty || resettled || !self.consumed.is_empty() {
            if self.dirty {
                self.status.last_transition_at = self.now;
            }
            actions.push(Action::WriteStatus {
                status: Box::new(self.status.clone()),
                consumed: self.consumed,
            });
        }
        actions.extend(mesh_after);
        actions.extend(self.events.into_iter().map(Action::Emit));
        // Last: the promotion that superseded a version is recorded before it loses its
        // replicas, and a refused scale-down holds up nothing else.
        actions.extend(self.scale_downs);

        let last_check = if checked {
            Some(self.now)
        } else {
            self.observed.last_check_at
        };
        let next_check = match self.status.phase {
            Phase::Progressing => next_check_at(Intervals::of(self.spec), &self.status, last_check),
            _ => None,
        };
        let requeue_after = [next_check, self.next_scale_down]
            .into_iter()
            .flatten()
            .min()
            .map(|due| until(self.now, due));
        Plan {
            actions,
            requeue_after,
        }
    }
}

/// The mesh writes that bring the route and subsets to what a status intends.
struct Convergence {
    /// Lower the canary weight before anything else (see [`Draft::finish`]). Only for a
    /// rollout that restarts: the observation that restarted it (a new template, a newer
    /// version) persists, so a crash before the status write cannot undo the lowering.
    /// An abort instead writes its status first, so that it is durable.
    darken: Option<Action>,
    /// The writes that follow the status write, in order.
    mesh: Vec<Action>,
}

/// The mesh writes that bring the route and subsets to what `status` intends, in a
/// safe order: the canary subset is only repointed while it gets no traffic, and a
/// promotion moves the stable subset before it takes the canary's weight away.
fn converge(status: &Status, observed: &Observed) -> Convergence {
    let mut darken = None;
    let mut mesh = Vec::new();
    let traffic = observed.traffic;
    let subsets = &observed.subsets;
    // Saturating: a weight above 100 then fails the patch's own check instead of the
    // reconcile's arithmetic.
    let weights = |canary: u8| {
        Action::SetWeights(Traffic {
            stable: 100u8.saturating_sub(canary),
            canary,
        })
    };
    let off_target =
        |canary: u8| traffic.canary != canary || traffic.stable != 100u8.saturating_sub(canary);
    if subsets.stable.is_none()
        && let Some(stable) = &status.stable
    {
        mesh.push(Action::SetSubsetVersion {
            subset: Subset::Stable,
            version: stable.clone(),
        });
    }
    match status.phase {
        Phase::Progressing | Phase::Paused => {
            if let Some(canary) = &status.canary {
                if subsets.canary.as_ref() != Some(canary) {
                    if traffic.canary > 0 {
                        darken = Some(weights(0));
                    }
                    mesh.push(Action::SetSubsetVersion {
                        subset: Subset::Canary,
                        version: canary.clone(),
                    });
                    if status.weight > 0 {
                        mesh.push(weights(status.weight));
                    }
                } else if traffic.canary > status.weight {
                    darken = Some(weights(status.weight));
                } else if off_target(status.weight) {
                    mesh.push(weights(status.weight));
                }
            }
        }
        Phase::Promoting => {
            if let Some(canary) = &status.canary
                && subsets.stable.as_ref() != Some(canary)
            {
                mesh.push(Action::SetSubsetVersion {
                    subset: Subset::Stable,
                    version: canary.clone(),
                });
            }
            if off_target(0) {
                mesh.push(weights(0));
            }
        }
        Phase::Idle | Phase::Aborted => {
            if off_target(0) {
                mesh.push(weights(0));
            }
        }
        Phase::Misconfigured => {}
    }
    Convergence { darken, mesh }
}

/// One line of measured values, for events and the status message.
fn summarize(verdict: &Verdict) -> String {
    summarize_measurements(verdict, |_| true)
}

/// The request count and the named metrics' values, for a message about those.
fn summarize_only(verdict: &Verdict, metrics: &[String]) -> String {
    summarize_measurements(verdict, |m| {
        m.metric == "request-count" || metrics.contains(&m.metric)
    })
}

fn summarize_measurements(
    verdict: &Verdict,
    keep: impl Fn(&weir_analysis::Measurement) -> bool,
) -> String {
    let parts: Vec<String> = verdict
        .measurements()
        .iter()
        .filter(|m| keep(m))
        .map(|m| {
            let fmt = |v: Option<f64>| format_value(&m.metric, v);
            let bound = match &m.bound {
                Some(Bound::Max(b)) => format!(", max {}", format_value(&m.metric, Some(*b))),
                Some(Bound::Min(b)) => format!(", min {}", format_value(&m.metric, Some(*b))),
                None => String::new(),
            };
            let evidence = m
                .evidence
                .as_ref()
                .map_or_else(String::new, |e| format!("; evidence {}", e.describe()));
            format!(
                "{} {} (stable {}{bound}{evidence})",
                m.metric,
                fmt(m.canary),
                fmt(m.stable)
            )
        })
        .collect();
    if parts.is_empty() {
        verdict.kind().to_string()
    } else {
        parts.join(", ")
    }
}

/// `99%`, `99.9%`.
fn percent(fraction: f64) -> String {
    format!("{}%", (fraction * 1000.0).round() / 10.0)
}

fn normal(reason: &str, message: String) -> Event {
    Event {
        type_: EventType::Normal,
        reason: reason.into(),
        message,
    }
}

fn warning(reason: &str, message: String) -> Event {
    Event {
        type_: EventType::Warning,
        reason: reason.into(),
        message,
    }
}

/// The longest status message kept, in characters: enough for every problem of a
/// Service, short enough that the status never approaches the apiserver's 256 KiB limit
/// on a Service's annotations, whatever a user wrote.
const MAX_MESSAGE: usize = 4000;

fn bounded(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE) {
        Some((cut, _)) => format!("{}… (cut at {MAX_MESSAGE} characters)", &message[..cut]),
        None => message.to_owned(),
    }
}

/// `t + d`, saturating.
pub fn add(t: Timestamp, d: Duration) -> Timestamp {
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// Time from `now` until `due`, at least a second so that a busy loop is impossible.
fn until(now: Timestamp, due: Timestamp) -> Duration {
    let d = due.duration_since(now);
    Duration::try_from(d)
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1))
}
