//! `weir explain <service>`: why the agent is doing what it does, or what is
//! misconfigured and the exact fix.
//!
//! The agent's status says where the release is and records the settings it resolved;
//! this command reads what the agent reads and validates it with the agent's own
//! functions ([`validate::read`], [`validate::validate`]), with the recorded settings in
//! place of the agent's flags, so that it names the same [`Misconfiguration`] the agent
//! would. It never stands the built-in defaults in for the agent's.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::ListParams;

use super::cluster::{Cluster, ClusterArgs, Error};
use super::status;
use super::view::{self, ServiceView};
use crate::controller::validate::{self, Inputs, Misconfiguration, Valid};
use crate::mesh::Selectors;
use crate::plan::{self, Phase, Settings, Status};
use crate::spec::{Defaults, SpecErrors, keys};

/// Flags of `weir explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The Service to explain.
    pub service: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// What validating the Service's whole configuration, as the agent does, found.
#[derive(Debug)]
pub enum Validation {
    /// Valid: what the agent resolves (the recorded settings under the annotations), and
    /// the route and subsets it manages.
    Valid(Box<Valid>),
    /// Annotations that do not parse, conflict or are unknown: the agent reports these
    /// whatever its defaults.
    Annotations(SpecErrors),
    /// The agent would report this misconfiguration.
    Problem(Box<Misconfiguration>),
    /// Not looked at, and why: the objects could not be read, or the agent's defaults
    /// (which decide the subsets and the version label) are unknown.
    Unknown(String),
}

impl ExplainArgs {
    pub async fn run(self, outer: &ClusterArgs) -> anyhow::Result<ExitCode> {
        let cluster = self.cluster.or(outer).connect().await?;
        print!("{}", explain_now(&cluster, &self.service).await?);
        Ok(ExitCode::SUCCESS)
    }
}

/// `weir explain`'s text for `service` now: its status read and its configuration
/// validated as [`ExplainArgs::run`] does (the dashboard shows it).
pub async fn explain_now(cluster: &Cluster, service: &str) -> Result<String, Error> {
    let current = cluster.managed_service(service).await?;
    let view = ServiceView::new(&current);
    let validation = validation(cluster, service, view.settings()).await;
    Ok(explain(
        &view,
        &cluster.namespace,
        &validation,
        Timestamp::now(),
    ))
}

/// Reads what the agent reads for `service` and validates it with the agent's
/// functions, over the settings the agent recorded. Without them the annotations are
/// still checked, since no default makes a bad one good, but nothing that depends on the
/// agent's defaults is.
async fn validation(cluster: &Cluster, service: &str, recorded: Option<&Settings>) -> Validation {
    let ns = &cluster.namespace;
    let reads = async {
        let reads = validate::read(&cluster.client, ns, service, None)
            .await
            .map_err(|e| cluster.error(e.source, e.verb, e.resource))?;
        let deployments = Api::<Deployment>::namespaced(cluster.client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(|e| cluster.error(e, "list", "deployments"))?;
        let deployments: Vec<Arc<Deployment>> =
            deployments.items.into_iter().map(Arc::new).collect();
        Ok::<_, Error>((reads, deployments))
    };
    let (reads, deployments) = match reads.await {
        Ok(read) => read,
        Err(e) => return Validation::Unknown(e.to_string()),
    };
    let defaults = recorded.map_or_else(Defaults::default, Settings::as_defaults);
    let inputs = Inputs {
        namespace: ns,
        defaults: &defaults,
        service: &reads.service,
        virtual_services: &reads.virtual_services,
        destination_rules: &reads.destination_rules,
        http_routes: &reads.http_routes,
        split_services: &reads.split_services,
        metrics: reads.metrics.as_ref(),
        deployments: Some(&deployments),
        // The agent's mode is not the CLI's to know: versions are not checked for being
        // told apart in the metrics.
        reporter: None,
    };
    classify(validate::validate(&inputs), recorded.is_some())
}

/// What the agent's validation means to a reader who knows the agent's settings only if
/// they were `recorded`: without them only the annotations' own problems are certain.
fn classify(result: Result<Valid, Misconfiguration>, recorded: bool) -> Validation {
    match (result, recorded) {
        (Err(Misconfiguration::Annotations(errors)), _) => Validation::Annotations(errors),
        (_, false) => Validation::Unknown(
            "the agent's defaults (subsets, version label) are unknown to the CLI until the agent records its settings".into(),
        ),
        (Ok(valid), true) => Validation::Valid(Box::new(valid)),
        (Err(problem), true) => Validation::Problem(Box::new(problem)),
    }
}

/// The explanation, one statement per line. Pure.
pub fn explain(
    view: &ServiceView,
    namespace: &str,
    validation: &Validation,
    now: Timestamp,
) -> String {
    let mut out = String::new();
    let name = &view.name;
    let _ = writeln!(
        out,
        "Service {name} (namespace {namespace}): {}",
        view.phase()
    );
    // What the agent resolves: its record under the annotations, when they are valid;
    // else its record as it is.
    let resolved = match validation {
        Validation::Valid(valid) => Some(Settings::of(&valid.spec)),
        _ => view.settings().cloned(),
    };
    let status = match &view.status {
        Ok(Some(status)) => Some(status),
        Ok(None) => {
            let _ = writeln!(
                out,
                "  No status yet: no weir agent has reconciled this Service. Is one running for namespace {namespace}?"
            );
            None
        }
        Err(problem) => {
            let _ = writeln!(
                out,
                "  The agent's {problem}. The agent treats it as absent and starts from Idle."
            );
            None
        }
    };
    if let Some(status) = status {
        phase(&mut out, view, status, resolved.as_ref(), now);
    }

    match &resolved {
        Some(settings) => {
            let heading = match validation {
                Validation::Valid(_) => "as the agent resolves them",
                // The annotations do not resolve now: the record is of the last time
                // they did.
                _ => "as the agent last resolved them",
            };
            let _ = writeln!(out, "\nSettings, {heading}:");
            for line in view::settings(settings) {
                let _ = writeln!(out, "  {line}");
            }
        }
        None => {
            out.push_str(&status::settings(view));
            let _ = writeln!(
                out,
                "  The agent's defaults are unknown to the CLI; the annotations set: {}.",
                view.set_annotations().join(", ")
            );
        }
    }

    if let Validation::Annotations(errors) = validation {
        let _ = writeln!(
            out,
            "\nThe annotations have {} problem{}; weir changes no traffic until they are fixed:",
            errors.as_slice().len(),
            if errors.as_slice().len() == 1 {
                ""
            } else {
                "s"
            }
        );
        for problem in errors {
            let _ = writeln!(out, "  - {problem}");
        }
        let _ = writeln!(
            out,
            "  Fix with: kubectl annotate service {name} -n {namespace} --overwrite <annotation>=<value>"
        );
    }

    match validation {
        Validation::Valid(valid) => {
            let target = &valid.target;
            let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "no version".into());
            let (stable, canary) = (
                version(&target.subsets.stable),
                version(&target.subsets.canary),
            );
            let split = match &target.selectors {
                Selectors::Subsets {
                    destination_rule,
                    stable: s,
                    canary: c,
                } => format!(
                    "DestinationRule {}, subsets {} ({stable}) and {} ({canary})",
                    destination_rule.name, s.name, c.name
                ),
                Selectors::Services {
                    stable: s,
                    canary: c,
                } => format!(
                    "Services {} ({stable}) and {} ({canary})",
                    s.object.name, c.object.name
                ),
            };
            let _ = writeln!(
                out,
                "\nRouting: {} {}, route {}; {split}.",
                target.route_kind.kind(),
                target.route_object.name,
                target
                    .route
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("#{}", target.route.index)),
            );
            let _ = writeln!(
                out,
                "  Live weights: stable {}, canary {}.",
                target.traffic.stable, target.traffic.canary
            );
        }
        Validation::Problem(problem) => {
            let _ = writeln!(
                out,
                "\nMisconfigured; weir changes no traffic until it is fixed:\n  - {problem}"
            );
        }
        Validation::Annotations(_) => {
            let _ = writeln!(
                out,
                "\nRouting not checked: the annotations must be fixed first."
            );
        }
        Validation::Unknown(why) => {
            let _ = writeln!(out, "\nRouting not checked: {why}.");
        }
    }

    let pending: Vec<String> = [keys::PROMOTE, keys::ABORT, keys::RETRY, keys::PAUSE]
        .iter()
        .filter_map(|key| view.annotations.get(*key).map(|v| format!("{key}={v}")))
        .collect();
    if !pending.is_empty() {
        let _ = writeln!(
            out,
            "\nControls set: {} (the agent acts on promote, abort and retry at its next reconcile and then removes them).",
            pending.join(", ")
        );
    }
    out
}

/// The phase and what comes next, with the timings the agent resolved; without them
/// (a status written by an earlier agent), what the status alone says.
fn phase(
    out: &mut String,
    view: &ServiceView,
    status: &Status,
    settings: Option<&Settings>,
    now: Timestamp,
) {
    let name = &view.name;
    let canary = status.canary.as_deref().unwrap_or("?");
    let stable = status.stable.as_deref().unwrap_or("no version yet");
    let steps: Vec<String> = view.steps.iter().map(ToString::to_string).collect();
    let steps = if steps.is_empty() {
        "unknown".to_owned()
    } else {
        steps.join(",")
    };
    match status.phase {
        Phase::Idle => {
            let label = settings.map_or_else(
                || "version label".to_owned(),
                |s| format!("label {}", s.version_label),
            );
            let _ = writeln!(
                out,
                "  {stable} is stable and serves all traffic. A rollout starts when a Deployment whose pods match the Service's selector, with a new value of the {label}, becomes Available."
            );
            if !status.failed.is_empty() {
                let failed: Vec<&str> = status.failed.iter().map(|f| f.version.as_str()).collect();
                let _ = writeln!(
                    out,
                    "  Not released again until their pod template changes or `weir retry {name}`: {}.",
                    failed.join(", ")
                );
            }
        }
        Phase::Progressing | Phase::Paused => {
            let _ = writeln!(
                out,
                "  Releasing {canary} (stable {stable}): step {} at canary weight {}% (steps {steps}).",
                view.step(),
                status.weight,
            );
            if status.phase == Phase::Paused {
                let _ = writeln!(
                    out,
                    "  Paused by {}: no checks and no steps; traffic stays as it is. `weir resume {name}` continues.",
                    keys::PAUSE
                );
            } else if let Some(settings) = settings {
                timing(out, status, settings, now);
            }
            let Some(settings) = settings else {
                let _ = writeln!(
                    out,
                    "  Failed checks in this rollout: {}.\n  The agent says: {}",
                    status.failed_checks, status.message
                );
                return;
            };
            let _ = writeln!(
                out,
                "  Failed checks in this rollout: {} of {} (it aborts at {}).",
                status.failed_checks, settings.failure_limit, settings.failure_limit
            );
            if let Some(since) = status.inconclusive_since {
                let left = view::between(now, plan::add(since, settings.no_data_timeout));
                let _ = writeln!(
                    out,
                    "  Inconclusive for {}: it aborts after {} without conclusive evidence ({} left).",
                    view::duration(view::between(since, now)),
                    view::duration(settings.no_data_timeout),
                    view::duration(left)
                );
            }
        }
        Phase::Promoting => {
            let _ = writeln!(
                out,
                "  Promoting {canary}: every step passed (or a person promoted it). The agent points the stable subset at {canary}, then sets the canary weight to 0."
            );
        }
        Phase::Aborted => {
            let _ = writeln!(out, "  {canary} was aborted: {}", status.message);
            let _ = writeln!(
                out,
                "  The canary gets no traffic and {stable} serves all of it. {canary} is not released again until its pod template changes, or `weir retry {name}`; a newer version is released when it becomes Available."
            );
        }
        Phase::Misconfigured => {
            let _ = writeln!(
                out,
                "  Misconfigured: weir changes no traffic until this is fixed. The agent says: {}",
                status.message
            );
        }
    }
    if status.phase != Phase::Aborted
        && status.phase != Phase::Misconfigured
        && let Some(check) = &status.last_check
    {
        let _ = writeln!(
            out,
            "  Last check, {} ago: {}.",
            view::duration(view::between(check.at, now)),
            view::verdict_summary(&check.verdict)
        );
        evidence(out, &check.verdict);
    }
}

/// Each gate's evidence, as the last check weighed it: how far the evidence for the
/// canary has come against what this step needs, how far the evidence against it has
/// come against what aborts it, and roughly how many more requests the step waits for.
fn evidence(out: &mut String, verdict: &weir_analysis::Verdict) {
    let weighed: Vec<_> = verdict
        .measurements()
        .iter()
        .filter_map(|m| m.evidence.as_ref().map(|e| (m, e)))
        .collect();
    if weighed.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  Evidence (e-values: 1 is none either way; see docs/analysis.md):"
    );
    for (m, e) in weighed {
        let standing = if e.against >= e.abort_at {
            "bad: aborts the canary".to_owned()
        } else if e.for_canary >= e.pass_at {
            "enough for this step".to_owned()
        } else {
            match e.more_requests {
                Some(n) if n > 0 => format!("awaiting about {n} more canary requests"),
                _ => "awaiting more requests".to_owned(),
            }
        };
        let _ = writeln!(
            out,
            "    {}: canary {} (stable {}); for the canary {} of the {} this step needs, against it {} of the {} that aborts: {standing}",
            m.metric,
            view::value(&m.metric, m.canary),
            view::value(&m.metric, m.stable),
            weir_analysis::format_evidence(e.for_canary),
            weir_analysis::format_evidence(e.pass_at),
            weir_analysis::format_evidence(e.against),
            weir_analysis::format_evidence(e.abort_at),
        );
    }
}

/// How long the step still holds and when the next check is due. The agent checks
/// every check interval, and also at the moment the step has been held its step
/// interval, so that a healthy step advances on time.
fn timing(out: &mut String, status: &Status, settings: &Settings, now: Timestamp) {
    let Some(since) = status.step_started_at else {
        return;
    };
    let held = plan::add(since, settings.step_interval);
    if now < held {
        let _ = writeln!(
            out,
            "  The step began {} ago and holds at least {}: {} left, then it advances at the first passing check (every gate's evidence for the canary at what the step needs).",
            view::duration(view::between(since, now)),
            view::duration(settings.step_interval),
            view::duration(view::between(now, held))
        );
    } else {
        let _ = writeln!(
            out,
            "  The step began {} ago and has been held its {}: it advances at the next passing check.",
            view::duration(view::between(since, now)),
            view::duration(settings.step_interval)
        );
    }
    let last = status.last_check.as_ref().map(|c| c.at);
    let next = plan::next_check_at(settings.intervals(), status, last).unwrap_or(now);
    let when = if next <= now {
        "due now".to_owned()
    } else {
        format!("due in about {}", view::duration(view::between(now, next)))
    };
    let _ = writeln!(
        out,
        "  Checks run every {}; the next is {when}.",
        view::duration(settings.check_interval)
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;
    use weir_analysis::Verdict;

    use super::*;
    use crate::mesh::fixtures;
    use crate::plan::CheckRecord;
    use crate::spec;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn view_of(status: Option<Status>, annotations: &[(&str, &str)]) -> ServiceView {
        ServiceView {
            name: "checkout".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            status: Ok(status),
            steps: vec![10, 25, 50],
            resource_version: "1".into(),
        }
    }

    /// The agent's settings, recorded by an agent whose flags are not the built-in
    /// defaults.
    fn recorded() -> Settings {
        let defaults = Defaults {
            step_interval: std::time::Duration::from_secs(120),
            ..Defaults::default()
        };
        let mut annotations = BTreeMap::new();
        annotations.insert(keys::ENABLED.to_owned(), "true".to_owned());
        Settings::of(&spec::parse("checkout", &annotations, &defaults).unwrap())
    }

    /// The agent's validation of the view's annotations, on the mesh fixtures' Service.
    fn validated(view: &ServiceView) -> Validation {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "shop", "namespace": fixtures::NAMESPACE, "annotations": view.annotations},
            "spec": {"selector": {"app": "shop"}}
        }))
        .unwrap();
        let defaults = view
            .settings()
            .map_or_else(Defaults::default, Settings::as_defaults);
        let result = validate::validate(&Inputs {
            namespace: fixtures::NAMESPACE,
            defaults: &defaults,
            service: &service,
            virtual_services: &[fixtures::typed_virtual_service(&fixtures::virtual_service())],
            split_services: &[],
            http_routes: &[],
            destination_rules: &[fixtures::typed_destination_rule(
                &fixtures::destination_rule(),
            )],
            metrics: None,
            deployments: None,
            reporter: None,
        });
        classify(result, view.settings().is_some())
    }

    fn run(view: &ServiceView, now: Timestamp) -> String {
        explain(view, "shop", &validated(view), now)
    }

    #[test]
    fn a_progressing_step_says_time_left_next_check_and_failures() {
        let status = Status {
            phase: Phase::Progressing,
            stable: Some("v1".into()),
            canary: Some("v2".into()),
            step: Some(1),
            weight: 25,
            step_started_at: Some(at(0)),
            failed_checks: 1,
            last_check: Some(CheckRecord {
                at: at(15),
                verdict: Verdict::Pass {
                    measurements: Vec::new(),
                },
            }),
            settings: Some(recorded()),
            ..Status::new(at(0))
        };
        let text = run(&view_of(Some(status), &[(keys::ENABLED, "true")]), at(20));
        for expected in [
            "Service checkout (namespace shop): Progressing",
            "Releasing v2 (stable v1): step 2/3 at canary weight 25% (steps 10,25,50).",
            // The agent's step interval, not the built-in default.
            "The step began 20s ago and holds at least 2m: 1m 40s left",
            "Checks run every 15s; the next is due in about 10s.",
            "Failed checks in this rollout: 1 of 2 (it aborts at 2).",
            "Last check, 5s ago: pass.",
            "Settings, as the agent resolves them:",
            "steps 10,25,50, each held at least 2m; checks every 15s",
            "gates: errors ≤ 1% (codes 5..), latency ≤ 500ms at 0.99, at least 50 requests a step",
            "Routing: VirtualService shop, route main;",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn a_misconfigured_service_shows_the_agents_reason_and_every_local_problem() {
        let status = Status {
            phase: Phase::Misconfigured,
            message: "weir.dev/steps: \"10,5\" is not valid: …".into(),
            ..Status::new(at(0))
        };
        let view = view_of(
            Some(status),
            &[
                (keys::ENABLED, "true"),
                (keys::STEPS, "10,5"),
                ("weir.dev/step", "1m"),
            ],
        );
        let text = run(&view, at(1));
        // The status records no settings: the annotations are still checked.
        assert!(text.contains("The agent says: weir.dev/steps"), "{text}");
        assert!(text.contains("The annotations have 2 problems"), "{text}");
        assert!(
            text.contains(r#"for example weir.dev/steps: "10,25,50""#),
            "{text}"
        );
        assert!(text.contains("did you mean weir.dev/steps?"), "{text}");
        assert!(
            text.contains("kubectl annotate service checkout -n shop --overwrite"),
            "{text}"
        );
    }

    #[test]
    fn a_misconfiguration_beyond_the_annotations_is_named_as_the_agent_names_it() {
        let status = Status {
            phase: Phase::Idle,
            stable: Some("v1".into()),
            settings: Some(recorded()),
            ..Status::new(at(0))
        };
        let view = view_of(
            Some(status),
            &[(keys::ENABLED, "true"), (keys::METRICS, "absent")],
        );
        let problem = Misconfiguration::MetricsConfigMapMissing {
            config_map: "absent".into(),
            namespace: fixtures::NAMESPACE.into(),
        };
        let text = run(&view, at(1));
        assert!(
            text.contains(&format!(
                "Misconfigured; weir changes no traffic until it is fixed:\n  - {problem}"
            )),
            "{text}"
        );
        assert!(
            text.contains("Settings, as the agent last resolved them:"),
            "{text}"
        );
    }

    #[test]
    fn without_recorded_settings_it_shows_only_what_the_annotations_set() {
        let view = view_of(
            None,
            &[(keys::ENABLED, "true"), (keys::MAX_ERROR_RATE, "2%")],
        );
        let text = run(&view, at(1));
        assert!(text.contains("No status yet"), "{text}");
        assert!(text.contains(view::NOT_OBSERVED), "{text}");
        assert!(
            text.contains(
                "the annotations set: weir.dev/enabled=true, weir.dev/max-error-rate=2%."
            ),
            "{text}"
        );
        assert!(
            text.contains("Routing not checked: the agent's defaults"),
            "{text}"
        );
        // No built-in default passed off as the agent's.
        for guessed in ["1m", "15s", "10,25,50", "500ms"] {
            assert!(!text.contains(guessed), "{guessed} in:\n{text}");
        }
    }

    #[test]
    fn an_inconclusive_step_counts_down_to_its_timeout() {
        let status = Status {
            phase: Phase::Progressing,
            stable: Some("v1".into()),
            canary: Some("v2".into()),
            step: Some(0),
            weight: 10,
            step_started_at: Some(at(0)),
            inconclusive_since: Some(at(60)),
            settings: Some(recorded()),
            ..Status::new(at(0))
        };
        let view = view_of(
            Some(status),
            &[(keys::ENABLED, "true"), (keys::NO_DATA_TIMEOUT, "5m")],
        );
        let text = run(&view, at(120));
        assert!(
            text.contains(
                "Inconclusive for 1m: it aborts after 5m without conclusive evidence (4m left)."
            ),
            "{text}"
        );
        assert!(
            text.contains("has been held its 2m: it advances at the next passing check"),
            "{text}"
        );
        assert!(text.contains("the next is due now"), "{text}");
    }

    #[test]
    fn aborted_and_idle_say_how_a_version_is_released_again() {
        let aborted = Status {
            phase: Phase::Aborted,
            stable: Some("v1".into()),
            canary: Some("v3".into()),
            message: "aborted v3: 1 failed checks reached the failure limit".into(),
            ..Status::new(at(0))
        };
        let text = run(
            &view_of(
                Some(aborted),
                &[(keys::ENABLED, "true"), (keys::ABORT, "v3")],
            ),
            at(5),
        );
        assert!(
            text.contains("v3 was aborted: aborted v3: 1 failed checks"),
            "{text}"
        );
        assert!(text.contains("`weir retry checkout`"), "{text}");
        assert!(text.contains("Controls set: weir.dev/abort=v3"), "{text}");
        let pending = run(&view_of(None, &[(keys::ENABLED, "true")]), at(5));
        assert!(pending.contains("No status yet"), "{pending}");
    }
}
