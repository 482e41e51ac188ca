//! Writes Istio-shaped series with exact values and explicit timestamps into the test
//! bed's Prometheus, through its remote-write receiver.
//!
//! The remote-write body is a protobuf `WriteRequest` compressed with snappy's block
//! format. Both are encoded here by hand, for the few message fields and the one snappy
//! element (literals) they need, rather than with a protobuf and a compression crate.

// Each test binary uses its own part of the support code.
#![allow(dead_code)]

pub mod fixtures;

use std::collections::BTreeMap;

use anyhow::Context as _;
use jiff::{SignedDuration, Timestamp};

/// The interval between the samples written.
pub const STEP: SignedDuration = SignedDuration::from_secs(15);

type Labels = BTreeMap<String, String>;

/// One series with its samples (`(milliseconds since the epoch, value)`, ascending).
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

/// What one version of a Service serves in every [`STEP`], as counter increments.
#[derive(Clone, Debug)]
pub struct Load {
    /// Increments per response code.
    pub responses: Vec<(&'static str, f64)>,
    /// Cumulative histogram bucket increments, by upper bound in milliseconds; the `+Inf`
    /// bucket is added with the total of `responses`.
    pub buckets: Vec<(&'static str, f64)>,
}

impl Load {
    fn total(&self) -> f64 {
        self.responses.iter().map(|(_, n)| n).sum()
    }
}

/// One version's traffic in one period: `load` every step from `from` (exclusive) to `to`
/// (inclusive). Periods of one version follow each other; counters carry over.
pub struct Period {
    pub from: Timestamp,
    pub to: Timestamp,
    pub load: Load,
}

/// The series of one version of `service` in `namespace`, counting from zero at the
/// start of its first period.
pub fn version_series(
    namespace: &str,
    service: &str,
    version: &str,
    periods: &[Period],
) -> Vec<Series> {
    let labels = |name: &str, extra: (&str, &str)| {
        BTreeMap::from(
            [
                ("__name__", name),
                ("reporter", "destination"),
                ("destination_workload_namespace", namespace),
                ("destination_service_name", service),
                ("destination_version", version),
                extra,
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
    };
    let mut counters: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    let mut bump = |labels: Labels, increment: f64, at: Timestamp| {
        let samples = counters.entry(labels).or_default();
        let value = samples.last().map_or(0.0, |(_, v)| *v) + increment;
        samples.push((at.as_millisecond(), value));
    };
    let mut record = |load: &Load, at: Timestamp, scale: f64| {
        for (code, n) in &load.responses {
            bump(
                labels("istio_requests_total", ("response_code", code)),
                n * scale,
                at,
            );
        }
        let buckets = load.buckets.iter().copied().chain([("+Inf", load.total())]);
        for (le, n) in buckets {
            bump(
                labels("istio_request_duration_milliseconds_bucket", ("le", le)),
                n * scale,
                at,
            );
        }
    };
    for (i, period) in periods.iter().enumerate() {
        let mut at = period.from;
        if i == 0 {
            // Every counter starts at zero at the first period's start.
            record(&period.load, at, 0.0);
        }
        while at < period.to {
            at += STEP;
            record(&period.load, at, 1.0);
        }
    }
    counters
        .into_iter()
        .map(|(labels, samples)| Series { labels, samples })
        .collect()
}

/// Sends `series` to Prometheus's remote-write receiver at `base_url`.
pub async fn remote_write(base_url: &str, series: &[Series]) -> anyhow::Result<()> {
    let body = snappy_literals(&write_request(series));
    let url = format!("{base_url}/api/v1/write");
    let response = reqwest::Client::new()
        .post(&url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .await
        .with_context(|| format!("remote write to {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    anyhow::ensure!(
        status.is_success(),
        "remote write to {url}: {status}: {text}"
    );
    Ok(())
}

/// `WriteRequest { repeated TimeSeries timeseries = 1 }`, with
/// `TimeSeries { repeated Label labels = 1; repeated Sample samples = 2 }`,
/// `Label { string name = 1; string value = 2 }` and
/// `Sample { double value = 1; int64 timestamp = 2 }`.
fn write_request(series: &[Series]) -> Vec<u8> {
    let mut request = Vec::new();
    for one in series {
        let mut message = Vec::new();
        // Labels sorted by name, as remote write requires: the map keeps them so.
        for (name, value) in &one.labels {
            let mut label = Vec::new();
            length_delimited(&mut label, 1, name.as_bytes());
            length_delimited(&mut label, 2, value.as_bytes());
            length_delimited(&mut message, 1, &label);
        }
        for (millis, value) in &one.samples {
            let mut sample = vec![1 << 3 | 1];
            sample.extend_from_slice(&value.to_le_bytes());
            sample.push(2 << 3);
            varint(&mut sample, *millis as u64);
            length_delimited(&mut message, 2, &sample);
        }
        length_delimited(&mut request, 1, &message);
    }
    request
}

fn length_delimited(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Snappy's block format with every byte in literal elements: the uncompressed length,
/// then literals of at most 64 KiB, each tagged `61 << 2` with its length minus one in
/// two little-endian bytes. Valid snappy, just not smaller.
fn snappy_literals(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65536 * 3 + 8);
    varint(&mut out, data.len() as u64);
    for chunk in data.chunks(65536) {
        let length = (chunk.len() - 1) as u16;
        out.push(61 << 2);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out
}
