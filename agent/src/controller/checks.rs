//! The namespace's checks, batched into rounds (issue 14): a reconcile whose check is due
//! hands it in and returns; every `round`, on the wall clock's multiples of it, the checks
//! handed in are evaluated together by [`PrometheusApi::check_round`], with a number of
//! queries that does not grow with the number of Services, and their Services are woken
//! to act on the reports.
//!
//! Memory only, like the last check times: after a restart, a due check is simply handed
//! in again. A report is used only for the step it was asked for, and only while fresh.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tracing::{debug, info};
use weir_analysis::{CheckReport, CheckRequest, PrometheusApi};

use crate::server::Metrics;

/// The shortest period of the rounds.
pub const MIN_ROUND: Duration = Duration::from_millis(250);

/// Which step of which rollout a check is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckKey {
    pub canary: String,
    pub stable: String,
    /// When the step began.
    pub since: Timestamp,
}

impl CheckKey {
    pub fn of(due: &crate::plan::CheckRequest) -> CheckKey {
        CheckKey {
            canary: due.canary.clone(),
            stable: due.stable.clone(),
            since: due.since,
        }
    }
}

/// A round's report for one Service.
#[derive(Clone, Debug)]
pub struct Evaluated {
    pub report: CheckReport,
    /// The round's instant: the end of the window the report measured.
    pub at: Timestamp,
}

#[derive(Default)]
struct State {
    /// Checks handed in for the next round, by Service.
    pending: BTreeMap<String, (CheckKey, CheckRequest)>,
    /// Reports not yet taken, by Service.
    done: HashMap<String, (CheckKey, Evaluated)>,
}

/// The batched checks of one namespace. See the module documentation.
pub struct Checks {
    round: Duration,
    /// How long a report stays usable after its round.
    fresh_for: Duration,
    namespace: String,
    state: Mutex<State>,
    handed_in: Notify,
}

impl Checks {
    /// Rounds every `round` (at least [`MIN_ROUND`]); a report is usable for
    /// `fresh_for` after its round.
    pub fn new(namespace: &str, round: Duration, fresh_for: Duration) -> Checks {
        Checks {
            round: round.max(MIN_ROUND),
            fresh_for,
            namespace: namespace.to_owned(),
            state: Mutex::default(),
            handed_in: Notify::new(),
        }
    }

    /// The rounds' period.
    pub fn round(&self) -> Duration {
        self.round
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The report of `service`'s check for the step `key`, if a round has evaluated it
    /// since `after` (the last check the planner was given) and it is still fresh.
    /// Taken once. A report for another step is dropped.
    pub fn take(
        &self,
        service: &str,
        key: &CheckKey,
        after: Option<Timestamp>,
        now: Timestamp,
    ) -> Option<Evaluated> {
        let mut state = self.state();
        let (done_key, evaluated) = state.done.remove(service)?;
        let fresh = now.duration_since(evaluated.at).unsigned_abs() <= self.fresh_for;
        let newer = after.is_none_or(|t| evaluated.at > t);
        (done_key == *key && fresh && newer).then_some(evaluated)
    }

    /// Hands in `service`'s due check for the next round, replacing one handed in before.
    pub fn hand_in(&self, service: &str, key: CheckKey, request: CheckRequest) {
        self.state()
            .pending
            .insert(service.to_owned(), (key, request));
        self.handed_in.notify_one();
    }

    /// Forgets `service`'s pending check and report.
    pub fn forget(&self, service: &str) {
        let mut state = self.state();
        state.pending.remove(service);
        state.done.remove(service);
    }

    /// The next round's instant after `now`: the next multiple of the period.
    fn next_round(&self, now: Timestamp) -> Timestamp {
        let period = i128::try_from(self.round.as_nanos()).unwrap_or(i128::MAX);
        let now_ns = now.as_nanosecond();
        let next = (now_ns.div_euclid(period) + 1) * period;
        Timestamp::from_nanosecond(next).unwrap_or(now)
    }

    /// Runs rounds until dropped: sleeps while nothing is handed in, evaluates what was
    /// handed in at each round's instant, keeps the reports and wakes their Services.
    pub async fn run(
        self: Arc<Self>,
        prometheus: PrometheusApi,
        metrics: Arc<Metrics>,
        wakes: UnboundedSender<ObjectRef<Service>>,
    ) {
        loop {
            // Registered before looking, so that a check handed in meanwhile wakes it.
            let handed_in = self.handed_in.notified();
            if self.state().pending.is_empty() {
                handed_in.await;
                continue;
            }
            let at = self.next_round(Timestamp::now());
            let wait = Timestamp::now().duration_until(at).unsigned_abs();
            tokio::time::sleep(wait).await;

            let (asked, requests): (Vec<(String, CheckKey)>, Vec<CheckRequest>) =
                std::mem::take(&mut self.state().pending)
                    .into_iter()
                    .map(|(service, (key, request))| ((service, key), request))
                    .unzip();
            let started = tokio::time::Instant::now();
            let reports = prometheus.check_round(&requests, at, self.round).await;
            let elapsed = started.elapsed();
            metrics.query_latency(elapsed);
            info!(
                checks = requests.len(),
                elapsed_ms = elapsed.as_millis() as u64,
                "round of checks evaluated"
            );

            let mut state = self.state();
            for ((service, key), report) in asked.into_iter().zip(reports) {
                debug!(%service, verdict = report.verdict.kind(), "check evaluated");
                let _ = wakes.unbounded_send(ObjectRef::new(&service).within(&self.namespace));
                state.done.insert(service, (key, Evaluated { report, at }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(since: i64) -> CheckKey {
        CheckKey {
            canary: "v2".into(),
            stable: "v1".into(),
            since: Timestamp::from_second(since).unwrap(),
        }
    }

    fn evaluated(at: i64) -> Evaluated {
        Evaluated {
            report: CheckReport {
                verdict: weir_analysis::Verdict::Pass {
                    measurements: Vec::new(),
                },
                window_seconds: 60,
                queries: Vec::new(),
                step: None,
                baseline: None,
            },
            at: Timestamp::from_second(at).unwrap(),
        }
    }

    fn checks() -> Checks {
        Checks::new("shop", Duration::from_secs(5), Duration::from_secs(30))
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn rounds_fall_on_multiples_of_the_period() {
        let checks = checks();
        assert_eq!(checks.next_round(ts(1_000)), ts(1_005));
        assert_eq!(checks.next_round(ts(1_003)), ts(1_005));
        assert_eq!(
            checks.next_round(Timestamp::from_millisecond(1_004_999).unwrap()),
            ts(1_005)
        );
    }

    #[test]
    fn a_report_is_used_once_for_its_own_step_while_fresh() {
        let checks = checks();
        let put = |k: CheckKey, at: i64| {
            checks
                .state()
                .done
                .insert("checkout".into(), (k, evaluated(at)));
        };
        put(key(100), 160);
        assert!(
            checks
                .take("checkout", &key(100), Some(ts(150)), ts(161))
                .is_some()
        );
        assert!(
            checks
                .take("checkout", &key(100), Some(ts(150)), ts(161))
                .is_none(),
            "taken once"
        );

        put(key(100), 160);
        assert!(
            checks.take("checkout", &key(130), None, ts(161)).is_none(),
            "another step"
        );
        assert!(
            checks.state().done.is_empty(),
            "a report for another step is dropped"
        );

        put(key(100), 160);
        assert!(
            checks.take("checkout", &key(100), None, ts(191)).is_none(),
            "stale"
        );

        put(key(100), 160);
        assert!(
            checks
                .take("checkout", &key(100), Some(ts(160)), ts(161))
                .is_none(),
            "no newer than the last check the planner was given"
        );
    }
}
