use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn parse_pairs(pairs: &[(&str, &str)]) -> Result<RolloutSpec, SpecErrors> {
    parse("checkout", &annotations(pairs), &Defaults::default())
}

fn spec_with(pairs: &[(&str, &str)]) -> RolloutSpec {
    let mut all = vec![(keys::ENABLED, "true")];
    all.extend_from_slice(pairs);
    parse_pairs(&all).unwrap_or_else(|errors| panic!("{pairs:?} should parse:\n{errors}"))
}

#[test]
fn absent_annotations_take_the_defaults() {
    let spec = spec_with(&[]);
    let defaults = Defaults::default();
    assert_eq!(
        spec,
        RolloutSpec {
            service: "checkout".into(),
            virtual_service: None,
            http_route: None,
            route: None,
            destination_rule: None,
            stable_subset: "stable".into(),
            canary_subset: "canary".into(),
            split_services: None,
            version_label: "version".into(),
            steps: vec![10, 25, 50],
            step_interval: Duration::from_secs(60),
            check_interval: Duration::from_secs(15),
            gates: defaults.gates.clone(),
            failure_limit: 2,
            no_data_timeout: Duration::from_secs(600),
            decision_timeout: Duration::from_secs(7200),
            metrics_config_map: None,
            scale_down_delay: Some(Duration::from_secs(30)),
        }
    );
    assert_eq!(defaults.gates.max_error_rate, 0.01);
    assert_eq!(defaults.gates.max_latency, Duration::from_millis(500));
    assert_eq!(defaults.gates.latency_quantile, 0.99);
    assert_eq!(defaults.gates.min_requests, 50);
    assert_eq!(defaults.gates.error_codes.as_str(), "5..");
    assert_eq!(defaults.gates.max_slow_share, None);
}

#[test]
fn defaults_come_from_the_agent_not_from_constants() {
    let defaults = Defaults {
        stable_subset: "primary".into(),
        canary_subset: "candidate".into(),
        steps: vec![5, 50],
        failure_limit: 7,
        ..Defaults::default()
    };
    let spec = parse("web", &annotations(&[(keys::ENABLED, "true")]), &defaults).unwrap();
    assert_eq!(spec.service, "web");
    assert_eq!(spec.stable_subset, "primary");
    assert_eq!(spec.canary_subset, "candidate");
    assert_eq!(spec.steps, vec![5, 50]);
    assert_eq!(spec.failure_limit, 7);
}

fn agent_with_slow_share(max_share: f64, threshold_ms: u64) -> Defaults {
    let mut defaults = Defaults::default();
    defaults.gates.error_codes = "5..|429".parse().unwrap();
    defaults.gates.max_slow_share = Some(SlowShare {
        threshold: Duration::from_millis(threshold_ms),
        max_share,
    });
    defaults
}

#[test]
fn the_agent_can_set_error_codes_and_turn_the_slow_share_gate_on() {
    let defaults = agent_with_slow_share(0.05, 250);
    let spec = parse("web", &annotations(&[(keys::ENABLED, "true")]), &defaults).unwrap();
    assert_eq!(spec.gates, defaults.gates);
    assert_eq!(spec.gates.error_codes.as_str(), "5..|429");

    // Annotations override the agent's gate, each half on its own.
    let read = |pairs: &[(&str, &str)]| {
        parse("web", &annotations(pairs), &defaults)
            .unwrap_or_else(|errors| panic!("{pairs:?}:\n{errors}"))
            .gates
    };
    let gates = read(&[(keys::ERROR_CODES, "50[0-4]")]);
    assert_eq!(gates.error_codes.as_str(), "50[0-4]");
    assert_eq!(gates.max_slow_share, defaults.gates.max_slow_share);
    let gates = read(&[(keys::MAX_SLOW_SHARE, "1%")]);
    assert_eq!(
        gates.max_slow_share,
        Some(SlowShare {
            threshold: Duration::from_millis(250),
            max_share: 0.01
        })
    );
    let gates = read(&[(keys::SLOW_THRESHOLD, "1s")]);
    assert_eq!(
        gates.max_slow_share,
        Some(SlowShare {
            threshold: Duration::from_secs(1),
            max_share: 0.05
        })
    );
    let gates = read(&[
        (keys::SLOW_THRESHOLD, "100ms"),
        (keys::MAX_SLOW_SHARE, "0%"),
    ]);
    assert_eq!(
        gates.max_slow_share,
        Some(SlowShare {
            threshold: Duration::from_millis(100),
            max_share: 0.0
        })
    );
}

#[test]
fn two_split_services_make_a_host_level_split() {
    let spec = spec_with(&[
        (keys::STABLE_SERVICE, "checkout-stable"),
        (keys::CANARY_SERVICE, "checkout-canary"),
    ]);
    assert_eq!(
        spec.split_services,
        Some(SplitServices {
            stable: "checkout-stable".into(),
            canary: "checkout-canary".into()
        })
    );
    assert_eq!(
        spec.reported_services(),
        ("checkout-stable".into(), "checkout-canary".into())
    );
    let subsets = spec_with(&[]);
    assert_eq!(subsets.split_services, None);
    assert_eq!(
        subsets.reported_services(),
        ("checkout".into(), "checkout".into())
    );
}

#[test]
fn half_a_slow_share_gate_names_the_missing_half() {
    let errors = parse_pairs(&[(keys::ENABLED, "true"), (keys::MAX_SLOW_SHARE, "5%")]).unwrap_err();
    assert_eq!(
        errors.to_string(),
        r#"weir.dev/max-slow-share: "5%" is not valid: it needs weir.dev/slow-threshold as well: the slow-share gate is on only with both, and the agent sets no default for weir.dev/slow-threshold; for example weir.dev/slow-threshold: "250ms""#
    );
    let errors = parse_pairs(&[(keys::SLOW_THRESHOLD, "300ms")]).unwrap_err();
    let error = errors.get(keys::SLOW_THRESHOLD).unwrap();
    assert!(
        error.problem.contains("needs weir.dev/max-slow-share"),
        "{error}"
    );
    assert_eq!(error.example, keys::example(keys::MAX_SLOW_SHARE));
    // A bad partner is reported for itself, not as missing.
    let errors =
        parse_pairs(&[(keys::MAX_SLOW_SHARE, "5%"), (keys::SLOW_THRESHOLD, "soon")]).unwrap_err();
    assert_eq!(errors.as_slice().len(), 1, "{errors}");
    assert!(errors.get(keys::SLOW_THRESHOLD).is_some(), "{errors}");
}

#[test]
fn every_annotation_set_is_read() {
    let spec = spec_with(&[
        (keys::VIRTUAL_SERVICE, "checkout-vs"),
        (keys::ROUTE, "primary"),
        (keys::DESTINATION_RULE, "checkout.dr"),
        (keys::STABLE_SUBSET, "blue"),
        (keys::CANARY_SUBSET, "green"),
        (keys::VERSION_LABEL, "app.kubernetes.io/version"),
        (keys::STEPS, "5, 20,60 ,100"),
        (keys::STEP_INTERVAL, "1h30m"),
        (keys::CHECK_INTERVAL, "30s"),
        (keys::MAX_ERROR_RATE, "0.5%"),
        (keys::ERROR_CODES, "5..|429"),
        (keys::MAX_LATENCY, "250ms"),
        (keys::LATENCY_QUANTILE, "0.95"),
        (keys::MAX_SLOW_SHARE, "5%"),
        (keys::SLOW_THRESHOLD, "300ms"),
        (keys::MIN_REQUESTS, "0"),
        (keys::FAILURE_LIMIT, "1"),
        (keys::NO_DATA_TIMEOUT, "20m"),
        (keys::ANALYSIS, "Threshold"),
        (keys::TOLERANCE, "25%"),
        (keys::CONFIDENCE, "99.9%"),
        (keys::DECISION_TIMEOUT, "2h"),
        (keys::METRICS, "checkout-metrics"),
        (keys::SCALE_DOWN_DELAY, "Never"),
    ]);
    assert_eq!(
        spec,
        RolloutSpec {
            service: "checkout".into(),
            virtual_service: Some("checkout-vs".into()),
            http_route: None,
            route: Some("primary".into()),
            destination_rule: Some("checkout.dr".into()),
            stable_subset: "blue".into(),
            canary_subset: "green".into(),
            split_services: None,
            version_label: "app.kubernetes.io/version".into(),
            steps: vec![5, 20, 60, 100],
            step_interval: Duration::from_secs(5400),
            check_interval: Duration::from_secs(30),
            gates: Gates {
                max_error_rate: 0.005,
                max_latency: Duration::from_millis(250),
                latency_quantile: 0.95,
                min_requests: 0,
                error_codes: "5..|429".parse().unwrap(),
                max_slow_share: Some(SlowShare {
                    threshold: Duration::from_millis(300),
                    max_share: 0.05,
                }),
                rule: weir_analysis::Rule::Threshold,
                tolerance: 0.25,
                confidence: 0.999,
            },
            failure_limit: 1,
            no_data_timeout: Duration::from_secs(1200),
            decision_timeout: Duration::from_secs(7200),
            metrics_config_map: Some("checkout-metrics".into()),
            scale_down_delay: None,
        }
    );
}

#[test]
fn valid_forms_of_each_value() {
    let durations: &[(&str, u64)] = &[
        ("30s", 30_000),
        ("1m", 60_000),
        ("1h30m", 5_400_000),
        ("1h 30m", 5_400_000),
        (" 2m ", 120_000),
        ("1s", 1_000),
        ("1500ms", 1_500),
        ("24h", 86_400_000),
        ("1d", 86_400_000),
        ("90 seconds", 90_000),
    ];
    for (text, millis) in durations {
        let spec = spec_with(&[(keys::STEP_INTERVAL, text)]);
        assert_eq!(spec.step_interval, Duration::from_millis(*millis), "{text}");
    }

    let latencies: &[(&str, u64)] = &[
        ("500ms", 500),
        ("1ms", 1),
        ("1s", 1_000),
        ("1.5s", 1_500),
        ("1h", 3_600_000),
    ];
    for (text, millis) in latencies {
        let spec = spec_with(&[(keys::MAX_LATENCY, text)]);
        assert_eq!(
            spec.gates.max_latency,
            Duration::from_millis(*millis),
            "{text}"
        );
    }

    // A threshold between bucket bounds is accepted: analysis measures it at the next
    // bound up (docs/metrics.md).
    for (text, millis) in latencies.iter().chain(&[("300ms", 300), ("2.5s", 2_500)]) {
        let spec = spec_with(&[(keys::SLOW_THRESHOLD, text), (keys::MAX_SLOW_SHARE, "5%")]);
        let slow_share = spec.gates.max_slow_share.unwrap();
        assert_eq!(
            slow_share.threshold,
            Duration::from_millis(*millis),
            "{text}"
        );
        assert_eq!(slow_share.max_share, 0.05);
    }

    for text in [
        "5..",
        " 5..|429 ",
        "50[0-4]",
        "5[0-9][0-9]|408",
        "503",
        "[45]..",
    ] {
        let spec = spec_with(&[(keys::ERROR_CODES, text)]);
        assert_eq!(spec.gates.error_codes.as_str(), text.trim());
    }

    let percents: &[(&str, f64)] = &[
        ("1%", 0.01),
        ("0.5%", 0.005),
        ("0%", 0.0),
        ("100%", 1.0),
        ("2.25%", 0.0225),
        (" 5% ", 0.05),
        ("5 %", 0.05),
    ];
    for (text, fraction) in percents {
        let spec = spec_with(&[(keys::MAX_ERROR_RATE, text)]);
        assert!(
            (spec.gates.max_error_rate - fraction).abs() < 1e-12,
            "{text}: {}",
            spec.gates.max_error_rate
        );
        let spec = spec_with(&[(keys::MAX_SLOW_SHARE, text), (keys::SLOW_THRESHOLD, "1s")]);
        let max_share = spec.gates.max_slow_share.unwrap().max_share;
        assert!((max_share - fraction).abs() < 1e-12, "{text}: {max_share}");
    }

    for (text, quantile) in [
        ("0.99", 0.99),
        ("0.5", 0.5),
        ("0.999", 0.999),
        ("0.01", 0.01),
    ] {
        assert_eq!(
            spec_with(&[(keys::LATENCY_QUANTILE, text)])
                .gates
                .latency_quantile,
            quantile
        );
    }

    let steps: &[(&str, &[Weight])] = &[
        ("10,25,50", &[10, 25, 50]),
        (" 1 ", &[1]),
        ("100", &[100]),
        ("10, 25 ,\t50", &[10, 25, 50]),
        (
            "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20",
            &[
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
            ],
        ),
        ("50,100", &[50, 100]),
    ];
    for (text, weights) in steps {
        assert_eq!(spec_with(&[(keys::STEPS, text)]).steps, *weights, "{text}");
    }

    for text in ["true", "TRUE", "True", " true ", "false", "False"] {
        spec_with(&[(keys::ENABLED, text)]);
    }
    for text in ["version", "app.kubernetes.io/version", "Version_2", "a.b-c"] {
        assert_eq!(
            spec_with(&[(keys::VERSION_LABEL, text)]).version_label,
            text
        );
    }
    for text in ["primary", "Primary-Route!", "r/1"] {
        assert_eq!(
            spec_with(&[(keys::ROUTE, text)]).route.as_deref(),
            Some(text)
        );
    }
    assert_eq!(
        spec_with(&[(keys::MIN_REQUESTS, "1000000")])
            .gates
            .min_requests,
        1_000_000
    );
    assert_eq!(spec_with(&[(keys::FAILURE_LIMIT, "10")]).failure_limit, 10);
}

#[test]
fn a_check_interval_longer_than_the_step_interval_is_allowed() {
    let spec = spec_with(&[(keys::STEP_INTERVAL, "10s"), (keys::CHECK_INTERVAL, "1m")]);
    assert!(spec.check_interval > spec.step_interval);
}

#[test]
fn a_no_data_timeout_equal_to_the_check_interval_is_allowed() {
    let spec = spec_with(&[(keys::CHECK_INTERVAL, "1m"), (keys::NO_DATA_TIMEOUT, "60s")]);
    assert_eq!(spec.no_data_timeout, spec.check_interval);
}

#[test]
fn controls_and_status_are_known_keys() {
    spec_with(&[
        (keys::PAUSE, "true"),
        (keys::PROMOTE, "v2"),
        (keys::ABORT, "v2"),
        (keys::RETRY, "v2"),
        (keys::STATUS, r#"{"phase":"Idle"}"#),
    ]);
}

#[test]
fn keys_outside_weirs_namespace_are_ignored() {
    spec_with(&[
        ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
        ("weir.dev.example.com/steps", "whatever"),
        ("example.com/weir.dev/steps", "whatever"),
        ("steps", "nonsense"),
    ]);
}

/// Annotations besides `enabled: true`, the annotation an error must name, and a
/// fragment of its message that carries the fix.
type BadCase = (
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
);

const BAD: &[BadCase] = &[
    (
        &[(keys::ENABLED, "yes")],
        keys::ENABLED,
        "must be true or false",
    ),
    (
        &[(keys::ENABLED, "1")],
        keys::ENABLED,
        "must be true or false",
    ),
    (
        &[(keys::STEPS, "10,5,50")],
        keys::STEPS,
        "strictly ascending: 5 comes after 10",
    ),
    (
        &[(keys::STEPS, "10,10,50")],
        keys::STEPS,
        "strictly ascending: 10 comes after 10",
    ),
    (
        &[(keys::STEPS, "0,10")],
        keys::STEPS,
        "weight 0 is outside 1..=100",
    ),
    (
        &[(keys::STEPS, "10,101")],
        keys::STEPS,
        "weight 101 is outside 1..=100",
    ),
    (
        &[(keys::STEPS, "10,99999999999999999999999")],
        keys::STEPS,
        "step 2 is outside 1..=100",
    ),
    (
        &[(keys::STEPS, "")],
        keys::STEPS,
        "at least one step is needed",
    ),
    (
        &[(keys::STEPS, " ")],
        keys::STEPS,
        "at least one step is needed",
    ),
    (&[(keys::STEPS, "10,,50")], keys::STEPS, "step 2 is empty"),
    (&[(keys::STEPS, "10,25,")], keys::STEPS, "step 3 is empty"),
    (
        &[(keys::STEPS, "10%,20%")],
        keys::STEPS,
        "whole numbers without %",
    ),
    (
        &[(keys::STEPS, "ten")],
        keys::STEPS,
        "step 1 is not a whole number",
    ),
    (
        &[(keys::STEPS, "-5,10")],
        keys::STEPS,
        "step 1 is not a whole number",
    ),
    (
        &[(keys::STEPS, "10.5,20")],
        keys::STEPS,
        "is not a whole number",
    ),
    (
        &[(keys::STEPS, "10 25 50")],
        keys::STEPS,
        "separate weights with commas",
    ),
    (
        &[(
            keys::STEPS,
            "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21",
        )],
        keys::STEPS,
        "at most 20",
    ),
    (
        &[(keys::STEP_INTERVAL, "5")],
        keys::STEP_INTERVAL,
        "needs a unit",
    ),
    (
        &[(keys::STEP_INTERVAL, "0s")],
        keys::STEP_INTERVAL,
        "longer than zero",
    ),
    (
        &[(keys::STEP_INTERVAL, "500ms")],
        keys::STEP_INTERVAL,
        "at least 1s",
    ),
    (
        &[(keys::STEP_INTERVAL, "25h")],
        keys::STEP_INTERVAL,
        "at most 24h",
    ),
    (
        &[(keys::STEP_INTERVAL, "1y")],
        keys::STEP_INTERVAL,
        "at most 24h",
    ),
    (
        &[(keys::STEP_INTERVAL, "-1m")],
        keys::STEP_INTERVAL,
        "not a duration",
    ),
    (
        &[(keys::STEP_INTERVAL, "")],
        keys::STEP_INTERVAL,
        "a duration is needed",
    ),
    (
        &[(keys::CHECK_INTERVAL, "soon")],
        keys::CHECK_INTERVAL,
        "not a duration",
    ),
    (
        &[(keys::CHECK_INTERVAL, "30 parsecs")],
        keys::CHECK_INTERVAL,
        "unknown time unit",
    ),
    (
        &[(keys::NO_DATA_TIMEOUT, "forever")],
        keys::NO_DATA_TIMEOUT,
        "not a duration",
    ),
    (
        &[(keys::MAX_LATENCY, "250")],
        keys::MAX_LATENCY,
        "needs a unit",
    ),
    (
        &[(keys::MAX_LATENCY, "1500us")],
        keys::MAX_LATENCY,
        "whole number of milliseconds",
    ),
    (
        &[(keys::MAX_LATENCY, "100us")],
        keys::MAX_LATENCY,
        "at least 1ms",
    ),
    (
        &[(keys::MAX_LATENCY, "2h")],
        keys::MAX_LATENCY,
        "at most 1h",
    ),
    (
        &[(keys::MAX_ERROR_RATE, "0.01")],
        keys::MAX_ERROR_RATE,
        "needs a % sign",
    ),
    (
        &[(keys::MAX_ERROR_RATE, "1")],
        keys::MAX_ERROR_RATE,
        "needs a % sign",
    ),
    (
        &[(keys::MAX_ERROR_RATE, "101%")],
        keys::MAX_ERROR_RATE,
        "at most 100%",
    ),
    (
        &[(keys::MAX_ERROR_RATE, "-1%")],
        keys::MAX_ERROR_RATE,
        "not a percentage",
    ),
    (
        &[(keys::MAX_ERROR_RATE, "NaN%")],
        keys::MAX_ERROR_RATE,
        "not a percentage",
    ),
    (
        &[(keys::MAX_ERROR_RATE, "1e-2%")],
        keys::MAX_ERROR_RATE,
        "not a percentage",
    ),
    (
        &[(keys::MAX_ERROR_RATE, "%")],
        keys::MAX_ERROR_RATE,
        "not a percentage",
    ),
    (
        &[(keys::ERROR_CODES, "5xx")],
        keys::ERROR_CODES,
        "(write 5..: `.` stands for any digit)",
    ),
    (
        &[(keys::ERROR_CODES, "5XX|429")],
        keys::ERROR_CODES,
        "write 5..|429: `.` stands for any digit",
    ),
    (
        &[(keys::ERROR_CODES, "5.. | 429")],
        keys::ERROR_CODES,
        "write 5..|429, without spaces",
    ),
    (&[(keys::ERROR_CODES, "")], keys::ERROR_CODES, "it is empty"),
    (
        &[(keys::ERROR_CODES, "5..|")],
        keys::ERROR_CODES,
        "it has an empty alternative",
    ),
    (
        &[(keys::ERROR_CODES, "6..")],
        keys::ERROR_CODES,
        "matches no HTTP status code",
    ),
    (
        &[(keys::ERROR_CODES, "5.*")],
        keys::ERROR_CODES,
        "a class such as [0-4]",
    ),
    (
        &[(keys::ERROR_CODES, "5\"}..")],
        keys::ERROR_CODES,
        "is not three digits",
    ),
    (
        &[(keys::MAX_SLOW_SHARE, "5%")],
        keys::MAX_SLOW_SHARE,
        "it needs weir.dev/slow-threshold as well",
    ),
    (
        &[(keys::SLOW_THRESHOLD, "250ms")],
        keys::SLOW_THRESHOLD,
        "it needs weir.dev/max-slow-share as well",
    ),
    (
        &[(keys::HTTP_ROUTE, "checkout")],
        keys::HTTP_ROUTE,
        "an HTTPRoute splits traffic between Services",
    ),
    (
        &[
            (keys::HTTP_ROUTE, "checkout"),
            (keys::VIRTUAL_SERVICE, "checkout"),
            (keys::STABLE_SERVICE, "checkout-stable"),
            (keys::CANARY_SERVICE, "checkout-canary"),
        ],
        keys::HTTP_ROUTE,
        "weir edits one routing object",
    ),
    (
        &[(keys::STABLE_SERVICE, "checkout-stable")],
        keys::STABLE_SERVICE,
        "it needs weir.dev/canary-service as well",
    ),
    (
        &[(keys::CANARY_SERVICE, "checkout-canary")],
        keys::CANARY_SERVICE,
        "it needs weir.dev/stable-service as well",
    ),
    (
        &[
            (keys::STABLE_SERVICE, "checkout-stable"),
            (keys::CANARY_SERVICE, "checkout-stable"),
        ],
        keys::CANARY_SERVICE,
        "the canary and stable Services must differ",
    ),
    (
        &[
            (keys::STABLE_SERVICE, "checkout"),
            (keys::CANARY_SERVICE, "checkout-canary"),
        ],
        keys::STABLE_SERVICE,
        "must name another Service than the opted-in one",
    ),
    (
        &[
            (keys::STABLE_SERVICE, "checkout-stable"),
            (keys::CANARY_SERVICE, "checkout-canary"),
            (keys::STABLE_SUBSET, "primary"),
        ],
        keys::STABLE_SUBSET,
        "a host-level split (weir.dev/stable-service and weir.dev/canary-service) has no subsets",
    ),
    (
        &[
            (keys::STABLE_SERVICE, "checkout-stable.shop"),
            (keys::CANARY_SERVICE, "checkout-canary"),
        ],
        keys::STABLE_SERVICE,
        "give the Service's name only",
    ),
    (
        &[
            (keys::STABLE_SERVICE, "1-stable"),
            (keys::CANARY_SERVICE, "checkout-canary"),
        ],
        keys::STABLE_SERVICE,
        "must start with a lowercase letter",
    ),
    (
        &[
            (keys::MAX_SLOW_SHARE, "0.05"),
            (keys::SLOW_THRESHOLD, "250ms"),
        ],
        keys::MAX_SLOW_SHARE,
        "needs a % sign",
    ),
    (
        &[(keys::MAX_SLOW_SHARE, "5")],
        keys::MAX_SLOW_SHARE,
        "needs a % sign",
    ),
    (
        &[(keys::MAX_SLOW_SHARE, "5%"), (keys::SLOW_THRESHOLD, "250")],
        keys::SLOW_THRESHOLD,
        "needs a unit",
    ),
    (
        &[(keys::MAX_SLOW_SHARE, "5%"), (keys::SLOW_THRESHOLD, "2h")],
        keys::SLOW_THRESHOLD,
        "at most 1h",
    ),
    (
        &[
            (keys::MAX_SLOW_SHARE, "5%"),
            (keys::SLOW_THRESHOLD, "500us"),
        ],
        keys::SLOW_THRESHOLD,
        "at least 1ms",
    ),
    (
        &[(keys::LATENCY_QUANTILE, "p99")],
        keys::LATENCY_QUANTILE,
        "as a fraction: 0.99",
    ),
    (
        &[(keys::LATENCY_QUANTILE, "P95")],
        keys::LATENCY_QUANTILE,
        "as a fraction: 0.95",
    ),
    (
        &[(keys::LATENCY_QUANTILE, "p99.9")],
        keys::LATENCY_QUANTILE,
        "as a fraction: 0.999",
    ),
    (
        &[(keys::LATENCY_QUANTILE, "p5")],
        keys::LATENCY_QUANTILE,
        "as a fraction: 0.05",
    ),
    (
        &[(keys::LATENCY_QUANTILE, "p50")],
        keys::LATENCY_QUANTILE,
        "as a fraction: 0.5",
    ),
    (
        &[(keys::LATENCY_QUANTILE, "99%")],
        keys::LATENCY_QUANTILE,
        "as a fraction: 0.99",
    ),
    (
        &[(keys::LATENCY_QUANTILE, "1")],
        keys::LATENCY_QUANTILE,
        "strictly between 0 and 1",
    ),
    (
        &[(keys::LATENCY_QUANTILE, "0")],
        keys::LATENCY_QUANTILE,
        "strictly between 0 and 1",
    ),
    (
        &[(keys::LATENCY_QUANTILE, "99")],
        keys::LATENCY_QUANTILE,
        "strictly between 0 and 1",
    ),
    (
        &[(keys::LATENCY_QUANTILE, "p100")],
        keys::LATENCY_QUANTILE,
        "like 0.99",
    ),
    (
        &[(keys::LATENCY_QUANTILE, "inf")],
        keys::LATENCY_QUANTILE,
        "like 0.99",
    ),
    (
        &[(keys::MIN_REQUESTS, "-1")],
        keys::MIN_REQUESTS,
        "whole number, 0 or more",
    ),
    (
        &[(keys::MIN_REQUESTS, "1e3")],
        keys::MIN_REQUESTS,
        "whole number, 0 or more",
    ),
    (
        &[(keys::FAILURE_LIMIT, "0")],
        keys::FAILURE_LIMIT,
        "must be at least 1",
    ),
    (
        &[(keys::FAILURE_LIMIT, "two")],
        keys::FAILURE_LIMIT,
        "whole number, 1 or more",
    ),
    (
        &[(keys::FAILURE_LIMIT, "99999999999")],
        keys::FAILURE_LIMIT,
        "must be at most",
    ),
    (
        &[(keys::VIRTUAL_SERVICE, "Checkout")],
        keys::VIRTUAL_SERVICE,
        "must be lowercase",
    ),
    (
        &[(keys::VIRTUAL_SERVICE, "shop/checkout")],
        keys::VIRTUAL_SERVICE,
        "no namespace/",
    ),
    (
        &[(keys::VIRTUAL_SERVICE, "")],
        keys::VIRTUAL_SERVICE,
        "must not be empty",
    ),
    (
        &[(keys::VIRTUAL_SERVICE, "check out")],
        keys::VIRTUAL_SERVICE,
        "lowercase letters",
    ),
    (
        &[(keys::DESTINATION_RULE, "-checkout")],
        keys::DESTINATION_RULE,
        "start and end",
    ),
    (
        &[(keys::DESTINATION_RULE, "checkout..dr")],
        keys::DESTINATION_RULE,
        "start and end",
    ),
    (
        &[(keys::METRICS, "my_metrics")],
        keys::METRICS,
        "lowercase letters, digits",
    ),
    (&[(keys::ROUTE, "")], keys::ROUTE, "must not be empty"),
    (
        &[(keys::ROUTE, "primary route")],
        keys::ROUTE,
        "must not contain spaces",
    ),
    (
        &[(keys::ROUTE, " primary")],
        keys::ROUTE,
        "must not contain spaces",
    ),
    (
        &[(keys::STABLE_SUBSET, "v1.0")],
        keys::STABLE_SUBSET,
        "Istio's rule for subset names",
    ),
    (
        &[(keys::STABLE_SUBSET, "Stable")],
        keys::STABLE_SUBSET,
        "must be lowercase",
    ),
    (
        &[(keys::CANARY_SUBSET, "")],
        keys::CANARY_SUBSET,
        "must not be empty",
    ),
    (
        &[(keys::CANARY_SUBSET, "stable")],
        keys::CANARY_SUBSET,
        "subsets must differ",
    ),
    (
        &[(keys::STABLE_SUBSET, "canary")],
        keys::STABLE_SUBSET,
        "subsets must differ",
    ),
    (
        &[(keys::STABLE_SUBSET, "one"), (keys::CANARY_SUBSET, "one")],
        keys::CANARY_SUBSET,
        "subsets must differ",
    ),
    (
        &[(keys::VERSION_LABEL, "-version")],
        keys::VERSION_LABEL,
        "start and end",
    ),
    (
        &[(keys::VERSION_LABEL, "example.com/")],
        keys::VERSION_LABEL,
        "its name must not be empty",
    ),
    (
        &[(keys::VERSION_LABEL, "Example.com/v")],
        keys::VERSION_LABEL,
        "its prefix must be lowercase",
    ),
    (
        &[(keys::VERSION_LABEL, "a/b/c")],
        keys::VERSION_LABEL,
        "its name must consist of",
    ),
    (
        &[(
            keys::VERSION_LABEL,
            "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv",
        )],
        keys::VERSION_LABEL,
        "at most 63 characters",
    ),
    (
        &[
            (keys::CHECK_INTERVAL, "30s"),
            (keys::NO_DATA_TIMEOUT, "10s"),
        ],
        keys::NO_DATA_TIMEOUT,
        "must be at least the check interval (30s)",
    ),
    (
        &[(keys::CHECK_INTERVAL, "20m")],
        keys::CHECK_INTERVAL,
        "the no-data timeout (10m) must be at least the check interval (20m)",
    ),
    (
        &[("weir.dev/step", "10,25")],
        "weir.dev/step",
        "did you mean weir.dev/steps?",
    ),
    (
        &[("weir.dev/max-error", "1%")],
        "weir.dev/max-error",
        "did you mean weir.dev/max-error-rate?",
    ),
    (
        &[("weir.dev/quantile", "0.9")],
        "weir.dev/quantile",
        "did you mean weir.dev/latency-quantile?",
    ),
    (
        &[("weir.dev/stable", "blue")],
        "weir.dev/stable",
        "did you mean weir.dev/stable-subset?",
    ),
    (
        &[("weir.dev/Steps", "10")],
        "weir.dev/Steps",
        "did you mean weir.dev/steps?",
    ),
    (
        &[("Weir.dev/steps", "10")],
        "Weir.dev/steps",
        "did you mean weir.dev/steps?",
    ),
    (
        &[("weir.dev/enable", "true")],
        "weir.dev/enable",
        "did you mean weir.dev/enabled?",
    ),
    (
        &[("weir.dev/paused", "true")],
        "weir.dev/paused",
        "did you mean weir.dev/pause?",
    ),
    (
        &[("weir.dev/mxa-latency", "1s")],
        "weir.dev/mxa-latency",
        "did you mean weir.dev/max-latency?",
    ),
    (
        &[("weir.dev/stepinterval", "1m")],
        "weir.dev/stepinterval",
        "did you mean weir.dev/step-interval?",
    ),
    (
        &[("weir.dev/error-code", "5..")],
        "weir.dev/error-code",
        "did you mean weir.dev/error-codes?",
    ),
    (
        &[("weir.dev/slow-share", "5%")],
        "weir.dev/slow-share",
        "did you mean weir.dev/max-slow-share?",
    ),
    (
        &[("weir.dev/threshold", "250ms")],
        "weir.dev/threshold",
        "did you mean weir.dev/slow-threshold?",
    ),
    (
        &[("weir.dev/max-slow-rate", "5%")],
        "weir.dev/max-slow-rate",
        "did you mean weir.dev/max-slow-share?",
    ),
    (
        &[("weir.dev/status-codes", "5..")],
        "weir.dev/status-codes",
        "the nearest is weir.dev/error-codes",
    ),
    (
        &[("weir.dev/", "x")],
        "weir.dev/",
        "unknown annotation (not one weir reads",
    ),
    (
        &[("weir.dev/foo", "x")],
        "weir.dev/foo",
        "not one weir reads; the nearest is",
    ),
    (
        &[("weir.dev/canary-weight", "5")],
        "weir.dev/canary-weight",
        "not one weir reads",
    ),
    (
        &[(keys::NOTIFY, "teams")],
        keys::NOTIFY,
        r#""teams" is not a sink: write all, none, or sink names separated by commas (webhook, slack)"#,
    ),
    (
        &[(keys::NOTIFY, "")],
        keys::NOTIFY,
        "empty: write all, none",
    ),
    (
        &[(keys::NOTIFY, "slack,none")],
        keys::NOTIFY,
        "none stands alone",
    ),
    (
        &[(keys::NOTIFY, "all,slack")],
        keys::NOTIFY,
        "all stands alone",
    ),
    (
        &[(keys::NOTIFY, "slack,,webhook")],
        keys::NOTIFY,
        "name 2 is empty: separate sink names with single commas",
    ),
    (
        &[(keys::NOTIFY, "slack webhook")],
        keys::NOTIFY,
        "is not a sink",
    ),
];

#[test]
fn every_bad_input_names_its_annotation_and_the_fix() {
    assert!(BAD.len() >= 20);
    for (pairs, annotation, fragment) in BAD {
        let mut all = vec![(keys::ENABLED, "true")];
        all.retain(|(key, _)| !pairs.iter().any(|(bad, _)| bad == key));
        all.extend_from_slice(pairs);
        let errors = match parse_pairs(&all) {
            Ok(spec) => panic!("{pairs:?} should be rejected, got {spec:?}"),
            Err(errors) => errors,
        };
        let error = errors
            .get(annotation)
            .unwrap_or_else(|| panic!("{pairs:?}: no error names {annotation}:\n{errors}"));
        let message = error.to_string();
        assert!(
            message.contains(fragment),
            "{pairs:?}: {message:?} lacks {fragment:?}"
        );
        assert!(
            message.starts_with(&format!("{annotation}: {:?} is not valid: ", error.value)),
            "{message}"
        );
        assert!(message.contains("; for example weir.dev/"), "{message}");
        assert_eq!(
            errors.as_slice().len(),
            1,
            "{pairs:?} should be one problem:\n{errors}"
        );
    }
}

#[test]
fn the_message_reads_as_the_contract_shows() {
    let errors = parse_pairs(&[(keys::ENABLED, "true"), (keys::STEPS, "10,5,50")]).unwrap_err();
    assert_eq!(
        errors.to_string(),
        r#"weir.dev/steps: "10,5,50" is not valid: steps must be strictly ascending: 5 comes after 10; for example weir.dev/steps: "10,25,50""#
    );
    let errors = parse_pairs(&[(keys::MAX_LATENCY, "250")]).unwrap_err();
    assert!(
        errors
            .to_string()
            .ends_with(r#"for example weir.dev/max-latency: "250ms""#)
    );
}

#[test]
fn an_unknown_key_shows_an_example_of_the_key_it_meant() {
    let errors = parse_pairs(&[("weir.dev/step", "10,25")]).unwrap_err();
    let error = errors.get("weir.dev/step").unwrap();
    assert_eq!(error.example, r#"weir.dev/steps: "10,25,50""#);
    assert_eq!(error.value, "10,25");
}

#[test]
fn every_problem_is_reported_in_contract_order() {
    let errors = parse_pairs(&[
        ("weir.dev/max-error", "1%"),
        (keys::FAILURE_LIMIT, "0"),
        (keys::STEPS, "50,10"),
        (keys::ENABLED, "yes"),
        (keys::LATENCY_QUANTILE, "p99"),
    ])
    .unwrap_err();
    let named: Vec<&str> = errors
        .iter()
        .map(|error| error.annotation.as_ref())
        .collect();
    assert_eq!(
        named,
        [
            keys::ENABLED,
            keys::STEPS,
            keys::LATENCY_QUANTILE,
            keys::FAILURE_LIMIT,
            "weir.dev/max-error"
        ]
    );
    assert_eq!(errors.to_string().lines().count(), 5);
}

#[test]
fn an_invalid_value_does_not_also_raise_a_conflict_with_its_default() {
    // The bad check interval must be reported once, not also compared with the timeout.
    let errors =
        parse_pairs(&[(keys::CHECK_INTERVAL, "0s"), (keys::NO_DATA_TIMEOUT, "5s")]).unwrap_err();
    assert_eq!(errors.as_slice().len(), 1, "{errors}");
    let errors = parse_pairs(&[
        (keys::STABLE_SUBSET, "Blue"),
        (keys::CANARY_SUBSET, "stable"),
    ])
    .unwrap_err();
    assert_eq!(errors.as_slice().len(), 1, "{errors}");
}

#[test]
fn conflicting_defaults_are_blamed_on_the_agent() {
    let defaults = Defaults {
        check_interval: Duration::from_secs(120),
        no_data_timeout: Duration::from_secs(60),
        ..Defaults::default()
    };
    let errors = parse("checkout", &annotations(&[]), &defaults).unwrap_err();
    let error = errors.get(keys::NO_DATA_TIMEOUT).unwrap();
    assert_eq!(error.value, "1m");
    assert!(error.problem.contains("the agent's defaults"), "{error}");
}

#[test]
fn a_long_value_is_cut_in_the_message() {
    let long = "x".repeat(10_000);
    let errors = parse_pairs(&[(keys::STEPS, &long)]).unwrap_err();
    let error = errors.get(keys::STEPS).unwrap();
    assert_eq!(error.value.chars().count(), 81);
    assert!(error.value.ends_with('…'));
    assert!(error.to_string().len() < 300);
}

#[test]
fn control_characters_in_a_value_are_escaped_in_the_message() {
    let errors = parse_pairs(&[(keys::ROUTE, "a\nb\"c")]).unwrap_err();
    assert!(
        errors
            .to_string()
            .starts_with(r#"weir.dev/route: "a\nb\"c" is not valid"#)
    );
}

#[test]
fn every_example_is_itself_valid() {
    for (key, line) in keys::ALL {
        assert!(line.starts_with(&format!("{key}: ")), "{line}");
        assert_eq!(keys::example(key), *line);
        if *key == keys::STATUS {
            continue;
        }
        let value = line
            .strip_prefix(&format!("{key}: \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{line} should quote its value"));
        // The slow-share gate's halves, and a host-level split's two Services (which an
        // HTTPRoute needs), are valid only together.
        let stable = (keys::STABLE_SERVICE, "checkout-stable");
        let canary = (keys::CANARY_SERVICE, "checkout-canary");
        let partners = match *key {
            keys::MAX_SLOW_SHARE => vec![(keys::SLOW_THRESHOLD, "250ms")],
            keys::SLOW_THRESHOLD => vec![(keys::MAX_SLOW_SHARE, "5%")],
            keys::STABLE_SERVICE => vec![canary],
            keys::CANARY_SERVICE => vec![stable],
            keys::HTTP_ROUTE => vec![stable, canary],
            _ => vec![],
        };
        let mut pairs = vec![(keys::ENABLED, "true")];
        pairs.extend(partners);
        pairs.push((*key, value));
        parse_pairs(&pairs).unwrap_or_else(|errors| panic!("{line}:\n{errors}"));
        controls(&annotations(&pairs)).unwrap_or_else(|errors| panic!("{line}:\n{errors}"));
    }
}

#[test]
fn any_value_but_false_opts_in_and_only_true_is_valid() {
    for (value, expected) in [
        ("true", true),
        ("TRUE", true),
        (" True", true),
        ("false", false),
        (" FALSE ", false),
    ] {
        assert_eq!(
            opted_in(&annotations(&[(keys::ENABLED, value)])),
            expected,
            "{value}"
        );
    }
    // A malformed value opts in, so that parsing reports it instead of ignoring it.
    for value in ["yes", "1", "", "on", "truee"] {
        let annotations = annotations(&[(keys::ENABLED, value)]);
        assert!(opted_in(&annotations), "{value}");
        let error = enabled(&annotations).unwrap_err();
        assert_eq!(error.annotation, keys::ENABLED);
        assert!(error.to_string().contains("must be true or false"));
    }
    assert!(!opted_in(&annotations(&[])));
    assert_eq!(enabled(&annotations(&[])), Ok(false));
}

#[test]
fn notify_routes_to_every_sink_by_default_and_can_mute_or_pick() {
    assert_eq!(notify(&annotations(&[])), Ok(Sink::ALL.to_vec()));
    let cases: &[(&str, &[Sink])] = &[
        ("all", &[Sink::Webhook, Sink::Slack]),
        (" ALL ", &[Sink::Webhook, Sink::Slack]),
        ("none", &[]),
        ("None", &[]),
        ("slack", &[Sink::Slack]),
        ("webhook", &[Sink::Webhook]),
        ("Slack, webhook", &[Sink::Webhook, Sink::Slack]),
        ("slack,slack", &[Sink::Slack]),
    ];
    for (value, sinks) in cases {
        let map = annotations(&[(keys::ENABLED, "true"), (keys::NOTIFY, value)]);
        assert_eq!(notify(&map).as_deref(), Ok(*sinks), "{value:?}");
        parse("checkout", &map, &Defaults::default())
            .unwrap_or_else(|errors| panic!("{value:?}:\n{errors}"));
    }
    // A bad value is an error of the spec (the Service is misconfigured) and of the
    // routing read, which names the same annotation.
    let map = annotations(&[(keys::ENABLED, "true"), (keys::NOTIFY, "mute")]);
    let error = notify(&map).unwrap_err();
    assert_eq!(error.annotation, keys::NOTIFY);
    assert_eq!(
        parse("checkout", &map, &Defaults::default())
            .unwrap_err()
            .get(keys::NOTIFY),
        Some(&error)
    );
    assert!(
        error
            .to_string()
            .ends_with(r#"for example weir.dev/notify: "slack""#),
        "{error}"
    );
}

#[test]
fn controls_are_read() {
    assert_eq!(controls(&annotations(&[])).unwrap(), Controls::default());
    assert_eq!(
        controls(&annotations(&[
            (keys::PAUSE, "True"),
            (keys::PROMOTE, "v2"),
            (keys::ABORT, "2.4.1"),
            (keys::RETRY, "release_7-b"),
            (keys::STEPS, "not read here"),
        ]))
        .unwrap(),
        Controls {
            pause: true,
            promote: Some("v2".into()),
            abort: Some("2.4.1".into()),
            retry: Some("release_7-b".into()),
        }
    );
    assert!(
        !controls(&annotations(&[(keys::PAUSE, "false")]))
            .unwrap()
            .pause
    );
}

#[test]
fn bad_controls_name_their_annotation_and_the_fix() {
    let long = "v".repeat(64);
    let cases: &[(&str, &str, &str)] = &[
        (keys::PAUSE, "maybe", "must be true or false"),
        (keys::PAUSE, "", "must be true or false"),
        (keys::PROMOTE, "", "a version must not be empty"),
        (keys::PROMOTE, "v 2", "a version must consist of letters"),
        (
            keys::ABORT,
            &long,
            "a version must be at most 63 characters",
        ),
        (keys::RETRY, "-v2", "start and end with a letter or digit"),
        (keys::RETRY, "v2.", "start and end with a letter or digit"),
    ];
    for (key, value, fragment) in cases {
        let errors = controls(&annotations(&[(key, value)])).unwrap_err();
        let error = errors.get(key).unwrap_or_else(|| panic!("{key}: {errors}"));
        let message = error.to_string();
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
        assert!(
            message.contains(&format!("for example {key}: ")),
            "{message}"
        );
    }
    let errors = controls(&annotations(&[(keys::PAUSE, "1"), (keys::PROMOTE, "")])).unwrap_err();
    assert_eq!(errors.as_slice().len(), 2);
}

#[test]
fn the_shared_parsers_serve_flags_too() {
    assert_eq!(parse_steps("10,25,50"), Ok(vec![10, 25, 50]));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_latency("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_percent("1%"), Ok(0.01));
    assert_eq!(parse_quantile("0.99"), Ok(0.99));
    assert_eq!(parse_min_requests("50"), Ok(50));
    assert_eq!(
        parse_error_codes("5..|429").map(|codes| codes.to_string()),
        Ok("5..|429".to_string())
    );
    assert_eq!(parse_failure_limit("2"), Ok(2));
    assert_eq!(parse_bool("false"), Ok(false));
    assert_eq!(parse_subset_name("stable").as_deref(), Ok("stable"));
    assert_eq!(parse_label_key("version").as_deref(), Ok("version"));
    assert_eq!(
        parse_steps("10,5").unwrap_err().to_string(),
        "steps must be strictly ascending: 5 comes after 10"
    );
    // A flag may be sub-second where an annotation interval may not; both share units.
    assert_eq!(
        parse_duration("0s").unwrap_err().to_string(),
        "must be longer than zero"
    );
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("true".to_string()),
        Just("10,25,50".to_string()),
        Just("30s".to_string()),
        Just("1%".to_string()),
        Just("0.99".to_string()),
        Just("stable".to_string()),
        Just("canary".to_string()),
        "[0-9]{1,3}(,[0-9]{1,3}){0,4}",
        "[0-9]{1,4}(ms|s|m|h|d|y)",
        "[0-9]{1,3}(\\.[0-9]{1,3})?%?",
        "[a-zA-Z0-9./_ -]{0,12}",
        any::<String>(),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(keys::ALL.iter().map(|(key, _)| key.to_string()).collect::<Vec<_>>()),
        1 => "weir\\.dev/[a-z-]{0,16}",
        1 => "[wW]eir\\.dev/.{0,8}",
        1 => any::<String>(),
    ]
}

/// Annotations close to valid: known keys with values of roughly the right shape, so
/// that many maps parse and the accepted specs carry non-default values.
fn plausible_annotation() -> impl Strategy<Value = (String, String)> {
    use proptest::sample::select;
    let steps = proptest::collection::btree_set(0u8..=105, 1..=22).prop_map(|weights| {
        let weights: Vec<String> = weights.iter().map(u8::to_string).collect();
        weights.join(",")
    });
    let pair = |keys: Vec<&'static str>, values: BoxedStrategy<String>| {
        (select(keys), values).prop_map(|(key, value)| (key.to_string(), value))
    };
    prop_oneof![
        pair(vec![keys::STEPS], steps.boxed()),
        pair(
            vec![
                keys::STEP_INTERVAL,
                keys::CHECK_INTERVAL,
                keys::NO_DATA_TIMEOUT,
                keys::MAX_LATENCY
            ],
            "[0-9]{1,5}(ms|s|m|h)".boxed()
        ),
        pair(
            vec![keys::MAX_ERROR_RATE, keys::MAX_SLOW_SHARE],
            "[0-9]{1,3}(\\.[0-9]{1,2})?%".boxed()
        ),
        pair(vec![keys::SLOW_THRESHOLD], "[0-9]{1,5}(ms|s|m|h)".boxed()),
        pair(
            vec![keys::ERROR_CODES],
            "[0-9.xX]{2,4}(\\|([0-9.]|\\[[0-9]-[0-9]\\]){3}){0,2}".boxed()
        ),
        pair(vec![keys::LATENCY_QUANTILE], "0\\.[0-9]{1,3}|0|1".boxed()),
        pair(
            vec![keys::MIN_REQUESTS, keys::FAILURE_LIMIT],
            "[0-9]{1,4}".boxed()
        ),
        pair(
            vec![keys::STABLE_SUBSET, keys::CANARY_SUBSET],
            "stable|canary|[a-z]{1,3}".boxed()
        ),
        pair(
            vec![
                keys::VIRTUAL_SERVICE,
                keys::DESTINATION_RULE,
                keys::METRICS,
                keys::ROUTE,
                keys::VERSION_LABEL
            ],
            "[a-z][a-z0-9.-]{0,8}[a-z0-9]|[a-z]{1,4}/[a-z]{1,4}".boxed()
        ),
        pair(
            vec![keys::ENABLED, keys::PAUSE],
            "true|false|TRUE|yes".boxed()
        ),
        pair(
            vec![keys::NOTIFY],
            "all|none|slack|webhook|slack,webhook|teams|slack,none".boxed()
        ),
    ]
}

/// What every accepted spec guarantees, and that each annotation it accepted is what
/// the spec holds.
fn check_accepted(spec: &RolloutSpec, map: &BTreeMap<String, String>) -> Result<(), TestCaseError> {
    prop_assert!(!spec.steps.is_empty() && spec.steps.len() <= MAX_STEPS);
    prop_assert!(spec.steps.iter().all(|step| (1..=100).contains(step)));
    prop_assert!(spec.steps.windows(2).all(|pair| pair[0] < pair[1]));
    for interval in [
        spec.step_interval,
        spec.check_interval,
        spec.no_data_timeout,
    ] {
        prop_assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&interval));
    }
    prop_assert!(spec.no_data_timeout >= spec.check_interval);
    prop_assert!(spec.failure_limit >= 1);
    prop_assert!(spec.gates.latency_quantile > 0.0 && spec.gates.latency_quantile < 1.0);
    prop_assert!((0.0..=1.0).contains(&spec.gates.max_error_rate));
    prop_assert!((MIN_LATENCY..=MAX_LATENCY).contains(&spec.gates.max_latency));
    prop_assert_ne!(&spec.stable_subset, &spec.canary_subset);
    prop_assert!(
        map.keys()
            .all(|key| !keys::is_weir(key) || keys::is_known(key))
    );
    // An accepted spec routes its notifications as written.
    prop_assert!(notify(map).is_ok());
    if let Some(steps) = map.get(keys::STEPS) {
        prop_assert_eq!(Ok(spec.steps.clone()), parse_steps(steps));
    }
    if let Some(interval) = map.get(keys::STEP_INTERVAL) {
        prop_assert_eq!(Ok(spec.step_interval), parse_interval(interval));
    }
    if let Some(rate) = map.get(keys::MAX_ERROR_RATE) {
        prop_assert_eq!(Ok(spec.gates.max_error_rate), parse_percent(rate));
    }
    if let Some(codes) = map.get(keys::ERROR_CODES) {
        prop_assert_eq!(Ok(spec.gates.error_codes.clone()), parse_error_codes(codes));
    }
    // The default gate is off: it is on exactly when a Service sets both halves.
    let share = map.get(keys::MAX_SLOW_SHARE);
    let threshold = map.get(keys::SLOW_THRESHOLD);
    prop_assert_eq!(spec.gates.max_slow_share.is_some(), share.is_some());
    prop_assert_eq!(share.is_some(), threshold.is_some());
    if let (Some(gate), Some(share), Some(threshold)) =
        (spec.gates.max_slow_share, share, threshold)
    {
        prop_assert_eq!(Ok(gate.max_share), parse_percent(share));
        prop_assert_eq!(Ok(gate.threshold), parse_latency(threshold));
    }
    Ok(())
}

fn check_rejected(errors: &SpecErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.as_slice().is_empty());
    for error in errors {
        let message = error.to_string();
        prop_assert!(message.contains(" is not valid: "), "{}", message);
        prop_assert!(message.contains("; for example weir.dev/"), "{}", message);
    }
    Ok(())
}

proptest! {
    #[test]
    fn parse_never_panics_and_an_accepted_spec_holds_its_invariants(
        map in proptest::collection::btree_map(key(), value(), 0..12)
    ) {
        let _ = controls(&map);
        let _ = opted_in(&map);
        match parse("checkout", &map, &Defaults::default()) {
            Ok(spec) => check_accepted(&spec, &map)?,
            Err(errors) => check_rejected(&errors)?,
        }
    }

    #[test]
    fn plausible_annotations_parse_to_specs_that_hold_their_invariants(
        pairs in proptest::collection::vec(plausible_annotation(), 0..8)
    ) {
        let map: BTreeMap<String, String> = pairs.into_iter().collect();
        match parse("checkout", &map, &Defaults::default()) {
            Ok(spec) => check_accepted(&spec, &map)?,
            Err(errors) => check_rejected(&errors)?,
        }
        if let Err(errors) = controls(&map) {
            check_rejected(&errors)?;
        }
    }

    #[test]
    fn every_value_parser_is_total(text in any::<String>()) {
        let _ = parse_steps(&text);
        let _ = parse_duration(&text);
        let _ = parse_interval(&text);
        let _ = parse_latency(&text);
        let _ = parse_percent(&text);
        let _ = parse_quantile(&text);
        let _ = parse_min_requests(&text);
        let _ = parse_error_codes(&text);
        let _ = parse_failure_limit(&text);
        let _ = parse_bool(&text);
        let _ = parse_object_name(&text);
        let _ = parse_subset_name(&text);
        let _ = parse_route_name(&text);
        let _ = parse_label_key(&text);
        let _ = parse_version(&text);
        let _ = parse_notify(&text);
    }

    #[test]
    fn any_ascending_steps_round_trip(
        weights in proptest::collection::btree_set(1u8..=100, 1..=MAX_STEPS),
        spaces in proptest::collection::vec("[ \t]{0,2}", MAX_STEPS * 2),
    ) {
        let weights: Vec<Weight> = weights.into_iter().collect();
        let text = weights
            .iter()
            .enumerate()
            .map(|(i, weight)| format!("{}{weight}{}", spaces[2 * i], spaces[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        prop_assert_eq!(parse_steps(&text), Ok(weights));
    }

    #[test]
    fn any_percentage_in_range_reads_as_its_fraction(hundredths in 0u32..=10_000) {
        let text = format!("{}.{:02}%", hundredths / 100, hundredths % 100);
        let fraction = parse_percent(&text).unwrap();
        prop_assert!((fraction - f64::from(hundredths) / 10_000.0).abs() < 1e-12);
    }
}
