//! The `weir.dev/status` annotation, decoded as the agent decodes it, then handed to the
//! planner: a hand-edited or corrupted status may be refused, never crash the agent.
//!
//! Input: 4 bytes that shape the rest of what the planner observes (live weights,
//! subsets, Deployments, controls, the time), then the annotation's raw text.
//!
//! A decoded status must survive the agent's own write and read unchanged; every plan
//! made from it must only ask for weights that sum to 100.
#![no_main]

use jiff::{SignedDuration, Timestamp};
use libfuzzer_sys::fuzz_target;
use weir::plan::{
    self, Action, CheckRecord, Controls, Observed, Plan, Status, Subsets, Traffic, Version,
};
use weir::spec::{self, Defaults, RolloutSpec, keys};
use weir_analysis::Verdict;
use weir_analysis::judge::Judgement;
use weir_analysis::sequential::StepCounts;

fuzz_target!(|data: &[u8]| {
    let Some((&[weight, mesh, cluster, clock], raw)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Ok(raw) = std::str::from_utf8(raw) else {
        return;
    };
    let Ok(status) = serde_json::from_str::<Status>(raw) else {
        return;
    };
    let written = serde_json::to_string(&status).expect("a status serializes");
    let read: Status = serde_json::from_str(&written).expect("a written status reads");
    assert_eq!(read, status, "{written}");

    let spec = spec(clock % 3);
    let observed = observed(&status, weight, mesh, cluster);
    let base = status.step_started_at.unwrap_or(status.last_transition_at);
    let offset = SignedDuration::from_secs(i64::from(clock / 3) * 97 - 3600);
    let now = base.checked_add(offset).unwrap_or(base);

    if let Some(report) = plan::misconfigured(Some(&status), "fuzzed", now) {
        serde_json::to_string(&report.status).expect("a misconfigured status serializes");
    }
    check_plan(&plan::plan(&spec, &observed, None, now), &observed);
    if let Some(request) = plan::check_due(&spec, &observed, now) {
        assert_eq!(Some(&request.canary), status.canary.as_ref());
        assert!(request.next_weight <= 100);
        // The verdict the status records stands in for the judge's.
        let verdict = status.last_check.clone().map_or_else(
            || Verdict::Pass {
                measurements: Vec::new(),
            },
            |CheckRecord { verdict, .. }| verdict,
        );
        let judgement = Judgement {
            verdict,
            step: Some(StepCounts::default()),
            baseline: status.evidence.baseline,
        };
        check_plan(
            &plan::plan(&spec, &observed, Some((&request, &judgement)), now),
            &observed,
        );
    }
});

fn spec(choice: u8) -> RolloutSpec {
    let steps = [
        "10,25,50",
        "100",
        "1,2,3,4,5,6,7,8,9,10,20,30,40,50,60,70,80,90,95,99",
    ];
    let annotations = [
        (keys::ENABLED.to_owned(), "true".to_owned()),
        (
            keys::STEPS.to_owned(),
            steps[usize::from(choice)].to_owned(),
        ),
    ]
    .into();
    spec::parse("shop", &annotations, &Defaults::default()).expect("valid annotations")
}

/// What the controller would have read next to this status: live weights that sum to
/// 100 (the mesh refuses anything else before the planner runs), subsets and
/// Deployments named after the status's versions or others, and controls aimed at them.
fn observed(status: &Status, weight: u8, mesh: u8, cluster: u8) -> Observed {
    let canary = status.canary.clone().unwrap_or_else(|| "v2".into());
    let stable = status.stable.clone().unwrap_or_else(|| "v1".into());
    let bit = |byte: u8, n: u8| byte & (1 << n) != 0;
    let pick = |choice: u8| match choice & 3 {
        0 => None,
        1 => Some(stable.clone()),
        2 => Some(canary.clone()),
        _ => Some("v0".to_owned()),
    };
    let canary_weight = weight % 101;
    let control = |on: bool| on.then(|| canary.clone());
    let base = status.last_transition_at;
    let ago = |hours: i64| {
        base.checked_sub(SignedDuration::from_hours(hours))
            .unwrap_or(base)
    };
    let version = |name: &str, template: String, available: bool, created: Timestamp| Version {
        name: name.to_owned(),
        deployment: format!("shop-{name}"),
        legacy_template: format!("legacy-{template}"),
        template,
        available,
        created,
        reported: name.to_owned(),
        replicas: bit(mesh, 7).then_some(0),
        resource_version: Some("1".to_owned()),
    };
    let mut versions = Vec::new();
    if bit(cluster, 0) {
        let template = match (bit(cluster, 1), &status.canary_template) {
            (true, Some(template)) => template.clone(),
            _ => "t-new".to_owned(),
        };
        versions.push(version(&canary, template, bit(cluster, 2), ago(1)));
    }
    if bit(cluster, 3) {
        versions.push(version(
            &stable,
            "t-stable".into(),
            bit(cluster, 4),
            ago(24),
        ));
    }
    if bit(cluster, 5) {
        versions.push(version("v3", "t3".into(), true, base));
    }
    Observed {
        // All bits of `cluster` set: the Deployment cache has not listed yet.
        versions: (cluster != u8::MAX).then_some(versions),
        traffic: Traffic {
            stable: 100 - canary_weight,
            canary: canary_weight,
        },
        subsets: Subsets {
            stable: pick(mesh),
            canary: pick(mesh >> 2),
        },
        status: Some(status.clone()),
        controls: Controls {
            pause: bit(mesh, 4),
            promote: control(bit(mesh, 5)),
            abort: control(bit(mesh, 6)),
            retry: control(bit(mesh, 7)),
        },
        last_check_at: bit(cluster, 6).then(|| ago(0)),
    }
}

/// What any plan must hold: the weights it sets sum to 100, and it never asks to be
/// woken again at once.
fn check_plan(plan: &Plan, observed: &Observed) {
    for action in &plan.actions {
        match action {
            Action::SetWeights(traffic) => assert!(
                traffic.stable <= 100
                    && u16::from(traffic.stable) + u16::from(traffic.canary) == 100,
                "{traffic:?}"
            ),
            Action::WriteStatus { status, .. } => {
                serde_json::to_string(status).expect("a planned status serializes");
            }
            Action::ScaleDown { version, .. } => {
                let named = |v: &Option<String>| v.as_deref() == Some(version.as_str());
                assert!(
                    !named(&observed.subsets.stable)
                        && !named(&observed.subsets.canary)
                        && !plan.written_status().is_some_and(|s| named(&s.stable) || named(&s.canary)),
                    "a scale-down of a version in use: {version}"
                );
            }
            Action::SetSubsetVersion { .. } | Action::Emit(_) => {}
        }
    }
    if let Some(after) = plan.requeue_after {
        assert!(after.as_secs() >= 1, "{after:?}");
    }
}
