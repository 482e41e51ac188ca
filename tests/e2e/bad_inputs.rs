//! Bad input, one table: every case is a Service of its own on one test bed, with one
//! agent. Each ends Misconfigured with an Event naming the fix, or in its documented
//! handling; none moves any traffic, and the agent keeps running.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use weir::plan::Phase;

use crate::support::{Bed, DEADLINE, Weights};
use weir_testbed::wait_until;

/// How weir must handle a case.
#[derive(Clone, Debug)]
enum Expect {
    /// Misconfigured, the status message and the Event both containing this fix.
    Misconfigured(&'static str),
    /// A control that names no version in progress: an `IgnoredControl` Event containing
    /// this, the control removed, nothing else done.
    Ignored(&'static str),
    /// An unreadable or tampered status: treated as absent (docs/operations.md): the
    /// agent adopts the stable version again and records a fresh Idle status.
    StatusReplaced,
    /// A tampered status claiming a canary at 100%, with that canary deployed: treated
    /// as absent, so the canary's rollout starts at its first step, never at 100%.
    StatusReplacedRolloutAtFirstStep,
}

/// What differs from a well-formed application.
#[derive(Clone, Debug, Default)]
struct Shape {
    /// Service annotations (weir's and others), on top of `weir.dev/enabled`.
    annotations: Vec<(String, String)>,
    /// Replaces the VirtualService's `spec`.
    vs_spec: Option<Value>,
    /// Replaces the DestinationRule's `spec`.
    dr_spec: Option<Value>,
    /// Extra objects to create (VirtualServices, DestinationRules, ConfigMaps).
    extra: Vec<Value>,
    /// The Service has no selector.
    no_selector: bool,
    /// v1's pod template has no `version` label.
    unlabelled: bool,
    /// A second Deployment also labelled v1.
    duplicate_version: bool,
    /// v2 is deployed too.
    with_v2: bool,
    /// Annotations written once the Service is Idle (controls).
    later: Vec<(String, String)>,
}

struct Case {
    what: String,
    shape: Shape,
    expect: Expect,
}

fn annotation(key: &str, value: &str, expect: &'static str) -> Case {
    Case {
        what: format!("weir.dev/{key}: {:?}", short(value)),
        shape: Shape {
            annotations: vec![(format!("weir.dev/{key}"), value.to_owned())],
            ..Shape::default()
        },
        expect: Expect::Misconfigured(expect),
    }
}

fn shaped(what: &str, shape: Shape, expect: Expect) -> Case {
    Case {
        what: what.to_owned(),
        shape,
        expect,
    }
}

fn short(value: &str) -> String {
    if value.len() > 40 {
        format!("{}… ({} bytes)", &value[..30], value.len())
    } else {
        value.to_owned()
    }
}

/// The Service's own host, as the routes name it (replaced per case).
const HOST: &str = "HOST";

fn routes(http: Value) -> Value {
    json!({"hosts": [HOST], "http": http})
}

fn stable_canary(stable: i64, canary: i64) -> Value {
    json!([
        {"destination": {"host": HOST, "subset": "stable"}, "weight": stable},
        {"destination": {"host": HOST, "subset": "canary"}, "weight": canary}
    ])
}

/// The table. The fix fragments are those of weir's messages: the valid example of the
/// annotation at fault, or the object and field to change.
fn cases() -> Vec<Case> {
    let ex = |key: &str| -> &'static str { weir::spec::keys::example(&format!("weir.dev/{key}")) };
    let mut cases = Vec::new();
    // Annotations: one bad value each, every key of the contract.
    for (key, values) in [
        ("enabled", &["yes", "1", "tru", "enabled"][..]),
        ("virtual-service", &["Bad_Name", "a/b", "", "x..y"]),
        ("route", &["has space", "", "tab\there"]),
        ("destination-rule", &["UPPER", "-dash", "a b"]),
        ("stable-subset", &["Stable", "a_b", "-x"]),
        ("canary-subset", &["Canary", "c.d"]),
        ("version-label", &["bad key!", "/x", "a/b/c", ""]),
        (
            "steps",
            &[
                "", "0", "101", "10,5", "10,,20", "a", "10;20", "10,10", "-5", "1.5",
            ],
        ),
        ("step-interval", &["0s", "250", "-1m", "25h", "1 fortnight"]),
        ("check-interval", &["0", "2d", "soon"]),
        ("max-error-rate", &["1", "0.01", "101%", "-1%", "one%"]),
        (
            "error-codes",
            &["5xx", "6..", "5..|", "(5..)", "5.. | 429", ""],
        ),
        ("max-latency", &["500", "0ms", "2h", "fast"]),
        (
            "latency-quantile",
            &["99", "p99", "99%", "1", "0", "0.99.9"],
        ),
        ("min-requests", &["-1", "ten", "1.5"]),
        ("failure-limit", &["0", "-2", "x"]),
        ("no-data-timeout", &["0s", "never"]),
        ("analysis", &["bayesian", ""]),
        ("tolerance", &["50", "-5%", "2000%"]),
        ("confidence", &["99", "50%", "100%"]),
        ("decision-timeout", &["0", "forever", "48h"]),
        ("metrics", &["Bad Name", "a/b"]),
        ("max-slow-share", &["5", "200%"]),
        ("slow-threshold", &["250", "0ms"]),
    ] {
        for value in values {
            let fix = match key {
                // Half a slow-share gate names its partner.
                "max-slow-share" | "slow-threshold" => "weir.dev/",
                _ => ex(key),
            };
            cases.push(annotation(key, value, fix));
        }
    }
    // Typos of keys: refused, naming the key meant.
    for (typo, meant) in [
        ("weir.dev/step", "weir.dev/steps"),
        ("weir.dev/stepz", "weir.dev/steps"),
        ("Weir.dev/steps", "weir.dev/steps"),
        ("weir.dev/max-error", "weir.dev/max-error-rate"),
        ("weir.dev/paused", "weir.dev/pause"),
        ("weir.dev/status-of-things", "weir.dev/"),
    ] {
        cases.push(shaped(
            &format!("unknown key {typo}"),
            Shape {
                annotations: vec![(typo.into(), "10,25".into())],
                ..Shape::default()
            },
            Expect::Misconfigured(meant),
        ));
    }
    // Values that contradict each other.
    cases.push(shaped(
        "one subset for both",
        Shape {
            annotations: vec![("weir.dev/canary-subset".into(), "stable".into())],
            ..Shape::default()
        },
        Expect::Misconfigured("must differ"),
    ));
    cases.push(shaped(
        "no-data timeout shorter than the check interval",
        Shape {
            annotations: vec![
                ("weir.dev/no-data-timeout".into(), "5s".into()),
                ("weir.dev/check-interval".into(), "30s".into()),
            ],
            ..Shape::default()
        },
        Expect::Misconfigured("at least the check interval"),
    ));
    cases.push(shaped(
        "half a slow-share gate",
        Shape {
            annotations: vec![("weir.dev/max-slow-share".into(), "5%".into())],
            ..Shape::default()
        },
        Expect::Misconfigured("weir.dev/slow-threshold"),
    ));
    // Values of the apiserver's maximum size (all annotations together: 256 KiB).
    let huge = "10,".repeat(80_000);
    cases.push(annotation("steps", &huge, ex("steps")));
    let huge_name = "r".repeat(200_000);
    cases.push(shaped(
        "a route name of 200,000 characters",
        Shape {
            annotations: vec![("weir.dev/route".into(), huge_name)],
            ..Shape::default()
        },
        Expect::Misconfigured(ex("route")),
    ));
    cases.push(shaped(
        "a foreign annotation of 250,000 bytes beside a bad one",
        Shape {
            annotations: vec![
                ("example.com/notes".into(), "x".repeat(250_000)),
                ("weir.dev/steps".into(), "10,5".into()),
            ],
            ..Shape::default()
        },
        Expect::Misconfigured(ex("steps")),
    ));
    // The metrics ConfigMap.
    cases.push(shaped(
        "a metrics ConfigMap that does not exist",
        Shape {
            annotations: vec![("weir.dev/metrics".into(), "absent".into())],
            ..Shape::default()
        },
        Expect::Misconfigured("does not exist"),
    ));
    // Controls with malformed values.
    for (key, value) in [
        ("pause", "maybe"),
        ("promote", ""),
        ("promote", "bad version!"),
        ("abort", "v 2"),
        ("retry", ""),
        ("retry", "-v2"),
    ] {
        cases.push(annotation(key, value, ex(key)));
    }
    // Controls naming versions nobody is releasing: ignored, said so, removed.
    for (key, value) in [("promote", "v99"), ("abort", "v99"), ("retry", "v99")] {
        cases.push(shaped(
            &format!("weir.dev/{key}: {value} with nothing in progress"),
            Shape {
                later: vec![(format!("weir.dev/{key}"), value.into())],
                ..Shape::default()
            },
            Expect::Ignored("v99"),
        ));
    }
    // VirtualService shapes.
    let vs_cases: Vec<(&str, Value, &'static str)> = vec![
        (
            "a tcp route instead of an http one",
            json!({"hosts": [HOST], "tcp": [{"route": [{"destination": {"host": HOST, "subset": "stable"}}]}]}),
            "has an HTTP route to Service",
        ),
        (
            "a tls route instead of an http one",
            json!({"hosts": [HOST], "tls": [{"match": [{"sniHosts": ["a.example.com"]}], "route": [{"destination": {"host": HOST, "subset": "stable"}}]}]}),
            "has an HTTP route to Service",
        ),
        (
            "weights that sum to 110",
            routes(json!([{"name": "primary", "route": stable_canary(90, 20)}])),
            "100",
        ),
        (
            "weights that sum to 90",
            routes(json!([{"name": "primary", "route": stable_canary(80, 10)}])),
            "100",
        ),
        (
            "a delegate VirtualService",
            routes(json!([{"name": "primary", "delegate": {"name": "elsewhere"}}])),
            "has an HTTP route to Service",
        ),
        (
            "two routes to this host, none named by weir.dev/route",
            routes(json!([
                {"name": "a", "match": [{"uri": {"prefix": "/a"}}], "route": [{"destination": {"host": HOST, "subset": "stable"}}]},
                {"name": "b", "route": [{"destination": {"host": HOST, "subset": "stable"}}]}
            ])),
            "weir.dev/route",
        ),
        (
            "two routes with the same name",
            routes(json!([
                {"name": "primary", "match": [{"uri": {"prefix": "/a"}}], "route": [{"destination": {"host": HOST, "subset": "stable"}}]},
                {"name": "primary", "route": [{"destination": {"host": HOST, "subset": "stable"}}]}
            ])),
            "weir.dev/route",
        ),
        (
            "a route that also sends traffic to another host",
            routes(json!([{"name": "primary", "route": [
                {"destination": {"host": HOST, "subset": "stable"}, "weight": 50},
                {"destination": {"host": "legacy.example.com"}, "weight": 50}
            ]}])),
            "legacy.example.com",
        ),
        (
            "a destination on this host without a subset",
            routes(json!([{"name": "primary", "route": [{"destination": {"host": HOST}}]}])),
            "without a subset",
        ),
        (
            "a destination on an unknown subset",
            routes(
                json!([{"name": "primary", "route": [{"destination": {"host": HOST, "subset": "blue"}}]}]),
            ),
            "blue",
        ),
        (
            "three destinations on the route",
            routes(json!([{"name": "primary", "route": [
                {"destination": {"host": HOST, "subset": "stable"}, "weight": 50},
                {"destination": {"host": HOST, "subset": "canary"}, "weight": 25},
                {"destination": {"host": HOST, "subset": "stable"}, "weight": 25}
            ]}])),
            "keep one",
        ),
        (
            "no http routes at all",
            json!({"hosts": [HOST], "http": []}),
            "has an HTTP route to Service",
        ),
    ];
    for (what, spec, fix) in vs_cases {
        cases.push(shaped(
            what,
            Shape {
                vs_spec: Some(spec),
                ..Shape::default()
            },
            Expect::Misconfigured(fix),
        ));
    }
    // DestinationRule shapes.
    let dr_cases: Vec<(&str, Value, &'static str)> = vec![
        (
            "no canary subset",
            json!({"host": HOST, "subsets": [{"name": "stable", "labels": {"version": "v1"}}]}),
            "canary",
        ),
        (
            "no stable subset",
            json!({"host": HOST, "subsets": [{"name": "canary", "labels": {"version": "v1"}}]}),
            "stable",
        ),
        ("no subsets at all", json!({"host": HOST}), "subset"),
        (
            "a DestinationRule for another host",
            json!({"host": "other.example.com", "subsets": [{"name": "stable", "labels": {"version": "v1"}}, {"name": "canary", "labels": {"version": "v1"}}]}),
            "DestinationRule",
        ),
    ];
    for (what, spec, fix) in dr_cases {
        cases.push(shaped(
            what,
            Shape {
                dr_spec: Some(spec),
                ..Shape::default()
            },
            Expect::Misconfigured(fix),
        ));
    }
    cases.push(shaped(
        "weir.dev/virtual-service naming a VirtualService that does not exist",
        Shape {
            annotations: vec![("weir.dev/virtual-service".into(), "missing".into())],
            ..Shape::default()
        },
        Expect::Misconfigured("missing"),
    ));
    cases.push(shaped(
        "weir.dev/route naming a route that does not exist",
        Shape {
            annotations: vec![("weir.dev/route".into(), "nope".into())],
            ..Shape::default()
        },
        Expect::Misconfigured("nope"),
    ));
    cases.push(shaped(
        "weir.dev/destination-rule naming a DestinationRule that does not exist",
        Shape {
            annotations: vec![("weir.dev/destination-rule".into(), "missing".into())],
            ..Shape::default()
        },
        Expect::Misconfigured("missing"),
    ));
    // Services and Deployments.
    cases.push(shaped(
        "a Service without a selector",
        Shape {
            no_selector: true,
            ..Shape::default()
        },
        Expect::Misconfigured("spec.selector"),
    ));
    cases.push(shaped(
        "a Deployment without the version label",
        Shape {
            unlabelled: true,
            ..Shape::default()
        },
        Expect::Misconfigured("version"),
    ));
    cases.push(shaped(
        "two Deployments with the same version",
        Shape {
            duplicate_version: true,
            ..Shape::default()
        },
        Expect::Misconfigured("version=v1"),
    ));
    // A tampered status annotation: treated as absent, never trusted to move traffic.
    for (what, status) in [
        ("a status that is not JSON", "{not json".to_owned()),
        ("a status of the wrong type", "[1, 2, 3]".to_owned()),
        (
            "a status with an unknown phase",
            json!({"phase": "Exploding", "weight": 0, "lastTransitionAt": "2026-01-01T00:00:00Z"}).to_string(),
        ),
        (
            "a status claiming weight 100 at step 9 of 3",
            json!({"phase": "Progressing", "canary": "v1", "canaryTemplate": "x", "step": 9, "steps": [10, 25, 50], "weight": 100, "stepStartedAt": "2026-01-01T00:00:00Z", "lastTransitionAt": "2026-01-01T00:00:00Z"}).to_string(),
        ),
        (
            "a status with a weight of 255",
            json!({"phase": "Progressing", "canary": "v1", "canaryTemplate": "x", "step": 0, "steps": [10], "weight": 255, "lastTransitionAt": "2026-01-01T00:00:00Z"}).to_string(),
        ),
        (
            "a status naming a canary that does not exist",
            json!({"phase": "Progressing", "stable": "v1", "canary": "v9", "canaryTemplate": "x", "step": 0, "steps": [10, 25, 50], "weight": 10, "stepStartedAt": "2026-01-01T00:00:00Z", "lastTransitionAt": "2026-01-01T00:00:00Z"}).to_string(),
        ),
        (
            "a status of 200,000 bytes",
            format!("{{\"phase\": \"Idle\", \"message\": \"{}\"", "m".repeat(200_000)),
        ),
    ] {
        cases.push(shaped(
            what,
            Shape {
                annotations: vec![("weir.dev/status".into(), status)],
                ..Shape::default()
            },
            Expect::StatusReplaced,
        ));
    }
    cases.push(shaped(
        "a status claiming a deployed canary at weight 100",
        Shape {
            annotations: vec![(
                "weir.dev/status".into(),
                json!({"phase": "Progressing", "stable": "v1", "canary": "v2", "canaryTemplate": "x", "step": 0, "steps": [10, 25, 50], "weight": 100, "stepStartedAt": "2026-01-01T00:00:00Z", "lastTransitionAt": "2026-01-01T00:00:00Z"}).to_string(),
            )],
            with_v2: true,
            ..Shape::default()
        },
        Expect::StatusReplacedRolloutAtFirstStep,
    ));
    cases
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_bad_inputs_move_no_traffic_and_say_what_to_fix() -> anyhow::Result<()> {
    let cases = cases();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let bed = Bed::start().await?;
    let names: Vec<String> = (0..cases.len()).map(|i| format!("bad{i}")).collect();
    for (case, name) in cases.iter().zip(&names) {
        create(&bed, name, &case.shape).await?;
    }
    let mut agent = bed.agent(&[])?;

    let mut failures = Vec::new();
    for ((case, name), index) in cases.iter().zip(&names).zip(0..) {
        if let Err(e) = settle(&bed, name, case).await {
            failures.push(format!("#{index} {}: {e:#}", case.what));
        }
    }
    // No case moved any traffic: every route is as created (or, with a canary deployed,
    // at its first step).
    for ((case, name), index) in cases.iter().zip(&names).zip(0..) {
        if case.shape.vs_spec.is_some() {
            continue; // its route is the bad input itself
        }
        let first_step = Weights {
            stable: 90,
            canary: 10,
        };
        match bed.route(name).await {
            Ok((
                Weights {
                    stable: 100,
                    canary: 0,
                },
                _,
            )) => {}
            Ok((w, _)) if case.shape.with_v2 && w == first_step => {}
            Ok((w, _)) => failures.push(format!("#{index} {}: weights moved to {w:?}", case.what)),
            Err(e) => failures.push(format!("#{index} {}: {e:#}", case.what)),
        }
    }
    // The agent is still running and healthy.
    assert!(agent.is_running());
    let healthy = reqwest::get(format!("{}/healthz", agent.admin_url())).await?;
    assert_eq!(healthy.status(), 200);
    assert!(
        !agent.log().contains("panicked"),
        "the agent panicked:\n{}",
        agent.log()
    );
    agent.kill();
    println!(
        "{} bad inputs driven; {} failed",
        cases.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Waits until `name` reaches the case's expected handling.
async fn settle(bed: &Bed, name: &str, case: &Case) -> anyhow::Result<()> {
    match &case.expect {
        Expect::Misconfigured(fix) => {
            let status = bed.wait_phase(name, Phase::Misconfigured).await?;
            anyhow::ensure!(
                status.message.contains(fix),
                "the status message lacks {fix:?}: {:?}",
                status.message
            );
            let note = bed.wait_event(name, "Misconfigured").await?;
            // Events are cut to 1,000 characters; the fix comes first for long ones.
            anyhow::ensure!(
                note.contains(fix) || note.len() >= 1000,
                "the Event lacks {fix:?}: {note:?}"
            );
        }
        Expect::Ignored(version) => {
            bed.wait_phase(name, Phase::Idle).await?;
            for (key, value) in &case.shape.later {
                bed.annotate(name, key, Some(value)).await?;
            }
            let note = bed.wait_event(name, "IgnoredControl").await?;
            anyhow::ensure!(note.contains(version), "{note:?} lacks {version:?}");
            wait_until("the control to be removed", DEADLINE, || async {
                let service = bed.services().get(name).await?;
                let annotations = service.metadata.annotations.unwrap_or_default();
                let left: Vec<&String> = case
                    .shape
                    .later
                    .iter()
                    .map(|(k, _)| k)
                    .filter(|k| annotations.contains_key(*k))
                    .collect();
                anyhow::ensure!(left.is_empty(), "still there: {left:?}");
                Ok(())
            })
            .await?;
        }
        Expect::StatusReplaced => {
            bed.wait_status(name, "a fresh status with v1 stable", |s| {
                s.phase == Phase::Idle && s.stable.as_deref() == Some("v1")
            })
            .await?;
        }
        Expect::StatusReplacedRolloutAtFirstStep => {
            bed.wait_status(name, "v2's rollout at its first step", |s| {
                s.phase == Phase::Progressing && s.step == Some(0) && s.weight == 10
            })
            .await?;
        }
    }
    Ok(())
}

/// Creates a case's Service, v1, VirtualService and DestinationRule.
async fn create(bed: &Bed, name: &str, shape: &Shape) -> anyhow::Result<()> {
    let mut annotations: BTreeMap<String, String> =
        [("weir.dev/enabled".to_owned(), "true".to_owned())].into();
    // A long hold, so that nothing but a bad input could move the case.
    annotations.insert("weir.dev/step-interval".into(), "1h".into());
    for (key, value) in &shape.annotations {
        annotations.insert(key.clone(), value.clone());
    }
    let mut service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}
    });
    if shape.no_selector {
        service["spec"]
            .as_object_mut()
            .map(|s| s.remove("selector"));
    }
    bed.create_dynamic(&service).await?;
    let labels = if shape.unlabelled {
        json!({"app": name})
    } else {
        json!({"app": name, "version": "v1"})
    };
    for deployment in [
        format!("{name}-v1"),
        format!("{name}-v1-twin"),
        format!("{name}-v2"),
    ] {
        if deployment.ends_with("twin") && !shape.duplicate_version {
            continue;
        }
        if deployment.ends_with("v2") && !shape.with_v2 {
            continue;
        }
        let labels = if deployment.ends_with("v2") {
            json!({"app": name, "version": "v2"})
        } else {
            labels.clone()
        };
        bed.create_dynamic(&json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": deployment},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "image": format!("example.test/{deployment}")}]}
                }
            }
        }))
        .await?;
        weir_testbed::mark_deployment_available(&bed.client, &bed.namespace, &deployment).await?;
    }
    let host = |spec: &Value| -> Value {
        serde_json::from_str(&spec.to_string().replace(HOST, name)).unwrap_or(Value::Null)
    };
    let vs_spec = shape.vs_spec.as_ref().map_or_else(
        || routes(json!([{"name": "primary", "route": [{"destination": {"host": HOST, "subset": "stable"}, "weight": 100}]}])),
        Clone::clone,
    );
    bed.create_dynamic(&json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": host(&vs_spec)
    }))
    .await?;
    let dr_spec = shape.dr_spec.as_ref().map_or_else(
        || json!({"host": HOST, "subsets": [{"name": "stable", "labels": {"version": "v1"}}, {"name": "canary", "labels": {"version": "v1"}}]}),
        Clone::clone,
    );
    bed.create_dynamic(&json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name},
        "spec": host(&dr_spec)
    }))
    .await?;
    for extra in &shape.extra {
        bed.create_dynamic(&host(extra)).await?;
    }
    Ok(())
}
