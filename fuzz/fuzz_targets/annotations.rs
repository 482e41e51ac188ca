//! A Service's annotations → `spec::parse`, `spec::controls`, `spec::enabled`.
//!
//! Input: one annotation per line, `key=value`, split at the first `=`. A key without a
//! `/` is a weir key (`steps=10` is `weir.dev/steps`), so that mutations spend their
//! time on values rather than on retyping the prefix; `Weir.dev/stpes=1` is still a
//! typo the parser must catch. A leading `+` gives the agent a slow-share default.
//!
//! Beyond not panicking, a parsed spec must hold the invariants `RolloutSpec` documents,
//! and every error must name an annotation the Service carries.
#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weir::spec::{
    self, Defaults, MAX_INTERVAL, MAX_LATENCY, MAX_STEPS, MIN_INTERVAL, MIN_LATENCY, PREFIX,
    RolloutSpec, keys,
};
use weir_analysis::SlowShare;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Without a slow-share default, one half of that gate alone is an error; with one,
    // it takes the other half from the default.
    let mut defaults = Defaults::default();
    let text = match text.strip_prefix('+') {
        Some(rest) => {
            defaults.gates.max_slow_share = Some(SlowShare {
                threshold: Duration::from_millis(500),
                max_share: 0.05,
            });
            rest
        }
        None => text,
    };
    let annotations = annotations(text);

    match spec::parse("shop", &annotations, &defaults) {
        Ok(spec) => check_spec(&spec, &annotations),
        Err(errors) => {
            check_errors(errors.iter(), &annotations);
            assert!(!errors.to_string().is_empty());
        }
    }

    match spec::controls(&annotations) {
        Ok(controls) => {
            for version in [&controls.promote, &controls.abort, &controls.retry]
                .into_iter()
                .flatten()
            {
                assert!(spec::parse_version(version).is_ok(), "{version:?}");
            }
        }
        Err(errors) => check_errors(errors.iter(), &annotations),
    }
    match spec::enabled(&annotations) {
        Ok(true) => assert!(spec::opted_in(&annotations)),
        Ok(false) => {}
        Err(error) => check_errors([&error], &annotations),
    }
});

fn annotations(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            let key = if key.contains('/') {
                key.to_owned()
            } else {
                format!("{PREFIX}{key}")
            };
            (key, value.to_owned())
        })
        .collect()
}

fn check_spec(spec: &RolloutSpec, annotations: &BTreeMap<String, String>) {
    assert!(
        annotations
            .keys()
            .all(|key| !keys::is_weir(key) || keys::is_known(key)),
        "an unknown weir key was accepted: {annotations:?}"
    );
    assert_eq!(spec.service, "shop");
    assert_ne!(spec.stable_subset, spec.canary_subset);
    assert!(!spec.steps.is_empty() && spec.steps.len() <= MAX_STEPS);
    assert!(
        spec.steps.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        spec.steps
    );
    assert!(spec.steps.iter().all(|w| (1..=100).contains(w)));
    let intervals = [
        spec.step_interval,
        spec.check_interval,
        spec.no_data_timeout,
        spec.decision_timeout,
    ];
    for interval in intervals {
        assert!(
            (MIN_INTERVAL..=MAX_INTERVAL).contains(&interval),
            "{interval:?}"
        );
    }
    assert!(spec.no_data_timeout >= spec.check_interval);
    assert!(spec.failure_limit >= 1);
    let gates = &spec.gates;
    assert!((0.0..=1.0).contains(&gates.max_error_rate));
    assert!(gates.latency_quantile > 0.0 && gates.latency_quantile < 1.0);
    assert!((MIN_LATENCY..=MAX_LATENCY).contains(&gates.max_latency));
    assert!((0.0..=10.0).contains(&gates.tolerance));
    assert!((0.8..=0.9999).contains(&gates.confidence));
    if let Some(slow) = &gates.max_slow_share {
        assert!((0.0..=1.0).contains(&slow.max_share));
        assert!((MIN_LATENCY..=MAX_LATENCY).contains(&slow.threshold));
    }
}

fn check_errors<'a>(
    errors: impl IntoIterator<Item = &'a spec::SpecError>,
    annotations: &BTreeMap<String, String>,
) {
    let mut count = 0;
    for error in errors {
        count += 1;
        // With self-consistent defaults, only what the Service wrote can be at fault.
        let Some(value) = annotations.get(error.annotation.as_ref()) else {
            panic!("{error} blames an annotation the Service does not carry");
        };
        let shown = error.value.strip_suffix('…').unwrap_or(&error.value);
        assert!(value.starts_with(shown), "{error}");
        assert!(error.value.chars().count() <= 81, "{error}");
        assert!(!error.problem.is_empty());
        assert!(
            keys::ALL
                .iter()
                .any(|(_, example)| *example == error.example)
        );
    }
    assert!(count > 0);
}
