//! The metrics a mesh would report for the simulated requests, in Istio's names and
//! labels, plus the simulator's own count of requests it could not deliver.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::Reporter;
use crate::traffic::Tick;

/// Istio's default buckets for `istio_request_duration_milliseconds`.
pub const ISTIO_DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The Content-Type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The labels Istio puts on its standard request metrics (those the simulator knows).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    reporter: &'static str,
    source_workload: &'static str,
    destination_service: String,
    destination_service_name: String,
    destination_service_namespace: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_version: String,
    request_protocol: &'static str,
    response_code: u16,
}

fn duration_histogram() -> Histogram {
    Histogram::new(ISTIO_DURATION_BUCKETS_MS)
}

/// The simulator's registry.
pub struct Metrics {
    registry: Registry,
    reporter: Reporter,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    dropped: Counter,
}

impl Metrics {
    /// Empty metrics whose series claim to come from `reporter`.
    pub fn new(reporter: Reporter) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        let dropped = Counter::default();
        // The encoder appends `_total` to counters.
        registry.register(
            "istio_requests",
            "Requests served by the simulated data plane",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Latency of requests served by the simulated data plane, in milliseconds",
            durations.clone(),
        );
        registry.register(
            "simulator_dropped_requests",
            "Simulated requests to a destination that resolves to no Deployment",
            dropped.clone(),
        );
        Metrics {
            registry,
            reporter,
            requests,
            durations,
            dropped,
        }
    }

    /// Counts the requests of one tick.
    pub fn record(&self, tick: &Tick<'_>) {
        for request in &tick.served {
            let backend = request.backend;
            let labels = RequestLabels {
                reporter: self.reporter.as_str(),
                source_workload: "simulator",
                destination_service: backend.service.fqdn(),
                destination_service_name: backend.service.name.clone(),
                destination_service_namespace: backend.service.namespace.clone(),
                destination_workload: backend.workload.clone(),
                destination_workload_namespace: backend.service.namespace.clone(),
                destination_version: backend.version.clone(),
                request_protocol: "http",
                response_code: request.response_code,
            };
            self.requests.get_or_create(&labels).inc();
            self.durations
                .get_or_create(&labels)
                .observe(request.latency_ms);
        }
        self.dropped.inc_by(tick.dropped);
    }

    /// The counter of dropped requests (shares its value with the registry's).
    pub fn dropped(&self) -> Counter {
        self.dropped.clone()
    }

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{Backend, Behaviour, ServiceRef};
    use crate::traffic::Request;

    #[test]
    fn requests_are_encoded_with_istio_names_labels_and_buckets() {
        let backend = Backend {
            service: ServiceRef {
                name: "checkout".to_owned(),
                namespace: "shop".to_owned(),
            },
            workload: "checkout-v2".to_owned(),
            version: "v2".to_owned(),
            behaviour: Behaviour::default(),
        };
        let metrics = Metrics::new(Reporter::Waypoint);
        metrics.record(&Tick {
            served: vec![
                Request {
                    backend: &backend,
                    response_code: 200,
                    latency_ms: 7.0,
                },
                Request {
                    backend: &backend,
                    response_code: 200,
                    latency_ms: 30.0,
                },
                Request {
                    backend: &backend,
                    response_code: 500,
                    latency_ms: 3.0,
                },
            ],
            dropped: 4,
        });
        let text = metrics.encode();
        let labels = "reporter=\"waypoint\",source_workload=\"simulator\",\
            destination_service=\"checkout.shop.svc.cluster.local\",\
            destination_service_name=\"checkout\",destination_service_namespace=\"shop\",\
            destination_workload=\"checkout-v2\",destination_workload_namespace=\"shop\",\
            destination_version=\"v2\",request_protocol=\"http\"";
        let expected = [
            "# TYPE istio_requests counter".to_owned(),
            format!("istio_requests_total{{{labels},response_code=\"200\"}} 2"),
            format!("istio_requests_total{{{labels},response_code=\"500\"}} 1"),
            "# TYPE istio_request_duration_milliseconds histogram".to_owned(),
            format!(
                "istio_request_duration_milliseconds_sum{{{labels},response_code=\"200\"}} 37.0"
            ),
            format!(
                "istio_request_duration_milliseconds_count{{{labels},response_code=\"200\"}} 2"
            ),
            format!(
                "istio_request_duration_milliseconds_bucket{{le=\"5.0\",{labels},response_code=\"200\"}} 0"
            ),
            format!(
                "istio_request_duration_milliseconds_bucket{{le=\"10.0\",{labels},response_code=\"200\"}} 1"
            ),
            format!(
                "istio_request_duration_milliseconds_bucket{{le=\"50.0\",{labels},response_code=\"200\"}} 2"
            ),
            format!(
                "istio_request_duration_milliseconds_bucket{{le=\"3600000.0\",{labels},response_code=\"200\"}} 2"
            ),
            format!(
                "istio_request_duration_milliseconds_bucket{{le=\"+Inf\",{labels},response_code=\"200\"}} 2"
            ),
            "simulator_dropped_requests_total 4".to_owned(),
            "# EOF".to_owned(),
        ];
        for line in expected {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let buckets = text
            .lines()
            .filter(|l| {
                l.starts_with("istio_request_duration_milliseconds_bucket") && l.contains("\"200\"")
            })
            .count();
        assert_eq!(buckets, ISTIO_DURATION_BUCKETS_MS.len() + 1);
    }
}
