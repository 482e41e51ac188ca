//! Benchmark: how many queries one check sends, and how long checks take against the test
//! bed's Prometheus holding the series of 1,000 Services.
//!
//! Each Service has a stable and a canary version, each with Istio's full label set:
//! three response codes of `istio_requests_total` and the twenty buckets of Istio's
//! default `istio_request_duration_milliseconds` histogram, ten minutes of samples every
//! 15 s. Then every Service is checked once, one check at a time, and then again with 16
//! checks in flight, for the built-in gates alone, with the slow-share gate, and with one
//! custom metric.
//!
//! Run: `cargo run -p weir-analysis --example check_latency` (prints a table; the test
//! bed must be installed: `make testbed`). `SERVICES=200` checks fewer Services.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use support::fixtures::{CANARY, NAMESPACE, STABLE, config};
use support::{Load, Period, Series, remote_write, version_series};
use weir_analysis::{CheckRequest, Gates, PrometheusApi, Reporter, SlowShare, parse_metrics};
use weir_testbed::Prometheus;

/// Istio's default bucket bounds of the request duration histogram, in milliseconds.
const ISTIO_BUCKETS: [&str; 19] = [
    "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
    "30000", "60000", "300000", "600000", "1800000", "3600000",
];
const IN_FLIGHT: usize = 16;
const SERVICES_PER_WRITE: usize = 25;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let services: usize = std::env::var("SERVICES")
        .ok()
        .map(|n| n.parse())
        .transpose()
        .context("SERVICES must be a number")?
        .unwrap_or(1000);
    let now = Timestamp::now().as_second();
    let at = Timestamp::from_second(now - now % 60 - 120)?;

    let prometheus = Prometheus::start(&[])
        .await
        .context("start Prometheus (`make testbed` installs it)")?;
    let written = Instant::now();
    let mut series_count = 0;
    let mut sample_count = 0;
    let names: Vec<String> = (0..services).map(|i| format!("svc-{i:04}")).collect();
    for chunk in names.chunks(SERVICES_PER_WRITE) {
        let series: Vec<Series> = chunk
            .iter()
            .flat_map(|service| service_series(service, at))
            .collect();
        series_count += series.len();
        sample_count += series.iter().map(|s| s.samples.len()).sum::<usize>();
        remote_write(&prometheus.url(), &series).await?;
    }
    println!(
        "wrote {series_count} series, {sample_count} samples for {services} Services in {:.1}s",
        written.elapsed().as_secs_f64()
    );

    let api = PrometheusApi::new(&config(prometheus.url()))?;
    let custom = parse_metrics(
        "bench",
        &BTreeMap::from([(
            "error-ratio".to_string(),
            "query: |\n  sum(rate(istio_requests_total{destination_service_name=\"{service}\",destination_version=\"{version}\",response_code=~\"5..\"}[{window}]))\n  / sum(rate(istio_requests_total{destination_service_name=\"{service}\",destination_version=\"{version}\"}[{window}]))\nmax: stable * 5\n".to_string(),
        )]),
    )?;
    let modes: [(&str, Option<SlowShare>, usize); 3] = [
        ("built-in gates", None, 0),
        (
            "built-in + slow share",
            Some(SlowShare {
                threshold: Duration::from_millis(250),
                max_share: 0.05,
            }),
            0,
        ),
        ("built-in + 1 custom metric", None, 1),
    ];

    println!(
        "\n{:<28} {:>9} {:>6} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "gates", "queries", "in", "p50 ms", "p99 ms", "max ms", "checks/s", "verdicts"
    );
    for (name, slow_share, custom_count) in modes {
        let requests: Vec<CheckRequest> = names
            .iter()
            .map(|service| CheckRequest {
                namespace: NAMESPACE.to_string(),
                service: service.clone(),
                canary_service: service.clone(),
                stable_service: service.clone(),
                canary_version: CANARY.to_string(),
                stable_version: STABLE.to_string(),
                step_started_at: at - SignedDuration::from_secs(300),
                evaluate_at: at,
                min_window: Duration::from_secs(60),
                gates: Gates {
                    max_error_rate: 0.01,
                    max_latency: Duration::from_millis(500),
                    latency_quantile: 0.99,
                    min_requests: 50,
                    error_codes: Default::default(),
                    max_slow_share: slow_share,
                    ..Gates::default()
                },
                reporter: Reporter::Destination,
                custom: custom[..custom_count].to_vec(),
                earlier: Default::default(),
                pass_at: 100.0,
            })
            .collect();
        for in_flight in [1, IN_FLIGHT] {
            let started = Instant::now();
            let results: Vec<(Duration, usize, &'static str)> = futures::stream::iter(&requests)
                .map(|request| async {
                    let t = Instant::now();
                    let report = api.check(request).await;
                    (t.elapsed(), report.queries.len(), report.verdict.kind())
                })
                .buffer_unordered(in_flight)
                .collect()
                .await;
            let total = started.elapsed();
            let mut latencies: Vec<Duration> = results.iter().map(|r| r.0).collect();
            latencies.sort();
            let mut queries: Vec<usize> = results.iter().map(|r| r.1).collect();
            queries.sort();
            queries.dedup();
            let mut verdicts = BTreeMap::new();
            for (_, _, kind) in &results {
                *verdicts.entry(*kind).or_insert(0) += 1;
            }
            println!(
                "{:<28} {:>9} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.0} {:>10}",
                name,
                format!("{queries:?}"),
                in_flight,
                millis(percentile(&latencies, 50.0)),
                millis(percentile(&latencies, 99.0)),
                millis(*latencies.last().unwrap()),
                results.len() as f64 / total.as_secs_f64(),
                verdicts
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
    }
    println!(
        "\nqueries: HTTP queries per check per Service; in: checks in flight at once.\n\
         Debug build of the client (no --release); Prometheus {}.",
        std::process::Command::new("prometheus")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|v| v.lines().next().map(str::to_string))
            .unwrap_or_default()
    );
    Ok(())
}

/// Both versions of `service`, healthy: ten minutes of traffic up to `at`.
fn service_series(service: &str, at: Timestamp) -> Vec<Series> {
    let period = |requests: f64, errors: f64| Period {
        from: at - SignedDuration::from_secs(600),
        to: at,
        load: Load {
            responses: vec![
                ("200", requests - errors - 1.0),
                ("404", 1.0),
                ("503", errors),
            ],
            buckets: ISTIO_BUCKETS
                .iter()
                .map(|le| {
                    let bound: f64 = le.parse().unwrap();
                    // Most requests within 100 ms, nearly all within a second.
                    let share = if bound >= 1000.0 {
                        1.0
                    } else {
                        (bound / 120.0).min(0.995)
                    };
                    (*le, requests * share)
                })
                .collect(),
        },
    };
    let mut series = version_series(NAMESPACE, service, STABLE, &[period(300.0, 0.3)]);
    series.extend(version_series(
        NAMESPACE,
        service,
        CANARY,
        &[period(30.0, 0.1)],
    ));
    for one in &mut series {
        add_istio_labels(&mut one.labels, service);
    }
    series
}

/// The rest of the labels Istio's proxies put on every standard metric.
fn add_istio_labels(labels: &mut BTreeMap<String, String>, service: &str) {
    let version = labels["destination_version"].clone();
    let host = format!("{service}.{NAMESPACE}.svc.cluster.local");
    let workload = format!("{service}-{version}");
    for (name, value) in [
        ("connection_security_policy", "mutual_tls".to_string()),
        ("destination_app", service.to_string()),
        ("destination_canonical_revision", version.clone()),
        ("destination_canonical_service", service.to_string()),
        ("destination_cluster", "Kubernetes".to_string()),
        (
            "destination_principal",
            format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{service}"),
        ),
        ("destination_service", host),
        ("destination_service_namespace", NAMESPACE.to_string()),
        ("destination_workload", workload),
        ("grpc_response_status", String::new()),
        ("instance", "10.0.0.1:15020".to_string()),
        ("job", "kubernetes-pods".to_string()),
        ("request_protocol", "http".to_string()),
        ("response_flags", "-".to_string()),
        ("source_app", "frontend".to_string()),
        ("source_canonical_revision", "latest".to_string()),
        ("source_canonical_service", "frontend".to_string()),
        ("source_cluster", "Kubernetes".to_string()),
        (
            "source_principal",
            format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/frontend"),
        ),
        ("source_version", "unknown".to_string()),
        ("source_workload", "frontend".to_string()),
        ("source_workload_namespace", NAMESPACE.to_string()),
    ] {
        if !value.is_empty() {
            labels.insert(name.to_string(), value);
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
