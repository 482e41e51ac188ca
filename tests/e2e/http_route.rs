//! The host-level split through a Gateway API HTTPRoute (ambient's recommended path;
//! GAMMA: the route attaches to the opted-in Service): the managed rule's backendRefs
//! are the Services `<app>-stable` and `<app>-canary`, each selecting one version. weir
//! edits only the version in those two Services' selectors and the two backendRefs'
//! weights (adding the canary backendRef when it is missing), in both data-plane modes;
//! every other rule and field survives every write and a restart (the regressions of
//! Argo Rollouts' Gateway API plugin #203/#217, whose rewrites dropped filters and
//! unmanaged backends and rules, and #191, whose header routes were lost on a restart).

use std::time::Duration;

use serde_json::{Value, json};
use weir::plan::Phase;
use weir_simulator::Reporter;

use crate::support::{
    App, Bed, DEADLINE, Weights, canary_service, host_split_http_route, host_split_virtual_service,
    http_route_rule, http_route_rule_without_weights, http_route_spec_without_weights,
    stable_service,
};
use weir_testbed::wait_until;

const APP: &str = "shop";

/// A healthy v2 goes 10 → 25 → 50 → promoted through the HTTPRoute named by
/// `weir.dev/http-route`: the canary Service selects v2 before any traffic reaches it,
/// weir appends the canary backendRef with the stable one's port, the stable Service
/// selects v2 at the promotion, the rule ends at 100/0 with the canary backendRef kept
/// at 0, and v1 is scaled to zero.
async fn a_good_canary_is_promoted(reporter: Reporter, mode: &str) -> anyhow::Result<()> {
    let bed = Bed::start_reporting(reporter).await?;
    let app = App::host_split(APP)
        .with("http-route", APP)
        .with("scale-down-delay", "2s");
    bed.deploy_host_split_app(&app, &host_split_http_route(APP))
        .await?;
    // As the apiserver stored it: the stable backendRef's weight defaulted to 1.
    let created = bed.http_route_value(APP).await?;
    assert_eq!(
        http_route_rule(&created, "primary").map(|r| r["backendRefs"].clone()),
        Some(json!([
            {"group": "", "kind": "Service", "name": stable_service(APP), "port": 80, "weight": 1}
        ])),
        "{mode}: the HTTPRoute as created"
    );
    let _agent = bed.agent(&["--mode", mode])?;
    bed.wait_phase(APP, Phase::Idle).await?;
    let weights = bed.record_http_route_weights(APP, APP);

    bed.release_to_first_step(APP, "v2").await?;
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
    // The canary backendRef weir appended has the stable one's form and port (the
    // apiserver fills in `group` and `kind`); nothing else in the HTTPRoute moved.
    let (_, route) = bed.http_route(APP, APP).await?;
    let mut expected = created["spec"].clone();
    expected["rules"][0]["backendRefs"]
        .as_array_mut()
        .expect("the rule's backendRefs")
        .push(json!({"group": "", "kind": "Service", "name": canary_service(APP), "port": 80}));
    assert_eq!(
        http_route_spec_without_weights(&route["spec"]),
        http_route_spec_without_weights(&expected),
        "{mode}: the HTTPRoute with the canary backendRef added"
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
    bed.assert_http_route_split_promoted(APP, "v2").await?;
    let (_, route) = bed.http_route(APP, APP).await?;
    assert_eq!(
        http_route_spec_without_weights(&route["spec"]),
        http_route_spec_without_weights(&expected),
        "{mode}: the HTTPRoute after the promotion"
    );
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
    // This shape needs neither a DestinationRule nor a VirtualService, and weir creates
    // neither.
    assert!(
        bed.destination_rules()
            .list(&Default::default())
            .await?
            .items
            .is_empty(),
        "{mode}: a DestinationRule appeared"
    );
    assert!(
        bed.virtual_services()
            .list(&Default::default())
            .await?
            .items
            .is_empty(),
        "{mode}: a VirtualService appeared"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_canary_behind_an_http_route_is_promoted_in_sidecar_mode() -> anyhow::Result<()> {
    a_good_canary_is_promoted(Reporter::Destination, "sidecar").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_canary_behind_an_http_route_is_promoted_in_ambient_mode() -> anyhow::Result<()> {
    a_good_canary_is_promoted(Reporter::Waypoint, "ambient").await
}

/// A v2 with 20% errors is aborted at its first step: the canary backendRef's weight is
/// back at 0, the stable Service still selects v1, and v1 keeps its replica.
async fn a_bad_canary_is_aborted(reporter: Reporter, mode: &str) -> anyhow::Result<()> {
    let bed = Bed::start_reporting(reporter).await?;
    let app = App::host_split(APP)
        .with("http-route", APP)
        .with("scale-down-delay", "2s");
    bed.deploy_host_split_app(&app, &host_split_http_route(APP))
        .await?;
    let _agent = bed.agent(&["--mode", mode])?;
    bed.wait_phase(APP, Phase::Idle).await?;
    let weights = bed.record_http_route_weights(APP, APP);

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
    let (live, _) = bed.http_route(APP, APP).await?;
    assert_eq!(
        live,
        Weights {
            stable: 100,
            canary: 0
        },
        "{mode}: the rule after the abort"
    );
    bed.assert_split_abort_holds(APP, mode).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_canary_behind_an_http_route_is_aborted_in_sidecar_mode() -> anyhow::Result<()> {
    a_bad_canary_is_aborted(Reporter::Destination, "sidecar").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_canary_behind_an_http_route_is_aborted_in_ambient_mode() -> anyhow::Result<()> {
    a_bad_canary_is_aborted(Reporter::Waypoint, "ambient").await
}

/// An HTTPRoute with foreign metadata, an unnamed header-matched rule in front of the
/// managed one, to a Service of its own, and a managed rule `primary` with a path
/// match, request/response header filters, timeouts and per-backendRef filters; both
/// backendRefs present (canary at 0), so that the managed rule minus its weights is
/// comparable as stored.
fn foreign_http_route() -> Value {
    let pool = |name: &str| {
        json!([{
            "type": "RequestHeaderModifier",
            "requestHeaderModifier": {"add": [{"name": "x-pool", "value": name}]}
        }])
    };
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": APP,
            "labels": {"team": "payments"},
            "annotations": {"owner": "gitops"}
        },
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": APP, "port": 80}],
            "rules": [
                {
                    "matches": [{"headers": [{"name": "x-debug", "value": "1"}]}],
                    "backendRefs": [{"name": format!("{APP}-debug"), "port": 80}],
                    "timeouts": {"request": "3s"}
                },
                {
                    "name": "primary",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {"set": [{"name": "x-served-by", "value": "weir-e2e"}]}
                        },
                        {
                            "type": "ResponseHeaderModifier",
                            "responseHeaderModifier": {"remove": ["x-internal"]}
                        }
                    ],
                    "timeouts": {"request": "10s", "backendRequest": "2s"},
                    "backendRefs": [
                        {"name": stable_service(APP), "port": 80, "weight": 100, "filters": pool("stable")},
                        {"name": canary_service(APP), "port": 80, "weight": 0, "filters": pool("canary")}
                    ]
                }
            ]
        }
    })
}

/// What weir must leave of an HTTPRoute: its labels, annotations and spec without the
/// backendRefs' weights.
fn without_weights(route: &Value) -> Value {
    json!({
        "labels": route["metadata"]["labels"],
        "annotations": route["metadata"]["annotations"],
        "spec": http_route_spec_without_weights(&route["spec"]),
    })
}

/// The header rule in front and every field of the managed rule but its weights
/// survive the whole rollout, across a SIGKILL and restart of the agent mid-step and a
/// foreign edit made while it was down; the restarted agent goes on from its step. The
/// HTTPRoute is found as the only one routing to the stable Service, and the managed
/// rule is named by `weir.dev/route`.
async fn foreign_content_survives(reporter: Reporter, mode: &str) -> anyhow::Result<()> {
    let bed = Bed::start_reporting(reporter).await?;
    let app = App::host_split(APP)
        .with("route", "primary")
        .with("step-interval", "10s");
    bed.deploy_host_split_app(&app, &foreign_http_route())
        .await?;
    bed.create_service(
        &format!("{APP}-debug"),
        json!({"app": APP, "version": "v1"}),
    )
    .await?;
    // Compared with what the apiserver stored, defaults filled in (backendRef group,
    // kind and weight, header match type, the header rule's path match).
    let stored = bed.http_route_value(APP).await?;
    assert_eq!(
        stored["spec"]["rules"][0]["matches"][0]["headers"][0]["type"], "Exact",
        "{mode}: the apiserver's defaults"
    );
    let mut agent = bed.agent(&["--mode", mode])?;
    bed.wait_phase(APP, Phase::Idle).await?;
    let weights = bed.record_http_route_weights(APP, APP);

    bed.deploy_version(APP, "v2", 0.0).await?;
    bed.wait_status(APP, "v2 at its second step", |s| {
        s.phase == Phase::Progressing && s.step == Some(1)
    })
    .await?;
    let (_, route) = bed.http_route(APP, APP).await?;
    assert_eq!(
        without_weights(&route),
        without_weights(&stored),
        "{mode}: the HTTPRoute before the restart"
    );

    // Killed mid-step; while it is down, someone changes the managed rule's timeout.
    agent.kill();
    let edit = json!([
        {"op": "test", "path": "/spec/rules/1/name", "value": "primary"},
        {"op": "replace", "path": "/spec/rules/1/timeouts/request", "value": "12s"}
    ]);
    bed.http_routes()
        .patch(
            APP,
            &Default::default(),
            &kube::api::Patch::Json::<()>(serde_json::from_value(edit)?),
        )
        .await?;
    let mut expected = stored.clone();
    expected["spec"]["rules"][1]["timeouts"]["request"] = json!("12s");
    assert_eq!(
        without_weights(&bed.http_route_value(APP).await?),
        without_weights(&expected),
        "{mode}: the foreign edit"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.restart()?;

    // The restarted agent writes the next step's weight over the edited rule, and the
    // header rule is still there (Argo Rollouts' Gateway API plugin #191).
    bed.wait_status(APP, "v2 at its third step after the restart", |s| {
        s.phase == Phase::Progressing && s.step == Some(2)
    })
    .await?;
    wait_until(
        "the restarted agent to write weight 50",
        DEADLINE,
        || async {
            let (live, _) = bed.http_route(APP, APP).await?;
            (live.canary == 50)
                .then_some(())
                .ok_or_else(|| anyhow::anyhow!("the rule is {live:?}"))
        },
    )
    .await?;
    let (_, route) = bed.http_route(APP, APP).await?;
    assert_eq!(
        route["spec"]["rules"][0], stored["spec"]["rules"][0],
        "{mode}: the header rule after the restart"
    );
    assert_eq!(
        without_weights(&route),
        without_weights(&expected),
        "{mode}: the HTTPRoute after the restart"
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
    bed.assert_http_route_split_promoted(APP, "v2").await?;
    let (_, route) = bed.http_route(APP, APP).await?;
    let rules = route["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rules.len(), 2, "{mode}: the rules after the promotion");
    // Byte for byte: the header rule whole, the managed rule but for its weights.
    assert_eq!(
        rules[0], stored["spec"]["rules"][0],
        "{mode}: the header rule after the promotion"
    );
    assert_eq!(
        http_route_rule_without_weights(&rules[1]),
        http_route_rule_without_weights(&expected["spec"]["rules"][1]),
        "{mode}: the managed rule after the promotion"
    );
    assert_eq!(
        without_weights(&route),
        without_weights(&expected),
        "{mode}: the HTTPRoute after the promotion"
    );
    assert_eq!(
        bed.selector_version(&format!("{APP}-debug"))
            .await?
            .as_deref(),
        Some("v1"),
        "{mode}: the header rule's Service"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_rules_and_fields_survive_an_http_route_split_and_a_restart_in_sidecar_mode()
-> anyhow::Result<()> {
    foreign_content_survives(Reporter::Destination, "sidecar").await
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_rules_and_fields_survive_an_http_route_split_and_a_restart_in_ambient_mode()
-> anyhow::Result<()> {
    foreign_content_survives(Reporter::Waypoint, "ambient").await
}

/// A VirtualService and an HTTPRoute both route to the stable Service, and neither
/// `weir.dev/virtual-service` nor `weir.dev/http-route` chooses, with v2 waiting: the
/// Service is Misconfigured with an Event naming the annotation to set, and neither
/// object nor Service selector changes. Naming the HTTPRoute is the fix: it wakes the
/// rollout, which moves the HTTPRoute's weights only.
async fn a_virtual_service_and_an_http_route_are_ambiguous(
    reporter: Reporter,
    mode: &str,
) -> anyhow::Result<()> {
    let bed = Bed::start_reporting(reporter).await?;
    let app = App::host_split(APP);
    bed.deploy_host_split_app(&app, &host_split_virtual_service(APP))
        .await?;
    bed.create_dynamic(&host_split_http_route(APP)).await?;
    let (vs_weights, vs_before) = bed.host_route(APP, APP).await?;
    let (hr_weights, hr_before) = bed.http_route(APP, APP).await?;
    let _agent = bed.agent(&["--mode", mode])?;
    bed.deploy_version(APP, "v2", 0.0).await?;

    let status = bed.wait_phase(APP, Phase::Misconfigured).await?;
    assert!(
        status.message.contains("weir.dev/http-route"),
        "{mode}: {}",
        status.message
    );
    let note = bed.wait_event(APP, "Misconfigured").await?;
    assert!(note.contains("weir.dev/http-route"), "{mode}: {note}");
    // Well past a check interval of the agent's defaults, nothing moved.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (vs_after, vs_now) = bed.host_route(APP, APP).await?;
    let (hr_after, hr_now) = bed.http_route(APP, APP).await?;
    assert_eq!(
        (vs_after, hr_after),
        (vs_weights, hr_weights),
        "{mode}: the weights"
    );
    assert_eq!(
        vs_now["spec"], vs_before["spec"],
        "{mode}: the VirtualService"
    );
    assert_eq!(hr_now["spec"], hr_before["spec"], "{mode}: the HTTPRoute");
    for service in [stable_service(APP), canary_service(APP)] {
        assert_eq!(
            bed.selector_version(&service).await?.as_deref(),
            Some("v1"),
            "{mode}: {service} while Misconfigured"
        );
    }
    assert_eq!(
        bed.status(APP).await?.map(|s| s.phase),
        Some(Phase::Misconfigured),
        "{mode}"
    );

    // The fix: the Service names the HTTPRoute.
    bed.annotate(APP, "weir.dev/http-route", Some(APP)).await?;
    bed.wait_status(
        APP,
        "v2 released to its first step once the HTTPRoute is named",
        |s| s.phase == Phase::Progressing && s.canary.as_deref() == Some("v2"),
    )
    .await?;
    wait_until("the HTTPRoute at canary weight 10", DEADLINE, || async {
        let (live, _) = bed.http_route(APP, APP).await?;
        (live.canary == 10)
            .then_some(())
            .ok_or_else(|| anyhow::anyhow!("the rule is {live:?}"))
    })
    .await?;
    let (_, vs_now) = bed.host_route(APP, APP).await?;
    assert_eq!(
        vs_now["spec"], vs_before["spec"],
        "{mode}: the VirtualService once the HTTPRoute is named"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_virtual_service_and_an_http_route_on_one_service_are_misconfigured_in_sidecar_mode()
-> anyhow::Result<()> {
    a_virtual_service_and_an_http_route_are_ambiguous(Reporter::Destination, "sidecar").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_virtual_service_and_an_http_route_on_one_service_are_misconfigured_in_ambient_mode()
-> anyhow::Result<()> {
    a_virtual_service_and_an_http_route_are_ambiguous(Reporter::Waypoint, "ambient").await
}
