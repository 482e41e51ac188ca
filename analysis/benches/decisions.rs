//! The decision benchmark: how often the judge and the planner promote a healthy canary
//! and abort a bad one, under realistic noise, with the sequential rule (the default)
//! and weir 0.1's threshold rule side by side.
//!
//! Each trial is one rollout through the real planner (`weir::plan`) and the real judge
//! (`weir_analysis::judge`), fed with simulated counts: Poisson arrivals at the
//! scenario's rate, each request routed to the canary with the live weight, failing
//! with its version's error rate, and taking a latency drawn from its version's
//! log-normal distribution (given by its median and p99), counted into Istio's default
//! histogram buckets. The planner asks for a check when it would, and the check is
//! evaluated at the next round of the agent's batched checks (every 5 s,
//! WEIR_BENCH_ROUND); the judge sees the counts since the step began, exactly as a
//! Prometheus `increase` over that window would report them.
//!
//! Prints one row per scenario and rule: P(promote), P(abort), the median time to the
//! decision, and the mean number of failed requests the canary served before it. Asserts
//! nothing.
//!
//!   cargo bench -p weir-analysis --bench decisions            # 1,000 trials each
//!   WEIR_BENCH_TRIALS=100 cargo bench -p weir-analysis --bench decisions   # CI's short mode
//!   WEIR_BENCH_ONLY=regress cargo bench …                      # scenarios whose name matches

use std::collections::BTreeMap;
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, Poisson};
use weir::plan::{
    self, Action, Controls, Observed, Phase, Status, Subset, Subsets, Traffic, Version,
};
use weir::spec::{self, Defaults, RolloutSpec};
use weir_analysis::Rule;
use weir_analysis::judge::{self, Judgement, Observations, Series, Standing};
use weir_analysis::promql::VERSION_LABEL;

/// Istio's default latency histogram buckets, in milliseconds.
const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// The longest a trial runs: beyond every timeout of the default settings.
const HORIZON_SECS: i64 = 4 * 3600;

/// A version's behaviour: its error rate, and its latency distribution.
#[derive(Clone, Copy, Debug)]
struct Behaviour {
    error_rate: f64,
    median_ms: f64,
    p99_ms: f64,
}

impl Behaviour {
    const fn new(error_rate: f64) -> Behaviour {
        Behaviour {
            error_rate,
            median_ms: 50.0,
            p99_ms: 200.0,
        }
    }

    const fn latency(self, median_ms: f64, p99_ms: f64) -> Behaviour {
        Behaviour {
            median_ms,
            p99_ms,
            ..self
        }
    }

    /// The probability of a request at or below each bucket bound.
    fn bucket_cdf(&self) -> Vec<f64> {
        let sigma = (self.p99_ms / self.median_ms).ln() / 2.326_347_874;
        BUCKETS
            .iter()
            .map(|&le| normal_cdf((le / self.median_ms).ln() / sigma))
            .collect()
    }
}

/// What a scenario is held to.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// Promoted in at least this share of trials.
    Promote(f64),
    /// Aborted in at least this share of trials.
    Abort(f64),
    /// Never promoted.
    NeverPromote,
    /// No more failed requests before the abort than the threshold rule serves.
    FewerFailuresThanThreshold,
}

struct Scenario {
    name: &'static str,
    rps: f64,
    stable: Behaviour,
    canary: Behaviour,
    target: Target,
}

fn scenarios() -> Vec<Scenario> {
    use Target::*;
    let s = |name, rps, stable, canary, target| Scenario {
        name,
        rps,
        stable,
        canary,
        target,
    };
    let b = Behaviour::new;
    vec![
        // Healthy: equal to stable, or up to 1.5× while under the SLO.
        s(
            "healthy equal 0.1%",
            50.0,
            b(0.001),
            b(0.001),
            Promote(0.99),
        ),
        s(
            "healthy equal 0.5%",
            50.0,
            b(0.005),
            b(0.005),
            Promote(0.99),
        ),
        s(
            "healthy equal 0.8%",
            50.0,
            b(0.008),
            b(0.008),
            Promote(0.99),
        ),
        s("healthy equal 1.0%", 50.0, b(0.01), b(0.01), Promote(0.99)),
        s(
            "healthy better 1.0%->0.8%",
            50.0,
            b(0.01),
            b(0.008),
            Promote(0.99),
        ),
        s(
            "healthy 1.5x 0.6%->0.9%",
            50.0,
            b(0.006),
            b(0.009),
            Promote(0.99),
        ),
        s(
            "healthy equal 0.5%",
            200.0,
            b(0.005),
            b(0.005),
            Promote(0.99),
        ),
        s(
            "healthy equal p99 400ms",
            50.0,
            b(0.001).latency(100.0, 400.0),
            b(0.001).latency(100.0, 400.0),
            Promote(0.99),
        ),
        s(
            "healthy 1.5x p99 200->300ms",
            50.0,
            b(0.001).latency(50.0, 200.0),
            b(0.001).latency(75.0, 300.0),
            Promote(0.99),
        ),
        s(
            "healthy low equal 0.25%",
            5.0,
            b(0.0025),
            b(0.0025),
            Promote(0.99),
        ),
        s(
            "healthy low 0.2%->0.3%",
            5.0,
            b(0.002),
            b(0.003),
            Promote(0.99),
        ),
        s(
            "healthy low equal 0.5%",
            5.0,
            b(0.005),
            b(0.005),
            Promote(0.99),
        ),
        s(
            "healthy low equal 1.0%",
            5.0,
            b(0.01),
            b(0.01),
            Promote(0.99),
        ),
        s(
            "healthy low equal p99 400ms",
            5.0,
            b(0.001).latency(100.0, 400.0),
            b(0.001).latency(100.0, 400.0),
            Promote(0.99),
        ),
        // Regressions: errors 3× stable's (stable ≥ 0.3%), or a p99 twice stable's.
        s(
            "regress 3x 0.3%->0.9%",
            200.0,
            b(0.003),
            b(0.009),
            Abort(0.99),
        ),
        s(
            "regress 3x 0.3%->0.9%",
            50.0,
            b(0.003),
            b(0.009),
            Abort(0.99),
        ),
        s(
            "regress 3x 0.5%->1.5%",
            50.0,
            b(0.005),
            b(0.015),
            Abort(0.99),
        ),
        s(
            "regress p99 2x 200->400ms",
            50.0,
            b(0.001).latency(50.0, 200.0),
            b(0.001).latency(100.0, 400.0),
            Abort(0.99),
        ),
        s(
            "regress p99 2x 200->400ms",
            200.0,
            b(0.001).latency(50.0, 200.0),
            b(0.001).latency(100.0, 400.0),
            Abort(0.99),
        ),
        // At twice the absolute SLO or more.
        s("slo 2x errors 2%", 50.0, b(0.005), b(0.02), Abort(0.99)),
        s("slo 2x errors 2%", 5.0, b(0.005), b(0.02), Abort(0.95)),
        s(
            "slo 2x p99 1000ms",
            50.0,
            b(0.001).latency(100.0, 400.0),
            b(0.001).latency(250.0, 1000.0),
            Abort(0.99),
        ),
        s(
            "slo 2x p99 1000ms",
            5.0,
            b(0.001).latency(100.0, 400.0),
            b(0.001).latency(250.0, 1000.0),
            Abort(0.95),
        ),
        // Gross failures.
        s(
            "gross 20% errors",
            50.0,
            b(0.001),
            b(0.2),
            FewerFailuresThanThreshold,
        ),
        s(
            "gross 50% errors",
            200.0,
            b(0.001),
            b(0.5),
            FewerFailuresThanThreshold,
        ),
        // No traffic at all.
        s("no traffic", 0.0, b(0.001), b(0.001), NeverPromote),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Decision {
    Promoted,
    Aborted,
    Undecided,
}

#[derive(Clone, Copy, Debug)]
struct Outcome {
    decision: Decision,
    /// Seconds from the rollout's start to its end.
    seconds: i64,
    /// Error responses the canary served before the decision.
    failed: u64,
}

/// Counts since the current step began, per version: requests, errors and cumulative
/// bucket counts.
#[derive(Clone, Default)]
struct Window {
    requests: f64,
    errors: f64,
    buckets: Vec<f64>,
}

impl Window {
    fn add(&mut self, rng: &mut StdRng, n: u64, behaviour: &Behaviour, cdf: &[f64]) -> u64 {
        if self.buckets.is_empty() {
            self.buckets = vec![0.0; BUCKETS.len()];
        }
        if n == 0 {
            return 0;
        }
        self.requests += n as f64;
        let errors = binomial(rng, n, behaviour.error_rate);
        self.errors += errors as f64;
        // A multinomial draw over the buckets, by successive binomials.
        let mut left = n;
        let mut below = 0.0;
        let mut cumulative = 0u64;
        for (i, &p) in cdf.iter().enumerate() {
            let in_bucket = if left == 0 || p >= 1.0 {
                left
            } else {
                let conditional = ((p - below) / (1.0 - below)).clamp(0.0, 1.0);
                binomial(rng, left, conditional)
            };
            left -= in_bucket;
            cumulative += in_bucket;
            below = p;
            self.buckets[i] += cumulative as f64;
        }
        errors
    }
}

fn binomial(rng: &mut StdRng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    Binomial::new(n, p).map_or(0, |d| d.sample(rng))
}

/// The series Prometheus would return for the window: per version, requests, errors,
/// and every bucket with `+Inf`.
fn observations(canary: &Window, stable: &Window) -> Observations {
    let per_version = |value: fn(&Window) -> f64| {
        let mut series = Vec::new();
        for (version, window) in [("v2", canary), ("v1", stable)] {
            if window.requests > 0.0 {
                series.push(Series::of_version(version, value(window)));
            }
        }
        Ok(series)
    };
    let mut buckets = Vec::new();
    for (version, window) in [("v2", canary), ("v1", stable)] {
        if window.requests <= 0.0 {
            continue;
        }
        let le = BUCKETS
            .iter()
            .map(|b| format!("{b}"))
            .chain(["+Inf".to_string()]);
        let counts = window.buckets.iter().copied().chain([window.requests]);
        for (le, count) in le.zip(counts) {
            buckets.push(Series {
                labels: BTreeMap::from([
                    (VERSION_LABEL.to_string(), version.to_string()),
                    ("le".to_string(), le),
                ]),
                value: count,
            });
        }
    }
    Observations {
        request_count: per_version(|w| w.requests),
        error_count: per_version(|w| w.errors),
        latency: Ok(quantiles(canary, stable)),
        buckets: Some(Ok(buckets)),
        custom: Vec::new(),
    }
}

/// `histogram_quantile(0.99, …)` per version, as the threshold rule's query returns it.
fn quantiles(canary: &Window, stable: &Window) -> Vec<Series> {
    let mut series = Vec::new();
    for (version, window) in [("v2", canary), ("v1", stable)] {
        if window.requests <= 0.0 {
            continue;
        }
        let rank = 0.99 * window.requests;
        let mut lower = (0.0, 0.0);
        let mut value = f64::NAN;
        for (&le, &count) in BUCKETS.iter().zip(&window.buckets) {
            if count >= rank {
                let in_bucket = count - lower.1;
                let fraction = if in_bucket > 0.0 {
                    (rank - lower.1) / in_bucket
                } else {
                    1.0
                };
                value = lower.0 + (le - lower.0) * fraction;
                break;
            }
            lower = (le, count);
        }
        if value.is_nan() {
            value = lower.0;
        }
        series.push(Series::of_version(version, value));
    }
    series
}

/// The period of the agent's rounds of checks, in seconds: WEIR_BENCH_ROUND, else 5.
fn round_secs() -> i64 {
    static ROUND: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
        std::env::var("WEIR_BENCH_ROUND")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|r| *r >= 1)
            .unwrap_or(5)
    });
    *ROUND
}

fn t0() -> Timestamp {
    "2026-11-30T00:00:00Z".parse().expect("a timestamp")
}

fn spec(rule: Rule) -> RolloutSpec {
    spec_with(rule, &[])
}

/// The spec of `rule` with `extra` annotations (`key`, value) on top of the defaults
/// and WEIR_BENCH_ANNOTATIONS.
fn spec_with(rule: Rule, extra: &[(&str, &str)]) -> RolloutSpec {
    let mut annotations = BTreeMap::new();
    for (key, value) in extra {
        annotations.insert(format!("weir.dev/{key}"), (*value).to_string());
    }
    annotations.insert("weir.dev/analysis".to_string(), rule.as_str().to_string());
    // Other settings than the defaults, to explore them:
    // WEIR_BENCH_ANNOTATIONS="tolerance=30%,decision-timeout=1h".
    for pair in std::env::var("WEIR_BENCH_ANNOTATIONS")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').expect("key=value");
        annotations.insert(format!("weir.dev/{key}"), value.to_string());
    }
    spec::parse("checkout", &annotations, &Defaults::default()).expect("the defaults are valid")
}

/// One rollout, from v2 becoming available to its promotion or abort.
fn trial(scenario: &Scenario, rule: Rule, seed: u64) -> Outcome {
    trial_with(scenario, &spec(rule), seed)
}

/// [`trial`] with a given spec.
fn trial_with(scenario: &Scenario, spec: &RolloutSpec, seed: u64) -> Outcome {
    let rule = spec.gates.rule;
    let spec = spec.clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let version = |name: &str, created: i64| Version {
        name: name.into(),
        deployment: format!("checkout-{name}"),
        template: format!("t-{name}"),
        legacy_template: format!("legacy-{name}"),
        available: true,
        created: t0() + SignedDuration::from_secs(created),
        reported: name.into(),
        replicas: Some(1),
        resource_version: None,
    };
    let versions = vec![version("v1", -3600), version("v2", -1)];
    let mut traffic = Traffic {
        stable: 100,
        canary: 0,
    };
    let mut subsets = Subsets {
        stable: Some("v1".into()),
        canary: Some("v1".into()),
    };
    let mut status: Option<Status> = None;
    let mut last_check_at = None;
    let (stable_cdf, canary_cdf) = (scenario.stable.bucket_cdf(), scenario.canary.bucket_cdf());
    let (mut canary, mut stable) = (Window::default(), Window::default());
    let mut step_started = None;
    let mut failed = 0u64;
    let apply = |actions: &[Action],
                 status: &mut Option<Status>,
                 traffic: &mut Traffic,
                 subsets: &mut Subsets| {
        for action in actions {
            match action {
                Action::WriteStatus { status: s, .. } => *status = Some(s.as_ref().clone()),
                Action::SetWeights(t) => *traffic = *t,
                Action::SetSubsetVersion { subset, version } => match subset {
                    Subset::Stable => subsets.stable = Some(version.clone()),
                    Subset::Canary => subsets.canary = Some(version.clone()),
                },
                // The trial ends at the promotion, before any scale-down is due.
                Action::Emit(_) | Action::ScaleDown { .. } => {}
            }
        }
    };
    for second in 0..HORIZON_SECS {
        let now = t0() + SignedDuration::from_secs(second);
        let observed = Observed {
            versions: Some(versions.clone()),
            traffic,
            subsets: subsets.clone(),
            status: status.clone(),
            controls: Controls::default(),
            last_check_at,
        };
        // The agent evaluates due checks in rounds, on multiples of the round's period
        // (`--check-round`, 5 s at the default 15 s scrape interval); t0 is on one, so
        // every step starts on one and the rounds' windows are the steps' exactly.
        let due = plan::check_due(&spec, &observed, now).filter(|_| second % round_secs() == 0);
        if status.is_none() || due.is_some() {
            let judgement = due.as_ref().map(|request| {
                let observations = observations(&canary, &stable);
                match rule {
                    Rule::Sequential => judge::weigh(
                        &observations,
                        "v2",
                        "v1",
                        &spec.gates,
                        Standing {
                            earlier: &request.earlier,
                            pass_at: weir_analysis::sequential::required_for(
                                spec.gates.confidence,
                                request.next_weight,
                            ),
                        },
                    ),
                    Rule::Threshold => Judgement {
                        verdict: judge::judge(&observations, "v2", "v1", &spec.gates),
                        step: None,
                        baseline: None,
                    },
                }
            });
            let check = due.as_ref().zip(judgement.as_ref());
            let plan = plan::plan(&spec, &observed, check, now);
            if due.is_some() {
                last_check_at = Some(now);
            }
            apply(&plan.actions, &mut status, &mut traffic, &mut subsets);
            let s = status.as_ref().expect("the planner writes a status");
            match s.phase {
                Phase::Aborted => {
                    if std::env::var_os("WEIR_BENCH_DEBUG").is_some() {
                        eprintln!("{}: aborted at {second}s: {}", scenario.name, s.message);
                    }
                    return Outcome {
                        decision: Decision::Aborted,
                        seconds: second,
                        failed,
                    };
                }
                Phase::Idle if s.stable.as_deref() == Some("v2") => {
                    return Outcome {
                        decision: Decision::Promoted,
                        seconds: second,
                        failed,
                    };
                }
                _ => {}
            }
        }
        // A new step starts a new window, as the agent's queries do.
        let started = status.as_ref().and_then(|s| s.step_started_at);
        if started != step_started {
            step_started = started;
            canary = Window::default();
            stable = Window::default();
        }
        // One second of traffic at the live weights.
        let arrivals = if scenario.rps > 0.0 {
            Poisson::new(scenario.rps).map_or(0.0, |d| d.sample(&mut rng)) as u64
        } else {
            0
        };
        let to_canary = binomial(&mut rng, arrivals, f64::from(traffic.canary) / 100.0);
        failed += canary.add(&mut rng, to_canary, &scenario.canary, &canary_cdf);
        stable.add(
            &mut rng,
            arrivals - to_canary,
            &scenario.stable,
            &stable_cdf,
        );
    }
    Outcome {
        decision: Decision::Undecided,
        seconds: HORIZON_SECS,
        failed,
    }
}

/// The standard normal CDF, from `erfc` (W. J. Cody's rational approximation is more
/// than this benchmark needs: Abramowitz & Stegun 7.1.26, error below 1.5e-7).
fn normal_cdf(z: f64) -> f64 {
    if z.is_infinite() {
        return if z > 0.0 { 1.0 } else { 0.0 };
    }
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    let erf = if x >= 0.0 { erf } else { -erf };
    0.5 * (1.0 + erf)
}

struct Summary {
    promoted: f64,
    aborted: f64,
    median_seconds: Option<i64>,
    mean_failed: f64,
}

fn run(scenario: &Scenario, rule: Rule, trials: u64) -> Summary {
    let outcomes: Vec<Outcome> = (0..trials)
        .map(|seed| trial(scenario, rule, seed))
        .collect();
    let share =
        |d: Decision| outcomes.iter().filter(|o| o.decision == d).count() as f64 / trials as f64;
    let mut times: Vec<i64> = outcomes
        .iter()
        .filter(|o| o.decision != Decision::Undecided)
        .map(|o| o.seconds)
        .collect();
    times.sort_unstable();
    Summary {
        promoted: share(Decision::Promoted),
        aborted: share(Decision::Aborted),
        median_seconds: times.get(times.len() / 2).copied(),
        mean_failed: outcomes.iter().map(|o| o.failed as f64).sum::<f64>() / trials as f64,
    }
}

fn main() {
    pure_part();
    if std::env::var("WEIR_BENCH_E2E").as_deref() != Ok("0") {
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        if let Err(e) = runtime.block_on(end_to_end::part()) {
            eprintln!("end-to-end part failed: {e:#}");
            std::process::exit(1);
        }
    }
}

fn pure_part() {
    let trials: u64 = std::env::var("WEIR_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let only = std::env::var("WEIR_BENCH_ONLY").unwrap_or_default();
    let started = Instant::now();
    println!("decision benchmark: {trials} seeded trials per scenario and rule; default settings");
    println!(
        "{:<30} {:>5}  {:<11} {:>8} {:>8} {:>9} {:>8}   {:<11} {:<11} {:>8} {:>8} {:>9} {:>8}   target",
        "scenario",
        "rps",
        "rule",
        "promote",
        "abort",
        "median s",
        "failed",
        "rule",
        "",
        "",
        "",
        "",
        ""
    );
    let mut missed = Vec::new();
    for scenario in scenarios() {
        if !only.is_empty() && !scenario.name.contains(&only) {
            continue;
        }
        let threshold = run(&scenario, Rule::Threshold, trials);
        let sequential = run(&scenario, Rule::Sequential, trials);
        let cells = |s: &Summary| {
            format!(
                "{:>7.1}% {:>7.1}% {:>9} {:>8.1}",
                s.promoted * 100.0,
                s.aborted * 100.0,
                s.median_seconds.map_or("-".to_string(), |t| t.to_string()),
                s.mean_failed
            )
        };
        let (target, met) = match scenario.target {
            Target::Promote(min) => (
                format!("promote >= {:.0}%", min * 100.0),
                sequential.promoted >= min,
            ),
            Target::Abort(min) => (
                format!("abort >= {:.0}%", min * 100.0),
                sequential.aborted >= min,
            ),
            Target::NeverPromote => ("0 promotions".to_string(), sequential.promoted == 0.0),
            Target::FewerFailuresThanThreshold => (
                format!("failed <= {:.1}", threshold.mean_failed),
                sequential.mean_failed <= threshold.mean_failed && sequential.aborted >= 0.99,
            ),
        };
        println!(
            "{:<30} {:>5}  {:<11} {}   {:<11} {}   {target} {}",
            scenario.name,
            scenario.rps,
            "threshold",
            cells(&threshold),
            "sequential",
            cells(&sequential),
            if met { "met" } else { "MISSED" }
        );
        if !met {
            missed.push(format!("{} at {} rps", scenario.name, scenario.rps));
        }
    }
    println!(
        "\n{} scenario(s) missed their target{}{}; {:.0}s",
        missed.len(),
        if missed.is_empty() { "" } else { ": " },
        missed.join("; "),
        started.elapsed().as_secs_f64()
    );
}

/// The end-to-end part: a few scenarios through the real agent (its controller, run in
/// this process), the traffic simulator in its noisy mode and a real Prometheus, on the
/// test bed; and the same scenarios through the pure part with the same settings, side
/// by side. Each trial is its own Service, so that a scenario's trials run at once.
mod end_to_end {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use anyhow::Context as _;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    use kube::Client;
    use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
    use serde_json::json;
    use weir::controller::lease::Leadership;
    use weir::controller::{self, AgentConfig};
    use weir::notify::Notifier;
    use weir::plan::{Phase, Status};
    use weir::server::Telemetry;
    use weir::spec::Defaults;
    use weir_analysis::{PrometheusApi, PrometheusConfig, Reporter, Rule};
    use weir_simulator::{Simulator, SimulatorConfig};
    use weir_testbed::{ControlPlane, Prometheus, mark_deployment_available};

    use super::{Behaviour, Decision, Scenario, Target};

    const NAMESPACE: &str = "bench";
    /// The settings every end-to-end trial runs with, shorter than the defaults so that
    /// a scenario takes about a minute; the pure part is run with the same.
    const SETTINGS: &[(&str, &str)] = &[("step-interval", "10s"), ("check-interval", "5s")];
    const RPS: f64 = 500.0;

    fn scenarios() -> Vec<Scenario> {
        let b = Behaviour::new;
        let s = |name, stable, canary, target| Scenario {
            name,
            rps: RPS,
            stable,
            canary,
            target,
        };
        vec![
            s(
                "e2e healthy equal 0.5%",
                b(0.005),
                b(0.005),
                Target::Promote(0.99),
            ),
            s(
                "e2e regress 3x 0.5%->1.5%",
                b(0.005),
                b(0.015),
                Target::Abort(0.99),
            ),
            s(
                "e2e regress p99 2x",
                b(0.001).latency(50.0, 200.0),
                b(0.001).latency(100.0, 400.0),
                Target::Abort(0.99),
            ),
            s(
                "e2e gross 20% errors",
                b(0.001),
                b(0.2),
                Target::Abort(0.99),
            ),
        ]
    }

    pub async fn part() -> anyhow::Result<()> {
        let per_scenario: usize = std::env::var("WEIR_BENCH_E2E_TRIALS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        let started = Instant::now();
        println!(
            "\nend-to-end: {per_scenario} rollouts per scenario through the real agent, the noisy simulator and Prometheus ({RPS} rps, {})",
            SETTINGS
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let control_plane = ControlPlane::start().await?;
        control_plane.create_namespace(NAMESPACE).await?;
        let client = control_plane.client();
        let simulator = Simulator::start(
            client.clone(),
            SimulatorConfig {
                noise: Some(7),
                default_rps: RPS,
                ..SimulatorConfig::new(NAMESPACE)
            },
        )
        .await?;
        let prometheus = Prometheus::start(&[simulator.metrics_addr()]).await?;
        prometheus.wait_for_scrape().await?;
        let api = PrometheusApi::new(&PrometheusConfig {
            url: prometheus.url(),
            tenant: None,
            bearer_token_file: None,
            basic_auth: None,
            ca_file: None,
            query_timeout: Duration::from_secs(5),
            check_timeout: Duration::from_secs(10),
        })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(controller::run(
            client.clone(),
            AgentConfig {
                namespace: NAMESPACE.into(),
                defaults: Defaults::default(),
                reporter: Reporter::Destination,
                scrape_interval: Duration::from_secs(1),
                check_round: Duration::from_millis(500),
                dry_run: false,
                instance: "bench".into(),
            },
            api,
            Telemetry::default(),
            Leadership::always(),
            Notifier::default(),
            async move {
                let _ = stopped.await;
            },
        ));

        println!(
            "{:<30} {:>10} {:>8} {:>8} {:>9}   {:>10} {:>8} {:>8} {:>9}",
            "scenario",
            "real n",
            "promote",
            "abort",
            "median s",
            "pure n",
            "promote",
            "abort",
            "median s"
        );
        for (index, scenario) in scenarios().iter().enumerate() {
            let names: Vec<String> = (0..per_scenario).map(|i| format!("s{index}-{i}")).collect();
            for name in &names {
                deploy_app(&client, name, &scenario.stable).await?;
            }
            for name in &names {
                wait_status(&client, name, |s| s.phase == Phase::Idle).await?;
            }
            let released = Instant::now();
            for name in &names {
                deploy_version(&client, name, "v2", &scenario.canary).await?;
            }
            let mut outcomes: Vec<(Decision, u64)> = Vec::new();
            for name in &names {
                let status = wait_status(&client, name, |s| {
                    s.phase == Phase::Aborted
                        || (s.phase == Phase::Idle && s.stable.as_deref() == Some("v2"))
                })
                .await?;
                let decision = if status.phase == Phase::Aborted {
                    Decision::Aborted
                } else {
                    Decision::Promoted
                };
                let seconds = status
                    .rollout_started_at
                    .map(|start| status.last_transition_at.duration_since(start).as_secs())
                    .unwrap_or_else(|| released.elapsed().as_secs() as i64);
                outcomes.push((decision, seconds.max(0) as u64));
            }
            let real = summarize(&outcomes);
            let spec = super::spec_with(Rule::Sequential, SETTINGS);
            let pure: Vec<(Decision, u64)> = (0..1000)
                .map(|seed| {
                    let o = super::trial_with(scenario, &spec, seed);
                    (o.decision, o.seconds.max(0) as u64)
                })
                .collect();
            let pure = summarize(&pure);
            println!(
                "{:<30} {:>10} {:>7.0}% {:>7.0}% {:>9}   {:>10} {:>7.1}% {:>7.1}% {:>9}",
                scenario.name,
                outcomes.len(),
                real.0 * 100.0,
                real.1 * 100.0,
                real.2,
                1000,
                pure.0 * 100.0,
                pure.1 * 100.0,
                pure.2,
            );
            for name in &names {
                remove_app(&client, name).await?;
            }
        }
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
        drop(prometheus);
        drop(simulator);
        drop(control_plane);
        println!("end-to-end part: {:.0}s", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// (P(promote), P(abort), median seconds).
    fn summarize(outcomes: &[(Decision, u64)]) -> (f64, f64, u64) {
        let n = outcomes.len().max(1) as f64;
        let share = |d: Decision| outcomes.iter().filter(|o| o.0 == d).count() as f64 / n;
        let mut times: Vec<u64> = outcomes.iter().map(|o| o.1).collect();
        times.sort_unstable();
        (
            share(Decision::Promoted),
            share(Decision::Aborted),
            times.get(times.len() / 2).copied().unwrap_or(0),
        )
    }

    fn behaviour_annotations(b: &Behaviour) -> serde_json::Value {
        json!({
            "sim.weir.dev/error-rate": b.error_rate.to_string(),
            "sim.weir.dev/latency-ms": b.median_ms.to_string(),
            "sim.weir.dev/latency-p99-ms": b.p99_ms.to_string(),
        })
    }

    async fn deploy_app(client: &Client, name: &str, stable: &Behaviour) -> anyhow::Result<()> {
        let mut annotations: BTreeMap<String, String> = SETTINGS
            .iter()
            .map(|(k, v)| (format!("weir.dev/{k}"), (*v).to_string()))
            .collect();
        annotations.insert("weir.dev/enabled".into(), "true".into());
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}
        }))?;
        Api::<Service>::namespaced(client.clone(), NAMESPACE)
            .create(&PostParams::default(), &service)
            .await?;
        deploy_version(client, name, "v1", stable).await?;
        for object in [
            json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": name},
                "spec": {"hosts": [name], "http": [{"name": "primary", "route": [
                    {"destination": {"host": name, "subset": "stable"}, "weight": 100}]}]}
            }),
            json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": name},
                "spec": {"host": name, "subsets": [
                    {"name": "stable", "labels": {"version": "v1"}},
                    {"name": "canary", "labels": {"version": "v1"}}]}
            }),
        ] {
            let kind = object["kind"].as_str().unwrap_or_default();
            let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", kind);
            let object: DynamicObject = serde_json::from_value(object.clone())?;
            Api::<DynamicObject>::namespaced_with(
                client.clone(),
                NAMESPACE,
                &ApiResource::from_gvk(&gvk),
            )
            .create(&PostParams::default(), &object)
            .await
            .with_context(|| format!("creating {kind} {name}"))?;
        }
        Ok(())
    }

    async fn deploy_version(
        client: &Client,
        app: &str,
        version: &str,
        behaviour: &Behaviour,
    ) -> anyhow::Result<()> {
        let name = format!("{app}-{version}");
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": behaviour_annotations(behaviour)},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": app, "version": version}},
                "template": {
                    "metadata": {"labels": {"app": app, "version": version}},
                    "spec": {"containers": [{"name": "app", "image": format!("example.test/{app}:{version}")}]}
                }
            }
        }))?;
        Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
            .create(&PostParams::default(), &deployment)
            .await?;
        mark_deployment_available(client, NAMESPACE, &name).await
    }

    /// Removes a trial's Service and Deployments, so that the next scenario's traffic
    /// and queries do not carry them.
    async fn remove_app(client: &Client, name: &str) -> anyhow::Result<()> {
        let deployments = Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
        for version in ["v1", "v2"] {
            let _ = deployments
                .delete(&format!("{name}-{version}"), &Default::default())
                .await;
        }
        let _ = Api::<Service>::namespaced(client.clone(), NAMESPACE)
            .delete(name, &Default::default())
            .await;
        Ok(())
    }

    async fn wait_status(
        client: &Client,
        name: &str,
        done: impl Fn(&Status) -> bool,
    ) -> anyhow::Result<Status> {
        let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
        weir_testbed::wait_until(
            &format!("{name} to reach its state"),
            Duration::from_secs(1800),
            || async {
                let service = services.get(name).await?;
                let raw = service
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("weir.dev/status"))
                    .context("no status yet")?;
                let status: Status = serde_json::from_str(raw)?;
                anyhow::ensure!(done(&status), "{:?}: {}", status.phase, status.message);
                Ok(status)
            },
        )
        .await
    }
}
