//! The planner against a model of the cluster: scenario tests for each transition of
//! DESIGN.md's lifecycle, and property tests for invariants 1–4 and 7 over random
//! sequences of observations, verdicts, controls, failed writes and restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use weir_analysis::judge::Judgement;
use weir_analysis::{Bound, InconclusiveReason, Measurement, Verdict};

use super::*;
use crate::spec::{Defaults, RolloutSpec};

fn spec() -> RolloutSpec {
    let d = Defaults::default();
    RolloutSpec {
        service: "checkout".into(),
        virtual_service: None,
        http_route: None,
        route: None,
        destination_rule: None,
        stable_subset: d.stable_subset,
        canary_subset: d.canary_subset,
        split_services: None,
        version_label: d.version_label,
        steps: d.steps,
        step_interval: d.step_interval,
        check_interval: d.check_interval,
        gates: d.gates,
        failure_limit: d.failure_limit,
        no_data_timeout: d.no_data_timeout,
        decision_timeout: d.decision_timeout,
        metrics_config_map: None,
        scale_down_delay: d.scale_down_delay,
    }
}

fn t0() -> Timestamp {
    "2026-11-26T10:00:00Z".parse().unwrap()
}

fn version(name: &str, template: &str, created_secs: i64) -> Version {
    Version {
        name: name.into(),
        deployment: format!("checkout-{name}"),
        template: template.into(),
        legacy_template: format!("legacy-{template}"),
        available: true,
        created: t0() + SignedDuration::from_secs(created_secs),
        reported: name.into(),
        replicas: Some(2),
        resource_version: Some("1".into()),
    }
}

fn pass() -> Verdict {
    Verdict::Pass {
        measurements: vec![Measurement {
            metric: "error-rate".into(),
            canary: Some(0.001),
            stable: Some(0.001),
            bound: Some(Bound::Max(0.01)),
            evidence: None,
        }],
    }
}

fn fail() -> Verdict {
    Verdict::Fail {
        failed: vec!["error-rate".into()],
        measurements: vec![Measurement {
            metric: "error-rate".into(),
            canary: Some(0.2),
            stable: Some(0.001),
            bound: Some(Bound::Max(0.01)),
            evidence: None,
        }],
        conclusive: false,
    }
}

fn conclusive_fail() -> Verdict {
    Verdict::Fail {
        failed: vec!["errors-vs-stable".into()],
        measurements: Vec::new(),
        conclusive: true,
    }
}

fn awaiting() -> Verdict {
    Verdict::Inconclusive {
        reason: InconclusiveReason::AwaitingEvidence,
        detail: "error-rate: evidence for the canary 2.1 of the 3.2 this step needs".into(),
        measurements: vec![],
    }
}

fn inconclusive() -> Verdict {
    Verdict::Inconclusive {
        reason: InconclusiveReason::NoData,
        detail: "no canary series".into(),
        measurements: vec![],
    }
}

/// The cluster as the planner sees it, plus the agent's memory and a log of what the
/// tests need to judge the invariants.
#[derive(Clone, Debug)]
struct World {
    spec: RolloutSpec,
    versions: Vec<Version>,
    traffic: Traffic,
    subsets: Subsets,
    status: Option<Status>,
    controls: Controls,
    now: Timestamp,
    last_check_at: Option<Timestamp>,
    /// Steps (by index) at which a Pass was fed while that step's weight was live,
    /// per (version, template). Independent of the planner's own bookkeeping.
    passes: BTreeMap<(String, String), BTreeSet<usize>>,
    /// Versions a person promoted (by control) since their last abort.
    promoted_by_person: BTreeSet<String>,
    /// (version, template) pairs that were aborted and not retried or promoted since.
    aborted: BTreeSet<(String, String)>,
    events: Vec<Event>,
    /// Versions whose Deployment a plan scaled to zero, in order.
    scaled_down: Vec<String>,
}

impl World {
    fn new() -> World {
        World {
            spec: spec(),
            versions: vec![version("v1", "t1", 0)],
            traffic: Traffic {
                stable: 100,
                canary: 0,
            },
            subsets: Subsets {
                stable: Some("v1".into()),
                canary: None,
            },
            status: None,
            controls: Controls::default(),
            now: t0() + SignedDuration::from_secs(3600),
            last_check_at: None,
            passes: BTreeMap::new(),
            promoted_by_person: BTreeSet::new(),
            aborted: BTreeSet::new(),
            events: Vec::new(),
            scaled_down: Vec::new(),
        }
    }

    fn observed(&self) -> Observed {
        Observed {
            versions: Some(self.versions.clone()),
            traffic: self.traffic,
            subsets: self.subsets.clone(),
            status: self.status.clone(),
            controls: self.controls.clone(),
            last_check_at: self.last_check_at,
        }
    }

    fn tick(&mut self, secs: u64) {
        self.now += SignedDuration::from_secs(secs as i64);
    }

    fn template_of(&self, name: &str) -> Option<String> {
        self.versions
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.template.clone())
    }

    /// One reconcile as the controller does it: check if due (answering with
    /// `verdict`), plan, and apply the actions in order until `fail_at` (a write that
    /// the apiserver refuses). Checks the invariants after every write.
    fn reconcile(&mut self, verdict: Option<Verdict>, fail_at: Option<usize>) -> Plan {
        self.reconcile_judged(
            verdict.map(|verdict| Judgement {
                verdict,
                step: None,
                baseline: None,
            }),
            fail_at,
        )
    }

    /// [`World::reconcile`] with everything the judge returns.
    fn reconcile_judged(&mut self, judgement: Option<Judgement>, fail_at: Option<usize>) -> Plan {
        let verdict = judgement.as_ref().map(|j| j.verdict.clone());
        let observed = self.observed();
        let due = check_due(&self.spec, &observed, self.now);
        let check = match (&due, &judgement) {
            (Some(req), Some(j)) => Some((req, j)),
            _ => None,
        };
        if let (Some(req), Some(Verdict::Pass { .. })) = (&due, &verdict) {
            let status = self.status.as_ref().unwrap();
            if self.traffic.canary == status.weight
                && self.subsets.canary.as_ref() == Some(&req.canary)
            {
                let template = self.template_of(&req.canary).unwrap();
                self.passes
                    .entry((req.canary.clone(), template))
                    .or_default()
                    .insert(status.step.unwrap());
            }
        }
        let plan = plan(&self.spec, &observed, check, self.now);
        if check.is_some() {
            self.last_check_at = Some(self.now);
        }
        let before = self.clone();
        for (i, action) in plan.actions.iter().enumerate() {
            if fail_at == Some(i) {
                break;
            }
            self.apply(action);
            self.assert_invariants(&before, check.map(|(_, j)| &j.verdict));
        }
        plan
    }

    fn apply(&mut self, action: &Action) {
        match action {
            Action::WriteStatus { status, consumed } => {
                self.status = Some(status.as_ref().clone());
                for key in consumed {
                    match *key {
                        crate::spec::keys::ABORT => self.controls.abort = None,
                        crate::spec::keys::PROMOTE => self.controls.promote = None,
                        crate::spec::keys::RETRY => self.controls.retry = None,
                        other => panic!("unexpected consumed control {other}"),
                    }
                }
            }
            Action::SetWeights(t) => self.traffic = *t,
            Action::SetSubsetVersion { subset, version } => match subset {
                Subset::Stable => self.subsets.stable = Some(version.clone()),
                Subset::Canary => self.subsets.canary = Some(version.clone()),
            },
            Action::Emit(e) => self.events.push(e.clone()),
            Action::ScaleDown {
                version,
                deployment,
                ..
            } => {
                // Never what serves traffic or what the status names.
                let s = self.status.as_ref();
                for named in [
                    self.subsets.stable.as_ref(),
                    self.subsets.canary.as_ref(),
                    s.and_then(|s| s.stable.as_ref()),
                    s.and_then(|s| s.canary.as_ref()),
                ] {
                    assert_ne!(
                        named,
                        Some(version),
                        "scaled down a version in use: {self:?}"
                    );
                }
                let v = self
                    .versions
                    .iter_mut()
                    .find(|v| &v.name == version)
                    .expect("a scale-down names an observed version");
                assert_eq!(&v.deployment, deployment);
                v.replicas = Some(0);
                self.scaled_down.push(version.clone());
            }
        }
    }

    fn canary_key(&self) -> Option<(String, String)> {
        let c = self.subsets.canary.clone()?;
        let t = self.template_of(&c)?;
        Some((c, t))
    }

    fn assert_invariants(&self, before: &World, verdict: Option<&Verdict>) {
        // 1. Integers in 0..=100 summing to 100 (u8 makes them integers).
        assert_eq!(
            u16::from(self.traffic.stable) + u16::from(self.traffic.canary),
            100,
            "weights {:?}",
            self.traffic
        );
        // 2. Never above the current step's weight; rises only after a pass, at the
        //    start of a rollout, or back to a recorded intent.
        if let Some(s) = &self.status
            && let Some(step) = s.step
        {
            assert!(
                self.traffic.canary <= self.spec.steps[step],
                "above step weight: {self:#?}"
            );
        }
        if self.traffic.canary > before.traffic.canary {
            let recorded = before.status.as_ref().map(|s| s.weight);
            let first_step =
                before.traffic.canary == 0 && self.traffic.canary == self.spec.steps[0];
            let passed = matches!(verdict, Some(Verdict::Pass { .. }));
            let promoted = before.controls.promote.is_some();
            assert!(
                passed || first_step || promoted || recorded == Some(self.traffic.canary),
                "canary weight rose {} → {} without a pass: {self:#?}",
                before.traffic.canary,
                self.traffic.canary
            );
        }
        // 3. An aborted (version, template) gets no traffic back until retried or promoted.
        if let Some(key) = self.canary_key()
            && self.aborted.contains(&key)
        {
            assert!(
                self.traffic.canary <= before.traffic.canary,
                "aborted canary {key:?} got traffic: {self:#?}"
            );
        }
        // 4. The stable subset moves to a version only after all its steps passed, or
        //    a person promoted it.
        if self.subsets.stable != before.subsets.stable
            && let (Some(_), Some(new)) = (&before.subsets.stable, &self.subsets.stable)
        {
            let template = self.template_of(new).unwrap();
            let passed = self
                .passes
                .get(&(new.clone(), template))
                .map_or(0, |p| p.len());
            assert!(
                passed == self.spec.steps.len() || self.promoted_by_person.contains(new),
                "stable moved to {new} after {passed} passed steps: {self:#?}"
            );
        }
    }

    /// Once an aborted rollout's reconcile has fully applied, its canary has weight 0.
    fn assert_aborted_is_dark(&self) {
        if let Some(s) = &self.status
            && s.phase == Phase::Aborted
        {
            assert_eq!(
                self.traffic.canary, 0,
                "aborted but canary has traffic: {self:#?}"
            );
        }
    }

    fn record_abort_ghost(&mut self) {
        if let Some(s) = &self.status
            && s.phase == Phase::Aborted
            && let (Some(c), Some(t)) = (&s.canary, &s.canary_template)
        {
            self.aborted.insert((c.clone(), t.clone()));
        }
    }
}

fn reasons(plan: &Plan) -> Vec<&str> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some(e.reason.as_str()),
            _ => None,
        })
        .collect()
}

/// Drives a check every check-interval until the planner leaves `Progressing`.
fn run_checks(w: &mut World, verdict: fn() -> Verdict, max: usize) {
    for _ in 0..max {
        w.tick(15);
        w.reconcile(Some(verdict()), None);
        w.record_abort_ghost();
        let phase = w.status.as_ref().unwrap().phase;
        if phase != Phase::Progressing {
            return;
        }
    }
}

#[test]
fn first_reconcile_writes_an_idle_status_and_nothing_else() {
    let mut w = World::new();
    let plan = w.reconcile(None, None);
    assert!(matches!(
        plan.actions.as_slice(),
        [Action::WriteStatus { .. }]
    ));
    let status = w.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Idle);
    assert_eq!(status.stable.as_deref(), Some("v1"));
    // An idle namespace makes no writes.
    w.tick(300);
    let plan = w.reconcile(None, None);
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert_eq!(plan.requeue_after, None);
}

#[test]
fn healthy_release_goes_through_every_step_and_is_promoted() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    let plan = w.reconcile(None, None);
    assert!(reasons(&plan).contains(&"RolloutStarted"));
    assert_eq!(w.subsets.canary.as_deref(), Some("v2"));
    assert_eq!(
        w.traffic,
        Traffic {
            stable: 90,
            canary: 10
        }
    );
    let mut weights = vec![w.traffic.canary];
    for _ in 0..40 {
        w.tick(15);
        w.reconcile(Some(pass()), None);
        if weights.last() != Some(&w.traffic.canary) {
            weights.push(w.traffic.canary);
        }
        if w.status.as_ref().unwrap().phase == Phase::Idle {
            break;
        }
    }
    assert_eq!(weights, vec![10, 25, 50, 0]);
    let status = w.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Idle, "{status:#?}");
    assert_eq!(status.stable.as_deref(), Some("v2"));
    assert_eq!(w.subsets.stable.as_deref(), Some("v2"));
    assert!(w.events.iter().any(|e| e.reason == "Promoted"));
    // v1's Deployment is still there: it is older than the new stable, so it is not
    // released again; it is only scaled down, once its scale-down-delay has passed.
    w.tick(600);
    let plan = w.reconcile(None, None);
    assert!(
        matches!(plan.actions.as_slice(), [Action::ScaleDown { version, .. }] if version == "v1"),
        "{plan:?}"
    );
    w.tick(600);
    w.reconcile(None, None);
    let plan = w.reconcile(None, None);
    assert!(plan.actions.is_empty(), "{plan:?}");
}

#[test]
fn a_step_is_held_for_step_interval_even_when_checks_pass() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    for _ in 0..3 {
        w.tick(15);
        w.reconcile(Some(pass()), None);
        assert_eq!(w.traffic.canary, 10);
    }
    w.tick(15);
    w.reconcile(Some(pass()), None);
    assert_eq!(w.traffic.canary, 25);
}

#[test]
fn failed_checks_reaching_the_limit_abort_and_the_version_is_not_retried() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    w.tick(15);
    let plan = w.reconcile(Some(fail()), None);
    assert_eq!(reasons(&plan), vec!["CheckFailed"]);
    assert_eq!(w.traffic.canary, 10, "one failure is below the limit of 2");
    w.tick(15);
    let plan = w.reconcile(Some(fail()), None);
    assert_eq!(reasons(&plan), vec!["CheckFailed", "Aborted"]);
    assert_eq!(w.traffic.canary, 0);
    assert_eq!(w.status.as_ref().unwrap().phase, Phase::Aborted);
    // Not retried while its template is unchanged.
    w.tick(600);
    let plan = w.reconcile(None, None);
    assert!(plan.actions.is_empty(), "{plan:?}");
    // A new template is a new build: released again from step one.
    w.versions[1].template = "t2b".into();
    let plan = w.reconcile(None, None);
    assert!(reasons(&plan).contains(&"RolloutStarted"));
    assert_eq!(w.traffic.canary, 10);
}

#[test]
fn inconclusive_never_advances_and_aborts_at_the_no_data_timeout() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    let mut checks = 0;
    while w.status.as_ref().unwrap().phase == Phase::Progressing {
        w.tick(15);
        w.reconcile(Some(inconclusive()), None);
        checks += 1;
        assert!(w.traffic.canary <= 10);
        assert!(checks < 100, "never aborted");
    }
    assert_eq!(w.status.as_ref().unwrap().phase, Phase::Aborted);
    assert_eq!(w.traffic.canary, 0);
    // 10m of inconclusive checks after the first one, every 15 s.
    assert_eq!(checks, 41);
}

#[test]
fn controls_pause_promote_abort_retry() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);

    // pause holds the step: no check is even due.
    w.controls.pause = true;
    w.reconcile(None, None);
    assert_eq!(w.status.as_ref().unwrap().phase, Phase::Paused);
    w.tick(300);
    assert_eq!(check_due(&w.spec, &w.observed(), w.now), None);
    w.reconcile(Some(pass()), None);
    assert_eq!(w.traffic.canary, 10);
    w.controls.pause = false;
    w.reconcile(None, None);
    assert_eq!(w.status.as_ref().unwrap().phase, Phase::Progressing);

    // a stale abort (wrong version) is harmless and removed.
    w.controls.abort = Some("v9".into());
    let plan = w.reconcile(None, None);
    assert!(reasons(&plan).contains(&"IgnoredControl"));
    assert_eq!(w.controls.abort, None);
    assert_eq!(w.traffic.canary, 10);

    // abort.
    w.controls.abort = Some("v2".into());
    w.reconcile(None, None);
    assert_eq!(w.status.as_ref().unwrap().phase, Phase::Aborted);
    assert_eq!(w.traffic.canary, 0);

    // retry reruns it from step one.
    w.controls.retry = Some("v2".into());
    let plan = w.reconcile(None, None);
    assert!(reasons(&plan).contains(&"RolloutStarted"), "{plan:?}");
    assert_eq!(w.traffic.canary, 10);

    // promote skips to promotion.
    w.promoted_by_person.insert("v2".into());
    w.controls.promote = Some("v2".into());
    w.reconcile(None, None);
    w.reconcile(None, None);
    let status = w.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Idle);
    assert_eq!(status.stable.as_deref(), Some("v2"));
    assert_eq!(
        w.traffic,
        Traffic {
            stable: 100,
            canary: 0
        }
    );
}

#[test]
fn newest_candidate_wins_and_says_so() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.versions.push(version("v3", "t3", 120));
    let plan = w.reconcile(None, None);
    assert_eq!(w.subsets.canary.as_deref(), Some("v3"));
    let Some(Action::Emit(event)) = plan.actions.iter().find(|a| matches!(a, Action::Emit(_)))
    else {
        panic!("no event: {plan:?}")
    };
    assert!(
        event.message.contains("releasing the newest, v3 (not v2)"),
        "{event:?}"
    );
}

#[test]
fn a_newer_version_mid_rollout_restarts_at_step_one_via_zero() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    run_checks(&mut w, pass, 4);
    assert_eq!(w.traffic.canary, 25);
    w.versions.push(version("v3", "t3", 120));
    let plan = w.reconcile(None, None);
    let mesh: Vec<&Action> = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::SetWeights(_) | Action::SetSubsetVersion { .. }))
        .collect();
    assert_eq!(
        mesh,
        vec![
            &Action::SetWeights(Traffic {
                stable: 100,
                canary: 0
            }),
            &Action::SetSubsetVersion {
                subset: Subset::Canary,
                version: "v3".into()
            },
            &Action::SetWeights(Traffic {
                stable: 90,
                canary: 10
            }),
        ]
    );
}

#[test]
fn template_change_mid_rollout_starts_over() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    run_checks(&mut w, pass, 4);
    assert_eq!(w.status.as_ref().unwrap().step, Some(1));
    w.versions[1].template = "t2b".into();
    let plan = w.reconcile(None, None);
    assert!(reasons(&plan).contains(&"RolloutStarted"));
    let status = w.status.clone().unwrap();
    assert_eq!((status.step, status.weight), (Some(0), 10));
    assert_eq!(w.traffic.canary, 10);
}

#[test]
fn first_start_adopts_the_oldest_available_version() {
    let mut w = World::new();
    w.subsets.stable = None;
    w.versions.push(version("v2", "t2", 60));
    let plan = w.reconcile(None, None);
    assert!(reasons(&plan).contains(&"StableAdopted"));
    assert_eq!(w.subsets.stable.as_deref(), Some("v1"));
    // The next reconcile releases v2 as a canary: it is not made stable unchecked.
    w.reconcile(None, None);
    assert_eq!(w.subsets.canary.as_deref(), Some("v2"));
    assert_eq!(w.traffic.canary, 10);
}

#[test]
fn misconfiguration_changes_no_traffic_and_fixing_it_resumes() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    let before = w.clone();
    let report = misconfigured(w.status.as_ref(), "weir.dev/steps: bad", w.now)
        .expect("a new misconfiguration is reported");
    assert_eq!(report.event.reason, "Misconfigured");
    w.apply(&Action::WriteStatus {
        status: report.status,
        consumed: Vec::new(),
    });
    w.assert_invariants(&before, None);
    assert_eq!(w.status.as_ref().unwrap().phase, Phase::Misconfigured);
    // Reported once, not on every reconcile.
    assert_eq!(
        misconfigured(w.status.as_ref(), "weir.dev/steps: bad", w.now),
        None
    );
    w.reconcile(None, None);
    let status = w.status.clone().unwrap();
    assert_eq!(
        (status.phase, status.step, w.traffic.canary),
        (Phase::Progressing, Some(0), 10)
    );
}

#[test]
fn conclusive_evidence_against_the_canary_aborts_at_once() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    assert_eq!(w.spec.failure_limit, 2);
    w.tick(15);
    let plan = w.reconcile(Some(conclusive_fail()), None);
    assert!(reasons(&plan).contains(&"Aborted"), "{plan:?}");
    let status = w.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Aborted);
    assert!(
        status.message.contains("99% confidence"),
        "{}",
        status.message
    );
    assert_eq!(w.traffic.canary, 0);
}

#[test]
fn a_step_awaits_evidence_quietly_until_its_decision_timeout() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    let limit = w.spec.step_interval + w.spec.decision_timeout;
    let mut waited = Duration::ZERO;
    while waited + Duration::from_secs(15) < limit {
        w.tick(15);
        waited += Duration::from_secs(15);
        let plan = w.reconcile(Some(awaiting()), None);
        assert!(
            reasons(&plan).is_empty(),
            "no Event while awaiting: {plan:?}"
        );
        let status = w.status.clone().unwrap();
        assert_eq!((status.phase, status.step), (Phase::Progressing, Some(0)));
        assert!(
            status.message.contains("awaiting evidence"),
            "{}",
            status.message
        );
        assert_eq!(
            status.inconclusive_since, None,
            "the no-data clock is not started"
        );
    }
    w.tick(15);
    let plan = w.reconcile(Some(awaiting()), None);
    assert!(reasons(&plan).contains(&"Aborted"), "{plan:?}");
    assert!(
        w.status
            .clone()
            .unwrap()
            .message
            .contains("decision timeout"),
        "{:?}",
        w.status
    );
}

#[test]
fn each_completed_step_records_its_counts_and_a_new_rollout_starts_afresh() {
    use weir_analysis::sequential::{Counts, LatencyBaseline, StepCounts};
    let counts = |n: f64| StepCounts {
        canary: Counts {
            requests: n,
            ..Counts::default()
        },
        stable: Counts {
            requests: 9.0 * n,
            ..Counts::default()
        },
    };
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    let judged = |n: f64, baseline: Option<f64>| Judgement {
        verdict: pass(),
        step: Some(counts(n)),
        baseline: baseline.map(|bound_ms| LatencyBaseline {
            bound_ms,
            acceptable_ratio: 2.0,
            bad_ratio: 4.0,
        }),
    };
    // A pass before the step is held records the baseline, not the counts.
    w.tick(15);
    w.reconcile_judged(Some(judged(75.0, Some(250.0))), None);
    let evidence = w.status.clone().unwrap().evidence;
    assert_eq!(evidence.baseline.map(|b| b.bound_ms), Some(250.0));
    assert!(evidence.steps.is_empty());
    w.tick(60);
    w.reconcile_judged(Some(judged(300.0, Some(500.0))), None);
    let status = w.status.clone().unwrap();
    assert_eq!(status.step, Some(1));
    assert_eq!(status.evidence.steps, vec![counts(300.0)]);
    assert_eq!(
        status.evidence.baseline.map(|b| b.bound_ms),
        Some(250.0),
        "chosen once"
    );
    // The check request carries them to the judge, with the next step's weight.
    let due = check_due(
        &w.spec,
        &w.observed(),
        w.now + SignedDuration::from_secs(15),
    );
    let due = due.unwrap();
    assert_eq!(due.earlier.steps.len(), 1);
    assert_eq!(due.next_weight, 50);
    // A newer version starts a rollout of its own, with no evidence.
    w.versions.push(version("v3", "t3", 120));
    w.tick(1);
    w.reconcile(None, None);
    let status = w.status.clone().unwrap();
    assert_eq!(status.canary.as_deref(), Some("v3"));
    assert!(status.evidence.is_empty());
}

#[test]
fn restart_resumes_the_same_step_and_checks_at_once() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    run_checks(&mut w, pass, 4);
    w.tick(20);
    let before = w.status.clone().unwrap();
    w.last_check_at = None; // the agent restarted
    let req = check_due(&w.spec, &w.observed(), w.now).expect("due at once after a restart");
    assert_eq!(
        Some(req.since),
        before.step_started_at,
        "the window is the step's, not the restart's"
    );
    let plan = w.reconcile(Some(pass()), None);
    // Only the status is written, to record this check; the step is the same.
    assert!(
        plan.actions
            .iter()
            .all(|a| matches!(a, Action::WriteStatus { .. })),
        "{plan:?}"
    );
    let after = w.status.clone().unwrap();
    assert_eq!(
        (after.phase, after.step, after.step_started_at, after.weight),
        (
            before.phase,
            before.step,
            before.step_started_at,
            before.weight
        )
    );
    assert_eq!(
        after.last_check.unwrap().at,
        w.now,
        "the latest check is recorded"
    );
}

#[test]
fn a_status_written_before_its_weights_is_converged_after_a_crash() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    for _ in 0..3 {
        w.tick(15);
        w.reconcile(Some(pass()), None);
    }
    w.tick(15);
    // The step advances, but only the status write lands.
    w.reconcile(Some(pass()), Some(1));
    assert_eq!(w.status.as_ref().unwrap().weight, 25);
    assert_eq!(w.traffic.canary, 10);
    w.last_check_at = None;
    let plan = w.reconcile(None, None);
    assert_eq!(
        plan.actions,
        vec![Action::SetWeights(Traffic {
            stable: 75,
            canary: 25
        })]
    );
}

/// Brings a v2 rollout to its last step, held long enough that the next pass promotes.
fn at_last_step() -> World {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    while w.status.as_ref().unwrap().step != Some(w.spec.steps.len() - 1) {
        w.tick(15);
        w.reconcile(Some(pass()), None);
    }
    w.tick(60);
    w
}

#[test]
fn the_status_records_the_steps_only_while_a_rollout_is_in_progress() {
    let mut w = World::new();
    w.spec.steps = vec![5, 20, 60];
    w.reconcile(None, None);
    assert_eq!(w.status.as_ref().unwrap().steps, Vec::<u8>::new());
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    assert_eq!(w.status.as_ref().unwrap().steps, vec![5, 20, 60]);
    run_checks(&mut w, pass, 40);
    let status = w.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Idle);
    assert_eq!(status.steps, Vec::<u8>::new());
}

#[test]
fn the_last_pass_promotes_in_one_plan_mesh_first() {
    let mut w = at_last_step();
    let plan = w.reconcile(Some(pass()), None);
    let kinds: Vec<String> = plan
        .actions
        .iter()
        .map(|a| match a {
            Action::SetSubsetVersion { subset, version } => format!("subset {subset:?}={version}"),
            Action::SetWeights(t) => format!("weights {}/{}", t.stable, t.canary),
            Action::WriteStatus { status, .. } => format!("status {:?}", status.phase),
            Action::Emit(e) => format!("event {}", e.reason),
            Action::ScaleDown { version, .. } => format!("scale down {version}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "subset Stable=v2",
            "weights 100/0",
            "status Idle",
            "event Promoted"
        ]
    );
    let status = w.status.clone().unwrap();
    assert_eq!(status.stable.as_deref(), Some("v2"));
    assert!(
        status.message.contains("all 3 steps passed"),
        "{}",
        status.message
    );
    // Back when the superseded v1 is due for its scale-down.
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(30)));
}

#[test]
fn a_promotion_cut_short_after_the_subset_moved_is_finished_without_a_new_check() {
    for landed in 1..=2 {
        let mut w = at_last_step();
        // Only the first `landed` writes of the promotion land, then the agent restarts.
        w.reconcile(Some(pass()), Some(landed));
        assert_eq!(w.subsets.stable.as_deref(), Some("v2"));
        assert_eq!(w.status.as_ref().unwrap().phase, Phase::Progressing);
        w.last_check_at = None;
        w.tick(1);
        let plan = w.reconcile(None, None);
        assert!(reasons(&plan).contains(&"Promoted"), "{plan:?}");
        assert_eq!(w.traffic.canary, 0);
        let status = w.status.clone().unwrap();
        assert_eq!(status.phase, Phase::Idle);
        assert_eq!(status.stable.as_deref(), Some("v2"));
        w.tick(60);
        assert!(w.reconcile(None, None).actions.is_empty());
    }
}

#[derive(Clone, Debug)]
enum Op {
    Tick(u64),
    Check(u8),
    NewVersion,
    ChangeTemplate,
    DeleteCanary,
    Pause(bool),
    Abort {
        current: bool,
    },
    Promote {
        current: bool,
    },
    Retry {
        current: bool,
    },
    Restart,
    /// A restart whose Deployment cache has not finished its first list when the
    /// Service is first reconciled.
    ColdRestart,
    FailingWrite(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..120).prop_map(Op::Tick),
        8 => (0u8..5).prop_map(Op::Check),
        1 => Just(Op::NewVersion),
        1 => Just(Op::ChangeTemplate),
        1 => Just(Op::DeleteCanary),
        1 => any::<bool>().prop_map(Op::Pause),
        1 => any::<bool>().prop_map(|current| Op::Abort { current }),
        1 => any::<bool>().prop_map(|current| Op::Promote { current }),
        1 => any::<bool>().prop_map(|current| Op::Retry { current }),
        2 => Just(Op::Restart),
        2 => Just(Op::ColdRestart),
        1 => (0usize..4).prop_map(Op::FailingWrite),
    ]
}

fn run(ops: Vec<Op>) {
    let mut w = World::new();
    let mut next_version = 2;
    w.reconcile(None, None);
    for op in ops {
        let canary = w.status.as_ref().and_then(|s| s.canary.clone());
        let named = |current: bool| match (&canary, current) {
            (Some(c), true) => c.clone(),
            _ => "v99".into(),
        };
        let mut verdict = None;
        let mut fail_at = None;
        match op {
            Op::Tick(s) => w.tick(s),
            Op::Check(k) => {
                w.tick(15);
                verdict = Some(match k {
                    0 => pass(),
                    1 => fail(),
                    2 => conclusive_fail(),
                    3 => awaiting(),
                    _ => inconclusive(),
                });
            }
            Op::NewVersion => {
                w.tick(1);
                let created = (w.now - t0()).get_seconds();
                w.versions
                    .push(version(&format!("v{next_version}"), "t", created));
                next_version += 1;
            }
            Op::ChangeTemplate => {
                if let Some(v) = w
                    .versions
                    .iter_mut()
                    .find(|v| Some(&v.name) == canary.as_ref())
                {
                    v.template.push('+');
                    v.legacy_template.push('+');
                }
            }
            Op::DeleteCanary => {
                let stable = w.subsets.stable.clone();
                w.versions.retain(|v| {
                    Some(&v.name) != canary.as_ref() || Some(&v.name) == stable.as_ref()
                });
            }
            Op::Pause(p) => w.controls.pause = p,
            Op::Abort { current } => w.controls.abort = Some(named(current)),
            Op::Promote { current } => {
                let v = named(current);
                w.aborted.retain(|(a, _)| *a != v);
                w.promoted_by_person.insert(v.clone());
                w.controls.promote = Some(v);
            }
            Op::Retry { current } => {
                let v = named(current);
                w.aborted.retain(|(a, _)| *a != v);
                w.controls.retry = Some(v);
            }
            Op::Restart => {
                restart(&mut w, false);
                continue;
            }
            Op::ColdRestart => {
                restart(&mut w, true);
                continue;
            }
            Op::FailingWrite(n) => fail_at = Some(n),
        }
        w.reconcile(verdict, fail_at);
        w.record_abort_ghost();
        if fail_at.is_none() {
            // After a reconcile that fully applied, an aborted canary is dark (3), and a
            // second reconcile of the same world changes no weight (a fixpoint).
            w.assert_aborted_is_dark();
        }
    }
}

/// 7. After a restart, no step is skipped or repeated from scratch and no weight jumps.
///
/// The restarted agent has lost only its memory (when it last checked) and, while its
/// Deployment cache is still listing, has not observed any version yet: then it must
/// plan nothing at all. Once it has, it must decide exactly what the agent that did not
/// restart would have decided.
fn restart(w: &mut World, cold: bool) {
    let before = w.clone();
    let running = plan(&w.spec, &w.observed(), None, w.now);
    w.last_check_at = None;
    if cold {
        let mut observed = w.observed();
        observed.versions = None;
        let held = plan(&w.spec, &observed, None, w.now);
        assert!(
            held.actions.is_empty(),
            "a restart with a cold Deployment cache planned {:?}",
            held.actions
        );
    }
    let restarted = plan(&w.spec, &w.observed(), None, w.now);
    assert_eq!(
        restarted.actions, running.actions,
        "the restarted agent decided otherwise than the running one"
    );
    w.reconcile(None, None);
    let (b, a) = (before.status.clone().unwrap(), w.status.clone().unwrap());
    if b.phase == Phase::Progressing && a.phase == Phase::Progressing && a.canary == b.canary {
        assert_eq!(
            (b.step, b.step_started_at),
            (a.step, a.step_started_at),
            "a restart moved the step"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_histories(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops);
    }
}

#[test]
fn requeue_tracks_the_next_check() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    let plan = w.reconcile(None, None);
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(15)));
    w.tick(15);
    let plan = w.reconcile(Some(pass()), None);
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(15)));
}

#[test]
fn a_huge_misconfiguration_is_recorded_cut_and_only_once() {
    let reason = "x".repeat(300_000);
    let first = misconfigured(None, &reason, t0()).expect("a report");
    assert!(
        first.status.message.len() < 5_000,
        "{}",
        first.status.message.len()
    );
    // The same reason again changes nothing: no write loop.
    assert!(misconfigured(Some(&first.status), &reason, t0()).is_none());
}

#[test]
fn a_tampered_status_is_not_trusted_to_set_a_weight() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    // Someone writes a status claiming v2 at weight 100 in its first step.
    let mut forged = Status::new(t0());
    forged.phase = Phase::Progressing;
    forged.stable = Some("v1".into());
    forged.canary = Some("v2".into());
    forged.canary_template = Some("t2".into());
    forged.step = Some(0);
    forged.steps = vec![10, 25, 50];
    forged.weight = 100;
    forged.step_started_at = Some(w.now);
    assert!(!forged.is_coherent(&w.spec.steps));
    w.status = Some(forged);
    w.reconcile(None, None);
    // The planner started from Idle: v2's rollout starts at its first step, 10.
    let status = w.status.clone().unwrap();
    assert_eq!((status.phase, status.weight), (Phase::Progressing, 10));
    assert_eq!(w.traffic.canary, 10);
}

/// A status written by an agent before the `t2:` template identity holds the legacy
/// hash of the canary's template: upgrading the agent must not restart the rollout.
#[test]
fn an_agent_upgrade_keeps_an_in_flight_canary_and_rerecords_its_template() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    w.tick(60);
    w.reconcile(Some(pass()), None);
    let before = w.status.clone().unwrap();
    assert_eq!((before.phase, before.step), (Phase::Progressing, Some(1)));
    // As the earlier agent recorded it.
    w.status.as_mut().unwrap().canary_template = Some("legacy-t2".into());

    w.tick(15);
    let plan = w.reconcile(Some(pass()), None);
    assert!(!reasons(&plan).contains(&"RolloutStarted"), "{plan:?}");
    let after = w.status.clone().unwrap();
    assert_eq!(after.canary_template.as_deref(), Some("t2"), "re-recorded");
    assert_eq!(
        (after.step, after.step_started_at, w.traffic.canary),
        (before.step, before.step_started_at, before.weight)
    );
    assert!(after.last_check.is_some_and(|c| c.at == w.now), "checked");

    // A legacy record of another build is a changed template: the rollout starts over.
    w.status.as_mut().unwrap().canary_template = Some("legacy-t1".into());
    let plan = w.reconcile(None, None);
    assert!(reasons(&plan).contains(&"RolloutStarted"), "{plan:?}");
    assert_eq!(w.status.as_ref().unwrap().step, Some(0));
}

/// Likewise an aborted build recorded with the legacy hash stays aborted after the
/// upgrade, and a new build of it is still released.
#[test]
fn an_agent_upgrade_does_not_release_an_aborted_build_again() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    w.controls.abort = Some("v2".into());
    w.reconcile(None, None);
    assert_eq!(w.status.as_ref().unwrap().phase, Phase::Aborted);
    w.status.as_mut().unwrap().failed[0].template = "legacy-t2".into();

    w.tick(600);
    let plan = w.reconcile(None, None);
    assert!(!reasons(&plan).contains(&"RolloutStarted"), "{plan:?}");
    assert_eq!(w.traffic.canary, 0);
    assert_eq!(w.status.as_ref().unwrap().failed[0].template, "t2");
    // Re-recorded once; then nothing to write.
    assert!(w.reconcile(None, None).actions.is_empty());

    w.versions[1].template = "t2b".into();
    w.versions[1].legacy_template = "legacy-t2b".into();
    let plan = w.reconcile(None, None);
    assert!(reasons(&plan).contains(&"RolloutStarted"), "{plan:?}");
}

// The status annotation as the agent reads it back. A person can hand-edit it into
// anything. The raw inputs below are the ones the status fuzz target found
// (fuzz/fuzz_targets/status.rs), inlined as it found them.

#[test]
fn a_status_weight_above_100_is_unreadable() {
    // Read, 104 reached the planner, whose `100 - weight` overflowed.
    let raw = r#"{"phase":"Progressing","stable":"v1","canary":"v2","canaryTemplate":"t2","step":0,"steps":[10,25,50],"weight":104,"stepStartedAt":"2026-11-13T11:00:00Z","failedChecks":0,"lastCheck":{"at":"2026-11-26T11:00:15Z","verdict":"pass","measurements":[{"metric":"error-rate","canary":0.001,"stable":0.001,"bod":{"max":0.01}}]},"evidence":{"baseline":{"boundMs":250.0,"acceptableRatio":1.5,"badRatio":3.0}},"message":"step 1/30:00Z","lastTransitionAt":"2026-11-26T11:00:15Z"}"#;
    let error = serde_json::from_str::<Status>(raw).unwrap_err();
    assert!(error.to_string().contains("a weight in 0..=100"), "{error}");
    let full = raw.replace(r#""weight":104"#, r#""weight":100"#);
    assert_eq!(serde_json::from_str::<Status>(&full).unwrap().weight, 100);
}

#[test]
fn a_status_step_past_any_spec_is_unreadable() {
    // Read, usize::MAX reached `step + 1` when the next check was due.
    let raw = r#"{"phase":"Progressing","stable":"v1","canary":"v3","canaryTemplate":"{2rrrrrrrrrrrrrrrrrrrrArrrrrrrrrrrrrrrrrrrrrrrrrrr","step":18446744073709551615,"weight":10,"stepStartedAt":"2026-11-26T11:02:15Z","failedChecks":0,"messagledAt":"20202:15Z","lastTransitionAt":"2026-11-26T11:02:15Z"}"#;
    let error = serde_json::from_str::<Status>(raw).unwrap_err();
    assert!(
        error.to_string().contains("a step index below 20"),
        "{error}"
    );
    let last = raw.replace("18446744073709551615", "19");
    assert_eq!(
        serde_json::from_str::<Status>(&last).unwrap().step,
        Some(19)
    );
}

#[test]
fn failed_checks_stop_counting_at_the_largest_count() {
    // An edited failedChecks of u32::MAX, then one more failed check: `+= 1` overflowed.
    // Seen reading the planner after the two above; the status target reaches it too.
    for (verdict, reasons_given) in [
        (fail(), vec!["CheckFailed", "Aborted"]),
        (conclusive_fail(), vec!["Aborted"]),
    ] {
        let mut w = World::new();
        w.reconcile(None, None);
        w.versions.push(version("v2", "t2", 60));
        w.reconcile(None, None);
        w.status.as_mut().unwrap().failed_checks = u32::MAX;
        w.tick(15);
        let plan = w.reconcile(Some(verdict), None);
        assert_eq!(reasons(&plan), reasons_given);
        let status = w.status.as_ref().unwrap();
        assert_eq!(status.phase, Phase::Aborted);
        assert_eq!(status.failed_checks, u32::MAX);
    }
}

#[test]
fn a_written_status_reads_back_exactly() {
    // Counts and baselines are arbitrary floats (Prometheus extrapolates counts); parsed
    // to the nearest float only approximately, one in six came back an ulp off, and the
    // record drifted at every write. The first value is the one fuzzing found.
    let mut status = Status::new(t0());
    status.evidence.baseline = Some(weir_analysis::sequential::LatencyBaseline {
        bound_ms: 2.5099999999999995e83,
        acceptable_ratio: 1.0000206012344143e-6,
        bad_ratio: 3.0,
    });
    status.evidence.steps.push(Default::default());
    status.evidence.steps[0].canary.requests = 1109.3227918615867;
    let written = serde_json::to_string(&status).unwrap();
    assert_eq!(serde_json::from_str::<Status>(&written).unwrap(), status);
}

// The superseded version's scale-down (`scale-down-delay`).

fn promoted() -> World {
    let mut w = at_last_step();
    w.reconcile(Some(pass()), None);
    assert_eq!(w.status.as_ref().unwrap().stable.as_deref(), Some("v2"));
    w
}

#[test]
fn the_superseded_version_is_scaled_down_once_after_the_delay() {
    let mut w = promoted();
    let superseded = &w.status.as_ref().unwrap().superseded;
    assert_eq!(superseded.len(), 1, "{superseded:?}");
    assert_eq!(superseded[0].version, "v1");
    assert_eq!(superseded[0].deployment, "checkout-v1");
    assert!(
        w.scaled_down.is_empty(),
        "scaled down at the promotion itself"
    );

    w.tick(29);
    let plan = w.reconcile(None, None);
    assert!(w.scaled_down.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(1)));

    w.tick(1);
    let plan = w.reconcile(None, None);
    assert_eq!(w.scaled_down, ["v1"]);
    assert!(
        matches!(plan.actions.last(), Some(Action::ScaleDown { resource_version: Some(rv), .. }) if rv == "1"),
        "the scale-down comes last, guarded: {plan:?}"
    );
    // Kept until seen at zero; then forgotten, and never scaled again.
    assert_eq!(w.status.as_ref().unwrap().superseded.len(), 1);
    let plan = w.reconcile(None, None);
    assert!(w.status.as_ref().unwrap().superseded.is_empty(), "{plan:?}");
    w.versions[0].replicas = Some(3); // a person or an HPA scales it up again
    for _ in 0..3 {
        w.tick(3600);
        assert!(w.reconcile(None, None).actions.is_empty());
    }
    assert_eq!(w.scaled_down, ["v1"]);
}

#[test]
fn a_refused_scale_down_is_tried_again() {
    let mut w = promoted();
    w.tick(30);
    w.reconcile(None, None);
    assert_eq!(w.scaled_down, ["v1"]);
    // Undo it, as if the apiserver had refused it: the version still has replicas.
    w.versions[0].replicas = Some(2);
    w.scaled_down.clear();
    w.reconcile(None, None);
    assert_eq!(w.scaled_down, ["v1"]);
}

#[test]
fn never_keeps_the_superseded_version_running() {
    let mut w = at_last_step();
    w.spec.scale_down_delay = None;
    w.reconcile(Some(pass()), None);
    assert!(w.status.as_ref().unwrap().superseded.is_empty());
    w.tick(7 * 24 * 3600);
    w.reconcile(None, None);
    assert!(w.scaled_down.is_empty());

    // Set to never after a promotion, it cancels the pending scale-down.
    let mut w = promoted();
    w.spec.scale_down_delay = None;
    w.tick(3600);
    w.reconcile(None, None);
    assert!(w.scaled_down.is_empty());
    assert!(w.status.as_ref().unwrap().superseded.is_empty());
}

#[test]
fn a_superseded_version_in_use_again_or_gone_is_not_scaled() {
    // A person points the stable subset back at v1 (a manual rollback).
    let mut w = promoted();
    w.subsets.stable = Some("v1".into());
    w.tick(60);
    w.reconcile(None, None);
    assert!(w.scaled_down.is_empty());
    assert!(w.status.as_ref().unwrap().superseded.is_empty());

    // v1's Deployment was deleted (pruned by GitOps).
    let mut w = promoted();
    w.versions.retain(|v| v.name != "v1");
    w.tick(60);
    w.reconcile(None, None);
    assert!(w.scaled_down.is_empty());
    assert!(w.status.as_ref().unwrap().superseded.is_empty());

    // Already at zero replicas (the pipeline scaled it): nothing to do.
    let mut w = promoted();
    w.versions[0].replicas = Some(0);
    w.tick(60);
    w.reconcile(None, None);
    assert!(w.scaled_down.is_empty());
    assert!(w.status.as_ref().unwrap().superseded.is_empty());
}

#[test]
fn each_promotion_scales_down_what_it_superseded() {
    // v3 is promoted while v1's delay is still running: both are scaled, each once.
    let mut w = promoted();
    w.spec.scale_down_delay = Some(Duration::from_secs(600));
    w.versions.push(version("v3", "t3", 120));
    w.reconcile(None, None);
    while w.status.as_ref().unwrap().stable.as_deref() != Some("v3") {
        w.tick(15);
        w.reconcile(Some(pass()), None);
    }
    let pending: Vec<&str> = w
        .status
        .as_ref()
        .unwrap()
        .superseded
        .iter()
        .map(|s| s.version.as_str())
        .collect();
    assert_eq!(pending, ["v1", "v2"]);
    w.tick(600);
    w.reconcile(None, None);
    w.reconcile(None, None);
    assert_eq!(w.scaled_down, ["v1", "v2"]);
    assert!(w.status.as_ref().unwrap().superseded.is_empty());
}

// The record the status keeps for its readers: the settings the agent resolved, and how
// each rollout ended.

#[test]
fn a_status_written_by_the_previous_agent_still_reads_and_is_completed_quietly() {
    // Exactly as the previous release wrote it: no settings, no recorded end.
    let raw = r#"{"phase":"Progressing","stable":"v1","canary":"v2","canaryTemplate":"t2","step":1,"steps":[10,25,50],"weight":25,"stepStartedAt":"2026-11-26T11:00:00Z","failedChecks":1,"message":"check passed; canary weight 10 → 25 (step 2/3)","rolloutStartedAt":"2026-11-26T10:58:00Z","lastTransitionAt":"2026-11-26T11:00:00Z"}"#;
    let old: Status = serde_json::from_str(raw).unwrap();
    assert_eq!(
        (old.phase, old.step, old.weight, old.failed_checks),
        (Phase::Progressing, Some(1), 25, 1)
    );
    assert_eq!((&old.settings, &old.ended), (&None, &None));

    let mut w = World::new();
    w.versions.push(version("v2", "t2", 60));
    w.traffic = Traffic {
        stable: 75,
        canary: 25,
    };
    w.subsets.canary = Some("v2".into());
    w.status = Some(old.clone());
    w.now = "2026-11-26T11:00:05Z".parse().unwrap();
    // The upgraded agent records its settings, in the same rollout at the same step, and
    // that is no transition.
    let plan = w.reconcile(None, None);
    let written = plan.written_status().expect("the settings are recorded");
    assert_eq!(written.settings, Some(Settings::of(&w.spec)));
    assert_eq!(
        Status {
            settings: None,
            ..written.clone()
        },
        old
    );
    assert!(reasons(&plan).is_empty(), "{plan:?}");
    // Then nothing more to write.
    w.tick(1);
    let plan = w.reconcile(None, None);
    assert_eq!(plan.written_status(), None, "{plan:?}");
}

#[test]
fn a_record_that_does_not_read_is_dropped_not_the_status() {
    let raw = r#"{"phase":"Idle","stable":"v1","weight":0,"settings":{"stepInterval":5},"ended":"soon","lastTransitionAt":"2026-11-26T11:00:00Z"}"#;
    let status: Status = serde_json::from_str(raw).unwrap();
    assert_eq!(status.stable.as_deref(), Some("v1"));
    assert_eq!((status.settings, status.ended), (None, None));
    // One the agent would not have written (a hand-edited interval) is dropped too, so
    // that every status reads back as it is written.
    let mut settings = serde_json::to_value(Settings::of(&spec())).unwrap();
    let written = json_with(&settings);
    assert!(
        serde_json::from_str::<Status>(&written)
            .unwrap()
            .settings
            .is_some()
    );
    settings["stepInterval"] = "60s".into();
    let edited = json_with(&settings);
    assert_eq!(
        serde_json::from_str::<Status>(&edited).unwrap().settings,
        None
    );
}

/// An idle status with these settings.
fn json_with(settings: &serde_json::Value) -> String {
    format!(
        r#"{{"phase":"Idle","weight":0,"lastTransitionAt":"2026-11-26T11:00:00Z","settings":{settings}}}"#
    )
}

#[test]
fn settings_read_back_exactly_as_recorded_and_stand_in_for_the_agents_defaults() {
    let enabled = [(crate::spec::keys::ENABLED, "true")];
    let parse = |extra: &[(&str, &str)], defaults: &Defaults| {
        let annotations: BTreeMap<String, String> = enabled
            .iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        crate::spec::parse("checkout", &annotations, defaults).unwrap()
    };
    use crate::spec::keys;
    let unusual = [
        (keys::STEPS, "5,20,100"),
        (keys::STEP_INTERVAL, "1h 30m 1.5s"),
        (keys::CHECK_INTERVAL, "20s"),
        (keys::MAX_ERROR_RATE, "0.3%"),
        (keys::ERROR_CODES, "5..|429"),
        (keys::MAX_LATENCY, "1.25s"),
        (keys::LATENCY_QUANTILE, "0.95"),
        (keys::MAX_SLOW_SHARE, "5%"),
        (keys::SLOW_THRESHOLD, "250ms"),
        (keys::ANALYSIS, "threshold"),
        (keys::TOLERANCE, "25%"),
        (keys::CONFIDENCE, "99.9%"),
        (keys::FAILURE_LIMIT, "3"),
        (keys::NO_DATA_TIMEOUT, "15m"),
        (keys::DECISION_TIMEOUT, "45m"),
        (keys::SCALE_DOWN_DELAY, "never"),
        (keys::STABLE_SUBSET, "primary"),
        (keys::CANARY_SUBSET, "candidate"),
        (keys::VERSION_LABEL, "app.kubernetes.io/version"),
    ];
    let settings = Settings::of(&parse(&unusual, &Defaults::default()));
    let json = serde_json::to_value(&settings).unwrap();
    assert_eq!(json["stepInterval"], "1h 30m 1s 500ms");
    assert_eq!(json["scaleDownDelay"], "never");
    assert_eq!(serde_json::from_value::<Settings>(json).unwrap(), settings);
    // A reader that knows only the record resolves what the agent resolved.
    let again = parse(&[], &settings.as_defaults());
    assert_eq!(Settings::of(&again), settings);
    // An annotation changed since the record wins, as it will at the next reconcile.
    let changed = parse(&[(keys::FAILURE_LIMIT, "5")], &settings.as_defaults());
    assert_eq!(changed.failure_limit, 5);
    assert_eq!(changed.step_interval, settings.step_interval);
    // A zero scale-down delay is recorded as one, not as never.
    let now = Settings::of(&parse(
        &[(keys::SCALE_DOWN_DELAY, "0s")],
        &Defaults::default(),
    ));
    let json = serde_json::to_string(&now).unwrap();
    assert_eq!(
        serde_json::from_str::<Settings>(&json)
            .unwrap()
            .scale_down_delay,
        Some(Duration::ZERO)
    );
}

#[test]
fn the_planner_records_how_each_rollout_ended() {
    let mut w = World::new();
    w.reconcile(None, None);
    assert_eq!(w.status.as_ref().unwrap().ended, None);
    // Promoted after its last step.
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    let started = w.now;
    for _ in 0..40 {
        w.tick(15);
        w.reconcile(Some(pass()), None);
        if w.status.as_ref().unwrap().phase == Phase::Idle {
            break;
        }
    }
    let ended = w.status.as_ref().unwrap().ended.clone().unwrap();
    assert_eq!(
        (ended.version.as_str(), ended.outcome),
        ("v2", Outcome::Promoted)
    );
    assert_eq!(ended.started_at, Some(started));
    assert_eq!(ended.at, w.now);
    assert!(ended.reason.starts_with("all 3 steps passed"), "{ended:?}");
    assert!(ended.duration() > Duration::ZERO);

    // Aborted by a person; the record outlives the next rollout's start.
    w.versions.push(version("v3", "t3", 120));
    w.tick(1);
    w.reconcile(None, None);
    w.controls.abort = Some("v3".into());
    w.tick(1);
    w.reconcile(None, None);
    let ended = w.status.as_ref().unwrap().ended.clone().unwrap();
    assert_eq!(
        (ended.version.as_str(), ended.outcome),
        ("v3", Outcome::Aborted)
    );
    assert_eq!(ended.reason, "aborted by weir.dev/abort=v3");
    w.versions.push(version("v4", "t4", 180));
    w.tick(1);
    w.reconcile(None, None);
    let status = w.status.clone().unwrap();
    assert_eq!(status.canary.as_deref(), Some("v4"));
    assert_eq!(
        status.ended.as_ref().map(|e| e.version.as_str()),
        Some("v3")
    );

    // Abandoned: its Deployment went away.
    w.versions.retain(|v| v.name != "v4");
    w.tick(1);
    w.reconcile(None, None);
    let ended = w.status.as_ref().unwrap().ended.clone().unwrap();
    assert_eq!(
        (ended.version.as_str(), ended.outcome),
        ("v4", Outcome::Abandoned)
    );
}

#[test]
fn the_status_keeps_the_rollouts_checks_for_charts_and_drops_them_at_its_end() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    assert!(w.status.as_ref().unwrap().history.is_empty());

    let mut seen = Vec::new();
    for _ in 0..40 {
        w.tick(15);
        w.reconcile(Some(pass()), None);
        let status = w.status.clone().unwrap();
        if status.phase != Phase::Progressing {
            assert!(status.history.is_empty(), "emptied at the end: {status:#?}");
            break;
        }
        let last = status.history.last().expect("each check is kept");
        assert_eq!(Some(last.at), status.last_check.as_ref().map(|c| c.at));
        assert_eq!(last.verdict, "pass");
        seen.push((status.history.len(), last.weight));
    }
    // One point per check, each with the weight it was made at.
    assert_eq!(
        seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        (1..=seen.len()).collect::<Vec<_>>()
    );
    let weights: Vec<_> = seen.iter().map(|(_, w)| *w).collect();
    assert_eq!(weights.first(), Some(&10));
    assert!(
        weights.contains(&25) && weights.contains(&50),
        "{weights:?}"
    );

    // A new rollout starts a new history.
    w.versions.push(version("v3", "t3", 120));
    w.tick(15);
    w.reconcile(None, None);
    w.tick(15);
    w.reconcile(Some(pass()), None);
    assert_eq!(w.status.as_ref().unwrap().history.len(), 1);
}

#[test]
fn a_long_rollouts_history_is_thinned_and_still_spans_it() {
    let verdict = pass();
    let mut history = Vec::new();
    let start = t0();
    for i in 0..1000 {
        let at = start + SignedDuration::from_secs(i * 15);
        super::record::remember(&mut history, CheckPoint::of(at, 10, &verdict));
        assert!(history.len() <= MAX_HISTORY, "{}", history.len());
    }
    assert_eq!(
        history.first().map(|p| p.at),
        Some(start),
        "the first check stays"
    );
    assert_eq!(
        history.last().map(|p| p.at),
        Some(start + SignedDuration::from_secs(999 * 15))
    );
    assert!(history.windows(2).all(|w| w[0].at < w[1].at));
    let size = serde_json::to_string(&history).unwrap().len();
    assert!(size < 8 * 1024, "{size} bytes");
}

#[test]
fn a_history_that_does_not_read_back_as_written_is_dropped_not_the_status() {
    let mut w = World::new();
    w.reconcile(None, None);
    w.versions.push(version("v2", "t2", 60));
    w.reconcile(None, None);
    w.tick(15);
    w.reconcile(Some(pass()), None);
    let status = w.status.clone().unwrap();
    let mut json = serde_json::to_value(&status).unwrap();
    assert_eq!(
        serde_json::from_value::<Status>(json.clone()).unwrap(),
        status
    );

    json["history"][0]["values"]["error-rate"] = serde_json::json!(["high", 1]);
    let read: Status = serde_json::from_value(json).unwrap();
    assert!(read.history.is_empty());
    assert_eq!(read.step, status.step, "the rest of the status reads");
}
