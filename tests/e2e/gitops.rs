//! The GitOps layout of docs/gitops.md (`examples/gitops/checkout`), synced the way Argo
//! CD syncs with `RespectIgnoreDifferences=true` and pruning: a release is one line
//! added to Git, the stable version keeps serving until the promotion, repeated syncs
//! (self-heal) never undo weir's weights, subsets or scale-down, and removing the old
//! version's line afterwards prunes only it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, ensure};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use weir::plan::Phase;

use crate::install::helm_template;
use crate::support::Bed;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gitops/checkout")
}

/// What Git says: the chart rendered with these versions (`helm template`, as Argo CD
/// and Flux render a Helm source).
fn render(versions: &[&str]) -> anyhow::Result<Vec<Value>> {
    let dir = tempfile::tempdir()?;
    let values = dir.path().join("values.yaml");
    let doc = json!({
        "versions": versions,
        "replicas": 2,
        "weir": {"weir.dev/enabled": "true", "weir.dev/scale-down-delay": "3s"},
        "deploymentAnnotations": {"sim.weir.dev/error-rate": "0", "sim.weir.dev/latency-ms": "20"},
    });
    std::fs::write(&values, serde_json::to_string(&doc)?)?;
    let chart = chart();
    helm_template(&[
        "template",
        "checkout",
        chart.to_str().unwrap_or_default(),
        "--values",
        values.to_str().unwrap_or_default(),
    ])
}

/// The fields docs/gitops.md tells Argo CD to ignore (`ignoreDifferences` with
/// `RespectIgnoreDifferences=true`): on a sync, they keep their live values. Whole
/// fields, as Argo CD respects them at sync (not elements inside a list).
fn keep_ignored(desired: &mut Value, live: &Value) {
    let pointers: &[&str] = match desired["kind"].as_str() {
        Some("Deployment") => &["/spec/replicas"],
        Some("VirtualService") => &["/spec/http"],
        Some("DestinationRule") => &["/spec/subsets"],
        _ => &[],
    };
    for pointer in pointers {
        if let (Some(slot), Some(value)) = (desired.pointer_mut(pointer), live.pointer(pointer)) {
            *slot = value.clone();
        }
    }
}

/// One sync: every rendered object is applied (server-side, forced, as a GitOps
/// controller does), keeping the ignored fields' live values; the app's Deployments that
/// Git no longer lists are pruned. New Deployments become Available.
///
/// A sync that read the live values before a weir write and applied them after would
/// undo that write for a moment (weir puts it back at its next reconcile); this one is
/// guarded, so the weights seen are exactly weir's.
async fn sync(bed: &Bed, versions: &[&str]) -> anyhow::Result<()> {
    let params = PatchParams::apply("gitops").force();
    let mut deployments = BTreeSet::new();
    for rendered in render(versions)? {
        let api = bed.dynamic_api(&rendered)?;
        let name = rendered["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // The live values are read, then written back with the rest: guarded by the
        // resourceVersion read, so that a weir write in between is never undone with a
        // stale value (the apply is refused, and made again from a fresh read).
        let mut attempts = 0;
        let live = loop {
            let mut object = rendered.clone();
            let live = api.get_opt(&name).await?;
            if let Some(live) = &live {
                keep_ignored(&mut object, &serde_json::to_value(live)?);
                object["metadata"]["resourceVersion"] = json!(live.metadata.resource_version);
            }
            match api.patch(&name, &params, &Patch::Apply(&object)).await {
                Err(kube::Error::Api(e)) if e.code == 409 && attempts < 20 => attempts += 1,
                result => {
                    result.with_context(|| format!("syncing {} {name}", object["kind"]))?;
                    break live;
                }
            }
        };
        if rendered["kind"] == "Deployment" {
            if live.is_none() {
                weir_testbed::mark_deployment_available(&bed.client, &bed.namespace, &name).await?;
            }
            deployments.insert(name);
        }
    }
    let all = bed.deployments().list(&Default::default()).await?;
    for deployment in all.items {
        let name = deployment.metadata.name.unwrap_or_default();
        if name.starts_with("checkout-") && !deployments.contains(&name) {
            bed.deployments()
                .delete(&name, &DeleteParams::default())
                .await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_is_one_line_in_git_and_syncs_never_undo_weir() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    sync(&bed, &["v1"]).await?;
    let _agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    let weights = bed.record_weights("checkout");

    // The release: v2 added to Git. Self-heal syncs run all along the rollout.
    sync(&bed, &["v1", "v2"]).await?;
    let mut syncs = 1;
    let promoted = loop {
        let status = bed.status("checkout").await?.context("a status")?;
        if status.phase == Phase::Idle && status.stable.as_deref() == Some("v2") {
            break status;
        }
        ensure!(
            !matches!(status.phase, Phase::Aborted | Phase::Misconfigured),
            "the release ended {:?}: {}",
            status.phase,
            status.message
        );
        ensure!(
            syncs < 400,
            "v2 was not promoted after {syncs} syncs: {status:?}"
        );
        // Until the promotion, the stable version keeps its Deployment and replicas.
        ensure!(
            bed.replicas("checkout-v1").await? == Some(2),
            "v1 lost replicas mid-rollout"
        );
        sync(&bed, &["v1", "v2"]).await?;
        syncs += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    // No sync ever reset the weights: every step once, in order.
    assert_eq!(weights.settled_canary().await?, vec![0, 10, 25, 50, 0]);
    assert_eq!(promoted.stable.as_deref(), Some("v2"));

    // weir scales v1 down; a sync afterwards leaves it at 0.
    bed.wait_replicas("checkout-v1", 0).await?;
    bed.wait_event("checkout", "ScaledDown").await?;
    sync(&bed, &["v1", "v2"]).await?;
    assert_eq!(bed.replicas("checkout-v1").await?, Some(0));
    assert_eq!(bed.replicas("checkout-v2").await?, Some(2));
    assert_eq!(
        bed.subset_version("checkout", "stable").await?.as_deref(),
        Some("v2")
    );

    // The second commit removes v1's line: only v1 is pruned, and weir stays idle on v2.
    sync(&bed, &["v2"]).await?;
    let gone = bed.deployments().get_opt("checkout-v1").await?;
    ensure!(gone.is_none(), "v1 was not pruned");
    let status = bed
        .status("checkout")
        .await?
        .ok_or_else(|| anyhow!("no status"))?;
    assert_eq!(status.phase, Phase::Idle, "{status:?}");
    assert_eq!(status.stable.as_deref(), Some("v2"));
    assert_eq!(bed.route("checkout").await?.0.canary, 0);
    let events = bed.events("checkout").await?;
    assert!(
        !events
            .iter()
            .any(|(reason, _)| reason == "CanaryGone" || reason == "Aborted"),
        "{events:?}"
    );
    println!("gitops: {syncs} syncs during the rollout, none undid a weir write");
    Ok(())
}
