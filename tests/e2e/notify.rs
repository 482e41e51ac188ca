//! Notifications of transitions, received by local HTTP servers standing in for a team's
//! webhook and its Slack: what each is told, routing and muting by `weir.dev/notify`, a
//! sink that fails and then recovers, and a bad `weir.dev/notify` that moves no traffic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::anyhow;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use weir::plan::Phase;
use weir_testbed::wait_until;

use crate::support::{App, Bed, DEADLINE, Weights, metric_value};

/// A local HTTP receiver: it answers its first `failures` POSTs with 503, then 200, and
/// keeps the JSON bodies it accepted.
#[derive(Clone)]
struct Receiver {
    url: String,
    failures: usize,
    posts: Arc<AtomicUsize>,
    accepted: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start(failures: usize) -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Receiver {
            url: format!("http://{}/hooks/weir", listener.local_addr()?),
            failures,
            posts: Arc::new(AtomicUsize::new(0)),
            accepted: Arc::new(Mutex::new(Vec::new())),
        };
        async fn answer(State(r): State<Receiver>, body: String) -> StatusCode {
            if r.posts.fetch_add(1, Ordering::SeqCst) < r.failures {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            match serde_json::from_str(&body) {
                Ok(json) => {
                    r.accepted.lock().unwrap().push(json);
                    StatusCode::OK
                }
                Err(_) => StatusCode::BAD_REQUEST,
            }
        }
        let app = Router::new()
            .route("/hooks/weir", post(answer))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(receiver)
    }

    fn accepted(&self) -> Vec<Value> {
        self.accepted.lock().unwrap().clone()
    }

    /// The webhook bodies about `service`.
    fn about(&self, service: &str) -> Vec<Value> {
        self.accepted()
            .into_iter()
            .filter(|b| b["service"] == service)
            .collect()
    }

    /// The kinds of the webhook notifications about `service`, in order.
    fn kinds(&self, service: &str) -> Vec<String> {
        self.about(service)
            .iter()
            .map(|b| b["kind"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Waits until the webhook was told of `kinds` about `service`, in that order, and
    /// of nothing else but the kinds in `besides`.
    async fn wait_kinds(
        &self,
        service: &str,
        kinds: &[&str],
        besides: &[&str],
    ) -> anyhow::Result<Vec<Value>> {
        wait_until(
            &format!("the webhook to be told {kinds:?} about {service}"),
            DEADLINE,
            || async {
                let seen = self.kinds(service);
                let main: Vec<&String> = seen
                    .iter()
                    .filter(|k| !besides.contains(&k.as_str()))
                    .collect();
                if main == kinds {
                    Ok(self
                        .about(service)
                        .into_iter()
                        .filter(|b| !besides.iter().any(|k| b["kind"] == *k))
                        .collect())
                } else {
                    Err(anyhow!("told so far: {seen:?}"))
                }
            },
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_transition_is_told_to_the_services_sinks_and_a_failing_sink_catches_up()
-> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let webhook = Receiver::start(0).await?;
    // Slack is down for its first three POSTs: the retries outlast it.
    let slack = Receiver::start(3).await?;
    let secrets = tempfile::tempdir()?;
    let webhook_file = secrets.path().join("webhook-url");
    let slack_file = secrets.path().join("slack-url");
    std::fs::write(&webhook_file, format!("{}\n", webhook.url))?;
    std::fs::write(&slack_file, &slack.url)?;

    // Every sink (no annotation).
    bed.deploy_app(&App::new("checkout")).await?;
    // Only the webhook; held, and without traffic, so that its step holds inconclusive.
    bed.deploy_app(&App::held("payments").with("notify", "webhook"))
        .await?;
    bed.annotate("payments", "sim.weir.dev/rps", Some("0"))
        .await?;
    // Muted.
    bed.deploy_app(&App::held("search").with("notify", "none"))
        .await?;
    // Not a sink: misconfigured, with a canary waiting that must not get traffic.
    bed.deploy_app(&App::new("typo").with("notify", "teams"))
        .await?;
    bed.deploy_version("typo", "v2", 0.0).await?;

    let agent = bed.agent(&[
        "--notify-webhook-url-file",
        webhook_file.to_str().unwrap(),
        "--notify-slack-url-file",
        slack_file.to_str().unwrap(),
        "--notify-link",
        "https://grafana.example/d/weir?var-namespace={namespace}&var-service={service}",
    ])?;

    // A bad weir.dev/notify names the annotation and the fix, moves nothing, and is told.
    let status = bed.wait_phase("typo", Phase::Misconfigured).await?;
    assert!(
        status.message.contains("weir.dev/notify")
            && status
                .message
                .contains(r#""teams" is not a sink: write all, none, or sink names"#),
        "{}",
        status.message
    );
    let told = webhook.wait_kinds("typo", &["misconfigured"], &[]).await?;
    assert_eq!(told[0]["severity"], "warning");
    assert!(
        told[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("weir.dev/notify"),
        "{}",
        told[0]
    );

    // payments: only the webhook hears of it. Its step holds without traffic, then a
    // person pauses it.
    bed.deploy_version("payments", "v2", 0.0).await?;
    webhook
        .wait_kinds("payments", &["started", "inconclusive"], &[])
        .await?;
    bed.annotate("payments", "weir.dev/pause", Some("true"))
        .await?;
    let told = webhook
        .wait_kinds("payments", &["started", "inconclusive", "paused"], &[])
        .await?;
    assert_eq!(told[2]["phase"], "Paused", "{}", told[2]);
    assert_eq!(told[2]["weights"]["canary"], 10, "{}", told[2]);

    // search is muted: its release starts, and no sink hears of it. (Each sink is told
    // in order: once checkout's abort has reached a sink, anything about search would
    // have reached it before.)
    bed.release_to_first_step("search", "v2").await?;

    // A healthy release of checkout, then a failing one.
    bed.wait_phase("checkout", Phase::Idle).await?;
    bed.deploy_version("checkout", "v2", 0.0).await?;
    bed.wait_status("checkout", "v2 to be promoted", |s| {
        s.phase == Phase::Idle && s.stable.as_deref() == Some("v2")
    })
    .await?;
    bed.deploy_version("checkout", "v3", 0.2).await?;
    bed.wait_phase("checkout", Phase::Aborted).await?;
    let told = webhook
        .wait_kinds(
            "checkout",
            &[
                "started", "advanced", "advanced", "promoted", "started", "aborted",
            ],
            // A step's first check may find no canary series yet: it holds
            // inconclusive until the mesh's metrics show the canary.
            &["inconclusive"],
        )
        .await?;
    for body in &told {
        assert_eq!(body["schema"], "weir.dev/notification/v1", "{body}");
        assert_eq!(body["namespace"], "shop", "{body}");
        assert_eq!(body["explain"], "weir explain checkout -n shop", "{body}");
        assert_eq!(
            body["link"], "https://grafana.example/d/weir?var-namespace=shop&var-service=checkout",
            "{body}"
        );
        let (stable, canary) = (
            body["weights"]["stable"].as_u64(),
            body["weights"]["canary"].as_u64(),
        );
        assert_eq!(stable.zip(canary).map(|(s, c)| s + c), Some(100), "{body}");
    }
    let weights: Vec<u64> = told
        .iter()
        .map(|b| b["weights"]["canary"].as_u64().unwrap_or(999))
        .collect();
    assert_eq!(weights, [10, 25, 50, 0, 10, 0], "{told:#?}");
    assert_eq!(told[0]["version"], "v2");
    assert_eq!(told[0]["stable"], "v1");
    assert_eq!(told[0]["step"], serde_json::json!({"number": 1, "of": 3}));
    assert_eq!(told[3]["version"], "v2");
    assert_eq!(told[3]["stable"], "v2");
    let aborted = &told[5];
    assert_eq!(aborted["version"], "v3");
    assert_eq!(aborted["stable"], "v2");
    assert_eq!(aborted["severity"], "warning");
    let gates = aborted["failedGates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // v3's errors break both error gates; whichever has the evidence first aborts it.
    let error_rate = gates
        .iter()
        .find(|g| g["metric"] == "error-rate" || g["metric"] == "errors-vs-stable")
        .ok_or_else(|| anyhow!("the abort names no error gate: {aborted}"))?;
    let (canary, stable) = (error_rate["canary"].as_f64(), error_rate["stable"].as_f64());
    assert!(
        matches!((canary, stable), (Some(c), Some(s)) if c > s),
        "the failed gate's values: {error_rate}"
    );
    let summary = aborted["summary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with("shop/checkout: aborted v3 on error-rate ")
            || summary.starts_with("shop/checkout: aborted v3 on errors-vs-stable "),
        "{summary}"
    );

    // Slack, which refused the first three attempts, got everything it was sent, in
    // order, once it recovered: checkout's and typo's, none of payments' or search's.
    let texts = wait_until("Slack to be told of checkout's abort", DEADLINE, || async {
        let texts: Vec<String> = slack
            .accepted()
            .iter()
            .map(|b| b["text"].as_str().unwrap_or_default().to_owned())
            .collect();
        if texts
            .iter()
            .any(|t| t.contains("shop/checkout: aborted v3"))
        {
            Ok(texts)
        } else {
            Err(anyhow!("Slack was told: {texts:#?}"))
        }
    })
    .await?;
    let about = |service: &str| {
        texts
            .iter()
            .filter(|t| t.contains(&format!("shop/{service}:")))
            .count()
    };
    assert_eq!(
        about("checkout"),
        webhook.about("checkout").len(),
        "{texts:#?}"
    );
    assert_eq!(about("typo"), 1, "{texts:#?}");
    assert_eq!(about("payments"), 0, "{texts:#?}");
    assert_eq!(about("search"), 0, "{texts:#?}");
    assert_eq!(slack.posts.load(Ordering::SeqCst), texts.len() + 3);
    assert!(
        webhook.about("search").is_empty(),
        "{:#?}",
        webhook.accepted()
    );
    let blocks = &slack.accepted()[0]["blocks"];
    assert!(blocks.is_array(), "{blocks}");

    // The routing annotation's failure moved no traffic.
    let (live, _) = bed.route("typo").await?;
    assert_eq!(
        live,
        Weights {
            stable: 100,
            canary: 0
        }
    );

    // The counters say the same; a recovered sink failed nothing.
    let metrics = agent.metrics().await?;
    let count = |sink: &str, outcome: &str| {
        metric_value(
            &metrics,
            &format!(r#"weir_notifications_total{{sink="{sink}",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(
        count("slack", "sent"),
        Some(texts.len() as f64),
        "{metrics}"
    );
    assert_eq!(count("slack", "failed"), Some(0.0), "{metrics}");
    assert_eq!(count("slack", "dropped"), Some(0.0), "{metrics}");
    assert_eq!(
        count("webhook", "sent"),
        Some(webhook.accepted().len() as f64),
        "{metrics}"
    );
    println!(
        "notifications: webhook {} sent; slack {} sent after {} refused attempts",
        webhook.accepted().len(),
        texts.len(),
        slack.failures
    );
    Ok(())
}

/// A URL file that holds no URL stops the agent at once, naming the flag and the fix:
/// nothing runs, so no traffic moves.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_sink_url_stops_the_agent_naming_the_flag() -> anyhow::Result<()> {
    let secrets = tempfile::tempdir()?;
    let file = secrets.path().join("slack-url");
    std::fs::write(&file, "hooks.example/services/T000/B000")?;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "agent",
            "--namespace",
            "shop",
            "--prometheus-url",
            "http://127.0.0.1:9",
            "--notify-slack-url-file",
        ])
        .arg(&file)
        .env("KUBECONFIG", secrets.path().join("no-such-kubeconfig"))
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--notify-slack-url-file: ")
            && stderr.contains("does not hold an http(s) URL")
            && stderr.contains("put the sink's URL in it"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hooks.example"),
        "the URL is a secret: {stderr}"
    );
    assert!(
        !stderr.contains("cannot configure a Kubernetes client"),
        "the agent should stop before it reaches the cluster: {stderr}"
    );
    Ok(())
}
