//! The gates against the test bed's real Prometheus, on series with exactly known values
//! written through its remote-write receiver and evaluated at a fixed time.

mod support;

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use support::{Load, Period, Series, remote_write, version_series};
use weir_analysis::judge::Series as Sample;
use weir_analysis::{
    CheckReport, CheckRequest, Gates, InconclusiveReason, PrometheusApi, PrometheusConfig,
    QueryError, Reporter, Verdict, promql,
};
use weir_testbed::Prometheus;

const NAMESPACE: &str = "shop";
const CANARY: &str = "v2";
const STABLE: &str = "v1";
/// The step under test began this long before the evaluation time.
const STEP_AGE: SignedDuration = SignedDuration::from_secs(300);

/// The fixed evaluation time: a whole minute, far enough back that every sample written
/// (up to five minutes after it) is in the past.
fn evaluate_at() -> Timestamp {
    let now = Timestamp::now().as_second();
    Timestamp::from_second(now - now % 60 - 900).unwrap()
}

fn gates() -> Gates {
    Gates {
        max_error_rate: 0.01,
        max_latency: Duration::from_millis(500),
        latency_quantile: 0.99,
        min_requests: 50,
    }
}

fn config(url: String) -> PrometheusConfig {
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

fn request(service: &str, canary: &str, at: Timestamp) -> CheckRequest {
    CheckRequest {
        namespace: NAMESPACE.to_string(),
        service: service.to_string(),
        canary_version: canary.to_string(),
        stable_version: STABLE.to_string(),
        step_started_at: at - STEP_AGE,
        evaluate_at: at,
        min_window: Duration::from_secs(60),
        gates: gates(),
        reporter: Reporter::Destination,
    }
}

/// 100 requests a step (20 steps in the 300 s window: 2000): 94.05 OK, 5 not found (not
/// a server error) and 0.95 server errors; 99% of them within 250 ms.
fn canary_load(server_errors: f64) -> Load {
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
fn stable_load() -> Load {
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
fn burst() -> Load {
    Load {
        responses: vec![("200", 10.0), ("503", 90.0)],
        buckets: vec![("100", 0.0), ("250", 0.0), ("500", 0.0), ("600", 0.0)],
    }
}

/// `service`'s stable and canary series: ten minutes of `canary` and `stable_load` up to
/// `at`, then five minutes of a burst of errors.
fn service_series(
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

async fn prometheus_with(series: &[Series]) -> Prometheus {
    let prometheus = Prometheus::start(&[])
        .await
        .expect("start Prometheus (`make testbed` installs it)");
    remote_write(&prometheus.url(), series)
        .await
        .expect("write the test series");
    prometheus
}

async fn check(prometheus: &Prometheus, request: &CheckRequest) -> CheckReport {
    let api = PrometheusApi::new(&config(prometheus.url())).unwrap();
    api.check(request).await
}

fn value(verdict: &Verdict, metric: &str) -> (Option<f64>, Option<f64>) {
    let m = verdict
        .measurements()
        .iter()
        .find(|m| m.metric == metric)
        .unwrap_or_else(|| panic!("no {metric} in {verdict:?}"));
    (m.canary, m.stable)
}

fn assert_close(actual: Option<f64>, expected: f64, what: &str) {
    let actual = actual.unwrap_or_else(|| panic!("{what}: not measured"));
    assert!(
        (actual - expected).abs() <= expected.abs() * 1e-9,
        "{what}: measured {actual}, expected {expected}"
    );
}

#[tokio::test]
async fn error_rate_just_under_the_bound_passes_and_just_over_fails() {
    let at = evaluate_at();
    let mut series = service_series("under", CANARY, Some(canary_load(0.95)), at);
    series.extend(service_series("over", CANARY, Some(canary_load(1.05)), at));
    let prometheus = prometheus_with(&series).await;

    let under = check(&prometheus, &request("under", CANARY, at)).await;
    assert!(matches!(under.verdict, Verdict::Pass { .. }), "{under:#?}");
    assert_eq!(under.window_seconds, 300);
    assert_close(
        value(&under.verdict, "request-count").0,
        2000.0,
        "canary requests",
    );
    assert_close(
        value(&under.verdict, "request-count").1,
        20_000.0,
        "stable requests",
    );
    assert_close(
        value(&under.verdict, "error-rate").0,
        0.0095,
        "canary error rate",
    );
    assert_close(
        value(&under.verdict, "error-rate").1,
        0.001,
        "stable error rate",
    );
    // Rank 99 of 100 in the (100, 250] bucket holding 50: 100 + 150 × 49/50.
    assert_close(value(&under.verdict, "latency").0, 247.0, "canary latency");

    let over = check(&prometheus, &request("over", CANARY, at)).await;
    let Verdict::Fail { failed, .. } = &over.verdict else {
        panic!("expected a failure: {over:#?}");
    };
    assert_eq!(failed, &["error-rate"]);
    assert_close(
        value(&over.verdict, "error-rate").0,
        0.0105,
        "canary error rate",
    );

    // The burst after the evaluation time is visible to a check evaluated after it.
    let later = request("under", CANARY, at + STEP_AGE);
    let report = check(&prometheus, &later).await;
    assert!(
        matches!(report.verdict, Verdict::Fail { .. }),
        "{report:#?}"
    );
}

#[tokio::test]
async fn latency_just_under_the_bound_passes_and_just_over_fails() {
    let at = evaluate_at();
    let load = |within_500: f64| Load {
        responses: vec![("200", 100.0)],
        buckets: vec![
            ("100", 10.0),
            ("250", 20.0),
            ("500", within_500),
            ("600", 100.0),
        ],
    };
    let mut series = service_series("fast", CANARY, Some(load(99.1)), at);
    series.extend(service_series("slow", CANARY, Some(load(98.9)), at));
    let prometheus = prometheus_with(&series).await;

    let fast = check(&prometheus, &request("fast", CANARY, at)).await;
    assert!(matches!(fast.verdict, Verdict::Pass { .. }), "{fast:#?}");
    // Rank 99 in (250, 500], which holds 20..99.1: 250 + 250 × 79/79.1.
    assert_close(
        value(&fast.verdict, "latency").0,
        250.0 + 250.0 * 79.0 / 79.1,
        "fast latency",
    );

    let slow = check(&prometheus, &request("slow", CANARY, at)).await;
    let Verdict::Fail { failed, .. } = &slow.verdict else {
        panic!("expected a failure: {slow:#?}");
    };
    assert_eq!(failed, &["latency"]);
    // Rank 99 in (500, 600], which holds 98.9..100: 500 + 100 × 0.1/1.1.
    assert_close(
        value(&slow.verdict, "latency").0,
        500.0 + 100.0 * 0.1 / 1.1,
        "slow latency",
    );
}

#[tokio::test]
async fn zero_traffic_is_no_data() {
    let at = evaluate_at();
    let idle = Load {
        responses: vec![("200", 0.0)],
        buckets: vec![("100", 0.0)],
    };
    // "absent": the canary never reported; "idle": its counters exist but stand still.
    let mut series = service_series("absent", CANARY, None, at);
    series.extend(service_series("idle", CANARY, Some(idle), at));
    let prometheus = prometheus_with(&series).await;

    for service in ["absent", "idle"] {
        let report = check(&prometheus, &request(service, CANARY, at)).await;
        let Verdict::Inconclusive { reason, .. } = &report.verdict else {
            panic!("{service}: expected inconclusive: {report:#?}");
        };
        assert_eq!(
            *reason,
            InconclusiveReason::NoData,
            "{service}: {report:#?}"
        );
        assert_close(
            value(&report.verdict, "request-count").1,
            20_000.0,
            "stable requests",
        );
    }
}

#[tokio::test]
async fn ten_requests_are_too_few_for_min_requests_50() {
    let at = evaluate_at();
    let trickle = Load {
        responses: vec![("200", 0.5)],
        buckets: vec![("100", 0.5)],
    };
    let prometheus = prometheus_with(&service_series("quiet", CANARY, Some(trickle), at)).await;

    let report = check(&prometheus, &request("quiet", CANARY, at)).await;
    let Verdict::Inconclusive { reason, detail, .. } = &report.verdict else {
        panic!("expected inconclusive: {report:#?}");
    };
    assert_eq!(*reason, InconclusiveReason::TooFewRequests, "{report:#?}");
    assert!(detail.contains("fewer than min-requests 50"), "{detail}");
    assert_close(
        value(&report.verdict, "request-count").0,
        10.0,
        "canary requests",
    );
}

#[tokio::test]
async fn hostile_names_are_matched_literally() {
    let at = evaluate_at();
    let hostile = "v2\"} or vector(1) or {x=\"\\ \n ünï 🚀";
    let prometheus = prometheus_with(&service_series(
        "hostile",
        hostile,
        Some(canary_load(0.95)),
        at,
    ))
    .await;

    // The escaped literal means exactly the hostile text to PromQL's own parser.
    let api = PrometheusApi::new(&config(prometheus.url())).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let echoed = api
        .instant_query(
            &format!(
                r#"label_replace(vector(1), "echo", {}, "", "")"#,
                promql::quote(hostile)
            ),
            at,
            deadline,
        )
        .await
        .unwrap();
    assert_eq!(echoed.len(), 1, "{echoed:?}");
    assert_eq!(
        echoed[0].labels.get("echo").map(String::as_str),
        Some(hostile)
    );

    // A version with that name is measured like any other...
    let report = api.check(&request("hostile", hostile, at)).await;
    assert!(
        matches!(report.verdict, Verdict::Pass { .. }),
        "{report:#?}"
    );
    assert_close(
        value(&report.verdict, "request-count").0,
        2000.0,
        "canary requests",
    );
    // ...and a look-alike name matches nothing rather than injecting `vector(1)`.
    let report = api
        .check(&request("hostile", "v2\"} or vector(1) or {x=\"", at))
        .await;
    let Verdict::Inconclusive { reason, .. } = &report.verdict else {
        panic!("expected inconclusive: {report:#?}");
    };
    assert_eq!(*reason, InconclusiveReason::NoData);
}

#[tokio::test]
async fn base_url_with_trailing_slash_works() {
    let at = evaluate_at();
    let prometheus =
        prometheus_with(&service_series("slash", CANARY, Some(canary_load(0.0)), at)).await;
    let api = PrometheusApi::new(&config(format!("{}/", prometheus.url()))).unwrap();
    let report = api.check(&request("slash", CANARY, at)).await;
    assert!(
        matches!(report.verdict, Verdict::Pass { .. }),
        "{report:#?}"
    );
}

#[tokio::test]
async fn a_wrong_base_path_is_a_configuration_error_naming_the_url() {
    let prometheus = Prometheus::start(&[])
        .await
        .expect("start Prometheus (`make testbed` installs it)");
    let url = format!("{}/no-such-prefix", prometheus.url());
    let api = PrometheusApi::new(&config(url.clone())).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);

    let error = api
        .instant_query("vector(1)", Timestamp::now(), deadline)
        .await
        .unwrap_err();
    let QueryError::Refused {
        endpoint, message, ..
    } = &error
    else {
        panic!("expected a refusal: {error:?}");
    };
    assert_eq!(endpoint, &format!("{url}/api/v1/query"));
    assert!(message.contains("404 page not found"), "{message}");

    // A check says so in its detail, after one attempt: a refusal is not retried.
    let report = api.check(&request("any", CANARY, evaluate_at())).await;
    let Verdict::Inconclusive { reason, detail, .. } = &report.verdict else {
        panic!("expected inconclusive: {report:#?}");
    };
    assert_eq!(*reason, InconclusiveReason::QueryError);
    assert!(
        detail.contains(&format!("{url}/api/v1/query refused the query")),
        "{detail}"
    );
    assert!(detail.contains("(after 1 attempt)"), "{detail}");
}

#[tokio::test]
async fn a_stopped_prometheus_is_retried_until_the_deadline() {
    let prometheus = Prometheus::start(&[])
        .await
        .expect("start Prometheus (`make testbed` installs it)");
    let url = prometheus.url();
    drop(prometheus);
    let check_timeout = Duration::from_secs(3);
    let api = PrometheusApi::new(&PrometheusConfig {
        query_timeout: Duration::from_secs(1),
        check_timeout,
        ..config(url.clone())
    })
    .unwrap();

    let started = Instant::now();
    let report = api.check(&request("any", CANARY, evaluate_at())).await;
    let elapsed = started.elapsed();

    let Verdict::Inconclusive { reason, detail, .. } = &report.verdict else {
        panic!("expected inconclusive: {report:#?}");
    };
    assert_eq!(*reason, InconclusiveReason::QueryError, "{detail}");
    assert!(detail.contains(&format!("{url}/api/v1/query")), "{detail}");
    for metric in ["request-count", "error-rate", "latency"] {
        assert!(detail.contains(metric), "{metric} missing from {detail}");
    }
    let attempts: Vec<u32> = detail
        .match_indices("(after ")
        .filter_map(|(i, _)| detail[i + 7..].split(' ').next()?.parse().ok())
        .collect();
    assert!(!attempts.is_empty(), "attempts are counted: {detail}");
    assert!(
        attempts.iter().all(|n| *n >= 3),
        "every query is retried: {detail}"
    );
    // Gave up by the deadline: the backoff never sleeps past it (slack for a loaded machine).
    assert!(
        elapsed < check_timeout + Duration::from_secs(1),
        "took {elapsed:?}"
    );
}

#[tokio::test]
async fn queries_return_series_with_their_labels() {
    let at = evaluate_at();
    let prometheus = prometheus_with(&service_series(
        "labels",
        CANARY,
        Some(canary_load(1.0)),
        at,
    ))
    .await;
    let api = PrometheusApi::new(&config(prometheus.url())).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut series = api
        .instant_query(
            r#"sum by (destination_version, response_code) (increase(istio_requests_total{destination_service_name="labels"}[300s]))"#,
            at,
            deadline,
        )
        .await
        .unwrap();
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    let shown: Vec<(String, String, f64)> = series
        .iter()
        .map(|Sample { labels, value }| {
            (
                labels["destination_version"].clone(),
                labels["response_code"].clone(),
                (value * 1e6).round() / 1e6,
            )
        })
        .collect();
    let row = |v: &str, code: &str, n: f64| (v.to_string(), code.to_string(), n);
    assert_eq!(
        shown,
        [
            row("v1", "200", 19_980.0),
            row("v1", "500", 20.0),
            row("v2", "200", 1880.0),
            row("v2", "404", 100.0),
            row("v2", "503", 20.0),
        ]
    );
}
