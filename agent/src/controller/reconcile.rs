//! One reconcile of one Service: read → validate → check → plan → apply.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use tracing::{debug, info, warn};
use weir_analysis::judge::Judgement;
use weir_analysis::{CheckRequest, MetricTemplate};

use super::apply::{MeshTarget, Writer};
use super::checks::{CheckKey, Evaluated};
use super::validate::{self, Inputs, Valid};
use super::{Context, opted_in};
use crate::mesh::MeshError;
use crate::plan::{self, Observed, Status, Version};
use crate::spec::{RolloutSpec, keys};

/// Why a reconcile did not finish. Misconfiguration is not an error: it is a status
/// and an Event.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Kubernetes API: {0}")]
    Read(#[from] validate::ReadError),
    #[error("{object} changed since it was read; re-reading and re-planning")]
    Conflict { object: String },
    #[error("refused to build a patch: {0}")]
    Mesh(#[from] MeshError),
    #[error("this agent no longer leads; the leader writes")]
    NotLeader,
    #[error("cannot encode the status annotation: {0}")]
    EncodeStatus(serde_json::Error),
    /// A bug in weir: the reconcile panicked (see [`super::contain_panics`]).
    #[error("the reconcile panicked ({message}); this is a bug in weir, please report it")]
    Panicked { message: String },
}

pub async fn reconcile(cached: Arc<Service>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    // A standby follows the cluster in its caches and nothing else; when it starts to
    // lead, every Service is reconciled again.
    if !ctx.leadership.is_leader() {
        return Ok(Requeue::await_change());
    }
    if !opted_in(&cached) {
        ctx.forget(&cached.name_any());
        return Ok(Requeue::await_change());
    }
    let name = cached.name_any();
    // Fresh reads of what this reconcile writes to; Deployments, which weir never
    // writes, come from the cache.
    let reads = validate::read(
        &ctx.client,
        &ctx.config.namespace,
        &name,
        Some(&ctx.routing),
    )
    .await?;
    if !opted_in(&reads.service) {
        return Ok(Requeue::await_change());
    }
    let now = Timestamp::now();
    let status = stored_status(&reads.service);
    let mut writer = Writer::new(&ctx, &reads);

    let deployments = ctx
        .deployments_synced
        .load(Ordering::Acquire)
        .then(|| ctx.deployments.state());
    let inputs = Inputs {
        namespace: &ctx.config.namespace,
        defaults: &ctx.config.defaults,
        service: &reads.service,
        virtual_services: &reads.virtual_services,
        destination_rules: &reads.destination_rules,
        http_routes: &reads.http_routes,
        split_services: &reads.split_services,
        metrics: reads.metrics.as_ref(),
        deployments: deployments.as_deref(),
        reporter: Some(ctx.config.reporter),
    };
    let Valid {
        spec,
        controls,
        versions,
        target,
        custom,
    } = match validate::validate(&inputs) {
        Ok(valid) => valid,
        Err(problem) => {
            let reason = problem.to_string();
            let report = plan::misconfigured(status.as_ref(), &reason, now);
            if let Some(report) = &report {
                warn!(service = %name, %reason, "misconfigured");
                writer.record(report).await?;
            }
            let written = report.as_ref().map(|r| r.status.as_ref());
            ctx.metrics.observe_applied(&name, status.as_ref(), written);
            return Ok(Requeue::await_change());
        }
    };
    let last_check_at = ctx
        .last_checks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&name)
        .copied();
    let observed = Observed {
        versions,
        traffic: target.traffic,
        subsets: target.subsets.clone(),
        status: status.clone(),
        controls,
        last_check_at,
    };

    let check = plan::check_due(&spec, &observed, now);
    // A due check is handed in to the next round of checks, which wakes this Service
    // with its report (see `checks`); until then the planner plans without one.
    let mut handed_in = false;
    let judgement = match &check {
        Some(request) => {
            let key = CheckKey::of(request);
            match ctx.checks.take(&name, &key, last_check_at, now) {
                Some(Evaluated { report, at }) => {
                    ctx.metrics.check(&name, &report.verdict);
                    info!(
                        service = %name, canary = %request.canary, verdict = report.verdict.kind(),
                        window_s = report.window_seconds, "gates evaluated"
                    );
                    ctx.last_checks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(name.clone(), at);
                    Some(Judgement {
                        verdict: report.verdict,
                        step: report.step,
                        baseline: report.baseline,
                    })
                }
                None => {
                    ctx.checks.hand_in(
                        &name,
                        key,
                        check_request(
                            &ctx,
                            &spec,
                            observed.versions.as_deref().unwrap_or_default(),
                            request,
                            custom,
                            now,
                        ),
                    );
                    handed_in = true;
                    None
                }
            }
        }
        None => None,
    };
    let plan = plan::plan(
        &spec,
        &observed,
        check.as_ref().zip(judgement.as_ref()),
        now,
    );
    debug!(service = %name, actions = plan.actions.len(), "planned");
    writer
        .apply(
            MeshTarget {
                spec: &spec,
                target,
            },
            &plan.actions,
        )
        .await?;
    ctx.metrics
        .observe_applied(&name, status.as_ref(), plan.written_status());
    if handed_in {
        // The round wakes this Service; should its report be lost (a restart of the
        // rounds, a stale report), the check is handed in again after this.
        let backstop = ctx.checks.round() * 2 + ctx.prometheus.check_timeout();
        let after = plan
            .requeue_after
            .filter(|after| *after > ctx.checks.round())
            .map_or(backstop, |after| after.min(backstop));
        return Ok(Requeue::requeue(after));
    }
    Ok(match plan.requeue_after {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    })
}

pub fn error_policy(service: Arc<Service>, error: &Error, ctx: Arc<Context>) -> Requeue {
    match error {
        Error::Conflict { .. } => {
            debug!(service = %service.name_any(), %error, "conflict");
            Requeue::requeue(Duration::from_millis(200))
        }
        // Leading again reconciles every Service.
        Error::NotLeader => Requeue::await_change(),
        // Counted and logged where it was caught; a panic that repeats on every run
        // should not fill the log every few seconds.
        Error::Panicked { .. } => Requeue::requeue(Duration::from_secs(30)),
        _ => {
            ctx.metrics.reconcile_error(&service.name_any());
            warn!(service = %service.name_any(), %error, "reconcile failed");
            Requeue::requeue(Duration::from_secs(5))
        }
    }
}

/// The status annotation, if present and readable. An unreadable status is treated as
/// absent: the planner then starts from Idle, which never raises a canary's weight.
fn stored_status(service: &Service) -> Option<Status> {
    let raw = service.annotations().get(keys::STATUS)?;
    match serde_json::from_str::<Status>(raw) {
        Ok(status) if status.weight > 100 => {
            warn!(service = %service.name_any(), weight = status.weight, "ignoring a {} whose weight is above 100", keys::STATUS);
            None
        }
        Ok(status) => Some(status),
        Err(e) => {
            warn!(service = %service.name_any(), error = %e, "ignoring an unreadable {}", keys::STATUS);
            None
        }
    }
}

fn check_request(
    ctx: &Context,
    spec: &RolloutSpec,
    versions: &[Version],
    due: &plan::CheckRequest,
    custom: Vec<MetricTemplate>,
    now: Timestamp,
) -> CheckRequest {
    // The gates query each version by what the mesh calls it.
    let reported = |name: &str| {
        versions
            .iter()
            .find(|v| v.name == name)
            .map_or_else(|| name.to_owned(), |v| v.reported.clone())
    };
    let (stable_service, canary_service) = spec.reported_services();
    CheckRequest {
        namespace: ctx.config.namespace.clone(),
        service: spec.service.clone(),
        canary_service,
        stable_service,
        canary_version: reported(&due.canary),
        stable_version: reported(&due.stable),
        step_started_at: due.since,
        evaluate_at: now,
        min_window: ctx.config.scrape_interval * 4,
        gates: spec.gates.clone(),
        reporter: ctx.config.reporter,
        custom,
        earlier: due.earlier.clone(),
        pass_at: weir_analysis::sequential::required_for(spec.gates.confidence, due.next_weight),
    }
}
