//! The chaos suite: seeded rollouts, healthy and bad, through the real agent (two
//! replicas with leader election) on the test bed, while faults strike at random
//! moments; an independent checker then holds every recorded revision of every
//! VirtualService, DestinationRule and Service to DESIGN.md's invariants.
//!
//!   cargo test -p weir --test chaos                          # CI's short run
//!   WEIR_CHAOS_ROLLOUTS=60 WEIR_CHAOS_SEED=7 cargo test -p weir --test chaos -- --nocapture
//!
//! Faults: SIGKILL of the leader (a failover to the standby), SIGKILL right after a
//! status write (between the writes of one plan), SIGKILL of both replicas (a cold
//! restart), Prometheus restarted, slowed past the query timeout, or answering errors,
//! the apiserver restarted, and foreign edits of the VirtualService and DestinationRule,
//! some racing the agent's writes (write conflicts).

#[allow(unused_imports)]
#[path = "../e2e/support/mod.rs"]
mod support;

mod checker;
mod proxy;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use weir::plan::{Phase, Status};

use checker::{Kind, Record};
use proxy::{FaultProxy, Mode};
use support::{Agent, App, Bed};

/// Services released at once; each runs its share of the rollouts one after another.
const SERVICES: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollouts_under_faults_keep_every_invariant() -> anyhow::Result<()> {
    let seed: u64 = env("WEIR_CHAOS_SEED", 1);
    let rollouts: usize = env("WEIR_CHAOS_ROLLOUTS", 10);
    let started = Instant::now();
    let mut bed = Bed::start().await?;
    let names: Vec<String> = (0..SERVICES).map(|i| format!("app{i}")).collect();
    for name in &names {
        bed.deploy_app(
            &App::new(name)
                .with("route", checker::ROUTE)
                .with("step-interval", "3s")
                .with("no-data-timeout", "1m")
                .with("decision-timeout", "3m"),
        )
        .await?;
    }
    // Stable fails as often as a healthy release: "healthy" means as good as stable.
    for name in &names {
        bed.deployments()
            .patch(
                &format!("{name}-v1"),
                &PatchParams::default(),
                &Patch::Merge(
                    &json!({"metadata": {"annotations": {"sim.weir.dev/error-rate": "0.003"}}}),
                ),
            )
            .await?;
    }
    let proxy = FaultProxy::start(bed.prometheus.url()).await?;
    let replica = |instance: &str| {
        bed.agent_with_prometheus(
            &proxy.url(),
            &[
                "--leader-election",
                "--lease-duration",
                "6s",
                "--instance",
                instance,
            ],
        )
    };
    let mut agents = vec![replica("weir-a")?, replica("weir-b")?];
    for name in &names {
        bed.wait_phase(name, Phase::Idle).await?;
    }
    let (record, recorders) = Record::start(&bed.client, &bed.namespace);

    // The releases: each Service's versions one after another, each healthy or bad.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut drivers = Vec::new();
    let mut healthy = 0;
    for (index, name) in names.iter().enumerate() {
        let count = rollouts / SERVICES + usize::from(index < rollouts % SERVICES);
        let plan: Vec<Release> = (0..count).map(|_| Release::draw(&mut rng)).collect();
        healthy += plan.iter().filter(|r| r.healthy()).count();
        drivers.push(tokio::spawn(release_all(
            bed.client.clone(),
            bed.namespace.clone(),
            name.clone(),
            plan,
        )));
    }
    let all_released = futures::future::try_join_all(drivers);

    // The faults, at random moments, until every release has ended.
    let mut faults = Faults::new(StdRng::seed_from_u64(seed ^ 0x5eed));
    let mut released = std::pin::pin!(all_released);
    let outcomes = loop {
        let pause = Duration::from_millis(faults.rng.random_range(2000..6000));
        tokio::select! {
            result = &mut released => break result.context("a release driver panicked")?,
            () = tokio::time::sleep(pause) => {}
        }
        faults
            .strike(&mut bed, &proxy, &mut agents, &record, &names)
            .await?;
    };
    let outcomes: Vec<Ended> = outcomes
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?
        .concat();
    // Everything back to normal, and the last writes recorded.
    proxy.set(Mode::Pass);
    for agent in &mut agents {
        if !agent.is_running() {
            agent.restart()?;
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for task in recorders {
        task.abort();
    }

    let report = checker::check(&record);
    let promoted = outcomes.iter().filter(|e| **e == Ended::Promoted).count();
    println!(
        "chaos: seed {seed}, {} rollouts ({} healthy, {} bad): {promoted} promoted, {} aborted; \
         statuses say {} promoted, {} aborted",
        outcomes.len(),
        healthy,
        rollouts - healthy,
        outcomes.len() - promoted,
        report.outcomes.promoted,
        report.outcomes.aborted,
    );
    println!(
        "chaos: {} faults injected: {}",
        faults.injected.values().sum::<usize>(),
        faults
            .injected
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "chaos: {} revisions checked, {} invariant violations, {:.0}s",
        report.revisions,
        report.violations.len(),
        started.elapsed().as_secs_f64()
    );
    for violation in &report.violations {
        println!("  violation: {violation}");
    }
    assert!(
        report.violations.is_empty(),
        "{} invariant violations (see above)",
        report.violations.len()
    );
    assert_eq!(outcomes.len(), rollouts, "every rollout ended");
    // The recorder saw every revision: the checker found every ending the drivers saw.
    assert_eq!(
        (report.outcomes.promoted, report.outcomes.aborted),
        (promoted, outcomes.len() - promoted),
        "the checker's count of endings differs from the drivers': revisions were missed"
    );
    Ok(())
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One release: the new version's error rate.
#[derive(Clone, Copy, Debug)]
struct Release {
    error_rate: f64,
}

impl Release {
    /// Healthy (0.3%, as stable) six times in ten; otherwise 20% errors or a 3× regression.
    fn draw(rng: &mut StdRng) -> Release {
        let error_rate = match rng.random_range(0..10) {
            0..6 => 0.003,
            6..8 => 0.2,
            _ => 0.009,
        };
        Release { error_rate }
    }

    fn healthy(&self) -> bool {
        self.error_rate <= 0.003
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Promoted,
    Aborted,
}

/// Releases `plan`'s versions of `name` one after another, each once the previous one
/// ended, and says how each ended.
async fn release_all(
    client: kube::Client,
    namespace: String,
    name: String,
    plan: Vec<Release>,
) -> anyhow::Result<Vec<Ended>> {
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let mut ended = Vec::new();
    for (i, release) in plan.iter().enumerate() {
        let version = format!("v{}", i + 2);
        // The apiserver may be restarting: try again until it answers.
        weir_testbed::wait_until(
            "the Deployment to be created",
            Duration::from_secs(120),
            || deploy_version(&client, &namespace, &name, &version, release.error_rate),
        )
        .await?;
        let status = weir_testbed::wait_until(
            &format!("{name} {version} to be promoted or aborted"),
            Duration::from_secs(600),
            || async {
                let service = services.get(&name).await?;
                let raw = service
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("weir.dev/status"))
                    .context("no status")?;
                let status: Status = serde_json::from_str(raw)?;
                let promoted =
                    status.phase == Phase::Idle && status.stable.as_deref() == Some(&version);
                let aborted =
                    status.phase == Phase::Aborted && status.canary.as_deref() == Some(&version);
                anyhow::ensure!(
                    promoted || aborted,
                    "{:?}: {}",
                    status.phase,
                    status.message
                );
                Ok(status)
            },
        )
        .await?;
        ended.push(if status.phase == Phase::Aborted {
            Ended::Aborted
        } else {
            Ended::Promoted
        });
    }
    Ok(ended)
}

async fn deploy_version(
    client: &kube::Client,
    namespace: &str,
    app: &str,
    version: &str,
    error_rate: f64,
) -> anyhow::Result<()> {
    let name = format!("{app}-{version}");
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "annotations": {"sim.weir.dev/error-rate": error_rate.to_string(), "sim.weir.dev/latency-ms": "20"}
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": app, "version": version}},
            "template": {
                "metadata": {"labels": {"app": app, "version": version}},
                "spec": {"containers": [{"name": "app", "image": format!("example.test/{app}:{version}")}]}
            }
        }
    });
    let api: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply("chaos").force(),
        &Patch::Apply(&deployment),
    )
    .await?;
    weir_testbed::mark_deployment_available(client, namespace, &name).await
}

/// The fault injector.
struct Faults {
    rng: StdRng,
    injected: BTreeMap<&'static str, usize>,
    foreign_edits: usize,
}

impl Faults {
    fn new(rng: StdRng) -> Faults {
        Faults {
            rng,
            injected: BTreeMap::new(),
            foreign_edits: 0,
        }
    }

    /// Injects one fault, chosen at random, and waits for it to be over.
    async fn strike(
        &mut self,
        bed: &mut Bed,
        proxy: &FaultProxy,
        agents: &mut [Agent],
        record: &Record,
        names: &[String],
    ) -> anyhow::Result<()> {
        let kind = match self.rng.random_range(0..10) {
            0 => "SIGKILL of the leader (failover)",
            1 => "SIGKILL between the writes of a plan",
            2 => "SIGKILL of both replicas",
            3 => "Prometheus restarted",
            4 => "Prometheus slower than the query timeout",
            5 => "Prometheus answering errors",
            6 => "apiserver restarted",
            7 => "foreign edit of a VirtualService",
            8 => "foreign edit of a DestinationRule",
            _ => "foreign edit racing a plan (write conflict)",
        };
        let target = names[self.rng.random_range(0..names.len())].clone();
        let applied = match kind {
            "SIGKILL of the leader (failover)" => {
                let leader = leader(bed).await;
                let index = leader.map_or(0, |l| usize::from(l == "weir-b"));
                agents[index].kill();
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(500..4000))).await;
                agents[index].restart()?;
                true
            }
            "SIGKILL between the writes of a plan" => {
                // Right after the leader writes a status, before the mesh writes that
                // follow it in the same plan.
                if status_write(bed, Duration::from_secs(8)).await {
                    let leader = leader(bed).await;
                    let index = leader.map_or(0, |l| usize::from(l == "weir-b"));
                    agents[index].kill();
                    tokio::time::sleep(Duration::from_millis(self.rng.random_range(200..2000)))
                        .await;
                    agents[index].restart()?;
                    true
                } else {
                    false
                }
            }
            "SIGKILL of both replicas" => {
                for agent in agents.iter_mut() {
                    agent.kill();
                }
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(200..3000))).await;
                for agent in agents.iter_mut() {
                    agent.restart()?;
                }
                true
            }
            "Prometheus restarted" => {
                let down = Duration::from_millis(self.rng.random_range(1000..8000));
                bed.prometheus.restart(down).await?;
                true
            }
            "Prometheus slower than the query timeout" => {
                proxy.set(Mode::Slow);
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(3000..10000))).await;
                proxy.set(Mode::Pass);
                true
            }
            "Prometheus answering errors" => {
                proxy.set(Mode::Errors);
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(3000..10000))).await;
                proxy.set(Mode::Pass);
                true
            }
            "apiserver restarted" => {
                let down = Duration::from_millis(self.rng.random_range(300..3000));
                bed.control_plane.restart_apiserver(down).await?;
                true
            }
            "foreign edit of a VirtualService" => {
                self.foreign_vs_edit(bed, record, &target).await?;
                true
            }
            "foreign edit of a DestinationRule" => {
                self.foreign_dr_edit(bed, record, &target).await?;
                true
            }
            _ => {
                if status_write(bed, Duration::from_secs(8)).await {
                    self.foreign_vs_edit(bed, record, &target).await?;
                    true
                } else {
                    false
                }
            }
        };
        if applied {
            *self.injected.entry(kind).or_default() += 1;
        }
        Ok(())
    }

    /// Adds or changes a route in front of the managed one, and a retries block on the
    /// managed route: fields the agent must keep.
    async fn foreign_vs_edit(
        &mut self,
        bed: &Bed,
        record: &Record,
        name: &str,
    ) -> anyhow::Result<()> {
        self.foreign_edits += 1;
        let api = bed.virtual_services();
        let vs = serde_json::to_value(api.get(name).await?)?;
        let has_admin = vs["spec"]["http"][0]["name"] == "admin";
        let admin = json!({
            "name": "admin",
            "match": [{"uri": {"prefix": format!("/admin/{}", self.foreign_edits)}}],
            "route": [{"destination": {"host": "legacy.example.com"}}]
        });
        let patch = if has_admin {
            json!([{"op": "replace", "path": "/spec/http/0", "value": admin}])
        } else {
            json!([{"op": "add", "path": "/spec/http/0", "value": admin}])
        };
        let patched = api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Json::<()>(serde_json::from_value(patch)?),
            )
            .await?;
        if let Some(rv) = patched
            .metadata
            .resource_version
            .and_then(|rv| rv.parse().ok())
        {
            record.foreign(Kind::VirtualService, name, rv);
        }
        Ok(())
    }

    async fn foreign_dr_edit(
        &mut self,
        bed: &Bed,
        record: &Record,
        name: &str,
    ) -> anyhow::Result<()> {
        self.foreign_edits += 1;
        let patch = json!({"spec": {"trafficPolicy": {"connectionPool": {"http": {"http1MaxPendingRequests": self.foreign_edits}}}}});
        let patched = bed
            .destination_rules()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        if let Some(rv) = patched
            .metadata
            .resource_version
            .and_then(|rv| rv.parse().ok())
        {
            record.foreign(Kind::DestinationRule, name, rv);
        }
        Ok(())
    }
}

/// The holder of the agents' Lease.
async fn leader(bed: &Bed) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(bed.client.clone(), &bed.namespace);
    leases.get("weir").await.ok()?.spec?.holder_identity
}

/// Waits up to `within` for the next write of a status annotation by the agent.
async fn status_write(bed: &Bed, within: Duration) -> bool {
    let services: Api<Service> = Api::namespaced(bed.client.clone(), &bed.namespace);
    let mut events =
        std::pin::pin!(watcher(services, watcher::Config::default()).touched_objects());
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let next = tokio::time::timeout_at(deadline, events.next()).await;
        let Ok(Some(Ok(service))) = next else {
            return false;
        };
        let name = service.metadata.name.clone().unwrap_or_default();
        let status = service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("weir.dev/status"))
            .cloned()
            .unwrap_or_default();
        match seen.insert(name, status.clone()) {
            // The initial list gives every Service once; a second sight with another
            // status is a write.
            Some(before) if before != status => return true,
            _ => {}
        }
    }
}
