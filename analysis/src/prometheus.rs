//! Asks Prometheus or Grafana Mimir for the gates' values. The thin I/O half: it builds
//! the queries with [`crate::promql`], runs them, and hands the results to
//! [`crate::judge`].
//!
//! Transient failures (connection errors, HTTP 5xx and 429, Prometheus's `timeout` and
//! `unavailable`) are retried with exponential backoff until the check's deadline. A
//! request that Prometheus or a proxy refuses (any 4xx but a query error, an answer that
//! is not the Prometheus API, a server certificate that is not trusted) is a
//! [`QueryError::Refused`] at once: retrying would not fix a wrong URL, tenant, credential
//! or CA. A query Prometheus refuses as such (`bad_data`, `execution`, a result that is
//! not an instant vector) is a [`QueryError::InvalidQuery`], whose fix is the query. A
//! check reports either as [`crate::InconclusiveReason::Misconfigured`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use prometheus_http_query::error::{PrometheusError, PrometheusErrorType};
use prometheus_http_query::response::{Data, PromqlResult};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::custom::{MetricTemplate, TemplateValues};
use crate::gates::{Gates, Reporter, Rule};
use crate::judge::{
    self, CustomObservation, Judgement, Observations, QueryFailure, QueryOutcome, Series, Standing,
};
use crate::promql::{BuiltinQueries, Target, Window};
use crate::sequential::{LatencyBaseline, RolloutEvidence, StepCounts};
use crate::verdict::Verdict;

/// The header Grafana Mimir reads the tenant from.
const TENANT_HEADER: &str = "X-Scope-OrgID";

/// The metric name in [`RanQuery`] of the latency bucket query: every latency test of
/// the sequential rule, or the threshold rule's slow-share gate.
pub const BUCKETS_QUERY: &str = "latency-buckets";

/// How Prometheus (or Mimir) is reached. Usually filled from the agent's flags.
#[derive(Clone, Debug)]
pub struct PrometheusConfig {
    /// Base URL of the HTTP API, without `/api/v1`: `http://prometheus:9090`, or with a
    /// path prefix such as Mimir's `http://mimir/prometheus`. A trailing slash is ignored.
    pub url: String,
    /// Mimir tenant, sent as `X-Scope-OrgID`.
    pub tenant: Option<String>,
    /// A file holding a bearer token. Read at every query, so a rotated token is used as
    /// soon as the file changes.
    pub bearer_token_file: Option<PathBuf>,
    /// HTTP basic auth credentials.
    pub basic_auth: Option<BasicAuth>,
    /// A PEM file of CA certificates trusted in addition to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The longest one query attempt may take.
    pub query_timeout: Duration,
    /// The longest a whole check may take, retries included.
    pub check_timeout: Duration,
}

/// HTTP basic auth credentials.
#[derive(Clone)]
pub struct BasicAuth {
    /// The user name.
    pub username: String,
    /// The password; never printed.
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a [`PrometheusConfig`] cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the Prometheus URL {url:?} is not a valid http(s) URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the tenant {tenant:?} cannot be sent in an {TENANT_HEADER} header: use visible ASCII")]
    InvalidTenant { tenant: String },
    #[error("both a bearer token file and basic auth are configured for Prometheus: keep one")]
    ConflictingAuth,
    #[error("cannot read the CA file {path}: {source}")]
    ReadCaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA file {path} holds no usable PEM certificate: {source}")]
    InvalidCaFile {
        path: PathBuf,
        source: reqwest::Error,
    },
    #[error("cannot set up the HTTP client for Prometheus: {0}")]
    HttpClient(reqwest::Error),
}

/// Why one query has no result.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Prometheus, or a proxy in front of it, refused the request. Not retried: the base
    /// URL, tenant or credentials are wrong, or the query is.
    #[error(
        "{endpoint} refused the query ({status}): {message}; check the Prometheus URL, tenant and credentials"
    )]
    Refused {
        endpoint: String,
        status: String,
        message: String,
    },
    /// Prometheus refused the query itself (`bad_data`, `execution`), or it returned
    /// something other than an instant vector. Not retried: the query must change.
    #[error("{endpoint} refused the query: {message}; fix the query")]
    InvalidQuery { endpoint: String, message: String },
    /// The bearer token file could not be read.
    #[error("cannot read the bearer token file {path}: {reason}")]
    TokenFile { path: PathBuf, reason: String },
    /// Prometheus could not be reached or was unavailable. Retried.
    #[error("{endpoint}: {message}")]
    Unavailable {
        endpoint: String,
        message: String,
        /// How long the server asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The query did not finish in time, on our side or on Prometheus's. Retried.
    #[error("{endpoint}: {message}")]
    Timeout { endpoint: String, message: String },
}

impl QueryError {
    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            QueryError::Unavailable { .. } | QueryError::Timeout { .. }
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            QueryError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One evaluation of a rollout step's gates.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckRequest {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The Service the mesh reports the canary's requests under: `service`, or in a
    /// host-level split the canary Service.
    pub canary_service: String,
    /// The Service the mesh reports the stable version's requests under: `service`, or
    /// in a host-level split the stable Service.
    pub stable_service: String,
    /// The canary's version label value.
    pub canary_version: String,
    /// The stable version's version label value.
    pub stable_version: String,
    /// When the current step began: the start of the window the gates are measured over.
    pub step_started_at: Timestamp,
    /// The instant the queries are evaluated at (normally now); the end of the window.
    pub evaluate_at: Timestamp,
    /// The shortest window worth measuring: four scrape intervals.
    pub min_window: Duration,
    /// The limits the canary is held to.
    pub gates: Gates,
    /// Which proxy's reports to read.
    pub reporter: Reporter,
    /// Custom metrics, from the ConfigMap named by `weir.dev/metrics`
    /// ([`crate::custom::parse_metrics`]); empty when there is none.
    pub custom: Vec<MetricTemplate>,
    /// The rollout's evidence from its earlier steps (sequential rule).
    pub earlier: RolloutEvidence,
    /// The e-value for the canary this step needs to advance (sequential rule):
    /// [`crate::sequential::required_for`] the next step's weight.
    pub pass_at: f64,
}

/// One query a check ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RanQuery {
    /// The metric it measures: `request-count`, `error-rate` (the error count behind it),
    /// `latency`, `latency-buckets` (the bucket counts behind the latency evidence and
    /// the slow-share gate), or a custom metric's name.
    pub metric: String,
    /// For a custom metric, the version the template was evaluated for; the built-in
    /// queries measure both versions at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The PromQL, as sent.
    pub promql: String,
}

/// What a check concluded, and how.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckReport {
    pub verdict: Verdict,
    /// The window the gates were measured over, in seconds.
    pub window_seconds: u64,
    /// The queries that ran, evaluated at the request's `evaluate_at`.
    pub queries: Vec<RanQuery>,
    /// The current step's counts (sequential rule), which the status records when the
    /// step completes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<StepCounts>,
    /// The relative latency test's baseline, when this check chose it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<LatencyBaseline>,
}

/// The HTTP API of a Prometheus or Grafana Mimir, as weir's gates use it.
#[derive(Clone)]
pub struct PrometheusApi {
    client: prometheus_http_query::Client,
    /// The query endpoint without credentials, for messages.
    endpoint: String,
    bearer_token_file: Option<PathBuf>,
    query_timeout: Duration,
    check_timeout: Duration,
}

impl fmt::Debug for PrometheusApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusApi")
            .field("endpoint", &self.endpoint)
            .field("bearer_token_file", &self.bearer_token_file)
            .field("query_timeout", &self.query_timeout)
            .field("check_timeout", &self.check_timeout)
            .finish_non_exhaustive()
    }
}

impl PrometheusApi {
    /// Checks `config` and sets up the HTTP client. Reads the CA file; the token file is
    /// read at each query.
    pub fn new(config: &PrometheusConfig) -> Result<PrometheusApi, ConfigError> {
        let invalid_url = |reason: String| ConfigError::InvalidUrl {
            url: config.url.clone(),
            reason,
        };
        // The client appends `/api/v1/query` to the base path after a slash of its own.
        let base = config.url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(invalid_url(
                "it must start with http:// or https://".to_string(),
            ));
        }
        if config.bearer_token_file.is_some() && config.basic_auth.is_some() {
            return Err(ConfigError::ConflictingAuth);
        }

        let mut headers = HeaderMap::new();
        if let Some(tenant) = &config.tenant {
            let value = HeaderValue::from_str(tenant).map_err(|_| ConfigError::InvalidTenant {
                tenant: tenant.clone(),
            })?;
            headers.insert(TENANT_HEADER, value);
        }
        if let Some(BasicAuth { username, password }) = &config.basic_auth {
            let encoded = BASE64.encode(format!("{username}:{password}"));
            let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                .expect("base64 is a valid header value");
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(config.query_timeout);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|source| ConfigError::ReadCaFile {
                path: path.clone(),
                source,
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                ConfigError::InvalidCaFile {
                    path: path.clone(),
                    source,
                }
            })?;
            builder = builder.tls_certs_merge(certificates);
        }
        let http = builder.build().map_err(ConfigError::HttpClient)?;
        let client = prometheus_http_query::Client::from(http, base)
            .map_err(|e| invalid_url(error_chain(&e)))?;
        let mut shown = client.base_url().clone();
        // Credentials in the URL stay out of messages.
        let _ = shown.set_password(None);
        let endpoint = format!("{}/api/v1/query", shown.as_str().trim_end_matches('/'));
        Ok(PrometheusApi {
            client,
            endpoint,
            bearer_token_file: config.bearer_token_file.clone(),
            query_timeout: config.query_timeout,
            check_timeout: config.check_timeout,
        })
    }

    /// The longest a whole check (or round of checks) may take, retries included.
    pub fn check_timeout(&self) -> Duration {
        self.check_timeout
    }

    /// The query endpoint, as named in messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Evaluates the gates of `request` (built-in and custom) and judges them.
    ///
    /// Runs every query at once: three for the built-in gates, a fourth when the
    /// slow-share gate is on, and two per custom metric (canary and stable).
    ///
    /// Never fails: a query that cannot be answered before the check's deadline makes the
    /// verdict [`Verdict::Inconclusive`] with the error in its detail.
    pub async fn check(&self, request: &CheckRequest) -> CheckReport {
        let window = Window::since(
            request.step_started_at,
            request.evaluate_at,
            request.min_window,
        );
        let target = Target {
            reporter: request.reporter,
            namespace: &request.namespace,
            canary_service: &request.canary_service,
            stable_service: &request.stable_service,
            canary_version: &request.canary_version,
            stable_version: &request.stable_version,
        };
        let builtin = BuiltinQueries::new(&target, window, &request.gates);
        let ran = |metric: &str, version: Option<&str>, promql: String| RanQuery {
            metric: metric.to_string(),
            version: version.map(str::to_string),
            promql,
        };
        let mut queries = vec![
            ran(judge::REQUEST_COUNT, None, builtin.request_count),
            ran(judge::ERROR_RATE, None, builtin.error_count),
        ];
        let quantile = builtin.latency.is_some();
        if let Some(promql) = builtin.latency {
            queries.push(ran(judge::LATENCY, None, promql));
        }
        let buckets = builtin.buckets.is_some();
        if let Some(promql) = builtin.buckets {
            queries.push(ran(BUCKETS_QUERY, None, promql));
        }
        queries.extend(custom_queries(request, window));

        let deadline = Instant::now() + self.check_timeout;
        let at = request.evaluate_at;
        let mut outcomes = futures::future::join_all(
            queries
                .iter()
                .map(|query| self.outcome(&query.promql, at, deadline)),
        )
        .await
        .into_iter();
        // One outcome per query, in order; should one be missing, its gate has no data,
        // which never advances a step.
        let mut next = || outcomes.next().unwrap_or_else(|| Err(not_run()));
        let request_count = next();
        let error_count = next();
        let latency = if quantile { next() } else { Ok(Vec::new()) };
        let buckets = buckets.then(&mut next);
        let custom = custom_observations(request, next);
        let observations = Observations {
            request_count,
            error_count,
            latency,
            buckets,
            custom,
        };
        conclude(request, observations, window, queries)
    }

    /// Runs an instant query at `at`, retrying transient errors until `deadline`.
    pub async fn instant_query(
        &self,
        promql: &str,
        at: Timestamp,
        deadline: Instant,
    ) -> Result<Vec<Series>, QueryError> {
        self.query_with_retries(promql, at, deadline).await.0
    }

    pub(crate) async fn outcome(
        &self,
        promql: &str,
        at: Timestamp,
        deadline: Instant,
    ) -> QueryOutcome {
        let (result, attempts) = self.query_with_retries(promql, at, deadline).await;
        result.map_err(|error| {
            let detail = format!("{error} (after {attempts} attempt{})", plural(attempts));
            match error {
                QueryError::Timeout { .. } => QueryFailure::Timeout(detail),
                QueryError::Refused { .. }
                | QueryError::InvalidQuery { .. }
                | QueryError::TokenFile { .. } => QueryFailure::Refused(detail),
                QueryError::Unavailable { .. } => QueryFailure::Error(detail),
            }
        })
    }

    /// The result and the number of attempts it took.
    async fn query_with_retries(
        &self,
        promql: &str,
        at: Timestamp,
        deadline: Instant,
    ) -> (Result<Vec<Series>, QueryError>, u32) {
        let attempts = AtomicU32::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times();
        let result = (|| {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.attempt(promql, at, deadline)
        })
        .retry(backoff)
        .when(QueryError::is_transient)
        .adjust(|error, delay| {
            // Honour Retry-After, but never sleep past the deadline: the last error is
            // more useful than a timeout.
            let delay = error.retry_after().or(delay)?;
            (Instant::now() + delay < deadline).then_some(delay)
        })
        .notify(|error, delay| {
            tracing::debug!(%error, ?delay, "retrying a Prometheus query");
        })
        .await;
        (result, attempts.load(Ordering::Relaxed))
    }

    /// One try: send, read, classify. Bounded by the query timeout and the deadline.
    async fn attempt(
        &self,
        promql: &str,
        at: Timestamp,
        deadline: Instant,
    ) -> Result<Vec<Series>, QueryError> {
        let budget = self
            .query_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let timeout = || QueryError::Timeout {
            endpoint: self.endpoint.clone(),
            message: format!("no answer within {}", humanize(budget)),
        };
        if budget.is_zero() {
            return Err(timeout());
        }
        let mut query = self
            .client
            .query(promql)
            .at(at.as_second())
            // Prometheus gives up on its side too, instead of computing for nobody.
            .timeout(i64::try_from(budget.as_millis()).unwrap_or(i64::MAX));
        if let Some(token) = self.bearer_token().await? {
            query = query.header(header::AUTHORIZATION, token);
        }
        let exchange = async {
            // POST: long queries fit, and the query stays out of URLs in error messages.
            let response = query.post_raw().await.map_err(|e| self.send_error(&e))?;
            self.read(response).await
        };
        tokio::time::timeout(budget, exchange)
            .await
            .unwrap_or_else(|_| Err(timeout()))
    }

    /// `Bearer <token>` from the token file, if one is configured.
    async fn bearer_token(&self) -> Result<Option<HeaderValue>, QueryError> {
        let Some(path) = &self.bearer_token_file else {
            return Ok(None);
        };
        let token_error = |reason: String| QueryError::TokenFile {
            path: path.clone(),
            reason,
        };
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| token_error(e.to_string()))?;
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
                token_error("the token holds characters not allowed in a header".into())
            })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    fn send_error(&self, error: &prometheus_http_query::Error) -> QueryError {
        let request_error = match error {
            prometheus_http_query::Error::Client(e) => e.inner(),
            _ => None,
        };
        // reqwest's own message repeats the URL; its causes say what went wrong.
        let message = match request_error.and_then(std::error::Error::source) {
            Some(cause) => error_chain(cause),
            None => error_chain(error),
        };
        if request_error.is_some_and(reqwest::Error::is_builder) {
            QueryError::Refused {
                endpoint: self.endpoint.clone(),
                status: "request not sent".to_string(),
                message,
            }
        } else if message.contains("certificate") {
            // The TLS library's own words are the only sign of a rejected certificate;
            // retrying would meet the same certificate.
            QueryError::Refused {
                endpoint: self.endpoint.clone(),
                status: "TLS handshake failed".to_string(),
                message: format!(
                    "{message}; if a private CA issued the server's certificate, set the CA file"
                ),
            }
        } else {
            QueryError::Unavailable {
                endpoint: self.endpoint.clone(),
                message,
                retry_after: None,
            }
        }
    }

    /// Reads the answer, then classifies it.
    async fn read(&self, response: Response) -> Result<Vec<Series>, QueryError> {
        let status = response.status();
        let retry_after = retry_after(&response);
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|media_type| media_type.trim() == "application/json");
        let body = response
            .bytes()
            .await
            .map_err(|e| QueryError::Unavailable {
                endpoint: self.endpoint.clone(),
                message: format!("reading the answer failed: {}", error_chain(&e)),
                retry_after: None,
            })?;
        interpret(
            &self.endpoint,
            &Answer {
                status,
                retry_after,
                is_json,
                body: &body,
            },
        )
    }
}

/// An HTTP answer to a query, as far as classifying it needs.
struct Answer<'a> {
    status: StatusCode,
    retry_after: Option<Duration>,
    is_json: bool,
    body: &'a [u8],
}

/// The series of a successful answer, or the error it means: by Prometheus's error type
/// when the body is the API's JSON, by HTTP status otherwise.
/// Each custom metric's template rendered for the canary, then for the stable version.
pub(crate) fn custom_queries(request: &CheckRequest, window: Window) -> Vec<RanQuery> {
    let mut queries = Vec::with_capacity(2 * request.custom.len());
    for template in &request.custom {
        for version in [&request.canary_version, &request.stable_version] {
            let promql = template.render(&TemplateValues {
                namespace: &request.namespace,
                service: &request.service,
                version,
                stable_version: &request.stable_version,
                window,
            });
            queries.push(RanQuery {
                metric: template.name.clone(),
                version: Some(version.clone()),
                promql,
            });
        }
    }
    queries
}

/// Why a query that should have run has no outcome; its gate then has no data, which
/// never advances a step.
pub(crate) fn not_run() -> QueryFailure {
    QueryFailure::Error("the query was not run".to_string())
}

/// Each custom metric's observation, its outcomes taken from `next` in the order
/// [`custom_queries`] lists their queries: canary, then stable.
pub(crate) fn custom_observations(
    request: &CheckRequest,
    mut next: impl FnMut() -> QueryOutcome,
) -> Vec<CustomObservation> {
    request
        .custom
        .iter()
        .map(|template| CustomObservation {
            name: template.name.clone(),
            bound: template.bound,
            canary: next(),
            stable: next(),
        })
        .collect()
}

/// Judges `observations`, the results of `queries` over `window`, for `request`.
pub(crate) fn conclude(
    request: &CheckRequest,
    observations: Observations,
    window: Window,
    queries: Vec<RanQuery>,
) -> CheckReport {
    let judgement = match request.gates.rule {
        Rule::Sequential => judge::weigh(
            &observations,
            &request.canary_version,
            &request.stable_version,
            &request.gates,
            Standing {
                earlier: &request.earlier,
                pass_at: request.pass_at,
            },
        ),
        Rule::Threshold => Judgement {
            verdict: judge::judge(
                &observations,
                &request.canary_version,
                &request.stable_version,
                &request.gates,
            ),
            step: None,
            baseline: None,
        },
    };
    CheckReport {
        verdict: judgement.verdict,
        window_seconds: window.duration().as_secs(),
        queries,
        step: judgement.step,
        baseline: judgement.baseline,
    }
}

fn interpret(endpoint: &str, answer: &Answer<'_>) -> Result<Vec<Series>, QueryError> {
    let status = answer.status;
    let parsed = answer
        .is_json
        .then(|| serde_json::from_slice::<ApiAnswer>(answer.body).ok())
        .flatten();
    let unavailable = |message: String| QueryError::Unavailable {
        endpoint: endpoint.to_string(),
        message,
        retry_after: answer.retry_after,
    };
    let refused = |message: String| QueryError::Refused {
        endpoint: endpoint.to_string(),
        status: format!("HTTP {status}"),
        message,
    };
    match parsed {
        Some(ApiAnswer::Success { data }) if status.is_success() => {
            series(endpoint, data.into_inner().0)
        }
        Some(ApiAnswer::Error(error)) => {
            let message = error.to_string();
            match error.error_type() {
                PrometheusErrorType::Timeout => Err(QueryError::Timeout {
                    endpoint: endpoint.to_string(),
                    message,
                }),
                PrometheusErrorType::Unavailable
                | PrometheusErrorType::Canceled
                | PrometheusErrorType::Internal => Err(unavailable(message)),
                PrometheusErrorType::BadData | PrometheusErrorType::Execution => {
                    Err(QueryError::InvalidQuery {
                        endpoint: endpoint.to_string(),
                        message,
                    })
                }
                PrometheusErrorType::NotFound => Err(refused(message)),
                _ if is_transient_status(status) => Err(unavailable(message)),
                _ => Err(refused(message)),
            }
        }
        _ => {
            let text = excerpt(answer.body);
            if is_transient_status(status) {
                Err(unavailable(format!("HTTP {status}: {text}")))
            } else if status.is_success() {
                Err(refused(format!(
                    "the answer is not the Prometheus HTTP API's JSON: {text}"
                )))
            } else {
                Err(refused(text))
            }
        }
    }
}

fn series(endpoint: &str, data: Data) -> Result<Vec<Series>, QueryError> {
    let result_type = match data {
        Data::Vector(vector) => {
            return Ok(vector
                .into_iter()
                .map(|sample| {
                    let (labels, sample) = sample.into_inner();
                    Series {
                        labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
                        value: sample.value(),
                    }
                })
                .collect());
        }
        Data::Matrix(_) => "range vector",
        Data::Scalar(_) => "scalar",
    };
    Err(QueryError::InvalidQuery {
        endpoint: endpoint.to_string(),
        message: format!("the query returned a {result_type} where an instant vector was expected"),
    })
}

/// The body of every Prometheus HTTP API answer.
#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum ApiAnswer {
    Success { data: PromqlResult },
    Error(PrometheusError),
}

fn is_transient_status(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// `Retry-After` in seconds (the HTTP-date form is rare from Prometheus and its proxies,
/// and is ignored).
fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The start of a non-API answer (a proxy's error page, say), on one line.
fn excerpt(body: &[u8]) -> String {
    const LIMIT: usize = 200;
    let text = String::from_utf8_lossy(body);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None if line.is_empty() => "(empty body)".to_string(),
        None => line,
    }
}

/// An error and its sources, `: `-separated: reqwest's own message hides the cause.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

fn humanize(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> PrometheusConfig {
        PrometheusConfig {
            url: url.to_string(),
            tenant: None,
            bearer_token_file: None,
            basic_auth: None,
            ca_file: None,
            query_timeout: Duration::from_secs(5),
            check_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn endpoint_keeps_the_path_prefix_with_or_without_trailing_slash() {
        let cases = [
            (
                "http://127.0.0.1:9090",
                "http://127.0.0.1:9090/api/v1/query",
            ),
            (
                "http://127.0.0.1:9090/",
                "http://127.0.0.1:9090/api/v1/query",
            ),
            (
                "http://mimir/prometheus",
                "http://mimir/prometheus/api/v1/query",
            ),
            (
                "http://mimir/prometheus/",
                "http://mimir/prometheus/api/v1/query",
            ),
            (
                "https://mimir:8443/a/b//",
                "https://mimir:8443/a/b/api/v1/query",
            ),
            (
                "http://user:secret@p:9090/x",
                "http://user@p:9090/x/api/v1/query",
            ),
        ];
        for (url, endpoint) in cases {
            let api = PrometheusApi::new(&config(url)).unwrap();
            assert_eq!(api.endpoint(), endpoint, "{url}");
        }
    }

    #[test]
    fn unusable_configurations_are_refused_with_the_fix() {
        let cases: Vec<(PrometheusConfig, &str)> = vec![
            (
                config("prometheus:9090"),
                "must start with http:// or https://",
            ),
            (config("http://"), "not a valid http(s) URL"),
            (
                PrometheusConfig {
                    tenant: Some("team\na".into()),
                    ..config("http://p")
                },
                "tenant \"team\\na\"",
            ),
            (
                PrometheusConfig {
                    bearer_token_file: Some("/t".into()),
                    basic_auth: Some(BasicAuth {
                        username: "u".into(),
                        password: "p".into(),
                    }),
                    ..config("http://p")
                },
                "keep one",
            ),
            (
                PrometheusConfig {
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..config("https://p")
                },
                "cannot read the CA file /nonexistent/ca.pem",
            ),
        ];
        for (config, expected) in cases {
            let error = PrometheusApi::new(&config).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{error:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("weir-analysis-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = PrometheusApi::new(&PrometheusConfig {
            ca_file: Some(path.clone()),
            ..config("https://p")
        })
        .unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            matches!(error, ConfigError::InvalidCaFile { .. }),
            "{error}"
        );
    }

    #[test]
    fn basic_auth_password_is_never_printed() {
        let auth = BasicAuth {
            username: "weir".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{auth:?}");
        assert!(
            shown.contains("weir") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn excerpt_is_one_bounded_line() {
        assert_eq!(excerpt(b"404 page not found\n"), "404 page not found");
        assert_eq!(excerpt(b""), "(empty body)");
        let long = "é".repeat(300);
        let cut = excerpt(long.as_bytes());
        assert_eq!(cut.chars().count(), 201);
        assert!(cut.ends_with('…'));
    }

    const ENDPOINT: &str = "http://p/prometheus/api/v1/query";

    fn answer(status: u16, json: bool, body: &str) -> Result<Vec<Series>, QueryError> {
        answer_after(status, None, json, body)
    }

    fn answer_after(
        status: u16,
        retry_after: Option<Duration>,
        is_json: bool,
        body: &str,
    ) -> Result<Vec<Series>, QueryError> {
        interpret(
            ENDPOINT,
            &Answer {
                status: StatusCode::from_u16(status).unwrap(),
                retry_after,
                is_json,
                body: body.as_bytes(),
            },
        )
    }

    fn prometheus_error(error_type: &str) -> String {
        format!(r#"{{"status":"error","errorType":"{error_type}","error":"it went wrong"}}"#)
    }

    #[test]
    fn a_vector_answer_becomes_series_with_every_value_kept() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"destination_version":"v2"},"value":[1700000000,"1234.5"]},
            {"metric":{"destination_version":"v1","le":"+Inf"},"value":[1700000000,"NaN"]},
            {"metric":{},"value":[1700000000,"+Inf"]}]}}"#;
        let series = answer(200, true, body).unwrap();
        assert_eq!(series.len(), 3);
        assert_eq!(series[0], Series::of_version("v2", 1234.5));
        assert_eq!(series[1].labels.get("le").map(String::as_str), Some("+Inf"));
        assert!(series[1].value.is_nan());
        assert_eq!(series[2].value, f64::INFINITY);
        assert!(series[2].labels.is_empty());
        assert_eq!(
            answer(
                200,
                true,
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#
            )
            .unwrap(),
            []
        );
    }

    #[test]
    fn answers_are_classified_by_error_type_then_status() {
        enum Kind {
            Refused,
            Invalid,
            Unavailable,
            Timeout,
        }
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#;
        let cases = [
            (
                400,
                true,
                prometheus_error("bad_data"),
                Kind::Invalid,
                "bad_data: it went wrong",
            ),
            (
                422,
                true,
                prometheus_error("execution"),
                Kind::Invalid,
                "execution: it went wrong",
            ),
            (
                404,
                true,
                prometheus_error("not_found"),
                Kind::Refused,
                "not_found",
            ),
            (
                503,
                true,
                prometheus_error("timeout"),
                Kind::Timeout,
                "timeout: it went wrong",
            ),
            (
                503,
                true,
                prometheus_error("unavailable"),
                Kind::Unavailable,
                "unavailable",
            ),
            (
                500,
                true,
                prometheus_error("internal"),
                Kind::Unavailable,
                "internal",
            ),
            (
                422,
                true,
                prometheus_error("canceled"),
                Kind::Unavailable,
                "canceled",
            ),
            (
                401,
                false,
                "Unauthorized".into(),
                Kind::Refused,
                "Unauthorized",
            ),
            (
                403,
                false,
                "<html>\n<b>Forbidden</b></html>".into(),
                Kind::Refused,
                "<b>Forbidden</b>",
            ),
            (
                404,
                false,
                "404 page not found\n".into(),
                Kind::Refused,
                "404 page not found",
            ),
            (
                200,
                false,
                "<html>Grafana</html>".into(),
                Kind::Refused,
                "not the Prometheus HTTP API",
            ),
            (
                200,
                true,
                "{\"oops\"".into(),
                Kind::Refused,
                "not the Prometheus HTTP API",
            ),
            (
                200,
                true,
                matrix.into(),
                Kind::Invalid,
                "a range vector where an instant vector",
            ),
            (
                200,
                true,
                scalar.into(),
                Kind::Invalid,
                "a scalar where an instant vector",
            ),
            (
                502,
                false,
                "Bad Gateway".into(),
                Kind::Unavailable,
                "HTTP 502 Bad Gateway: Bad Gateway",
            ),
            (503, false, "".into(), Kind::Unavailable, "(empty body)"),
            (
                429,
                false,
                "slow down".into(),
                Kind::Unavailable,
                "HTTP 429 Too Many Requests",
            ),
            (
                429,
                true,
                r#"{"status":"error"}"#.into(),
                Kind::Unavailable,
                "HTTP 429",
            ),
        ];
        for (status, json, body, kind, text) in cases {
            let error = answer(status, json, &body).unwrap_err();
            let shown = error.to_string();
            assert!(
                shown.contains(text),
                "{status} {body:?}: {shown:?} lacks {text:?}"
            );
            assert!(shown.starts_with(ENDPOINT), "{shown:?} names the endpoint");
            let ok = match kind {
                Kind::Refused => {
                    matches!(error, QueryError::Refused { .. })
                        && !error.is_transient()
                        && shown.contains("check the Prometheus URL, tenant and credentials")
                }
                Kind::Invalid => {
                    matches!(error, QueryError::InvalidQuery { .. })
                        && !error.is_transient()
                        && shown.ends_with("; fix the query")
                }
                Kind::Unavailable => {
                    matches!(error, QueryError::Unavailable { .. }) && error.is_transient()
                }
                Kind::Timeout => {
                    matches!(error, QueryError::Timeout { .. }) && error.is_transient()
                }
            };
            assert!(ok, "{status} {body:?}: {error:?}");
        }
    }

    #[test]
    fn retry_after_is_kept_for_the_backoff() {
        let error =
            answer_after(429, Some(Duration::from_secs(7)), false, "slow down").unwrap_err();
        assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
        let error = answer_after(
            400,
            Some(Duration::from_secs(7)),
            true,
            &prometheus_error("bad_data"),
        )
        .unwrap_err();
        assert_eq!(error.retry_after(), None);
    }

    #[test]
    fn only_transient_errors_are_retried() {
        let endpoint = || "http://p/api/v1/query".to_string();
        let transient = [
            QueryError::Unavailable {
                endpoint: endpoint(),
                message: "refused".into(),
                retry_after: None,
            },
            QueryError::Timeout {
                endpoint: endpoint(),
                message: "slow".into(),
            },
        ];
        let permanent = [
            QueryError::Refused {
                endpoint: endpoint(),
                status: "HTTP 400".into(),
                message: "bad_data: parse error".into(),
            },
            QueryError::TokenFile {
                path: "/t".into(),
                reason: "missing".into(),
            },
        ];
        assert!(transient.iter().all(QueryError::is_transient));
        assert!(!permanent.iter().any(QueryError::is_transient));
    }
}
