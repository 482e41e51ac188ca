//! Reaching Prometheus the way a production agent does: through a Mimir-style gateway (a
//! real nginx in front of the test bed's real Prometheus, serving under `/prometheus`,
//! requiring a tenant header and a bearer token, over HTTP or TLS with a private CA),
//! and through a proxy that injects transient and permanent failures.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use support::fixtures::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use weir_analysis::{InconclusiveReason, PrometheusApi, PrometheusConfig, QueryError, Verdict};
use weir_testbed::nginx::Nginx;
use weir_testbed::{Prometheus, wait_until};

const TENANT: &str = "t1";

/// nginx's `server` directives: Prometheus under `/prometheus/` for tenant `t1` with
/// bearer token `token`, nothing anywhere else.
fn gateway(prometheus: &Prometheus, token: &str) -> String {
    let upstream = prometheus.url();
    format!(
        r#"
        location /prometheus/ {{
            if ($http_x_scope_orgid != "{TENANT}") {{
                return 401 "no org id\n";
            }}
            if ($http_authorization != "Bearer {token}") {{
                return 401 "bad bearer token\n";
            }}
            proxy_pass {upstream}/;
        }}
        location / {{
            return 404 "no such path\n";
        }}
"#
    )
}

fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("token");
    // Written aside and renamed over, as Kubernetes swaps a projected token.
    let aside = dir.join("token.new");
    std::fs::write(&aside, format!("{token}\n")).unwrap();
    std::fs::rename(&aside, &path).unwrap();
    path
}

fn mimir_config(url: String, tenant: Option<&str>, token: Option<PathBuf>) -> PrometheusConfig {
    PrometheusConfig {
        tenant: tenant.map(str::to_string),
        bearer_token_file: token,
        ..config(url)
    }
}

async fn refusal(api: &PrometheusApi) -> QueryError {
    let deadline = Instant::now() + Duration::from_secs(30);
    api.instant_query("vector(1)", Timestamp::now(), deadline)
        .await
        .expect_err("the gateway should refuse")
}

#[tokio::test]
async fn a_mimir_style_gateway_needs_the_tenant_and_the_bearer_token() {
    let at = evaluate_at();
    let prometheus = prometheus_with(&service_series(
        "gated",
        CANARY,
        Some(canary_load(0.95)),
        at,
    ))
    .await;
    let nginx = Nginx::start(&gateway(&prometheus, "s3cret"))
        .await
        .expect("start nginx (`make testbed` installs it)");
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/prometheus", nginx.url());
    let endpoint = format!("{base}/api/v1/query");

    let refused = [
        (None, Some(token_file(dir.path(), "s3cret")), "no org id"),
        (
            Some("t2"),
            Some(token_file(dir.path(), "s3cret")),
            "no org id",
        ),
        (Some(TENANT), None, "bad bearer token"),
    ];
    for (tenant, token, message) in refused {
        let api = PrometheusApi::new(&mimir_config(base.clone(), tenant, token)).unwrap();
        let error = refusal(&api).await;
        let QueryError::Refused {
            endpoint: named,
            status,
            message: said,
        } = &error
        else {
            panic!("{tenant:?}: expected a refusal: {error:?}");
        };
        assert_eq!(named, &endpoint);
        assert_eq!(status, "HTTP 401 Unauthorized");
        assert_eq!(said, message);

        let report = api.check(&request("gated", CANARY, at)).await;
        let Verdict::Inconclusive { reason, detail, .. } = &report.verdict else {
            panic!("expected inconclusive: {report:#?}");
        };
        assert_eq!(*reason, InconclusiveReason::Misconfigured);
        assert!(
            detail.contains(&format!(
                "{endpoint} refused the query (HTTP 401 Unauthorized): {message}"
            )),
            "{detail}"
        );
        assert!(
            detail.contains("(after 1 attempt)"),
            "not retried: {detail}"
        );
    }

    // With both, through the path prefix, with or without a trailing slash.
    for url in [base.clone(), format!("{base}/")] {
        let api = PrometheusApi::new(&mimir_config(
            url.clone(),
            Some(TENANT),
            Some(token_file(dir.path(), "s3cret")),
        ))
        .unwrap();
        let report = api.check(&request("gated", CANARY, at)).await;
        assert!(
            matches!(report.verdict, Verdict::Pass { .. }),
            "{url}: {report:#?}"
        );
        assert_close(
            value(&report.verdict, "request-count").0,
            2000.0,
            "canary requests",
        );
        assert_close(
            value(&report.verdict, "error-rate").0,
            0.0095,
            "canary error rate",
        );
    }
}

#[tokio::test]
async fn a_rotated_token_file_is_used_at_the_next_check() {
    let at = evaluate_at();
    let prometheus = prometheus_with(&service_series(
        "rotated",
        CANARY,
        Some(canary_load(0.0)),
        at,
    ))
    .await;
    let nginx = Nginx::start(&gateway(&prometheus, "old-token"))
        .await
        .expect("start nginx (`make testbed` installs it)");
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "old-token");
    let base = format!("{}/prometheus", nginx.url());
    // One client for the whole test, as the agent keeps one.
    let api = PrometheusApi::new(&mimir_config(base.clone(), Some(TENANT), Some(token))).unwrap();

    let report = api.check(&request("rotated", CANARY, at)).await;
    assert!(
        matches!(report.verdict, Verdict::Pass { .. }),
        "{report:#?}"
    );

    // The token rotates: the file changes and the gateway accepts only the new one.
    token_file(dir.path(), "new-token");
    nginx.reload(&gateway(&prometheus, "new-token")).unwrap();
    let http = reqwest::Client::new();
    let status_with = |token: &'static str| {
        let request = http
            .post(format!("{base}/api/v1/query"))
            .header("X-Scope-OrgID", TENANT)
            .bearer_auth(token)
            .form(&[("query", "vector(1)")]);
        async move { Ok::<_, anyhow::Error>(request.send().await?.status().as_u16()) }
    };
    wait_until(
        "nginx to refuse the old token",
        Duration::from_secs(30),
        || async {
            let status = status_with("old-token").await?;
            anyhow::ensure!(status == 401, "the old token still gets HTTP {status}");
            Ok(())
        },
    )
    .await
    .unwrap();
    assert_eq!(status_with("new-token").await.unwrap(), 200);

    let report = api.check(&request("rotated", CANARY, at)).await;
    assert!(
        matches!(report.verdict, Verdict::Pass { .. }),
        "the new token is read from the file: {report:#?}"
    );
    assert_close(
        value(&report.verdict, "request-count").0,
        2000.0,
        "canary requests",
    );
}

#[tokio::test]
async fn tls_with_a_private_ca_is_trusted_only_through_the_ca_file() {
    let at = evaluate_at();
    let prometheus =
        prometheus_with(&service_series("tls", CANARY, Some(canary_load(0.95)), at)).await;
    let proxy = format!("location / {{ proxy_pass {}; }}", prometheus.url());
    let nginx = Nginx::start_tls(&proxy)
        .await
        .expect("start nginx (`make testbed` installs it)");
    assert!(nginx.url().starts_with("https://"));

    let trusted = PrometheusApi::new(&PrometheusConfig {
        ca_file: nginx.ca_file(),
        ..config(nginx.url())
    })
    .unwrap();
    let report = trusted.check(&request("tls", CANARY, at)).await;
    assert!(
        matches!(report.verdict, Verdict::Pass { .. }),
        "{report:#?}"
    );
    assert_close(
        value(&report.verdict, "request-count").0,
        2000.0,
        "canary requests",
    );

    let untrusting = PrometheusApi::new(&PrometheusConfig {
        check_timeout: Duration::from_secs(5),
        ..config(nginx.url())
    })
    .unwrap();
    let error = refusal(&untrusting).await;
    let QueryError::Refused { message, .. } = &error else {
        panic!("an untrusted certificate is a configuration error: {error:?}");
    };
    assert!(message.contains("certificate"), "{message}");
    assert!(error.to_string().contains("set the CA file"), "{error}");
    let report = untrusting.check(&request("tls", CANARY, at)).await;
    let Verdict::Inconclusive { reason, detail, .. } = &report.verdict else {
        panic!("expected inconclusive: {report:#?}");
    };
    assert_eq!(*reason, InconclusiveReason::Misconfigured, "{detail}");
}

/// What the faulty proxy does with one request.
#[derive(Clone, Debug)]
enum Answer {
    /// Answer with this status, `Retry-After` (seconds) and body.
    Status(u16, Option<u64>, &'static str),
    /// Pass it on to the real Prometheus and relay its answer.
    Forward,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    request_line: String,
    body: String,
}

/// A proxy written for these tests, in front of the real Prometheus: it answers the
/// first requests from a script and forwards every later one. It proves the client's
/// request shapes and retry decisions; the answers that end a test come from Prometheus.
struct FaultyProxy {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultyProxy {
    async fn start(upstream: &str, script: Vec<Answer>) -> FaultyProxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (log, upstream, script) = (log.clone(), upstream.clone(), script.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &script, &log).await;
                });
            }
        });
        FaultyProxy { url, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves one request on `client`, then closes the connection.
async fn serve(
    mut client: TcpStream,
    upstream: &str,
    script: &[Answer],
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let (head, body) = read_request(&mut client).await?;
    let answer = {
        let mut log = log.lock().unwrap();
        log.push(Seen {
            at: Instant::now(),
            request_line: head.lines().next().unwrap_or_default().to_string(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        script
            .get(log.len() - 1)
            .cloned()
            .unwrap_or(Answer::Forward)
    };
    match answer {
        Answer::Status(status, retry_after, text) => {
            let retry_after = retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            let content_type = if text.starts_with('{') {
                "application/json"
            } else {
                "text/plain"
            };
            let response = format!(
                "HTTP/1.1 {status} Fault\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{retry_after}Connection: close\r\n\r\n{text}",
                text.len()
            );
            client.write_all(response.as_bytes()).await?;
        }
        Answer::Forward => {
            let mut server = TcpStream::connect(upstream).await?;
            // One request per connection: Prometheus closes after answering.
            let (request_line, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
            let request = format!("{request_line}\r\nConnection: close\r\n{headers}");
            server.write_all(request.as_bytes()).await?;
            server.write_all(&body).await?;
            tokio::io::copy(&mut server, &mut client).await?;
        }
    }
    client.shutdown().await
}

/// The request's head (through the blank line) and its body, by `Content-Length`.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    let end = loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&buffer[..n]);
        if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = bytes[end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buffer[..n]);
    }
    Ok((head, body))
}

const BAD_DATA: &str =
    r#"{"status":"error","errorType":"bad_data","error":"1:1: parse error: unexpected character"}"#;

#[tokio::test]
async fn server_errors_are_retried_with_the_same_request() {
    let prometheus = Prometheus::start(&[])
        .await
        .expect("start Prometheus (`make testbed` installs it)");
    let proxy = FaultyProxy::start(
        &prometheus.url(),
        vec![
            Answer::Status(503, None, "upstream unavailable"),
            Answer::Status(502, None, "bad gateway"),
        ],
    )
    .await;
    let api = PrometheusApi::new(&config(proxy.url.clone())).unwrap();
    let at = Timestamp::from_second(1_700_000_000).unwrap();
    let series = api
        .instant_query("vector(7)", at, Instant::now() + Duration::from_secs(30))
        .await
        .expect("answered by Prometheus after two faults");
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].value, 7.0);

    let seen = proxy.seen();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    for request in &seen {
        assert_eq!(request.request_line, "POST /api/v1/query HTTP/1.1");
        assert_eq!(
            request.body, seen[0].body,
            "every attempt sends the same query"
        );
    }
    assert!(
        seen[0].body.contains("query=vector%287%29"),
        "{}",
        seen[0].body
    );
    assert!(seen[0].body.contains("time=1700000000"), "{}", seen[0].body);
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    let prometheus = Prometheus::start(&[])
        .await
        .expect("start Prometheus (`make testbed` installs it)");
    let proxy = FaultyProxy::start(
        &prometheus.url(),
        vec![Answer::Status(429, Some(1), "slow down")],
    )
    .await;
    let api = PrometheusApi::new(&config(proxy.url.clone())).unwrap();
    let series = api
        .instant_query(
            "vector(1)",
            Timestamp::now(),
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .expect("answered after waiting");
    assert_eq!(series.len(), 1);
    let seen = proxy.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    // The backoff alone starts at 100 ms; Retry-After asked for a second.
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
}

#[tokio::test]
async fn bad_data_is_not_retried() {
    let prometheus = Prometheus::start(&[])
        .await
        .expect("start Prometheus (`make testbed` installs it)");
    let proxy =
        FaultyProxy::start(&prometheus.url(), vec![Answer::Status(400, None, BAD_DATA)]).await;
    let api = PrometheusApi::new(&config(proxy.url.clone())).unwrap();
    let error = api
        .instant_query(
            "vector(1)",
            Timestamp::now(),
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap_err();
    // A refused query is the query's fault, not the URL's or the credentials'.
    assert!(
        matches!(error, QueryError::InvalidQuery { .. }),
        "{error:?}"
    );
    let shown = error.to_string();
    assert!(shown.contains("bad_data: 1:1: parse error"), "{shown}");
    assert!(shown.ends_with("; fix the query"), "{shown}");
    assert!(!shown.contains("credentials"), "{shown}");
    assert_eq!(proxy.seen().len(), 1, "a refusal is not retried");
}

#[tokio::test]
async fn a_check_rides_out_transient_faults_and_judges_on_real_answers() {
    let at = evaluate_at();
    let prometheus = prometheus_with(&service_series(
        "flaky",
        CANARY,
        Some(canary_load(0.95)),
        at,
    ))
    .await;
    let proxy = FaultyProxy::start(
        &prometheus.url(),
        vec![
            Answer::Status(503, None, ""),
            Answer::Status(
                500,
                None,
                r#"{"status":"error","errorType":"internal","error":"oops"}"#,
            ),
            Answer::Status(
                503,
                None,
                r#"{"status":"error","errorType":"unavailable","error":"busy"}"#,
            ),
        ],
    )
    .await;
    let api = PrometheusApi::new(&config(proxy.url.clone())).unwrap();
    let report = api.check(&request("flaky", CANARY, at)).await;
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
        value(&report.verdict, "error-rate").0,
        0.0095,
        "canary error rate",
    );
    assert_eq!(proxy.seen().len(), 6, "three queries, three faults retried");
}
