use std::collections::BTreeMap;

use super::*;
use crate::custom::{Limit, TemplateBound};
use crate::gates::Rule;
use crate::judge::{CustomObservation, QueryFailure, QueryOutcome};

const CANARY: &str = "v2";
const STABLE: &str = "v1";
/// Istio's default latency buckets, in ms, up to 10 s.
const BOUNDS: [f64; 13] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

fn gates() -> Gates {
    Gates {
        rule: Rule::Sequential,
        ..Gates::default()
    }
}

fn by_version(canary: f64, stable: f64) -> QueryOutcome {
    Ok(vec![
        Series::of_version(CANARY, canary),
        Series::of_version(STABLE, stable),
    ])
}

/// A version's requests spread over the buckets: `(bound, share within it)` pairs,
/// ascending; everything is within the last finite bound given, then +Inf.
fn buckets(version: &str, requests: f64, within: &[(f64, f64)]) -> Vec<Series> {
    let share_at = |le: f64| {
        within
            .iter()
            .rev()
            .find(|(b, _)| *b <= le)
            .map_or(0.0, |(_, share)| *share)
    };
    BOUNDS
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .map(|le| Series {
            labels: BTreeMap::from([
                (VERSION_LABEL.to_string(), version.to_string()),
                (
                    "le".to_string(),
                    if le.is_finite() {
                        format!("{le}")
                    } else {
                        "+Inf".to_string()
                    },
                ),
            ]),
            value: if le.is_finite() {
                requests * share_at(le)
            } else {
                requests
            },
        })
        .collect()
}

/// Both versions fast: 50% within 25 ms, 95% within 100 ms, 99.5% within 250 ms.
const FAST: &[(f64, f64)] = &[(25.0, 0.5), (100.0, 0.95), (250.0, 0.995), (500.0, 1.0)];
/// Twice as slow: 50% within 50 ms, 80% within 100 ms, 95% within 250 ms, 99% within 500.
const SLOW: &[(f64, f64)] = &[
    (50.0, 0.5),
    (100.0, 0.8),
    (250.0, 0.95),
    (500.0, 0.99),
    (1000.0, 1.0),
];

fn observations(
    canary: (f64, f64, &[(f64, f64)]),
    stable: (f64, f64, &[(f64, f64)]),
) -> Observations {
    let mut series = buckets(CANARY, canary.0, canary.2);
    series.extend(buckets(STABLE, stable.0, stable.2));
    Observations {
        request_count: by_version(canary.0, stable.0),
        error_count: by_version(canary.1, stable.1),
        latency: Ok(Vec::new()),
        buckets: Some(Ok(series)),
        custom: Vec::new(),
    }
}

fn weigh_now(observations: &Observations, earlier: &RolloutEvidence, pass_at: f64) -> Judgement {
    weigh(
        observations,
        CANARY,
        STABLE,
        &gates(),
        Standing { earlier, pass_at },
    )
}

#[test]
fn a_healthy_canary_with_enough_requests_passes() {
    let obs = observations((5000.0, 10.0, FAST), (45000.0, 90.0, FAST));
    let judgement = weigh_now(&obs, &RolloutEvidence::default(), 100.0);
    let Verdict::Pass { measurements } = &judgement.verdict else {
        panic!("{:#?}", judgement.verdict);
    };
    let metrics: Vec<&str> = measurements.iter().map(|m| m.metric.as_str()).collect();
    assert_eq!(
        metrics,
        [
            "request-count",
            "error-rate",
            "errors-vs-stable",
            "latency",
            "slower-than-100ms-vs-stable"
        ]
    );
    for m in &measurements[1..] {
        let e = m.evidence.as_ref().unwrap();
        assert!(e.for_canary >= e.pass_at && e.against < e.abort_at, "{m:?}");
    }
    // The baseline is chosen from this check's traffic, and the counts are returned for
    // the status to record.
    assert_eq!(judgement.baseline.map(|b| b.bound_ms), Some(100.0));
    let step = judgement.step.unwrap();
    assert_eq!(step.canary.requests, 5000.0);
    assert_eq!(step.canary.errors, 10.0);
    assert_eq!(step.canary.over_slo, 0.0);
    assert_eq!(step.stable.over_baseline, 2250.0);
}

#[test]
fn the_first_requests_of_a_step_await_evidence_and_say_how_much_more() {
    let obs = observations((60.0, 0.0, FAST), (540.0, 3.0, FAST));
    let judgement = weigh_now(&obs, &RolloutEvidence::default(), 3.2);
    let Verdict::Inconclusive { reason, detail, .. } = &judgement.verdict else {
        panic!("{:#?}", judgement.verdict);
    };
    assert_eq!(*reason, InconclusiveReason::AwaitingEvidence);
    assert!(detail.contains("evidence for the canary"), "{detail}");
}

#[test]
fn a_gross_failure_is_a_conclusive_fail_at_its_first_check() {
    // 15 s at 5 canary requests a second, one in five failing.
    let obs = observations((75.0, 15.0, FAST), (675.0, 1.0, FAST));
    let judgement = weigh_now(&obs, &RolloutEvidence::default(), 3.2);
    let Verdict::Fail {
        failed, conclusive, ..
    } = &judgement.verdict
    else {
        panic!("{:#?}", judgement.verdict);
    };
    assert!(*conclusive);
    assert!(failed.contains(&"error-rate".to_string()), "{failed:?}");
    assert!(
        failed.contains(&"errors-vs-stable".to_string()),
        "{failed:?}"
    );
}

#[test]
fn a_canary_twice_as_slow_as_stable_fails_on_latency() {
    let obs = observations((3000.0, 0.0, SLOW), (27000.0, 0.0, FAST));
    let judgement = weigh_now(&obs, &RolloutEvidence::default(), 3.2);
    let Verdict::Fail {
        failed, conclusive, ..
    } = &judgement.verdict
    else {
        panic!("{:#?}", judgement.verdict);
    };
    assert!(*conclusive);
    assert!(
        failed
            .iter()
            .any(|m| m.ends_with("-vs-stable") && m != "errors-vs-stable"),
        "{failed:?}"
    );
}

#[test]
fn earlier_steps_count_toward_the_evidence() {
    // Alone, this step's 60 requests say little; with the earlier steps' thousands, the
    // rollout has shown its health.
    let earlier = RolloutEvidence {
        steps: vec![
            weigh_now(
                &observations((5000.0, 10.0, FAST), (45000.0, 90.0, FAST)),
                &RolloutEvidence::default(),
                3.2,
            )
            .step
            .unwrap(),
        ],
        baseline: Some(LatencyBaseline::fitted(100.0, 25.0, 1.0, 0.5)),
    };
    let obs = observations((60.0, 0.0, FAST), (540.0, 1.0, FAST));
    assert!(matches!(
        weigh_now(&obs, &RolloutEvidence::default(), 100.0).verdict,
        Verdict::Inconclusive { .. }
    ));
    let judgement = weigh_now(&obs, &earlier, 100.0);
    assert!(
        matches!(judgement.verdict, Verdict::Pass { .. }),
        "{:#?}",
        judgement.verdict
    );
    // A baseline already chosen is kept, not chosen again.
    assert_eq!(judgement.baseline, None);
}

#[test]
fn too_few_requests_in_this_step_hold_it_whatever_the_evidence() {
    let earlier = RolloutEvidence {
        steps: vec![StepCounts {
            canary: Counts {
                requests: 20000.0,
                errors: 20.0,
                timed: 20000.0,
                over_half_slo: 10.0,
                over_baseline: 200.0,
                ..Counts::default()
            },
            stable: Counts {
                requests: 180000.0,
                errors: 180.0,
                timed: 180000.0,
                over_half_slo: 90.0,
                over_baseline: 1800.0,
                ..Counts::default()
            },
        }],
        baseline: Some(LatencyBaseline::fitted(100.0, 25.0, 1.0, 0.5)),
    };
    let obs = observations((20.0, 0.0, FAST), (180.0, 0.0, FAST));
    let Verdict::Inconclusive { reason, .. } = weigh_now(&obs, &earlier, 100.0).verdict else {
        panic!("expected inconclusive");
    };
    assert_eq!(reason, InconclusiveReason::TooFewRequests);
}

#[test]
fn no_canary_series_is_no_data() {
    let mut obs = observations((0.0, 0.0, FAST), (500.0, 0.0, FAST));
    obs.request_count = Ok(vec![Series::of_version(STABLE, 500.0)]);
    let Verdict::Inconclusive { reason, .. } =
        weigh_now(&obs, &RolloutEvidence::default(), 3.2).verdict
    else {
        panic!("expected inconclusive");
    };
    assert_eq!(reason, InconclusiveReason::NoData);
}

#[test]
fn evidence_against_the_canary_stands_when_another_query_failed() {
    let mut obs = observations((75.0, 15.0, FAST), (675.0, 1.0, FAST));
    obs.buckets = Some(Err(QueryFailure::Timeout("slow".into())));
    let verdict = weigh_now(&obs, &RolloutEvidence::default(), 3.2).verdict;
    assert!(
        matches!(
            verdict,
            Verdict::Fail {
                conclusive: true,
                ..
            }
        ),
        "{verdict:#?}"
    );
    // Without that evidence, the failed query makes the check inconclusive.
    let mut obs = observations((5000.0, 10.0, FAST), (45000.0, 90.0, FAST));
    obs.buckets = Some(Err(QueryFailure::Timeout("slow".into())));
    let Verdict::Inconclusive { reason, .. } =
        weigh_now(&obs, &RolloutEvidence::default(), 3.2).verdict
    else {
        panic!("expected inconclusive");
    };
    assert_eq!(reason, InconclusiveReason::QueryTimeout);
}

#[test]
fn a_custom_metric_miss_counts_toward_the_failure_limit() {
    let mut obs = observations((5000.0, 10.0, FAST), (45000.0, 90.0, FAST));
    obs.custom.push(CustomObservation {
        name: "queue-depth".into(),
        bound: TemplateBound::Max(Limit::Absolute(10.0)),
        canary: Ok(vec![Series::of_version(CANARY, 12.0)]),
        stable: Ok(vec![Series::of_version(STABLE, 3.0)]),
    });
    let Verdict::Fail {
        failed, conclusive, ..
    } = weigh_now(&obs, &RolloutEvidence::default(), 3.2).verdict
    else {
        panic!("expected a fail");
    };
    assert_eq!(failed, ["queue-depth"]);
    assert!(!conclusive);
}

#[test]
fn a_max_latency_above_every_bucket_is_a_misconfiguration() {
    let obs = observations((5000.0, 10.0, FAST), (45000.0, 90.0, FAST));
    let gates = Gates {
        max_latency: std::time::Duration::from_secs(60),
        ..gates()
    };
    let judgement = weigh(
        &obs,
        CANARY,
        STABLE,
        &gates,
        Standing {
            earlier: &RolloutEvidence::default(),
            pass_at: 3.2,
        },
    );
    let Verdict::Inconclusive { reason, detail, .. } = judgement.verdict else {
        panic!("expected inconclusive");
    };
    assert_eq!(reason, InconclusiveReason::Misconfigured);
    assert!(detail.contains("at most 10000ms"), "{detail}");
}

#[test]
fn the_quantile_is_read_as_prometheus_reads_it() {
    let h: Histogram = vec![(100.0, 50.0), (200.0, 100.0), (f64::INFINITY, 100.0)];
    assert_eq!(quantile(&h, 0.5), Some(100.0));
    assert_eq!(quantile(&h, 0.75), Some(150.0));
    let beyond: Histogram = vec![(100.0, 50.0), (f64::INFINITY, 100.0)];
    assert_eq!(quantile(&beyond, 0.99), Some(100.0));
    assert_eq!(quantile(&vec![(f64::INFINITY, 0.0)], 0.5), None);
}

#[test]
fn the_baseline_is_the_bucket_at_or_below_the_pooled_quantile() {
    let pooled: Histogram = vec![
        (100.0, 9500.0),
        (250.0, 9950.0),
        (500.0, 10000.0),
        (f64::INFINITY, 10000.0),
    ];
    // 5% above 100 ms, 0.5% above 250 ms: at least 1% above 100 ms.
    assert_eq!(choose_baseline(&pooled, 10000.0, 0.01), Some(100.0));
    assert_eq!(choose_baseline(&pooled, 10000.0, 0.005), Some(250.0));
    // Nothing slow at all: the smallest bound.
    assert_eq!(choose_baseline(&pooled, 10000.0, 0.5), Some(100.0));
}

#[test]
fn a_log_normal_is_fitted_to_the_buckets_not_to_interpolated_quantiles() {
    // Median 50 ms, p99 200 ms: 12.2% above 100 ms, 0.35% above 250 ms.
    let sigma = 4f64.ln() / 2.326_347_874;
    let cdf = |le: f64| 1.0 - crate::sequential::normal_tail((le / 50.0).ln() / sigma);
    let h: Histogram = BOUNDS
        .iter()
        .map(|&le| (le, 1e6 * cdf(le)))
        .chain([(f64::INFINITY, 1e6)])
        .collect();
    let (median, fitted) = fit_log_normal(&h).unwrap();
    assert!((median - 50.0).abs() < 1.0, "median {median}");
    assert!(
        (fitted - sigma).abs() < 0.01,
        "sigma {fitted} against {sigma}"
    );
    assert_eq!(
        fit_log_normal(&vec![(100.0, 10.0), (f64::INFINITY, 10.0)]),
        None
    );
}
