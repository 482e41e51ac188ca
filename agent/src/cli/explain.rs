//! `weir explain <service>`: why the agent is doing what it does, or what is
//! misconfigured and the exact fix.
//!
//! The agent's status says where the release is; this command adds what follows from the
//! Service's annotations (timings, limits), and validates the whole configuration here
//! with the agent's own function ([`validate::validate`]): the annotations, the metrics
//! ConfigMap, the versions and the VirtualService and DestinationRule, so that it names
//! the same [`Misconfiguration`] the agent would.

use std::fmt::Write as _;
use std::process::ExitCode;

use std::sync::Arc;

use clap::Args;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::agent::DefaultArgs;
use super::cluster::{Cluster, ClusterArgs, Error};
use super::view::{self, ServiceView};
use crate::controller::validate::{self, Inputs, Misconfiguration};
use crate::mesh::{DestinationRule, Target, VirtualService};
use crate::plan::{self, Phase, Status};
use crate::spec::{self, Defaults, RolloutSpec, SpecErrors, keys};

/// Flags of `weir explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The Service to explain.
    pub service: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(
        flatten,
        next_help_heading = "The agent's defaults (as its --default-* flags)"
    )]
    pub defaults: DefaultArgs,
}

/// What validating the Service's whole configuration, as the agent does, found.
#[derive(Clone, Debug)]
pub enum Routing {
    /// Valid: the route and subsets the agent manages.
    Resolved(Box<Target>),
    /// The agent would report this misconfiguration.
    Problem(Box<Misconfiguration>),
    /// Not looked at: the annotations are invalid, or the objects could not be read.
    Unknown(String),
}

impl ExplainArgs {
    pub async fn run(self, outer: &ClusterArgs) -> anyhow::Result<ExitCode> {
        let defaults = self.defaults.parse()?;
        let cluster = self.cluster.or(outer).connect().await?;
        let service = cluster.managed_service(&self.service).await?;
        let view = ServiceView::new(&service, &defaults);
        let spec = spec::parse(&view.name, &view.annotations, &defaults);
        let controls = spec::controls(&view.annotations).err();
        let routing = match &spec {
            Ok(_) => routing(&cluster, &service, &defaults).await,
            Err(_) => Routing::Unknown("the annotations must be fixed first".into()),
        };
        print!(
            "{}",
            explain(
                &view,
                &cluster.namespace,
                &spec,
                controls.as_ref(),
                &routing,
                Timestamp::now()
            )
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Reads what the agent reads for `service` and validates it with the agent's function.
async fn routing(cluster: &Cluster, service: &Service, defaults: &Defaults) -> Routing {
    let ns = &cluster.namespace;
    let all = ListParams::default();
    let reads = async {
        let vss = Api::<VirtualService>::namespaced(cluster.client.clone(), ns)
            .list(&all)
            .await
            .map_err(|e| cluster.error(e, "list", "virtualservices"))?;
        let drs = Api::<DestinationRule>::namespaced(cluster.client.clone(), ns)
            .list(&all)
            .await
            .map_err(|e| cluster.error(e, "list", "destinationrules"))?;
        let deployments = Api::<Deployment>::namespaced(cluster.client.clone(), ns)
            .list(&all)
            .await
            .map_err(|e| cluster.error(e, "list", "deployments"))?;
        let metrics = match service.annotations().get(keys::METRICS) {
            Some(name) if spec::parse_object_name(name).is_ok() => {
                Api::<ConfigMap>::namespaced(cluster.client.clone(), ns)
                    .get_opt(name)
                    .await
                    .map_err(|e| cluster.error(e, "get", "configmaps"))?
            }
            _ => None,
        };
        let deployments: Vec<Arc<Deployment>> =
            deployments.items.into_iter().map(Arc::new).collect();
        Ok::<_, Error>((vss.items, drs.items, deployments, metrics))
    };
    let (vss, drs, deployments, metrics) = match reads.await {
        Ok(read) => read,
        Err(e) => return Routing::Unknown(e.to_string()),
    };
    let inputs = Inputs {
        namespace: ns,
        defaults,
        service,
        virtual_services: &vss,
        destination_rules: &drs,
        metrics: metrics.as_ref(),
        deployments: Some(&deployments),
        reporter: None,
    };
    match validate::validate(&inputs) {
        Ok(valid) => Routing::Resolved(Box::new(valid.target)),
        // Listed with the other annotation problems.
        Err(Misconfiguration::Annotations(_)) => {
            Routing::Unknown("the annotations must be fixed first".into())
        }
        Err(problem) => Routing::Problem(Box::new(problem)),
    }
}

/// The explanation, one statement per line. Pure.
pub fn explain(
    view: &ServiceView,
    namespace: &str,
    spec: &Result<RolloutSpec, SpecErrors>,
    controls: Option<&SpecErrors>,
    routing: &Routing,
    now: Timestamp,
) -> String {
    let mut out = String::new();
    let name = &view.name;
    let _ = writeln!(
        out,
        "Service {name} (namespace {namespace}): {}",
        view.phase()
    );
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
        match spec {
            Ok(spec) => phase(&mut out, view, status, spec, now),
            Err(_) => phase_without_spec(&mut out, status),
        }
    }

    let problems: Vec<String> = spec
        .as_ref()
        .err()
        .into_iter()
        .chain(controls)
        .flat_map(|errors| errors.iter().map(ToString::to_string))
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(
            out,
            "\nThe annotations have {} problem{}; weir changes no traffic until they are fixed:",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for problem in &problems {
            let _ = writeln!(out, "  - {problem}");
        }
        let _ = writeln!(
            out,
            "  Fix with: kubectl annotate service {name} -n {namespace} --overwrite <annotation>=<value>"
        );
    }

    match routing {
        Routing::Resolved(target) => {
            let _ = writeln!(
                out,
                "\nRouting: VirtualService {}, route {}; DestinationRule {}, subsets {} ({}) and {} ({}).",
                target.virtual_service.name,
                target
                    .route
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("#{}", target.route.index)),
                target.destination_rule.name,
                target.stable_subset.name,
                target.subsets.stable.as_deref().unwrap_or("no version"),
                target.canary_subset.name,
                target.subsets.canary.as_deref().unwrap_or("no version"),
            );
            let _ = writeln!(
                out,
                "  Live weights: stable {}, canary {}.",
                target.traffic.stable, target.traffic.canary
            );
        }
        Routing::Problem(problem) => {
            let _ = writeln!(
                out,
                "\nMisconfigured; weir changes no traffic until it is fixed:\n  - {problem}"
            );
        }
        Routing::Unknown(why) => {
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

/// The phase and what comes next, with the timings of the Service's spec.
fn phase(
    out: &mut String,
    view: &ServiceView,
    status: &Status,
    spec: &RolloutSpec,
    now: Timestamp,
) {
    let name = &view.name;
    let canary = status.canary.as_deref().unwrap_or("?");
    let stable = status.stable.as_deref().unwrap_or("no version yet");
    let steps: Vec<String> = spec.steps.iter().map(ToString::to_string).collect();
    match status.phase {
        Phase::Idle => {
            let _ = writeln!(
                out,
                "  {stable} is stable and serves all traffic. A rollout starts when a Deployment whose pods match the Service's selector, with a new value of the label {}, becomes Available.",
                spec.version_label
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
                "  Releasing {canary} (stable {stable}): step {} at canary weight {}% (steps {}).",
                view.step(),
                status.weight,
                steps.join(",")
            );
            if status.phase == Phase::Paused {
                let _ = writeln!(
                    out,
                    "  Paused by {}: no checks and no steps; traffic stays as it is. `weir resume {name}` continues.",
                    keys::PAUSE
                );
            } else {
                timing(out, status, spec, now);
            }
            let _ = writeln!(
                out,
                "  Failed checks in this rollout: {} of {} (it aborts at {}).",
                status.failed_checks, spec.failure_limit, spec.failure_limit
            );
            if let Some(since) = status.inconclusive_since {
                let left = view::between(now, plan::add(since, spec.no_data_timeout));
                let _ = writeln!(
                    out,
                    "  Inconclusive for {}: it aborts after {} without conclusive evidence ({} left).",
                    view::duration(view::between(since, now)),
                    view::duration(spec.no_data_timeout),
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
                "  Misconfigured: weir changes no traffic until this is fixed. The agent says:\n  {}",
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

/// When the annotations do not parse, the timings are unknown: only the agent's word.
fn phase_without_spec(out: &mut String, status: &Status) {
    if !status.message.is_empty() {
        let _ = writeln!(out, "  The agent says: {}", status.message);
    }
}

/// How long the step still holds and when the next check is due. The agent checks
/// every check interval, and also at the moment the step has been held its step
/// interval, so that a healthy step advances on time.
fn timing(out: &mut String, status: &Status, spec: &RolloutSpec, now: Timestamp) {
    let Some(since) = status.step_started_at else {
        return;
    };
    let held = plan::add(since, spec.step_interval);
    if now < held {
        let _ = writeln!(
            out,
            "  The step began {} ago and holds at least {}: {} left, then it advances at the first passing check (every gate's evidence for the canary at what the step needs).",
            view::duration(view::between(since, now)),
            view::duration(spec.step_interval),
            view::duration(view::between(now, held))
        );
    } else {
        let _ = writeln!(
            out,
            "  The step began {} ago and has been held its {}: it advances at the next passing check.",
            view::duration(view::between(since, now)),
            view::duration(spec.step_interval)
        );
    }
    let last = status.last_check.as_ref().map(|c| c.at);
    let next = plan::next_check_at(spec, status, last).unwrap_or(now);
    let when = if next <= now {
        "due now".to_owned()
    } else {
        format!("due in about {}", view::duration(view::between(now, next)))
    };
    let _ = writeln!(
        out,
        "  Checks run every {}; the next is {when}.",
        view::duration(spec.check_interval)
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use weir_analysis::Verdict;

    use super::*;
    use crate::plan::CheckRecord;
    use crate::spec::Defaults;

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

    fn run(view: &ServiceView, now: Timestamp) -> String {
        let spec = spec::parse(&view.name, &view.annotations, &Defaults::default());
        let controls = spec::controls(&view.annotations).err();
        explain(
            view,
            "shop",
            &spec,
            controls.as_ref(),
            &Routing::Unknown("not read in this test".into()),
            now,
        )
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
            ..Status::new(at(0))
        };
        let text = run(&view_of(Some(status), &[(keys::ENABLED, "true")]), at(20));
        for expected in [
            "Service checkout (namespace shop): Progressing",
            "Releasing v2 (stable v1): step 2/3 at canary weight 25% (steps 10,25,50).",
            "The step began 20s ago and holds at least 1m: 40s left",
            "Checks run every 15s; the next is due in about 10s.",
            "Failed checks in this rollout: 1 of 2 (it aborts at 2).",
            "Last check, 5s ago: pass.",
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
        let view = view_of(None, &[(keys::ENABLED, "true"), (keys::METRICS, "absent")]);
        let spec = spec::parse(&view.name, &view.annotations, &Defaults::default());
        let problem = Misconfiguration::MetricsConfigMapMissing {
            config_map: "absent".into(),
            namespace: "shop".into(),
        };
        let text = explain(
            &view,
            "shop",
            &spec,
            None,
            &Routing::Problem(Box::new(problem.clone())),
            at(1),
        );
        assert!(
            text.contains(&format!(
                "Misconfigured; weir changes no traffic until it is fixed:\n  - {problem}"
            )),
            "{text}"
        );
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
            text.contains("has been held its 1m: it advances at the next passing check"),
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
