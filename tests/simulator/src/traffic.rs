//! Turning a traffic plan into individual requests, in one of two modes.
//!
//! - **Exact** (the default): nothing is random. Requests are apportioned to
//!   destinations by credit accumulators (smooth weighted round robin), errors by an
//!   error credit per version, and latencies follow a low-discrepancy sequence. Over any
//!   run of requests, each share is exact up to one request: for tests that need exact
//!   counts.
//! - **Noisy** (seeded): traffic as a real mesh sees it. Arrivals are a Poisson
//!   process at the route's rate; each request picks its destination at random with the
//!   route's weights (as Envoy's weighted clusters do); each fails with its version's
//!   error rate; each takes a latency drawn from its version's log-normal distribution,
//!   given by its median (`sim.weir.dev/latency-ms`) and 99th percentile
//!   (`sim.weir.dev/latency-p99-ms`). For every test of a decision.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Poisson};

use crate::mesh::{Backend, ErrorRate, RouteKey, RoutePlan};

/// The response code of a simulated success.
pub const OK: u16 = 200;
/// The response code of a simulated failure.
pub const SERVER_ERROR: u16 = 500;

/// Picks among weighted choices so that after any number of picks each choice's count
/// is within one of its exact share.
#[derive(Clone, Debug, Default)]
pub struct Splitter {
    weights: Vec<u32>,
    credits: Vec<i64>,
}

impl Splitter {
    /// The index of the next pick, or `None` if every weight is 0. A choice with
    /// weight 0 is never picked. Changing the weights starts the apportioning afresh.
    pub fn pick(&mut self, weights: &[u32]) -> Option<usize> {
        if self.weights != weights {
            self.weights = weights.to_vec();
            self.credits = vec![0; weights.len()];
        }
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        if total == 0 {
            return None;
        }
        for (credit, &weight) in self.credits.iter_mut().zip(weights) {
            *credit += i64::from(weight);
        }
        // On a tie the earliest choice wins (max_by_key would take the last).
        let (chosen, _) = self
            .credits
            .iter()
            .enumerate()
            .filter(|&(i, _)| weights[i] > 0)
            .fold(
                None,
                |best: Option<(usize, i64)>, (i, &credit)| match best {
                    Some((_, best_credit)) if best_credit >= credit => best,
                    _ => Some((i, credit)),
                },
            )?;
        self.credits[chosen] -= total;
        Some(chosen)
    }
}

/// Decides which responses of one version fail: after `n` responses at rate `r`,
/// exactly `floor(n·r)` have failed (with `r` in parts per million).
#[derive(Clone, Debug, Default)]
pub struct ErrorCredit {
    credit_ppm: u32,
}

impl ErrorCredit {
    /// Whether the next response fails.
    pub fn fails(&mut self, rate: ErrorRate) -> bool {
        self.credit_ppm += rate.parts_per_million();
        if self.credit_ppm >= ErrorRate::ONE_PPM {
            self.credit_ppm -= ErrorRate::ONE_PPM;
            true
        } else {
            false
        }
    }
}

/// Latencies spread evenly over `[0.5, 1.5] × mean`, in an order without runs (a Weyl
/// sequence on the golden ratio), so their average converges quickly to the mean.
#[derive(Clone, Debug, Default)]
pub struct LatencySequence {
    position: u64,
}

impl LatencySequence {
    /// 2^64 divided by the golden ratio.
    const STEP: u64 = 0x9E37_79B9_7F4A_7C15;

    /// The next latency in milliseconds around `mean_ms`.
    pub fn next_ms(&mut self, mean_ms: f64) -> f64 {
        self.position = self.position.wrapping_add(Self::STEP);
        // The top 53 bits make a uniform double in [0, 1).
        let unit = (self.position >> 11) as f64 / (1u64 << 53) as f64;
        mean_ms * (0.5 + unit)
    }
}

/// One simulated request that reached a version.
#[derive(Clone, Debug, PartialEq)]
pub struct Request<'a> {
    /// The version that served it.
    pub backend: &'a Backend,
    /// [`OK`] or [`SERVER_ERROR`].
    pub response_code: u16,
    /// How long it took.
    pub latency_ms: f64,
}

/// The requests of one tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tick<'a> {
    /// Requests that reached a version.
    pub served: Vec<Request<'a>>,
    /// Requests whose destination resolved to no version.
    pub dropped: u64,
}

/// Generates the requests of successive ticks, carrying the apportioning state of every
/// route and version from one tick to the next.
#[derive(Debug, Default)]
pub struct TrafficGenerator {
    routes: HashMap<RouteKey, RouteState>,
    versions: HashMap<String, VersionState>,
    /// The noisy mode's random source; `None`: the exact mode.
    noise: Option<StdRng>,
}

/// A version's p99 latency, when not configured: four times its median.
pub const DEFAULT_P99_OVER_MEDIAN: f64 = 4.0;

/// `z` of the 99th percentile of the standard normal distribution.
const Z_99: f64 = 2.326_347_874_040_841;

#[derive(Debug, Default)]
struct RouteState {
    /// Fractional requests not yet sent.
    pending: f64,
    destinations: Splitter,
    /// Per destination: which of its Deployments serves the next request.
    backends: Vec<Splitter>,
}

#[derive(Debug, Default)]
struct VersionState {
    errors: ErrorCredit,
    latencies: LatencySequence,
}

impl TrafficGenerator {
    /// A generator in the exact mode.
    pub fn exact() -> TrafficGenerator {
        TrafficGenerator::default()
    }

    /// A generator in the noisy mode, reproducible from `seed`.
    pub fn noisy(seed: u64) -> TrafficGenerator {
        TrafficGenerator {
            noise: Some(StdRng::seed_from_u64(seed)),
            ..TrafficGenerator::default()
        }
    }

    /// The requests sent over the `elapsed` time since the previous tick.
    pub fn tick<'a>(&mut self, plans: &'a [RoutePlan], elapsed: Duration) -> Tick<'a> {
        self.routes
            .retain(|key, _| plans.iter().any(|p| &p.route == key));
        if let Some(rng) = self.noise.as_mut() {
            return noisy_tick(rng, plans, elapsed);
        }
        let mut tick = Tick::default();
        for plan in plans {
            let route = self.routes.entry(plan.route.clone()).or_default();
            route.pending += plan.rps * elapsed.as_secs_f64();
            let count = route.pending.floor();
            route.pending -= count;
            route
                .backends
                .resize_with(plan.destinations.len(), Splitter::default);
            let weights: Vec<u32> = plan.destinations.iter().map(|d| d.weight).collect();
            for _ in 0..count as u64 {
                let Some(chosen) = route.destinations.pick(&weights) else {
                    break;
                };
                let destination = &plan.destinations[chosen];
                let even = vec![1; destination.backends.len()];
                let Some(backend) = route.backends[chosen]
                    .pick(&even)
                    .map(|i| &destination.backends[i])
                else {
                    tick.dropped += 1;
                    continue;
                };
                let version = self.versions.entry(backend.workload.clone()).or_default();
                let response_code = if version.errors.fails(backend.behaviour.error_rate) {
                    SERVER_ERROR
                } else {
                    OK
                };
                tick.served.push(Request {
                    backend,
                    response_code,
                    latency_ms: version.latencies.next_ms(backend.behaviour.mean_latency_ms),
                });
            }
        }
        tick
    }
}

/// One tick of the noisy mode: see the module documentation.
fn noisy_tick<'a>(rng: &mut StdRng, plans: &'a [RoutePlan], elapsed: Duration) -> Tick<'a> {
    let mut tick = Tick::default();
    for plan in plans {
        let mean = plan.rps * elapsed.as_secs_f64();
        let count = match Poisson::new(mean) {
            Ok(arrivals) if mean > 0.0 => arrivals.sample(rng) as u64,
            _ => 0,
        };
        let total: u64 = plan.destinations.iter().map(|d| u64::from(d.weight)).sum();
        if total == 0 {
            continue;
        }
        for _ in 0..count {
            let mut pick = rng.random_range(0..total);
            let Some(destination) = plan.destinations.iter().find(|d| {
                let weight = u64::from(d.weight);
                if pick < weight {
                    true
                } else {
                    pick -= weight;
                    false
                }
            }) else {
                continue;
            };
            if destination.backends.is_empty() {
                tick.dropped += 1;
                continue;
            }
            let backend = &destination.backends[rng.random_range(0..destination.backends.len())];
            let behaviour = &backend.behaviour;
            let fails = rng.random_bool(behaviour.error_rate.fraction().clamp(0.0, 1.0));
            tick.served.push(Request {
                backend,
                response_code: if fails { SERVER_ERROR } else { OK },
                latency_ms: log_normal_latency(rng, behaviour),
            });
        }
    }
    tick
}

/// A latency from the log-normal distribution with the behaviour's median and p99.
fn log_normal_latency(rng: &mut StdRng, behaviour: &crate::mesh::Behaviour) -> f64 {
    let median = behaviour.mean_latency_ms.max(0.001);
    let p99 = behaviour
        .p99_latency_ms
        .unwrap_or(median * DEFAULT_P99_OVER_MEDIAN)
        .max(median * 1.000_001);
    let sigma = (p99 / median).ln() / Z_99;
    LogNormal::new(median.ln(), sigma).map_or(median, |d| d.sample(rng))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{Behaviour, PlannedDestination, RouteKind, ServiceRef};

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        let mut splitter = Splitter::default();
        let mut counts = vec![0; weights.len()];
        for _ in 0..n {
            counts[splitter.pick(weights).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn splitter_apportions_exactly() {
        let cases: [(&[u32], usize, &[usize]); 7] = [
            (&[100, 0], 1000, &[1000, 0]),
            (&[0, 100], 7, &[0, 7]),
            (&[80, 20], 1000, &[800, 200]),
            (&[80, 20], 5, &[4, 1]),
            (&[90, 10], 10, &[9, 1]),
            (&[50, 25, 25], 8, &[4, 2, 2]),
            (&[33, 67], 100, &[33, 67]),
        ];
        for (weights, n, expected) in cases {
            assert_eq!(picks(weights, n), expected, "{weights:?} over {n}");
        }
    }

    #[test]
    fn splitter_stays_within_one_request_of_the_share_at_every_prefix() {
        for weights in [[80u32, 20, 0], [1, 99, 0], [10, 25, 65], [34, 33, 33]] {
            let total: u32 = weights.iter().sum();
            let mut splitter = Splitter::default();
            let mut counts = [0f64; 3];
            for n in 1..=1000 {
                counts[splitter.pick(&weights).unwrap()] += 1.0;
                for (count, &w) in counts.iter().zip(&weights) {
                    let exact = f64::from(n) * f64::from(w) / f64::from(total);
                    assert!(
                        (count - exact).abs() < 1.0,
                        "{weights:?} after {n}: {counts:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn splitter_without_weight_picks_nothing() {
        assert_eq!(Splitter::default().pick(&[0, 0]), None);
        assert_eq!(Splitter::default().pick(&[]), None);
    }

    #[test]
    fn splitter_never_picks_a_destination_whose_weight_dropped_to_zero() {
        let mut splitter = Splitter::default();
        for _ in 0..3 {
            splitter.pick(&[80, 20]);
        }
        assert!((0..100).all(|_| splitter.pick(&[100, 0]) == Some(0)));
    }

    #[test]
    fn error_credit_fails_exactly_its_share() {
        let cases = [
            (0.1, 1000, 100),
            (0.1, 10, 1),
            (0.1, 9, 0),
            (0.0, 1000, 0),
            (1.0, 17, 17),
            (0.333, 1000, 333),
            (0.015, 2000, 30),
        ];
        for (fraction, n, expected) in cases {
            let rate = ErrorRate::from_fraction(fraction).unwrap();
            let mut credit = ErrorCredit::default();
            let failures = (0..n).filter(|_| credit.fails(rate)).count();
            assert_eq!(failures, expected, "{fraction} over {n}");
        }
    }

    #[test]
    fn latencies_spread_evenly_around_the_mean() {
        let mut sequence = LatencySequence::default();
        let samples: Vec<f64> = (0..1000).map(|_| sequence.next_ms(200.0)).collect();
        assert!(samples.iter().all(|&ms| (100.0..300.0).contains(&ms)));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((mean - 200.0).abs() < 1.0, "mean {mean}");
        let below_150 = samples.iter().filter(|&&ms| ms < 150.0).count();
        assert!((240..=260).contains(&below_150), "{below_150} below 150 ms");
    }

    fn backend(workload: &str, version: &str, error_rate: f64) -> Backend {
        Backend {
            service: ServiceRef {
                name: "checkout".to_owned(),
                namespace: "shop".to_owned(),
            },
            workload: workload.to_owned(),
            version: version.to_owned(),
            behaviour: Behaviour {
                error_rate: ErrorRate::from_fraction(error_rate).unwrap(),
                mean_latency_ms: 20.0,
                p99_latency_ms: None,
            },
        }
    }

    fn plan(index: usize, rps: f64, destinations: Vec<(u32, Vec<Backend>)>) -> RoutePlan {
        RoutePlan {
            route: RouteKey {
                kind: RouteKind::VirtualService,
                name: "checkout".to_owned(),
                index,
            },
            rps,
            destinations: destinations
                .into_iter()
                .map(|(weight, backends)| PlannedDestination {
                    host: "checkout".to_owned(),
                    subset: None,
                    weight,
                    backends,
                })
                .collect(),
        }
    }

    /// Requests per (workload, response code) over `ticks` ticks of 100 ms.
    fn run(
        generator: &mut TrafficGenerator,
        plans: &[RoutePlan],
        ticks: usize,
    ) -> (HashMap<(String, u16), usize>, u64) {
        let mut counts = HashMap::new();
        let mut dropped = 0;
        for _ in 0..ticks {
            let tick = generator.tick(plans, Duration::from_millis(100));
            dropped += tick.dropped;
            for request in tick.served {
                *counts
                    .entry((request.backend.workload.clone(), request.response_code))
                    .or_default() += 1;
            }
        }
        (counts, dropped)
    }

    fn count(counts: &HashMap<(String, u16), usize>, workload: &str, code: u16) -> usize {
        counts
            .get(&(workload.to_owned(), code))
            .copied()
            .unwrap_or(0)
    }

    #[test]
    fn generator_sends_the_route_rate_split_by_weight_with_version_errors() {
        let plans = [plan(
            0,
            50.0,
            vec![
                (80, vec![backend("checkout-v1", "v1", 0.0)]),
                (20, vec![backend("checkout-v2", "v2", 0.1)]),
            ],
        )];
        // 100 ticks of 100 ms at 50 rps: 500 requests.
        let (counts, dropped) = run(&mut TrafficGenerator::default(), &plans, 100);
        assert_eq!(count(&counts, "checkout-v1", OK), 400);
        assert_eq!(count(&counts, "checkout-v1", SERVER_ERROR), 0);
        assert_eq!(count(&counts, "checkout-v2", OK), 90);
        assert_eq!(count(&counts, "checkout-v2", SERVER_ERROR), 10);
        assert_eq!(dropped, 0);
    }

    #[test]
    fn generator_carries_fractional_requests_across_ticks() {
        let plans = [plan(
            0,
            3.0,
            vec![(100, vec![backend("checkout-v1", "v1", 0.0)])],
        )];
        let (counts, _) = run(&mut TrafficGenerator::default(), &plans, 100);
        // 3 rps over 10 s; floating-point rounding may hold the last one back.
        assert!(
            (29..=30).contains(&count(&counts, "checkout-v1", OK)),
            "{counts:?}"
        );
    }

    #[test]
    fn generator_drops_requests_to_destinations_without_versions() {
        let plans = [plan(
            0,
            50.0,
            vec![(50, vec![backend("checkout-v1", "v1", 0.0)]), (50, vec![])],
        )];
        let (counts, dropped) = run(&mut TrafficGenerator::default(), &plans, 20);
        assert_eq!(count(&counts, "checkout-v1", OK), 50);
        assert_eq!(dropped, 50);
    }

    #[test]
    fn generator_serves_every_route_and_spreads_a_destination_over_its_versions() {
        let plans = [
            plan(
                0,
                10.0,
                vec![(100, vec![backend("checkout-v1", "v1", 0.0)])],
            ),
            plan(
                1,
                20.0,
                vec![(
                    100,
                    vec![
                        backend("checkout-v1", "v1", 0.0),
                        backend("checkout-v2", "v2", 0.0),
                    ],
                )],
            ),
        ];
        let (counts, _) = run(&mut TrafficGenerator::default(), &plans, 50);
        assert_eq!(count(&counts, "checkout-v1", OK), 50 + 50);
        assert_eq!(count(&counts, "checkout-v2", OK), 50);
    }

    #[test]
    fn generator_follows_weight_changes() {
        let mut generator = TrafficGenerator::default();
        let v1 = backend("checkout-v1", "v1", 0.0);
        let v2 = backend("checkout-v2", "v2", 0.0);
        let before = [plan(
            0,
            50.0,
            vec![(100, vec![v1.clone()]), (0, vec![v2.clone()])],
        )];
        let (counts, _) = run(&mut generator, &before, 10);
        assert_eq!(count(&counts, "checkout-v2", OK), 0);
        let after = [plan(0, 50.0, vec![(80, vec![v1]), (20, vec![v2])])];
        let (counts, _) = run(&mut generator, &after, 20);
        assert_eq!(count(&counts, "checkout-v1", OK), 80);
        assert_eq!(count(&counts, "checkout-v2", OK), 20);
    }
}

#[cfg(test)]
mod noisy_tests {
    use super::*;
    use crate::mesh::{Behaviour, PlannedDestination, RouteKind, ServiceRef};

    fn backend(workload: &str, error_rate: f64, median: f64, p99: f64) -> Backend {
        Backend {
            service: ServiceRef {
                name: "checkout".to_owned(),
                namespace: "shop".to_owned(),
            },
            workload: workload.to_owned(),
            version: workload.to_owned(),
            behaviour: Behaviour {
                error_rate: ErrorRate::from_fraction(error_rate).unwrap(),
                mean_latency_ms: median,
                p99_latency_ms: Some(p99),
            },
        }
    }

    /// Over 100 s at 500 rps, 90/10: the noisy mode reproduces the configured rates and
    /// distributions in the large, and varies in the small, reproducibly by seed.
    #[test]
    fn noisy_traffic_has_the_configured_rates_and_is_reproducible() {
        let plans = [RoutePlan {
            route: RouteKey {
                kind: RouteKind::VirtualService,
                name: "checkout".to_owned(),
                index: 0,
            },
            rps: 500.0,
            destinations: vec![
                PlannedDestination {
                    host: "checkout".to_owned(),
                    subset: None,
                    weight: 90,
                    backends: vec![backend("v1", 0.01, 50.0, 200.0)],
                },
                PlannedDestination {
                    host: "checkout".to_owned(),
                    subset: None,
                    weight: 10,
                    backends: vec![backend("v2", 0.2, 100.0, 400.0)],
                },
            ],
        }];
        let run = |seed: u64| {
            let mut generator = TrafficGenerator::noisy(seed);
            let mut per_tick = Vec::new();
            let mut latencies: HashMap<String, Vec<f64>> = HashMap::new();
            let mut errors: HashMap<String, usize> = HashMap::new();
            for _ in 0..1000 {
                let tick = generator.tick(&plans, Duration::from_millis(100));
                per_tick.push(tick.served.len());
                for r in tick.served {
                    latencies
                        .entry(r.backend.version.clone())
                        .or_default()
                        .push(r.latency_ms);
                    if r.response_code == SERVER_ERROR {
                        *errors.entry(r.backend.version.clone()).or_default() += 1;
                    }
                }
            }
            (per_tick, latencies, errors)
        };
        let (per_tick, mut latencies, errors) = run(7);
        let total: usize = per_tick.iter().sum();
        assert!((49_000..51_000).contains(&total), "{total} requests");
        // Poisson: the count per tick varies (mean 50, sd about 7).
        assert!(per_tick.iter().any(|&n| n < 42) && per_tick.iter().any(|&n| n > 58));
        let v2 = latencies["v2"].len() as f64;
        assert!(
            (0.09..0.11).contains(&(v2 / total as f64)),
            "canary share {}",
            v2 / total as f64
        );
        let rate = |v: &str| errors[v] as f64 / latencies[v].len() as f64;
        assert!((0.008..0.012).contains(&rate("v1")), "v1 {}", rate("v1"));
        assert!((0.18..0.22).contains(&rate("v2")), "v2 {}", rate("v2"));
        for (version, median, p99) in [("v1", 50.0, 200.0), ("v2", 100.0, 400.0)] {
            let samples = latencies.get_mut(version).unwrap();
            samples.sort_by(f64::total_cmp);
            let at = |q: f64| samples[(q * samples.len() as f64) as usize];
            assert!(
                (at(0.5) / median - 1.0).abs() < 0.05,
                "{version} median {}",
                at(0.5)
            );
            assert!(
                (at(0.99) / p99 - 1.0).abs() < 0.15,
                "{version} p99 {}",
                at(0.99)
            );
        }
        assert_eq!(run(7).0, per_tick, "the same seed, the same traffic");
        assert_ne!(run(8).0, per_tick);
    }
}
