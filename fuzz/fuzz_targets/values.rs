//! Every value parser of `weir::spec` (shared by the annotations and the agent's flags)
//! and the typo suggestions, on the same arbitrary text.
//!
//! An accepted value must be within the bounds its parser documents; a refused one must
//! say why. An accepted response-code pattern must select, as the regex Prometheus
//! matches it with, exactly the codes `ResponseCodes::matches` counts as errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regex::Regex;
use weir::spec::{
    self, InvalidValue, MAX_INTERVAL, MAX_LATENCY, MAX_STEPS, MIN_INTERVAL, MIN_LATENCY, keys,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Some(steps) = accepted(spec::parse_steps(text)) {
        assert!(!steps.is_empty() && steps.len() <= MAX_STEPS, "{steps:?}");
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
        assert!(steps.iter().all(|w| (1..=100).contains(w)), "{steps:?}");
    }
    if let Some(duration) = accepted(spec::parse_duration(text)) {
        assert!(!duration.is_zero());
    }
    if let Some(interval) = accepted(spec::parse_interval(text)) {
        assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&interval));
    }
    if let Some(latency) = accepted(spec::parse_latency(text)) {
        assert!((MIN_LATENCY..=MAX_LATENCY).contains(&latency));
        assert_eq!(latency.subsec_nanos() % 1_000_000, 0);
    }
    if let Some(share) = accepted(spec::parse_percent(text)) {
        assert!((0.0..=1.0).contains(&share), "{share}");
    }
    if let Some(quantile) = accepted(spec::parse_quantile(text)) {
        assert!(quantile > 0.0 && quantile < 1.0, "{quantile}");
    }
    if let Some(tolerance) = accepted(spec::parse_tolerance(text)) {
        assert!((0.0..=10.0).contains(&tolerance), "{tolerance}");
    }
    if let Some(confidence) = accepted(spec::parse_confidence(text)) {
        assert!((0.8..=0.9999).contains(&confidence), "{confidence}");
    }
    if let Some(limit) = accepted(spec::parse_failure_limit(text)) {
        assert!(limit >= 1);
    }
    accepted(spec::parse_min_requests(text));
    accepted(spec::parse_bool(text));
    accepted(spec::parse_rule(text));
    if let Some(codes) = accepted(spec::parse_error_codes(text)) {
        // Prometheus anchors `=~` matchers at both ends.
        let regex = Regex::new(&format!("^(?:{codes})$")).expect("a valid pattern is a regex");
        for code in 100..=599 {
            let code = code.to_string();
            assert_eq!(
                codes.matches(&code),
                regex.is_match(&code),
                "{codes} on {code}"
            );
        }
    }

    for name in [
        accepted(spec::parse_object_name(text)),
        accepted(spec::parse_subset_name(text)),
        accepted(spec::parse_route_name(text)),
        accepted(spec::parse_label_key(text)),
        accepted(spec::parse_version(text)),
    ]
    .into_iter()
    .flatten()
    {
        // Names are taken exactly as written.
        assert_eq!(name, text);
    }
    if let Some(name) = accepted(spec::parse_version(text)) {
        assert!(!name.is_empty() && name.len() <= 63);
    }

    if keys::is_weir(text) && !keys::is_known(text) {
        let nearest = keys::nearest(text);
        assert!(keys::is_known(nearest) && nearest != keys::STATUS);
        if let Some(meant) = keys::meant(text) {
            assert!(keys::is_known(meant));
        }
    }
});

/// The value, if accepted; a refusal must give a reason.
fn accepted<T>(result: Result<T, InvalidValue>) -> Option<T> {
    result
        .map_err(|InvalidValue(problem)| assert!(!problem.is_empty()))
        .ok()
}
