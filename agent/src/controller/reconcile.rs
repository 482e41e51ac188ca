//! One reconcile of one Service: read → validate → check → plan → apply.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::ListParams;
use kube::runtime::controller::Action as Requeue;
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};
use weir_analysis::judge::Judgement;
use weir_analysis::{CheckRequest, MetricTemplate};

use super::apply::{MeshTarget, Writer};
use super::validate::{self, Inputs, Valid};
use super::{Context, opted_in};
use crate::mesh::{DestinationRule, MeshError, VirtualService};
use crate::plan::{self, Observed, Status, Version};
use crate::spec::{self, RolloutSpec, keys};

/// Why a reconcile did not finish. Misconfiguration is not an error: it is a status
/// and an Event.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
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

/// Everything one reconcile read, before any validation.
pub(super) struct Reads {
    pub service: Service,
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    /// The ConfigMap `weir.dev/metrics` names, if it names a valid one that exists.
    pub metrics: Option<ConfigMap>,
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
    let reads = read(&ctx, &name).await?;
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
            ctx.metrics
                .observe_applied(&name, status.as_ref(), written, now);
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
    let judgement = match &check {
        Some(request) => {
            let report = ctx
                .metrics
                .timed_check(
                    &name,
                    ctx.prometheus.check(&check_request(
                        &ctx,
                        &spec,
                        observed.versions.as_deref().unwrap_or_default(),
                        request,
                        custom,
                        now,
                    )),
                )
                .await;
            info!(
                service = %name, canary = %request.canary, verdict = report.verdict.kind(),
                window_s = report.window_seconds, "gates evaluated"
            );
            let judgement = Judgement {
                verdict: report.verdict,
                step: report.step,
                baseline: report.baseline,
            };
            ctx.last_checks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.clone(), now);
            Some(judgement)
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
        .observe_applied(&name, status.as_ref(), plan.written_status(), now);
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

/// Fresh reads of what this reconcile writes to: the watch caches may lag behind this
/// agent's own last writes, and a plan made from a stale status or stale weights would
/// undo them. Deployments, which weir never writes, come from the cache.
///
/// Only the routing objects that concern the Service are read: those its annotations
/// name, and those the [`RoutingIndex`](super::routing::RoutingIndex) says name it, so
/// a reconcile costs the same in a namespace of ten Services or of a thousand. When that
/// finds none of a kind (the Service is misconfigured, or the object that would fix it
/// is newer than the index), the whole kind is listed once, so that the misconfiguration
/// is reported exactly as the full picture shows it.
async fn read(ctx: &Context, name: &str) -> Result<Reads, Error> {
    let ns = &ctx.config.namespace;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let service = services.get(name).await?;
    let named = |key| {
        service
            .annotations()
            .get(key)
            .filter(|name| spec::parse_object_name(name).is_ok())
            .cloned()
    };
    let vs_named = named(keys::VIRTUAL_SERVICE);
    let dr_named = named(keys::DESTINATION_RULE);
    let (virtual_services, destination_rules) = tokio::try_join!(
        related::<VirtualService>(
            ctx,
            vs_named.as_deref(),
            ctx.routing.virtual_services_routing_to(name)
        ),
        related::<DestinationRule>(
            ctx,
            dr_named.as_deref(),
            ctx.routing.destination_rules_of(name)
        ),
    )?;
    let metrics = match service.annotations().get(keys::METRICS) {
        Some(cm) if spec::parse_object_name(cm).is_ok() => {
            Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
                .get_opt(cm)
                .await?
        }
        _ => None,
    };
    Ok(Reads {
        service,
        virtual_services,
        destination_rules,
        metrics,
    })
}

/// The objects of one routing kind a Service's reconcile needs: the one its annotation
/// names, if any, else the ones the index lists; GET fresh, one by one. Lists the kind
/// only when that finds nothing (see [`read`]).
async fn related<K>(
    ctx: &Context,
    named: Option<&str>,
    indexed: Vec<String>,
) -> Result<Vec<K>, Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let names = match named {
        Some(name) => vec![name.to_owned()],
        None => indexed,
    };
    let found: Vec<K> = futures::future::try_join_all(names.iter().map(|name| api.get_opt(name)))
        .await?
        .into_iter()
        .flatten()
        .collect();
    if !found.is_empty() {
        return Ok(found);
    }
    Ok(api.list(&ListParams::default()).await?.items)
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
    CheckRequest {
        namespace: ctx.config.namespace.clone(),
        service: spec.service.clone(),
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
