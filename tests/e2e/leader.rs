//! Two agents with leader election: only the holder of the Lease writes; when it is
//! killed mid-rollout the other takes the Lease over and finishes the rollout from the
//! cluster state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, ensure};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use weir::plan::Phase;
use weir_testbed::wait_until;

use crate::support::{App, Bed, DEADLINE};

const LEASE: &str = "weir";

/// Every distinct holder of the Lease, in order, sampled every 100 ms until dropped.
struct HolderLog {
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HolderLog {
    fn start(api: Api<Lease>) -> HolderLog {
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = log.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(Some(lease)) = api.get_opt(LEASE).await {
                    let holder = lease
                        .spec
                        .and_then(|s| s.holder_identity)
                        .unwrap_or_default();
                    let mut log = sink.lock().unwrap();
                    if log.last() != Some(&holder) {
                        log.push(holder);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        HolderLog { log, task }
    }

    fn holders(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for HolderLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One write the agents reported: an Event's reporting instance and the times it was
/// emitted (first, and last for a repeated Event).
#[derive(Debug)]
struct Write {
    instance: String,
    reason: String,
    first: Timestamp,
    last: Timestamp,
}

async fn writes(bed: &Bed) -> anyhow::Result<Vec<Write>> {
    let api: Api<Event> = Api::namespaced(bed.client.clone(), &bed.namespace);
    let mut writes: Vec<Write> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("weir"))
        .map(|e| {
            let first = e
                .event_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(Timestamp::UNIX_EPOCH);
            let last = e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .unwrap_or(first);
            Write {
                instance: e.reporting_instance.unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
                first,
                last,
            }
        })
        .collect();
    writes.sort_by_key(|w| w.first);
    Ok(writes)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_mid_rollout_and_only_the_leader_ever_writes() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.deploy_app(&App::new("checkout")).await?;
    let leases: Api<Lease> = Api::namespaced(bed.client.clone(), &bed.namespace);

    let mut first = bed.agent(&[
        "--leader-election",
        "--lease-duration",
        "6s",
        "--instance",
        "weir-a",
    ])?;
    wait_until("weir-a to hold the lease", DEADLINE, || async {
        let lease = leases
            .get_opt(LEASE)
            .await?
            .ok_or_else(|| anyhow!("no lease yet"))?;
        let holder = lease.spec.and_then(|s| s.holder_identity);
        if holder.as_deref() == Some("weir-a") {
            Ok(())
        } else {
            Err(anyhow!("held by {holder:?}"))
        }
    })
    .await?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    let second = bed.agent(&[
        "--leader-election",
        "--lease-duration",
        "6s",
        "--instance",
        "weir-b",
    ])?;
    // A standby is ready (a rolling upgrade waits for that), though it does not lead.
    wait_until("weir-b to stand by, ready", DEADLINE, || async {
        let ready = reqwest::get(format!("{}/readyz", second.admin_url()))
            .await?
            .status();
        ensure!(
            second.log().contains("waiting to lead"),
            "log: {}",
            second.log()
        );
        ensure!(ready.is_success(), "/readyz answers {ready}");
        Ok(())
    })
    .await?;

    let holders = HolderLog::start(leases.clone());
    let weights = bed.record_weights("checkout");
    bed.deploy_version("checkout", "v2", 0.0).await?;
    wait_until("the canary to reach the second step", DEADLINE, || async {
        let (live, _) = bed.route("checkout").await?;
        if live.canary == 25 {
            Ok(())
        } else {
            Err(anyhow!("weights {live:?}"))
        }
    })
    .await?;
    // Both have been running for a while: the standby must not have written anything.
    let before_kill = writes(&bed).await?;
    let killed_at = Timestamp::now();
    first.kill();

    bed.wait_status("checkout", "the standby to promote v2", |s| {
        s.phase == Phase::Idle && s.stable.as_deref() == Some("v2")
    })
    .await?;
    let history = weights.history();
    let canary = weights.settled_canary().await?;
    drop(weights);

    // Both ran side by side before the kill: only the leader wrote (Events carry the
    // writing agent's --instance as reportingInstance).
    assert!(
        before_kill.iter().all(|w| w.instance == "weir-a"),
        "writes by another agent while weir-a led: {before_kill:?}"
    );

    // The Lease went from the first agent to the second, once, after the kill.
    let lease = leases.get(LEASE).await?;
    let spec = lease.spec.unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("weir-b"));
    assert_eq!(spec.lease_transitions, Some(1));
    let acquired = spec
        .acquire_time
        .map(|t| t.0)
        .ok_or_else(|| anyhow!("the lease has no acquireTime"))?;
    assert!(
        acquired > killed_at,
        "weir-b acquired the lease at {acquired}, before weir-a was killed at {killed_at}"
    );
    assert_eq!(
        holders.holders(),
        ["weir-a", "weir-b"],
        "holders of the lease over the rollout"
    );
    assert!(
        second.log().contains("acquired the lease"),
        "{}",
        second.log()
    );

    // Every Event before the kill is weir-a's, every later one weir-b's, stamped after it
    // acquired the lease; never interleaved.
    let all = writes(&bed).await?;
    let by = |instance: &str| {
        all.iter()
            .filter(|w| w.instance == instance)
            .collect::<Vec<_>>()
    };
    let (a, b) = (by("weir-a"), by("weir-b"));
    ensure!(
        a.len() + b.len() == all.len(),
        "writes by an unknown agent: {all:?}"
    );
    ensure!(
        !a.is_empty() && !b.is_empty(),
        "each agent should have written while leading: {all:?}"
    );
    assert!(
        a.iter().all(|w| w.last < killed_at),
        "weir-a wrote after it was killed: {a:?}"
    );
    assert!(
        b.iter().all(|w| w.first >= acquired),
        "weir-b wrote before it held the lease: {b:?}"
    );
    let order: Vec<&str> = all.iter().map(|w| w.instance.as_str()).collect();
    let switches = order.windows(2).filter(|pair| pair[0] != pair[1]).count();
    assert_eq!(switches, 1, "the writers interleave: {order:?}");
    assert!(
        b.iter().any(|w| w.reason == "Promoted"),
        "weir-b did not promote: {b:?}"
    );

    // DESIGN.md's invariants held throughout: weights sum to 100, and the canary went
    // up step by step with no step skipped or repeated across the takeover.
    for w in &history {
        assert_eq!(w.stable + w.canary, 100, "weights {w:?} in {history:?}");
    }
    assert_eq!(
        canary,
        vec![0, 10, 25, 50, 0],
        "canary weights over the rollout"
    );
    bed.assert_promoted("checkout", "v2").await?;
    Ok(())
}
