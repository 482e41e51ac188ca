//! The only place the agent writes: the plan's actions, in order, stopping at the
//! first write the apiserver refuses.

use jiff::Timestamp;
use json_patch::Patch as JsonPatch;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Map, Value, json};
use tracing::{info, warn};

use super::Context;
use super::reconcile::Error;
use super::validate::Reads;
use crate::mesh::{
    self, DestinationRule, HttpRoute, RouteKind, Routing, SelectorObject, Target, VirtualService,
};
use crate::notify;
use crate::plan::{Action, EventType, Report, Status, reason};
use crate::spec::{self, RolloutSpec, Sink, keys};

/// The field manager of every write, so that `managedFields` tells weir's edits apart.
pub const FIELD_MANAGER: &str = "weir";

/// `reportingController` of weir's Events.
const REPORTING_CONTROLLER: &str = "weir";

/// The managed route and subsets, resolved, with the spec that resolved them: what a
/// plan's mesh actions write to. Only a valid Service has one, and [`Writer::apply`]
/// takes one, so mesh writes cannot be performed without a target.
pub struct MeshTarget<'s> {
    pub spec: &'s RolloutSpec,
    pub target: Target,
}

pub struct Writer<'a> {
    ctx: &'a Context,
    service: Service,
    virtual_services: Vec<VirtualService>,
    destination_rules: Vec<DestinationRule>,
    http_routes: Vec<HttpRoute>,
    split_services: Vec<Service>,
}

impl<'a> Writer<'a> {
    pub fn new(ctx: &'a Context, reads: &Reads) -> Writer<'a> {
        Writer {
            ctx,
            service: reads.service.clone(),
            virtual_services: reads.virtual_services.clone(),
            destination_rules: reads.destination_rules.clone(),
            http_routes: reads.http_routes.clone(),
            split_services: reads.split_services.clone(),
        }
    }

    /// Performs `actions` in order. Mesh actions write to `mesh`'s target; after each
    /// mesh write the target is resolved again from the object the apiserver returned,
    /// so that the next patch's guards test what is there now.
    pub async fn apply(
        &mut self,
        mut mesh: MeshTarget<'_>,
        actions: &[Action],
    ) -> Result<(), Error> {
        let name = self.service.name_any();
        // What the plan's Events are notified with: they follow its status writes.
        let mut written: Option<&Status> = None;
        for action in actions {
            if !self.may_write(action)? {
                continue;
            }
            match action {
                Action::WriteStatus { status, consumed } => {
                    self.write_status(status, consumed).await?;
                    written = Some(status);
                }
                Action::SetWeights(traffic) => {
                    let patch = mesh::weight_patch(&mesh.target, *traffic)?;
                    let object = &mesh.target.route_object.name;
                    match mesh.target.route_kind {
                        RouteKind::VirtualService => {
                            let patched = self.patch_object(object, patch).await?;
                            replace_named(&mut self.virtual_services, patched);
                        }
                        RouteKind::HttpRoute => {
                            let patched = self.patch_object(object, patch).await?;
                            replace_named(&mut self.http_routes, patched);
                        }
                    }
                    info!(service = %name, stable = traffic.stable, canary = traffic.canary, "weights set");
                    mesh.target = self.resolve(mesh.spec)?;
                }
                Action::SetSubsetVersion { subset, version } => {
                    let spec = mesh.spec;
                    let which = mesh.target.selectors.describe(*subset);
                    let (object, patch) =
                        mesh::selector_patch(&mesh.target, *subset, &spec.version_label, version);
                    match object {
                        SelectorObject::DestinationRule(dr) => {
                            let patched = self.patch_object(dr, patch).await?;
                            replace_named(&mut self.destination_rules, patched);
                        }
                        SelectorObject::Service(service) => {
                            let patched = self.patch_object(service, patch).await?;
                            replace_named(&mut self.split_services, patched);
                        }
                    }
                    info!(service = %name, selector = %which, %version, "version repointed");
                    mesh.target = self.resolve(spec)?;
                }
                Action::Emit(event) => self.emit(event, written).await,
                Action::ScaleDown {
                    version,
                    deployment,
                    resource_version,
                } => {
                    self.scale_down(version, deployment, resource_version.as_deref())
                        .await;
                }
            }
        }
        Ok(())
    }

    /// Scales a superseded version's Deployment to zero through its `scale`
    /// subresource (the one verb on Deployments the chart's Role grants), guarded by the
    /// resourceVersion it was observed at. Best effort: a refusal is logged and told in
    /// an Event, and the planner tries again at a later reconcile; it never fails the
    /// plan, whose other writes matter more.
    async fn scale_down(&self, version: &str, deployment: &str, resource_version: Option<&str>) {
        let name = self.service.name_any();
        let api: Api<Deployment> =
            Api::namespaced(self.ctx.client.clone(), &self.ctx.config.namespace);
        let mut patch = json!({"spec": {"replicas": 0}});
        if let Some(resource_version) = resource_version {
            patch["metadata"] = json!({"resourceVersion": resource_version});
        }
        let event = match api
            .patch_scale(deployment, &params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(service = %name, %version, %deployment, "superseded version scaled to 0");
                crate::plan::Event {
                    type_: EventType::Normal,
                    reason: reason::SCALED_DOWN.into(),
                    message: format!(
                        "{version} was superseded: its Deployment {deployment} is at 0 \
                         replicas, and can be removed from Git"
                    ),
                }
            }
            Err(e) => {
                warn!(service = %name, %version, %deployment, error = %e, "could not scale the superseded version down");
                let why = match &e {
                    kube::Error::Api(status) if status.code == 403 => format!(
                        "the agent may not patch deployments/scale ({}); the chart's Role grants it",
                        status.message
                    ),
                    kube::Error::Api(status) if status.code == 409 => {
                        "the Deployment changed since it was read; trying again".to_owned()
                    }
                    _ => e.to_string(),
                };
                crate::plan::Event {
                    type_: EventType::Warning,
                    reason: reason::SCALE_DOWN_FAILED.into(),
                    message: format!(
                        "could not scale {version}'s Deployment {deployment} to 0: {why}"
                    ),
                }
            }
        };
        // Housekeeping after a promotion, not a transition: an Event only.
        self.emit(&event, None).await;
    }

    /// Records a misconfiguration: its status, then its Event. Touches no mesh object.
    pub async fn record(&mut self, report: &Report) -> Result<(), Error> {
        if self.may_write(report)? {
            self.write_status(&report.status, &[]).await?;
            self.emit(&report.event, Some(&report.status)).await;
        }
        Ok(())
    }

    /// Whether `what` may be written now: not in a dry run (which logs it instead), and
    /// only while this agent leads. Checked before every write, not once per reconcile:
    /// leadership can be lost while a reconcile waits on Prometheus or the apiserver.
    fn may_write(&self, what: &impl std::fmt::Debug) -> Result<bool, Error> {
        if !self.ctx.leadership.is_leader() {
            return Err(Error::NotLeader);
        }
        if self.ctx.config.dry_run {
            info!(service = %self.service.name_any(), ?what, "dry run: not applied");
            return Ok(false);
        }
        Ok(true)
    }

    /// Writes the status annotation and removes consumed controls, in one merge patch
    /// guarded by the resourceVersion that was read: if a person changed the Service
    /// meanwhile (a new control, a new annotation), the plan is made again.
    async fn write_status(
        &mut self,
        status: &Status,
        consumed: &[&'static str],
    ) -> Result<(), Error> {
        let json = serde_json::to_string(status).map_err(Error::EncodeStatus)?;
        let mut annotations = Map::new();
        annotations.insert(keys::STATUS.into(), Value::String(json));
        for key in consumed {
            annotations.insert((*key).into(), Value::Null);
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": self.service.resource_version(),
                "annotations": annotations,
            }
        });
        let api: Api<Service> =
            Api::namespaced(self.ctx.client.clone(), &self.ctx.config.namespace);
        let name = self.service.name_any();
        self.service = api
            .patch(&name, &params(), &Patch::Merge(&patch))
            .await
            .map_err(|e| conflict(e, format!("Service {name:?}")))?;
        Ok(())
    }

    /// Applies a guarded JSON Patch to a managed object: the route's VirtualService or
    /// HTTPRoute, the DestinationRule, or a split Service. A refused guard is a
    /// [`conflict`].
    async fn patch_object<K>(&self, name: &str, patch: JsonPatch) -> Result<K, Error>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), &self.ctx.config.namespace);
        api.patch(name, &params(), &Patch::Json::<()>(patch))
            .await
            .map_err(|e| conflict(e, format!("{} {name:?}", K::kind(&()))))
    }

    /// The target again, from the objects as the last writes returned them.
    fn resolve(&self, spec: &RolloutSpec) -> Result<Target, Error> {
        let routing = Routing {
            virtual_services: &self.virtual_services,
            destination_rules: &self.destination_rules,
            http_routes: &self.http_routes,
            services: &self.split_services,
        };
        Ok(mesh::resolve(spec, &self.ctx.config.namespace, routing)?)
    }

    /// Records `event` and notifies the Service's sinks of it (with `status`, the status
    /// written with it). Events are for people: a failure to record one is logged, never
    /// fatal.
    ///
    /// Each is created anew. kube's `Recorder` would fold an Event into an earlier one
    /// with the same reason as a series that keeps the earlier message, and each of a
    /// rollout's transitions has its own (`10 → 25`, then `25 → 50`). The planner emits
    /// an Event only on a transition, so there are no repeats to fold.
    async fn emit(&self, event: &crate::plan::Event, status: Option<&Status>) {
        let name = self.service.name_any();
        let namespace = &self.ctx.config.namespace;
        let now = Timestamp::now();
        let record = KubeEvent {
            metadata: ObjectMeta {
                // As Kubernetes names Events: the object's name and the time in hex.
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reason: Some(event.reason.clone()),
            action: Some(event.reason.clone()),
            note: Some(truncate(&event.message, 1000)),
            regarding: Some(self.service.object_ref(&())),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(self.ctx.config.instance.clone()),
            ..KubeEvent::default()
        };
        let events: Api<KubeEvent> = Api::namespaced(self.ctx.client.clone(), namespace);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        if let Err(e) = events.create(&params, &record).await {
            warn!(service = %name, reason = %event.reason, error = %e, "could not record event");
        }
        if let Some(notification) =
            status.and_then(|s| notify::notification(namespace, &name, event, s))
        {
            // An invalid weir.dev/notify makes the Service misconfigured; that is told
            // to every sink.
            let sinks =
                spec::notify(self.service.annotations()).unwrap_or_else(|_| Sink::ALL.to_vec());
            self.ctx.notifier.publish(&sinks, notification);
        }
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

fn replace_named<K: ResourceExt>(objects: &mut [K], new: K) {
    if let Some(slot) = objects.iter_mut().find(|o| o.name_any() == new.name_any()) {
        *slot = new;
    }
}

/// A refused `test` guard (422) or resourceVersion precondition (409) means the object
/// changed since it was read.
fn conflict(error: kube::Error, object: String) -> Error {
    match &error {
        kube::Error::Api(status) if status.code == 409 || status.code == 422 => {
            Error::Conflict { object }
        }
        _ => Error::Kube(error),
    }
}

fn truncate(message: &str, max: usize) -> String {
    match message.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_string(),
    }
}
