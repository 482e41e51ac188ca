//! The superseded version is scaled to zero after a promotion (`scale-down-delay`),
//! through the Deployment's scale subresource, and only that version.

use weir::plan::Phase;

use crate::support::{App, Bed};

/// v2 is promoted; once `scale-down-delay` has passed, v1's Deployment (and nothing
/// else) is at 0 replicas, with an Event that says so. A Service with `never` keeps its
/// superseded version running.
#[tokio::test(flavor = "multi_thread")]
async fn the_superseded_version_is_scaled_to_zero_after_the_delay() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.deploy_app(&App::new("checkout").with("scale-down-delay", "5s"))
        .await?;
    bed.deploy_app(&App::new("search").with("scale-down-delay", "never"))
        .await?;
    let _agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    bed.wait_phase("search", Phase::Idle).await?;

    bed.deploy_version("checkout", "v2", 0.0).await?;
    bed.deploy_version("search", "v2", 0.0).await?;
    let promoted = bed
        .wait_status("checkout", "v2 to be promoted", |s| {
            s.phase == Phase::Idle && s.stable.as_deref() == Some("v2")
        })
        .await?;
    bed.wait_status("search", "search's v2 to be promoted", |s| {
        s.phase == Phase::Idle && s.stable.as_deref() == Some("v2")
    })
    .await?;

    bed.wait_replicas("checkout-v1", 0).await?;
    let note = bed.wait_event("checkout", "ScaledDown").await?;
    assert!(
        note.contains("checkout-v1") && note.contains("removed from Git"),
        "{note}"
    );
    // Not before its delay: the scale-down's Event is at least 5 s after the promotion.
    let scaled_at = bed
        .event_time("checkout", "ScaledDown")
        .await?
        .expect("the ScaledDown event has a time");
    let promoted_at = promoted.last_transition_at;
    assert!(
        scaled_at.duration_since(promoted_at).as_secs_f64() >= 5.0 - 1e-3,
        "scaled down at {scaled_at}, promoted at {promoted_at}"
    );
    // Forgotten once done, and the new stable is untouched.
    let status = bed
        .wait_status("checkout", "the scale-down recorded as done", |s| {
            s.superseded.is_empty()
        })
        .await?;
    assert_eq!(status.stable.as_deref(), Some("v2"));
    assert_eq!(bed.replicas("checkout-v2").await?, Some(1));

    // `never`: search's v1 keeps its replica, well after checkout's delay passed.
    assert_eq!(bed.replicas("search-v1").await?, Some(1));
    let search = bed.status("search").await?.expect("a status");
    assert!(search.superseded.is_empty(), "{search:?}");
    assert!(
        !bed.events("search")
            .await?
            .iter()
            .any(|(reason, _)| reason.starts_with("ScaleDown") || reason == "ScaledDown"),
    );
    Ok(())
}
