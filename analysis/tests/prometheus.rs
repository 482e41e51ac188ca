//! The gates against the test bed's real Prometheus, on series with exactly known values
//! written through its remote-write receiver and evaluated at a fixed time.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use support::Load;
use support::fixtures::*;
use weir_analysis::judge::Series as Sample;
use weir_analysis::{
    Bound, CheckRequest, InconclusiveReason, MetricTemplate, PrometheusApi, PrometheusConfig,
    QueryError, SlowShare, Verdict, parse_metrics, promql,
};
use weir_testbed::Prometheus;

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

    // A version with that name is measured like any other, by the built-in gates and
    // through a custom template...
    let report = api
        .check(&with_custom(
            request("hostile", hostile, at),
            error_ratio("max: stable * 10"),
        ))
        .await;
    assert!(
        matches!(report.verdict, Verdict::Pass { .. }),
        "{report:#?}"
    );
    assert_close(
        value(&report.verdict, "request-count").0,
        2000.0,
        "canary requests",
    );
    assert_close(
        value(&report.verdict, "error-ratio").0,
        0.0095,
        "canary error ratio",
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
    assert_eq!(*reason, InconclusiveReason::Misconfigured);
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

/// `istio_requests_total` of one version of the Service, with extra matchers, in a
/// custom template: `{namespace}`, `{service}` and `{version}` inside their literals.
fn requests_of_version(extra: &str) -> String {
    format!(
        r#"increase(istio_requests_total{{destination_workload_namespace="{{namespace}}",destination_service_name="{{service}}",destination_version="{{version}}"{extra}}}[{{window}}])"#
    )
}

fn template(name: &str, yaml: &str) -> MetricTemplate {
    let data = BTreeMap::from([(name.to_string(), yaml.to_string())]);
    parse_metrics("extra-metrics", &data)
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0)
}

/// The error ratio as a custom metric, held to `bound`.
fn error_ratio(bound: &str) -> MetricTemplate {
    let query = format!(
        "sum({}) / sum({})",
        requests_of_version(r#",response_code=~"5..""#),
        requests_of_version("")
    );
    template("error-ratio", &format!("query: '{query}'\n{bound}\n"))
}

fn with_custom(mut request: CheckRequest, custom: MetricTemplate) -> CheckRequest {
    request.custom = vec![custom];
    request
}

#[tokio::test]
async fn custom_metric_relative_to_stable_passes_and_fails_on_exact_values() {
    let at = evaluate_at();
    let prometheus = prometheus_with(&service_series(
        "custom",
        CANARY,
        Some(canary_load(0.95)),
        at,
    ))
    .await;
    let api = PrometheusApi::new(&config(prometheus.url())).unwrap();

    // Canary 19 errors in 2000 requests (0.0095), stable 20 in 20000 (0.001).
    let report = api
        .check(&with_custom(
            request("custom", CANARY, at),
            error_ratio("max: stable * 10"),
        ))
        .await;
    assert!(
        matches!(report.verdict, Verdict::Pass { .. }),
        "{report:#?}"
    );
    let measured = report
        .verdict
        .measurements()
        .iter()
        .find(|m| m.metric == "error-ratio")
        .unwrap();
    assert_close(measured.canary, 0.0095, "canary error ratio");
    assert_close(measured.stable, 0.001, "stable error ratio");
    let Some(Bound::Max(bound)) = measured.bound else {
        panic!("{measured:?}");
    };
    assert_close(Some(bound), 0.01, "bound stable × 10");
    // Three built-in queries, then the template for each version, values substituted.
    let custom: Vec<_> = report.queries.iter().skip(3).collect();
    assert_eq!(report.queries.len(), 5, "{:#?}", report.queries);
    assert_eq!(custom[0].version.as_deref(), Some(CANARY));
    assert_eq!(custom[1].version.as_deref(), Some(STABLE));
    assert!(
        custom[0].promql.contains(r#"destination_version="v2""#)
            && custom[0].promql.contains("[300s]")
            && custom[1].promql.contains(r#"destination_version="v1""#),
        "{custom:#?}"
    );

    let report = api
        .check(&with_custom(
            request("custom", CANARY, at),
            error_ratio("max: stable * 9"),
        ))
        .await;
    let Verdict::Fail { failed, .. } = &report.verdict else {
        panic!("expected a failure: {report:#?}");
    };
    assert_eq!(failed, &["error-ratio"]);
    let measured = report.verdict.measurements().last().unwrap();
    assert_eq!(
        measured.bound.as_ref().map(|b| format!("{b:?}")),
        Some(format!("{:?}", Bound::Max(0.001 * 9.0)))
    );
}

#[tokio::test]
async fn custom_metric_returning_nan_is_inconclusive() {
    let at = evaluate_at();
    // The canary's 503 counter exists but never moves: 0 / 0.
    let prometheus =
        prometheus_with(&service_series("calm", CANARY, Some(canary_load(0.0)), at)).await;
    let query = format!(
        "sum({0}) / sum({0})",
        requests_of_version(r#",response_code="503""#)
    );
    let nan = template("share-of-503", &format!("query: '{query}'\nmax: 0.5\n"));
    let api = PrometheusApi::new(&config(prometheus.url())).unwrap();

    let report = api
        .check(&with_custom(request("calm", CANARY, at), nan))
        .await;
    let Verdict::Inconclusive { reason, detail, .. } = &report.verdict else {
        panic!("expected inconclusive: {report:#?}");
    };
    assert_eq!(*reason, InconclusiveReason::NotANumber, "{detail}");
    assert!(
        detail.contains("share-of-503: canary v2 measured NaN"),
        "{detail}"
    );
    // The built-in gates were measured and met; only the custom metric lacks evidence.
    assert_close(
        value(&report.verdict, "request-count").0,
        2000.0,
        "canary requests",
    );
}

#[tokio::test]
async fn custom_metric_returning_two_series_is_inconclusive() {
    let at = evaluate_at();
    let prometheus =
        prometheus_with(&service_series("split", CANARY, Some(canary_load(1.0)), at)).await;
    let query = format!("sum by (response_code) ({})", requests_of_version(""));
    let by_code = template("requests-by-code", &format!("query: '{query}'\nmin: 1\n"));
    let api = PrometheusApi::new(&config(prometheus.url())).unwrap();

    let report = api
        .check(&with_custom(request("split", CANARY, at), by_code))
        .await;
    let Verdict::Inconclusive { reason, detail, .. } = &report.verdict else {
        panic!("expected inconclusive: {report:#?}");
    };
    assert_eq!(*reason, InconclusiveReason::SeveralSeries, "{detail}");
    // Canary: 200, 404 and 503; stable: 200 and 500.
    assert!(detail.contains("3 series for canary v2"), "{detail}");
    assert!(detail.contains("2 series for stable v1"), "{detail}");
    assert!(detail.contains(r#""response_code": "404""#), "{detail}");
}

/// 100 requests a step, `within_250` of them within 250 ms and 99 within 500 ms, with
/// the 250 ms bucket's `le` written as `le_250`.
fn latency_load(within_250: f64, le_250: &'static str) -> Load {
    Load {
        responses: vec![("200", 100.0)],
        buckets: vec![
            ("100", 50.0),
            (le_250, within_250),
            ("500", 99.0),
            ("1000", 100.0),
        ],
    }
}

fn slow_share_request(service: &str, threshold_ms: u64, at: Timestamp) -> CheckRequest {
    let mut request = request(service, CANARY, at);
    request.gates.max_slow_share = Some(SlowShare {
        threshold: Duration::from_millis(threshold_ms),
        max_share: 0.05,
    });
    request
}

#[tokio::test]
async fn slow_share_just_under_the_bound_passes_and_just_over_fails() {
    let at = evaluate_at();
    let mut series = service_series("brisk", CANARY, Some(latency_load(96.0, "250")), at);
    series.extend(service_series(
        "sluggish",
        CANARY,
        Some(latency_load(94.0, "250")),
        at,
    ));
    // As OpenMetrics and Prometheus 3 write bounds: `le="250.0"`.
    series.extend(service_series(
        "openmetrics",
        CANARY,
        Some(latency_load(94.0, "250.0")),
        at,
    ));
    let prometheus = prometheus_with(&series).await;
    let api = PrometheusApi::new(&config(prometheus.url())).unwrap();

    let brisk = api.check(&slow_share_request("brisk", 250, at)).await;
    assert!(matches!(brisk.verdict, Verdict::Pass { .. }), "{brisk:#?}");
    assert_close(
        value(&brisk.verdict, "slower-than-250ms").0,
        0.04,
        "4% slower than 250 ms",
    );
    // Stable: 1000 of 1000 within 250 ms.
    assert_eq!(
        value(&brisk.verdict, "slower-than-250ms").1,
        Some(0.0),
        "stable"
    );
    assert_eq!(brisk.queries.len(), 4, "one more query for the buckets");
    assert_eq!(brisk.queries[3].metric, "latency-buckets");

    for service in ["sluggish", "openmetrics"] {
        let report = api.check(&slow_share_request(service, 250, at)).await;
        let Verdict::Fail { failed, .. } = &report.verdict else {
            panic!("{service}: expected a failure: {report:#?}");
        };
        assert_eq!(failed, &["slower-than-250ms"], "{service}");
        assert_close(value(&report.verdict, "slower-than-250ms").0, 0.06, service);
    }

    // 300 ms is no bucket bound: the share is read at the next one up, and says so.
    let report = api.check(&slow_share_request("sluggish", 300, at)).await;
    assert!(
        matches!(report.verdict, Verdict::Pass { .. }),
        "{report:#?}"
    );
    assert_close(
        value(&report.verdict, "slower-than-500ms").0,
        0.01,
        "1% slower than 500 ms",
    );

    // Above every finite bound there is nothing to measure.
    let report = api.check(&slow_share_request("brisk", 2000, at)).await;
    let Verdict::Inconclusive { reason, detail, .. } = &report.verdict else {
        panic!("expected inconclusive: {report:#?}");
    };
    assert_eq!(*reason, InconclusiveReason::Misconfigured, "{detail}");
    assert!(detail.contains("at most 1000ms"), "{detail}");
}

/// One series of `service` with the given sample times and values.
fn raw_series(
    service: &str,
    version: &str,
    name: &str,
    extra: (&str, &str),
    times: &[i64],
    values: &[f64],
) -> support::Series {
    let labels = BTreeMap::from(
        [
            ("__name__", name),
            ("reporter", "destination"),
            ("destination_workload_namespace", NAMESPACE),
            ("destination_service_name", service),
            ("destination_version", version),
            extra,
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    support::Series {
        labels,
        samples: times.iter().copied().zip(values.iter().copied()).collect(),
    }
}

/// Five samples of a counter that has counted `per` a scrape interval since long before.
fn steady(per: f64) -> Vec<f64> {
    (1..=5).map(|i| 10_000.0 + per * f64::from(i)).collect()
}

/// A canary whose series are born inside its first window, with the samples the scale
/// benchmark produced (at 1 s scrapes; here at 15 s): 2 of 215 requests over 100 ms.
/// The first sample holds about one interval's requests, so `increase` extrapolated the
/// `le="100"` bucket by half an interval and the `+Inf` bucket by a whole one (the
/// 1.1-interval cliff of Prometheus' `extrapolatedRate`): read as 12.3% slow and a 238 ms
/// p99, and a good canary was aborted. Counted with one extrapolation per series, the
/// share is the samples' own, 2/215, and the p99 is under 100 ms.
#[tokio::test]
async fn buckets_of_a_series_born_in_the_window_keep_their_ratios() {
    let at = evaluate_at();
    let ms = |offset_ms: i64| at.as_millisecond() - offset_ms;
    // Sample times: the first 61.62 s before the evaluation, then every 15 s; the last
    // 1.575 s before it (the benchmark's 1.892 s and 0.105 s, times 15).
    let times = [61_620, 46_620, 31_620, 16_620, 1_575].map(ms);
    let series = |version, name, extra, values: &[f64]| {
        raw_series("born", version, name, extra, &times, values)
    };
    let bucket = "istio_request_duration_milliseconds_bucket";
    let canary_total = [59.0, 95.0, 165.0, 218.0, 274.0];
    // Stable: serving all along, 500 requests an interval, 2 of them over 100 ms.
    let written = vec![
        series(
            CANARY,
            "istio_requests_total",
            ("response_code", "200"),
            &canary_total,
        ),
        series(
            CANARY,
            bucket,
            ("le", "50"),
            &[57.0, 88.0, 151.0, 203.0, 257.0],
        ),
        series(
            CANARY,
            bucket,
            ("le", "100"),
            &[59.0, 95.0, 164.0, 217.0, 272.0],
        ),
        series(CANARY, bucket, ("le", "250"), &canary_total),
        series(CANARY, bucket, ("le", "+Inf"), &canary_total),
        series(
            STABLE,
            "istio_requests_total",
            ("response_code", "200"),
            &steady(500.0),
        ),
        series(STABLE, bucket, ("le", "50"), &steady(470.0)),
        series(STABLE, bucket, ("le", "100"), &steady(498.0)),
        series(STABLE, bucket, ("le", "250"), &steady(500.0)),
        series(STABLE, bucket, ("le", "+Inf"), &steady(500.0)),
    ];
    let prometheus = prometheus_with(&written).await;
    let mut request = slow_share_request("born", 100, at);
    // The step began 90 s before the evaluation: the canary's series were born in it.
    request.step_started_at = at - jiff::SignedDuration::from_secs(90);
    let report = check(&prometheus, &request).await;
    assert!(
        matches!(report.verdict, Verdict::Pass { .. }),
        "{report:#?}"
    );
    assert_close(
        value(&report.verdict, "slower-than-100ms").0,
        2.0 / 215.0,
        "the canary's slow share, as its samples have it",
    );
    assert_close(
        value(&report.verdict, "slower-than-100ms").1,
        2.0 / 500.0,
        "stable's slow share",
    );
    // Rank 0.99 × 215 = 212.85 in (50, 100], which holds 200..213 of the samples' deltas.
    assert_close(
        value(&report.verdict, "latency").0,
        50.0 + 50.0 * (0.99 * 215.0 - 200.0) / 13.0,
        "the canary's p99",
    );
}

/// A proxy restarted inside the window resets its counters: `delta` would read the
/// drop as no traffic, so the series is counted by `increase`, which knows resets.
/// 160 requests, 10 of them over 100 ms: 6.25% slow, over the 5% bound.
#[tokio::test]
async fn buckets_of_a_series_with_a_reset_are_counted_across_it() {
    let at = evaluate_at();
    let times = [60_000, 45_000, 30_000, 15_000, 0].map(|offset| at.as_millisecond() - offset);
    let series = |version, name, extra, values: &[f64]| {
        raw_series("restarted", version, name, extra, &times, values)
    };
    let bucket = "istio_request_duration_milliseconds_bucket";
    let total = [100.0, 150.0, 10.0, 60.0, 110.0];
    let written = vec![
        series(
            CANARY,
            "istio_requests_total",
            ("response_code", "200"),
            &total,
        ),
        series(
            CANARY,
            bucket,
            ("le", "100"),
            &[90.0, 140.0, 5.0, 50.0, 100.0],
        ),
        series(CANARY, bucket, ("le", "+Inf"), &total),
        series(
            STABLE,
            "istio_requests_total",
            ("response_code", "200"),
            &steady(500.0),
        ),
        series(STABLE, bucket, ("le", "100"), &steady(500.0)),
        series(STABLE, bucket, ("le", "+Inf"), &steady(500.0)),
    ];
    let prometheus = prometheus_with(&written).await;
    let mut request = slow_share_request("restarted", 100, at);
    request.step_started_at = at - jiff::SignedDuration::from_secs(60);
    request.gates.min_requests = 10;
    let report = check(&prometheus, &request).await;
    let Verdict::Fail { failed, .. } = &report.verdict else {
        panic!("expected a failure: {report:#?}");
    };
    assert_eq!(failed, &["slower-than-100ms"]);
    assert_close(
        value(&report.verdict, "slower-than-100ms").0,
        10.0 / 160.0,
        "the slow share across the reset",
    );
}

/// A round of batched checks reaches the verdicts and values single checks reach, over
/// the same windows, from a fixed number of queries; a Service's broken custom metric
/// concerns only that Service.
#[tokio::test]
async fn a_round_of_checks_measures_what_single_checks_measure() {
    let at = evaluate_at();
    let mut series = service_series("under", CANARY, Some(canary_load(0.95)), at);
    series.extend(service_series("over", CANARY, Some(canary_load(1.05)), at));
    series.extend(service_series("calm", CANARY, Some(canary_load(0.0)), at));
    series.extend(service_series(
        "sluggish",
        CANARY,
        Some(latency_load(94.0, "250")),
        at,
    ));
    let prometheus = prometheus_with(&series).await;
    let api = PrometheusApi::new(&config(prometheus.url())).unwrap();

    let mut sequential = request("under", CANARY, at);
    sequential.service = "under".to_string();
    sequential.gates.rule = weir_analysis::Rule::Sequential;
    // The canary's 503 counter exists but never moves: 0 / 0, NaN.
    let query = format!(
        "sum({0}) / sum({0})",
        requests_of_version(r#",response_code="503""#)
    );
    let broken = with_custom(
        request("calm", CANARY, at),
        template("share-of-503", &format!("query: '{query}'\nmax: 0.5\n")),
    );
    let requests = vec![
        request("under", CANARY, at),
        request("over", CANARY, at),
        broken,
        slow_share_request("sluggish", 250, at),
        sequential,
    ];
    let round = api.check_round(&requests, at, Duration::from_secs(5)).await;
    assert_eq!(round.len(), requests.len());

    // Every request's step began 300 s before: one group, three shared queries
    // (counts, buckets, one quantile), plus the broken template's two.
    let shared: std::collections::BTreeSet<&str> = round
        .iter()
        .flat_map(|r| r.queries.iter())
        .filter(|q| q.version.is_none())
        .map(|q| q.promql.as_str())
        .collect();
    assert_eq!(shared.len(), 3, "{shared:#?}");

    for (request, batched) in requests.iter().zip(&round) {
        let single = api.check(request).await;
        let service = &request.service;
        assert_eq!(batched.window_seconds, single.window_seconds, "{service}");
        assert_eq!(
            batched.verdict.kind(),
            single.verdict.kind(),
            "{service}: batched {batched:#?}\nsingle {single:#?}"
        );
        for m in single.verdict.measurements() {
            let (canary, stable) = value(&batched.verdict, &m.metric);
            for (b, s, which) in [(canary, m.canary, "canary"), (stable, m.stable, "stable")] {
                match (b, s) {
                    (Some(b), Some(s)) => assert!(
                        (b - s).abs() <= s.abs() * 1e-9,
                        "{service} {} {which}: batched {b}, single {s}",
                        m.metric
                    ),
                    (b, s) => assert_eq!(b, s, "{service} {} {which}", m.metric),
                }
            }
        }
        assert_eq!(batched.step, single.step, "{service}: step counts");
    }
    let Verdict::Fail { failed, .. } = &round[1].verdict else {
        panic!("over: {:#?}", round[1]);
    };
    assert_eq!(failed, &["error-rate"]);
    let Verdict::Inconclusive { detail, .. } = &round[2].verdict else {
        panic!("calm with a NaN metric: {:#?}", round[2]);
    };
    assert!(detail.contains("share-of-503"), "{detail}");
    assert!(
        matches!(round[0].verdict, Verdict::Pass { .. }),
        "a broken metric of another Service changes nothing: {:#?}",
        round[0]
    );
}
