//! A healthy release is promoted; a bad one is aborted at its first step.

use weir::plan::Phase;

use crate::support::{App, Bed};

/// (a) A healthy v2 goes 10 → 25 → 50 → promoted.
#[tokio::test(flavor = "multi_thread")]
async fn healthy_release_is_promoted_step_by_step() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.deploy_app(&App::new("checkout")).await?;
    let _agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    let weights = bed.record_weights("checkout");

    bed.deploy_version("checkout", "v2", 0.0).await?;
    bed.wait_status("checkout", "v2 to be promoted", |s| {
        s.phase == Phase::Idle && s.stable.as_deref() == Some("v2")
    })
    .await?;

    assert_eq!(
        weights.settled_canary().await?,
        vec![0, 10, 25, 50, 0],
        "canary weights over the release"
    );
    bed.assert_promoted("checkout", "v2").await?;
    let events = bed.events("checkout").await?;
    for expected in ["RolloutStarted", "WeightChanged", "Promoted"] {
        assert!(
            events.iter().any(|(r, _)| r == expected),
            "no {expected} event in {events:#?}"
        );
    }
    // Every transition is its own Event with its own message, not a repeat of the
    // first one with the same reason.
    let weight_changes: Vec<&str> = events
        .iter()
        .filter(|(r, _)| r == "WeightChanged")
        .map(|(_, note)| note.as_str())
        .collect();
    assert!(
        matches!(
            weight_changes.as_slice(),
            [first, second] if first.contains("10 → 25") && second.contains("25 → 50")
        ),
        "one WeightChanged Event per step advance: {events:#?}"
    );
    Ok(())
}

/// (b) A v3 with 20% errors is aborted at its first step, not retried until its pod
/// template changes, then released again.
#[tokio::test(flavor = "multi_thread")]
async fn failing_release_is_aborted_and_retried_only_after_a_new_build() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.deploy_app(&App::new("checkout")).await?;
    let _agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    let weights = bed.record_weights("checkout");

    bed.deploy_version("checkout", "v3", 0.2).await?;
    let aborted = bed.wait_phase("checkout", Phase::Aborted).await?;
    assert_eq!(aborted.canary.as_deref(), Some("v3"));
    // 20% errors break both error gates, the SLO's and the comparison with stable;
    // whichever has the evidence first aborts.
    assert!(
        aborted.message.contains("error-rate") || aborted.message.contains("errors-vs-stable"),
        "{}",
        aborted.message
    );
    let note = bed.wait_event("checkout", "Aborted").await?;
    assert!(note.contains("v3"), "{note}");
    let (live, _) = bed.route("checkout").await?;
    assert_eq!(live.canary, 0);
    assert_eq!(
        weights.settled_canary().await?,
        vec![0, 10, 0],
        "never beyond the first step"
    );
    assert_eq!(
        bed.subset_version("checkout", "stable").await?.as_deref(),
        Some("v1")
    );

    // Not retried while its template is unchanged: well past several check intervals.
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    let still = bed.status("checkout").await?.unwrap();
    assert_eq!(still.phase, Phase::Aborted);
    assert_eq!(weights.canary(), vec![0, 10, 0]);

    // A fixed build of v3 is a new pod template: released again from step one.
    bed.rebuild("checkout", "v3", "v3-fixed", 0.0).await?;
    bed.wait_status("checkout", "fixed v3 to be promoted", |s| {
        s.phase == Phase::Idle && s.stable.as_deref() == Some("v3")
    })
    .await?;
    assert_eq!(
        weights.settled_canary().await?,
        vec![0, 10, 0, 10, 25, 50, 0]
    );
    Ok(())
}

/// (h) With zero traffic a step stays inconclusive and aborts at `no-data-timeout`;
/// it never advances or promotes.
#[tokio::test(flavor = "multi_thread")]
async fn no_traffic_is_inconclusive_and_aborts_at_the_timeout() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let app = App::new("checkout").with("no-data-timeout", "10s");
    bed.deploy_app(&app).await?;
    bed.annotate("checkout", "sim.weir.dev/rps", Some("0"))
        .await?;
    let _agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    let weights = bed.record_weights("checkout");

    bed.deploy_version("checkout", "v2", 0.0).await?;
    bed.wait_event("checkout", "CheckInconclusive").await?;
    let aborted = bed.wait_phase("checkout", Phase::Aborted).await?;
    assert!(
        aborted.message.contains("no conclusive evidence"),
        "{}",
        aborted.message
    );
    assert_eq!(weights.settled_canary().await?, vec![0, 10, 0]);
    assert_eq!(
        bed.subset_version("checkout", "stable").await?.as_deref(),
        Some("v1")
    );
    Ok(())
}

/// A custom metric from `weir.dev/metrics` gates the release too: v2 meets every
/// built-in gate but its mean latency (150 ms) breaks the custom bound (100 ms).
///
/// The built-ins must truly pass, or the test is a race between two failing gates:
/// v2's p99 (about 500-700 ms at a 150 ms mean) would break the default `max-latency`
/// (500ms) and be far more than 1.5x stable's (about 94 ms), so this app raises
/// `max-latency` to 5s and `tolerance` to 1000% (up to 11x stable's p99, about 1 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_custom_metric_gate_aborts_a_release_the_built_ins_would_pass() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let selector = r#"destination_workload_namespace="{namespace}",destination_service_name="{service}",destination_version="{version}""#;
    let query = format!(
        "query: sum(rate(istio_request_duration_milliseconds_sum{{{selector}}}[{{window}}])) / sum(rate(istio_request_duration_milliseconds_count{{{selector}}}[{{window}}]))\nmax: 100\n"
    );
    bed.create_config_map("checkout-metrics", &[("mean-latency", &query)])
        .await?;
    let app = App::new("checkout")
        .with("metrics", "checkout-metrics")
        .with("max-latency", "5s")
        .with("tolerance", "1000%");
    bed.deploy_app(&app).await?;
    let _agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;

    bed.deploy_version("checkout", "v2", 0.0).await?;
    bed.set_latency("checkout", "v2", 150).await?;
    let aborted = bed.wait_phase("checkout", Phase::Aborted).await?;
    assert!(
        aborted.message.contains("mean-latency"),
        "{}",
        aborted.message
    );
    assert_eq!(
        bed.subset_version("checkout", "stable").await?.as_deref(),
        Some("v1")
    );
    Ok(())
}
