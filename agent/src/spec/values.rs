//! One parser for each kind of value an annotation or an agent flag holds.
//!
//! The annotations and the agent's flags share these, so that `--steps` and
//! `weir.dev/steps` accept exactly the same text. Each returns an [`InvalidValue`]
//! saying what is wrong in words a user can act on; the caller adds which annotation
//! or flag it was. Surrounding whitespace is ignored for numbers, durations, shares,
//! response-code patterns and booleans; names are taken exactly as written, since a
//! name with a space in it is a different (and invalid) name.

use std::time::Duration;

use thiserror::Error;
use weir_analysis::{InvalidResponseCodes, ResponseCodes, Rule};

use super::{Sink, Weight};

/// Why a value was rejected, e.g. "steps must be strictly ascending: 5 comes after 10".
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid<T>(problem: impl Into<String>) -> Result<T, InvalidValue> {
    Err(InvalidValue(problem.into()))
}

/// The most steps a rollout may have.
pub const MAX_STEPS: usize = 20;
/// Bounds of step-interval, check-interval and no-data-timeout.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// Bounds of max-latency and slow-threshold: Istio's latency histogram has millisecond
/// buckets up to 1h.
pub const MIN_LATENCY: Duration = Duration::from_millis(1);
pub const MAX_LATENCY: Duration = Duration::from_secs(60 * 60);

/// `true` or `false`, in any case.
pub fn parse_bool(text: &str) -> Result<bool, InvalidValue> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if text.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        invalid("must be true or false")
    }
}

/// Canary weights in percent: comma-separated whole numbers, strictly ascending, each
/// in 1..=100, between 1 and [`MAX_STEPS`] of them (`10, 25, 50`). 100 may be the last
/// step: the canary then takes all traffic before it is promoted.
pub fn parse_steps(text: &str) -> Result<Vec<Weight>, InvalidValue> {
    if text.trim().is_empty() {
        return invalid("at least one step is needed");
    }
    let mut steps: Vec<Weight> = Vec::new();
    for (index, item) in text.split(',').enumerate() {
        let item = item.trim();
        let position = index + 1;
        if item.is_empty() {
            return invalid(format!(
                "step {position} is empty: separate weights with single commas"
            ));
        }
        let digits = item.bytes().all(|b| b.is_ascii_digit());
        let weight = match whole_number(item) {
            Some(n) if (1..=100).contains(&n) => n as Weight,
            Some(n) => return invalid(format!("weight {n} is outside 1..=100")),
            None if digits => return invalid(format!("step {position} is outside 1..=100")),
            None if item.ends_with('%') => {
                return invalid("write weights as whole numbers without %");
            }
            None if item
                .split_whitespace()
                .all(|part| whole_number(part).is_some()) =>
            {
                return invalid("separate weights with commas");
            }
            None => return invalid(format!("step {position} is not a whole number")),
        };
        if let Some(&previous) = steps.last()
            && weight <= previous
        {
            return invalid(format!(
                "steps must be strictly ascending: {weight} comes after {previous}"
            ));
        }
        steps.push(weight);
    }
    if steps.len() > MAX_STEPS {
        return invalid(format!(
            "{} steps is too many: at most {MAX_STEPS} are allowed",
            steps.len()
        ));
    }
    Ok(steps)
}

/// A non-zero duration: whole or decimal numbers each followed by a unit (`ms`, `s`,
/// `m`, `h`, `d`, or their long forms), concatenated or separated by spaces: `500ms`,
/// `30s`, `1m`, `1h30m`. A bare number is rejected: its unit would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    let text = text.trim();
    if text.is_empty() {
        return invalid("a duration is needed");
    }
    if text.len() > 64 {
        return invalid("too long for a duration");
    }
    if decimal(text).is_some() {
        return invalid("a duration needs a unit: ms, s, m or h");
    }
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => invalid("must be longer than zero"),
        Ok(duration) => Ok(duration),
        Err(error) => invalid(format!(
            "not a duration ({error}); write a number and a unit, like 30s or 1h30m"
        )),
    }
}

/// A duration in [`MIN_INTERVAL`]..=[`MAX_INTERVAL`] (1s to 24h): step-interval,
/// check-interval and no-data-timeout.
pub fn parse_interval(text: &str) -> Result<Duration, InvalidValue> {
    let duration = parse_duration(text)?;
    if duration < MIN_INTERVAL {
        return invalid("must be at least 1s");
    }
    if duration > MAX_INTERVAL {
        return invalid("must be at most 24h");
    }
    Ok(duration)
}

/// The longest `scale-down-delay`: a week keeps the previous version ready for an
/// instant rollback over any release cadence we know of.
pub const MAX_SCALE_DOWN_DELAY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// `scale-down-delay`: how long after a promotion the superseded version keeps its
/// replicas. `never` (in any case) keeps them for good: `None`. Otherwise a duration in
/// 0s..=7d; `0s` scales it down as soon as the promotion is recorded.
pub fn parse_scale_down_delay(text: &str) -> Result<Option<Duration>, InvalidValue> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    if matches!(text, "0s" | "0m" | "0h" | "0ms") {
        return Ok(Some(Duration::ZERO));
    }
    let delay = parse_duration(text).map_err(|InvalidValue(problem)| {
        InvalidValue(format!(
            "{problem}; or write never to keep the previous version running"
        ))
    })?;
    if delay > MAX_SCALE_DOWN_DELAY {
        return invalid("must be at most 7d; write never to keep the previous version running");
    }
    Ok(Some(delay))
}

/// A latency limit (max-latency, slow-threshold): a duration with a unit, a whole number
/// of milliseconds, in [`MIN_LATENCY`]..=[`MAX_LATENCY`] (1ms to 1h). `250ms`, `1s`,
/// `1.5s`.
pub fn parse_latency(text: &str) -> Result<Duration, InvalidValue> {
    let duration = parse_duration(text)?;
    if duration < MIN_LATENCY {
        return invalid("must be at least 1ms");
    }
    if duration > MAX_LATENCY {
        return invalid("must be at most 1h");
    }
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return invalid("must be a whole number of milliseconds");
    }
    Ok(duration)
}

/// A percentage in 0%..=100% with the `%` sign (`1%`, `0.5%`, `0%`), returned as a
/// fraction (`0.01`, `0.005`, `0.0`). A bare number is rejected: `1` could mean 1% or
/// 100%.
pub fn parse_percent(text: &str) -> Result<f64, InvalidValue> {
    let text = text.trim();
    let Some(number) = text.strip_suffix('%') else {
        return if decimal(text).is_some() {
            invalid("a percentage needs a % sign: write 1% for one percent, not 0.01 or 1")
        } else {
            invalid("not a percentage: write a number and %, like 1% or 0.5%")
        };
    };
    match decimal(number.trim_end()) {
        Some(percent) if percent <= 100.0 => Ok(percent / 100.0),
        Some(_) => invalid("must be at most 100%"),
        None => invalid("not a percentage: write a number and %, like 1% or 0.5%"),
    }
}

/// The response codes the error-rate gate counts as errors: alternatives separated by
/// `|`, each three positions, each a digit, `.` (any digit) or a bracketed class of
/// digits (`5..`, `5..|429`, `50[0-4]`), checked by [`ResponseCodes`]. A pattern that is
/// one slip away from valid (`5xx`, `5.. | 429`) is refused with the pattern it means.
pub fn parse_error_codes(text: &str) -> Result<ResponseCodes, InvalidValue> {
    let text = text.trim();
    let with_fix = |InvalidResponseCodes { problem, .. }| {
        InvalidValue(format!("{problem} ({})", error_codes_fix(text)))
    };
    text.parse().map_err(with_fix)
}

/// How to write `refused`: the pattern it is one slip away from, or else the format.
fn error_codes_fix(refused: &str) -> String {
    let meant: String = refused
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| if c.eq_ignore_ascii_case(&'x') { '.' } else { c })
        .collect();
    if meant == refused || meant.parse::<ResponseCodes>().is_err() {
        "write alternatives separated by |, each of three positions: a digit, \
         `.` for any digit, or a class such as [0-4]"
            .to_string()
    } else if refused.contains(['x', 'X']) {
        format!("write {meant}: `.` stands for any digit")
    } else {
        format!("write {meant}, without spaces")
    }
}

/// A quantile strictly between 0 and 1, as a decimal fraction: `0.99`, `0.5`, `0.999`.
/// The `p99` and `99%` notations are rejected with the fraction they mean, so that
/// there is one way to write a quantile.
pub fn parse_quantile(text: &str) -> Result<f64, InvalidValue> {
    let text = text.trim();
    if let Some(quantile) = decimal(text) {
        return if quantile > 0.0 && quantile < 1.0 {
            Ok(quantile)
        } else {
            invalid("must be strictly between 0 and 1, like 0.99 for the 99th percentile")
        };
    }
    let percentile = text
        .strip_prefix(['p', 'P'])
        .or_else(|| text.strip_suffix('%'))
        .and_then(percentile_as_fraction);
    match percentile {
        Some(fraction) => invalid(format!("write the quantile as a fraction: {fraction}")),
        None => invalid("not a quantile: write a fraction between 0 and 1, like 0.99"),
    }
}

/// `99` → `0.99`, `99.9` → `0.999`, `5` → `0.05`: done on the digits, not in floating
/// point, so that the hint shows exactly what to write. `None` unless in (0, 100).
fn percentile_as_fraction(percentile: &str) -> Option<String> {
    if percentile.len() > 8 {
        return None;
    }
    let value = decimal(percentile)?;
    if value <= 0.0 || value >= 100.0 {
        return None;
    }
    let (whole, fraction) = percentile.split_once('.').unwrap_or((percentile, ""));
    let whole = whole.trim_start_matches('0');
    let digits = format!("{whole:0>2}{fraction}");
    let digits = digits.trim_end_matches('0');
    Some(format!("0.{digits}"))
}

/// How the gates decide: `sequential` (on evidence, the default) or `threshold`
/// (weir 0.1's fixed thresholds per check, kept as the decision benchmark's baseline).
pub fn parse_rule(text: &str) -> Result<Rule, InvalidValue> {
    match text.trim() {
        t if t.eq_ignore_ascii_case("sequential") => Ok(Rule::Sequential),
        t if t.eq_ignore_ascii_case("threshold") => Ok(Rule::Threshold),
        _ => invalid(
            "must be sequential (decide on evidence) or threshold (fixed thresholds per check)",
        ),
    }
}

/// How much worse than stable a canary may be: a percentage, 0% to 1000% (`50%`: up to
/// 1.5 times stable's share of errors and of slow requests).
pub fn parse_tolerance(text: &str) -> Result<f64, InvalidValue> {
    let text = text.trim();
    let Some(number) = text.strip_suffix('%') else {
        return invalid("write a percentage, like 50% for up to 1.5 times stable's rates");
    };
    match decimal(number.trim_end()) {
        Some(percent) if percent <= 1000.0 => Ok(fraction(percent)),
        Some(_) => invalid("must be at most 1000%"),
        None => invalid("not a percentage: write a number and %, like 50%"),
    }
}

/// The confidence of every decision: a percentage from 80% to 99.99% (`99%`).
pub fn parse_confidence(text: &str) -> Result<f64, InvalidValue> {
    let text = text.trim();
    let Some(number) = text.strip_suffix('%') else {
        return invalid("write a percentage, like 99%");
    };
    match decimal(number.trim_end()) {
        Some(percent) if (80.0..=99.99).contains(&percent) => Ok(fraction(percent)),
        Some(_) => invalid(
            "must be from 80% to 99.99%: lower lets a coin toss decide, higher asks for more requests than any step sees",
        ),
        None => invalid("not a percentage: write a number and %, like 99%"),
    }
}

/// `percent / 100`, without the binary noise of the division (99.9% is 0.999, not
/// 0.9990000000000001): at most four decimals of a percentage are kept.
fn fraction(percent: f64) -> f64 {
    (percent * 1e4).round() / 1e6
}

/// Where a Service's notifications go: `all` (every sink the agent has), `none` (muted),
/// or sink names separated by commas (`slack`, `webhook,slack`), in any case. Returns
/// the sinks named, each once, in the order of [`Sink::ALL`].
pub fn parse_notify(text: &str) -> Result<Vec<Sink>, InvalidValue> {
    const FORMAT: &str = "write all, none, or sink names separated by commas (webhook, slack)";
    let items: Vec<&str> = text.split(',').map(str::trim).collect();
    if let [only] = items.as_slice() {
        if only.is_empty() {
            return invalid(format!("empty: {FORMAT}"));
        }
        if only.eq_ignore_ascii_case("all") {
            return Ok(Sink::ALL.to_vec());
        }
        if only.eq_ignore_ascii_case("none") {
            return Ok(Vec::new());
        }
    }
    let mut sinks = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if ["all", "none"]
            .iter()
            .any(|word| item.eq_ignore_ascii_case(word))
        {
            return invalid(format!("{item} stands alone: {FORMAT}"));
        }
        match Sink::ALL
            .into_iter()
            .find(|sink| sink.name().eq_ignore_ascii_case(item))
        {
            Some(sink) => sinks.push(sink),
            None if item.is_empty() => {
                return invalid(format!(
                    "name {} is empty: separate sink names with single commas",
                    index + 1
                ));
            }
            None => return invalid(format!("{item:?} is not a sink: {FORMAT}")),
        }
    }
    sinks.sort();
    sinks.dedup();
    Ok(sinks)
}

/// Canary requests a check needs before it can pass: a whole number, 0 or more.
pub fn parse_min_requests(text: &str) -> Result<u64, InvalidValue> {
    whole_number(text.trim()).map_or_else(|| invalid("must be a whole number, 0 or more"), Ok)
}

/// Failed checks that abort a rollout: a whole number, 1 or more.
pub fn parse_failure_limit(text: &str) -> Result<u32, InvalidValue> {
    match whole_number(text.trim()).map(u32::try_from) {
        Some(Ok(0)) => invalid("must be at least 1: with 0 no check could ever fail"),
        Some(Ok(limit)) => Ok(limit),
        Some(Err(_)) => invalid(format!("must be at most {}", u32::MAX)),
        None => invalid("must be a whole number, 1 or more"),
    }
}

/// Digits only (no sign, no spaces), as `u64`; `None` if not, or too large.
fn whole_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `digits` or `digits.digits`, nothing else: no sign, exponent, `inf` or `NaN`, which
/// `f64::from_str` would accept.
fn decimal(text: &str) -> Option<f64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if digits(whole) && digits(fraction) {
        text.parse().ok()
    } else {
        None
    }
}
