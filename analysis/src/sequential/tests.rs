//! The tests' error rates are measured, not assumed: each null hypothesis is simulated
//! at its boundary (the hardest case), looked at after every batch, many times over,
//! and the share of runs in which the e-value *ever* crossed `1/α` is held to `α`.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, Poisson};

use super::*;

const TRIALS: usize = 2_000;
const ALPHA: f64 = 0.05;

fn binomial(rng: &mut StdRng, n: f64, p: f64) -> f64 {
    Binomial::new(n as u64, p.clamp(0.0, 1.0))
        .unwrap()
        .sample(rng) as f64
}

fn poisson(rng: &mut StdRng, mean: f64) -> f64 {
    if mean <= 0.0 {
        0.0
    } else {
        Poisson::new(mean).unwrap().sample(rng)
    }
}

/// Share of `TRIALS` runs of `looks` looks in which `evidence` ever reached `1/ALPHA`.
fn crossing_rate(looks: usize, mut evidence: impl FnMut(&mut StdRng, usize) -> f64) -> f64 {
    let mut crossed = 0;
    for seed in 0..TRIALS {
        let mut rng = StdRng::seed_from_u64(seed as u64);
        if (0..looks).any(|look| evidence(&mut rng, look) >= 1.0 / ALPHA) {
            crossed += 1;
        }
    }
    crossed as f64 / TRIALS as f64
}

#[test]
fn exceeds_is_anytime_valid_at_the_limit() {
    for limit in [0.001, 0.01, 0.2] {
        let mut tally = Tally::default();
        let rate = crossing_rate(60, |rng, look| {
            if look == 0 {
                tally = Tally::default();
            }
            let n = 40.0;
            tally = tally
                + Tally {
                    requests: n,
                    events: binomial(rng, n, limit),
                };
            exceeds(tally, limit)
        });
        assert!(rate <= ALPHA, "limit {limit}: crossed in {rate} of runs");
    }
}

#[test]
fn below_is_anytime_valid_at_the_bad_rate() {
    for bad in [0.002, 0.02, 0.3] {
        let mut tally = Tally::default();
        let rate = crossing_rate(60, |rng, look| {
            if look == 0 {
                tally = Tally::default();
            }
            let n = 40.0;
            tally = tally
                + Tally {
                    requests: n,
                    events: binomial(rng, n, bad),
                };
            below(tally, bad)
        });
        assert!(rate <= ALPHA, "bad {bad}: crossed in {rate} of runs");
    }
}

/// Poisson arrivals at `rps`, the canary taking `weight`% of them, each step `looks`
/// looks of 15 s; errors at `stable_rate` and `ratio` times it.
fn strata(
    rng: &mut StdRng,
    rps: f64,
    weights: &[f64],
    looks_per_step: usize,
    stable_rate: f64,
    ratio: f64,
    mut at_each_look: impl FnMut(&[Pair]) -> bool,
) -> bool {
    let mut done: Vec<Pair> = Vec::new();
    for weight in weights {
        let mut current = Pair::default();
        for _ in 0..looks_per_step {
            let arrivals = poisson(rng, rps * 15.0);
            let canary = binomial(rng, arrivals, weight / 100.0);
            let stable = arrivals - canary;
            current.canary = current.canary
                + Tally {
                    requests: canary,
                    events: binomial(rng, canary, stable_rate * ratio),
                };
            current.stable = current.stable
                + Tally {
                    requests: stable,
                    events: binomial(rng, stable, stable_rate),
                };
            let mut all = done.clone();
            all.push(current);
            if at_each_look(&all) {
                return true;
            }
        }
        done.push(current);
    }
    false
}

#[test]
fn worse_is_anytime_valid_at_the_tolerated_ratio_while_the_share_changes() {
    for (stable_rate, tolerated) in [(0.01, 1.5), (0.05, 1.0), (0.002, 2.0)] {
        let mut crossed = 0;
        for seed in 0..TRIALS {
            let mut rng = StdRng::seed_from_u64(seed as u64);
            if strata(
                &mut rng,
                50.0,
                &[10.0, 25.0, 50.0],
                8,
                stable_rate,
                tolerated,
                |steps| worse(steps, tolerated) >= 1.0 / ALPHA,
            ) {
                crossed += 1;
            }
        }
        let rate = crossed as f64 / TRIALS as f64;
        assert!(
            rate <= ALPHA,
            "stable {stable_rate}, tolerated {tolerated}: crossed in {rate} of runs"
        );
    }
}

#[test]
fn better_is_anytime_valid_at_the_bad_ratio_while_the_share_changes() {
    for (stable_rate, bad) in [(0.01, 3.0), (0.05, 2.0)] {
        let mut crossed = 0;
        for seed in 0..TRIALS {
            let mut rng = StdRng::seed_from_u64(seed as u64);
            if strata(
                &mut rng,
                50.0,
                &[10.0, 25.0, 50.0],
                8,
                stable_rate,
                bad,
                |steps| better(steps, bad, bad / 2.0) >= 1.0 / ALPHA,
            ) {
                crossed += 1;
            }
        }
        let rate = crossed as f64 / TRIALS as f64;
        assert!(
            rate <= ALPHA,
            "stable {stable_rate}, bad {bad}: crossed in {rate} of runs"
        );
    }
}

#[test]
fn a_gross_failure_is_evident_within_a_few_dozen_requests() {
    // 20% errors against a 1% limit: 40 requests with 8 errors.
    let e = exceeds(
        Tally {
            requests: 40.0,
            events: 8.0,
        },
        0.01,
    );
    assert!(e > 1_000.0, "{e}");
    // Ten times stable's errors, at a 10% share: 10 canary errors against 9 stable.
    let steps = [Pair {
        canary: Tally {
            requests: 100.0,
            events: 10.0,
        },
        stable: Tally {
            requests: 900.0,
            events: 9.0,
        },
    }];
    let e = worse(&steps, 1.5);
    assert!(e > 100.0, "{e}");
}

#[test]
fn equal_versions_gather_evidence_for_the_canary() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut reached = 0;
    for _ in 0..200 {
        if strata(&mut rng, 50.0, &[10.0, 25.0, 50.0], 4, 0.01, 1.0, |steps| {
            better(steps, 3.0, 1.5) >= 100.0
        }) {
            reached += 1;
        }
    }
    assert!(
        reached >= 150,
        "only {reached} of 200 reached 100 within 3 minutes"
    );
}

#[test]
fn no_data_is_no_evidence_either_way() {
    let one = |e: f64| (e - 1.0).abs() < 1e-12;
    let nothing = Tally::default();
    assert!(one(exceeds(nothing, 0.01)));
    assert!(one(below(nothing, 0.02)));
    assert!(one(worse(&[], 1.5)));
    assert!(one(better(&[Pair::default()], 3.0, 1.5)));
    // Only stable served: nothing about the canary's share of events.
    let stable_only = Pair {
        canary: Tally::default(),
        stable: Tally {
            requests: 1000.0,
            events: 10.0,
        },
    };
    assert!(one(worse(&[stable_only], 1.5)));
}

#[test]
fn counts_that_cannot_be_are_clamped_not_trusted() {
    let odd = [
        Tally {
            requests: f64::NAN,
            events: 3.0,
        },
        Tally {
            requests: 10.0,
            events: 12.0,
        },
        Tally {
            requests: -5.0,
            events: -1.0,
        },
        Tally {
            requests: f64::INFINITY,
            events: 1.0,
        },
    ];
    for tally in odd {
        for e in [
            exceeds(tally, 0.01),
            below(tally, 0.02),
            worse(
                &[Pair {
                    canary: tally,
                    stable: tally,
                }],
                1.5,
            ),
        ] {
            assert!(!e.is_nan() && e >= 0.0, "{tally:?} gave {e}");
        }
    }
}

#[test]
fn limits_at_the_ends_of_the_scale_stay_finite_or_say_why() {
    // A 0% limit: one error proves it exceeded.
    let one_error = Tally {
        requests: 100.0,
        events: 1.0,
    };
    assert_eq!(exceeds(one_error, 0.0), f64::INFINITY);
    assert_eq!(
        exceeds(
            Tally {
                requests: 100.0,
                events: 0.0
            },
            0.0
        ),
        1.0
    );
    // A tiny limit: one error is strong, finite evidence.
    let e = exceeds(one_error, 1e-4);
    assert!(e.is_finite() && e > 2.0, "{e}");
    // A bad rate of 100% or more cannot be reached: any success shows it.
    assert_eq!(below(one_error, 1.0), f64::INFINITY);
    assert_eq!(
        below(
            Tally {
                requests: 5.0,
                events: 5.0
            },
            1.0
        ),
        1.0
    );
}

#[test]
fn the_request_estimate_extrapolates_the_growth_so_far() {
    assert_eq!(requests_to_reach(200.0, 100.0, 10.0), Some(0));
    assert_eq!(requests_to_reach(0.5, 100.0, 10.0), None);
    // e grew to 10 over 100 requests: another 100 bring it to 100.
    assert_eq!(requests_to_reach(10.0, 100.0, 100.0), Some(100));
}

#[test]
fn the_normal_distribution_is_computed_to_its_tails() {
    assert!((normal_tail(0.0) - 0.5).abs() < 1e-7);
    assert!((normal_tail(2.326_347_874) - 0.01).abs() < 1e-8);
    assert!((normal_tail(-1.644_853_627) - 0.95).abs() < 1e-7);
    // Far in the tail, the relative error stays small.
    assert!((normal_tail(6.0) / 9.865_876_450_377e-10 - 1.0).abs() < 1e-5);
    for p in [1e-6, 0.01, 0.3, 0.5, 0.9, 0.99, 0.999_999] {
        let z = normal_quantile(p);
        assert!(
            (1.0 - normal_tail(z) - p).abs() < 1e-7 * p.max(1e-3),
            "p {p}: z {z}"
        );
    }
}

#[test]
fn a_latency_ratio_is_translated_into_the_share_ratios_it_means() {
    // Stable: median 50 ms, p99 200 ms (sigma = ln 4 / 2.326). At 100 ms, stable has
    // 12.2% above; 1.5 times slower, 31.5%; twice as slow, 50%.
    let sigma = 4f64.ln() / 2.326_347_874;
    let baseline = LatencyBaseline::fitted(100.0, 50.0, sigma, 0.5);
    assert!(
        (baseline.acceptable_ratio - 0.315 / 0.122).abs() < 0.05,
        "{baseline:?}"
    );
    assert!(
        (baseline.bad_ratio - 0.5 / 0.122).abs() < 0.05,
        "{baseline:?}"
    );
    // A degenerate fit falls back to the ratios themselves.
    let flat = LatencyBaseline::fitted(100.0, 50.0, 0.0, 0.5);
    assert_eq!((flat.acceptable_ratio, flat.bad_ratio), (1.5, 3.0));
}

/// The numbers docs/analysis.md's worked example quotes.
#[test]
fn the_worked_example_of_the_analysis_docs() {
    let canary = Tally {
        requests: 600.0,
        events: 3.0,
    };
    let step = [Pair {
        canary,
        stable: Tally {
            requests: 5400.0,
            events: 27.0,
        },
    }];
    let near = |value: f64, quoted: f64| (value - quoted).abs() <= quoted * 0.05 + 0.005;
    assert!(
        near(exceeds(canary, 0.01), 0.03),
        "{}",
        exceeds(canary, 0.01)
    );
    assert!(near(below(canary, 0.02), 79.0), "{}", below(canary, 0.02));
    assert!(near(worse(&step, 1.5), 0.10), "{}", worse(&step, 1.5));
    let relative = better(&step, 3.0, 1.5);
    let immaterial = below(canary, 0.0075);
    assert!(near(relative, 8.2), "{relative}");
    assert!(near(immaterial, 0.6), "{immaterial}");
    assert!(near((relative + immaterial) / 2.0, 4.4));
    assert!(near(required_for(0.99, 25), 3.16));
    // After one minute, errors against stable had 1.3.
    let minute = Tally {
        requests: 300.0,
        events: 2.0,
    };
    let first = [Pair {
        canary: minute,
        stable: Tally {
            requests: 2700.0,
            events: 14.0,
        },
    }];
    let early = (better(&first, 3.0, 1.5) + below(minute, 0.0075)) / 2.0;
    assert!(near(early, 1.27), "{early}");
    // The bad canary at its first check.
    let bad = Tally {
        requests: 75.0,
        events: 15.0,
    };
    let gross = [Pair {
        canary: bad,
        stable: Tally {
            requests: 675.0,
            events: 3.0,
        },
    }];
    assert!(near(exceeds(bad, 0.01), 2.8e12), "{}", exceeds(bad, 0.01));
    assert!(near(worse(&gross, 1.5), 4.4e8), "{}", worse(&gross, 1.5));
}
