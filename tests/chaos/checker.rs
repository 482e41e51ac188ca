//! The invariant checker: every revision of every VirtualService, DestinationRule and
//! Service of the namespace, recorded from watches and replayed in resourceVersion order
//! (etcd's revision, one order for every object of the test bed), held to DESIGN.md's
//! invariants.
//!
//! It shares no code with the agent: it reads the objects and the status annotation as
//! JSON and applies the contract's rules as written, so that a bug in the agent's
//! planner cannot hide itself here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::Value;

/// The managed route's name, and the subsets, in every chaos Service.
pub const ROUTE: &str = "primary";
const STABLE: &str = "stable";
const CANARY: &str = "canary";
const VERSION_LABEL: &str = "version";
const STATUS: &str = "weir.dev/status";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Service,
}

/// One stored revision of one object.
#[derive(Clone, Debug)]
pub struct Revision {
    pub rv: u64,
    pub kind: Kind,
    pub name: String,
    pub object: Value,
}

/// Which revision: the object's kind and name, and its resourceVersion.
type RevisionKey = (Kind, String, u64);

/// Every revision seen, and the revisions the suite itself wrote (foreign edits).
#[derive(Clone, Default)]
pub struct Record {
    revisions: Arc<Mutex<BTreeMap<RevisionKey, Value>>>,
    foreign: Arc<Mutex<BTreeSet<RevisionKey>>>,
}

impl Record {
    /// Starts a watch of each kind in `namespace`; they record until the tasks are
    /// aborted. A watch that breaks (the apiserver restarted) lists again and goes on.
    pub fn start(
        client: &kube::Client,
        namespace: &str,
    ) -> (Record, Vec<tokio::task::JoinHandle<()>>) {
        let record = Record::default();
        let kinds = [
            (
                Kind::VirtualService,
                GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
            ),
            (
                Kind::DestinationRule,
                GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule"),
            ),
            (Kind::Service, GroupVersionKind::gvk("", "v1", "Service")),
        ];
        let tasks = kinds
            .into_iter()
            .map(|(kind, gvk)| {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk));
                let record = record.clone();
                tokio::spawn(async move {
                    let mut objects = std::pin::pin!(
                        watcher(api, watcher::Config::default())
                            .default_backoff()
                            .touched_objects()
                    );
                    while let Some(object) = objects.next().await {
                        if let Ok(object) = object {
                            record.add(kind, object);
                        }
                    }
                })
            })
            .collect();
        (record, tasks)
    }

    fn add(&self, kind: Kind, object: DynamicObject) {
        let (Some(name), Some(rv)) = (
            object.metadata.name.clone(),
            object
                .metadata
                .resource_version
                .as_deref()
                .and_then(|rv| rv.parse::<u64>().ok()),
        ) else {
            return;
        };
        let Ok(value) = serde_json::to_value(&object) else {
            return;
        };
        self.revisions
            .lock()
            .unwrap()
            .insert((kind, name, rv), value);
    }

    /// Marks the revision `rv` of `name` as written by the suite (a foreign edit).
    pub fn foreign(&self, kind: Kind, name: &str, rv: u64) {
        self.foreign
            .lock()
            .unwrap()
            .insert((kind, name.to_owned(), rv));
    }

    /// The revisions in resourceVersion order.
    pub fn revisions(&self) -> Vec<Revision> {
        let mut all: Vec<Revision> = self
            .revisions
            .lock()
            .unwrap()
            .iter()
            .map(|((kind, name, rv), object)| Revision {
                rv: *rv,
                kind: *kind,
                name: name.clone(),
                object: object.clone(),
            })
            .collect();
        all.sort_by_key(|r| r.rv);
        all
    }

    fn is_foreign(&self, kind: Kind, name: &str, rv: u64) -> bool {
        self.foreign
            .lock()
            .unwrap()
            .contains(&(kind, name.to_owned(), rv))
    }
}

/// How each rollout ended, as the statuses tell.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub promoted: usize,
    pub aborted: usize,
}

/// What the checker concluded.
#[derive(Debug, Default)]
pub struct Report {
    pub revisions: usize,
    pub violations: Vec<String>,
    pub outcomes: Outcomes,
}

/// The checker's view of one Service.
#[derive(Default)]
struct Service {
    status: Option<Value>,
    vs: Option<Value>,
    dr: Option<Value>,
    /// (version, template) pairs aborted.
    aborted: BTreeSet<(String, String)>,
    /// (version, template) → the rolloutStartedAt of its rollout in progress.
    rollouts: HashMap<(String, String), String>,
    /// A stable subset moved to this version; the next status must be its promotion.
    promoting: Option<String>,
}

/// Replays `record` and checks every invariant on every revision.
pub fn check(record: &Record) -> Report {
    let revisions = record.revisions();
    let mut report = Report {
        revisions: revisions.len(),
        ..Report::default()
    };
    let mut services: HashMap<String, Service> = HashMap::new();
    for revision in &revisions {
        let service = services.entry(revision.name.clone()).or_default();
        let foreign = record.is_foreign(revision.kind, &revision.name, revision.rv);
        let mut violated = |what: String| {
            report.violations.push(format!(
                "{} {:?} at rv {}: {what}",
                revision.name, revision.kind, revision.rv
            ))
        };
        match revision.kind {
            Kind::VirtualService => {
                check_virtual_service(service, &revision.object, foreign, &mut violated);
                service.vs = Some(revision.object.clone());
            }
            Kind::DestinationRule => {
                check_destination_rule(service, &revision.object, foreign, &mut violated);
                service.dr = Some(revision.object.clone());
            }
            Kind::Service => {
                if let Some(status) = status_of(&revision.object) {
                    check_status(service, &status, &mut report.outcomes, &mut violated);
                    service.status = Some(status);
                }
            }
        }
    }
    for (name, service) in &services {
        if let Some(version) = &service.promoting {
            report.violations.push(format!(
                "{name}: the stable subset moved to {version}, but no status ever recorded its promotion"
            ));
        }
        // 3. An aborted canary ends with no traffic.
        if let (Some(status), Some(vs)) = (&service.status, &service.vs)
            && str_at(status, "phase") == Some("Aborted")
            && canary_weight(vs).unwrap_or(0) != 0
        {
            report.violations.push(format!(
                "{name}: the rollout ended Aborted with canary weight {:?}",
                canary_weight(vs)
            ));
        }
    }
    report
}

fn check_virtual_service(
    service: &Service,
    vs: &Value,
    foreign: bool,
    violated: &mut impl FnMut(String),
) {
    // 1. The managed route's weights are integers in 0..=100 summing to 100.
    let Some(route) = managed_route(vs) else {
        violated("the managed route is gone".into());
        return;
    };
    let destinations = route["route"].as_array().cloned().unwrap_or_default();
    let sole = destinations.len() == 1;
    let mut sum = 0i64;
    for destination in &destinations {
        let weight = match &destination["weight"] {
            Value::Null if sole => 100,
            Value::Null => 0,
            w => match w.as_i64() {
                Some(w) => w,
                None => {
                    violated(format!("a weight is not an integer: {w}"));
                    return;
                }
            },
        };
        if !(0..=100).contains(&weight) {
            violated(format!("a weight is outside 0..=100: {weight}"));
        }
        sum += weight;
    }
    if sum != 100 {
        violated(format!("the weights sum to {sum}: {destinations:?}"));
    }
    let Some(previous) = &service.vs else {
        return;
    };
    // 5. Nothing but the managed route's destinations changes, unless the suite edited.
    if !foreign && without_managed_route(previous) != without_managed_route(vs) {
        violated("a field outside the managed weights changed".into());
    }
    // 2. The canary weight rises only to the current step's weight, after the previous
    //    step passed (or at the start of a rollout).
    let (before, after) = (
        canary_weight(previous).unwrap_or(0),
        canary_weight(vs).unwrap_or(0),
    );
    if after > before {
        let Some(status) = &service.status else {
            violated(format!(
                "canary weight rose {before} → {after} with no status"
            ));
            return;
        };
        let phase = str_at(status, "phase").unwrap_or_default();
        let step = status["step"].as_u64();
        let steps: Vec<i64> = status["steps"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        let step_weight = step.and_then(|i| steps.get(i as usize)).copied();
        if phase != "Progressing" && phase != "Paused" {
            violated(format!(
                "canary weight rose {before} → {after} while {phase}"
            ));
        } else if step_weight != Some(after) {
            violated(format!(
                "canary weight rose to {after}, not the current step's weight {step_weight:?}"
            ));
        } else if step != Some(0) && last_verdict(status) != Some("pass") {
            violated(format!(
                "canary weight rose {before} → {after} without a passing check (last: {:?})",
                last_verdict(status)
            ));
        }
    }
}

fn check_destination_rule(
    service: &mut Service,
    dr: &Value,
    foreign: bool,
    violated: &mut impl FnMut(String),
) {
    let Some(previous) = &service.dr else {
        return;
    };
    if !foreign && without_subset_versions(previous) != without_subset_versions(dr) {
        violated("a field outside the subsets' version labels changed".into());
    }
    // 4. The stable subset moves to a version only at the end of its rollout.
    let (was, now) = (subset_version(previous, STABLE), subset_version(dr, STABLE));
    if now != was
        && let Some(now) = now
    {
        let status = service.status.clone().unwrap_or(Value::Null);
        let phase = str_at(&status, "phase").unwrap_or_default();
        let canary = str_at(&status, "canary");
        let last_step = status["steps"]
            .as_array()
            .map(|s| s.len().saturating_sub(1) as u64);
        let at_last_step = status["step"].as_u64() == last_step && last_step.is_some();
        let promoting = phase == "Promoting" || (phase == "Progressing" && at_last_step);
        if canary != Some(now.as_str()) || !promoting {
            violated(format!(
                "the stable subset moved to {now} while the status was {phase} with canary {canary:?} at step {:?}",
                status["step"]
            ));
        }
        service.promoting = Some(now);
    }
    // The canary subset is repointed only while it gets no traffic.
    if subset_version(previous, CANARY) != subset_version(dr, CANARY)
        && let Some(vs) = &service.vs
        && canary_weight(vs).unwrap_or(0) != 0
    {
        violated(format!(
            "the canary subset was repointed while it had weight {:?}",
            canary_weight(vs)
        ));
    }
}

fn check_status(
    service: &mut Service,
    status: &Value,
    outcomes: &mut Outcomes,
    violated: &mut impl FnMut(String),
) {
    let phase = str_at(status, "phase").unwrap_or_default();
    let canary = str_at(status, "canary").map(str::to_owned);
    let template = str_at(status, "canaryTemplate").map(str::to_owned);
    // 4. A promotion recorded after its subset moved, with the check that decided it.
    if let Some(version) = service.promoting.take() {
        let stable = str_at(status, "stable");
        let message = str_at(status, "message").unwrap_or_default();
        if phase != "Idle" || stable != Some(version.as_str()) {
            violated(format!(
                "after the stable subset moved to {version}, the status says {phase} with stable {stable:?}"
            ));
        } else if last_verdict(status) != Some("pass")
            && !message.contains("already selects")
            && !message.contains("weir.dev/promote")
        {
            violated(format!(
                "{version} was promoted without a passing check: last {:?}, message {message:?}",
                last_verdict(status)
            ));
        } else {
            outcomes.promoted += 1;
        }
    }
    let previous = service.status.clone().unwrap_or(Value::Null);
    let (Some(canary), Some(template)) = (canary, template) else {
        return;
    };
    let key = (canary.clone(), template.clone());
    match phase {
        "Progressing" | "Paused" => {
            // 3. An aborted version is not released again without a retry or a new build.
            if service.aborted.contains(&key) {
                violated(format!("{canary} was released again after its abort"));
            }
            let started = str_at(status, "rolloutStartedAt")
                .unwrap_or_default()
                .to_owned();
            match service.rollouts.get(&key) {
                // 7. No rollout of the same build starts over while it is in progress.
                Some(previous_start) if *previous_start != started => violated(format!(
                    "the rollout of {canary} started over from scratch ({previous_start} → {started})"
                )),
                _ => {}
            }
            service.rollouts.insert(key.clone(), started);
            // 7. Within a rollout, no step is skipped or repeated, and a step keeps its
            //    start.
            if str_at(&previous, "canary") == Some(canary.as_str())
                && str_at(&previous, "canaryTemplate") == Some(template.as_str())
                && let (Some(before), Some(after)) =
                    (previous["step"].as_u64(), status["step"].as_u64())
            {
                if after < before {
                    violated(format!("step went back {before} → {after}"));
                } else if after > before + 1 {
                    violated(format!("step skipped {before} → {after}"));
                } else if after == before && previous["stepStartedAt"] != status["stepStartedAt"] {
                    violated(format!("step {after} started over"));
                }
            }
        }
        "Aborted" => {
            if service.rollouts.remove(&key).is_some() {
                outcomes.aborted += 1;
            }
            service.aborted.insert(key);
        }
        _ => {
            service
                .rollouts
                .retain(|(version, _), _| *version != canary);
        }
    }
    if phase == "Idle" {
        // A rollout that ended in a promotion, or a canary gone: nothing in progress.
        service.rollouts.clear();
    }
}

fn status_of(service: &Value) -> Option<Value> {
    let raw = service["metadata"]["annotations"][STATUS].as_str()?;
    serde_json::from_str(raw).ok()
}

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value[key].as_str()
}

fn last_verdict(status: &Value) -> Option<&str> {
    status["lastCheck"]["verdict"].as_str()
}

fn managed_route(vs: &Value) -> Option<&Value> {
    vs["spec"]["http"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == ROUTE)
}

fn canary_weight(vs: &Value) -> Option<i64> {
    let route = managed_route(vs)?;
    let destinations = route["route"].as_array()?;
    let canary = destinations
        .iter()
        .find(|d| d["destination"]["subset"] == CANARY)?;
    Some(canary["weight"].as_i64().unwrap_or(0))
}

fn subset_version(dr: &Value, subset: &str) -> Option<String> {
    dr["spec"]["subsets"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == subset)?["labels"][VERSION_LABEL]
        .as_str()
        .map(str::to_owned)
}

/// The object as far as the agent may not change it: without server-maintained
/// metadata and without the managed route's destinations.
fn without_managed_route(vs: &Value) -> Value {
    let mut vs = without_server_fields(vs);
    if let Some(routes) = vs["spec"]["http"].as_array_mut() {
        for route in routes.iter_mut().filter(|r| r["name"] == ROUTE) {
            route["route"] = Value::Null;
        }
    }
    vs
}

fn without_subset_versions(dr: &Value) -> Value {
    let mut dr = without_server_fields(dr);
    if let Some(subsets) = dr["spec"]["subsets"].as_array_mut() {
        for subset in subsets
            .iter_mut()
            .filter(|s| s["name"] == STABLE || s["name"] == CANARY)
        {
            if let Some(labels) = subset["labels"].as_object_mut() {
                labels.remove(VERSION_LABEL);
            }
        }
    }
    dr
}

fn without_server_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object["metadata"].as_object_mut() {
        for field in [
            "resourceVersion",
            "generation",
            "managedFields",
            "uid",
            "creationTimestamp",
        ] {
            meta.remove(field);
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vs(stable: i64, canary: i64, extra_route: bool) -> Value {
        let mut http = vec![json!({"name": ROUTE, "route": [
            {"destination": {"host": "a", "subset": STABLE}, "weight": stable},
            {"destination": {"host": "a", "subset": CANARY}, "weight": canary}
        ]})];
        if extra_route {
            http.insert(
                0,
                json!({"name": "admin", "route": [{"destination": {"host": "legacy"}}]}),
            );
        }
        json!({"metadata": {"name": "a"}, "spec": {"http": http}})
    }

    fn service(status: Value) -> Value {
        json!({"metadata": {"name": "a", "annotations": {STATUS: status.to_string()}}})
    }

    fn progressing(step: u64, verdict: &str) -> Value {
        let weight = [10, 25, 50][step as usize];
        json!({"phase": "Progressing", "canary": "v2", "canaryTemplate": "t", "step": step,
               "steps": [10, 25, 50], "weight": weight,
               "stepStartedAt": format!("s{step}"), "rolloutStartedAt": "r",
               "lastCheck": {"verdict": verdict}})
    }

    fn replay(revisions: Vec<(Kind, Value, bool)>) -> Report {
        let record = Record::default();
        for (i, (kind, object, foreign)) in revisions.into_iter().enumerate() {
            let rv = i as u64 + 1;
            record
                .revisions
                .lock()
                .unwrap()
                .insert((kind, "a".into(), rv), object);
            if foreign {
                record.foreign(kind, "a", rv);
            }
        }
        check(&record)
    }

    /// The checker must be able to fail: each of these histories breaks one invariant.
    #[test]
    fn the_checker_sees_each_broken_invariant() {
        use Kind::*;
        type History = Vec<(Kind, Value, bool)>;
        let cases: Vec<(&str, History)> = vec![
            (
                "sum to 90",
                vec![(VirtualService, vs(80, 10, false), false)],
            ),
            (
                "without a passing check",
                vec![
                    (Service, service(progressing(0, "pass")), false),
                    (VirtualService, vs(90, 10, false), false),
                    (Service, service(progressing(1, "inconclusive")), false),
                    (VirtualService, vs(75, 25, false), false),
                ],
            ),
            (
                "not the current step",
                vec![
                    (Service, service(progressing(0, "pass")), false),
                    (VirtualService, vs(90, 10, false), false),
                    (VirtualService, vs(50, 50, false), false),
                ],
            ),
            (
                "outside the managed weights",
                vec![
                    (VirtualService, vs(100, 0, true), true),
                    (VirtualService, vs(100, 0, false), false),
                ],
            ),
            (
                "step skipped",
                vec![
                    (Service, service(progressing(0, "pass")), false),
                    (Service, service(progressing(2, "pass")), false),
                ],
            ),
            (
                "released again after its abort",
                vec![
                    (Service, service(progressing(0, "pass")), false),
                    (
                        Service,
                        service(
                            json!({"phase": "Aborted", "canary": "v2", "canaryTemplate": "t", "weight": 0}),
                        ),
                        false,
                    ),
                    (Service, service(progressing(0, "pass")), false),
                ],
            ),
        ];
        for (expected, history) in cases {
            let report = replay(history);
            assert!(
                report.violations.iter().any(|v| v.contains(expected)),
                "{expected}: {:?}",
                report.violations
            );
        }
        // And a clean history passes.
        let clean = replay(vec![
            (Kind::VirtualService, vs(100, 0, false), false),
            (Kind::VirtualService, vs(100, 0, true), true),
            (
                Kind::Service,
                service(progressing(0, "inconclusive")),
                false,
            ),
            (Kind::VirtualService, vs(90, 10, true), false),
            (Kind::Service, service(progressing(1, "pass")), false),
            (Kind::VirtualService, vs(75, 25, true), false),
        ]);
        assert!(clean.violations.is_empty(), "{:?}", clean.violations);
    }
}
