//! The rollout engine's benchmark on the test bed (issue 3). It prints numbers and their
//! targets; it asserts nothing, because timings on a shared machine are not a test.
//!
//! 1. Abort latency: from an error burst becoming visible in Prometheus to the canary
//!    weight 0 in the VirtualService, with check-interval 5s and failure-limit 1.
//! 2. API writes per step per Service during a healthy 10,25,50 rollout.
//! 3. Twenty opted-in Services released at once: the agent's peak resident memory; then
//!    an idle namespace: the agent's writes and CPU seconds.
//!
//! Run with `cargo bench -p weir --bench engine`. `WEIR_BENCH_IDLE_SECS` shortens the
//! idle part (default 300) for a quick try; `WEIR_BENCH_PARTS` picks parts, e.g.
//! `abort,writes` or `fleet` (default: all three).

#[path = "process_stats.rs"]
mod process_stats;
#[path = "../e2e/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weir::plan::{Phase, Status};
use weir_testbed::wait_until;

use process_stats::{MemorySampler, cpu_seconds, load_average, memory};
use support::{Agent, App, Bed, DEADLINE, metric_value, weights_of};

const ABORT_RUNS: usize = 5;
/// The check interval of the abort runs; the target is one of these plus a second.
const ABORT_CHECK_INTERVAL_SECS: u64 = 5;
/// The error rate of the burst: well above the 1% gate however long the step ran.
const BURST_ERROR_RATE: &str = "0.5";
/// The default steps, 10,25,50: three steps per rollout.
const STEPS: usize = 3;
const FLEET: usize = 20;
const IDLE_SECS_VAR: &str = "WEIR_BENCH_IDLE_SECS";
const PARTS_VAR: &str = "WEIR_BENCH_PARTS";
const PARTS: [&str; 3] = ["abort", "writes", "fleet"];
const DEFAULT_IDLE_SECS: u64 = 300;
/// After a rollout's last status write, time for the writes that follow it (its Event)
/// to land before a count is closed. Longer than the agent's step and check intervals.
const SETTLE: Duration = Duration::from_secs(10);
const MIB: f64 = 1024.0 * 1024.0;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let idle = idle_duration()?;
    let parts = parts()?;
    let mut summary = Vec::new();

    if parts.contains("abort") || parts.contains("writes") {
        eprintln!("starting the test bed for the abort and write measurements…");
        let bed = Bed::start().await?;
        let agent = bed.agent(&[])?;
        let result = async {
            if parts.contains("abort") {
                summary.push(abort_latency(&bed, &agent).await?);
            }
            if parts.contains("writes") {
                summary.push(writes_per_step(&bed).await?);
            }
            anyhow::Ok(())
        }
        .await;
        exit_with_log(&agent, result)?;
    }
    if !parts.contains("fleet") {
        print_summary(&summary);
        return Ok(());
    }

    eprintln!("starting a fresh test bed for {FLEET} Services…");
    let bed = Bed::start().await?;
    let names: Vec<String> = (1..=FLEET).map(|i| format!("fleet-{i:02}")).collect();
    for name in &names {
        bed.deploy_app(&App::new(name)).await?;
    }
    let agent = bed.agent(&[])?;
    let result = fleet(&bed, &agent, &names, idle).await;
    exit_with_log(&agent, result.map(|rows| summary.extend(rows)))?;

    print_summary(&summary);
    Ok(())
}

/// One line of the final table.
struct Row {
    measure: String,
    measured: String,
    target: String,
    met: bool,
}

// ---- 1. abort latency -------------------------------------------------------------

async fn abort_latency(bed: &Bed, agent: &Agent) -> anyhow::Result<Row> {
    let check_interval = Duration::from_secs(ABORT_CHECK_INTERVAL_SECS);
    let target = check_interval + Duration::from_secs(1);
    println!(
        "\n== 1. abort latency (check-interval {}s, failure-limit 1, burst error rate {BURST_ERROR_RATE}) ==",
        ABORT_CHECK_INTERVAL_SECS
    );
    println!(
        "   (burst visible: 5xx increase > 0, polled every 100 ms; weight 0: VirtualService polled every 50 ms)"
    );
    let mut latencies = Vec::new();
    for run in 1..=ABORT_RUNS {
        let name = format!("burst-{run}");
        // A step that never ends by itself: the canary stays at its first step until
        // the burst fails a check.
        let app = App::held(&name)
            .with("check-interval", &format!("{ABORT_CHECK_INTERVAL_SECS}s"))
            .with("failure-limit", "1");
        bed.deploy_app(&app).await?;
        bed.wait_phase(&name, Phase::Idle).await?;
        bed.release_to_first_step(&name, "v2").await?;
        // A passing check is not written to the status (no write without a change); the
        // agent's own metrics count it.
        let passed = format!(r#"weir_checks_total{{service="{name}",verdict="pass"}}"#);
        wait_until(
            &format!("{name}'s v2 to pass a check"),
            DEADLINE,
            || async {
                let metrics = agent.metrics().await?;
                match metric_value(&metrics, &passed) {
                    Some(n) if n >= 1.0 => Ok(()),
                    other => Err(anyhow!("{passed} is {other:?}")),
                }
            },
        )
        .await?;

        let burst_at = Instant::now();
        let patch = json!({"metadata": {"annotations": {weir_simulator::annotations::ERROR_RATE: BURST_ERROR_RATE}}});
        bed.deployments()
            .patch(
                &format!("{name}-v2"),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        let (visible_at, zero_at) =
            tokio::try_join!(burst_visible(bed, &name), canary_weight_zero(bed, &name))?;
        let aborted = bed.wait_phase(&name, Phase::Aborted).await?;

        let latency = signed_seconds(zero_at, visible_at);
        println!(
            "   run {run}: burst → visible {:.2} s, visible → canary weight 0 {latency:.2} s ({})",
            visible_at.duration_since(burst_at).as_secs_f64(),
            aborted.message
        );
        latencies.push(latency);
    }
    let max = latencies.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    println!("   max {max:.2} s (target ≤ {:.0} s)", target.as_secs_f64());
    Ok(Row {
        measure: format!(
            "abort latency, max of {ABORT_RUNS} (check-interval {ABORT_CHECK_INTERVAL_SECS}s)"
        ),
        measured: format!("{max:.2} s"),
        target: format!("≤ {:.0} s", target.as_secs_f64()),
        met: max <= target.as_secs_f64(),
    })
}

/// `later - earlier` in seconds, negative if `later` came first.
fn signed_seconds(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64(),
        None => -earlier.duration_since(later).as_secs_f64(),
    }
}

/// When Prometheus first answers that the canary of `app` served 5xx responses. The
/// instant is taken as each query is sent, so the latency is never flattered by the
/// query's own round trip.
async fn burst_visible(bed: &Bed, app: &str) -> anyhow::Result<Instant> {
    let query = format!(
        r#"sum(increase(istio_requests_total{{destination_service_namespace="{ns}",destination_service_name="{app}",destination_version="v2",response_code=~"5.."}}[1m])) > 0"#,
        ns = bed.namespace
    );
    let give_up = Instant::now() + DEADLINE;
    loop {
        let sent = Instant::now();
        match bed.prometheus.query(&query).await {
            Ok(result) if result.as_array().is_some_and(|samples| !samples.is_empty()) => {
                return Ok(sent);
            }
            Ok(_) => {}
            Err(e) => eprintln!("   query failed (retrying): {e:#}"),
        }
        if Instant::now() > give_up {
            bail!("the error burst of {app} never showed in Prometheus: {query}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// When the managed route of `app`'s VirtualService is first read with canary weight 0.
async fn canary_weight_zero(bed: &Bed, app: &str) -> anyhow::Result<Instant> {
    let api = bed.virtual_services();
    let give_up = Instant::now() + DEADLINE;
    loop {
        let object = api.get(app).await?;
        let read_at = Instant::now();
        if weights_of(&serde_json::to_value(&object)?, "primary").canary == 0 {
            return Ok(read_at);
        }
        if read_at > give_up {
            bail!("the canary weight of {app} never went to 0");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- 2. API writes per step -------------------------------------------------------

async fn writes_per_step(bed: &Bed) -> anyhow::Result<Row> {
    println!("\n== 2. API writes per step per Service (steps 10,25,50 → promoted) ==");
    let name = "steady";
    bed.deploy_app(&App::new(name)).await?;
    bed.wait_phase(name, Phase::Idle).await?;
    let log = WriteLog::start(bed).await?;
    tokio::time::sleep(SETTLE).await;
    let from = log.mark();

    bed.deploy_version(name, "v2", 0.0).await?;
    bed.wait_status(name, "v2 to be promoted", promoted_to_v2)
        .await?;
    tokio::time::sleep(SETTLE).await;

    let writes = log.since(from);
    let (ours, others): (Vec<&Write>, Vec<&Write>) = writes.iter().partition(|w| w.about == name);
    println!(
        "   {} writes for the whole rollout of {STEPS} steps ({:.2} per step averaged):",
        ours.len(),
        ours.len() as f64 / STEPS as f64
    );
    print_breakdown(&ours);
    println!("   by transition:");
    let per_step = print_transitions(&ours);
    println!(
        "   writes about other Services in the same window (the aborted ones, idle): {}",
        others.len()
    );
    Ok(Row {
        measure: "API writes per step advance per Service".into(),
        measured: format!("max {per_step}"),
        target: "≤ 3".into(),
        met: per_step > 0 && per_step <= 3,
    })
}

fn promoted_to_v2(status: &Status) -> bool {
    status.phase == Phase::Idle && status.stable.as_deref() == Some("v2")
}

// ---- 3. twenty Services: memory, then idle writes and CPU ---------------------------

async fn fleet(
    bed: &Bed,
    agent: &Agent,
    names: &[String],
    idle: Duration,
) -> anyhow::Result<Vec<Row>> {
    println!(
        "\n== 3. {FLEET} opted-in Services released at once, then {}s idle ==",
        idle.as_secs()
    );
    let pid = agent.pid().context("the agent is not running")?;
    let sampler = MemorySampler::start(pid);
    for name in names {
        bed.wait_phase(name, Phase::Idle).await?;
    }
    let log = WriteLog::start(bed).await?;
    tokio::time::sleep(SETTLE).await;
    let from = log.mark();
    // What the agent holds for 20 idle Services, to tell its baseline from the
    // rollouts' share of the peak.
    let before_release = memory(pid)?;
    println!(
        "   before the release ({FLEET} Services idle): VmRSS {:.1} MiB ({:.1} MiB anonymous, {:.1} MiB file-backed), VmHWM {:.1} MiB",
        before_release.rss_bytes as f64 / MIB,
        before_release.anon_bytes as f64 / MIB,
        before_release.file_bytes as f64 / MIB,
        before_release.hwm_bytes as f64 / MIB,
    );

    let released_at = Instant::now();
    futures::future::try_join_all(names.iter().map(|name| bed.deploy_version(name, "v2", 0.0)))
        .await?;
    for name in names {
        bed.wait_status(name, &format!("{name} to promote v2"), promoted_to_v2)
            .await?;
    }
    let rollouts = released_at.elapsed();
    let after_rollouts = memory(pid)?;
    let sampled_peak = sampler.peak_bytes();
    // The high-water mark also catches a peak between two samples.
    let peak = after_rollouts.hwm_bytes.max(sampled_peak);
    println!(
        "   all {FLEET} promoted {:.1} s after release; peak RSS {:.1} MiB (VmHWM {:.1} MiB, highest 200 ms sample {:.1} MiB, VmRSS now {:.1} MiB: {:.1} MiB anonymous, {:.1} MiB file-backed)",
        rollouts.as_secs_f64(),
        peak as f64 / MIB,
        after_rollouts.hwm_bytes as f64 / MIB,
        sampled_peak as f64 / MIB,
        after_rollouts.rss_bytes as f64 / MIB,
        after_rollouts.anon_bytes as f64 / MIB,
        after_rollouts.file_bytes as f64 / MIB,
    );

    tokio::time::sleep(SETTLE).await;
    let rollout_writes = log.since(from);
    let fleet_writes: Vec<&Write> = rollout_writes
        .iter()
        .filter(|w| names.contains(&w.about))
        .collect();
    println!(
        "   rollout writes: {} over {FLEET} × {STEPS} steps = {:.2} per step per Service",
        fleet_writes.len(),
        fleet_writes.len() as f64 / (FLEET * STEPS) as f64
    );
    print_breakdown(&fleet_writes);
    println!("   by transition:");
    print_transitions(&fleet_writes);

    let idle_from = log.mark();
    let cpu_before = cpu_seconds(pid)?;
    let load_before = load_average()?;
    eprintln!("   idling for {}s…", idle.as_secs());
    tokio::time::sleep(idle).await;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let load_after = load_average()?;
    let idle_writes = log.since(idle_from);
    let idle_memory = memory(pid)?;
    println!(
        "   idle {}s: {} writes, {cpu:.2} CPU seconds (load average {load_before} → {load_after}; the machine is shared with compiling processes), VmRSS {:.1} MiB",
        idle.as_secs(),
        idle_writes.len(),
        idle_memory.rss_bytes as f64 / MIB,
    );
    print_breakdown(&idle_writes.iter().collect::<Vec<_>>());

    Ok(vec![
        Row {
            measure: format!("peak RSS, {FLEET} rollouts at once"),
            measured: format!("{:.1} MiB", peak as f64 / MIB),
            target: "≤ 25 MiB".into(),
            met: peak as f64 <= 25.0 * MIB,
        },
        Row {
            measure: format!("API writes, {}s idle, {FLEET} Services", idle.as_secs()),
            measured: idle_writes.len().to_string(),
            target: "0".into(),
            met: idle_writes.is_empty(),
        },
        Row {
            measure: format!("agent CPU, {}s idle (shared machine)", idle.as_secs()),
            measured: format!("{cpu:.2} s"),
            target: "< 1 s".into(),
            met: cpu < 1.0,
        },
    ])
}

// ---- counting writes --------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Service,
    VirtualService,
    DestinationRule,
    Event,
}

/// One ADDED or MODIFIED watch event.
#[derive(Clone, Debug)]
struct Write {
    kind: Kind,
    /// The Service the object concerns: its own name, or for an Event the object it
    /// is about.
    about: String,
    /// ADDED rather than MODIFIED.
    created: bool,
    /// The object's resourceVersion after the write. Opaque by the API's contract, but
    /// on one apiserver it is etcd's revision, which orders writes across kinds.
    revision: u64,
    /// For an Event, its reason: the transition it reports.
    reason: Option<String>,
}

/// Every write to Services, VirtualServices, DestinationRules and Events in the bed's
/// namespace, seen through watches, for as long as it lives.
struct WriteLog {
    writes: Arc<Mutex<Vec<Write>>>,
    watches: Vec<JoinHandle<()>>,
}

impl WriteLog {
    /// Starts the four watches and returns once each has listed what already exists.
    async fn start(bed: &Bed) -> anyhow::Result<WriteLog> {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (synced, mut listed) = mpsc::channel(4);
        let watches = vec![
            watch_writes(
                bed.services(),
                Kind::Service,
                |s: &Service| (s.name_any(), None),
                &writes,
                &synced,
            ),
            watch_writes(
                bed.virtual_services(),
                Kind::VirtualService,
                |o: &DynamicObject| (o.name_any(), None),
                &writes,
                &synced,
            ),
            watch_writes(
                bed.destination_rules(),
                Kind::DestinationRule,
                |o: &DynamicObject| (o.name_any(), None),
                &writes,
                &synced,
            ),
            watch_writes(
                Api::<Event>::namespaced(bed.client.clone(), &bed.namespace),
                Kind::Event,
                |e: &Event| {
                    let about = e.regarding.as_ref().and_then(|r| r.name.clone());
                    (about.unwrap_or_default(), e.reason.clone())
                },
                &writes,
                &synced,
            ),
        ];
        for _ in 0..watches.len() {
            tokio::time::timeout(DEADLINE, listed.recv())
                .await
                .map_err(|_| {
                    anyhow!("the watches did not list the namespace within {DEADLINE:?}")
                })?;
        }
        Ok(WriteLog { writes, watches })
    }

    /// A position in the log, for [`WriteLog::since`].
    fn mark(&self) -> usize {
        self.writes.lock().unwrap().len()
    }

    fn since(&self, mark: usize) -> Vec<Write> {
        self.writes.lock().unwrap()[mark..].to_vec()
    }
}

impl Drop for WriteLog {
    fn drop(&mut self) {
        for watch in &self.watches {
            watch.abort();
        }
    }
}

fn watch_writes<K>(
    api: Api<K>,
    kind: Kind,
    about: fn(&K) -> (String, Option<String>),
    writes: &Arc<Mutex<Vec<Write>>>,
    synced: &mpsc::Sender<()>,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let writes = writes.clone();
    let mut synced = Some(synced.clone());
    tokio::spawn(async move {
        // uids seen so far: an Apply of a new uid is an ADDED, of a known one a MODIFIED.
        let mut known: HashSet<String> = HashSet::new();
        let mut events = pin!(watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitApply(object)) => {
                    known.insert(object.meta().uid.clone().unwrap_or_default());
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(synced) = synced.take() {
                        let _ = synced.send(()).await;
                    }
                }
                Ok(watcher::Event::Apply(object)) => {
                    let created = known.insert(object.meta().uid.clone().unwrap_or_default());
                    let (about, reason) = about(&object);
                    let revision = object
                        .meta()
                        .resource_version
                        .as_deref()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    writes.lock().unwrap().push(Write {
                        kind,
                        about,
                        created,
                        revision,
                        reason,
                    });
                }
                Ok(watcher::Event::Init | watcher::Event::Delete(_)) => {}
                Err(e) => eprintln!("   watch of {kind:?} failed (retrying): {e}"),
            }
        }
    })
}

/// The writes of each transition, by the reason of the Event that reports it. Each plan
/// emits its Events after its other writes, so in revision order one Service's writes
/// split into transitions at its Events.
fn transitions(writes: &[&Write]) -> BTreeMap<String, Vec<usize>> {
    let mut by_service: BTreeMap<&str, Vec<&Write>> = BTreeMap::new();
    for write in writes {
        by_service.entry(&write.about).or_default().push(write);
    }
    let mut found: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for mut ordered in by_service.into_values() {
        ordered.sort_by_key(|w| w.revision);
        let mut group = 0;
        for write in ordered {
            group += 1;
            if let Some(reason) = &write.reason {
                found.entry(reason.clone()).or_default().push(group);
                group = 0;
            }
        }
        if group > 0 {
            found.entry("(no Event)".into()).or_default().push(group);
        }
    }
    found
}

/// Prints the writes of each transition and returns the most any step advance took.
fn print_transitions(writes: &[&Write]) -> usize {
    let found = transitions(writes);
    for (reason, groups) in &found {
        let mut sizes: BTreeMap<usize, usize> = BTreeMap::new();
        for size in groups {
            *sizes.entry(*size).or_default() += 1;
        }
        let sizes: Vec<String> = sizes
            .iter()
            .map(|(size, n)| format!("{n} × {size} writes"))
            .collect();
        println!("     {reason}: {}", sizes.join(", "));
    }
    found
        .get("WeightChanged")
        .and_then(|groups| groups.iter().max().copied())
        .unwrap_or(0)
}

fn print_breakdown(writes: &[&Write]) {
    let mut by_kind: BTreeMap<Kind, (usize, usize)> = BTreeMap::new();
    for write in writes {
        let (added, modified) = by_kind.entry(write.kind).or_default();
        if write.created {
            *added += 1;
        } else {
            *modified += 1;
        }
    }
    for (kind, (added, modified)) in by_kind {
        println!(
            "     {kind:?}: {} ({added} added, {modified} modified)",
            added + modified
        );
    }
}

// ---- output -----------------------------------------------------------------------

fn parts() -> anyhow::Result<HashSet<String>> {
    let Ok(value) = std::env::var(PARTS_VAR) else {
        return Ok(PARTS.iter().map(|p| p.to_string()).collect());
    };
    value
        .split(',')
        .map(|part| {
            let part = part.trim();
            if PARTS.contains(&part) {
                Ok(part.to_string())
            } else {
                bail!(
                    "{PARTS_VAR}={value:?}: {part:?} is not a part; use a comma-separated list of {}",
                    PARTS.join(", ")
                )
            }
        })
        .collect()
}

fn idle_duration() -> anyhow::Result<Duration> {
    match std::env::var(IDLE_SECS_VAR) {
        Err(_) => Ok(Duration::from_secs(DEFAULT_IDLE_SECS)),
        Ok(value) => value.parse().map(Duration::from_secs).with_context(|| {
            format!("{IDLE_SECS_VAR}={value:?} is not a whole number of seconds, e.g. 300")
        }),
    }
}

/// Passes `result` on; on an error, first shows the end of the agent's log.
fn exit_with_log(agent: &Agent, result: anyhow::Result<()>) -> anyhow::Result<()> {
    if result.is_err() {
        let log = agent.log();
        let tail: String = log
            .chars()
            .skip(log.chars().count().saturating_sub(8000))
            .collect();
        eprintln!("---- end of the weir agent log ----\n{tail}");
    }
    result
}

fn print_summary(rows: &[Row]) {
    let width = rows
        .iter()
        .map(|r| r.measure.chars().count())
        .max()
        .unwrap_or(0);
    println!("\n== summary ==");
    println!(
        "{:<width$}  {:>16}  {:>10}  met",
        "measure", "measured", "target"
    );
    for row in rows {
        println!(
            "{:<width$}  {:>16}  {:>10}  {}",
            row.measure,
            row.measured,
            row.target,
            if row.met { "yes" } else { "NO" }
        );
    }
}
