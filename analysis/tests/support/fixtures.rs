//! Fixtures shared by the test binaries: one check's request, known loads, and a
//! Prometheus holding their series.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use weir_analysis::{
    CheckReport, CheckRequest, Gates, PrometheusApi, PrometheusConfig, Reporter, Rule, Verdict,
};
use weir_testbed::Prometheus;

use super::{Load, Period, Series, remote_write, version_series};

pub const NAMESPACE: &str = "shop";
pub const CANARY: &str = "v2";
pub const STABLE: &str = "v1";
/// The step under test began this long before the evaluation time.
pub const STEP_AGE: SignedDuration = SignedDuration::from_secs(300);

/// The fixed evaluation time: a whole minute, far enough back that every sample written
/// (up to five minutes after it) is in the past.
pub fn evaluate_at() -> Timestamp {
    let now = Timestamp::now().as_second();
    Timestamp::from_second(now - now % 60 - 900).unwrap()
}

pub fn gates() -> Gates {
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

pub fn config(url: String) -> PrometheusConfig {
    PrometheusConfig {
        url,
        tenant: None,
        bearer_token_file: None,
        basic_auth: None,
        ca_file: None,
        query_timeout: Duration::from_secs(10),
        check_timeout: Duration::from_secs(30),
    }
}

pub fn request(service: &str, canary: &str, at: Timestamp) -> CheckRequest {
    CheckRequest {
        namespace: NAMESPACE.to_string(),
        service: service.to_string(),
        canary_service: service.to_string(),
        stable_service: service.to_string(),
        canary_version: canary.to_string(),
        stable_version: STABLE.to_string(),
        step_started_at: at - STEP_AGE,
        evaluate_at: at,
        min_window: Duration::from_secs(60),
        gates: gates(),
        reporter: Reporter::Destination,
        custom: Vec::new(),
        earlier: Default::default(),
        pass_at: 100.0,
    }
}

/// 100 requests a step (20 steps in the 300 s window: 2000): 94.05 OK, 5 not found (not
/// a server error) and 0.95 server errors; 99% of them within 250 ms.
pub fn canary_load(server_errors: f64) -> Load {
    Load {
        responses: vec![
            ("200", 95.0 - server_errors),
            ("404", 5.0),
            ("503", server_errors),
        ],
        buckets: vec![
            ("100", 50.0),
            ("250", 100.0),
            ("500", 100.0),
            ("600", 100.0),
        ],
    }
}

/// A stable version serving 1000 requests a step with one server error, fast.
pub fn stable_load() -> Load {
    Load {
        responses: vec![("200", 999.0), ("500", 1.0)],
        buckets: vec![
            ("100", 900.0),
            ("250", 1000.0),
            ("500", 1000.0),
            ("600", 1000.0),
        ],
    }
}

/// A burst after the evaluation time, which a check evaluated at that time must not see.
pub fn burst() -> Load {
    Load {
        responses: vec![("200", 10.0), ("503", 90.0)],
        buckets: vec![("100", 0.0), ("250", 0.0), ("500", 0.0), ("600", 0.0)],
    }
}

/// `service`'s stable and canary series: ten minutes of `canary` and `stable_load` up to
/// `at`, then five minutes of a burst of errors.
pub fn service_series(
    service: &str,
    canary_version: &str,
    canary: Option<Load>,
    at: Timestamp,
) -> Vec<Series> {
    let periods = |load: Load| {
        [
            Period {
                from: at - SignedDuration::from_secs(600),
                to: at,
                load,
            },
            Period {
                from: at,
                to: at + STEP_AGE,
                load: burst(),
            },
        ]
    };
    let mut series = version_series(NAMESPACE, service, STABLE, &periods(stable_load()));
    if let Some(load) = canary {
        series.extend(version_series(
            NAMESPACE,
            service,
            canary_version,
            &periods(load),
        ));
    }
    series
}

pub async fn prometheus_with(series: &[Series]) -> Prometheus {
    let prometheus = Prometheus::start(&[])
        .await
        .expect("start Prometheus (`make testbed` installs it)");
    remote_write(&prometheus.url(), series)
        .await
        .expect("write the test series");
    prometheus
}

pub async fn check(prometheus: &Prometheus, request: &CheckRequest) -> CheckReport {
    let api = PrometheusApi::new(&config(prometheus.url())).unwrap();
    api.check(request).await
}

pub fn value(verdict: &Verdict, metric: &str) -> (Option<f64>, Option<f64>) {
    let m = verdict
        .measurements()
        .iter()
        .find(|m| m.metric == metric)
        .unwrap_or_else(|| panic!("no {metric} in {verdict:?}"));
    (m.canary, m.stable)
}

pub fn assert_close(actual: Option<f64>, expected: f64, what: &str) {
    let actual = actual.unwrap_or_else(|| panic!("{what}: not measured"));
    assert!(
        (actual - expected).abs() <= expected.abs() * 1e-9,
        "{what}: measured {actual}, expected {expected}"
    );
}
