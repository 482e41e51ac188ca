//! Stands in for the Deployment controller and kubelet, which the test bed does not run.

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};

/// Writes the status a Deployment controller would write once every replica of the
/// current generation is up: `observedGeneration` = `generation`, all replica counts =
/// `spec.replicas` (default 1), and conditions `Available` and `Progressing` true with
/// reason `NewReplicaSetAvailable`.
pub async fn mark_deployment_available(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = api
        .get(name)
        .await
        .with_context(|| format!("reading Deployment {namespace}/{name}"))?;
    let replicas = deployment.spec.replicas.unwrap_or(1);
    let now = Time(Timestamp::now());
    let condition = |type_: &str, message: &str| {
        serde_json::json!({
            "type": type_,
            "status": "True",
            "reason": "NewReplicaSetAvailable",
            "message": message,
            "lastUpdateTime": now,
            "lastTransitionTime": now,
        })
    };
    let status = serde_json::json!({
        "status": {
            "observedGeneration": deployment.metadata.generation,
            "replicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "updatedReplicas": replicas,
            "unavailableReplicas": null,
            "conditions": [
                condition("Available", "Deployment has minimum availability (set by the test bed)."),
                condition("Progressing", "ReplicaSet has successfully progressed (set by the test bed)."),
            ],
        }
    });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("writing the status of Deployment {namespace}/{name}"))?;
    Ok(())
}
