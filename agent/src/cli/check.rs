//! `weir check <service>`: evaluates the Service's gates right now, as the agent would,
//! and shows every measured value against its bound.
//!
//! Exit status: 0 pass, 1 fail, 2 inconclusive, 3 could not check.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use weir_analysis::{CheckReport, CheckRequest, Verdict};

use super::cluster::{ClusterArgs, Error};
use super::prometheus::PrometheusArgs;
use super::view::{self, ServiceView};
use super::{Output, print_structured};
use crate::plan::Phase;
use crate::spec;

/// Flags of `weir check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The Service whose gates to evaluate.
    pub service: String,
    /// The canary version [default: the one being released]
    #[arg(long, value_name = "VERSION")]
    pub canary: Option<String>,
    /// The stable version [default: the one the stable subset selects, from the status]
    #[arg(long, value_name = "VERSION")]
    pub stable: Option<String>,
    /// Measure over this long, up to now [default: since the current step began]
    #[arg(long, value_parser = super::parse_duration)]
    pub window: Option<Duration>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub prometheus: PrometheusArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Why the gates of a Service without recorded settings are unknown, and what its
/// annotations set.
fn unrecorded(view: &ServiceView) -> String {
    format!(
        "{}'s settings are {}; its gates depend on the agent's defaults, which the CLI does not know. The annotations set only: {}",
        view.name,
        view.settings_unknown().unwrap_or_default(),
        view.set_annotations().join(", ")
    )
}

/// The JSON/YAML form of a check.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckRecord<'a> {
    service: &'a str,
    namespace: &'a str,
    canary: &'a str,
    stable: &'a str,
    evaluated_at: Timestamp,
    #[serde(flatten)]
    report: &'a CheckReport,
}

impl CheckArgs {
    pub async fn run(self, outer: &ClusterArgs) -> anyhow::Result<ExitCode> {
        let prometheus = self.prometheus.api()?;
        let cluster = self.cluster.or(outer).connect().await?;
        let service = cluster.managed_service(&self.service).await?;
        let view = ServiceView::new(&service);
        // The gates are the agent's: its recorded settings, under any annotation changed
        // since. Without a record the CLI does not know the agent's defaults.
        let defaults = view
            .settings()
            .map(|s| s.as_defaults())
            .ok_or_else(|| Error::Refused(unrecorded(&view)))?;
        let spec = spec::parse(&view.name, &view.annotations, &defaults).map_err(|errors| {
            Error::Refused(format!(
                "{}'s annotations are not valid, so its gates are unknown:\n{errors}",
                self.service
            ))
        })?;
        let custom = match &spec.metrics_config_map {
            Some(name) => {
                let data = cluster.config_map_data(name).await?;
                weir_analysis::parse_metrics(name, &data)
                    .map_err(|e| Error::Refused(e.to_string()))?
            }
            None => Vec::new(),
        };
        let now = Timestamp::now();
        let (canary, stable, since) = self.versions(&view, now)?;
        // The rollout in progress is checked as the agent checks it: with its earlier
        // steps' evidence, against what its current step needs. A version named by hand
        // is checked on the window alone, against what a promotion needs.
        let rollout = view
            .status()
            .filter(|s| s.canary.as_ref() == Some(&canary) && self.window.is_none());
        let earlier = rollout.map(|s| s.evidence.clone()).unwrap_or_default();
        let next_weight = rollout
            .and_then(|s| s.steps.get(s.step? + 1).copied())
            .unwrap_or(100);
        // The metrics name versions as the mesh reports them, which the agent records
        // while it releases one (ambient's waypoints report the canonical revision).
        let reported = rollout
            .and_then(|s| s.reported_as.clone())
            .filter(|_| self.stable.is_none());
        let (canary_reported, stable_reported) = match &reported {
            Some(r) => (r.canary.clone(), r.stable.clone()),
            None => (canary.clone(), stable.clone()),
        };
        let (stable_service, canary_service) = spec.reported_services();
        let request = CheckRequest {
            namespace: cluster.namespace.clone(),
            service: self.service.clone(),
            canary_service,
            stable_service,
            canary_version: canary_reported.clone(),
            stable_version: stable_reported.clone(),
            step_started_at: since,
            evaluate_at: now,
            min_window: self.prometheus.scrape_interval * 4,
            gates: spec.gates.clone(),
            reporter: self.prometheus.reporter(),
            custom,
            earlier,
            pass_at: weir_analysis::sequential::required_for(spec.gates.confidence, next_weight),
        };
        let report = prometheus.check(&request).await;
        match self.output {
            Output::Table => {
                let label = |name: &str, reported: &str| {
                    if name == reported {
                        name.to_owned()
                    } else {
                        format!("{name} (reported as {reported})")
                    }
                };
                print!(
                    "{}",
                    render(
                        &self.service,
                        &label(&canary, &canary_reported),
                        &label(&stable, &stable_reported),
                        &report
                    )
                )
            }
            output => print_structured(
                &CheckRecord {
                    service: &self.service,
                    namespace: &cluster.namespace,
                    canary: &canary,
                    stable: &stable,
                    evaluated_at: now,
                    report: &report,
                },
                output,
            )?,
        }
        Ok(ExitCode::from(exit_code(&report.verdict)))
    }

    /// The versions to compare and the start of the window.
    fn versions(
        &self,
        view: &ServiceView,
        now: Timestamp,
    ) -> Result<(String, String, Timestamp), Error> {
        let status = view.status();
        let releasing = status
            .filter(|s| {
                matches!(
                    s.phase,
                    Phase::Progressing | Phase::Paused | Phase::Promoting
                )
            })
            .and_then(|s| s.canary.clone());
        let canary = self.canary.clone().or_else(|| releasing.clone()).ok_or_else(|| {
            Error::Refused(format!(
                "no rollout of {} is in progress: name the version to check with --canary (and a --window)",
                view.name
            ))
        })?;
        let stable = self
            .stable
            .clone()
            .or_else(|| status.and_then(|s| s.stable.clone()))
            .ok_or_else(|| {
                Error::Refused(format!(
                    "{} has no stable version yet: name one with --stable",
                    view.name
                ))
            })?;
        let step_start = status
            .filter(|_| releasing.as_ref() == Some(&canary))
            .and_then(|s| s.step_started_at);
        let since = match (self.window, step_start) {
            (Some(window), _) => {
                now - SignedDuration::try_from(window).map_err(|e| Error::Refused(e.to_string()))?
            }
            (None, Some(start)) => start,
            (None, None) => {
                return Err(Error::Refused(format!(
                    "{canary} is not being released, so there is no step to measure since: give a --window"
                )));
            }
        };
        Ok((canary, stable, since))
    }
}

/// 0 pass, 1 fail, 2 inconclusive.
pub fn exit_code(verdict: &Verdict) -> u8 {
    match verdict {
        Verdict::Pass { .. } => 0,
        Verdict::Fail { .. } => 1,
        Verdict::Inconclusive { .. } => 2,
    }
}

/// The table of measured values and the verdict. Pure.
pub fn render(service: &str, canary: &str, stable: &str, report: &CheckReport) -> String {
    let failed: &[String] = match &report.verdict {
        Verdict::Fail { failed, .. } => failed,
        _ => &[],
    };
    let rows: Vec<Vec<String>> = report
        .verdict
        .measurements()
        .iter()
        .map(|m| {
            let verdict = match (&m.bound, m.canary) {
                _ if failed.contains(&m.metric) => "fail",
                _ if m
                    .evidence
                    .as_ref()
                    .is_some_and(|e| e.for_canary >= e.pass_at) =>
                {
                    "pass"
                }
                _ if m.evidence.is_some() => "awaiting",
                (_, None) => "no data",
                (None, Some(_)) => "-",
                (Some(bound), Some(_))
                    if matches!(view::comparison(m.canary, bound), "≤" | "≥") =>
                {
                    "pass"
                }
                (Some(_), Some(_)) if m.metric == "request-count" => "too few",
                (Some(_), Some(_)) => "not met",
            };
            vec![
                m.metric.clone(),
                view::value(&m.metric, m.canary),
                view::value(&m.metric, m.stable),
                m.bound.as_ref().map_or_else(
                    || "-".to_owned(),
                    |b| {
                        let op = match b {
                            weir_analysis::Bound::Max(_) => "≤",
                            weir_analysis::Bound::Min(_) => "≥",
                        };
                        format!("{op} {}", view::bound_value(&m.metric, b))
                    },
                ),
                m.evidence
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), weir_analysis::Evidence::describe),
                verdict.to_owned(),
            ]
        })
        .collect();
    let mut out = format!(
        "Service {service}: canary {canary} against stable {stable}, over the last {}\n\n",
        view::duration(Duration::from_secs(report.window_seconds))
    );
    out.push_str(&view::table(
        &["METRIC", "CANARY", "STABLE", "BOUND", "EVIDENCE", "VERDICT"],
        &rows,
    ));
    let verdict = match &report.verdict {
        Verdict::Pass { .. } => "pass".to_owned(),
        Verdict::Fail { failed, .. } => format!("fail ({})", failed.join(", ")),
        Verdict::Inconclusive { reason, detail, .. } => {
            format!("inconclusive ({}): {detail}", view::kebab(reason))
        }
    };
    out.push_str(&format!("\nVerdict: {verdict}\n"));
    out
}

#[cfg(test)]
mod tests {
    use weir_analysis::{Bound, InconclusiveReason, Measurement};

    use super::*;

    fn report(verdict: Verdict) -> CheckReport {
        CheckReport {
            verdict,
            window_seconds: 65,
            queries: Vec::new(),
            step: None,
            baseline: None,
        }
    }

    fn measurements(requests: f64, error_rate: f64) -> Vec<Measurement> {
        vec![
            Measurement {
                metric: "request-count".into(),
                canary: Some(requests),
                stable: Some(900.0),
                bound: Some(Bound::Min(50.0)),
                evidence: None,
            },
            Measurement {
                metric: "error-rate".into(),
                canary: Some(error_rate),
                stable: Some(0.0),
                bound: Some(Bound::Max(0.01)),
                evidence: None,
            },
            Measurement {
                metric: "latency".into(),
                canary: None,
                stable: Some(20.0),
                bound: Some(Bound::Max(500.0)),
                evidence: None,
            },
        ]
    }

    #[test]
    fn a_failed_check_marks_the_missed_gate() {
        let text = render(
            "checkout",
            "v3",
            "v1",
            &report(Verdict::Fail {
                failed: vec!["error-rate".into()],
                measurements: measurements(100.0, 0.2),
                conclusive: false,
            }),
        );
        assert_eq!(
            text,
            "Service checkout: canary v3 against stable v1, over the last 1m 5s\n\
             \n\
             METRIC         CANARY  STABLE  BOUND    EVIDENCE  VERDICT\n\
             request-count  100     900     ≥ 50     -         pass\n\
             error-rate     20.00%  0.00%   ≤ 1.00%  -         fail\n\
             latency        none    20ms    ≤ 500ms  -         no data\n\
             \n\
             Verdict: fail (error-rate)\n"
        );
        assert_eq!(
            exit_code(
                &report(Verdict::Pass {
                    measurements: Vec::new()
                })
                .verdict
            ),
            0
        );
    }

    #[test]
    fn a_check_awaiting_evidence_shows_each_gates_evidence_and_what_it_waits_for() {
        let evidence = |for_canary: f64, more: Option<u64>| weir_analysis::Evidence {
            against: 0.1,
            abort_at: 400.0,
            for_canary,
            pass_at: 3.16,
            more_requests: more,
        };
        let mut gates = measurements(300.0, 0.0067);
        gates[1].evidence = Some(evidence(4.5, Some(0)));
        gates.insert(
            2,
            Measurement {
                metric: "errors-vs-stable".into(),
                canary: Some(0.0067),
                stable: Some(0.0052),
                bound: None,
                evidence: Some(evidence(1.27, Some(850))),
            },
        );
        let verdict = Verdict::Inconclusive {
            reason: InconclusiveReason::AwaitingEvidence,
            detail: "errors-vs-stable: evidence for the canary 1.27 of the 3.16 this step needs"
                .into(),
            measurements: gates,
        };
        let text = render("checkout", "v2", "v1", &report(verdict.clone()));
        assert!(
            text.contains(
                "error-rate        0.67%   0.00%   ≤ 1.00%  for 4.50/3.16, against 0.10/400                              pass"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "errors-vs-stable  0.67%   0.52%   -        for 1.27/3.16, against 0.10/400 (~850 more canary requests)  awaiting"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("Verdict: inconclusive (awaiting-evidence): errors-vs-stable: evidence for the canary 1.27 of the 3.16 this step needs\n"),
            "{text}"
        );
        assert_eq!(exit_code(&verdict), 2);
    }

    #[test]
    fn an_inconclusive_check_says_why_and_exits_2() {
        let verdict = Verdict::Inconclusive {
            reason: InconclusiveReason::TooFewRequests,
            detail: "canary v2 served 8 requests, fewer than min-requests 50".into(),
            measurements: measurements(8.0, 0.0),
        };
        let text = render("checkout", "v2", "v1", &report(verdict.clone()));
        assert!(
            text.contains("request-count  8       900     ≥ 50     -         too few"),
            "{text}"
        );
        assert!(
            text.ends_with("Verdict: inconclusive (too-few-requests): canary v2 served 8 requests, fewer than min-requests 50\n"),
            "{text}"
        );
        assert_eq!(exit_code(&verdict), 2);
    }
}
