//! (c) The agent is killed mid-step and restarted. (d) Foreign edits survive every
//! agent write.

use std::time::Duration;

use serde_json::json;
use weir::plan::Phase;

use crate::support::{App, Bed, DEADLINE};
use weir_testbed::wait_until;

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

/// Invariant 7's cold-cache half: a restarted agent whose Deployment list takes a while
/// (here, thousands of unrelated Deployments, listed in pages) must not read the canary
/// as gone before the list is in. It used to: it set the weights to 100/0, then started
/// the same version again from step one.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_during_a_slow_deployment_list_changes_no_weight() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.deploy_app(&App::held("checkout")).await?;
    let mut agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    bed.release_to_first_step("checkout", "v2").await?;
    let before = bed.status("checkout").await?.unwrap();

    // 2,500 Deployments that no Service selects: the agent lists them in pages of 500.
    bed.create_filler_deployments(2_500).await?;
    let weights = bed.record_weights("checkout");
    agent.restart()?;
    wait_until("the restarted agent to report ready", DEADLINE, || async {
        match reqwest::get(format!("{}/readyz", agent.admin_url())).await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(anyhow::anyhow!("/readyz answered {}", r.status())),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    })
    .await?;
    // Let it reconcile from its now-warm cache, then look at everything it wrote.
    wait_until(
        "the restarted agent to check checkout",
        DEADLINE,
        || async {
            let log = agent.log();
            log.contains("gates evaluated")
                .then_some(())
                .ok_or_else(|| anyhow::anyhow!("no check in the log yet"))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = bed.status("checkout").await?.unwrap();
    assert_eq!(
        (after.phase, after.step, after.step_started_at),
        (before.phase, before.step, before.step_started_at),
        "the restart moved the rollout"
    );
    let history = weights.history();
    assert!(
        history.iter().all(|w| w.canary == 10 && w.stable == 90),
        "the weights changed across the restart: {history:?}"
    );
    let log = agent.log();
    let synced = log
        .find("watch caches synced")
        .expect("the agent logs when its caches are synced");
    assert!(
        !log[..synced].contains("planned"),
        "the agent planned before its caches were synced:\n{log}"
    );
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
