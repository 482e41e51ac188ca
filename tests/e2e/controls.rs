//! (f) pause holds a step; promote skips to promotion; abort aborts; retry reruns.
//! (g) two opted-in Services progress independently; a Service without the
//! annotation is never touched.

use std::time::Duration;

use weir::plan::Phase;

use crate::support::{App, Bed};

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_abort_retry_promote() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    // Long steps, so that only the controls move this rollout.
    bed.deploy_app(&App::held("checkout")).await?;
    let _agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    bed.release_to_first_step("checkout", "v2").await?;

    bed.annotate("checkout", "weir.dev/pause", Some("true"))
        .await?;
    bed.wait_phase("checkout", Phase::Paused).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let paused = bed.status("checkout").await?.unwrap();
    assert_eq!((paused.phase, paused.weight), (Phase::Paused, 10));
    bed.annotate("checkout", "weir.dev/pause", None).await?;
    bed.wait_phase("checkout", Phase::Progressing).await?;

    // A stale control names another version: harmless, and removed.
    bed.annotate("checkout", "weir.dev/abort", Some("v9"))
        .await?;
    bed.wait_event("checkout", "IgnoredControl").await?;
    assert_eq!(
        bed.status("checkout").await?.unwrap().phase,
        Phase::Progressing
    );

    bed.annotate("checkout", "weir.dev/abort", Some("v2"))
        .await?;
    bed.wait_phase("checkout", Phase::Aborted).await?;
    assert_eq!(bed.route("checkout").await?.0.canary, 0);
    let svc = bed.services().get("checkout").await?;
    assert!(
        !svc.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("weir.dev/abort"),
        "consumed"
    );

    bed.annotate("checkout", "weir.dev/retry", Some("v2"))
        .await?;
    bed.wait_status("checkout", "v2 retried", |s| {
        s.phase == Phase::Progressing && s.weight == 10
    })
    .await?;

    bed.annotate("checkout", "weir.dev/promote", Some("v2"))
        .await?;
    bed.wait_status("checkout", "v2 promoted", |s| {
        s.phase == Phase::Idle && s.stable.as_deref() == Some("v2")
    })
    .await?;
    bed.assert_promoted("checkout", "v2").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn services_progress_independently_and_others_are_untouched() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.deploy_app(&App::new("checkout")).await?;
    bed.deploy_app(&App::new("cart").with("step-interval", "1h"))
        .await?;
    let mut bystander = App::new("search");
    bystander.annotations.clear();
    bed.deploy_app(&bystander).await?;
    let bystander_vs = bed
        .virtual_services()
        .get("search")
        .await?
        .metadata
        .resource_version;
    let bystander_dr = bed
        .destination_rules()
        .get("search")
        .await?
        .metadata
        .resource_version;

    let _agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    bed.wait_phase("cart", Phase::Idle).await?;
    bed.deploy_version("checkout", "v2", 0.0).await?;
    bed.deploy_version("cart", "v2", 0.0).await?;
    bed.deploy_version("search", "v2", 0.0).await?;

    bed.wait_status("checkout", "checkout promoted", |s| {
        s.stable.as_deref() == Some("v2")
    })
    .await?;
    // cart holds its first step for an hour: it is still at 10% while checkout is done.
    let cart = bed.status("cart").await?.unwrap();
    assert_eq!((cart.phase, cart.weight), (Phase::Progressing, 10));

    let search = bed.services().get("search").await?;
    assert!(
        !search
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("weir.dev/status")
    );
    assert_eq!(
        bed.virtual_services()
            .get("search")
            .await?
            .metadata
            .resource_version,
        bystander_vs
    );
    assert_eq!(
        bed.destination_rules()
            .get("search")
            .await?
            .metadata
            .resource_version,
        bystander_dr
    );
    assert_eq!(bed.events("search").await?, Vec::<(String, String)>::new());
    Ok(())
}
