use std::time::Duration;

use proptest::prelude::*;

use super::*;

const CANARY: &str = "v2";
const STABLE: &str = "v1";

fn gates() -> Gates {
    Gates {
        max_error_rate: 0.01,
        max_latency: Duration::from_millis(500),
        latency_quantile: 0.99,
        min_requests: 50,
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
                },
                Measurement {
                    metric: "error-rate".into(),
                    canary: Some(0.005),
                    stable: Some(0.001),
                    bound: Some(Bound::Max(0.01)),
                },
                Measurement {
                    metric: "latency".into(),
                    canary: Some(200.0),
                    stable: Some(180.0),
                    bound: Some(Bound::Max(500.0)),
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
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn pass_means_every_gate_measured_and_met(
        request_count in outcome(),
        error_count in outcome(),
        latency in outcome(),
        gates in any_gates(),
    ) {
        let obs = Observations { request_count, error_count, latency };
        let verdict = judge(&obs, CANARY, STABLE, &gates);
        for m in verdict.measurements() {
            prop_assert!(m.canary.is_none_or(f64::is_finite), "{m:?}");
            prop_assert!(m.stable.is_none_or(f64::is_finite), "{m:?}");
        }
        let value = |metric: &str| verdict.measurements().iter().find(|m| m.metric == metric).and_then(|m| m.canary);
        let requests = value("request-count");
        match &verdict {
            Verdict::Pass { measurements } => {
                prop_assert_eq!(measurements.len(), 3);
                for m in measurements {
                    let v = m.canary;
                    prop_assert!(v.is_some(), "{m:?}");
                    let v = v.unwrap();
                    match m.bound {
                        Some(Bound::Max(max)) => prop_assert!(v <= max, "{m:?}"),
                        Some(Bound::Min(min)) => prop_assert!(v >= min && v > 0.0, "{m:?}"),
                        None => prop_assert!(false, "a gate without bound: {m:?}"),
                    }
                }
                // The inputs agree: exactly one finite canary series in every query but errors.
                for outcome in [&obs.request_count, &obs.latency] {
                    let canary: Vec<_> = outcome.as_ref().unwrap().iter().filter(|s| s.version() == Some(CANARY)).collect();
                    prop_assert_eq!(canary.len(), 1);
                    prop_assert!(canary[0].value.is_finite());
                }
            }
            Verdict::Fail { failed, measurements } => {
                prop_assert!(!failed.is_empty());
                prop_assert!(requests.is_some_and(|r| r > 0.0 && r >= gates.min_requests as f64));
                for metric in failed {
                    let m = measurements.iter().find(|m| &m.metric == metric).unwrap();
                    let Some(Bound::Max(max)) = m.bound else { panic!("{m:?}") };
                    prop_assert!(m.canary.is_some_and(|v| v > max), "{m:?}");
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
