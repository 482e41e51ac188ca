//! What the mesh calls a version: sidecars report the pods' `version` label, ambient's
//! waypoints their canonical revision. weir queries each version by that value, in both
//! modes, for every way pods are commonly labelled; and it refuses a pair of versions
//! the metrics cannot tell apart.

use serde_json::{Value, json};
use weir::plan::Phase;
use weir_simulator::Reporter;

use crate::support::{App, Bed};

/// One way to label the two versions' pods: (v1's labels, v2's labels), weir's version
/// label, and the values each mode reports.
struct Labelling {
    app: &'static str,
    v1: Value,
    v2: Value,
    version_label: &'static str,
    /// (stable, canary) as sidecars report them; `None`: they cannot be told apart.
    sidecar: Option<(&'static str, &'static str)>,
    /// (stable, canary) as waypoints report them.
    waypoint: (&'static str, &'static str),
}

fn labellings() -> Vec<Labelling> {
    vec![
        Labelling {
            app: "plain",
            v1: json!({"version": "v1"}),
            v2: json!({"version": "v2"}),
            version_label: "version",
            sidecar: Some(("v1", "v2")),
            waypoint: ("v1", "v2"),
        },
        Labelling {
            app: "semver",
            v1: json!({"app.kubernetes.io/version": "1.4.0"}),
            v2: json!({"app.kubernetes.io/version": "1.5.0"}),
            version_label: "app.kubernetes.io/version",
            sidecar: None,
            waypoint: ("1.4.0", "1.5.0"),
        },
        Labelling {
            app: "both",
            v1: json!({"version": "v1", "app.kubernetes.io/version": "1.4.0"}),
            v2: json!({"version": "v2", "app.kubernetes.io/version": "1.5.0"}),
            version_label: "version",
            sidecar: Some(("v1", "v2")),
            waypoint: ("1.4.0", "1.5.0"),
        },
        Labelling {
            app: "pinned",
            v1: json!({"version": "v1", "service.istio.io/canonical-revision": "r1"}),
            v2: json!({"version": "v2", "service.istio.io/canonical-revision": "r2"}),
            version_label: "version",
            sidecar: Some(("v1", "v2")),
            waypoint: ("r1", "r2"),
        },
    ]
}

async fn deploy(bed: &Bed, app: &str, version: &str, labels: &Value) -> anyhow::Result<()> {
    let mut labels = labels.clone();
    labels["app"] = app.into();
    let name = format!("{app}-{version}");
    bed.create_dynamic(&json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"sim.weir.dev/error-rate": "0.003"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": format!("example.test/{name}")}]}
            }
        }
    }))
    .await?;
    weir_testbed::mark_deployment_available(&bed.client, &bed.namespace, &name).await
}

async fn releases_in(reporter: Reporter, mode: &str) -> anyhow::Result<()> {
    let bed = Bed::start_reporting(reporter).await?;
    for l in labellings() {
        // The app with v1 routed and its subsets labelled as weir's version label says.
        bed.deploy_app(&App::new(l.app).with("version-label", l.version_label))
            .await?;
        bed.deployments()
            .delete(&format!("{}-v1", l.app), &Default::default())
            .await?;
        deploy(&bed, l.app, "v1", &l.v1).await?;
        let stable = l.v1[l.version_label].as_str().unwrap_or_default();
        bed.destination_rules()
            .patch(
                l.app,
                &Default::default(),
                &kube::api::Patch::Merge(json!({"spec": {"subsets": [
                    {"name": "stable", "labels": {l.version_label: stable}},
                    {"name": "canary", "labels": {l.version_label: stable}}
                ]}})),
            )
            .await?;
    }
    let _agent = bed.agent(&["--mode", mode])?;
    for l in labellings() {
        bed.wait_phase(l.app, Phase::Idle).await?;
        deploy(&bed, l.app, "v2", &l.v2).await?;
    }
    for l in labellings() {
        let canary = l.v2[l.version_label]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let expected = if reporter == Reporter::Waypoint {
            Some(l.waypoint)
        } else {
            l.sidecar
        };
        match expected {
            Some((stable_reported, canary_reported)) => {
                // While it progresses, the status says what the metrics call the two
                // versions when that differs from their names.
                let stable_name = l.v1[l.version_label].as_str().unwrap_or_default();
                if stable_reported != stable_name || canary_reported != canary {
                    let progressing = bed
                        .wait_status(l.app, "the rollout in progress", |s| {
                            s.phase == Phase::Progressing
                                || s.phase == Phase::Idle
                                    && s.stable.as_deref() == Some(canary.as_str())
                        })
                        .await?;
                    if progressing.phase == Phase::Progressing {
                        let reported = progressing.reported_as.clone();
                        anyhow::ensure!(
                            reported
                                .as_ref()
                                .map(|r| (r.stable.as_str(), r.canary.as_str()))
                                == Some((stable_reported, canary_reported)),
                            "{} in {mode} mode: reported as {reported:?}",
                            l.app
                        );
                    }
                }
                // Promoted: every check found the canary's and stable's series by the
                // values this mode reports (without them, no data: never promoted).
                bed.wait_status(
                    l.app,
                    &format!("{} {canary} promoted in {mode} mode", l.app),
                    |s| s.phase == Phase::Idle && s.stable.as_deref() == Some(canary.as_str()),
                )
                .await?;
            }
            None => {
                let status = bed.wait_phase(l.app, Phase::Misconfigured).await?;
                anyhow::ensure!(
                    status.message.contains("cannot be told apart")
                        && status.message.contains("unknown"),
                    "{}: {}",
                    l.app,
                    status.message
                );
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecar_mode_queries_the_version_label() -> anyhow::Result<()> {
    releases_in(Reporter::Destination, "sidecar").await
}

#[tokio::test(flavor = "multi_thread")]
async fn ambient_mode_queries_the_canonical_revision() -> anyhow::Result<()> {
    releases_in(Reporter::Waypoint, "ambient").await
}
