//! Service annotations → a validated [`RolloutSpec`]. Pure: no I/O, no kube client.
//!
//! Every annotation of the user contract (DESIGN.md, "The user contract";
//! docs/annotations.md) is read here, and nowhere else. Defaults come from the agent's
//! flags ([`Defaults`]), which parse their values with the same functions
//! ([`parse_steps`], [`parse_interval`], …) so that a flag and an annotation accept
//! exactly the same text.
//!
//! [`parse`] reports every problem at once, and treats an unknown key in weir's
//! namespace as a problem too: a typo such as `weir.dev/step` must stop the rollout
//! with a message, not be silently replaced by a default.

use std::collections::BTreeMap;
use std::time::Duration;

use weir_analysis::{Gates, SlowShare};

use crate::plan::Controls;

/// The annotation prefix of every key weir reads or writes.
pub const PREFIX: &str = "weir.dev/";

mod error;
pub mod keys;
mod names;
mod values;

#[cfg(test)]
mod tests;

pub use error::{SpecError, SpecErrors};
pub use names::{
    parse_label_key, parse_object_name, parse_route_name, parse_service_name, parse_subset_name,
    parse_version,
};
pub use values::{
    InvalidValue, MAX_INTERVAL, MAX_LATENCY, MAX_SCALE_DOWN_DELAY, MAX_STEPS, MIN_INTERVAL,
    MIN_LATENCY, parse_bool, parse_confidence, parse_duration, parse_error_codes,
    parse_failure_limit, parse_interval, parse_latency, parse_min_requests, parse_notify,
    parse_percent, parse_quantile, parse_rule, parse_scale_down_delay, parse_steps,
    parse_tolerance,
};

/// A traffic weight in percent, 0..=100.
pub type Weight = u8;

/// Everything the agent needs to release one Service, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutSpec {
    /// The Service's name.
    pub service: String,
    /// VirtualService to edit; `None`: the only one in the namespace routing to this host.
    pub virtual_service: Option<String>,
    /// Gateway API HTTPRoute to edit instead of a VirtualService (host-level split
    /// only); `None`: the VirtualService or HTTPRoute that is the only one routing to
    /// the stable Service.
    pub http_route: Option<String>,
    /// HTTP route (or HTTPRoute rule) inside it; `None`: the only one with a
    /// destination on this host.
    pub route: Option<String>,
    /// DestinationRule holding the subsets; `None`: the one whose host is this Service.
    pub destination_rule: Option<String>,
    /// Subset that selects the stable version (a DNS-1123 label).
    pub stable_subset: String,
    /// Subset that selects the canary; never equal to `stable_subset`.
    pub canary_subset: String,
    /// The Services each version is reached through, for a host-level split
    /// (`weir.dev/stable-service` and `weir.dev/canary-service`); `None`: the split is
    /// between the DestinationRule's subsets.
    pub split_services: Option<SplitServices>,
    /// Pod label whose value names a version.
    pub version_label: String,
    /// Canary weights, strictly ascending, each in 1..=100. Never empty.
    pub steps: Vec<Weight>,
    /// Minimum time held at each weight; in 1s..=24h.
    pub step_interval: Duration,
    /// How often the gates are evaluated; in 1s..=24h. It may exceed `step_interval`:
    /// a step then lasts until its first passing check, about one `check_interval`.
    pub check_interval: Duration,
    /// The limits every check holds the canary to.
    pub gates: Gates,
    /// Failed checks in one rollout that abort it (≥ 1).
    pub failure_limit: u32,
    /// How long a step may stay inconclusive before it aborts; at least
    /// `check_interval`, at most 24h.
    pub no_data_timeout: Duration,
    /// How long a step may wait for evidence either way (sequential rule), once it has
    /// been held for `step_interval`, before it aborts; at most 24h.
    pub decision_timeout: Duration,
    /// ConfigMap of extra metric templates.
    pub metrics_config_map: Option<String>,
    /// How long after a promotion the superseded version's Deployment keeps its
    /// replicas before weir scales it to zero; `None`: never.
    pub scale_down_delay: Option<Duration>,
}

impl RolloutSpec {
    /// The Services the mesh reports the stable and the canary version's requests
    /// under (`destination_service_name`): the split Services in a host-level split,
    /// else this Service for both.
    pub fn reported_services(&self) -> (String, String) {
        match &self.split_services {
            Some(split) => (split.stable.clone(), split.canary.clone()),
            None => (self.service.clone(), self.service.clone()),
        }
    }
}

/// A host-level split: the managed route's two destinations are two Services, each of
/// which selects one version by the version label. weir points their selectors at the
/// stable and canary versions as it points subsets in a DestinationRule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitServices {
    /// Selects the stable version; never the opted-in Service itself.
    pub stable: String,
    /// Selects the canary; never equal to `stable`, never the opted-in Service.
    pub canary: String,
}

/// The agent-wide defaults for every optional annotation (set by the agent's flags).
///
/// Build each field with the parser of its annotation ([`parse_subset_name`],
/// [`parse_steps`], [`parse_interval`], [`parse_percent`], [`parse_latency`],
/// [`parse_quantile`], [`parse_min_requests`], [`parse_error_codes`],
/// [`parse_failure_limit`], [`parse_label_key`]). The checks between fields (the subsets
/// differ, no-data timeout ≥ check interval, both halves of the slow-share gate) are
/// made by [`parse`] on the values in effect for each Service.
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    pub stable_subset: String,
    pub canary_subset: String,
    pub version_label: String,
    pub steps: Vec<Weight>,
    pub step_interval: Duration,
    pub check_interval: Duration,
    pub gates: Gates,
    pub failure_limit: u32,
    pub no_data_timeout: Duration,
    pub decision_timeout: Duration,
    pub scale_down_delay: Option<Duration>,
}

impl Default for Defaults {
    /// The defaults of DESIGN.md's user contract.
    fn default() -> Self {
        Defaults {
            stable_subset: "stable".into(),
            canary_subset: "canary".into(),
            version_label: "version".into(),
            steps: vec![10, 25, 50],
            step_interval: Duration::from_secs(60),
            check_interval: Duration::from_secs(15),
            gates: Gates::default(),
            failure_limit: 2,
            no_data_timeout: Duration::from_secs(600),
            decision_timeout: Duration::from_secs(2 * 60 * 60),
            scale_down_delay: Some(Duration::from_secs(30)),
        }
    }
}

/// Reads a Service's annotations into a [`RolloutSpec`], taking every absent optional
/// annotation from `defaults`. Reports every problem found, including unknown keys in
/// weir's namespace (each with the key it most likely meant).
///
/// `weir.dev/enabled` is validated when present but not required to be true: whether to
/// act on the Service at all is [`opted_in`]'s question. Controls and the status are
/// not read here ([`controls`] reads the controls).
pub fn parse(
    service: &str,
    annotations: &BTreeMap<String, String>,
    defaults: &Defaults,
) -> Result<RolloutSpec, SpecErrors> {
    let mut reader = Reader::new(annotations);
    reader.read(keys::ENABLED, parse_bool);
    let virtual_service = reader.read(keys::VIRTUAL_SERVICE, parse_object_name);
    let http_route = reader.read(keys::HTTP_ROUTE, parse_object_name);
    let route = reader.read(keys::ROUTE, parse_route_name);
    let destination_rule = reader.read(keys::DESTINATION_RULE, parse_object_name);
    let stable_subset = reader
        .read(keys::STABLE_SUBSET, parse_subset_name)
        .unwrap_or_else(|| defaults.stable_subset.clone());
    let canary_subset = reader
        .read(keys::CANARY_SUBSET, parse_subset_name)
        .unwrap_or_else(|| defaults.canary_subset.clone());
    let split_services = reader.split_services(service);
    if http_route.is_some() {
        reader.http_route_needs_split(split_services.is_some());
    }
    let version_label = reader
        .read(keys::VERSION_LABEL, parse_label_key)
        .unwrap_or_else(|| defaults.version_label.clone());
    let steps = reader
        .read(keys::STEPS, parse_steps)
        .unwrap_or_else(|| defaults.steps.clone());
    let step_interval = reader
        .read(keys::STEP_INTERVAL, parse_interval)
        .unwrap_or(defaults.step_interval);
    let check_interval = reader
        .read(keys::CHECK_INTERVAL, parse_interval)
        .unwrap_or(defaults.check_interval);
    let gates = Gates {
        max_error_rate: reader
            .read(keys::MAX_ERROR_RATE, parse_percent)
            .unwrap_or(defaults.gates.max_error_rate),
        max_latency: reader
            .read(keys::MAX_LATENCY, parse_latency)
            .unwrap_or(defaults.gates.max_latency),
        latency_quantile: reader
            .read(keys::LATENCY_QUANTILE, parse_quantile)
            .unwrap_or(defaults.gates.latency_quantile),
        min_requests: reader
            .read(keys::MIN_REQUESTS, parse_min_requests)
            .unwrap_or(defaults.gates.min_requests),
        error_codes: reader
            .read(keys::ERROR_CODES, parse_error_codes)
            .unwrap_or_else(|| defaults.gates.error_codes.clone()),
        max_slow_share: reader.slow_share(defaults.gates.max_slow_share),
        rule: reader
            .read(keys::ANALYSIS, parse_rule)
            .unwrap_or(defaults.gates.rule),
        tolerance: reader
            .read(keys::TOLERANCE, parse_tolerance)
            .unwrap_or(defaults.gates.tolerance),
        confidence: reader
            .read(keys::CONFIDENCE, parse_confidence)
            .unwrap_or(defaults.gates.confidence),
    };
    let failure_limit = reader
        .read(keys::FAILURE_LIMIT, parse_failure_limit)
        .unwrap_or(defaults.failure_limit);
    let no_data_timeout = reader
        .read(keys::NO_DATA_TIMEOUT, parse_interval)
        .unwrap_or(defaults.no_data_timeout);
    let decision_timeout = reader
        .read(keys::DECISION_TIMEOUT, parse_interval)
        .unwrap_or(defaults.decision_timeout);
    let metrics_config_map = reader.read(keys::METRICS, parse_object_name);
    let scale_down_delay = reader
        .read(keys::SCALE_DOWN_DELAY, parse_scale_down_delay)
        .unwrap_or(defaults.scale_down_delay);
    // Validated here, read by [`notify`]: where a transition is told is no part of
    // how a rollout runs.
    reader.read(keys::NOTIFY, parse_notify);

    if stable_subset == canary_subset && split_services.is_none() {
        reader.conflict(
            [keys::CANARY_SUBSET, keys::STABLE_SUBSET],
            &canary_subset,
            "the canary and stable subsets must differ: with one subset for both, \
             no traffic could move",
        );
    }
    if no_data_timeout < check_interval {
        let problem = format!(
            "the no-data timeout ({}) must be at least the check interval ({}): \
             otherwise a step times out before its first check",
            humantime::format_duration(no_data_timeout),
            humantime::format_duration(check_interval),
        );
        let shown = humantime::format_duration(no_data_timeout).to_string();
        reader.conflict(
            [keys::NO_DATA_TIMEOUT, keys::CHECK_INTERVAL],
            &shown,
            problem,
        );
    }
    reader.reject_unknown_keys();
    reader.finish()?;

    Ok(RolloutSpec {
        service: service.to_owned(),
        virtual_service,
        http_route,
        route,
        destination_rule,
        stable_subset,
        canary_subset,
        split_services,
        version_label,
        steps,
        step_interval,
        check_interval,
        gates,
        failure_limit,
        no_data_timeout,
        decision_timeout,
        metrics_config_map,
        scale_down_delay,
    })
}

/// The value of `weir.dev/enabled`: `false` when absent, an error when neither true nor
/// false (in any case).
pub fn enabled(annotations: &BTreeMap<String, String>) -> Result<bool, SpecError> {
    let mut reader = Reader::new(annotations);
    let enabled = reader.read(keys::ENABLED, parse_bool);
    match reader.errors.pop() {
        Some(error) => Err(error),
        None => Ok(enabled.unwrap_or(false)),
    }
}

/// The sinks `weir.dev/notify` sends a Service's notifications to: all of them when
/// absent, none when muted.
pub fn notify(annotations: &BTreeMap<String, String>) -> Result<Vec<Sink>, SpecError> {
    let mut reader = Reader::new(annotations);
    let sinks = reader.read(keys::NOTIFY, parse_notify);
    match reader.errors.pop() {
        Some(error) => Err(error),
        None => Ok(sinks.unwrap_or_else(|| Sink::ALL.to_vec())),
    }
}

/// Where the agent sends notifications of transitions, by the name `weir.dev/notify`
/// gives it. Ordered as [`Sink::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sink {
    /// A generic JSON webhook (`--notify-webhook-url-file`).
    Webhook,
    /// A Slack-compatible incoming webhook (`--notify-slack-url-file`).
    Slack,
}

impl Sink {
    /// Every sink, in order.
    pub const ALL: [Sink; 2] = [Sink::Webhook, Sink::Slack];

    /// The sink's name in `weir.dev/notify` and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Sink::Webhook => "webhook",
            Sink::Slack => "slack",
        }
    }
}

/// Whether the Service asks for weir: it carries `weir.dev/enabled` with any value but
/// `false`. A malformed value (`yes`) counts, so that the agent reports it as
/// misconfigured (through [`parse`]) rather than ignoring the Service in silence.
pub fn opted_in(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(keys::ENABLED)
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("false"))
}

/// The Services a host-level split names, read before [`parse`] to find, read or wake
/// them: `weir.dev/stable-service`, then `weir.dev/canary-service`, each when set to a
/// valid Service name.
pub fn split_service_names(annotations: &BTreeMap<String, String>) -> impl Iterator<Item = &str> {
    [keys::STABLE_SERVICE, keys::CANARY_SERVICE]
        .into_iter()
        .filter_map(|key| annotations.get(key))
        .filter(|name| parse_service_name(name).is_ok())
        .map(String::as_str)
}

/// Reads the controls a person or the CLI wrote: `weir.dev/pause` (true/false, absent is
/// false) and `weir.dev/promote`, `weir.dev/abort`, `weir.dev/retry`, each naming the
/// version it is meant for.
pub fn controls(annotations: &BTreeMap<String, String>) -> Result<Controls, SpecErrors> {
    let mut reader = Reader::new(annotations);
    let controls = Controls {
        pause: reader.read(keys::PAUSE, parse_bool).unwrap_or(false),
        promote: reader.read(keys::PROMOTE, parse_version),
        abort: reader.read(keys::ABORT, parse_version),
        retry: reader.read(keys::RETRY, parse_version),
    };
    reader.finish()?;
    Ok(controls)
}

/// Reads annotations one key at a time, collecting every problem.
struct Reader<'a> {
    annotations: &'a BTreeMap<String, String>,
    errors: Vec<SpecError>,
}

impl<'a> Reader<'a> {
    fn new(annotations: &'a BTreeMap<String, String>) -> Self {
        Reader {
            annotations,
            errors: Vec::new(),
        }
    }

    /// The parsed value of `key`; `None` when absent or invalid (and then recorded).
    fn read<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
    ) -> Option<T> {
        let value = self.annotations.get(key)?;
        parse(value)
            .map_err(|InvalidValue(problem)| {
                self.errors
                    .push(SpecError::new(key, value, problem, keys::example(key)));
            })
            .ok()
    }

    /// The slow-share gate: on with both `max-slow-share` and `slow-threshold`. A
    /// Service that sets one takes the other from the agent's default; with no default,
    /// the one it set is blamed for lacking its partner.
    fn slow_share(&mut self, default: Option<SlowShare>) -> Option<SlowShare> {
        let max_share = self.read(keys::MAX_SLOW_SHARE, parse_percent);
        let threshold = self.read(keys::SLOW_THRESHOLD, parse_latency);
        match (max_share, threshold, default) {
            (Some(max_share), Some(threshold), _) => Some(SlowShare {
                threshold,
                max_share,
            }),
            (max_share, threshold, Some(default)) => Some(SlowShare {
                threshold: threshold.unwrap_or(default.threshold),
                max_share: max_share.unwrap_or(default.max_share),
            }),
            (Some(_), None, None) => {
                self.missing(keys::MAX_SLOW_SHARE, keys::SLOW_THRESHOLD);
                None
            }
            (None, Some(_), None) => {
                self.missing(keys::SLOW_THRESHOLD, keys::MAX_SLOW_SHARE);
                None
            }
            (None, None, None) => None,
        }
    }

    /// The host-level split: both `stable-service` and `canary-service`, or neither.
    /// With them, the subset annotations would mean nothing, and are refused rather than
    /// silently ignored.
    fn split_services(&mut self, service: &str) -> Option<SplitServices> {
        let stable = self.read(keys::STABLE_SERVICE, parse_service_name);
        let canary = self.read(keys::CANARY_SERVICE, parse_service_name);
        let set = |key| self.annotations.contains_key(key);
        let both_set = set(keys::STABLE_SERVICE) && set(keys::CANARY_SERVICE);
        match (set(keys::STABLE_SERVICE), set(keys::CANARY_SERVICE)) {
            (true, false) => self.needs(keys::STABLE_SERVICE, keys::CANARY_SERVICE),
            (false, true) => self.needs(keys::CANARY_SERVICE, keys::STABLE_SERVICE),
            _ => {}
        }
        if !both_set {
            return None;
        }
        for key in [
            keys::DESTINATION_RULE,
            keys::STABLE_SUBSET,
            keys::CANARY_SUBSET,
        ] {
            if let Some(value) = self.annotations.get(key) {
                self.errors.push(SpecError::new(
                    key,
                    value,
                    format!(
                        "a host-level split ({} and {}) has no subsets: remove {key}, \
                         or remove the two Service annotations to split by subsets",
                        keys::STABLE_SERVICE,
                        keys::CANARY_SERVICE
                    ),
                    keys::example(keys::STABLE_SERVICE),
                ));
            }
        }
        let (stable, canary) = (stable?, canary?);
        for (key, name) in [
            (keys::STABLE_SERVICE, &stable),
            (keys::CANARY_SERVICE, &canary),
        ] {
            if name == service {
                self.errors.push(SpecError::new(
                    key,
                    name,
                    "must name another Service than the opted-in one: weir narrows this \
                     Service's selector to one version, and finds every version through \
                     the opted-in Service's selector",
                    keys::example(key),
                ));
                return None;
            }
        }
        if stable == canary {
            self.conflict(
                [keys::CANARY_SERVICE, keys::STABLE_SERVICE],
                &canary,
                "the canary and stable Services must differ: with one Service for both, \
                 no traffic could move",
            );
            return None;
        }
        Some(SplitServices { stable, canary })
    }

    /// An HTTPRoute splits between Services (its backendRefs), never between subsets, and
    /// is edited instead of a VirtualService, never with one.
    fn http_route_needs_split(&mut self, split: bool) {
        let value = self
            .annotations
            .get(keys::HTTP_ROUTE)
            .cloned()
            .unwrap_or_default();
        if let Some(vs) = self.annotations.get(keys::VIRTUAL_SERVICE) {
            let problem = format!(
                "weir edits one routing object: remove {} ({vs:?}) to edit the HTTPRoute, \
                 or remove {} to edit the VirtualService",
                keys::VIRTUAL_SERVICE,
                keys::HTTP_ROUTE
            );
            self.errors.push(SpecError::new(
                keys::HTTP_ROUTE,
                &value,
                problem,
                keys::example(keys::HTTP_ROUTE),
            ));
        }
        let invalid = |key| self.errors.iter().any(|e: &SpecError| e.annotation == key);
        if !split && !invalid(keys::STABLE_SERVICE) && !invalid(keys::CANARY_SERVICE) {
            let problem = format!(
                "an HTTPRoute splits traffic between Services: set {} and {} to the \
                 Services its backendRefs name",
                keys::STABLE_SERVICE,
                keys::CANARY_SERVICE
            );
            self.errors.push(SpecError::new(
                keys::HTTP_ROUTE,
                &value,
                problem,
                keys::example(keys::STABLE_SERVICE),
            ));
        }
    }

    /// `key` is set but means nothing without `partner`, which is absent.
    fn needs(&mut self, key: &'static str, partner: &'static str) {
        let value = self.annotations.get(key).map_or("", String::as_str);
        self.errors.push(SpecError::new(
            key,
            value,
            format!("it needs {partner} as well: a host-level split names both Services"),
            keys::example(partner),
        ));
    }

    /// `key`, one half of the slow-share gate, is set but means nothing without
    /// `partner`, the other half, which is absent (not merely invalid: then its own
    /// error says what to fix) and has no default.
    fn missing(&mut self, key: &'static str, partner: &'static str) {
        if self.annotations.contains_key(partner) {
            return;
        }
        let value = self.annotations.get(key).map_or("", String::as_str);
        self.errors.push(SpecError::new(
            key,
            value,
            format!(
                "it needs {partner} as well: the slow-share gate is on only with both, \
                 and the agent sets no default for {partner}"
            ),
            keys::example(partner),
        ));
    }

    /// Two values that are each valid but not together. Blames the first of `keys` the
    /// Service sets (the user's value, not the agent's default), or the first if it sets
    /// neither. Silent when either is already invalid: its default stood in for it.
    fn conflict(&mut self, pair: [&'static str; 2], effective: &str, problem: impl Into<String>) {
        let invalid = |key| self.errors.iter().any(|error| error.annotation == key);
        if pair.iter().any(|key| invalid(*key)) {
            return;
        }
        let set = |key: &&str| self.annotations.contains_key(*key);
        let blamed = pair.into_iter().find(set).unwrap_or(pair[0]);
        let value = self
            .annotations
            .get(blamed)
            .map_or(effective, String::as_str);
        let mut problem = problem.into();
        if !pair.iter().any(set) {
            problem.push_str(" (both values are the agent's defaults)");
        }
        self.errors.push(SpecError::new(
            blamed,
            value,
            problem,
            keys::example(blamed),
        ));
    }

    /// Every key in weir's namespace that weir does not know is a problem: most are
    /// typos whose intended value would otherwise be silently replaced by a default.
    fn reject_unknown_keys(&mut self) {
        for (key, value) in self.annotations {
            if keys::is_weir(key) && !keys::is_known(key) {
                let (problem, example) = match keys::meant(key) {
                    Some(meant) => (
                        format!("unknown annotation (did you mean {meant}?)"),
                        keys::example(meant),
                    ),
                    None => {
                        let nearest = keys::nearest(key);
                        (
                            format!(
                                "unknown annotation (not one weir reads; the nearest is {nearest})"
                            ),
                            keys::example(nearest),
                        )
                    }
                };
                self.errors
                    .push(SpecError::new(key.clone(), value, problem, example));
            }
        }
    }

    fn finish(self) -> Result<(), SpecErrors> {
        SpecErrors::from_vec(self.errors).map_or(Ok(()), Err)
    }
}
