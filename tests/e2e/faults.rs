//! (c) The agent is killed mid-step and restarted. (d) Foreign edits survive every
//! agent write.

use std::time::Duration;

use serde_json::json;
use weir::plan::Phase;

use crate::support::{App, Bed};

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_resumes_the_same_step_without_a_jump() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.deploy_app(&App::new("checkout").with("step-interval", "10s"))
        .await?;
    let mut agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    let weights = bed.record_weights("checkout");
    bed.deploy_version("checkout", "v2", 0.0).await?;
    let before = bed
        .wait_status("checkout", "v2 at its second step", |s| s.step == Some(1))
        .await?;

    agent.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.restart()?;
    // The restarted agent does not start the step again: same step, same start time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = bed.status("checkout").await?.unwrap();
    if after.step == before.step {
        assert_eq!(
            after.step_started_at, before.step_started_at,
            "step restarted from scratch"
        );
    } else {
        assert_eq!(after.step, Some(2), "a step was skipped");
    }
    bed.wait_status("checkout", "v2 promoted", |s| {
        s.stable.as_deref() == Some("v2")
    })
    .await?;
    assert_eq!(weights.settled_canary().await?, vec![0, 10, 25, 50, 0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_edits_survive_every_agent_write() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.deploy_app(&App::new("checkout").with("route", "primary"))
        .await?;
    let _agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    bed.deploy_version("checkout", "v2", 0.0).await?;
    bed.wait_status("checkout", "v2 progressing", |s| {
        s.phase == Phase::Progressing
    })
    .await?;

    // Someone (GitOps, a person) adds a route in front and a retries block on the
    // managed route, and a traffic policy in the DestinationRule. (With two routes to
    // the Service, the route annotation is what keeps the choice unambiguous.)
    let vs_patch = json!([
        {"op": "add", "path": "/spec/http/0/retries", "value": {"attempts": 3, "perTryTimeout": "2s"}},
        {"op": "add", "path": "/spec/http/0", "value": {
            "name": "admin",
            "match": [{"uri": {"prefix": "/admin"}}],
            "route": [{"destination": {"host": "checkout", "subset": "stable"}}]
        }}
    ]);
    bed.virtual_services()
        .patch(
            "checkout",
            &Default::default(),
            &kube::api::Patch::Json::<()>(serde_json::from_value(vs_patch)?),
        )
        .await?;
    let dr_patch = json!([{"op": "add", "path": "/spec/trafficPolicy", "value": {"connectionPool": {"http": {"http1MaxPendingRequests": 7}}}}]);
    bed.destination_rules()
        .patch(
            "checkout",
            &Default::default(),
            &kube::api::Patch::Json::<()>(serde_json::from_value(dr_patch)?),
        )
        .await?;

    bed.wait_status("checkout", "v2 promoted", |s| {
        s.stable.as_deref() == Some("v2")
    })
    .await?;
    let (_, vs) = bed.route("checkout").await?;
    let http = vs["spec"]["http"].as_array().unwrap();
    assert_eq!(http[0]["name"], "admin", "the foreign route is still first");
    assert_eq!(
        http[0]["route"],
        json!([{"destination": {"host": "checkout", "subset": "stable"}}])
    );
    assert_eq!(http[1]["name"], "primary");
    assert_eq!(
        http[1]["retries"],
        json!({"attempts": 3, "perTryTimeout": "2s"})
    );
    let dr = serde_json::to_value(bed.destination_rules().get("checkout").await?)?;
    assert_eq!(
        dr["spec"]["trafficPolicy"]["connectionPool"]["http"]["http1MaxPendingRequests"],
        7
    );
    Ok(())
}
