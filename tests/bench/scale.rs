//! The agent with many Services in one namespace (issue 14), on the test bed. It prints
//! numbers; it asserts nothing, because timings on a shared machine are not a test.
//!
//! For each size N (default 10, 100 and 1,000): N opted-in Services, each with its
//! VirtualService, DestinationRule and version v1, are created before the agent starts
//! (release build, as `cargo bench` builds it). Then:
//!
//! 1. **Start-up**: the time until every Service carries a status, and the agent's CPU
//!    seconds and API requests until then.
//! 2. **Idle** (`WEIR_SCALE_IDLE_SECS`, default 60): CPU seconds per minute, API requests
//!    per minute (reads and writes), Prometheus queries per minute.
//! 3. **Progressing**: v2 of a tenth of the Services becomes Available at once; one of
//!    them fails half its requests. The time from Available to the first weight, the
//!    bad one's abort latency (from its first weight to weight 0) while the others
//!    progress, Prometheus queries per minute and their latency, CPU and RSS.
//!
//! API requests are the apiserver's own count (`apiserver_request_total`), so they
//! include everything that talks to it; while the agent runs, only it and this bench's
//! watch of the Services do, and the simulator, which only watches (watches are not in
//! that count). Leases and IPAddresses are left out: they are the apiserver's own
//! heartbeat and ClusterIP allocation here.
//!
//! **Flagger beside weir** (`WEIR_SCALE_FLAGGER=1`/`0`; on by default in `cargo bench`,
//! off in `cargo test`): after each size, the same N on a fresh test bed with Flagger
//! (built by `tests/testbed/setup.sh`) instead of the agent, see [`run_flagger`]: N
//! Deployments and N `Canary` objects (Istio provider, analysis every
//! [`CHECK_INTERVAL_SECS`], step weights 10, 25, 50, threshold 1, the built-in
//! request-success-rate and request-duration metrics over 30 s). The same figures are
//! measured where Flagger has them and printed with the ratios weir/Flagger. Differences
//! that stay: Flagger moves one step per analysis interval (weir holds each step 10 s);
//! it exports no histogram of its query latency; start-up ends when every Canary is
//! `Initialized` (Flagger has created the primary Deployment, Services, VirtualService
//! and DestinationRules), not when a status is written. Without a kubelet, the bench
//! marks Deployments Available, and its own requests for that are taken out of the API
//! counts.
//!
//! Run with `cargo bench -p weir --bench scale`. `WEIR_SCALE_SIZES=10,100` picks sizes;
//! CI runs a short mode with small sizes and a short idle, built in the test profile
//! (`cargo test -p weir --bench scale`), to prove it runs.

#[path = "process_stats.rs"]
mod process_stats;
#[path = "../e2e/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::JoinHandle;
use weir::plan::{Phase, Status};
use weir_testbed::{OwnedProcess, mark_deployment_available, wait_until};

use process_stats::{MemorySampler, cpu_seconds, load_average, memory};
use support::{App, Bed, metric_value};

const SIZES_VAR: &str = "WEIR_SCALE_SIZES";
const IDLE_VAR: &str = "WEIR_SCALE_IDLE_SECS";
const FLAGGER_VAR: &str = "WEIR_SCALE_FLAGGER";
const DEFAULT_SIZES: [usize; 3] = [10, 100, 1000];
const DEFAULT_IDLE_SECS: u64 = 60;
/// The check interval every Service uses here: the abort target is one of these + 1 s.
const CHECK_INTERVAL_SECS: u64 = 5;
/// Objects created at once while the namespace is filled.
const CREATE_CONCURRENCY: usize = 16;
/// How long start-up and the rollouts may take before the bench gives up on a size.
const PHASE_DEADLINE: Duration = Duration::from_secs(900);
const MIB: f64 = 1024.0 * 1024.0;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let sizes = sizes()?;
    let idle = idle()?;
    let with_flagger = with_flagger()?;
    println!(
        "scale benchmark: sizes {sizes:?}, idle {} s, check interval {CHECK_INTERVAL_SECS} s, Flagger {}, {} build",
        idle.as_secs(),
        if with_flagger { "too" } else { "not run" },
        if cfg!(debug_assertions) {
            "debug (numbers are not the product's)"
        } else {
            "release"
        }
    );
    let mut rows = Vec::new();
    let mut flagger_rows = Vec::new();
    for n in sizes {
        let row = run(n, idle)
            .await
            .with_context(|| format!("the run with {n} Services"))?;
        row.print();
        if with_flagger {
            let flagger = run_flagger(n, idle)
                .await
                .with_context(|| format!("the Flagger run with {n} Canaries"))?;
            flagger.print();
            print_ratios(&row, &flagger);
            flagger_rows.push(flagger);
        }
        rows.push(row);
    }
    print_curve(&rows);
    if !flagger_rows.is_empty() {
        print_curve(&flagger_rows);
    }
    Ok(())
}

/// What one size measured.
#[derive(Debug, Default)]
struct Row {
    /// `weir` or `Flagger`.
    controller: &'static str,
    /// What start-up waits for.
    ready: &'static str,
    services: usize,
    startup_secs: f64,
    startup_cpu_secs: f64,
    startup_reads: f64,
    startup_writes: f64,
    idle_rss_mib: f64,
    /// The peak until the end of the idle phase: the start-up's.
    startup_peak_rss_mib: f64,
    idle_cpu_per_min: f64,
    idle_reads_per_min: f64,
    idle_writes_per_min: f64,
    idle_queries_per_min: f64,
    progressing: usize,
    first_weight_p50: f64,
    first_weight_max: f64,
    abort_latency: Option<f64>,
    promoted: usize,
    busy_cpu_per_min: f64,
    busy_reads_per_min: f64,
    busy_writes_per_min: f64,
    busy_queries_per_min: f64,
    query_p50: Option<f64>,
    query_p99: Option<f64>,
    peak_rss_mib: f64,
    steady_rss_mib: f64,
    steady_anon_mib: f64,
    steady_file_mib: f64,
    load_average: String,
}

impl Row {
    fn print(&self) {
        let n = self.services;
        let controller = self.controller;
        println!("\n== {n} Services: {controller} ==");
        println!(
            "   start-up: {} {:.1} s after {controller} started; {:.2} CPU-s; {:.0} API reads, {:.0} writes",
            self.ready,
            self.startup_secs,
            self.startup_cpu_secs,
            self.startup_reads,
            self.startup_writes
        );
        println!(
            "   idle: RSS {:.1} MiB (peak until then {:.1} MiB); {:.3} CPU-s/min ({:.2}% of a core); {:.1} API reads/min, {:.1} writes/min; {:.1} Prometheus queries/min",
            self.idle_rss_mib,
            self.startup_peak_rss_mib,
            self.idle_cpu_per_min,
            self.idle_cpu_per_min / 60.0 * 100.0,
            self.idle_reads_per_min,
            self.idle_writes_per_min,
            self.idle_queries_per_min
        );
        println!(
            "   {} progressing (1 bad): Available → first weight p50 {:.1} s, max {:.1} s; bad one aborted {} after its first weight; {}/{} good promoted",
            self.progressing,
            self.first_weight_p50,
            self.first_weight_max,
            self.abort_latency
                .map_or_else(|| "never".to_owned(), |s| format!("{s:.1} s")),
            self.promoted,
            self.progressing - 1,
        );
        println!(
            "   while progressing: {:.2} CPU-s/min; {:.0} API reads/min, {:.0} writes/min; {:.0} Prometheus queries/min, {}",
            self.busy_cpu_per_min,
            self.busy_reads_per_min,
            self.busy_writes_per_min,
            self.busy_queries_per_min,
            if self.controller == "weir" {
                format!(
                    "latency p50 {} p99 {} ({controller}'s histogram, upper bucket bounds)",
                    seconds(self.query_p50),
                    seconds(self.query_p99)
                )
            } else {
                format!("query latency not measured ({controller} exports no histogram of it)")
            },
        );
        println!(
            "   RSS: peak {:.1} MiB, steady (after the rollouts) {:.1} MiB ({:.1} MiB anonymous, {:.1} MiB file-backed); load average {}",
            self.peak_rss_mib,
            self.steady_rss_mib,
            self.steady_anon_mib,
            self.steady_file_mib,
            self.load_average
        );
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |s| format!("≤{:.0} ms", s * 1000.0))
}

async fn run(n: usize, idle: Duration) -> anyhow::Result<Row> {
    let bed = Bed::start().await?;
    let names: Vec<String> = (0..n).map(|i| format!("svc-{i:04}")).collect();
    let filled = Instant::now();
    futures::stream::iter(names.iter().map(|name| {
        let bed = &bed;
        async move {
            let app = App::new(name)
                .with("check-interval", &format!("{CHECK_INTERVAL_SECS}s"))
                .with("step-interval", "10s");
            bed.deploy_app(&app).await
        }
    }))
    .buffer_unordered(CREATE_CONCURRENCY)
    .try_collect::<Vec<()>>()
    .await?;
    println!(
        "\n{n} Services with their VirtualService, DestinationRule and v1 created in {:.1} s",
        filled.elapsed().as_secs_f64()
    );

    let watch = status_watch(&bed);
    let api_before = api_requests(&bed).await?;
    let started = Instant::now();
    let agent = bed.agent(&[])?;
    let pid = agent.pid().context("the agent is not running")?;
    let sampler = MemorySampler::start(pid);
    let mut row = Row {
        controller: "weir",
        ready: "every Service has a status",
        services: n,
        ..Row::default()
    };

    wait_until(
        "every Service to carry a status",
        PHASE_DEADLINE,
        || async {
            let adopted = watch.count(|t| t.status.is_some());
            anyhow::ensure!(adopted == n, "{adopted} of {n}");
            Ok(())
        },
    )
    .await?;
    row.startup_secs = started.elapsed().as_secs_f64();
    row.startup_cpu_secs = cpu_seconds(pid)?;
    let api_started = api_requests(&bed).await?;
    (row.startup_reads, row.startup_writes) = api_started.since(&api_before);

    // Idle: let the start-up's last writes land first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = Counters::read(&bed, pid, api_requests(&bed).await?).await?;
    tokio::time::sleep(idle).await;
    let after = Counters::read(&bed, pid, api_requests(&bed).await?).await?;
    row.set_idle(before.per_minute(&after));
    row.set_idle_memory(pid, &sampler)?;

    // A tenth of the Services release v2 at once; the first one is bad.
    let progressing: Vec<&String> = names.iter().take((n / 10).max(2)).collect();
    row.progressing = progressing.len();
    let bad = progressing[0].clone();
    let histogram = query_histogram(&agent.metrics().await?);
    let before = Counters::read(&bed, pid, api_requests(&bed).await?).await?;
    let available: HashMap<String, Instant> =
        futures::stream::iter(progressing.iter().map(|name| {
            let bed = &bed;
            let bad = &bad;
            async move {
                let error_rate = if *name == bad { 0.5 } else { 0.0 };
                bed.deploy_version(name, "v2", error_rate).await?;
                anyhow::Ok(((*name).clone(), Instant::now()))
            }
        }))
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect()
        .await?;
    let ended = |name: &str| {
        watch.get(name).and_then(|t| {
            let status = t.status?;
            match status.phase {
                Phase::Aborted => Some(false),
                Phase::Idle if status.stable.as_deref() == Some("v2") => Some(true),
                _ => None,
            }
        })
    };
    let failed = await_endings(&progressing, &bad, ended).await?;
    row.promoted = progressing.len() - 1 - failed.len();
    for name in failed {
        let reason = watch
            .get(name)
            .and_then(|t| t.status)
            .map(|s| s.message)
            .unwrap_or_default();
        println!("   a good canary was aborted: {name}: {reason}");
    }
    let after = Counters::read(&bed, pid, api_requests(&bed).await?).await?;
    row.set_busy(before.per_minute(&after));
    let histogram = query_histogram(&agent.metrics().await?).since(&histogram);
    row.query_p50 = histogram.quantile(0.5);
    row.query_p99 = histogram.quantile(0.99);
    let bad_times = watch.get(&bad).context("the bad Service's status")?;
    row.set_rollout_times(
        &progressing,
        &available,
        |name| watch.get(name)?.first_weight,
        (bad_times.first_weight, bad_times.aborted),
    )?;
    row.set_memory(pid, &sampler).await?;
    drop(agent);
    Ok(row)
}

// ---- what the bench sees of the Services ------------------------------------------

/// One Service as the bench's watch saw it.
#[derive(Clone, Debug, Default)]
struct Seen {
    status: Option<Status>,
    /// When its canary v2 first had a weight above 0.
    first_weight: Option<Instant>,
    /// When it was first seen Aborted.
    aborted: Option<Instant>,
}

/// A watch of every object of one kind, with what the bench records of each (a watch,
/// so that following 1,000 objects costs the apiserver one request).
struct SeenWatch<S> {
    seen: Arc<Mutex<HashMap<String, S>>>,
    task: JoinHandle<()>,
}

impl<S: Clone + Default + Send + 'static> SeenWatch<S> {
    /// Follows `api`; `record` updates an object's entry from the object, at the time the
    /// bench saw it.
    fn start<K>(api: Api<K>, record: impl Fn(&K, &mut S, Instant) + Send + 'static) -> Self
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        let seen: Arc<Mutex<HashMap<String, S>>> = Arc::default();
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let events = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects();
            futures::pin_mut!(events);
            while let Some(object) = events.next().await {
                let Ok(object) = object else { continue };
                let now = Instant::now();
                let mut seen = sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                record(&object, seen.entry(object.name_any()).or_default(), now);
            }
        });
        SeenWatch { seen, task }
    }

    fn count(&self, matching: impl Fn(&S) -> bool) -> usize {
        self.lock().values().filter(|seen| matching(seen)).count()
    }

    fn get(&self, name: &str) -> Option<S> {
        self.lock().get(name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, S>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<S> Drop for SeenWatch<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until every progressing canary has ended (`ended`: `Some(true)` promoted,
/// `Some(false)` aborted); returns the good ones (all but `bad`) that were aborted. A good
/// canary aborted is a result to print, not a reason to wait out the deadline.
async fn await_endings<'a>(
    progressing: &[&'a String],
    bad: &str,
    ended: impl Fn(&str) -> Option<bool>,
) -> anyhow::Result<Vec<&'a String>> {
    wait_until("every canary to end", PHASE_DEADLINE, || async {
        let done = progressing
            .iter()
            .filter(|name| ended(name).is_some())
            .count();
        anyhow::ensure!(
            done == progressing.len(),
            "{done} of {} done",
            progressing.len()
        );
        Ok(())
    })
    .await?;
    Ok(progressing
        .iter()
        .filter(|name| name.as_str() != bad && ended(name) == Some(false))
        .copied()
        .collect())
}

/// Every Service's status, and when its canary v2 first had a weight and it aborted.
fn status_watch(bed: &Bed) -> SeenWatch<Seen> {
    SeenWatch::start(
        bed.services(),
        |service: &Service, entry: &mut Seen, now| {
            let status: Option<Status> = service
                .annotations()
                .get("weir.dev/status")
                .and_then(|raw| serde_json::from_str(raw).ok());
            if let Some(s) = &status {
                if s.canary.as_deref() == Some("v2") && s.weight > 0 {
                    entry.first_weight.get_or_insert(now);
                }
                if s.phase == Phase::Aborted {
                    entry.aborted.get_or_insert(now);
                }
            }
            entry.status = status;
        },
    )
}

// ---- what a phase costs, and how long rollouts took ---------------------------------

/// The counters a phase is measured between: the controller's CPU time, the API
/// requests counted for it, and the queries Prometheus answered.
struct Counters {
    at: Instant,
    cpu: f64,
    api: ApiRequests,
    queries: f64,
}

/// What a phase cost per minute.
struct PerMinute {
    cpu: f64,
    reads: f64,
    writes: f64,
    queries: f64,
}

impl Counters {
    /// Reads the counters now; `api` is the API requests counted for the controller.
    async fn read(bed: &Bed, pid: u32, api: ApiRequests) -> anyhow::Result<Counters> {
        Ok(Counters {
            at: Instant::now(),
            cpu: cpu_seconds(pid)?,
            api,
            queries: prometheus_queries(bed).await?,
        })
    }

    fn per_minute(&self, later: &Counters) -> PerMinute {
        let minutes = later.at.duration_since(self.at).as_secs_f64() / 60.0;
        let (reads, writes) = later.api.since(&self.api);
        PerMinute {
            cpu: (later.cpu - self.cpu) / minutes,
            reads: reads / minutes,
            writes: writes / minutes,
            queries: (later.queries - self.queries) / minutes,
        }
    }
}

impl Row {
    fn set_idle(&mut self, cost: PerMinute) {
        self.idle_cpu_per_min = cost.cpu;
        self.idle_reads_per_min = cost.reads;
        self.idle_writes_per_min = cost.writes;
        self.idle_queries_per_min = cost.queries;
    }

    fn set_busy(&mut self, cost: PerMinute) {
        self.busy_cpu_per_min = cost.cpu;
        self.busy_reads_per_min = cost.reads;
        self.busy_writes_per_min = cost.writes;
        self.busy_queries_per_min = cost.queries;
    }

    /// Available → first weight of each progressing canary (p50 and max), and the bad
    /// one's time from its first weight to its end (`ended`).
    fn set_rollout_times(
        &mut self,
        progressing: &[&String],
        available: &HashMap<String, Instant>,
        first_weight: impl Fn(&str) -> Option<Instant>,
        bad: (Option<Instant>, Option<Instant>),
    ) -> anyhow::Result<()> {
        let mut first_weights: Vec<f64> = progressing
            .iter()
            .filter_map(|name| {
                let first = first_weight(name)?;
                Some(
                    first
                        .saturating_duration_since(available[*name])
                        .as_secs_f64(),
                )
            })
            .collect();
        first_weights.sort_by(f64::total_cmp);
        if first_weights.len() != progressing.len() {
            bail!(
                "{} of {} {} canaries never got a weight",
                progressing.len() - first_weights.len(),
                progressing.len(),
                self.controller,
            );
        }
        self.first_weight_p50 = first_weights[first_weights.len() / 2];
        self.first_weight_max = *first_weights.last().unwrap_or(&0.0);
        self.abort_latency = bad
            .0
            .zip(bad.1)
            .map(|(first, ended)| ended.saturating_duration_since(first).as_secs_f64());
        Ok(())
    }

    /// Memory at the end of the idle phase, and the peak until then (the start-up's).
    fn set_idle_memory(&mut self, pid: u32, sampler: &MemorySampler) -> anyhow::Result<()> {
        let now = memory(pid)?;
        self.idle_rss_mib = now.rss_bytes as f64 / MIB;
        self.startup_peak_rss_mib = now.hwm_bytes.max(sampler.peak_bytes()) as f64 / MIB;
        Ok(())
    }

    /// Memory once the rollouts have settled, and the peak over the whole run.
    async fn set_memory(&mut self, pid: u32, sampler: &MemorySampler) -> anyhow::Result<()> {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let now = memory(pid)?;
        self.steady_rss_mib = now.rss_bytes as f64 / MIB;
        self.steady_anon_mib = now.anon_bytes as f64 / MIB;
        self.steady_file_mib = now.file_bytes as f64 / MIB;
        self.load_average = load_average()?;
        self.peak_rss_mib = now.hwm_bytes.max(sampler.peak_bytes()) as f64 / MIB;
        Ok(())
    }
}

// ---- Flagger, beside weir -----------------------------------------------------------

/// The Flagger run of size `n`: a fresh test bed with Flagger's CRDs, N Deployments
/// `svc-<i>` and N Canaries targeting them, and Flagger started on them. Measures what
/// [`run`] measures of the agent, where Flagger has it.
///
/// There is no kubelet: a background task marks every Deployment Available whenever its
/// status lags its generation (the `-primary` ones Flagger creates, and every scale or
/// template change), and its own API requests are taken out of the counts.
async fn run_flagger(n: usize, idle: Duration) -> anyhow::Result<Row> {
    let bed = Bed::start().await?;
    bed.control_plane.install_extra_crds("flagger").await?;
    let marker = AvailabilityMarker::start(&bed);
    let names: Vec<String> = (0..n).map(|i| format!("svc-{i:04}")).collect();
    let canaries = canaries(&bed);
    let filled = Instant::now();
    futures::stream::iter(names.iter().map(|name| {
        let bed = &bed;
        let canaries = &canaries;
        async move {
            let deployment: Deployment = serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": name,
                    "annotations": {"sim.weir.dev/error-rate": "0", "sim.weir.dev/latency-ms": "20"}
                },
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "app", "image": format!("example.test/{name}:v1")}]}
                    }
                }
            }))?;
            bed.deployments()
                .create(&PostParams::default(), &deployment)
                .await?;
            let canary: DynamicObject = serde_json::from_value(flagger_canary(name))?;
            canaries.create(&PostParams::default(), &canary).await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(CREATE_CONCURRENCY)
    .try_collect::<Vec<()>>()
    .await?;
    wait_until(
        "every Deployment to be marked Available",
        PHASE_DEADLINE,
        || async {
            let marked = marker.marked();
            anyhow::ensure!(marked >= n, "{marked} of {n}");
            Ok(())
        },
    )
    .await?;
    println!(
        "\n{n} Deployments and Canaries created in {:.1} s (Flagger creates the Services, VirtualServices and DestinationRules)",
        filled.elapsed().as_secs_f64()
    );

    let watch = canary_watch(canaries.clone());
    let api_before = flagger_api_requests(&bed, &marker).await?;
    let started = Instant::now();
    let flagger = start_flagger(&bed)?;
    let pid = flagger.pid();
    let sampler = MemorySampler::start(pid);
    let mut row = Row {
        controller: "Flagger",
        ready: "every Canary Initialized",
        services: n,
        ..Row::default()
    };

    wait_until("every Canary to be Initialized", PHASE_DEADLINE, || async {
        let initialized = watch.count(|c| c.phase == "Initialized");
        anyhow::ensure!(initialized == n, "{initialized} of {n}");
        Ok(())
    })
    .await
    .with_context(|| format!("Flagger's log: {}", bed.logs.path().display()))?;
    row.startup_secs = started.elapsed().as_secs_f64();
    row.startup_cpu_secs = cpu_seconds(pid)?;
    let api_started = flagger_api_requests(&bed, &marker).await?;
    (row.startup_reads, row.startup_writes) = api_started.since(&api_before);

    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = Counters::read(&bed, pid, flagger_api_requests(&bed, &marker).await?).await?;
    tokio::time::sleep(idle).await;
    let after = Counters::read(&bed, pid, flagger_api_requests(&bed, &marker).await?).await?;
    row.set_idle(before.per_minute(&after));
    row.set_idle_memory(pid, &sampler)?;

    // A tenth of the Deployments get a new pod template at once; the first one is bad.
    let progressing: Vec<&String> = names.iter().take((n / 10).max(2)).collect();
    row.progressing = progressing.len();
    let bad = progressing[0].clone();
    let before = Counters::read(&bed, pid, flagger_api_requests(&bed, &marker).await?).await?;
    let available: HashMap<String, Instant> =
        futures::stream::iter(progressing.iter().map(|name| {
            let bed = &bed;
            let bad = &bad;
            async move {
                let error_rate = if *name == bad { 0.5 } else { 0.0 };
                let patch = serde_json::json!({
                    "metadata": {"annotations": {"sim.weir.dev/error-rate": error_rate.to_string()}},
                    "spec": {"template": {"spec": {"containers": [{"name": "app", "image": format!("example.test/{name}:v2")}]}}}
                });
                bed.deployments()
                    .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await?;
                mark_deployment_available(&bed.client, &bed.namespace, name).await?;
                anyhow::Ok(((*name).clone(), Instant::now()))
            }
        }))
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect()
        .await?;
    let ended = |name: &str| {
        watch.get(name).and_then(|c| {
            if c.failed.is_some() {
                Some(false)
            } else {
                c.succeeded.map(|_| true)
            }
        })
    };
    let failed = await_endings(&progressing, &bad, ended)
        .await
        .with_context(|| format!("Flagger's log: {}", bed.logs.path().display()))?;
    row.promoted = progressing.len() - 1 - failed.len();
    for name in failed {
        println!("   a good canary failed: {name}");
    }
    let after = Counters::read(&bed, pid, flagger_api_requests(&bed, &marker).await?).await?;
    row.set_busy(before.per_minute(&after));
    let bad_times = watch.get(&bad).context("the bad Canary's status")?;
    row.set_rollout_times(
        &progressing,
        &available,
        |name| watch.get(name)?.first_weight,
        (bad_times.first_weight, bad_times.failed),
    )?;
    row.set_memory(pid, &sampler).await?;
    drop(flagger);
    Ok(row)
}

/// A Canary with the settings the weir run gives its Services: analysis every check
/// interval, weights 10, 25 and 50 then promotion, one failed check rolls back, success
/// rate at least 99 % and p99 latency at most 500 ms over the last 30 s.
fn flagger_canary(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": {"name": name},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": 600,
            "service": {"port": 80},
            "analysis": {
                "interval": format!("{CHECK_INTERVAL_SECS}s"),
                "threshold": 1,
                "stepWeights": [10, 25, 50],
                "metrics": [
                    {"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "30s"},
                    {"name": "request-duration", "thresholdRange": {"max": 500}, "interval": "30s"}
                ]
            }
        }
    })
}

fn canaries(bed: &Bed) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("flagger.app", "v1beta1", "Canary");
    Api::namespaced_with(
        bed.client.clone(),
        &bed.namespace,
        &ApiResource::from_gvk(&gvk),
    )
}

/// Flagger from the test bed, watching the bench's namespace, with the Istio provider and
/// the bed's Prometheus; every other flag at its default (control loop every 10 s, 2
/// workers, client QPS 100, burst 250).
fn start_flagger(bed: &Bed) -> anyhow::Result<OwnedProcess> {
    let port = weir_testbed::free_port()?;
    let args = [
        "-kubeconfig".to_owned(),
        bed.control_plane.kubeconfig_path().display().to_string(),
        "-mesh-provider=istio".to_owned(),
        format!("-metrics-server={}", bed.prometheus.url()),
        format!("-namespace={}", bed.namespace),
        format!("-port={port}"),
        "-log-level=info".to_owned(),
    ];
    OwnedProcess::spawn(
        "flagger",
        &weir_testbed::flagger(),
        &args,
        &[("KUBECONFIG", bed.control_plane.kubeconfig_path())],
        bed.logs.path().join("flagger.log"),
    )
}

/// The apiserver's request counts less the requests the [`AvailabilityMarker`] made.
async fn flagger_api_requests(
    bed: &Bed,
    marker: &AvailabilityMarker,
) -> anyhow::Result<ApiRequests> {
    let mut requests = api_requests(bed).await?;
    let marks = marker.marked() as f64;
    // Each mark is one GET and one PATCH (of the status subresource).
    for verb in ["GET", "PATCH"] {
        if let Some(count) = requests.0.get_mut(verb) {
            *count -= marks;
        }
    }
    Ok(requests)
}

/// Stands in for the Deployment controller and kubelet for Flagger: marks every
/// Deployment Available whenever its status has not caught up with its generation.
struct AvailabilityMarker {
    marked: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl AvailabilityMarker {
    fn start(bed: &Bed) -> AvailabilityMarker {
        let marked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = marked.clone();
        let api = bed.deployments();
        let client = bed.client.clone();
        let namespace = bed.namespace.clone();
        let task = tokio::spawn(async move {
            let marks = Arc::new(tokio::sync::Semaphore::new(CREATE_CONCURRENCY));
            let events = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects();
            futures::pin_mut!(events);
            while let Some(deployment) = events.next().await {
                let Ok(deployment) = deployment else { continue };
                let observed = deployment
                    .status
                    .as_ref()
                    .and_then(|status| status.observed_generation);
                if observed.is_some() && observed == deployment.metadata.generation {
                    continue;
                }
                let Ok(permit) = marks.clone().acquire_owned().await else {
                    return;
                };
                let (client, namespace, count) = (client.clone(), namespace.clone(), count.clone());
                let name = deployment.name_any();
                tokio::spawn(async move {
                    match mark_deployment_available(&client, &namespace, &name).await {
                        Ok(()) => {
                            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(error) => eprintln!("marking {name} Available: {error:#}"),
                    }
                    drop(permit);
                });
            }
        });
        AvailabilityMarker { marked, task }
    }

    /// How many marks were written so far.
    fn marked(&self) -> usize {
        self.marked.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for AvailabilityMarker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One Canary as the bench's watch saw it.
#[derive(Clone, Debug, Default)]
struct CanarySeen {
    phase: String,
    /// When its canary first had a weight above 0.
    first_weight: Option<Instant>,
    /// When it was first seen Failed.
    failed: Option<Instant>,
    /// When it was first seen Succeeded.
    succeeded: Option<Instant>,
}

/// Every Canary's phase, and when it first had a weight, failed and succeeded.
fn canary_watch(api: Api<DynamicObject>) -> SeenWatch<CanarySeen> {
    SeenWatch::start(
        api,
        |canary: &DynamicObject, entry: &mut CanarySeen, now| {
            let status = &canary.data["status"];
            let phase = status["phase"].as_str().unwrap_or_default().to_owned();
            if status["canaryWeight"].as_i64().unwrap_or(0) > 0 {
                entry.first_weight.get_or_insert(now);
            }
            match phase.as_str() {
                "Failed" => {
                    entry.failed.get_or_insert(now);
                }
                "Succeeded" => {
                    entry.succeeded.get_or_insert(now);
                }
                _ => {}
            }
            entry.phase = phase;
        },
    )
}

/// weir's figures over Flagger's, for the same N.
fn print_ratios(weir: &Row, flagger: &Row) {
    let ratio = |w: f64, f: f64| {
        if f > 0.0 {
            format!("{:.2}", w / f)
        } else {
            format!("n/a (Flagger {f:.1})")
        }
    };
    println!("\n== {} Services: weir / Flagger ==", weir.services);
    let rows = [
        ("start-up s", weir.startup_secs, flagger.startup_secs),
        (
            "start-up CPU-s",
            weir.startup_cpu_secs,
            flagger.startup_cpu_secs,
        ),
        (
            "start-up API reads",
            weir.startup_reads,
            flagger.startup_reads,
        ),
        (
            "start-up API writes",
            weir.startup_writes,
            flagger.startup_writes,
        ),
        ("idle RSS MiB", weir.idle_rss_mib, flagger.idle_rss_mib),
        (
            "start-up peak RSS MiB",
            weir.startup_peak_rss_mib,
            flagger.startup_peak_rss_mib,
        ),
        (
            "idle CPU-s/min",
            weir.idle_cpu_per_min,
            flagger.idle_cpu_per_min,
        ),
        (
            "idle API reads/min",
            weir.idle_reads_per_min,
            flagger.idle_reads_per_min,
        ),
        (
            "idle API writes/min",
            weir.idle_writes_per_min,
            flagger.idle_writes_per_min,
        ),
        (
            "idle Prometheus queries/min",
            weir.idle_queries_per_min,
            flagger.idle_queries_per_min,
        ),
        (
            "busy CPU-s/min",
            weir.busy_cpu_per_min,
            flagger.busy_cpu_per_min,
        ),
        (
            "busy API reads/min",
            weir.busy_reads_per_min,
            flagger.busy_reads_per_min,
        ),
        (
            "busy API writes/min",
            weir.busy_writes_per_min,
            flagger.busy_writes_per_min,
        ),
        (
            "busy Prometheus queries/min",
            weir.busy_queries_per_min,
            flagger.busy_queries_per_min,
        ),
        (
            "Available → first weight p50 s",
            weir.first_weight_p50,
            flagger.first_weight_p50,
        ),
        ("peak RSS MiB", weir.peak_rss_mib, flagger.peak_rss_mib),
        (
            "steady RSS MiB",
            weir.steady_rss_mib,
            flagger.steady_rss_mib,
        ),
    ];
    for (what, w, f) in rows {
        println!(
            "   {what:<32} weir {w:>10.3}  Flagger {f:>10.3}  ratio {}",
            ratio(w, f)
        );
    }
    match (weir.abort_latency, flagger.abort_latency) {
        (Some(w), Some(f)) => println!(
            "   {:<32} weir {w:>10.3}  Flagger {f:>10.3}  ratio {}",
            "bad one: first weight → abort s",
            ratio(w, f)
        ),
        (w, f) => println!("   bad one: first weight → abort s: weir {w:?}, Flagger {f:?}"),
    }
}

// ---- counters -----------------------------------------------------------------------

/// `apiserver_request_total` summed by verb, for resource requests only.
struct ApiRequests(BTreeMap<String, f64>);

impl ApiRequests {
    /// Reads and writes since `earlier`. Watches are not counted by the apiserver until
    /// they end, and are left out.
    fn since(&self, earlier: &ApiRequests) -> (f64, f64) {
        let mut reads = 0.0;
        let mut writes = 0.0;
        for (verb, count) in &self.0 {
            let delta = count - earlier.0.get(verb).copied().unwrap_or(0.0);
            match verb.as_str() {
                "GET" | "LIST" => reads += delta,
                "WATCH" => {}
                _ => writes += delta,
            }
        }
        (reads, writes)
    }
}

async fn api_requests(bed: &Bed) -> anyhow::Result<ApiRequests> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = bed.client.request_text(request).await?;
    let mut verbs = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let label = |key: &str| {
            rest.split(&format!("{key}=\""))
                .nth(1)
                .and_then(|tail| tail.split('"').next())
                .unwrap_or_default()
                .to_owned()
        };
        // Non-resource requests (this bench's own /metrics) have no resource; Leases
        // are the apiserver's own heartbeat (the agent runs without leader election);
        // IPAddresses are the apiserver's own ClusterIP allocation, one per Service
        // created (Flagger creates three per Canary).
        if matches!(label("resource").as_str(), "" | "leases" | "ipaddresses") {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .parse()
            .unwrap_or(0.0);
        *verbs.entry(label("verb")).or_insert(0.0) += value;
    }
    Ok(ApiRequests(verbs))
}

/// Instant and range queries Prometheus has answered.
async fn prometheus_queries(bed: &Bed) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{}/metrics", bed.prometheus.url()))
        .await?
        .text()
        .await?;
    Ok(["/api/v1/query", "/api/v1/query_range"]
        .iter()
        .map(|handler| {
            metric_value(
                &text,
                &format!(r#"prometheus_http_requests_total{{code="200",handler="{handler}"}}"#),
            )
            .unwrap_or(0.0)
        })
        .sum())
}

/// The agent's `weir_prometheus_query_duration_seconds` histogram: cumulative counts by
/// upper bound.
struct Histogram(Vec<(f64, f64)>);

fn query_histogram(metrics: &str) -> Histogram {
    let prefix = "weir_prometheus_query_duration_seconds_bucket{le=\"";
    let buckets = metrics
        .lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .filter_map(|rest| {
            let (bound, value) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, value.trim().parse().ok()?))
        })
        .collect();
    Histogram(buckets)
}

impl Histogram {
    fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram(
            self.0
                .iter()
                .map(|(bound, count)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(b, _)| b == bound)
                        .map_or(0.0, |(_, c)| *c);
                    (*bound, count - before)
                })
                .collect(),
        )
    }

    /// The upper bound of the bucket that holds quantile `q`.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        if total <= 0.0 {
            return None;
        }
        self.0
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map(|(bound, _)| *bound)
    }
}

// ---- output and settings ------------------------------------------------------------

fn print_curve(rows: &[Row]) {
    println!(
        "\n== the curve: {} ==",
        rows.first().map_or("", |row| row.controller)
    );
    println!(
        "{:>6}  {:>10}  {:>12}  {:>10}  {:>10}  {:>14}  {:>14}  {:>12}  {:>12}",
        "N",
        "start s",
        "start CPU-s",
        "peak MiB",
        "idle MiB",
        "idle CPU-s/min",
        "busy queries/m",
        "abort s",
        "1st weight s"
    );
    for row in rows {
        println!(
            "{:>6}  {:>10.1}  {:>12.2}  {:>10.1}  {:>10.1}  {:>14.3}  {:>14.0}  {:>12}  {:>12.1}",
            row.services,
            row.startup_secs,
            row.startup_cpu_secs,
            row.peak_rss_mib,
            row.idle_rss_mib,
            row.idle_cpu_per_min,
            row.busy_queries_per_min,
            row.abort_latency
                .map_or_else(|| "never".to_owned(), |s| format!("{s:.1}")),
            row.first_weight_p50,
        );
    }
    if let [first, .., last] = rows {
        let extra = (last.services - first.services) as f64;
        println!(
            "per extra Service ({} → {}): {:.1} KiB of idle RSS, {:.1} ms of start-up CPU",
            first.services,
            last.services,
            (last.idle_rss_mib - first.idle_rss_mib) * 1024.0 / extra,
            (last.startup_cpu_secs - first.startup_cpu_secs) * 1000.0 / extra,
        );
    }
}

fn sizes() -> anyhow::Result<Vec<usize>> {
    let Ok(value) = std::env::var(SIZES_VAR) else {
        return Ok(DEFAULT_SIZES.to_vec());
    };
    value
        .split(',')
        .map(|n| {
            n.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 2)
                .with_context(|| {
                    format!(
                        "{SIZES_VAR}: {n:?} is not a size of 2 or more; e.g. {SIZES_VAR}=10,100"
                    )
                })
        })
        .collect()
}

/// Whether Flagger runs beside weir: `WEIR_SCALE_FLAGGER=1` or `0`; by default in the
/// release build (`cargo bench`) and not in CI's short mode (`cargo test`).
fn with_flagger() -> anyhow::Result<bool> {
    match std::env::var(FLAGGER_VAR).as_deref() {
        Err(_) => Ok(!cfg!(debug_assertions)),
        Ok("1") => Ok(true),
        Ok("0") => Ok(false),
        Ok(other) => bail!("{FLAGGER_VAR}: {other:?} is neither 1 nor 0"),
    }
}

fn idle() -> anyhow::Result<Duration> {
    let Ok(value) = std::env::var(IDLE_VAR) else {
        return Ok(Duration::from_secs(DEFAULT_IDLE_SECS));
    };
    let secs: u64 = value
        .parse()
        .ok()
        .filter(|s| *s > 0)
        .with_context(|| format!("{IDLE_VAR}: {value:?} is not a number of seconds above 0"))?;
    Ok(Duration::from_secs(secs))
}
