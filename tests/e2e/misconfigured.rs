//! (e) Misconfiguration: status Misconfigured, an Event with the fix, no weight change.

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use weir::plan::Phase;

use crate::support::{App, Bed, Weights};

async fn assert_misconfigured(bed: &Bed, service: &str, fragment: &str) -> anyhow::Result<()> {
    let status = bed.wait_phase(service, Phase::Misconfigured).await?;
    assert!(
        status.message.contains(fragment),
        "{:?} lacks {fragment:?}",
        status.message
    );
    let note = bed.wait_event(service, "Misconfigured").await?;
    assert!(note.contains(fragment), "{note:?} lacks {fragment:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn misconfigurations_are_reported_and_move_no_traffic() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    // A typo in an annotation, with a canary waiting: nothing may move.
    bed.deploy_app(&App::new("typo").with("steps", "10,5,50"))
        .await?;
    bed.deploy_version("typo", "v2", 0.0).await?;
    // A VirtualService name that does not exist.
    bed.deploy_app(&App::new("novs").with("virtual-service", "missing"))
        .await?;
    // A route name that does not exist.
    bed.deploy_app(&App::new("noroute").with("route", "nope"))
        .await?;
    // Two VirtualServices routing to the same host.
    bed.deploy_app(&App::new("twice")).await?;
    bed.create_dynamic(&json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "twice-again"},
        "spec": {"hosts": ["twice.example.test"], "http": [{"route": [{"destination": {"host": "twice", "subset": "stable"}}]}]}
    }))
    .await?;

    // A metrics ConfigMap that does not exist.
    bed.deploy_app(&App::new("nometrics").with("metrics", "absent-metrics"))
        .await?;
    // A custom metric with a PromQL syntax error (a parenthesis left open), with a
    // canary waiting: refused before any traffic moves, not held inconclusive as a
    // connection problem.
    bed.create_config_map(
        "broken-metrics",
        &[(
            "broken-ratio",
            "query: sum(rate(errors{version=\"{version}\"}[{window}]) / sum(rate(requests{version=\"{version}\"}[{window}]))\nmax: 0.1\n",
        )],
    )
    .await?;
    bed.deploy_app(&App::new("badquery").with("metrics", "broken-metrics"))
        .await?;
    bed.deploy_version("badquery", "v2", 0.0).await?;

    let _agent = bed.agent(&[])?;
    assert_misconfigured(&bed, "typo", "strictly ascending").await?;
    assert_misconfigured(&bed, "nometrics", "absent-metrics").await?;
    assert_misconfigured(&bed, "novs", "missing").await?;
    assert_misconfigured(&bed, "noroute", "nope").await?;
    assert_misconfigured(&bed, "twice", "twice-again").await?;
    assert_misconfigured(
        &bed,
        "badquery",
        "key \"broken-ratio\": `query` is not valid PromQL: unclosed left parenthesis",
    )
    .await?;
    let message = bed
        .wait_phase("badquery", Phase::Misconfigured)
        .await?
        .message;
    assert_eq!(message.matches("broken-ratio").count(), 1, "{message}");
    assert!(!message.contains("credentials"), "{message}");

    tokio::time::sleep(Duration::from_secs(5)).await;
    for app in ["typo", "novs", "noroute", "twice", "nometrics", "badquery"] {
        assert_eq!(
            bed.route(app).await?.0,
            Weights {
                stable: 100,
                canary: 0
            },
            "{app}"
        );
        assert_eq!(
            bed.subset_version(app, "canary").await?.as_deref(),
            Some("v1"),
            "{app}"
        );
    }

    // Fixing the annotation resumes: the waiting canary is released.
    bed.annotate("typo", "weir.dev/steps", Some("10,50"))
        .await?;
    bed.wait_status("typo", "typo's v2 promoted", |s| {
        s.stable.as_deref() == Some("v2")
    })
    .await?;
    Ok(())
}

/// An edit that takes the managed route out of a VirtualService wakes the Service at
/// once: the watch remembers which Services each routing object routed to, since the
/// edited object no longer names them. Nothing else changes meanwhile (no Deployment
/// event), and an idle Service has no periodic requeue that could hide a missed wake.
#[tokio::test(flavor = "multi_thread")]
async fn removing_the_managed_route_is_reported_at_once() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.deploy_app(&App::held("edge")).await?;
    let _agent = bed.agent(&[])?;
    bed.wait_phase("edge", Phase::Idle).await?;
    // Let the reconcile that the agent's own status write caused come and go.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The route becomes a TCP route: the VirtualService no longer routes HTTP to edge.
    let patch = json!({"spec": {
        "http": null,
        "tcp": [{"route": [{"destination": {"host": "edge", "subset": "stable"}}]}]
    }});
    bed.virtual_services()
        .patch("edge", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let status = tokio::time::timeout(
        Duration::from_secs(15),
        bed.wait_phase("edge", Phase::Misconfigured),
    )
    .await
    .map_err(|_| anyhow::anyhow!("edge was not reported Misconfigured within 15s of the edit"))??;
    assert!(
        status
            .message
            .contains("has an HTTP route to Service \"edge\""),
        "{}",
        status.message
    );

    // Deleting it is noticed too: the message names the missing object now. First put
    // the route back, so that the Service is valid again.
    let restore = json!({"spec": {
        "tcp": null,
        "http": [{
            "name": "primary",
            "route": [{"destination": {"host": "edge", "subset": "stable"}, "weight": 100}]
        }]
    }});
    bed.virtual_services()
        .patch("edge", &PatchParams::default(), &Patch::Merge(&restore))
        .await?;
    tokio::time::timeout(Duration::from_secs(15), bed.wait_phase("edge", Phase::Idle))
        .await
        .map_err(|_| anyhow::anyhow!("edge did not recover within 15s of the fix"))??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    bed.virtual_services()
        .delete("edge", &Default::default())
        .await?;
    tokio::time::timeout(
        Duration::from_secs(15),
        bed.wait_phase("edge", Phase::Misconfigured),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!("edge was not reported Misconfigured within 15s of the deletion")
    })??;
    Ok(())
}
