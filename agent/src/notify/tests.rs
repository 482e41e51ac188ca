use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use weir_analysis::judge::Judgement;
use weir_analysis::{Bound, InconclusiveReason, Measurement, Verdict};

use super::*;
use crate::plan::{
    self, Action, CheckRecord, Controls, Event, EventType, Observed, Phase, Status, Subset,
    Subsets, Traffic, Version, reason,
};
use crate::server::Metrics;
use crate::spec::{self, Defaults, RolloutSpec};

fn t0() -> Timestamp {
    "2026-11-26T03:00:00Z".parse().unwrap()
}

fn event(reason: &str, type_: EventType, message: &str) -> Event {
    Event {
        type_,
        reason: reason.into(),
        message: message.into(),
    }
}

fn error_rate(canary: f64) -> Measurement {
    Measurement {
        metric: "error-rate".into(),
        canary: Some(canary),
        stable: Some(0.001),
        bound: Some(Bound::Max(0.01)),
        evidence: None,
    }
}

fn latency() -> Measurement {
    Measurement {
        metric: "latency".into(),
        canary: Some(20.0),
        stable: Some(21.0),
        bound: Some(Bound::Max(500.0)),
        evidence: None,
    }
}

fn progressing(step: usize) -> Status {
    let steps = vec![10, 25, 50];
    Status {
        phase: Phase::Progressing,
        stable: Some("v1".into()),
        canary: Some("v2".into()),
        step: Some(step),
        weight: steps[step],
        steps,
        ..Status::new(t0())
    }
}

fn aborted(last_check: Option<Verdict>) -> Status {
    Status {
        phase: Phase::Aborted,
        stable: Some("v1".into()),
        canary: Some("v2".into()),
        last_check: last_check.map(|verdict| CheckRecord { at: t0(), verdict }),
        ..Status::new(t0())
    }
}

fn notify(reason: &str, type_: EventType, message: &str, status: &Status) -> Notification {
    notification("shop", "checkout", &event(reason, type_, message), status)
        .unwrap_or_else(|| panic!("{reason} should be notified"))
}

#[test]
fn each_transition_people_hear_of_has_its_kind_and_no_other_event_does() {
    let notified = [
        (reason::ROLLOUT_STARTED, Kind::Started),
        (reason::WEIGHT_CHANGED, Kind::Advanced),
        (reason::PAUSED, Kind::Paused),
        (reason::CHECK_INCONCLUSIVE, Kind::Inconclusive),
        (reason::ABORTED, Kind::Aborted),
        (reason::PROMOTED, Kind::Promoted),
        (reason::MISCONFIGURED, Kind::Misconfigured),
    ];
    for (reason, kind) in notified {
        assert_eq!(Kind::of(reason), Some(kind), "{reason}");
    }
    for quiet in [
        reason::STABLE_ADOPTED,
        reason::CHECK_FAILED,
        reason::PROMOTED_BY_PERSON,
        reason::RESUMED,
        reason::RETRYING,
        reason::IGNORED_CONTROL,
        reason::RECONFIGURED,
        reason::CANARY_GONE,
        reason::SCALED_DOWN,
        reason::SCALE_DOWN_FAILED,
    ] {
        assert_eq!(Kind::of(quiet), None, "{quiet}");
        let status = progressing(0);
        assert!(
            notification(
                "shop",
                "checkout",
                &event(quiet, EventType::Normal, "m"),
                &status
            )
            .is_none()
        );
    }
}

#[test]
fn a_start_names_the_versions_the_weights_and_the_step() {
    let n = notify(
        reason::ROLLOUT_STARTED,
        EventType::Normal,
        "v2 became available: releasing v2 at canary weight 10 (step 1/3)",
        &progressing(0),
    );
    assert_eq!(n.kind, Kind::Started);
    assert_eq!(n.severity, Severity::Info);
    assert_eq!(n.version.as_deref(), Some("v2"));
    assert_eq!(n.stable.as_deref(), Some("v1"));
    assert_eq!(n.canary.as_deref(), Some("v2"));
    assert_eq!(
        n.weights,
        Traffic {
            stable: 90,
            canary: 10
        }
    );
    assert_eq!(n.step, Some(StepPosition { number: 1, of: 3 }));
    assert_eq!(
        n.summary,
        "shop/checkout: releasing v2 at canary weight 10 (step 1/3); stable is v1"
    );
    assert_eq!(n.explain, "weir explain checkout -n shop");
    assert_eq!(n.link, None);
    assert!(n.failed_gates.is_empty());
    assert_eq!(n.at, t0());

    let n = notify(
        reason::WEIGHT_CHANGED,
        EventType::Normal,
        "check passed; canary weight 10 → 25 (step 2/3)",
        &progressing(1),
    );
    assert_eq!(
        n.summary,
        "shop/checkout: v2 advanced to canary weight 25 (step 2/3)"
    );
    assert_eq!(n.weights.stable, 75);
    let mut paused = progressing(2);
    paused.phase = Phase::Paused;
    let n = notify(reason::PAUSED, EventType::Normal, "paused", &paused);
    assert_eq!(
        n.summary,
        "shop/checkout: v2 paused at canary weight 50 (step 3/3)"
    );
}

#[test]
fn an_abort_on_a_failed_gate_carries_the_gate_and_its_values() {
    let verdict = Verdict::Fail {
        failed: vec!["error-rate".into()],
        measurements: vec![error_rate(0.2), latency()],
        conclusive: true,
    };
    let n = notify(
        reason::ABORTED,
        EventType::Warning,
        "aborted v2: the evidence against it reached 99% confidence on error-rate; canary weight 0",
        &aborted(Some(verdict)),
    );
    assert_eq!(n.kind, Kind::Aborted);
    assert_eq!(n.severity, Severity::Warning);
    assert_eq!(
        n.failed_gates,
        vec![error_rate(0.2)],
        "only the gate that failed"
    );
    assert_eq!(
        n.weights,
        Traffic {
            stable: 100,
            canary: 0
        }
    );
    assert_eq!(n.step, None);
    assert_eq!(
        n.summary,
        "shop/checkout: aborted v2 on error-rate 20.00% (stable 0.10%, max 1.00%); all traffic back to v1"
    );
    assert!(n.last_check.is_some());

    // Aborted by a person after passing checks: no gate is blamed.
    let n = notify(
        reason::ABORTED,
        EventType::Warning,
        "aborted v2: aborted by weir.dev/abort=v2; canary weight 0",
        &aborted(Some(Verdict::Pass {
            measurements: vec![error_rate(0.0)],
        })),
    );
    assert!(n.failed_gates.is_empty());
    assert_eq!(
        n.summary,
        "shop/checkout: aborted v2; all traffic back to v1"
    );
}

#[test]
fn promotion_inconclusive_and_misconfiguration_read_as_they_should() {
    let idle = Status {
        phase: Phase::Idle,
        stable: Some("v2".into()),
        ..Status::new(t0())
    };
    let n = notify(
        reason::PROMOTED,
        EventType::Normal,
        "all 3 steps passed",
        &idle,
    );
    assert_eq!(n.version.as_deref(), Some("v2"), "the promoted version");
    assert_eq!(n.canary, None);
    assert_eq!(
        n.summary,
        "shop/checkout: promoted v2; it takes all traffic"
    );

    let mut held = progressing(1);
    held.last_check = Some(CheckRecord {
        at: t0(),
        verdict: Verdict::Inconclusive {
            reason: InconclusiveReason::NoData,
            detail: "no canary series".into(),
            measurements: vec![],
        },
    });
    let n = notify(
        reason::CHECK_INCONCLUSIVE,
        EventType::Normal,
        "check inconclusive (NoData): no canary series",
        &held,
    );
    assert_eq!(
        n.summary,
        "shop/checkout: v2 held at canary weight 25 (step 2/3): check inconclusive (no-data)"
    );

    let message = "weir.dev/steps: \"10,5\" is not valid: steps must be strictly ascending: 5 comes after 10; for example weir.dev/steps: \"10,25,50\"\nweir.dev/step: \"1\" is not valid: unknown annotation";
    let misconfigured = Status {
        phase: Phase::Misconfigured,
        ..Status::new(t0())
    };
    let n = notify(
        reason::MISCONFIGURED,
        EventType::Warning,
        message,
        &misconfigured,
    );
    assert_eq!(n.version, None);
    assert!(
        n.summary.starts_with(
            "shop/checkout: misconfigured, no traffic moves until it is fixed: weir.dev/steps: \"10,5\" is not valid"
        ),
        "{}",
        n.summary
    );
    assert!(!n.summary.contains('\n'), "one line: {}", n.summary);
    assert!(n.summary.chars().count() < 300, "{}", n.summary);
    assert_eq!(n.message, message, "the whole message");
}

/// A cluster as the planner sees it, reduced to what one Service's rollouts need: the
/// plan's writes are applied, and its Events turned into notifications as the agent
/// does.
struct Cluster {
    spec: RolloutSpec,
    versions: Vec<Version>,
    status: Option<Status>,
    traffic: Traffic,
    subsets: Subsets,
    controls: Controls,
    now: Timestamp,
}

impl Cluster {
    fn new() -> Cluster {
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(spec::keys::ENABLED.to_string(), "true".to_string());
        Cluster {
            spec: spec::parse("checkout", &annotations, &Defaults::default()).unwrap(),
            versions: vec![Cluster::version("v1", 0)],
            status: None,
            traffic: Traffic {
                stable: 100,
                canary: 0,
            },
            subsets: Subsets {
                stable: Some("v1".into()),
                canary: Some("v1".into()),
            },
            controls: Controls::default(),
            now: t0(),
        }
    }

    fn version(name: &str, created: i64) -> Version {
        Version {
            name: name.into(),
            deployment: format!("checkout-{name}"),
            template: format!("t2:{name}"),
            legacy_template: format!("legacy-{name}"),
            available: true,
            created: t0() + SignedDuration::from_secs(created),
            reported: name.into(),
            replicas: Some(2),
            resource_version: Some("1".into()),
        }
    }

    /// One reconcile, a minute after the last, judged `verdict` if a check is due.
    fn reconcile(&mut self, verdict: Option<Verdict>) -> Vec<Kind> {
        self.now += SignedDuration::from_secs(61);
        let observed = Observed {
            versions: Some(self.versions.clone()),
            traffic: self.traffic,
            subsets: self.subsets.clone(),
            status: self.status.clone(),
            controls: self.controls.clone(),
            last_check_at: None,
        };
        let check = plan::check_due(&self.spec, &observed, self.now);
        let judgement = verdict.map(|verdict| Judgement {
            verdict,
            step: None,
            baseline: None,
        });
        let plan = plan::plan(
            &self.spec,
            &observed,
            check.as_ref().zip(judgement.as_ref()),
            self.now,
        );
        let mut written: Option<Status> = None;
        let mut kinds = Vec::new();
        for action in plan.actions {
            match action {
                Action::WriteStatus { status, .. } => {
                    self.status = Some(*status.clone());
                    written = Some(*status);
                }
                Action::SetWeights(traffic) => self.traffic = traffic,
                Action::SetSubsetVersion { subset, version } => match subset {
                    Subset::Stable => self.subsets.stable = Some(version),
                    Subset::Canary => self.subsets.canary = Some(version),
                },
                Action::ScaleDown { version, .. } => {
                    for v in self.versions.iter_mut().filter(|v| v.name == version) {
                        v.replicas = Some(0);
                    }
                }
                Action::Emit(event) => {
                    let status = written.as_ref().expect("an Event follows a status write");
                    if let Some(n) = notification("shop", "checkout", &event, status) {
                        kinds.push(n.kind);
                    }
                }
            }
        }
        kinds
    }
}

#[test]
fn the_planners_own_events_make_the_notifications_of_two_rollouts() {
    let mut cluster = Cluster::new();
    assert_eq!(cluster.reconcile(None), []);
    let pass = || {
        Some(Verdict::Pass {
            measurements: vec![error_rate(0.0)],
        })
    };

    cluster.versions.push(Cluster::version("v2", 100));
    assert_eq!(cluster.reconcile(None), [Kind::Started]);
    assert_eq!(cluster.reconcile(pass()), [Kind::Advanced]);
    // The quiet wait for evidence is no transition.
    let awaiting = Verdict::Inconclusive {
        reason: InconclusiveReason::AwaitingEvidence,
        detail: "more requests needed".into(),
        measurements: vec![],
    };
    assert_eq!(cluster.reconcile(Some(awaiting)), []);
    assert_eq!(cluster.reconcile(pass()), [Kind::Advanced]);
    assert_eq!(cluster.reconcile(pass()), [Kind::Promoted]);
    assert_eq!(cluster.subsets.stable.as_deref(), Some("v2"));

    cluster.versions.push(Cluster::version("v3", 200));
    assert_eq!(cluster.reconcile(None), [Kind::Started]);
    let no_data = Verdict::Inconclusive {
        reason: InconclusiveReason::NoData,
        detail: "no canary series".into(),
        measurements: vec![],
    };
    assert_eq!(
        cluster.reconcile(Some(no_data.clone())),
        [Kind::Inconclusive]
    );
    assert_eq!(
        cluster.reconcile(Some(no_data)),
        [],
        "told once per run of inconclusive checks"
    );
    cluster.controls.pause = true;
    assert_eq!(cluster.reconcile(None), [Kind::Paused]);
    cluster.controls.pause = false;
    assert_eq!(cluster.reconcile(None), [], "resuming is not notified");
    let fail = Verdict::Fail {
        failed: vec!["error-rate".into()],
        measurements: vec![error_rate(0.2)],
        conclusive: true,
    };
    assert_eq!(cluster.reconcile(Some(fail)), [Kind::Aborted]);
    assert_eq!(cluster.traffic.canary, 0);

    let report = plan::misconfigured(cluster.status.as_ref(), "bad steps", cluster.now)
        .expect("a new misconfiguration is reported");
    let n = notification("shop", "checkout", &report.event, &report.status).unwrap();
    assert_eq!(n.kind, Kind::Misconfigured);
}

fn sample() -> Notification {
    let verdict = Verdict::Fail {
        failed: vec!["error-rate".into()],
        measurements: vec![error_rate(0.2)],
        conclusive: true,
    };
    notify(
        reason::ABORTED,
        EventType::Warning,
        "aborted v2: <error-rate> & more; canary weight 0",
        &aborted(Some(verdict)),
    )
}

#[test]
fn the_webhook_payload_has_the_documented_shape() {
    let body = webhook(&sample());
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut documented = vec![
        "schema",
        "kind",
        "reason",
        "severity",
        "namespace",
        "service",
        "version",
        "stable",
        "canary",
        "weights",
        "step",
        "phase",
        "summary",
        "message",
        "failedGates",
        "lastCheck",
        "explain",
        "link",
        "at",
    ];
    documented.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, documented, "every key, always present");
    assert_eq!(body["schema"], "weir.dev/notification/v1");
    assert_eq!(body["kind"], "aborted");
    assert_eq!(body["reason"], "Aborted");
    assert_eq!(body["severity"], "warning");
    assert_eq!(body["phase"], "Aborted");
    assert_eq!(body["weights"], json!({"stable": 100, "canary": 0}));
    assert_eq!(body["step"], Value::Null);
    assert_eq!(body["link"], Value::Null);
    assert_eq!(
        body["failedGates"],
        json!([{"metric": "error-rate", "canary": 0.2, "stable": 0.001, "bound": {"max": 0.01}}])
    );
    assert_eq!(body["lastCheck"]["verdict"], "fail");
    assert_eq!(body["at"], "2026-11-26T03:00:00Z");
    assert_eq!(body["explain"], "weir explain checkout -n shop");
}

#[test]
fn the_slack_message_is_one_line_of_text_and_blocks_with_the_details() {
    let mut n = sample();
    n.link = Some("https://grafana.example/d/weir?a=1&b=2".into());
    let body = slack(&n);
    let text = body["text"].as_str().unwrap();
    assert_eq!(
        text,
        ":red_circle: shop/checkout: aborted v2 on error-rate 20.00% (stable 0.10%, max 1.00%); all traffic back to v1"
    );
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["text"]["text"], text);
    // People's text is escaped: it cannot make links or mentions.
    assert_eq!(
        blocks[1]["text"]["text"],
        "aborted v2: &lt;error-rate&gt; &amp; more; canary weight 0"
    );
    let fields: Vec<&str> = blocks[2]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "*Stable*\nv1",
            "*Canary*\nv2",
            "*Weights*\n100 stable / 0 canary"
        ]
    );
    assert_eq!(
        blocks[3]["elements"][0]["text"],
        "`weir explain checkout -n shop` · <https://grafana.example/d/weir?a=1&amp;b=2|dashboard>"
    );
    assert_eq!(blocks.len(), 4);
    for block in blocks {
        let text = serde_json::to_string(block).unwrap();
        assert!(text.len() < 3000, "a block within Slack's limits: {text}");
    }

    let mut started = notify(
        reason::ROLLOUT_STARTED,
        EventType::Normal,
        "releasing v2",
        &progressing(0),
    );
    started.link = None;
    let body = slack(&started);
    assert!(body["text"].as_str().unwrap().starts_with(":rocket: "));
    assert_eq!(body["blocks"][2]["fields"][3]["text"], "*Step*\n1/3");
    assert_eq!(
        body["blocks"][3]["elements"][0]["text"],
        "`weir explain checkout -n shop`"
    );
}

#[test]
fn a_link_template_is_checked_and_filled_per_service() {
    let link =
        Link::parse("https://grafana.example/d/weir-rollouts/weir?var-namespace={namespace}&var-service={service}")
            .unwrap();
    assert_eq!(
        link.render("shop", "checkout"),
        "https://grafana.example/d/weir-rollouts/weir?var-namespace=shop&var-service=checkout"
    );
    for bad in ["grafana.example/d/weir", "ftp://example/{service}", ""] {
        let error = Link::parse(bad).unwrap_err().to_string();
        assert!(error.starts_with("--notify-link "), "{error}");
        assert!(error.contains("{namespace} and {service}"), "{error}");
    }
}

/// A notifier whose webhook queue holds one notification and is never drained.
fn stalled_notifier(metrics: Arc<Metrics>) -> (Notifier, mpsc::Receiver<Notification>) {
    let (sender, receiver) = mpsc::channel(1);
    let notifier = Notifier {
        queues: vec![(Sink::Webhook, sender)],
        link: Some(Link::parse("https://dash.example/{namespace}/{service}").unwrap()),
        metrics,
    };
    (notifier, receiver)
}

fn counter(metrics: &Metrics, sink: &str, outcome: &str) -> Option<f64> {
    let series = format!(r#"weir_notifications_total{{sink="{sink}",outcome="{outcome}"}} "#);
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.parse().ok())
}

#[test]
fn publishing_never_waits_a_full_queue_drops_and_counts() {
    let metrics = Arc::new(Metrics::new());
    let (notifier, mut queue) = stalled_notifier(metrics.clone());
    notifier.publish(&Sink::ALL, sample());
    // Routed elsewhere or muted: the webhook is not told.
    notifier.publish(&[Sink::Slack], sample());
    notifier.publish(&[], sample());
    let queued = queue.try_recv().expect("the first is queued");
    assert_eq!(
        queued.link.as_deref(),
        Some("https://dash.example/shop/checkout")
    );
    assert!(queue.try_recv().is_err(), "routed and muted ones are not");
    assert_eq!(counter(&metrics, "webhook", "dropped"), None);

    notifier.publish(&Sink::ALL, sample());
    notifier.publish(&Sink::ALL, sample());
    assert_eq!(counter(&metrics, "webhook", "dropped"), Some(1.0));
    // A Slack the agent does not have is not a drop: it is not configured.
    assert_eq!(counter(&metrics, "slack", "dropped"), None);
    // With the deliveries gone, the queue is closed: a drop too.
    drop(queue);
    notifier.publish(&Sink::ALL, sample());
    assert_eq!(counter(&metrics, "webhook", "dropped"), Some(2.0));
}

/// A receiver that answers each POST with the next of `answers` (then 200), and counts
/// the POSTs and keeps their bodies.
struct Receiver {
    url: String,
    posts: Arc<AtomicUsize>,
    bodies: Arc<std::sync::Mutex<Vec<Value>>>,
}

async fn receiver(answers: Vec<StatusCode>) -> Receiver {
    #[derive(Clone)]
    struct Shared {
        answers: Arc<Vec<StatusCode>>,
        posts: Arc<AtomicUsize>,
        bodies: Arc<std::sync::Mutex<Vec<Value>>>,
    }
    async fn answer(State(shared): State<Shared>, body: String) -> StatusCode {
        let n = shared.posts.fetch_add(1, Ordering::SeqCst);
        shared
            .bodies
            .lock()
            .unwrap()
            .push(serde_json::from_str(&body).unwrap_or(Value::Null));
        shared.answers.get(n).copied().unwrap_or(StatusCode::OK)
    }
    let shared = Shared {
        answers: Arc::new(answers),
        posts: Arc::new(AtomicUsize::new(0)),
        bodies: Arc::new(std::sync::Mutex::new(Vec::new())),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hook", post(answer))
        .with_state(shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url,
        posts: shared.posts,
        bodies: shared.bodies,
    }
}

fn fast() -> Retries {
    Retries {
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        attempts: 4,
    }
}

fn endpoint(sink: Sink, dir: &tempfile::TempDir, url: &str) -> Endpoint {
    let url_file = dir.path().join(sink.name());
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    Endpoint { sink, url_file }
}

#[tokio::test]
async fn a_sink_that_fails_for_a_while_gets_the_notification_once_it_recovers() {
    let sink = receiver(vec![
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::TOO_MANY_REQUESTS,
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = endpoint(Sink::Slack, &dir, &sink.url);
    let client = reqwest::Client::new();
    endpoint.deliver(&client, &sample(), fast()).await.unwrap();
    assert_eq!(sink.posts.load(Ordering::SeqCst), 4);
    let bodies = sink.bodies.lock().unwrap();
    assert_eq!(bodies[3], slack(&sample()), "the Slack body, as built");
}

#[tokio::test]
async fn retries_are_bounded_and_a_refusal_is_not_retried() {
    let down = receiver(vec![StatusCode::BAD_GATEWAY; 10]).await;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let error = endpoint(Sink::Webhook, &dir, &down.url)
        .deliver(&client, &sample(), fast())
        .await
        .unwrap_err();
    assert!(
        matches!(error, DeliveryError::Unavailable { .. }),
        "{error}"
    );
    assert_eq!(down.posts.load(Ordering::SeqCst), 4, "attempts in all");

    let wrong = receiver(vec![StatusCode::NOT_FOUND; 10]).await;
    let error = endpoint(Sink::Webhook, &dir, &wrong.url)
        .deliver(&client, &sample(), fast())
        .await
        .unwrap_err();
    assert!(matches!(error, DeliveryError::Refused { .. }), "{error}");
    assert_eq!(wrong.posts.load(Ordering::SeqCst), 1);
    assert!(error.to_string().contains("check its URL"), "{error}");
}

#[tokio::test]
async fn the_url_is_read_at_every_attempt_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    // Nothing listens on the first URL; the Secret is rotated while retrying.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/secret-token", listener.local_addr().unwrap())
    };
    let endpoint = endpoint(Sink::Webhook, &dir, &closed);
    let error = endpoint
        .deliver(
            &client,
            &sample(),
            Retries {
                attempts: 1,
                ..fast()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(error, DeliveryError::Unreachable(_)), "{error}");
    assert!(!error.to_string().contains("secret-token"), "{error}");

    let open = receiver(vec![]).await;
    let rotate = {
        let file = endpoint.url_file.clone();
        let url = open.url.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            // As the kubelet updates a Secret's file: whole, at once.
            let next = file.with_extension("next");
            std::fs::write(&next, url).unwrap();
            std::fs::rename(next, file).unwrap();
        }
    };
    let slow = Retries {
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(40),
        attempts: 20,
    };
    let notification = sample();
    let (result, ()) = tokio::join!(endpoint.deliver(&client, &notification, slow), rotate);
    result.unwrap();
    assert_eq!(open.posts.load(Ordering::SeqCst), 1);

    for (content, fragment) in [
        ("ftp://example/hook", "its scheme is ftp"),
        ("not a url", "relative URL without a base"),
    ] {
        std::fs::write(&endpoint.url_file, content).unwrap();
        let error = endpoint.url().unwrap_err();
        assert!(error.to_string().contains(fragment), "{error}");
        assert!(!error.to_string().contains(content), "{error}");
    }
    std::fs::remove_file(&endpoint.url_file).unwrap();
    let started = Notifier::start(
        &NotifyConfig {
            webhook_url_file: Some(endpoint.url_file.clone()),
            ..NotifyConfig::default()
        },
        Arc::new(Metrics::new()),
    );
    let error = started.err().expect("a missing URL file stops the agent");
    assert!(
        error
            .to_string()
            .starts_with("--notify-webhook-url-file: cannot read the URL from "),
        "{error}"
    );
}

#[tokio::test]
async fn the_notifier_delivers_in_order_and_counts_each_outcome() {
    let webhook_sink = receiver(vec![StatusCode::INTERNAL_SERVER_ERROR]).await;
    let slack_sink = receiver(vec![StatusCode::FORBIDDEN]).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let config = NotifyConfig {
        webhook_url_file: Some(endpoint(Sink::Webhook, &dir, &webhook_sink.url).url_file),
        slack_url_file: Some(endpoint(Sink::Slack, &dir, &slack_sink.url).url_file),
        retries: fast(),
        ..NotifyConfig::default()
    };
    let (notifier, deliveries) = Notifier::start(&config, metrics.clone()).unwrap();
    assert_eq!(counter(&metrics, "webhook", "sent"), Some(0.0));
    let started = notify(
        reason::ROLLOUT_STARTED,
        EventType::Normal,
        "releasing v2",
        &progressing(0),
    );
    notifier.publish(&Sink::ALL, started);
    notifier.publish(&Sink::ALL, sample());
    drop(notifier);
    deliveries.finish(Duration::from_secs(10)).await;

    let kinds: Vec<Value> = webhook_sink
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["kind"].clone())
        .collect();
    assert_eq!(
        kinds,
        ["started", "started", "aborted"],
        "retried, in order"
    );
    assert_eq!(counter(&metrics, "webhook", "sent"), Some(2.0));
    assert_eq!(counter(&metrics, "webhook", "failed"), Some(0.0));
    assert_eq!(counter(&metrics, "slack", "failed"), Some(1.0), "refused");
    assert_eq!(counter(&metrics, "slack", "sent"), Some(1.0));
}
