use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::custom::{Limit, TemplateBound};
use crate::gates::{Rule, SlowShare};

const CANARY: &str = "v2";
const STABLE: &str = "v1";

fn gates() -> Gates {
    Gates {
        max_error_rate: 0.01,
        max_latency: Duration::from_millis(500),
        latency_quantile: 0.99,
        min_requests: 50,
        error_codes: Default::default(),
        max_slow_share: None,
        rule: Rule::Threshold,
        tolerance: 0.5,
        confidence: 0.99,
    }
}

fn series(values: &[(&str, f64)]) -> QueryOutcome {
    Ok(values
        .iter()
        .map(|(v, x)| Series::of_version(v, *x))
        .collect())
}

fn observations(
    counts: &[(&str, f64)],
    errors: &[(&str, f64)],
    latencies: &[(&str, f64)],
) -> Observations {
    Observations {
        request_count: series(counts),
        error_count: series(errors),
        latency: series(latencies),
        buckets: None,
        custom: Vec::new(),
    }
}

/// Healthy canary and stable: 1000 and 9000 requests, 0.5% and 0.1% errors, 200 and 180 ms.
fn healthy() -> Observations {
    observations(
        &[(CANARY, 1000.0), (STABLE, 9000.0)],
        &[(CANARY, 5.0), (STABLE, 9.0)],
        &[(CANARY, 200.0), (STABLE, 180.0)],
    )
}

fn with(mut obs: Observations, change: impl FnOnce(&mut Observations)) -> Observations {
    change(&mut obs);
    obs
}

/// The verdict's kind with its reason or failed metrics, for table comparisons.
#[derive(Debug, PartialEq)]
enum Expect {
    Pass,
    Fail(Vec<String>),
    Inconclusive(InconclusiveReason),
}

fn fails(metrics: &[&str]) -> Expect {
    Expect::Fail(metrics.iter().map(|m| m.to_string()).collect())
}

fn summary(verdict: &Verdict) -> Expect {
    match verdict {
        Verdict::Pass { .. } => Expect::Pass,
        Verdict::Fail { failed, .. } => Expect::Fail(failed.clone()),
        Verdict::Inconclusive { reason, .. } => Expect::Inconclusive(*reason),
    }
}

fn error(detail: &str) -> QueryOutcome {
    Err(QueryFailure::Error(detail.to_string()))
}

#[test]
fn verdicts_follow_the_rules() {
    use InconclusiveReason::*;
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    let cases: Vec<(&str, Observations, Gates, Expect)> = vec![
        ("healthy canary passes", healthy(), gates(), Expect::Pass),
        (
            "error rate exactly at the bound passes",
            with(healthy(), |o| o.error_count = series(&[(CANARY, 10.0)])),
            gates(),
            Expect::Pass,
        ),
        (
            "one error over the bound fails",
            with(healthy(), |o| o.error_count = series(&[(CANARY, 11.0)])),
            gates(),
            fails(&["error-rate"]),
        ),
        (
            "error rate at a fractional percent bound passes exactly",
            with(healthy(), |o| {
                o.request_count = series(&[(CANARY, 200.0)]);
                o.error_count = series(&[(CANARY, 1.0)]);
            }),
            Gates {
                max_error_rate: 0.5 / 100.0,
                ..gates()
            },
            Expect::Pass,
        ),
        (
            "latency exactly at the bound passes",
            with(healthy(), |o| o.latency = series(&[(CANARY, 500.0)])),
            gates(),
            Expect::Pass,
        ),
        (
            "latency just over the bound fails",
            with(healthy(), |o| o.latency = series(&[(CANARY, 500.000_001)])),
            gates(),
            fails(&["latency"]),
        ),
        (
            "sub-millisecond latency bound is exact",
            with(healthy(), |o| o.latency = series(&[(CANARY, 0.25)])),
            Gates {
                max_latency: Duration::from_micros(250),
                ..gates()
            },
            Expect::Pass,
        ),
        (
            "both gates missed name both metrics",
            with(healthy(), |o| {
                o.error_count = series(&[(CANARY, 100.0)]);
                o.latency = series(&[(CANARY, 900.0)]);
            }),
            gates(),
            fails(&["error-rate", "latency"]),
        ),
        (
            "no errors series at all means zero errors",
            with(healthy(), |o| o.error_count = series(&[])),
            gates(),
            Expect::Pass,
        ),
        (
            "errors only for stable means zero canary errors",
            with(healthy(), |o| o.error_count = series(&[(STABLE, 5000.0)])),
            gates(),
            Expect::Pass,
        ),
        (
            "stable doing badly does not gate the canary",
            with(healthy(), |o| {
                o.error_count = series(&[(CANARY, 0.0), (STABLE, 9000.0)]);
                o.latency = series(&[(CANARY, 10.0), (STABLE, nan)]);
            }),
            gates(),
            Expect::Pass,
        ),
        (
            "series of other versions and unlabelled series are ignored",
            with(healthy(), |o| {
                o.request_count = Ok(vec![
                    Series::of_version(CANARY, 1000.0),
                    Series::of_version("v0", 1.0),
                    Series {
                        labels: Default::default(),
                        value: 3.0,
                    },
                ]);
                o.latency = series(&[(CANARY, 100.0), ("v3", 10_000.0)]);
            }),
            gates(),
            Expect::Pass,
        ),
        (
            "zero traffic: no series at all",
            observations(&[], &[], &[]),
            gates(),
            Expect::Inconclusive(NoData),
        ),
        (
            "no canary series, only stable",
            observations(&[(STABLE, 1000.0)], &[], &[(STABLE, 100.0)]),
            gates(),
            Expect::Inconclusive(NoData),
        ),
        (
            "canary series with zero requests",
            observations(&[(CANARY, 0.0), (STABLE, 10.0)], &[], &[(CANARY, nan)]),
            gates(),
            Expect::Inconclusive(NoData),
        ),
        (
            "zero requests are no data even when min-requests is 0",
            observations(&[(CANARY, 0.0)], &[], &[(CANARY, nan)]),
            Gates {
                min_requests: 0,
                ..gates()
            },
            Expect::Inconclusive(NoData),
        ),
        (
            "canary requests but no latency histogram",
            with(healthy(), |o| o.latency = series(&[(STABLE, 100.0)])),
            gates(),
            Expect::Inconclusive(NoData),
        ),
        (
            "10 requests with min-requests 50",
            with(healthy(), |o| {
                o.request_count = series(&[(CANARY, 10.0), (STABLE, 1000.0)])
            }),
            gates(),
            Expect::Inconclusive(TooFewRequests),
        ),
        (
            "too few requests never fail, however bad they look",
            observations(&[(CANARY, 10.0)], &[(CANARY, 9.0)], &[(CANARY, 9000.0)]),
            gates(),
            Expect::Inconclusive(TooFewRequests),
        ),
        (
            "just under min-requests",
            with(healthy(), |o| o.request_count = series(&[(CANARY, 49.999)])),
            gates(),
            Expect::Inconclusive(TooFewRequests),
        ),
        (
            "exactly min-requests is enough",
            with(healthy(), |o| {
                o.request_count = series(&[(CANARY, 50.0)]);
                o.error_count = series(&[]);
            }),
            gates(),
            Expect::Pass,
        ),
        (
            "latency NaN (quantile over zero rate)",
            with(healthy(), |o| o.latency = series(&[(CANARY, nan)])),
            gates(),
            Expect::Inconclusive(NotANumber),
        ),
        (
            "latency +Inf",
            with(healthy(), |o| o.latency = series(&[(CANARY, inf)])),
            gates(),
            Expect::Inconclusive(NotANumber),
        ),
        (
            "request count NaN",
            with(healthy(), |o| o.request_count = series(&[(CANARY, nan)])),
            gates(),
            Expect::Inconclusive(NotANumber),
        ),
        (
            "error count -Inf",
            with(healthy(), |o| o.error_count = series(&[(CANARY, -inf)])),
            gates(),
            Expect::Inconclusive(NotANumber),
        ),
        (
            "a sound error-rate failure wins over a NaN latency",
            with(healthy(), |o| {
                o.error_count = series(&[(CANARY, 50.0)]);
                o.latency = series(&[(CANARY, nan)]);
            }),
            gates(),
            fails(&["error-rate"]),
        ),
        (
            "a sound latency failure wins over a failed error query",
            with(healthy(), |o| {
                o.error_count = error("connection refused");
                o.latency = series(&[(CANARY, 501.0)]);
            }),
            gates(),
            fails(&["latency"]),
        ),
        (
            "no failure without a sound request count",
            with(healthy(), |o| {
                o.request_count = error("connection refused");
                o.error_count = series(&[(CANARY, 900.0)]);
                o.latency = series(&[(CANARY, 9000.0)]);
            }),
            gates(),
            Expect::Inconclusive(QueryError),
        ),
        (
            "a NaN bound is never met",
            healthy(),
            Gates {
                max_error_rate: nan,
                ..gates()
            },
            Expect::Inconclusive(NotANumber),
        ),
        (
            "request count query error",
            with(healthy(), |o| o.request_count = error("HTTP 503")),
            gates(),
            Expect::Inconclusive(QueryError),
        ),
        (
            "latency query timeout",
            with(healthy(), |o| {
                o.latency = Err(QueryFailure::Timeout("after 5s".to_string()))
            }),
            gates(),
            Expect::Inconclusive(QueryTimeout),
        ),
        (
            "a query error explains missing data first",
            Observations {
                request_count: series(&[]),
                error_count: error("HTTP 500"),
                latency: series(&[]),
                buckets: None,
                custom: Vec::new(),
            },
            gates(),
            Expect::Inconclusive(QueryError),
        ),
        (
            "several latency series for the canary",
            with(healthy(), |o| {
                o.latency = series(&[(CANARY, 100.0), (CANARY, 200.0)])
            }),
            gates(),
            Expect::Inconclusive(SeveralSeries),
        ),
        (
            "several request-count series for stable",
            with(healthy(), |o| {
                o.request_count = series(&[(CANARY, 1000.0), (STABLE, 1.0), (STABLE, 2.0)])
            }),
            gates(),
            Expect::Inconclusive(SeveralSeries),
        ),
        (
            "several series never hide a failure elsewhere",
            with(healthy(), |o| {
                o.error_count = series(&[(CANARY, 500.0)]);
                o.latency = series(&[(CANARY, 1.0), (CANARY, 2.0)]);
            }),
            gates(),
            fails(&["error-rate"]),
        ),
    ];
    for (name, obs, gates, expected) in cases {
        let verdict = judge(&obs, CANARY, STABLE, &gates);
        assert_eq!(summary(&verdict), expected, "{name}: {verdict:#?}");
    }
}

#[test]
fn pass_carries_every_measurement_with_its_bound() {
    let verdict = judge(&healthy(), CANARY, STABLE, &gates());
    assert_eq!(
        verdict,
        Verdict::Pass {
            measurements: vec![
                Measurement {
                    metric: "request-count".into(),
                    canary: Some(1000.0),
                    stable: Some(9000.0),
                    bound: Some(Bound::Min(50.0)),
                    evidence: None,
                },
                Measurement {
                    metric: "error-rate".into(),
                    canary: Some(0.005),
                    stable: Some(0.001),
                    bound: Some(Bound::Max(0.01)),
                    evidence: None,
                },
                Measurement {
                    metric: "latency".into(),
                    canary: Some(200.0),
                    stable: Some(180.0),
                    bound: Some(Bound::Max(500.0)),
                    evidence: None,
                },
            ]
        }
    );
}

#[test]
fn fail_names_the_metric_and_keeps_the_values() {
    let obs = with(healthy(), |o| {
        o.error_count = series(&[(CANARY, 11.0), (STABLE, 0.0)])
    });
    let Verdict::Fail {
        failed,
        measurements,
        ..
    } = judge(&obs, CANARY, STABLE, &gates())
    else {
        panic!("expected a failure");
    };
    assert_eq!(failed, ["error-rate"]);
    let rate = &measurements[1];
    assert_eq!((rate.canary, rate.stable), (Some(0.011), Some(0.0)));
}

#[test]
fn inconclusive_detail_says_what_is_missing() {
    let obs = with(healthy(), |o| {
        o.request_count = series(&[(CANARY, 10.0), (STABLE, 1000.0)]);
        o.latency = Err(QueryFailure::Error(
            "Prometheus at http://p/api/v1/query: HTTP 503".into(),
        ));
    });
    let Verdict::Inconclusive {
        reason,
        detail,
        measurements,
    } = judge(&obs, CANARY, STABLE, &gates())
    else {
        panic!("expected inconclusive");
    };
    assert_eq!(reason, InconclusiveReason::QueryError);
    assert!(
        detail.contains("latency: Prometheus at http://p/api/v1/query: HTTP 503"),
        "{detail}"
    );
    assert!(
        detail.contains("served 10 requests, fewer than min-requests 50"),
        "{detail}"
    );
    // What was measured is still shown.
    assert_eq!(measurements[0].canary, Some(10.0));
    assert_eq!(measurements[1].canary, Some(0.5));
    assert_eq!(measurements[2].canary, None);
}

#[test]
fn several_series_detail_lists_their_labels() {
    let obs = with(healthy(), |o| {
        o.latency = Ok(vec![
            Series {
                labels: [("destination_version", CANARY), ("pod", "a")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
                value: 1.0,
            },
            Series {
                labels: [("destination_version", CANARY), ("pod", "b")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
                value: 2.0,
            },
        ])
    });
    let Verdict::Inconclusive { detail, .. } = judge(&obs, CANARY, STABLE, &gates()) else {
        panic!("expected inconclusive");
    };
    assert!(detail.contains("2 series for canary v2"), "{detail}");
    assert!(
        detail.contains(r#""pod": "a""#) && detail.contains(r#""pod": "b""#),
        "{detail}"
    );
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(0.0),
        4 => (0u32..3).prop_map(f64::from),
        4 => (0u32..200).prop_map(f64::from),
        4 => 0.0..2000.0,
    ]
}

/// Mostly one series per version, as the built-in queries return; sometimes any shape.
fn outcome() -> impl Strategy<Value = QueryOutcome> {
    let version = prop_oneof![Just(CANARY), Just(STABLE), Just("v0")];
    let one = (version, value()).prop_map(|(v, x)| Series::of_version(v, x));
    let well_formed = (value(), value()).prop_map(|(canary, stable)| {
        Ok(vec![
            Series::of_version(CANARY, canary),
            Series::of_version(STABLE, stable),
        ])
    });
    prop_oneof![
        1 => Just(Err(QueryFailure::Error("refused".into()))),
        1 => Just(Err(QueryFailure::Timeout("slow".into()))),
        4 => prop::collection::vec(one, 0..4).prop_map(Ok),
        12 => well_formed,
    ]
}

fn any_gates() -> impl Strategy<Value = Gates> {
    let max_error_rate = prop_oneof![9 => 0.0..0.2f64, 1 => Just(f64::NAN)];
    (max_error_rate, 1u64..1000, 0u64..100).prop_map(|(max_error_rate, ms, min_requests)| Gates {
        max_error_rate,
        max_latency: Duration::from_millis(ms),
        latency_quantile: 0.99,
        min_requests,
        error_codes: Default::default(),
        max_slow_share: None,
        rule: Rule::Threshold,
        tolerance: 0.5,
        confidence: 0.99,
    })
}

/// Bucket counts for both versions: cumulative, sometimes not, sometimes malformed.
fn bucket_outcome() -> impl Strategy<Value = QueryOutcome> {
    let le = prop_oneof![
        Just("100"),
        Just("250"),
        Just("250.0"),
        Just("500"),
        Just("+Inf"),
        Just("x")
    ];
    let one = (prop_oneof![Just(CANARY), Just(STABLE)], le, value())
        .prop_map(|(v, le, n)| histogram(v, &[(le, n)]).remove(0));
    let cumulative = (0.0..1000.0f64, 0.0..1.0f64, 0.0..1.0f64).prop_map(|(total, a, b)| {
        let (low, high) = (a.min(b) * total, a.max(b) * total);
        let mut buckets = histogram(CANARY, &[("100", low), ("250", high), ("+Inf", total)]);
        buckets.extend(histogram(
            STABLE,
            &[("100", 1.0), ("250", 2.0), ("+Inf", 3.0)],
        ));
        Ok(buckets)
    });
    prop_oneof![
        1 => Just(Err(QueryFailure::Refused("refused".into()))),
        3 => prop::collection::vec(one, 0..6).prop_map(Ok),
        6 => cumulative,
    ]
}

fn any_custom() -> impl Strategy<Value = CustomObservation> {
    let limit = prop_oneof![
        (0.0..100.0f64).prop_map(Limit::Absolute),
        (0.1..3.0f64, -1.0..1.0f64)
            .prop_map(|(factor, offset)| Limit::RelativeToStable { factor, offset }),
    ];
    let bound = (any::<bool>(), limit).prop_map(|(max, limit)| {
        if max {
            TemplateBound::Max(limit)
        } else {
            TemplateBound::Min(limit)
        }
    });
    let single_outcome = || {
        prop_oneof![
            1 => Just(Err(QueryFailure::Timeout("slow".into()))),
            1 => Just(Ok(vec![])),
            1 => Just(Ok(vec![Series::of_version("a", 1.0), Series::of_version("b", 1.0)])),
            6 => value().prop_map(single),
        ]
    };
    (Just("custom"), bound, single_outcome(), single_outcome()).prop_map(
        |(name, bound, canary, stable)| CustomObservation {
            name: name.into(),
            bound,
            canary,
            stable,
        },
    )
}

fn within(value: f64, bound: &Bound) -> bool {
    match bound {
        Bound::Max(max) => value <= *max,
        Bound::Min(min) => value >= *min,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn pass_means_every_gate_measured_and_met(
        request_count in outcome(),
        error_count in outcome(),
        latency in outcome(),
        gates in any_gates(),
        slow in prop::option::of((1u64..600, 0.0..0.5f64, bucket_outcome())),
        custom in prop::collection::vec(any_custom(), 0..3),
    ) {
        let gates = Gates {
            max_slow_share: slow.as_ref().map(|(ms, share, _)| SlowShare {
                threshold: Duration::from_millis(*ms),
                max_share: *share,
            }),
            ..gates
        };
        let obs = Observations {
            request_count,
            error_count,
            latency,
            buckets: slow.map(|(_, _, outcome)| outcome),
            // Names are ConfigMap keys: unique.
            custom: custom
                .into_iter()
                .enumerate()
                .map(|(i, c)| CustomObservation { name: format!("custom-{i}"), ..c })
                .collect(),
        };
        let verdict = judge(&obs, CANARY, STABLE, &gates);
        for m in verdict.measurements() {
            prop_assert!(m.canary.is_none_or(f64::is_finite), "{m:?}");
            prop_assert!(m.stable.is_none_or(f64::is_finite), "{m:?}");
        }
        let gate_count = 3 + usize::from(obs.buckets.is_some()) + obs.custom.len();
        prop_assert_eq!(verdict.measurements().len(), gate_count);
        let value = |metric: &str| verdict.measurements().iter().find(|m| m.metric == metric).and_then(|m| m.canary);
        let requests = value("request-count");
        match &verdict {
            Verdict::Pass { measurements } => {
                for m in measurements {
                    let v = m.canary;
                    prop_assert!(v.is_some(), "{m:?}");
                    let v = v.unwrap();
                    match &m.bound {
                        Some(bound @ Bound::Max(_)) => prop_assert!(within(v, bound), "{m:?}"),
                        Some(bound @ Bound::Min(_)) => prop_assert!(within(v, bound), "{m:?}"),
                        None => prop_assert!(false, "a gate without bound: {m:?}"),
                    }
                }
                prop_assert!(requests.is_some_and(|r| r > 0.0));
                // The inputs agree: exactly one finite canary series in every query but errors.
                for outcome in [&obs.request_count, &obs.latency] {
                    let canary: Vec<_> = outcome.as_ref().unwrap().iter().filter(|s| s.version() == Some(CANARY)).collect();
                    prop_assert_eq!(canary.len(), 1);
                    prop_assert!(canary[0].value.is_finite());
                }
                for c in &obs.custom {
                    prop_assert!(matches!(&c.canary, Ok(s) if s.len() == 1 && s[0].value.is_finite()));
                    prop_assert!(matches!(&c.stable, Ok(s) if s.len() <= 1));
                }
            }
            Verdict::Fail { failed, measurements, .. } => {
                prop_assert!(!failed.is_empty());
                prop_assert!(requests.is_some_and(|r| r > 0.0 && r >= gates.min_requests as f64));
                for metric in failed {
                    let m = measurements.iter().find(|m| &m.metric == metric).unwrap();
                    let bound = m.bound.as_ref().unwrap();
                    prop_assert!(m.canary.is_some_and(|v| !within(v, bound)), "{m:?}");
                }
            }
            Verdict::Inconclusive { detail, .. } => prop_assert!(!detail.is_empty()),
        }
    }
}

#[test]
fn one_cause_of_several_failures_is_told_once() {
    let refused = || error("http://p/api/v1/query: connection refused (after 4 attempts)");
    let obs = Observations {
        request_count: refused(),
        error_count: refused(),
        latency: Err(QueryFailure::Timeout(
            "http://p/api/v1/query: no answer within 5.0s".into(),
        )),
        buckets: None,
        custom: Vec::new(),
    };
    let Verdict::Inconclusive { reason, detail, .. } = judge(&obs, CANARY, STABLE, &gates()) else {
        panic!("expected inconclusive");
    };
    assert_eq!(reason, InconclusiveReason::QueryError);
    assert_eq!(
        detail,
        "request-count, error-rate: http://p/api/v1/query: connection refused (after 4 attempts); \
         latency: http://p/api/v1/query: no answer within 5.0s"
    );
}

/// Cumulative bucket counts for one version, `le` written as given.
fn histogram(version: &str, buckets: &[(&str, f64)]) -> Vec<Series> {
    buckets
        .iter()
        .map(|(le, n)| Series {
            labels: [(VERSION_LABEL, version), ("le", le)]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            value: *n,
        })
        .collect()
}

fn slow_gates(threshold_ms: u64, max_share: f64) -> Gates {
    Gates {
        max_slow_share: Some(SlowShare {
            threshold: Duration::from_millis(threshold_ms),
            max_share,
        }),
        ..gates()
    }
}

/// Canary: 1000 requests, 960 within 250 ms, 990 within 500 ms. Stable: 9000 requests,
/// 8910 within 250 ms.
fn with_buckets() -> Observations {
    let mut buckets = histogram(
        CANARY,
        &[
            ("100", 500.0),
            ("250", 960.0),
            ("500", 990.0),
            ("+Inf", 1000.0),
        ],
    );
    buckets.extend(histogram(
        STABLE,
        &[
            ("100", 8000.0),
            ("250", 8910.0),
            ("500", 9000.0),
            ("+Inf", 9000.0),
        ],
    ));
    with(healthy(), |o| o.buckets = Some(Ok(buckets)))
}

fn slow(verdict: &Verdict) -> &Measurement {
    verdict
        .measurements()
        .iter()
        .find(|m| m.metric.starts_with(SLOW_SHARE_PREFIX))
        .unwrap_or_else(|| panic!("no slow share in {verdict:?}"))
}

#[test]
fn slow_share_is_read_at_the_bucket_at_or_above_the_threshold() {
    use InconclusiveReason::*;
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-12);
    // (threshold ms, max share, expected verdict, metric, canary share, stable share)
    let cases = [
        (250, 0.04, Expect::Pass, "slower-than-250ms", 0.04, 0.01),
        (
            250,
            0.039,
            fails(&["slower-than-250ms"]),
            "slower-than-250ms",
            0.04,
            0.01,
        ),
        (300, 0.01, Expect::Pass, "slower-than-500ms", 0.01, 0.0),
        (
            500,
            0.009,
            fails(&["slower-than-500ms"]),
            "slower-than-500ms",
            0.01,
            0.0,
        ),
        (101, 0.05, Expect::Pass, "slower-than-250ms", 0.04, 0.01),
        (
            1,
            0.5,
            Expect::Pass,
            "slower-than-100ms",
            0.5,
            1000.0 / 9000.0,
        ),
    ];
    for (threshold, max_share, expected, metric, canary, stable) in cases {
        let verdict = judge(
            &with_buckets(),
            CANARY,
            STABLE,
            &slow_gates(threshold, max_share),
        );
        assert_eq!(summary(&verdict), expected, "{threshold}ms: {verdict:#?}");
        let m = slow(&verdict);
        assert_eq!(m.metric, metric);
        assert!(close(m.canary, canary), "{threshold}ms canary: {m:?}");
        assert!(close(m.stable, stable), "{threshold}ms stable: {m:?}");
        assert_eq!(m.bound, Some(Bound::Max(max_share)));
    }

    let verdict = judge(&with_buckets(), CANARY, STABLE, &slow_gates(600, 0.5));
    let Verdict::Inconclusive { reason, detail, .. } = &verdict else {
        panic!("{verdict:#?}");
    };
    assert_eq!(*reason, Misconfigured);
    assert!(
        detail.contains(
            "slower-than-600ms: the threshold 600ms is above the largest latency bucket bound 500ms: \
             choose a threshold of at most 500ms"
        ),
        "{detail}"
    );
}

#[test]
fn slow_share_adds_up_buckets_written_250_and_250_point_0() {
    // An exposition-format change inside the window leaves the same bucket under two
    // spellings; together they are the bucket.
    let mut buckets = histogram(CANARY, &[("250", 900.0), ("+Inf", 950.0)]);
    buckets.extend(histogram(CANARY, &[("250.0", 40.0), ("+Inf", 50.0)]));
    let obs = with(healthy(), |o| o.buckets = Some(Ok(buckets)));
    let verdict = judge(&obs, CANARY, STABLE, &slow_gates(250, 0.06));
    assert_eq!(summary(&verdict), Expect::Pass, "{verdict:#?}");
    assert_eq!(slow(&verdict).canary, Some(60.0 / 1000.0));
    assert_eq!(slow(&verdict).stable, None);
}

#[test]
fn slow_share_without_evidence_is_inconclusive() {
    use InconclusiveReason::*;
    let nan = f64::NAN;
    let cases: Vec<(&str, QueryOutcome, Expect)> = vec![
        (
            "no buckets at all",
            Ok(vec![]),
            Expect::Inconclusive(NoData),
        ),
        (
            "only the stable's buckets",
            Ok(histogram(STABLE, &[("250", 1.0), ("+Inf", 1.0)])),
            Expect::Inconclusive(NoData),
        ),
        (
            "no +Inf bucket",
            Ok(histogram(CANARY, &[("250", 1.0), ("500", 1.0)])),
            Expect::Inconclusive(NoData),
        ),
        (
            "zero requests in the histogram",
            Ok(histogram(CANARY, &[("250", 0.0), ("+Inf", 0.0)])),
            Expect::Inconclusive(NotANumber),
        ),
        (
            "a NaN bucket",
            Ok(histogram(CANARY, &[("250", nan), ("+Inf", 10.0)])),
            Expect::Inconclusive(NotANumber),
        ),
        (
            "a bucket without a numeric le",
            Ok(histogram(CANARY, &[("fast", 1.0), ("+Inf", 10.0)])),
            Expect::Inconclusive(NotANumber),
        ),
        (
            "only +Inf",
            Ok(histogram(CANARY, &[("+Inf", 10.0)])),
            Expect::Inconclusive(Misconfigured),
        ),
        (
            "the bucket query refused",
            Err(QueryFailure::Refused("HTTP 400".into())),
            Expect::Inconclusive(Misconfigured),
        ),
        (
            "the bucket query timed out",
            Err(QueryFailure::Timeout("5s".into())),
            Expect::Inconclusive(QueryTimeout),
        ),
    ];
    for (name, outcome, expected) in cases {
        let obs = with(healthy(), |o| o.buckets = Some(outcome));
        let verdict = judge(&obs, CANARY, STABLE, &slow_gates(250, 0.05));
        assert_eq!(summary(&verdict), expected, "{name}: {verdict:#?}");
        assert_eq!(verdict.measurements().len(), 4, "{name}");
    }
}

fn custom(bound: TemplateBound, canary: QueryOutcome, stable: QueryOutcome) -> CustomObservation {
    CustomObservation {
        name: "queue-depth".into(),
        bound,
        canary,
        stable,
    }
}

fn single(value: f64) -> QueryOutcome {
    Ok(vec![Series {
        labels: Default::default(),
        value,
    }])
}

#[test]
fn custom_metrics_are_held_to_absolute_and_relative_bounds() {
    use InconclusiveReason::*;
    let max = |v| TemplateBound::Max(Limit::Absolute(v));
    let min = |v| TemplateBound::Min(Limit::Absolute(v));
    let times = |factor, offset| TemplateBound::Max(Limit::RelativeToStable { factor, offset });
    let nan = f64::NAN;
    let two = Ok(vec![
        Series::of_version("a", 1.0),
        Series::of_version("b", 2.0),
    ]);
    let cases: Vec<(&str, CustomObservation, Expect, Option<Bound>)> = vec![
        (
            "under an absolute max",
            custom(max(5.0), single(5.0), single(50.0)),
            Expect::Pass,
            Some(Bound::Max(5.0)),
        ),
        (
            "over an absolute max",
            custom(max(5.0), single(5.5), single(1.0)),
            fails(&["queue-depth"]),
            Some(Bound::Max(5.0)),
        ),
        (
            "under an absolute min",
            custom(min(5.0), single(4.0), single(1.0)),
            fails(&["queue-depth"]),
            Some(Bound::Min(5.0)),
        ),
        (
            "absolute bound, no stable",
            custom(max(5.0), single(1.0), Ok(vec![])),
            Expect::Pass,
            Some(Bound::Max(5.0)),
        ),
        (
            "absolute bound, NaN stable",
            custom(max(5.0), single(1.0), single(nan)),
            Expect::Pass,
            Some(Bound::Max(5.0)),
        ),
        (
            "at stable × 1.2",
            custom(times(1.2, 0.0), single(12.0), single(10.0)),
            Expect::Pass,
            Some(Bound::Max(12.0)),
        ),
        (
            "over stable × 1.2",
            custom(times(1.2, 0.0), single(12.001), single(10.0)),
            fails(&["queue-depth"]),
            Some(Bound::Max(12.0)),
        ),
        (
            "stable 0 with slack",
            custom(times(1.2, 0.5), single(0.5), single(0.0)),
            Expect::Pass,
            Some(Bound::Max(0.5)),
        ),
        (
            "relative bound, no stable",
            custom(times(1.2, 0.0), single(1.0), Ok(vec![])),
            Expect::Inconclusive(NoData),
            None,
        ),
        (
            "relative bound, NaN stable",
            custom(times(1.2, 0.0), single(1.0), single(nan)),
            Expect::Inconclusive(NotANumber),
            None,
        ),
        (
            "NaN canary",
            custom(max(5.0), single(nan), single(1.0)),
            Expect::Inconclusive(NotANumber),
            Some(Bound::Max(5.0)),
        ),
        (
            "no canary series",
            custom(max(5.0), Ok(vec![]), single(1.0)),
            Expect::Inconclusive(NoData),
            Some(Bound::Max(5.0)),
        ),
        (
            "two canary series",
            custom(max(5.0), two.clone(), single(1.0)),
            Expect::Inconclusive(SeveralSeries),
            Some(Bound::Max(5.0)),
        ),
        (
            "two stable series",
            custom(max(5.0), single(1.0), two),
            Expect::Inconclusive(SeveralSeries),
            Some(Bound::Max(5.0)),
        ),
        (
            "refused",
            custom(
                max(5.0),
                Err(QueryFailure::Refused("bad_data".into())),
                single(1.0),
            ),
            Expect::Inconclusive(Misconfigured),
            Some(Bound::Max(5.0)),
        ),
        (
            "stable query error, relative",
            custom(times(1.0, 0.0), single(1.0), error("HTTP 503")),
            Expect::Inconclusive(QueryError),
            None,
        ),
    ];
    for (name, observation, expected, bound) in cases {
        let obs = with(healthy(), |o| o.custom = vec![observation]);
        let verdict = judge(&obs, CANARY, STABLE, &gates());
        assert_eq!(summary(&verdict), expected, "{name}: {verdict:#?}");
        let m = verdict.measurements().last().unwrap();
        assert_eq!(m.metric, "queue-depth", "{name}");
        assert_eq!(m.bound, bound, "{name}");
        assert!(m.canary.is_none_or(f64::is_finite) && m.stable.is_none_or(f64::is_finite));
    }
}

#[test]
fn custom_failures_need_enough_requests_and_name_every_metric() {
    let bad = || {
        custom(
            TemplateBound::Max(Limit::Absolute(1.0)),
            single(2.0),
            single(0.0),
        )
    };
    let few = with(healthy(), |o| {
        o.request_count = series(&[(CANARY, 10.0)]);
        o.custom = vec![bad()];
    });
    assert_eq!(
        summary(&judge(&few, CANARY, STABLE, &gates())),
        Expect::Inconclusive(InconclusiveReason::TooFewRequests)
    );
    let many = with(healthy(), |o| {
        o.latency = series(&[(CANARY, 900.0)]);
        o.custom = vec![
            bad(),
            CustomObservation {
                name: "other".into(),
                ..bad()
            },
        ];
    });
    assert_eq!(
        summary(&judge(&many, CANARY, STABLE, &gates())),
        fails(&["latency", "queue-depth", "other"])
    );
}

#[test]
fn a_refused_query_is_a_misconfiguration_and_says_so() {
    let obs = with(healthy(), |o| {
        o.request_count = Err(QueryFailure::Refused(
            "http://p/api/v1/query refused the query (HTTP 401)".into(),
        ));
        o.latency = error("connection refused");
    });
    let Verdict::Inconclusive { reason, detail, .. } = judge(&obs, CANARY, STABLE, &gates()) else {
        panic!("expected inconclusive");
    };
    assert_eq!(reason, InconclusiveReason::Misconfigured);
    assert!(
        detail.starts_with("request-count: http://p/api/v1/query refused"),
        "{detail}"
    );
}

/// Issue 11: a custom metric whose two queries Prometheus refused alike was named twice
/// ("broken-ratio, broken-ratio: …"), and the hint spoke of credentials.
#[test]
fn a_custom_metric_refused_for_both_versions_is_named_once() {
    let refused = || {
        Err(QueryFailure::Refused(
            "http://p/api/v1/query refused the query: bad_data: parse error; fix the query".into(),
        ))
    };
    let obs = with(healthy(), |o| {
        o.custom = vec![CustomObservation {
            name: "broken-ratio".into(),
            ..custom(
                TemplateBound::Max(Limit::Absolute(0.1)),
                refused(),
                refused(),
            )
        }];
    });
    let Verdict::Inconclusive { reason, detail, .. } = judge(&obs, CANARY, STABLE, &gates()) else {
        panic!("expected inconclusive");
    };
    assert_eq!(reason, InconclusiveReason::Misconfigured);
    assert_eq!(
        detail,
        "broken-ratio: http://p/api/v1/query refused the query: bad_data: parse error; fix the query"
    );
}
