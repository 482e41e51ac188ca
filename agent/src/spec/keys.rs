//! Annotation keys, one valid example of each, and the nearest key to a typo.

pub const ENABLED: &str = "weir.dev/enabled";
pub const VIRTUAL_SERVICE: &str = "weir.dev/virtual-service";
pub const HTTP_ROUTE: &str = "weir.dev/http-route";
pub const ROUTE: &str = "weir.dev/route";
pub const DESTINATION_RULE: &str = "weir.dev/destination-rule";
pub const STABLE_SUBSET: &str = "weir.dev/stable-subset";
pub const CANARY_SUBSET: &str = "weir.dev/canary-subset";
pub const STABLE_SERVICE: &str = "weir.dev/stable-service";
pub const CANARY_SERVICE: &str = "weir.dev/canary-service";
pub const VERSION_LABEL: &str = "weir.dev/version-label";
pub const STEPS: &str = "weir.dev/steps";
pub const STEP_INTERVAL: &str = "weir.dev/step-interval";
pub const CHECK_INTERVAL: &str = "weir.dev/check-interval";
pub const MAX_ERROR_RATE: &str = "weir.dev/max-error-rate";
pub const ERROR_CODES: &str = "weir.dev/error-codes";
pub const MAX_LATENCY: &str = "weir.dev/max-latency";
pub const LATENCY_QUANTILE: &str = "weir.dev/latency-quantile";
pub const MAX_SLOW_SHARE: &str = "weir.dev/max-slow-share";
pub const SLOW_THRESHOLD: &str = "weir.dev/slow-threshold";
pub const MIN_REQUESTS: &str = "weir.dev/min-requests";
pub const FAILURE_LIMIT: &str = "weir.dev/failure-limit";
pub const NO_DATA_TIMEOUT: &str = "weir.dev/no-data-timeout";
pub const ANALYSIS: &str = "weir.dev/analysis";
pub const TOLERANCE: &str = "weir.dev/tolerance";
pub const CONFIDENCE: &str = "weir.dev/confidence";
pub const DECISION_TIMEOUT: &str = "weir.dev/decision-timeout";
pub const METRICS: &str = "weir.dev/metrics";
pub const NOTIFY: &str = "weir.dev/notify";
pub const SCALE_DOWN_DELAY: &str = "weir.dev/scale-down-delay";

// Controls, written by a person or by the `weir` CLI.
pub const PAUSE: &str = "weir.dev/pause";
pub const PROMOTE: &str = "weir.dev/promote";
pub const ABORT: &str = "weir.dev/abort";
pub const RETRY: &str = "weir.dev/retry";

// Written only by the agent.
pub const STATUS: &str = "weir.dev/status";

/// Every key weir reads or writes, each with a valid annotation line a user can copy.
/// The order is the user contract's, so that errors and docs list keys the same way.
pub const ALL: &[(&str, &str)] = &[
    (ENABLED, r#"weir.dev/enabled: "true""#),
    (VIRTUAL_SERVICE, r#"weir.dev/virtual-service: "checkout""#),
    (HTTP_ROUTE, r#"weir.dev/http-route: "checkout""#),
    (ROUTE, r#"weir.dev/route: "primary""#),
    (DESTINATION_RULE, r#"weir.dev/destination-rule: "checkout""#),
    (STABLE_SUBSET, r#"weir.dev/stable-subset: "stable""#),
    (CANARY_SUBSET, r#"weir.dev/canary-subset: "canary""#),
    (
        STABLE_SERVICE,
        r#"weir.dev/stable-service: "checkout-stable""#,
    ),
    (
        CANARY_SERVICE,
        r#"weir.dev/canary-service: "checkout-canary""#,
    ),
    (
        VERSION_LABEL,
        r#"weir.dev/version-label: "app.kubernetes.io/version""#,
    ),
    (STEPS, r#"weir.dev/steps: "10,25,50""#),
    (STEP_INTERVAL, r#"weir.dev/step-interval: "2m""#),
    (CHECK_INTERVAL, r#"weir.dev/check-interval: "30s""#),
    (MAX_ERROR_RATE, r#"weir.dev/max-error-rate: "0.5%""#),
    (ERROR_CODES, r#"weir.dev/error-codes: "5..|429""#),
    (MAX_LATENCY, r#"weir.dev/max-latency: "250ms""#),
    (LATENCY_QUANTILE, r#"weir.dev/latency-quantile: "0.99""#),
    (MAX_SLOW_SHARE, r#"weir.dev/max-slow-share: "5%""#),
    (SLOW_THRESHOLD, r#"weir.dev/slow-threshold: "250ms""#),
    (MIN_REQUESTS, r#"weir.dev/min-requests: "100""#),
    (FAILURE_LIMIT, r#"weir.dev/failure-limit: "3""#),
    (NO_DATA_TIMEOUT, r#"weir.dev/no-data-timeout: "15m""#),
    (ANALYSIS, r#"weir.dev/analysis: "sequential""#),
    (TOLERANCE, r#"weir.dev/tolerance: "50%""#),
    (CONFIDENCE, r#"weir.dev/confidence: "99%""#),
    (DECISION_TIMEOUT, r#"weir.dev/decision-timeout: "1h""#),
    (METRICS, r#"weir.dev/metrics: "checkout-metrics""#),
    (NOTIFY, r#"weir.dev/notify: "slack""#),
    (SCALE_DOWN_DELAY, r#"weir.dev/scale-down-delay: "10m""#),
    (PAUSE, r#"weir.dev/pause: "true""#),
    (PROMOTE, r#"weir.dev/promote: "v2""#),
    (ABORT, r#"weir.dev/abort: "v2""#),
    (RETRY, r#"weir.dev/retry: "v2""#),
    (STATUS, r#"weir.dev/status: (written by the agent)"#),
];

/// A valid annotation line for `key`, e.g. `weir.dev/steps: "10,25,50"`. Callers pass
/// the constants of this module, each of which has one (a test holds [`ALL`] to that);
/// any other key gets a pointer to the documentation, never a panic in a reconcile.
pub fn example(key: &str) -> &'static str {
    ALL.iter()
        .find(|(known, _)| *known == key)
        .map_or("the lines in docs/annotations.md", |(_, example)| *example)
}

/// Whether `key` is one weir reads or writes.
pub fn is_known(key: &str) -> bool {
    ALL.iter().any(|(known, _)| *known == key)
}

/// Whether `key` is in weir's namespace of annotations (case-insensitively, so that
/// `Weir.dev/steps` is caught as a typo rather than ignored).
pub fn is_weir(key: &str) -> bool {
    key.get(..PREFIX_LEN)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(super::PREFIX))
}

const PREFIX_LEN: usize = super::PREFIX.len();

/// The key a user most likely meant by `unknown`, a key in weir's namespace that weir
/// does not know; `None` when no key is close enough to be a plausible typo.
pub fn meant(unknown: &str) -> Option<&'static str> {
    let (key, distance) = nearest_with_distance(unknown);
    let typed = unknown.len().saturating_sub(PREFIX_LEN);
    (typed > 0 && distance <= (typed / 3).max(2)).then_some(key)
}

/// The known key nearest to `unknown`, however far. Never the status key: people do
/// not write it.
pub fn nearest(unknown: &str) -> &'static str {
    nearest_with_distance(unknown).0
}

fn nearest_with_distance(unknown: &str) -> (&'static str, usize) {
    let typed = unknown.get(PREFIX_LEN..).unwrap_or("").to_ascii_lowercase();
    let candidates = ALL.iter().map(|(key, _)| *key).filter(|key| *key != STATUS);
    // A key that contains what was typed (`step` in `steps`, `quantile` in
    // `latency-quantile`), or is contained in it (`pause` in `paused`), is a better
    // guess than any edit distance.
    let by_containment = candidates
        .clone()
        .filter(|key| {
            let name = &key[PREFIX_LEN..];
            !typed.is_empty() && (name.contains(typed.as_str()) || typed.contains(name))
        })
        .min_by_key(|key| key[PREFIX_LEN..].len().abs_diff(typed.len()));
    match by_containment {
        Some(key) => (key, 0),
        None => candidates
            .map(|key| (key, edit_distance(&key[PREFIX_LEN..], &typed)))
            .min_by_key(|(_, distance)| *distance)
            .unwrap_or((ENABLED, usize::MAX)),
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}
