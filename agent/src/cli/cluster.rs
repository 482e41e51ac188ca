//! Reaching the cluster as kubectl does (kubeconfig, `--context`, `-n/--namespace`), and
//! the reads and writes the commands make, each failure worded for the person at the
//! terminal.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::json;

use crate::spec::{keys, opted_in};

/// How long to wait for the API server to accept a connection: a kubeconfig that points
/// nowhere should fail fast, not after the client's default half minute.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The kubectl-style flags of every command that talks to the cluster.
#[derive(Clone, Debug, Default, Args)]
pub struct ClusterArgs {
    /// Path to the kubeconfig file [default: $KUBECONFIG, else ~/.kube/config]
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use [default: its current context]
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace [default: the context's namespace, else `default`]
    #[arg(short = 'n', long, value_name = "NAME")]
    pub namespace: Option<String>,
}

/// Why a command could not do what it was asked. Every variant says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load the kubeconfig: {0}")]
    Kubeconfig(String),
    #[error(
        "cannot reach the cluster at {server}{}: {reason}; is it running, and are the kubeconfig and --context the right ones?",
        context_note(.context)
    )]
    Unreachable {
        server: String,
        context: Option<String>,
        reason: String,
    },
    #[error(
        "the cluster at {server} rejected the kubeconfig's credentials (401 Unauthorized): {message}"
    )]
    Unauthorized { server: String, message: String },
    #[error(
        "you may not {verb} {resource} in namespace {namespace} (403 Forbidden: {message}); ask for a Role that allows it, or choose another namespace with -n"
    )]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        namespace: String,
        message: String,
    },
    #[error(
        "Service {service} not found in namespace {namespace} (`weir status -n {namespace}` lists the Services weir manages)"
    )]
    ServiceNotFound { service: String, namespace: String },
    #[error(
        "Service {service} in namespace {namespace} has not opted in to weir; opt in with: kubectl annotate service {service} -n {namespace} {}=true",
        keys::ENABLED
    )]
    NotOptedIn { service: String, namespace: String },
    /// The command makes no sense in the Service's current state; nothing was changed.
    #[error("{0}; nothing was changed")]
    Refused(String),
    #[error("Kubernetes API ({server}): {message}")]
    Api { server: String, message: String },
}

fn context_note(context: &Option<String>) -> String {
    context
        .as_ref()
        .map(|c| format!(" (context {c})"))
        .unwrap_or_default()
}

impl ClusterArgs {
    /// These flags, with each one not given taken from `outer` (the same flags given
    /// before the command's name, as in `kubectl weir -n shop status`).
    pub fn or(&self, outer: &ClusterArgs) -> ClusterArgs {
        ClusterArgs {
            kubeconfig: self.kubeconfig.clone().or_else(|| outer.kubeconfig.clone()),
            context: self.context.clone().or_else(|| outer.context.clone()),
            namespace: self.namespace.clone().or_else(|| outer.namespace.clone()),
        }
    }

    /// Whether any flag was given.
    pub fn any(&self) -> bool {
        self.kubeconfig.is_some() || self.context.is_some() || self.namespace.is_some()
    }

    /// A client for the chosen kubeconfig and context, and the namespace to work in.
    /// Makes no request: the first read reports an unreachable cluster.
    pub async fn connect(&self) -> Result<Cluster, Error> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let loaded = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))
            }
            None if self.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| Error::Kubeconfig(e.to_string())),
            // Like kubectl: the kubeconfig if there is one, else the Pod's own account.
            None => Config::infer()
                .await
                .map_err(|e| Error::Kubeconfig(e.to_string())),
        };
        let mut config = loaded?;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(REQUEST_TIMEOUT);
        config.write_timeout = Some(REQUEST_TIMEOUT);
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        let client = Client::try_from(config).map_err(|e| Error::Kubeconfig(e.to_string()))?;
        Ok(Cluster {
            client,
            namespace,
            server,
            context: self.context.clone(),
        })
    }
}

/// A connection to one namespace of one cluster.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
    /// The API server's URL, for messages.
    pub server: String,
    context: Option<String>,
}

impl Cluster {
    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The Service `name`, whether or not it opted in.
    pub async fn service(&self, name: &str) -> Result<Service, Error> {
        self.services().get(name).await.map_err(|e| match e {
            kube::Error::Api(status) if status.code == 404 => Error::ServiceNotFound {
                service: name.to_owned(),
                namespace: self.namespace.clone(),
            },
            other => self.error(other, "get", "services"),
        })
    }

    /// The Service `name`, which must have opted in to weir.
    pub async fn managed_service(&self, name: &str) -> Result<Service, Error> {
        let service = self.service(name).await?;
        if !opted_in(service.annotations()) {
            return Err(Error::NotOptedIn {
                service: name.to_owned(),
                namespace: self.namespace.clone(),
            });
        }
        Ok(service)
    }

    /// Every Service of the namespace that opted in to weir, by name.
    pub async fn managed_services(&self) -> Result<Vec<Service>, Error> {
        let mut services: Vec<Service> = self
            .services()
            .list(&ListParams::default())
            .await
            .map_err(|e| self.error(e, "list", "services"))?
            .items
            .into_iter()
            .filter(|s| opted_in(s.annotations()))
            .collect();
        services.sort_by_key(|s| s.name_any());
        Ok(services)
    }

    /// The `data` of the ConfigMap `name` (custom metric templates).
    pub async fn config_map_data(&self, name: &str) -> Result<BTreeMap<String, String>, Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.get(name).await {
            Ok(config_map) => Ok(config_map.data.unwrap_or_default()),
            Err(kube::Error::Api(status)) if status.code == 404 => Err(Error::Refused(format!(
                "the ConfigMap {name} named by {} does not exist in namespace {}",
                keys::METRICS,
                self.namespace
            ))),
            Err(e) => Err(self.error(e, "get", "configmaps")),
        }
    }

    /// Sets (`Some`) or removes (`None`) annotations of `service`, provided it has not
    /// changed since it was read at `resource_version`. `Ok(false)` on such a change:
    /// the caller re-reads and decides again.
    pub async fn annotate(
        &self,
        service: &str,
        resource_version: &str,
        annotations: &BTreeMap<&'static str, Option<String>>,
    ) -> Result<bool, Error> {
        let patch = json!({
            "metadata": {"resourceVersion": resource_version, "annotations": annotations}
        });
        match self
            .services()
            .patch(service, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.error(e, "patch", "services")),
        }
    }

    /// A failed request, worded by what went wrong.
    pub fn error(&self, error: kube::Error, verb: &'static str, resource: &'static str) -> Error {
        match error {
            kube::Error::Api(status) => match status.code {
                401 => Error::Unauthorized {
                    server: self.server.clone(),
                    message: status.message,
                },
                403 => Error::Forbidden {
                    verb,
                    resource,
                    namespace: self.namespace.clone(),
                    message: status.message,
                },
                code => Error::Api {
                    server: self.server.clone(),
                    message: format!("{} ({code} {})", status.message, status.reason),
                },
            },
            kube::Error::HyperError(_) | kube::Error::Service(_) => Error::Unreachable {
                server: self.server.clone(),
                context: self.context.clone(),
                reason: error_chain(&error),
            },
            other => Error::Api {
                server: self.server.clone(),
                message: error_chain(&other),
            },
        }
    }
}

/// An error and its causes on one line, without repeats.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_after_the_command_win_over_flags_before_it() {
        let outer = ClusterArgs {
            kubeconfig: Some("/outer".into()),
            context: Some("outer".into()),
            namespace: Some("outer".into()),
        };
        let inner = ClusterArgs {
            namespace: Some("shop".into()),
            ..ClusterArgs::default()
        };
        let merged = inner.or(&outer);
        assert_eq!(merged.namespace.as_deref(), Some("shop"));
        assert_eq!(merged.context.as_deref(), Some("outer"));
        assert_eq!(merged.kubeconfig, Some(PathBuf::from("/outer")));
        assert!(!ClusterArgs::default().any());
    }

    #[test]
    fn opted_in_is_any_value_but_false() {
        let with = |v: &str| BTreeMap::from([(keys::ENABLED.to_owned(), v.to_owned())]);
        assert!(opted_in(&with("true")));
        assert!(opted_in(&with("yes")));
        assert!(!opted_in(&with("false")));
        assert!(!opted_in(&with(" FALSE ")));
        assert!(!opted_in(&BTreeMap::new()));
    }

    #[test]
    fn refusals_and_missing_services_say_what_to_do() {
        let missing = Error::ServiceNotFound {
            service: "checkout".into(),
            namespace: "shop".into(),
        };
        assert_eq!(
            missing.to_string(),
            "Service checkout not found in namespace shop (`weir status -n shop` lists the Services weir manages)"
        );
        let not_opted = Error::NotOptedIn {
            service: "checkout".into(),
            namespace: "shop".into(),
        };
        assert!(
            not_opted
                .to_string()
                .ends_with("kubectl annotate service checkout -n shop weir.dev/enabled=true"),
            "{not_opted}"
        );
        let forbidden = Error::Forbidden {
            verb: "list",
            resource: "services",
            namespace: "shop".into(),
            message: "no".into(),
        };
        assert!(
            forbidden
                .to_string()
                .starts_with("you may not list services in namespace shop (403 Forbidden")
        );
    }
}
