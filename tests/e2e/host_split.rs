//! The host-level split: the managed route is between two Services, `<app>-stable` and
//! `<app>-canary`, each selecting one version (`weir.dev/stable-service`,
//! `weir.dev/canary-service`), with no DestinationRule. weir edits only the version in
//! those two Services' selectors and the route's two weights, in both data-plane modes;
//! everything else in the VirtualService survives every write and a restart (the
//! regression of Flagger #1857 and Argo Rollouts' Gateway API plugin #203/#217/#191,
//! whose rewrites dropped filters, unmanaged backends, rules and header routes).

use std::time::Duration;

use serde_json::{Value, json};
use weir::plan::Phase;
use weir_simulator::Reporter;

use crate::support::{
    App, Bed, DEADLINE, Weights, canary_service, host_split_virtual_service, stable_service,
};
use weir_testbed::wait_until;

const APP: &str = "shop";

/// A healthy v2 goes 10 → 25 → 50 → promoted: the canary Service selects v2 before any
/// traffic reaches it, the stable Service selects v2 at the promotion, the route ends at
/// 100/0 with the canary destination weir added kept at 0, and v1 is scaled to zero.
async fn a_good_canary_is_promoted(reporter: Reporter, mode: &str) -> anyhow::Result<()> {
    let bed = Bed::start_reporting(reporter).await?;
    let app = App::host_split(APP).with("scale-down-delay", "2s");
    bed.deploy_host_split_app(&app, &host_split_virtual_service(APP))
        .await?;
    let _agent = bed.agent(&["--mode", mode])?;
    bed.wait_phase(APP, Phase::Idle).await?;
    let weights = bed.record_host_weights(APP, APP);
    // `weir explain` names the split as it is: two Services, no DestinationRule.
    let explained = bed.cli(&["explain", APP]).await?;
    assert!(
        explained.stdout.contains(
            "Routing: VirtualService shop, route primary; Services shop-stable (v1) and shop-canary (v1)."
        ),
        "{mode}: {}",
        explained.stdout
    );

    bed.release_to_first_step(APP, "v2").await?;
    // At 10%, the canary host already serves v2 (else v1 would be judged as the
    // canary), and the stable host still serves v1.
    assert_eq!(
        bed.selector_version(&canary_service(APP)).await?.as_deref(),
        Some("v2"),
        "{mode}: the canary Service at the first step"
    );
    assert_eq!(
        bed.selector_version(&stable_service(APP)).await?.as_deref(),
        Some("v1"),
        "{mode}: the stable Service at the first step"
    );
    // The canary destination weir added has the stable destination's form.
    let (_, vs) = bed.host_route(APP, APP).await?;
    let destinations: Vec<Value> = vs["spec"]["http"][0]["route"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["destination"].clone())
        .collect();
    assert_eq!(
        destinations,
        vec![
            json!({"host": stable_service(APP), "port": {"number": 80}}),
            json!({"host": canary_service(APP), "port": {"number": 80}}),
        ],
        "{mode}: the canary destination added"
    );

    bed.wait_status(APP, &format!("v2 promoted in {mode} mode"), |s| {
        s.phase == Phase::Idle && s.stable.as_deref() == Some("v2")
    })
    .await?;
    assert_eq!(
        weights.settled_canary().await?,
        vec![0, 10, 25, 50, 0],
        "{mode}: canary weights over the release"
    );
    bed.assert_host_split_promoted(APP, "v2").await?;
    // Only the version key of the two Services' selectors moved; the opted-in
    // Service's selector is untouched.
    for service in [stable_service(APP), canary_service(APP)] {
        let mut selector = bed.service_selector(&service).await?;
        selector.remove("version");
        assert_eq!(
            selector.into_iter().collect::<Vec<_>>(),
            vec![("app".to_owned(), APP.to_owned())],
            "{mode}: the selector of {service}"
        );
    }
    assert_eq!(
        bed.service_selector(APP)
            .await?
            .into_iter()
            .collect::<Vec<_>>(),
        vec![("app".to_owned(), APP.to_owned())],
        "{mode}: the opted-in Service's selector"
    );
    bed.wait_replicas(&format!("{APP}-v1"), 0).await?;
    assert_eq!(bed.replicas(&format!("{APP}-v2")).await?, Some(1));
    // This shape needs no DestinationRule, and weir creates none.
    assert!(
        bed.destination_rules()
            .list(&Default::default())
            .await?
            .items
            .is_empty(),
        "{mode}: a DestinationRule appeared"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_canary_behind_two_services_is_promoted_in_sidecar_mode() -> anyhow::Result<()> {
    a_good_canary_is_promoted(Reporter::Destination, "sidecar").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_canary_behind_two_services_is_promoted_in_ambient_mode() -> anyhow::Result<()> {
    a_good_canary_is_promoted(Reporter::Waypoint, "ambient").await
}

/// A v2 with 20% errors is aborted at its first step: the canary weight is back at 0,
/// the stable Service still selects v1, and v1 keeps its replica.
async fn a_bad_canary_is_aborted(reporter: Reporter, mode: &str) -> anyhow::Result<()> {
    let bed = Bed::start_reporting(reporter).await?;
    let app = App::host_split(APP).with("scale-down-delay", "2s");
    bed.deploy_host_split_app(&app, &host_split_virtual_service(APP))
        .await?;
    let _agent = bed.agent(&["--mode", mode])?;
    bed.wait_phase(APP, Phase::Idle).await?;
    let weights = bed.record_host_weights(APP, APP);

    bed.deploy_version(APP, "v2", 0.2).await?;
    let aborted = bed.wait_phase(APP, Phase::Aborted).await?;
    assert_eq!(aborted.canary.as_deref(), Some("v2"), "{mode}");
    // 20% errors break both error gates; whichever has the evidence first aborts.
    assert!(
        aborted.message.contains("error-rate") || aborted.message.contains("errors-vs-stable"),
        "{mode}: {}",
        aborted.message
    );
    assert_eq!(
        weights.settled_canary().await?,
        vec![0, 10, 0],
        "{mode}: never beyond the first step"
    );
    // `weir check` reads each version under its own Service as the agent does: over
    // the last minute, v2's errors behind `shop-canary` fail it (exit 1; without the
    // per-version Services it would find no canary series and exit 2).
    let prometheus = bed.prometheus.url();
    let check = bed
        .cli(&[
            "check",
            APP,
            "--prometheus-url",
            &prometheus,
            "--mode",
            mode,
            "--scrape-interval",
            "1s",
            "--canary",
            "v2",
            "--stable",
            "v1",
            "--window",
            "1m",
        ])
        .await?;
    assert_eq!(check.code, Some(1), "{mode}: {check:?}");
    assert!(
        check.stdout.contains("\nVerdict: fail ("),
        "{mode}: {}",
        check.stdout
    );
    let (live, _) = bed.host_route(APP, APP).await?;
    assert_eq!(
        live,
        Weights {
            stable: 100,
            canary: 0
        },
        "{mode}: the route after the abort"
    );
    bed.assert_split_abort_holds(APP, mode).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_canary_behind_two_services_is_aborted_in_sidecar_mode() -> anyhow::Result<()> {
    a_bad_canary_is_aborted(Reporter::Destination, "sidecar").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_canary_behind_two_services_is_aborted_in_ambient_mode() -> anyhow::Result<()> {
    a_bad_canary_is_aborted(Reporter::Waypoint, "ambient").await
}

/// A VirtualService with a header route in front of the managed one, to a Service of
/// its own, and a managed route with request/response header edits, retries, a
/// timeout and per-destination headers; both destinations present (canary at 0), so
/// that the managed route minus its weights is comparable as written.
fn foreign_virtual_service() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": APP},
        "spec": {
            "hosts": [APP],
            "exportTo": ["."],
            "http": [
                {
                    "name": "debug",
                    "match": [{"headers": {"x-debug": {"exact": "1"}}}],
                    "route": [{"destination": {"host": format!("{APP}-debug"), "port": {"number": 80}}}],
                    "timeout": "3s"
                },
                {
                    "name": "primary",
                    "headers": {
                        "request": {"set": {"x-served-by": "weir-e2e"}},
                        "response": {"remove": ["x-internal"]}
                    },
                    "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,reset"},
                    "timeout": "10s",
                    "route": [
                        {
                            "destination": {"host": stable_service(APP), "port": {"number": 80}},
                            "weight": 100,
                            "headers": {"request": {"add": {"x-pool": "stable"}}}
                        },
                        {
                            "destination": {"host": canary_service(APP), "port": {"number": 80}},
                            "weight": 0,
                            "headers": {"request": {"add": {"x-pool": "canary"}}}
                        }
                    ]
                }
            ]
        }
    })
}

/// An HTTP route without its destinations' weights: what weir must never change.
fn route_without_weights(route: &Value) -> Value {
    let mut route = route.clone();
    for destination in route["route"].as_array_mut().into_iter().flatten() {
        if let Some(destination) = destination.as_object_mut() {
            destination.remove("weight");
        }
    }
    route
}

/// A VirtualService's `spec` without any route's weights.
fn without_weights(spec: &Value) -> Value {
    let mut spec = spec.clone();
    for route in spec["http"].as_array_mut().into_iter().flatten() {
        *route = route_without_weights(route);
    }
    spec
}

/// A per-version Service as weir must leave it: everything but its selector's version.
fn without_selector_version(service: &Value) -> Value {
    let mut service = service.clone();
    if let Some(selector) = service["spec"]["selector"].as_object_mut() {
        selector.remove("version");
    }
    json!({
        "labels": service["metadata"]["labels"],
        "annotations": service["metadata"]["annotations"],
        "spec": service["spec"],
    })
}

/// The header route in front and every field of the managed route but its weights
/// survive the whole rollout, across a SIGKILL and restart of the agent mid-step and a
/// foreign edit made while it was down; the restarted agent goes on from its step.
async fn foreign_content_survives(reporter: Reporter, mode: &str) -> anyhow::Result<()> {
    let bed = Bed::start_reporting(reporter).await?;
    let app = App::host_split(APP).with("step-interval", "10s");
    let written = foreign_virtual_service();
    bed.deploy_host_split_app(&app, &written).await?;
    bed.create_service(
        &format!("{APP}-debug"),
        json!({"app": APP, "version": "v1"}),
    )
    .await?;
    // Foreign metadata and a second port on the per-version Services.
    for service in [stable_service(APP), canary_service(APP)] {
        let patch = json!({
            "metadata": {"labels": {"team": "payments"}, "annotations": {"owner": "gitops"}},
            "spec": {"ports": [
                {"name": "http", "port": 80},
                {"name": "grpc", "port": 9090}
            ]}
        });
        bed.services()
            .patch(
                &service,
                &Default::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
    }
    let services_before = per_version_services(&bed).await?;
    let mut agent = bed.agent(&["--mode", mode])?;
    bed.wait_phase(APP, Phase::Idle).await?;
    let weights = bed.record_host_weights(APP, APP);

    bed.deploy_version(APP, "v2", 0.0).await?;
    bed.wait_status(APP, "v2 at its second step", |s| {
        s.phase == Phase::Progressing && s.step == Some(1)
    })
    .await?;
    let (_, vs) = bed.host_route(APP, APP).await?;
    assert_eq!(
        without_weights(&vs["spec"]),
        without_weights(&written["spec"]),
        "{mode}: the VirtualService before the restart"
    );

    // Killed mid-step; while it is down, someone changes the managed route's timeout.
    agent.kill();
    let edit = json!([
        {"op": "test", "path": "/spec/http/1/name", "value": "primary"},
        {"op": "replace", "path": "/spec/http/1/timeout", "value": "12s"}
    ]);
    bed.virtual_services()
        .patch(
            APP,
            &Default::default(),
            &kube::api::Patch::Json::<()>(serde_json::from_value(edit)?),
        )
        .await?;
    let mut expected = written["spec"].clone();
    expected["http"][1]["timeout"] = json!("12s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.restart()?;

    // The restarted agent writes the next step's weight over the edited route, and the
    // header route is still there (Argo Rollouts' Gateway API plugin #191).
    bed.wait_status(APP, "v2 at its third step after the restart", |s| {
        s.phase == Phase::Progressing && s.step == Some(2)
    })
    .await?;
    wait_until(
        "the restarted agent to write weight 50",
        DEADLINE,
        || async {
            let (live, _) = bed.host_route(APP, APP).await?;
            (live.canary == 50)
                .then_some(())
                .ok_or_else(|| anyhow::anyhow!("the route is {live:?}"))
        },
    )
    .await?;
    let (_, vs) = bed.host_route(APP, APP).await?;
    assert_eq!(
        vs["spec"]["http"][0], written["spec"]["http"][0],
        "{mode}: the header route after the restart"
    );
    assert_eq!(
        without_weights(&vs["spec"]),
        without_weights(&expected),
        "{mode}: the VirtualService after the restart"
    );

    bed.wait_status(APP, &format!("v2 promoted in {mode} mode"), |s| {
        s.phase == Phase::Idle && s.stable.as_deref() == Some("v2")
    })
    .await?;
    assert_eq!(
        weights.settled_canary().await?,
        vec![0, 10, 25, 50, 0],
        "{mode}: no step skipped or repeated across the restart"
    );
    bed.assert_host_split_promoted(APP, "v2").await?;
    let (_, vs) = bed.host_route(APP, APP).await?;
    let http = vs["spec"]["http"].as_array().cloned().unwrap_or_default();
    assert_eq!(http.len(), 2, "{mode}: the routes after the promotion");
    // Byte for byte: the header route whole, the managed route but for its weights.
    assert_eq!(
        http[0], written["spec"]["http"][0],
        "{mode}: the header route after the promotion"
    );
    assert_eq!(
        route_without_weights(&http[1]),
        route_without_weights(&expected["http"][1]),
        "{mode}: the managed route after the promotion"
    );
    assert_eq!(
        without_weights(&vs["spec"]),
        without_weights(&expected),
        "{mode}: the VirtualService after the promotion"
    );
    assert_eq!(
        per_version_services(&bed).await?,
        services_before,
        "{mode}: the per-version Services beyond their selectors' version"
    );
    assert_eq!(
        bed.selector_version(&format!("{APP}-debug"))
            .await?
            .as_deref(),
        Some("v1"),
        "{mode}: the debug route's Service"
    );
    Ok(())
}

/// The two per-version Services as weir must leave them.
async fn per_version_services(bed: &Bed) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for service in [stable_service(APP), canary_service(APP)] {
        let live = serde_json::to_value(bed.services().get(&service).await?)?;
        out.push(without_selector_version(&live));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_routes_and_fields_survive_a_host_split_and_a_restart_in_sidecar_mode()
-> anyhow::Result<()> {
    foreign_content_survives(Reporter::Destination, "sidecar").await
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_routes_and_fields_survive_a_host_split_and_a_restart_in_ambient_mode()
-> anyhow::Result<()> {
    foreign_content_survives(Reporter::Waypoint, "ambient").await
}

/// A host-level split whose canary Service does not exist, with v2 waiting: the Service
/// is Misconfigured with an Event naming the missing Service, and no traffic moves.
/// Creating the Service is the fix, and it wakes the rollout without any other edit.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_split_service_is_misconfigured_and_moves_no_traffic() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let app = App::host_split(APP);
    bed.deploy_host_split_app(&app, &host_split_virtual_service(APP))
        .await?;
    bed.services()
        .delete(&canary_service(APP), &Default::default())
        .await?;
    let (before, vs_before) = bed.host_route(APP, APP).await?;
    let _agent = bed.agent(&[])?;
    bed.deploy_version(APP, "v2", 0.0).await?;

    let status = bed.wait_phase(APP, Phase::Misconfigured).await?;
    let fragment = format!(
        "Service \"{}\" named by weir.dev/canary-service does not exist",
        canary_service(APP)
    );
    assert!(status.message.contains(&fragment), "{}", status.message);
    let note = bed.wait_event(APP, "Misconfigured").await?;
    assert!(note.contains(&fragment), "{note}");
    // Well past a check interval of the agent's defaults, nothing moved.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after, vs_after) = bed.host_route(APP, APP).await?;
    assert_eq!(after, before);
    assert_eq!(vs_after["spec"], vs_before["spec"]);
    assert_eq!(
        bed.selector_version(&stable_service(APP)).await?.as_deref(),
        Some("v1")
    );

    // The fix: the canary Service, as it should have been.
    bed.create_service(&canary_service(APP), json!({"app": APP, "version": "v1"}))
        .await?;
    bed.wait_status(
        APP,
        "v2 released to its first step once the Service exists",
        |s| s.phase == Phase::Progressing && s.canary.as_deref() == Some("v2"),
    )
    .await?;
    Ok(())
}
