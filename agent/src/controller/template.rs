//! A version's build identity: what tells a new build of a version from the one that
//! was aborted, and a canary whose template changed mid-rollout from one that did not.
//!
//! The identity is computed over the pod-template fields that change what the version
//! runs, written out canonically by this module (sorted paths, JSON-quoted strings),
//! so that it depends on neither k8s-openapi's serializer nor the apiserver's defaults
//! for fields weir does not read. A k8s-openapi upgrade that learns a new, defaulted
//! field (`grpc.mode`, `httpGet.protocol`, `bindMountOptions` are recent examples)
//! would otherwise change every identity at once: every in-flight canary would start
//! over and every aborted version would be released again.
//!
//! What counts, for each container and init container (init containers by position
//! too, as they run in order): name, image, command, args, working directory, env
//! (value, or the source of `valueFrom`), envFrom, ports (number, protocol, name),
//! resources (requests, limits, claims), volume mounts (name, path, subPath(Expr),
//! readOnly), and the liveness, readiness and startup probes (action and timings). Then
//! the volumes (name and source: the object or path it mounts; rarer sources count by
//! kind only), the service account, and the template's labels and annotations except
//! weir's own (`weir.dev/…`) and `kubectl.kubernetes.io/restartedAt` (a restart runs
//! the same build).
//!
//! What does not: everything else, notably scheduling (node selector, affinity,
//! tolerations), security contexts, image pull policy, termination message settings,
//! and everything outside the template (replicas, the Deployment's own metadata,
//! status). A change to those alone is not a new build: `weir retry` releases an
//! aborted version again.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec, Probe, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::spec::keys;

/// The prefix of this identity's format. A stored value without it is the hash that
/// agents before it recorded ([`legacy_template_hash`]).
pub const IDENTITY_PREFIX: &str = "t2:";

/// Template annotations that do not change the build.
const IGNORED_ANNOTATIONS: [&str; 1] = ["kubectl.kubernetes.io/restartedAt"];

/// The identity of `template`: [`IDENTITY_PREFIX`] and a 64-bit FNV-1a hash of its
/// [`canonical`] text.
pub fn template_identity(template: &PodTemplateSpec) -> String {
    format!(
        "{IDENTITY_PREFIX}{:016x}",
        fnv1a(canonical(template).as_bytes())
    )
}

/// Where [`slim`] keeps a cached Deployment's [`template_identity`] and
/// [`legacy_template_hash`]: annotations of the agent's in-memory copy only, never
/// written to the cluster. Being `weir.dev/` keys, they count in no identity.
const CACHED_IDENTITY: &str = "weir.dev/cached-template-identity";
const CACHED_LEGACY_HASH: &str = "weir.dev/cached-template-legacy-hash";

/// Reduces a Deployment for the agent's watch cache to what the agent reads of it. The
/// pod template's spec (containers, env, volumes, probes) and annotations are most of a
/// Deployment's size, and the agent reads them only to compute the two hashes, so they
/// are computed here, from the full template, kept in [`CACHED_IDENTITY`] and
/// [`CACHED_LEGACY_HASH`], and the spec and annotations dropped. The template's labels
/// stay: they tell which Service selects it and which version it is.
pub fn slim(deployment: &mut Deployment) {
    let (identity, legacy) = identities(deployment);
    let template = &mut deployment.spec.template;
    template.spec = None;
    if let Some(meta) = &mut template.metadata {
        meta.annotations = None;
    }
    let annotations = deployment.metadata.annotations.get_or_insert_default();
    annotations.insert(CACHED_IDENTITY.to_owned(), identity);
    annotations.insert(CACHED_LEGACY_HASH.to_owned(), legacy);
}

/// A Deployment's [`template_identity`] and [`legacy_template_hash`]: those [`slim`]
/// recorded, or, for a Deployment read whole, computed from its template.
pub fn identities(deployment: &Deployment) -> (String, String) {
    let cached = |key: &str| {
        deployment
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(key))
            .cloned()
    };
    match (
        deployment.spec.template.spec.as_ref(),
        cached(CACHED_IDENTITY),
        cached(CACHED_LEGACY_HASH),
    ) {
        (None, Some(identity), Some(legacy)) => (identity, legacy),
        _ => (
            template_identity(&deployment.spec.template),
            legacy_template_hash(&deployment.spec.template),
        ),
    }
}

/// The hash earlier agents recorded in `canaryTemplate` and `failed[].template`:
/// FNV-1a over k8s-openapi's JSON of the template. Kept only to recognise those
/// records (see [`crate::plan::Version::legacy_template`]); the planner replaces each
/// with the new identity as soon as it matches.
pub fn legacy_template_hash(template: &PodTemplateSpec) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    format!("{:016x}", fnv1a(&json))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The fields that make the build, one `path=value` line each, sorted by path. Names
/// chosen by the user (containers, env variables, labels, …) are JSON-quoted in paths
/// and every value is JSON, so that no two templates share a text.
pub fn canonical(template: &PodTemplateSpec) -> String {
    let mut canon = Canon::default();
    if let Some(meta) = &template.metadata {
        for (key, value) in meta.labels.iter().flatten() {
            canon.text(&path(&["labels", &quote(key)]), Some(value));
        }
        let kept =
            meta.annotations.iter().flatten().filter(|(key, _)| {
                !keys::is_weir(key) && !IGNORED_ANNOTATIONS.contains(&key.as_str())
            });
        for (key, value) in kept {
            canon.text(&path(&["annotations", &quote(key)]), Some(value));
        }
    }
    if let Some(spec) = &template.spec {
        for container in &spec.containers {
            canon.container(&path(&["containers", &quote(&container.name)]), container);
        }
        for (index, container) in spec.init_containers.iter().flatten().enumerate() {
            let at = path(&[
                "initContainers",
                &index.to_string(),
                &quote(&container.name),
            ]);
            canon.container(&at, container);
        }
        for volume in spec.volumes.iter().flatten() {
            canon.volume(&path(&["volumes", &quote(&volume.name)]), volume);
        }
        canon.text("serviceAccountName", spec.service_account_name.as_deref());
    }
    canon
        .0
        .iter()
        .map(|(path, value)| format!("{path}={value}\n"))
        .collect()
}

fn quote(name: &str) -> String {
    Value::String(name.to_owned()).to_string()
}

fn path(segments: &[&str]) -> String {
    segments.join("/")
}

/// Paths to JSON values.
#[derive(Default)]
struct Canon(BTreeMap<String, String>);

impl Canon {
    fn put(&mut self, path: String, value: Value) {
        self.0.insert(path, value.to_string());
    }

    fn text(&mut self, path: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.put(path.to_owned(), Value::String(value.to_owned()));
        }
    }

    fn texts(&mut self, path: &str, values: Option<&Vec<String>>) {
        if let Some(values) = values {
            let list = values.iter().cloned().map(Value::String).collect();
            self.put(path.to_owned(), Value::Array(list));
        }
    }

    fn number(&mut self, path: &str, value: Option<i64>) {
        if let Some(value) = value {
            self.put(path.to_owned(), Value::from(value));
        }
    }

    fn flag(&mut self, path: &str, value: Option<bool>) {
        if let Some(value) = value {
            self.put(path.to_owned(), Value::Bool(value));
        }
    }

    fn port(&mut self, path: &str, port: &IntOrString) {
        match port {
            IntOrString::Int(n) => self.number(path, Some(i64::from(*n))),
            IntOrString::String(name) => self.text(path, Some(name)),
        }
    }

    fn container(&mut self, at: &str, c: &Container) {
        let p = |rest: &[&str]| format!("{at}/{}", rest.join("/"));
        // A container with nothing else set still counts, by its name.
        self.text(&p(&["name"]), Some(&c.name));
        self.text(&p(&["image"]), c.image.as_deref());
        self.texts(&p(&["command"]), c.command.as_ref());
        self.texts(&p(&["args"]), c.args.as_ref());
        self.text(&p(&["workingDir"]), c.working_dir.as_deref());
        for env in c.env.iter().flatten() {
            let at = p(&["env", &quote(&env.name)]);
            self.text(&format!("{at}/value"), env.value.as_deref());
            let Some(from) = &env.value_from else {
                continue;
            };
            if let Some(r) = &from.config_map_key_ref {
                self.text(&format!("{at}/configMapKeyRef/name"), Some(&r.name));
                self.text(&format!("{at}/configMapKeyRef/key"), Some(&r.key));
                self.flag(&format!("{at}/configMapKeyRef/optional"), r.optional);
            }
            if let Some(r) = &from.secret_key_ref {
                self.text(&format!("{at}/secretKeyRef/name"), Some(&r.name));
                self.text(&format!("{at}/secretKeyRef/key"), Some(&r.key));
                self.flag(&format!("{at}/secretKeyRef/optional"), r.optional);
            }
            if let Some(r) = &from.field_ref {
                self.text(&format!("{at}/fieldRef"), Some(&r.field_path));
            }
            if let Some(r) = &from.resource_field_ref {
                self.text(
                    &format!("{at}/resourceFieldRef/resource"),
                    Some(&r.resource),
                );
                self.text(
                    &format!("{at}/resourceFieldRef/containerName"),
                    r.container_name.as_deref(),
                );
                self.text(
                    &format!("{at}/resourceFieldRef/divisor"),
                    r.divisor.as_ref().map(|q| q.0.as_str()),
                );
            }
            if let Some(r) = &from.file_key_ref {
                self.text(&format!("{at}/fileKeyRef/volumeName"), Some(&r.volume_name));
                self.text(&format!("{at}/fileKeyRef/path"), Some(&r.path));
                self.text(&format!("{at}/fileKeyRef/key"), Some(&r.key));
            }
        }
        for (index, from) in c.env_from.iter().flatten().enumerate() {
            let at = p(&["envFrom", &index.to_string()]);
            self.text(&format!("{at}/prefix"), from.prefix.as_deref());
            if let Some(r) = &from.config_map_ref {
                self.text(&format!("{at}/configMapRef"), Some(&r.name));
            }
            if let Some(r) = &from.secret_ref {
                self.text(&format!("{at}/secretRef"), Some(&r.name));
            }
        }
        for port in c.ports.iter().flatten() {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let at = p(&["ports", &port.container_port.to_string(), &quote(protocol)]);
            self.text(
                &format!("{at}/name"),
                Some(port.name.as_deref().unwrap_or("")),
            );
        }
        if let Some(resources) = &c.resources {
            for (kind, map) in [
                ("limits", &resources.limits),
                ("requests", &resources.requests),
            ] {
                for (resource, quantity) in map.iter().flatten() {
                    self.text(
                        &p(&["resources", kind, &quote(resource)]),
                        Some(&quantity.0),
                    );
                }
            }
            for claim in resources.claims.iter().flatten() {
                let at = p(&["resources", "claims", &quote(&claim.name)]);
                self.text(
                    &format!("{at}/request"),
                    Some(claim.request.as_deref().unwrap_or("")),
                );
            }
        }
        for mount in c.volume_mounts.iter().flatten() {
            let at = p(&["volumeMounts", &quote(&mount.mount_path)]);
            self.text(&format!("{at}/name"), Some(&mount.name));
            self.text(&format!("{at}/subPath"), mount.sub_path.as_deref());
            self.text(&format!("{at}/subPathExpr"), mount.sub_path_expr.as_deref());
            self.flag(&format!("{at}/readOnly"), mount.read_only);
        }
        for (kind, probe) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            if let Some(probe) = probe {
                self.probe(&p(&[kind]), probe);
            }
        }
    }

    fn probe(&mut self, at: &str, probe: &Probe) {
        if let Some(exec) = &probe.exec {
            self.texts(&format!("{at}/exec"), exec.command.as_ref());
        }
        if let Some(get) = &probe.http_get {
            self.port(&format!("{at}/httpGet/port"), &get.port);
            self.text(&format!("{at}/httpGet/path"), get.path.as_deref());
            self.text(&format!("{at}/httpGet/host"), get.host.as_deref());
            self.text(&format!("{at}/httpGet/scheme"), get.scheme.as_deref());
            for header in get.http_headers.iter().flatten() {
                let header_path = format!("{at}/httpGet/headers/{}", quote(&header.name));
                self.text(&header_path, Some(&header.value));
            }
        }
        if let Some(tcp) = &probe.tcp_socket {
            self.port(&format!("{at}/tcpSocket/port"), &tcp.port);
            self.text(&format!("{at}/tcpSocket/host"), tcp.host.as_deref());
        }
        if let Some(grpc) = &probe.grpc {
            self.number(&format!("{at}/grpc/port"), Some(i64::from(grpc.port)));
            self.text(&format!("{at}/grpc/service"), grpc.service.as_deref());
        }
        for (field, value) in [
            ("initialDelaySeconds", probe.initial_delay_seconds),
            ("periodSeconds", probe.period_seconds),
            ("timeoutSeconds", probe.timeout_seconds),
            ("successThreshold", probe.success_threshold),
            ("failureThreshold", probe.failure_threshold),
        ] {
            self.number(&format!("{at}/{field}"), value.map(i64::from));
        }
    }

    fn volume(&mut self, at: &str, v: &Volume) {
        let source = |kind: &str| format!("{at}/{kind}");
        if let Some(s) = &v.config_map {
            self.text(&source("configMap"), Some(&s.name));
            for item in s.items.iter().flatten() {
                self.text(
                    &format!("{at}/configMap/items/{}", quote(&item.key)),
                    Some(&item.path),
                );
            }
        } else if let Some(s) = &v.secret {
            self.text(
                &source("secret"),
                Some(s.secret_name.as_deref().unwrap_or("")),
            );
            for item in s.items.iter().flatten() {
                self.text(
                    &format!("{at}/secret/items/{}", quote(&item.key)),
                    Some(&item.path),
                );
            }
        } else if let Some(s) = &v.persistent_volume_claim {
            self.text(&source("persistentVolumeClaim"), Some(&s.claim_name));
            self.flag(&format!("{at}/persistentVolumeClaim/readOnly"), s.read_only);
        } else if let Some(s) = &v.empty_dir {
            self.text(&source("emptyDir"), Some(s.medium.as_deref().unwrap_or("")));
            self.text(
                &format!("{at}/emptyDir/sizeLimit"),
                s.size_limit.as_ref().map(|q| q.0.as_str()),
            );
        } else if let Some(s) = &v.host_path {
            self.text(&source("hostPath"), Some(&s.path));
        } else if let Some(s) = &v.csi {
            self.text(&source("csi"), Some(&s.driver));
            for (key, value) in s.volume_attributes.iter().flatten() {
                self.text(&format!("{at}/csi/attributes/{}", quote(key)), Some(value));
            }
        } else if let Some(s) = &v.image {
            self.text(&source("image"), s.reference.as_deref());
        } else if let Some(s) = &v.projected {
            for (index, projection) in s.sources.iter().flatten().enumerate() {
                let at = format!("{at}/projected/{index}");
                if let Some(p) = &projection.config_map {
                    self.text(&format!("{at}/configMap"), Some(&p.name));
                }
                if let Some(p) = &projection.secret {
                    self.text(&format!("{at}/secret"), Some(&p.name));
                }
                if let Some(p) = &projection.service_account_token {
                    self.text(&format!("{at}/serviceAccountToken"), Some(&p.path));
                    self.text(
                        &format!("{at}/serviceAccountToken/audience"),
                        p.audience.as_deref(),
                    );
                }
                if let Some(p) = &projection.downward_api {
                    for item in p.items.iter().flatten() {
                        let field = item.field_ref.as_ref().map(|f| f.field_path.as_str());
                        self.text(&format!("{at}/downwardAPI/{}", quote(&item.path)), field);
                    }
                }
            }
            self.text(&source("projected"), Some(""));
        } else if let Some(s) = &v.downward_api {
            for item in s.items.iter().flatten() {
                let field = item.field_ref.as_ref().map(|f| f.field_path.as_str());
                self.text(&format!("{at}/downwardAPI/{}", quote(&item.path)), field);
            }
            self.text(&source("downwardAPI"), Some(""));
        } else {
            // A rarer source (nfs, iscsi, ephemeral, …): counted as present, not by its
            // settings.
            self.text(&source("other"), Some(""));
        }
    }
}

#[cfg(test)]
mod tests;
