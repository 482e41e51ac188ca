//! The agent's own metrics: where each Service's release is, what the gates concluded,
//! how rollouts ended, and how the agent itself fares.
//!
//! Series (all prefixed `weir_`; the Grafana dashboard in `deploy/grafana/` reads them):
//!
//! | series | type | labels |
//! |---|---|---|
//! | `weir_rollout_phase` | gauge, 1 for the current phase and 0 for the others | `service`, `phase` |
//! | `weir_canary_weight` | gauge, percent | `service` |
//! | `weir_rollout_step` | gauge, 1-based, 0 outside a rollout | `service` |
//! | `weir_checks_total` | counter | `service`, `verdict` (`pass`, `fail`, `inconclusive`) |
//! | `weir_rollouts_total` | counter | `service`, `outcome` (`promoted`, `aborted`) |
//! | `weir_rollout_duration_seconds` | histogram, from the rollout's start to its end | `outcome` |
//! | `weir_reconcile_errors_total` | counter, write conflicts excluded | `service` |
//! | `weir_reconcile_panics_total` | counter, reconciles that panicked (a bug in weir; the agent carries on) | `service` |
//! | `weir_prometheus_query_duration_seconds` | histogram, one round of checks' queries (run in parallel, retries included) | — |
//! | `weir_notifications_total` | counter, notifications by how they ended: delivered, given up after retries or refused, or dropped by a full queue | `sink` (`webhook`, `slack`), `outcome` (`sent`, `failed`, `dropped`) |
//! | `weir_build_info` | gauge, always 1 | `version` |

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use weir_analysis::Verdict;

use crate::plan::{Ended, Outcome, Phase, Status};
use crate::spec::{Sink, Weight};

/// The Content-Type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every phase, in lifecycle order: the one-hot phase gauge has a series for each.
const PHASES: [Phase; 6] = [
    Phase::Idle,
    Phase::Progressing,
    Phase::Paused,
    Phase::Promoting,
    Phase::Aborted,
    Phase::Misconfigured,
];

/// The rollouts' outcomes that `weir_rollouts_total` counts: an abandoned rollout (its
/// canary's Deployment went away) is neither.
const COUNTED: [Outcome; 2] = [Outcome::Promoted, Outcome::Aborted];

/// The value of the `outcome` label of a rollout.
pub fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Promoted => "promoted",
        Outcome::Aborted => "aborted",
        Outcome::Abandoned => "abandoned",
    }
}

/// How one notification to one sink ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The sink accepted it.
    Sent,
    /// The sink refused it, or did not accept it within the retries.
    Failed,
    /// The sink's queue was full: it was never sent.
    Dropped,
}

impl Delivery {
    /// Every outcome, in order.
    pub const ALL: [Delivery; 3] = [Delivery::Sent, Delivery::Failed, Delivery::Dropped];

    /// The value of the `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Delivery::Sent => "sent",
            Delivery::Failed => "failed",
            Delivery::Dropped => "dropped",
        }
    }
}

/// The value of the `phase` label.
pub fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Idle => "idle",
        Phase::Progressing => "progressing",
        Phase::Paused => "paused",
        Phase::Promoting => "promoting",
        Phase::Aborted => "aborted",
        Phase::Misconfigured => "misconfigured",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    service: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    service: String,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    service: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    sink: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// 30s to about 4h: rollouts last minutes to hours.
fn rollout_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(30.0, 2.0, 10))
}

/// The agent's registry and the handles the controller records through. Shared as an
/// `Arc<Metrics>` between the controller and the admin server.
pub struct Metrics {
    registry: Registry,
    phase: Family<PhaseLabels, Gauge>,
    canary_weight: Family<ServiceLabels, Gauge>,
    step: Family<ServiceLabels, Gauge>,
    checks: Family<CheckLabels, Counter>,
    rollouts: Family<RolloutLabels, Counter>,
    rollout_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    reconcile_errors: Family<ServiceLabels, Counter>,
    reconcile_panics: Family<ServiceLabels, Counter>,
    query_duration: Histogram,
    notifications: Family<NotificationLabels, Counter>,
    /// The Services that have series, so that those of deleted Services can be found
    /// and released.
    services: Mutex<BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every series, empty (but `weir_build_info`).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weir");
        let phase = Family::<PhaseLabels, Gauge>::default();
        let canary_weight = Family::<ServiceLabels, Gauge>::default();
        let step = Family::<ServiceLabels, Gauge>::default();
        let checks = Family::<CheckLabels, Counter>::default();
        let rollouts = Family::<RolloutLabels, Counter>::default();
        let rollout_duration =
            Family::new_with_constructor(rollout_duration_histogram as fn() -> Histogram);
        let reconcile_errors = Family::<ServiceLabels, Counter>::default();
        let reconcile_panics = Family::<ServiceLabels, Counter>::default();
        // 5ms to about 20s: a check is a few instant queries, retried up to its deadline.
        let query_duration = Histogram::new(exponential_buckets(0.005, 2.0, 13));
        let notifications = Family::<NotificationLabels, Counter>::default();
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        // The encoder appends `_total` to counters.
        registry.register(
            "rollout_phase",
            "Where each Service's release is: 1 for the current phase, 0 for the others",
            phase.clone(),
        );
        registry.register(
            "canary_weight",
            "The canary weight, in percent, the agent holds each Service's route at",
            canary_weight.clone(),
        );
        registry.register(
            "rollout_step",
            "The current step of each Service's rollout, from 1; 0 outside a rollout",
            step.clone(),
        );
        registry.register(
            "checks",
            "Evaluations of the gates, by verdict",
            checks.clone(),
        );
        registry.register(
            "rollouts",
            "Rollouts that ended, by outcome",
            rollouts.clone(),
        );
        registry.register(
            "rollout_duration_seconds",
            "Time from a rollout's start to its promotion or abort",
            rollout_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed with an API error or a refused patch (write conflicts, re-planned at once, are not counted)",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_panics",
            "Reconciles that panicked: a bug in weir, caught so that the agent carries on (the reconcile is retried)",
            reconcile_panics.clone(),
        );
        registry.register(
            "prometheus_query_duration_seconds",
            "Time one round of checks' Prometheus queries took (run in parallel, retries included)",
            query_duration.clone(),
        );
        registry.register(
            "notifications",
            "Notifications of transitions, by sink and by how they ended: sent, failed (refused, or not accepted within the retries) or dropped (the sink's queue was full)",
            notifications.clone(),
        );
        registry.register("build_info", "The running weir's version", build_info);
        Metrics {
            registry,
            phase,
            canary_weight,
            step,
            checks,
            rollouts,
            rollout_duration,
            reconcile_errors,
            reconcile_panics,
            query_duration,
            notifications,
            services: Mutex::new(BTreeSet::new()),
        }
    }

    fn track(&self, service: &str) {
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !services.contains(service) {
            services.insert(service.to_owned());
        }
    }

    /// The Services that have series.
    pub fn services(&self) -> Vec<String> {
        self.services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Sets `service`'s phase (one-hot) and canary weight.
    pub fn observe_phase(&self, service: &str, phase: Phase, weight: Weight) {
        self.track(service);
        for candidate in PHASES {
            let labels = PhaseLabels {
                service: service.to_owned(),
                phase: phase_label(candidate),
            };
            self.phase
                .get_or_create(&labels)
                .set(i64::from(candidate == phase));
        }
        self.canary_weight
            .get_or_create(&service_labels(service))
            .set(i64::from(weight));
    }

    /// Sets `service`'s phase, canary weight and step from its status.
    pub fn observe_status(&self, service: &str, status: &Status) {
        self.observe_phase(service, status.phase, status.weight);
        let step = status.step.map_or(0, |index| index as i64 + 1);
        self.step.get_or_create(&service_labels(service)).set(step);
    }

    /// Records what one reconcile applied: the status it wrote (if any) and, when that
    /// status records the end of a rollout, its outcome and duration. `before` is the
    /// status the reconcile read; call this after the writes were made.
    pub fn observe_applied(
        &self,
        service: &str,
        before: Option<&Status>,
        written: Option<&Status>,
    ) {
        let Some(after) = written.or(before) else {
            return;
        };
        self.observe_status(service, after);
        if let Some(ended) = written.and_then(|after| newly_ended(before, after))
            && COUNTED.contains(&ended.outcome)
        {
            self.rollout_finished(service, ended.outcome, ended.duration());
        }
    }

    /// Counts one evaluation of `service`'s gates.
    pub fn check(&self, service: &str, verdict: &Verdict) {
        self.track(service);
        self.checks
            .get_or_create(&CheckLabels {
                service: service.to_owned(),
                verdict: verdict.kind(),
            })
            .inc();
    }

    /// Records how long one round of checks' Prometheus queries took.
    pub fn query_latency(&self, elapsed: Duration) {
        self.query_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a rollout that ended, and how long it took.
    pub fn rollout_finished(&self, service: &str, outcome: Outcome, duration: Duration) {
        self.track(service);
        self.rollouts
            .get_or_create(&RolloutLabels {
                service: service.to_owned(),
                outcome: outcome_label(outcome),
            })
            .inc();
        self.rollout_duration
            .get_or_create(&OutcomeLabels {
                outcome: outcome_label(outcome),
            })
            .observe(duration.as_secs_f64());
    }

    /// Shows `sink`'s notification counters at 0, so that a configured sink has series
    /// before its first notification.
    pub fn notification_sink(&self, sink: Sink) {
        for outcome in Delivery::ALL {
            let _created = self.notifications.get_or_create(&NotificationLabels {
                sink: sink.name(),
                outcome: outcome.label(),
            });
        }
    }

    /// Counts one notification to `sink` that ended as `outcome`.
    pub fn notification(&self, sink: Sink, outcome: Delivery) {
        self.notifications
            .get_or_create(&NotificationLabels {
                sink: sink.name(),
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Counts a failed reconcile of `service`.
    pub fn reconcile_error(&self, service: &str) {
        self.track(service);
        self.reconcile_errors
            .get_or_create(&service_labels(service))
            .inc();
    }

    /// Counts a reconcile of `service` that panicked.
    pub fn reconcile_panic(&self, service: &str) {
        self.track(service);
        self.reconcile_panics
            .get_or_create(&service_labels(service))
            .inc();
    }

    /// Drops every series of `service`: it was deleted or opted out, and its phase or
    /// weight would otherwise stay on dashboards forever, and its series in memory for
    /// the agent's lifetime. (Prometheus reads a counter that disappears as ended.)
    pub fn forget(&self, service: &str) {
        let removed = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(service);
        if !removed {
            return;
        }
        let labels = service_labels(service);
        for phase in PHASES {
            self.phase.remove(&PhaseLabels {
                service: service.to_owned(),
                phase: phase_label(phase),
            });
        }
        self.canary_weight.remove(&labels);
        self.step.remove(&labels);
        self.reconcile_errors.remove(&labels);
        self.reconcile_panics.remove(&labels);
        for verdict in ["pass", "fail", "inconclusive"] {
            self.checks.remove(&CheckLabels {
                service: service.to_owned(),
                verdict,
            });
        }
        for outcome in COUNTED {
            self.rollouts.remove(&RolloutLabels {
                service: service.to_owned(),
                outcome: outcome_label(outcome),
            });
        }
    }

    /// Every series in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

fn service_labels(service: &str) -> ServiceLabels {
    ServiceLabels {
        service: service.to_owned(),
    }
}

/// The end of a rollout that `written` records and `before` did not: the planner's own
/// account of it, counted once however often the status is rewritten afterwards.
fn newly_ended<'a>(before: Option<&Status>, written: &'a Status) -> Option<&'a Ended> {
    let ended = written.ended.as_ref()?;
    (before.and_then(|s| s.ended.as_ref()) != Some(ended)).then_some(ended)
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use weir_analysis::{Bound, CheckReport, Measurement};

    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn status(phase: Phase, canary: Option<&str>, step: Option<usize>, weight: Weight) -> Status {
        Status {
            phase,
            stable: Some("v1".into()),
            canary: canary.map(String::from),
            step,
            weight,
            rollout_started_at: Some(at(0)),
            ..Status::new(at(0))
        }
    }

    /// The lines of `text` that start with `prefix`.
    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn phase_is_one_hot_and_weight_and_step_follow_the_status() {
        let metrics = Metrics::new();
        metrics.observe_status(
            "checkout",
            &status(Phase::Progressing, Some("v2"), Some(1), 25),
        );
        let text = metrics.encode();
        let phases = lines(&text, "weir_rollout_phase{");
        assert_eq!(phases.len(), 6, "{text}");
        assert!(
            phases.contains(&r#"weir_rollout_phase{service="checkout",phase="progressing"} 1"#)
        );
        assert_eq!(
            phases.iter().filter(|l| l.ends_with(" 1")).count(),
            1,
            "{phases:?}"
        );
        assert!(
            text.contains(r#"weir_canary_weight{service="checkout"} 25"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_rollout_step{service="checkout"} 2"#),
            "{text}"
        );

        metrics.observe_status("checkout", &status(Phase::Aborted, Some("v2"), None, 0));
        let text = metrics.encode();
        assert!(text.contains(r#"weir_rollout_phase{service="checkout",phase="aborted"} 1"#));
        assert!(text.contains(r#"weir_rollout_phase{service="checkout",phase="progressing"} 0"#));
        assert!(text.contains(r#"weir_canary_weight{service="checkout"} 0"#));
        assert!(text.contains(r#"weir_rollout_step{service="checkout"} 0"#));
    }

    /// `status` as the planner writes it when it ends a rollout of `version` at `second`.
    fn ending(status: Status, version: &str, outcome: Outcome, second: i64) -> Status {
        Status {
            ended: Some(Ended {
                version: version.into(),
                outcome,
                reason: "why".into(),
                started_at: status.rollout_started_at,
                at: at(second),
            }),
            ..status
        }
    }

    #[test]
    fn an_abort_is_counted_once_with_its_duration() {
        let metrics = Metrics::new();
        let before = status(Phase::Progressing, Some("v3"), Some(0), 10);
        let after = ending(
            status(Phase::Aborted, Some("v3"), None, 0),
            "v3",
            Outcome::Aborted,
            90,
        );
        metrics.observe_applied("checkout", Some(&before), Some(&after));
        // The next reconcile reads the aborted status and writes nothing new, then one
        // rewrites it for another reason (a retry control, say): still one abort.
        metrics.observe_applied("checkout", Some(&after), None);
        metrics.observe_applied("checkout", Some(&after), Some(&after));
        let text = metrics.encode();
        assert!(
            text.contains(r#"weir_rollouts_total{service="checkout",outcome="aborted"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_rollout_duration_seconds_sum{outcome="aborted"} 90.0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_rollout_duration_seconds_count{outcome="aborted"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"weir_rollout_phase{service="checkout",phase="aborted"} 1"#));
        assert!(!text.contains(r#"outcome="promoted""#), "{text}");
    }

    #[test]
    fn a_promotion_counts_as_the_planner_recorded_it() {
        for before in [Phase::Progressing, Phase::Promoting, Phase::Aborted] {
            let metrics = Metrics::new();
            let last_step = status(before, Some("v2"), Some(2), 50);
            let idle = ending(
                Status {
                    stable: Some("v2".into()),
                    ..status(Phase::Idle, None, None, 0)
                },
                "v2",
                Outcome::Promoted,
                300,
            );
            metrics.observe_applied("checkout", Some(&last_step), Some(&idle));
            let text = metrics.encode();
            assert!(
                text.contains(r#"weir_rollouts_total{service="checkout",outcome="promoted"} 1"#),
                "from {before:?}: {text}"
            );
            assert!(
                text.contains(r#"weir_rollout_duration_seconds_sum{outcome="promoted"} 300.0"#),
                "from {before:?}: {text}"
            );
        }
    }

    #[test]
    fn going_idle_without_a_promotion_is_not_counted() {
        let metrics = Metrics::new();
        let progressing = status(Phase::Progressing, Some("v2"), Some(0), 10);
        // The canary's Deployment was deleted: back to idle, stable unchanged.
        let idle = ending(
            status(Phase::Idle, None, None, 0),
            "v2",
            Outcome::Abandoned,
            30,
        );
        metrics.observe_applied("checkout", Some(&progressing), Some(&idle));
        // A phase change the planner did not record as an end is none either.
        let idle = status(Phase::Idle, None, None, 0);
        metrics.observe_applied("checkout", Some(&progressing), Some(&idle));
        assert!(!metrics.encode().contains("weir_rollouts_total{"));
    }

    #[test]
    fn a_status_read_but_not_rewritten_still_sets_the_gauges() {
        // A restarted agent must show the phase at once, before anything changes.
        let metrics = Metrics::new();
        let paused = status(Phase::Paused, Some("v2"), Some(0), 10);
        metrics.observe_applied("checkout", Some(&paused), None);
        let text = metrics.encode();
        assert!(
            text.contains(r#"weir_rollout_phase{service="checkout",phase="paused"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"weir_canary_weight{service="checkout"} 10"#));
    }

    #[tokio::test]
    async fn checks_count_by_verdict_and_time_their_queries() {
        let metrics = Metrics::new();
        let report = |verdict| CheckReport {
            verdict,
            window_seconds: 60,
            queries: Vec::new(),
            step: None,
            baseline: None,
        };
        let pass = Verdict::Pass {
            measurements: vec![Measurement {
                metric: "error-rate".into(),
                canary: Some(0.0),
                stable: Some(0.0),
                bound: Some(Bound::Max(0.01)),
                evidence: None,
            }],
        };
        let fail = Verdict::Fail {
            failed: vec!["error-rate".into()],
            measurements: Vec::new(),
            conclusive: true,
        };
        for verdict in [pass.clone(), pass, fail] {
            metrics.check("checkout", &report(verdict).verdict);
            metrics.query_latency(Duration::from_millis(20));
        }
        let text = metrics.encode();
        assert!(
            text.contains(r#"weir_checks_total{service="checkout",verdict="pass"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_checks_total{service="checkout",verdict="fail"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("weir_prometheus_query_duration_seconds_count 3"),
            "{text}"
        );
    }

    #[test]
    fn forget_releases_every_series_of_one_service_and_only_those() {
        let metrics = Metrics::new();
        for service in ["checkout", "payments"] {
            metrics.reconcile_error(service);
            metrics.reconcile_panic(service);
            metrics.observe_phase(service, Phase::Progressing, 10);
            metrics.check(
                service,
                &Verdict::Pass {
                    measurements: vec![],
                },
            );
            metrics.rollout_finished(service, Outcome::Promoted, Duration::from_secs(60));
        }
        assert_eq!(metrics.services(), ["checkout", "payments"]);
        metrics.forget("checkout");
        let text = metrics.encode();
        assert!(
            !text.contains(r#"service="checkout""#),
            "a series of the forgotten Service is left: {text}"
        );
        for series in [
            r#"weir_reconcile_errors_total{service="payments"} 1"#,
            r#"weir_reconcile_panics_total{service="payments"} 1"#,
            r#"weir_canary_weight{service="payments"} 10"#,
            r#"weir_checks_total{service="payments",verdict="pass"} 1"#,
            r#"weir_rollouts_total{service="payments",outcome="promoted"} 1"#,
        ] {
            assert!(text.contains(series), "{series} is gone: {text}");
        }
        assert_eq!(metrics.services(), ["payments"]);
        // Forgetting twice, or a Service never seen, is harmless.
        metrics.forget("checkout");
        metrics.forget("nobody");
    }

    #[test]
    fn the_grafana_dashboard_shows_every_series_and_only_those() {
        let dashboard = include_str!("../../../deploy/grafana/weir-dashboard.json");
        let metrics = Metrics::new();
        metrics.observe_status(
            "checkout",
            &status(Phase::Progressing, Some("v2"), Some(0), 10),
        );
        metrics.check(
            "checkout",
            &Verdict::Pass {
                measurements: Vec::new(),
            },
        );
        metrics.query_latency(Duration::from_millis(20));
        metrics.rollout_finished("checkout", Outcome::Promoted, Duration::from_secs(60));
        metrics.reconcile_error("checkout");
        metrics.reconcile_panic("checkout");
        metrics.notification(Sink::Slack, Delivery::Sent);
        let text = metrics.encode();
        let exposed: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let read: Vec<&str> = dashboard
            .match_indices("weir_")
            .map(|(at, _)| {
                let rest = &dashboard[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        for name in &read {
            // A histogram is named by its base name in descriptions.
            let bucket = format!("{name}_bucket");
            assert!(
                exposed.contains(name) || exposed.contains(&bucket.as_str()),
                "the dashboard reads {name}, which the agent does not expose"
            );
        }
        for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = family.split(' ').next().unwrap();
            assert!(
                read.iter().any(|r| r.starts_with(name)),
                "the dashboard does not show {name}"
            );
        }
    }

    #[test]
    fn notifications_count_by_sink_and_outcome_from_zero() {
        let metrics = Metrics::new();
        assert!(!metrics.encode().contains("weir_notifications_total{"));
        metrics.notification_sink(Sink::Webhook);
        let text = metrics.encode();
        for outcome in ["sent", "failed", "dropped"] {
            let series =
                format!(r#"weir_notifications_total{{sink="webhook",outcome="{outcome}"}} 0"#);
            assert!(text.contains(&series), "{series} is missing: {text}");
        }
        assert!(!text.contains(r#"sink="slack""#), "{text}");
        metrics.notification(Sink::Webhook, Delivery::Sent);
        metrics.notification(Sink::Webhook, Delivery::Sent);
        metrics.notification(Sink::Slack, Delivery::Dropped);
        // Not a Service's series: forgetting a Service keeps them.
        metrics.reconcile_error("checkout");
        metrics.forget("checkout");
        let text = metrics.encode();
        assert!(
            text.contains(r#"weir_notifications_total{sink="webhook",outcome="sent"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_notifications_total{sink="slack",outcome="dropped"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn build_info_names_the_version() {
        let text = Metrics::new().encode();
        let expected = format!(
            r#"weir_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&expected), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
