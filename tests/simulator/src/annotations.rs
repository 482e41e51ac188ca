//! The `sim.weir.dev/*` annotations that configure simulated traffic.
//!
//! On a version's Deployment: [`ERROR_RATE`] and [`LATENCY_MS`]. On a Service:
//! [`RPS`]. A missing annotation means the default; a malformed one is reported as an
//! [`AnnotationError`] and the default is used instead.

use std::collections::BTreeMap;

use crate::mesh::ErrorRate;

/// Share of a version's responses that are 5xx: a fraction (`0.1`) or a percentage
/// (`10%`). Default 0.
pub const ERROR_RATE: &str = "sim.weir.dev/error-rate";
/// Mean response latency of a version in milliseconds (`250`, `12.5`). Default
/// [`DEFAULT_LATENCY_MS`].
pub const LATENCY_MS: &str = "sim.weir.dev/latency-ms";
/// In the noisy mode, a version's 99th-percentile latency in milliseconds (`400`);
/// [`LATENCY_MS`] is then its median. Default: four times the median.
pub const LATENCY_P99_MS: &str = "sim.weir.dev/latency-p99-ms";
/// Requests per second for each HTTP route whose first destination is this Service;
/// `0` stops its traffic. Default: the simulator's `--rps`.
pub const RPS: &str = "sim.weir.dev/rps";

/// Mean latency of a version without [`LATENCY_MS`].
pub const DEFAULT_LATENCY_MS: f64 = 20.0;

/// A `sim.weir.dev/*` annotation whose value cannot be used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("annotation {annotation}={value:?} is invalid: {expected}")]
pub struct AnnotationError {
    /// The annotation's key.
    pub annotation: &'static str,
    /// The value as written.
    pub value: String,
    /// What a valid value looks like.
    pub expected: &'static str,
}

type Annotations = BTreeMap<String, String>;

/// The error rate configured by [`ERROR_RATE`], or 0 when absent.
pub fn error_rate(annotations: &Annotations) -> Result<ErrorRate, AnnotationError> {
    let Some(value) = annotations.get(ERROR_RATE) else {
        return Ok(ErrorRate::ZERO);
    };
    let invalid = || AnnotationError {
        annotation: ERROR_RATE,
        value: value.clone(),
        expected: "a fraction between 0 and 1 (0.1) or a percentage between 0% and 100% (10%)",
    };
    let trimmed = value.trim();
    let fraction = match trimmed.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map_err(|_| invalid())? / 100.0,
        None => trimmed.parse::<f64>().map_err(|_| invalid())?,
    };
    ErrorRate::from_fraction(fraction).ok_or_else(invalid)
}

/// The mean latency in milliseconds configured by [`LATENCY_MS`], or
/// [`DEFAULT_LATENCY_MS`] when absent.
pub fn latency_ms(annotations: &Annotations) -> Result<f64, AnnotationError> {
    match annotations.get(LATENCY_MS) {
        None => Ok(DEFAULT_LATENCY_MS),
        Some(value) => non_negative(value).ok_or_else(|| AnnotationError {
            annotation: LATENCY_MS,
            value: value.clone(),
            expected: "a non-negative number of milliseconds (250)",
        }),
    }
}

/// The 99th-percentile latency configured by [`LATENCY_P99_MS`], or `None` when absent.
pub fn latency_p99_ms(annotations: &Annotations) -> Result<Option<f64>, AnnotationError> {
    annotations
        .get(LATENCY_P99_MS)
        .map(|value| {
            non_negative(value)
                .filter(|v| *v > 0.0)
                .ok_or_else(|| AnnotationError {
                    annotation: LATENCY_P99_MS,
                    value: value.clone(),
                    expected: "a positive number of milliseconds (400)",
                })
        })
        .transpose()
}

/// The request rate configured by [`RPS`], or `None` when absent.
pub fn rps(annotations: &Annotations) -> Result<Option<f64>, AnnotationError> {
    annotations
        .get(RPS)
        .map(|value| {
            non_negative(value).ok_or_else(|| AnnotationError {
                annotation: RPS,
                value: value.clone(),
                expected: "a non-negative number of requests per second (50)",
            })
        })
        .transpose()
}

fn non_negative(value: &str) -> Option<f64> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(key: &str, value: &str) -> Annotations {
        BTreeMap::from([(key.to_owned(), value.to_owned())])
    }

    #[test]
    fn error_rate_accepts_fractions_and_percentages() {
        let cases = [
            ("0.1", Some(100_000)),
            ("10%", Some(100_000)),
            (" 10 % ", Some(100_000)),
            ("0", Some(0)),
            ("0%", Some(0)),
            ("1", Some(1_000_000)),
            ("100%", Some(1_000_000)),
            ("0.5%", Some(5_000)),
            ("0.25", Some(250_000)),
            ("1.5", None),
            ("150%", None),
            ("-0.1", None),
            ("ten", None),
            ("", None),
            ("%", None),
            ("NaN", None),
        ];
        for (value, expected_ppm) in cases {
            let parsed = error_rate(&annotated(ERROR_RATE, value)).ok();
            assert_eq!(
                parsed.map(ErrorRate::parts_per_million),
                expected_ppm,
                "{value:?}"
            );
        }
    }

    #[test]
    fn missing_annotations_mean_defaults() {
        let none = Annotations::new();
        assert_eq!(error_rate(&none), Ok(ErrorRate::ZERO));
        assert_eq!(latency_ms(&none), Ok(DEFAULT_LATENCY_MS));
        assert_eq!(rps(&none), Ok(None));
    }

    #[test]
    fn latency_and_rps_are_non_negative_numbers() {
        let cases = [
            ("250", Some(250.0)),
            ("12.5", Some(12.5)),
            ("0", Some(0.0)),
            ("-1", None),
            ("inf", None),
            ("20ms", None),
        ];
        for (value, expected) in cases {
            assert_eq!(
                latency_ms(&annotated(LATENCY_MS, value)).ok(),
                expected,
                "{value:?}"
            );
            assert_eq!(
                rps(&annotated(RPS, value)).ok(),
                expected.map(Some),
                "{value:?}"
            );
        }
    }

    #[test]
    fn an_invalid_value_names_the_annotation() {
        let err = rps(&annotated(RPS, "lots")).unwrap_err();
        assert_eq!(err.annotation, RPS);
        assert!(
            err.to_string().contains("sim.weir.dev/rps=\"lots\""),
            "{err}"
        );
    }
}
