//! What the dashboard shows, built from what the agent recorded: each Service's status
//! read as the CLI reads it ([`ServiceView`]), the Events about it, the checks the status
//! kept and those seen since the dashboard started, and the controls that make sense now (the CLI's own
//! [`decide`]). Nothing here re-derives a decision of the agent's. Pure: the server feeds
//! it the objects its watches see, and tests apply objects directly.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt as _;
use serde::Serialize;
use weir_analysis::Measurement;

use crate::cli::control::{Control, decide};
use crate::cli::view::{self, ServiceView};
use crate::plan::{self, Ended, Phase, Status};
use crate::spec::{self, Weight, keys, opted_in};

/// The checks kept per Service, for the current (or last) rollout: those the status's
/// `history` holds (thinned as a rollout grows long), and every one the dashboard saw.
pub const MAX_CHECKS: usize = 240;
/// The Events shown per Service, newest last.
pub const MAX_EVENTS: usize = 50;

/// Everything the dashboard has seen of its namespaces.
#[derive(Debug, Default)]
pub struct Model {
    namespaces: BTreeMap<String, Namespace>,
}

#[derive(Debug, Default)]
struct Namespace {
    /// Every Service of the namespace, opted in or not (opting in is an annotation away).
    services: BTreeMap<String, Service>,
    /// Events about Services, by the Event's name.
    events: BTreeMap<String, Event>,
    checks: BTreeMap<String, Checks>,
    /// Whether the Services were listed once: before, an empty namespace is not known
    /// to be empty.
    listed: bool,
    /// Why the namespace cannot be watched, while it cannot.
    error: Option<String>,
}

/// The checks seen during one rollout.
#[derive(Debug, Default)]
struct Checks {
    /// The rollout they belong to: its canary and when it began.
    rollout: Option<(String, Option<Timestamp>)>,
    points: Vec<CheckPoint>,
}

/// One check the agent recorded, as the status had it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckPoint {
    pub at: Timestamp,
    /// `pass`, `fail` or `inconclusive`.
    pub verdict: String,
    /// The CLI's one-line account of it.
    pub summary: String,
    /// The step (1-based) and canary weight the status recorded with it.
    pub step: Option<usize>,
    pub weight: Weight,
    pub measurements: Vec<Measurement>,
}

/// What the page renders: every namespace, every opted-in Service.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    pub namespaces: Vec<NamespaceView>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceView {
    pub name: String,
    pub listed: bool,
    pub error: Option<String>,
    pub services: Vec<Card>,
}

/// One opted-in Service.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Card {
    pub name: String,
    /// As `weir status` shows it: `Progressing`, `Pending`, `Unreadable`, ….
    pub phase: String,
    pub stable: Option<String>,
    /// The version being released or last aborted, while that is the news.
    pub canary: Option<String>,
    /// The canary weight the agent set; `None` before its first status.
    pub weight: Option<Weight>,
    /// `2/3`, or `-` between rollouts.
    pub step: String,
    pub steps: Vec<Weight>,
    pub step_started_at: Option<Timestamp>,
    /// When the current step has been held its `step-interval` (it advances at the
    /// first passing check after).
    pub held_until: Option<Timestamp>,
    pub paused: bool,
    pub message: String,
    /// Why the status cannot be read, if it cannot.
    pub status_error: Option<String>,
    pub ended: Option<Ended>,
    pub last_check: Option<String>,
    pub failed_checks: u32,
    pub failure_limit: Option<u32>,
    /// The settings the agent resolved, one line per concern, as `weir status` prints them.
    pub settings: Vec<String>,
    pub settings_unknown: Option<&'static str>,
    pub misconfiguration: Option<Misconfiguration>,
    /// Controls set on the Service and not yet acted on (`weir.dev/promote=v2`).
    pub pending: Vec<String>,
    /// The controls that make sense now.
    pub controls: Vec<Offer>,
    pub checks: Vec<CheckPoint>,
    pub events: Vec<EventLine>,
}

/// Why the agent changes no traffic for a Service, and how to fix it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Misconfiguration {
    /// The agent's account, which names the fix.
    pub message: String,
    /// Where to read every problem and its fix.
    pub fix: String,
}

/// A control the page offers, with the question it asks before writing it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Offer {
    pub action: &'static str,
    /// The version the control is about; sent back, so that a control never lands on a
    /// version the person was not shown.
    pub version: Option<String>,
    pub question: String,
    /// What the agent will do, as the CLI says it.
    pub outcome: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    pub at: Option<Timestamp>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub note: String,
}

impl Model {
    /// A model of `namespaces`, nothing seen yet.
    pub fn new<S: AsRef<str>>(namespaces: &[S]) -> Model {
        Model {
            namespaces: namespaces
                .iter()
                .map(|ns| (ns.as_ref().to_owned(), Namespace::default()))
                .collect(),
        }
    }

    fn namespace(&mut self, ns: &str) -> &mut Namespace {
        self.namespaces.entry(ns.to_owned()).or_default()
    }

    /// A complete list of the namespace's Services (a watch's first list, or a re-list).
    pub fn set_services(&mut self, ns: &str, services: Vec<Service>) {
        let namespace = self.namespace(ns);
        namespace.services.clear();
        namespace.listed = true;
        namespace.error = None;
        for service in services {
            namespace.apply_service(service);
        }
    }

    pub fn apply_service(&mut self, ns: &str, service: Service) {
        let namespace = self.namespace(ns);
        namespace.error = None;
        namespace.apply_service(service);
    }

    pub fn delete_service(&mut self, ns: &str, name: &str) {
        let namespace = self.namespace(ns);
        namespace.services.remove(name);
        namespace.checks.remove(name);
    }

    /// A complete list of the namespace's Events.
    pub fn set_events(&mut self, ns: &str, events: Vec<Event>) {
        let namespace = self.namespace(ns);
        namespace.events.clear();
        for event in events {
            namespace.apply_event(event);
        }
    }

    pub fn apply_event(&mut self, ns: &str, event: Event) {
        self.namespace(ns).apply_event(event);
    }

    pub fn delete_event(&mut self, ns: &str, name: &str) {
        self.namespace(ns).events.remove(name);
    }

    /// Why the namespace cannot be watched now (`None`: it can again).
    pub fn set_error(&mut self, ns: &str, error: Option<String>) {
        self.namespace(ns).error = error;
    }

    /// What the page shows.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            namespaces: self
                .namespaces
                .iter()
                .map(|(name, namespace)| namespace.view(name))
                .collect(),
        }
    }
}

impl Namespace {
    fn apply_service(&mut self, service: Service) {
        let name = service.name_any();
        if let Some(status) = ServiceView::new(&service).status() {
            self.checks.entry(name.clone()).or_default().record(status);
        }
        self.services.insert(name, service);
    }

    fn apply_event(&mut self, event: Event) {
        let about_service = event
            .regarding
            .as_ref()
            .is_some_and(|r| r.kind.as_deref() == Some("Service"));
        if about_service {
            self.events.insert(event.name_any(), event);
        }
    }

    fn view(&self, name: &str) -> NamespaceView {
        let services = self
            .services
            .values()
            .filter(|s| opted_in(s.annotations()))
            .map(|service| {
                let view = ServiceView::new(service);
                let checks = self
                    .checks
                    .get(&view.name)
                    .map(|c| c.points.clone())
                    .unwrap_or_default();
                let events = self.events_about(&view.name);
                card(&view, name, checks, events)
            })
            .collect();
        NamespaceView {
            name: name.to_owned(),
            listed: self.listed,
            error: self.error.clone(),
            services,
        }
    }

    fn events_about(&self, service: &str) -> Vec<EventLine> {
        let mut lines: Vec<EventLine> = self
            .events
            .values()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(service))
            .map(|e| EventLine {
                at: e
                    .event_time
                    .as_ref()
                    .map(|t| t.0)
                    .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
                    .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0)),
                type_: e.type_.clone().unwrap_or_default(),
                reason: e.reason.clone().unwrap_or_default(),
                note: e.note.clone().unwrap_or_default(),
            })
            .collect();
        lines.sort_by_key(|line| line.at);
        let excess = lines.len().saturating_sub(MAX_EVENTS);
        lines.drain(..excess);
        lines
    }
}

impl Checks {
    /// Takes the status's last check, once; a new rollout starts a new series.
    fn record(&mut self, status: &Status) {
        if let Some(canary) = status.canary.as_ref().filter(|_| status.in_rollout()) {
            let rollout = (canary.clone(), status.rollout_started_at);
            if self.rollout.as_ref() != Some(&rollout) {
                self.rollout = Some(rollout);
                self.points.clear();
            }
        }
        if self.rollout.is_some() {
            self.merge_history(status);
        }
        let Some(check) = &status.last_check else {
            return;
        };
        if self.rollout.is_none() || self.points.last().is_some_and(|p| p.at >= check.at) {
            return;
        }
        // A check from before the rollout the series is about belongs to an earlier one.
        let started = self.rollout.as_ref().and_then(|(_, started)| *started);
        if started.is_some_and(|started| check.at < started) {
            return;
        }
        self.points.push(CheckPoint {
            at: check.at,
            verdict: verdict_name(&check.verdict).to_owned(),
            summary: view::verdict_summary(&check.verdict),
            step: status.step.map(|i| i + 1),
            weight: status.weight,
            measurements: check.verdict.measurements().to_vec(),
        });
        let excess = self.points.len().saturating_sub(MAX_CHECKS);
        self.points.drain(..excess);
    }

    /// The checks the agent kept in the status (`history`) that this dashboard has not
    /// seen, such as those before it started: their values, against the last check's
    /// bounds. A point seen with the full check is kept as it is.
    fn merge_history(&mut self, status: &Status) {
        let bounds: BTreeMap<&str, Option<weir_analysis::Bound>> = status
            .last_check
            .iter()
            .flat_map(|c| c.verdict.measurements())
            .map(|m| (m.metric.as_str(), m.bound.clone()))
            .collect();
        let started = self.rollout.as_ref().and_then(|(_, started)| *started);
        let mut added = false;
        for point in &status.history {
            if started.is_some_and(|started| point.at < started)
                || self.points.iter().any(|p| p.at == point.at)
                || status.last_check.as_ref().is_some_and(|c| c.at == point.at)
            {
                continue;
            }
            self.points.push(CheckPoint {
                at: point.at,
                verdict: point.verdict.clone(),
                summary: format!("{} at canary {}%", point.verdict, point.weight),
                step: None,
                weight: point.weight,
                measurements: point
                    .values
                    .iter()
                    .map(|(metric, [canary, stable])| Measurement {
                        metric: metric.clone(),
                        canary: *canary,
                        stable: *stable,
                        bound: bounds.get(metric.as_str()).cloned().flatten(),
                        evidence: None,
                    })
                    .collect(),
            });
            added = true;
        }
        if added {
            self.points.sort_by_key(|p| p.at);
        }
    }
}

fn verdict_name(verdict: &weir_analysis::Verdict) -> &'static str {
    match verdict {
        weir_analysis::Verdict::Pass { .. } => "pass",
        weir_analysis::Verdict::Fail { .. } => "fail",
        weir_analysis::Verdict::Inconclusive { .. } => "inconclusive",
    }
}

/// One Service's card: the status as the CLI reads it, and what a person may do now.
pub fn card(
    view: &ServiceView,
    namespace: &str,
    checks: Vec<CheckPoint>,
    events: Vec<EventLine>,
) -> Card {
    let status = view.status();
    let settings = view.settings();
    let name = &view.name;
    let misconfiguration =
        status
            .filter(|s| s.phase == Phase::Misconfigured)
            .map(|s| Misconfiguration {
                message: s.message.clone(),
                fix: format!("weir explain {name} -n {namespace}"),
            });
    let held_until = status
        .filter(|s| s.phase == Phase::Progressing)
        .and_then(|s| Some(plan::add(s.step_started_at?, settings?.step_interval)));
    let pending = [keys::PROMOTE, keys::ABORT, keys::RETRY]
        .iter()
        .filter_map(|key| view.annotations.get(*key).map(|v| format!("{key}={v}")))
        .collect();
    Card {
        name: name.clone(),
        phase: view.phase(),
        stable: status.and_then(|s| s.stable.clone()),
        canary: view.canary().map(str::to_owned),
        weight: status.map(|s| s.weight),
        step: view.step(),
        steps: view.steps.clone(),
        step_started_at: status.and_then(|s| s.step_started_at),
        held_until,
        paused: view
            .annotations
            .get(keys::PAUSE)
            .is_some_and(|v| spec::parse_bool(v) == Ok(true)),
        message: status.map(|s| s.message.clone()).unwrap_or_default(),
        status_error: view.status.as_ref().err().cloned(),
        ended: status.and_then(|s| s.ended.clone()),
        last_check: status
            .and_then(|s| s.last_check.as_ref())
            .map(|c| view::verdict_summary(&c.verdict)),
        failed_checks: status.map_or(0, |s| s.failed_checks),
        failure_limit: settings.map(|s| s.failure_limit),
        settings: settings.map(view::settings).unwrap_or_default(),
        settings_unknown: view.settings_unknown(),
        misconfiguration,
        pending,
        controls: offers(view),
        checks,
        events,
    }
}

/// The controls [`decide`] accepts for the Service now, each with its question.
pub fn offers(view: &ServiceView) -> Vec<Offer> {
    let name = &view.name;
    Control::ALL
        .into_iter()
        .filter_map(|control| {
            let decision = decide(control, view).ok()?;
            let version = decision.version(view).map(str::to_owned);
            let question = match (control, version.as_deref()) {
                (Control::Promote, Some(v)) => format!("Promote {v} of {name} to 100%?"),
                (Control::Abort, Some(v)) => {
                    format!("Abort {v} of {name}? Its canary weight goes to 0 at once.")
                }
                (Control::Pause, Some(v)) => format!("Pause the rollout of {v} of {name}?"),
                (Control::Pause, None) => format!("Pause {name}'s next rollout?"),
                (Control::Resume, Some(v)) => format!("Resume the rollout of {v} of {name}?"),
                (Control::Resume, None) => {
                    format!("Let {name}'s next rollout start without pausing?")
                }
                (Control::Retry, Some(v)) => format!("Retry {v} of {name}?"),
                (_, None) => return None,
            };
            Some(Offer {
                action: control.name(),
                version,
                question,
                outcome: decision.outcome,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_analysis::{Bound, Verdict};

    use super::*;
    use crate::plan::{CheckRecord, FailedVersion, Outcome, Settings};

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn settings() -> Settings {
        let annotations = BTreeMap::from([
            (keys::ENABLED.to_owned(), "true".to_owned()),
            (keys::STEP_INTERVAL.to_owned(), "30s".to_owned()),
        ]);
        Settings::of(&spec::parse("checkout", &annotations, &Default::default()).unwrap())
    }

    fn service(name: &str, status: Option<&Status>, extra: &[(&str, &str)]) -> Service {
        let mut annotations = BTreeMap::from([(keys::ENABLED.to_owned(), "true".to_owned())]);
        if let Some(status) = status {
            annotations.insert(
                keys::STATUS.to_owned(),
                serde_json::to_string(status).unwrap(),
            );
        }
        for (k, v) in extra {
            annotations.insert(k.to_string(), v.to_string());
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1", "annotations": annotations}
        }))
        .unwrap()
    }

    fn check(at_: &str, error_rate: f64) -> CheckRecord {
        CheckRecord {
            at: at(at_),
            verdict: Verdict::Pass {
                measurements: vec![Measurement {
                    metric: "error-rate".into(),
                    canary: Some(error_rate),
                    stable: Some(0.0),
                    bound: Some(Bound::Max(0.01)),
                    evidence: None,
                }],
            },
        }
    }

    fn progressing(step: usize, weight: Weight, last_check: Option<CheckRecord>) -> Status {
        Status {
            phase: Phase::Progressing,
            stable: Some("v1".into()),
            canary: Some("v2".into()),
            step: Some(step),
            steps: vec![10, 25, 50],
            weight,
            step_started_at: Some(at("2026-01-02T03:04:00Z")),
            rollout_started_at: Some(at("2026-01-02T03:00:00Z")),
            last_check,
            settings: Some(settings()),
            ..Status::new(at("2026-01-02T03:00:00Z"))
        }
    }

    #[test]
    fn a_progressing_service_shows_its_weights_step_time_and_controls() {
        let mut model = Model::new(&["shop"]);
        let status = progressing(1, 25, Some(check("2026-01-02T03:04:10Z", 0.0)));
        let mut bystander = service("search", None, &[]);
        bystander.metadata.annotations = None;
        model.set_services(
            "shop",
            vec![service("checkout", Some(&status), &[]), bystander],
        );
        let snapshot = model.snapshot();
        let [namespace] = &snapshot.namespaces[..] else {
            panic!("{snapshot:?}")
        };
        assert!(namespace.listed);
        let [card] = &namespace.services[..] else {
            panic!("only the opted-in Service: {:?}", namespace.services)
        };
        assert_eq!(card.phase, "Progressing");
        assert_eq!(
            (card.stable.as_deref(), card.canary.as_deref()),
            (Some("v1"), Some("v2"))
        );
        assert_eq!((card.weight, card.step.as_str()), (Some(25), "2/3"));
        assert_eq!(card.held_until, Some(at("2026-01-02T03:04:30Z")));
        assert_eq!(card.checks.len(), 1);
        assert_eq!(card.checks[0].verdict, "pass");
        assert_eq!(
            card.last_check.as_deref(),
            Some("pass: errors 0.00% ≤ 1.00%")
        );
        let offered: Vec<(&str, Option<&str>)> = card
            .controls
            .iter()
            .map(|o| (o.action, o.version.as_deref()))
            .collect();
        assert_eq!(
            offered,
            [
                ("promote", Some("v2")),
                ("abort", Some("v2")),
                ("pause", Some("v2"))
            ]
        );
        assert_eq!(card.controls[0].question, "Promote v2 of checkout to 100%?");
        assert!(card.controls[0].outcome.contains("step 2/3"));
        // The page's JSON: what app.js reads.
        let json = serde_json::to_value(&snapshot).unwrap();
        let card = &json["namespaces"][0]["services"][0];
        assert_eq!(card["heldUntil"], "2026-01-02T03:04:30Z");
        assert_eq!(card["checks"][0]["measurements"][0]["bound"]["max"], 0.01);
    }

    #[test]
    fn checks_accumulate_once_each_and_a_new_rollout_starts_a_new_series() {
        let mut model = Model::new(&["shop"]);
        let first = progressing(0, 10, Some(check("2026-01-02T03:04:02Z", 0.0)));
        model.apply_service("shop", service("checkout", Some(&first), &[]));
        // The same check again (another write of the status): not a second point.
        model.apply_service("shop", service("checkout", Some(&first), &[]));
        let second = progressing(1, 25, Some(check("2026-01-02T03:04:04Z", 0.001)));
        model.apply_service("shop", service("checkout", Some(&second), &[]));
        let points = &model.snapshot().namespaces[0].services[0].checks;
        assert_eq!(
            points
                .iter()
                .map(|p| (p.step, p.weight))
                .collect::<Vec<_>>(),
            [(Some(1), 10), (Some(2), 25)]
        );

        let next = Status {
            canary: Some("v3".into()),
            rollout_started_at: Some(at("2026-01-02T04:00:00Z")),
            ..progressing(0, 10, Some(check("2026-01-02T03:04:04Z", 0.001)))
        };
        model.apply_service("shop", service("checkout", Some(&next), &[]));
        assert!(
            model.snapshot().namespaces[0].services[0].checks.is_empty(),
            "the last rollout's check is not v3's"
        );
    }

    #[test]
    fn a_dashboard_started_mid_rollout_charts_the_checks_the_status_kept() {
        let mut model = Model::new(&["shop"]);
        let last = check("2026-01-02T03:04:06Z", 0.002);
        let mut status = progressing(1, 25, Some(last.clone()));
        status.rollout_started_at = Some(at("2026-01-02T03:04:00Z"));
        for (time, weight, record) in [
            (
                "2026-01-02T03:04:02Z",
                10,
                check("2026-01-02T03:04:02Z", 0.0),
            ),
            (
                "2026-01-02T03:04:04Z",
                10,
                check("2026-01-02T03:04:04Z", 0.001),
            ),
            ("2026-01-02T03:04:06Z", 25, last),
        ] {
            plan::record::remember(
                &mut status.history,
                plan::CheckPoint::of(at(time), weight, &record.verdict),
            );
        }
        model.apply_service("shop", service("checkout", Some(&status), &[]));
        let points = &model.snapshot().namespaces[0].services[0].checks;
        assert_eq!(
            points.iter().map(|p| (p.at, p.weight)).collect::<Vec<_>>(),
            [
                (at("2026-01-02T03:04:02Z"), 10),
                (at("2026-01-02T03:04:04Z"), 10),
                (at("2026-01-02T03:04:06Z"), 25)
            ]
        );
        let error_rate = |p: &CheckPoint| {
            p.measurements
                .iter()
                .find(|m| m.metric == "error-rate")
                .cloned()
                .unwrap()
        };
        assert_eq!(error_rate(&points[1]).canary, Some(0.001));
        assert_eq!(
            error_rate(&points[0]).bound,
            Some(Bound::Max(0.01)),
            "the last check's bound"
        );
        assert_eq!(points[2].step, Some(2), "the last check is the full record");
    }

    #[test]
    fn an_aborted_service_shows_why_and_offers_retry_and_promote() {
        let status = Status {
            phase: Phase::Aborted,
            canary: Some("v3".into()),
            step: None,
            steps: vec![],
            weight: 0,
            failed: vec![FailedVersion {
                version: "v3".into(),
                template: "t".into(),
            }],
            message: "aborted v3: check failed; canary weight 0".into(),
            ended: Some(Ended {
                version: "v3".into(),
                outcome: Outcome::Aborted,
                reason: "check failed: errors 30.00% > 1.00%".into(),
                started_at: None,
                at: at("2026-01-02T03:05:00Z"),
            }),
            ..progressing(0, 10, None)
        };
        let card = card(
            &ServiceView::new(&service("checkout", Some(&status), &[])),
            "shop",
            vec![],
            vec![],
        );
        assert_eq!(card.phase, "Aborted");
        assert_eq!(card.canary.as_deref(), Some("v3"));
        assert_eq!(card.step, "-");
        let ended = card.ended.unwrap();
        assert_eq!(ended.outcome, Outcome::Aborted);
        assert!(ended.reason.contains("errors 30.00%"));
        let actions: Vec<&str> = card.controls.iter().map(|o| o.action).collect();
        assert_eq!(actions, ["promote", "pause", "retry"]);
        assert_eq!(card.controls[2].question, "Retry v3 of checkout?");
        assert_eq!(
            (
                card.controls[1].version.as_deref(),
                card.controls[1].question.as_str()
            ),
            (None, "Pause checkout's next rollout?"),
            "an aborted canary has no rollout to pause"
        );
    }

    #[test]
    fn a_misconfigured_service_shows_the_agents_message_and_where_the_fix_is() {
        let status = Status {
            phase: Phase::Misconfigured,
            message: "weir.dev/steps: \"10,5\" is not ascending; write e.g. 10,25,50".into(),
            ..Status::new(at("2026-01-02T03:00:00Z"))
        };
        let card = card(
            &ServiceView::new(&service(
                "checkout",
                Some(&status),
                &[(keys::PAUSE, "true")],
            )),
            "shop",
            vec![],
            vec![],
        );
        let problem = card.misconfiguration.unwrap();
        assert!(problem.message.contains("not ascending"));
        assert_eq!(problem.fix, "weir explain checkout -n shop");
        assert!(card.paused);
        assert_eq!(
            card.controls.iter().map(|o| o.action).collect::<Vec<_>>(),
            ["resume"],
            "nothing to promote or abort; only the pause may be lifted"
        );
    }

    #[test]
    fn events_are_about_services_oldest_first_and_watch_errors_are_shown() {
        let mut model = Model::new(&["shop", "other"]);
        let event = |name: &str, kind: &str, time: &str, reason: &str| -> Event {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "shop"},
                "eventTime": time,
                "reason": reason,
                "note": format!("{reason} happened"),
                "type": "Normal",
                "regarding": {"kind": kind, "name": "checkout", "namespace": "shop"},
                "reportingController": "weir.dev/agent",
                "reportingInstance": "a",
                "action": reason
            }))
            .unwrap()
        };
        model.set_services("shop", vec![service("checkout", None, &[])]);
        model.set_events(
            "shop",
            vec![
                event(
                    "b",
                    "Service",
                    "2026-01-02T03:04:05.000000Z",
                    "WeightChanged",
                ),
                event(
                    "a",
                    "Service",
                    "2026-01-02T03:04:00.000000Z",
                    "RolloutStarted",
                ),
                event("c", "Pod", "2026-01-02T03:04:01.000000Z", "Pulled"),
            ],
        );
        model.set_error("other", Some("you may not list services".into()));
        let snapshot = model.snapshot();
        let other = &snapshot.namespaces[0];
        assert_eq!(
            (other.name.as_str(), other.listed, other.error.as_deref()),
            ("other", false, Some("you may not list services"))
        );
        let card = &snapshot.namespaces[1].services[0];
        assert_eq!(card.phase, "Pending");
        assert_eq!(
            card.events
                .iter()
                .map(|e| e.reason.as_str())
                .collect::<Vec<_>>(),
            ["RolloutStarted", "WeightChanged"]
        );
        model.delete_event("shop", "a");
        model.delete_service("shop", "checkout");
        assert!(model.snapshot().namespaces[1].services.is_empty());
    }
}
