//! The `weir` CLI against the test bed: every command, its output (stable outputs
//! compared to the golden files in `golden/`; `WEIR_UPDATE_GOLDEN=1` rewrites them), its
//! exit codes, and that wrong use changes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use weir::plan::{CheckRecord, FailedVersion, Phase, Settings, Status};
use weir::spec::{self, Defaults};
use weir_analysis::{Bound, InconclusiveReason, Measurement, Verdict};

use crate::support::{App, Bed, CliRun, metric_value};

/// Compares `actual` with `golden/<name>`, or rewrites the file when
/// `WEIR_UPDATE_GOLDEN=1`.
fn assert_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/e2e/golden")
        .join(name);
    if std::env::var("WEIR_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (WEIR_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn measurements(requests: f64, error_rate: Option<f64>, latency: Option<f64>) -> Vec<Measurement> {
    vec![
        Measurement {
            metric: "request-count".into(),
            canary: Some(requests),
            stable: Some(1080.0),
            bound: Some(Bound::Min(50.0)),
            evidence: None,
        },
        Measurement {
            metric: "error-rate".into(),
            canary: error_rate,
            stable: Some(0.0),
            bound: Some(Bound::Max(0.01)),
            evidence: None,
        },
        Measurement {
            metric: "latency".into(),
            canary: latency,
            stable: Some(20.0),
            bound: Some(Bound::Max(500.0)),
            evidence: None,
        },
    ]
}

/// The settings an agent with the built-in defaults records for a Service with these
/// `steps`.
fn recorded(steps: &str) -> Option<Settings> {
    let annotations = BTreeMap::from([
        ("weir.dev/enabled".to_owned(), "true".to_owned()),
        ("weir.dev/steps".to_owned(), steps.to_owned()),
    ]);
    let spec = spec::parse("any", &annotations, &Defaults::default()).unwrap();
    Some(Settings::of(&spec))
}

/// The statuses the golden files show: one Service in each phase, with fixed values.
/// `search` was misconfigured from the start, so the agent never resolved its settings.
fn statuses() -> Vec<(&'static str, Option<Status>)> {
    let base = |phase, stable: &str| Status {
        phase,
        stable: Some(stable.into()),
        settings: (phase != Phase::Misconfigured)
            .then(|| recorded("10,25,50"))
            .flatten(),
        ..Status::new(at("2026-01-02T03:04:05Z"))
    };
    vec![
        ("cart", Some(base(Phase::Idle, "v4"))),
        (
            "checkout",
            Some(Status {
                canary: Some("v2".into()),
                canary_template: Some("5d8f".into()),
                step: Some(1),
                // Not the CLI's default steps: the table must show 2/4.
                steps: vec![5, 25, 60, 100],
                weight: 25,
                step_started_at: Some(at("2026-01-02T03:04:00Z")),
                last_check: Some(CheckRecord {
                    at: at("2026-01-02T03:04:04Z"),
                    verdict: Verdict::Pass {
                        measurements: measurements(120.0, Some(0.0), Some(20.0)),
                    },
                }),
                message: "check passed; canary weight 5 → 25 (step 2/4)".into(),
                rollout_started_at: Some(at("2026-01-02T03:03:00Z")),
                settings: recorded("5,25,60,100"),
                ..base(Phase::Progressing, "v1")
            }),
        ),
        ("inventory", None),
        (
            "payments",
            Some(Status {
                canary: Some("v8".into()),
                canary_template: Some("9a1c".into()),
                failed: vec![FailedVersion {
                    version: "v8".into(),
                    template: "9a1c".into(),
                }],
                last_check: Some(CheckRecord {
                    at: at("2026-01-02T03:04:01Z"),
                    verdict: Verdict::Fail {
                        failed: vec!["error-rate".into()],
                        measurements: measurements(118.0, Some(0.2), Some(21.0)),
                        conclusive: false,
                    },
                }),
                message: "aborted v8: 2 failed checks reached the failure limit; canary weight 0".into(),
                ..base(Phase::Aborted, "v7")
            }),
        ),
        (
            "reviews",
            Some(Status {
                canary: Some("v3".into()),
                step: Some(0),
                weight: 10,
                last_check: Some(CheckRecord {
                    at: at("2026-01-02T03:04:02Z"),
                    verdict: Verdict::Inconclusive {
                        reason: InconclusiveReason::TooFewRequests,
                        detail: "canary v3 served 8 requests, fewer than min-requests 50".into(),
                        measurements: measurements(8.0, Some(0.0), None),
                    },
                }),
                message: "paused by weir.dev/pause".into(),
                ..base(Phase::Paused, "v2")
            }),
        ),
        (
            "search",
            Some(Status {
                message: r#"weir.dev/steps: "10,5" is not valid: steps must be strictly ascending: 5 comes after 10; for example weir.dev/steps: "10,25,50""#.into(),
                ..base(Phase::Misconfigured, "v1")
            }),
        ),
    ]
}

/// Creates a Service with `annotations` (no Deployments, no routing: `status` reads only
/// the Service).
async fn service(
    bed: &Bed,
    name: &str,
    annotations: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}
    }))?;
    bed.services()
        .create(&PostParams::default(), &service)
        .await?;
    Ok(())
}

fn ok(run: &CliRun) -> &str {
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    &run.stdout
}

fn refused<'a>(run: &'a CliRun, says: &str) -> &'a str {
    assert_ne!(
        run.code,
        Some(0),
        "expected a refusal; stdout:\n{}",
        run.stdout
    );
    assert!(
        run.stderr.contains(says),
        "stderr does not say {says:?}:\n{}",
        run.stderr
    );
    &run.stderr
}

async fn annotations(bed: &Bed, name: &str) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(bed.services().get(name).await?.annotations().clone())
}

/// `status` of Services in every phase, as a table and as JSON and YAML, and every kind
/// of wrong use: each refused with a message that says what to do, and nothing changed.
#[tokio::test(flavor = "multi_thread")]
async fn status_output_is_stable_and_wrong_use_changes_nothing() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    for (name, status) in statuses() {
        let mut annotations = BTreeMap::from([("weir.dev/enabled".to_owned(), "true".to_owned())]);
        if name == "search" {
            annotations.insert("weir.dev/steps".into(), "10,5".into());
        }
        if name == "reviews" {
            annotations.insert("weir.dev/pause".into(), "true".into());
        }
        if let Some(status) = status {
            annotations.insert("weir.dev/status".into(), serde_json::to_string(&status)?);
        }
        service(&bed, name, annotations).await?;
    }
    service(&bed, "legacy", BTreeMap::new()).await?;

    assert_golden("status.txt", ok(&bed.cli(&["status", "--no-age"]).await?));
    assert_golden(
        "status-checkout.txt",
        ok(&bed.cli(&["status", "checkout", "--no-age"]).await?),
    );
    assert_golden(
        "status-checkout.json",
        ok(&bed.cli(&["status", "checkout", "-o", "json"]).await?),
    );
    assert_golden(
        "status.yaml",
        ok(&bed.cli(&["status", "-o", "yaml"]).await?),
    );
    let all: Value = serde_json::from_str(ok(&bed.cli(&["status", "-o", "json"]).await?))?;
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "cart",
            "checkout",
            "inventory",
            "payments",
            "reviews",
            "search"
        ],
        "legacy did not opt in"
    );
    // With ages: the same table and one more column.
    let aged = bed.cli(&["status"]).await?;
    let header = ok(&aged).lines().next().unwrap_or_default().to_owned();
    assert!(header.ends_with("AGE"), "{header}");
    assert_eq!(ok(&aged).lines().count(), 7);

    // As kubectl's plugin: the same code, flags before the command.
    let plugins = tempfile::tempdir()?;
    let plugin = plugins.path().join("kubectl-weir");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_weir"), &plugin)?;
    let kubeconfig = bed.control_plane.kubeconfig_path();
    let as_plugin = bed
        .cli_as(&plugin, kubeconfig, &["-n", "shop", "status", "--no-age"])
        .await?;
    assert_golden("status.txt", ok(&as_plugin));
    let help = bed
        .cli_as(&plugin, kubeconfig, &["status", "--help"])
        .await?;
    assert!(
        ok(&help).contains("Usage: kubectl weir status"),
        "{}",
        help.stdout
    );

    // Wrong use.
    let before: Vec<_> = futures::future::try_join_all(
        ["cart", "checkout", "payments", "legacy"].map(|name| annotations(&bed, name)),
    )
    .await?;
    refused(
        &bed.cli(&["status", "nosuch"]).await?,
        "Service nosuch not found in namespace shop",
    );
    refused(
        &bed.cli(&["promote", "legacy"]).await?,
        "has not opted in to weir; opt in with: kubectl annotate service legacy -n shop weir.dev/enabled=true",
    );
    refused(
        &bed.cli(&["promote", "cart"]).await?,
        "nothing to promote: no rollout is in progress (Idle, stable v4)",
    );
    refused(
        &bed.cli(&["abort", "payments"]).await?,
        "nothing to abort: v8 was already aborted",
    );
    refused(
        &bed.cli(&["resume", "checkout"]).await?,
        "checkout is not paused",
    );
    refused(&bed.cli(&["promote", "inventory"]).await?, "no status yet");
    refused(&bed.cli(&["retry", "cart"]).await?, "nothing to retry");
    refused(
        &bed.cli(&["watch", "nosuch"]).await?,
        "Service nosuch not found",
    );
    assert_eq!(
        bed.cli(&["watch", "nosuch"]).await?.code,
        Some(3),
        "watch's errors exit 3"
    );
    let after: Vec<_> = futures::future::try_join_all(
        ["cart", "checkout", "payments", "legacy"].map(|name| annotations(&bed, name)),
    )
    .await?;
    assert_eq!(before, after, "a refused command changed nothing");

    // A cluster that cannot be reached, a context that does not exist, a namespace the
    // user may not read.
    let nowhere = tempfile::NamedTempFile::new()?;
    let port = weir_testbed::free_port()?;
    std::fs::write(
        nowhere.path(),
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: gone, cluster: {{server: 'https://127.0.0.1:{port}', insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: me, user: {{token: t}}}}]\ncontexts: [{{name: gone, context: {{cluster: gone, user: me}}}}]\ncurrent-context: gone\n"
        ),
    )?;
    let program = Path::new(env!("CARGO_BIN_EXE_weir"));
    refused(
        &bed.cli_as(program, nowhere.path(), &["status"]).await?,
        &format!("cannot reach the cluster at https://127.0.0.1:{port}"),
    );
    refused(
        &bed.cli(&["status", "--context", "nosuch"]).await?,
        "cannot load the kubeconfig",
    );

    let accounts: Api<ServiceAccount> = Api::namespaced(bed.client.clone(), &bed.namespace);
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "nobody"}}))?;
    accounts.create(&PostParams::default(), &account).await?;
    let nobody = bed
        .control_plane
        .kubeconfig_for_service_account(&bed.namespace, "nobody")
        .await?;
    refused(
        &bed.cli_as(program, &nobody, &["status"]).await?,
        "you may not list services in namespace shop (403 Forbidden",
    );
    refused(
        &bed.cli_as(program, &nobody, &["promote", "checkout"])
            .await?,
        "you may not get services in namespace shop (403 Forbidden",
    );
    Ok(())
}

/// The control commands write the annotation naming the current version, the agent acts
/// on it, and `watch` exits 2 on timeout, 0 on promotion and 1 on abort.
#[tokio::test(flavor = "multi_thread")]
async fn controls_steer_a_rollout_and_watch_reports_how_it_ended() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    // Long steps, so that only the controls move these rollouts.
    bed.deploy_app(&App::held("checkout")).await?;
    let _agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    bed.release_to_first_step("checkout", "v2").await?;

    let pause = bed.cli(&["pause", "checkout"]).await?;
    assert!(
        ok(&pause).contains("weir.dev/pause=true written on Service checkout."),
        "{}",
        pause.stdout
    );
    assert!(
        pause
            .stdout
            .contains("pauses the rollout of v2 at canary weight 10% (step 1/3)"),
        "{}",
        pause.stdout
    );
    bed.wait_phase("checkout", Phase::Paused).await?;
    refused(
        &bed.cli(&["pause", "checkout"]).await?,
        "checkout is already paused",
    );
    let explained = bed.cli(&["explain", "checkout"]).await?;
    assert!(
        ok(&explained).contains("Paused by weir.dev/pause"),
        "{}",
        explained.stdout
    );
    assert!(
        explained
            .stdout
            .contains("Routing: VirtualService checkout, route primary"),
        "{}",
        explained.stdout
    );
    let resume = bed.cli(&["resume", "checkout"]).await?;
    assert!(
        ok(&resume).contains("weir.dev/pause removed from Service checkout."),
        "{}",
        resume.stdout
    );
    bed.wait_phase("checkout", Phase::Progressing).await?;
    assert!(
        !annotations(&bed, "checkout")
            .await?
            .contains_key("weir.dev/pause")
    );

    let waited = bed.cli(&["watch", "checkout", "--timeout", "3s"]).await?;
    assert_eq!(
        waited.code,
        Some(2),
        "a rollout held for an hour outlasts the timeout: {waited:?}"
    );
    assert!(
        waited.stdout.contains("gave up after 3s (--timeout)"),
        "{}",
        waited.stdout
    );
    assert!(
        waited
            .stdout
            .contains("checkout v2: Progressing, step 1/3, canary weight 10%"),
        "{}",
        waited.stdout
    );

    let promote = bed.cli(&["promote", "checkout"]).await?;
    assert!(
        ok(&promote).contains("weir.dev/promote=v2 written on Service checkout."),
        "{}",
        promote.stdout
    );
    assert!(
        promote.stdout.contains("The agent promotes v2 now"),
        "{}",
        promote.stdout
    );
    // The promotion may be over before `watch` first reads: naming the version makes that
    // an answer rather than a wait for the next rollout.
    let promoted = bed
        .cli(&["watch", "checkout", "--version", "v2", "--timeout", "2m"])
        .await?;
    assert_eq!(promoted.code, Some(0), "{promoted:?}");
    assert!(
        promoted.stdout.contains("checkout: v2 promoted"),
        "{}",
        promoted.stdout
    );
    assert_eq!(
        bed.status("checkout").await?.unwrap().stable.as_deref(),
        Some("v2")
    );
    refused(
        &bed.cli(&["promote", "checkout"]).await?,
        "nothing to promote",
    );

    // Abort a rollout, then retry it.
    bed.delete_deployment("checkout-v1").await?;
    bed.deploy_version("checkout", "v3", 0.0).await?;
    bed.wait_status("checkout", "v3 at 10%", |s| {
        s.phase == Phase::Progressing && s.canary.as_deref() == Some("v3")
    })
    .await?;
    let abort = bed.cli(&["abort", "checkout"]).await?;
    assert!(
        ok(&abort).contains("weir.dev/abort=v3 written on Service checkout."),
        "{}",
        abort.stdout
    );
    let aborted = bed
        .cli(&["watch", "checkout", "--version", "v3", "--timeout", "2m"])
        .await?;
    assert_eq!(aborted.code, Some(1), "{aborted:?}");
    assert!(
        aborted.stdout.contains("checkout: v3 aborted"),
        "{}",
        aborted.stdout
    );
    assert_eq!(bed.route("checkout").await?.0.canary, 0);
    let retry = bed.cli(&["retry", "checkout"]).await?;
    assert!(
        ok(&retry).contains("weir.dev/retry=v3 written on Service checkout."),
        "{}",
        retry.stdout
    );
    bed.wait_event("checkout", "Retrying").await?;
    bed.wait_status("checkout", "v3 released again", |s| {
        s.phase == Phase::Progressing && s.canary.as_deref() == Some("v3")
    })
    .await?;

    // A release that fails its gates: `watch` exits 1 by itself.
    bed.annotate("checkout", "weir.dev/step-interval", Some("4s"))
        .await?;
    bed.deploy_version("checkout", "v4", 0.2).await?;
    let failed = bed
        .cli(&["watch", "checkout", "--version", "v4", "--timeout", "2m"])
        .await?;
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert!(
        failed.stdout.contains("checkout: v4 aborted"),
        "{}",
        failed.stdout
    );
    Ok(())
}

/// `check` evaluates the gates now (exit 0 pass, 1 fail, 2 inconclusive), and `explain`
/// of a misconfigured Service shows the agent's reason and the fix.
#[tokio::test(flavor = "multi_thread")]
async fn check_and_explain_tell_what_the_agent_sees() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.deploy_app(&App::held("checkout")).await?;
    // The agent aborts payments at its first check; `check` then names the version and
    // a window, as one checks a version by hand.
    bed.deploy_app(&App::held("payments")).await?;
    bed.deploy_app(&App::held("quiet")).await?;
    bed.annotate("quiet", "sim.weir.dev/rps", Some("0")).await?;
    bed.deploy_app(&App::new("search").with("steps", "10,5"))
        .await?;
    let _agent = bed.agent(&[])?;
    for name in ["checkout", "payments", "quiet"] {
        bed.wait_phase(name, Phase::Idle).await?;
    }
    bed.deploy_version("checkout", "v2", 0.0).await?;
    bed.deploy_version("payments", "v2", 0.2).await?;
    bed.deploy_version("quiet", "v2", 0.0).await?;
    for name in ["checkout", "quiet"] {
        bed.wait_status(name, "v2 progressing", |s| s.phase == Phase::Progressing)
            .await?;
    }

    let prometheus = bed.prometheus.url();
    let check = |service: &'static str, extra: &'static [&'static str]| {
        let prometheus = prometheus.clone();
        let bed = &bed;
        async move {
            let mut args = vec![
                "check",
                service,
                "--prometheus-url",
                &prometheus,
                "--scrape-interval",
                "1s",
            ];
            args.extend_from_slice(extra);
            bed.cli(&args).await
        }
    };
    // The canary needs a few scrapes of traffic before the gates can judge it.
    let pass = weir_testbed::wait_until(
        "checkout's gates to pass",
        Duration::from_secs(120),
        || async {
            let run = check("checkout", &[]).await?;
            anyhow::ensure!(
                run.code == Some(0),
                "exit {:?}: {}{}",
                run.code,
                run.stdout,
                run.stderr
            );
            Ok(run)
        },
    )
    .await?;
    assert!(
        pass.stdout
            .contains("Service checkout: canary v2 against stable v1"),
        "{}",
        pass.stdout
    );
    // The sequential judge's evidence, per gate, against what the step needs.
    for column in ["METRIC", "CANARY", "EVIDENCE", "errors-vs-stable", "for "] {
        assert!(pass.stdout.contains(column), "{column}: {}", pass.stdout);
    }
    assert!(pass.stdout.ends_with("Verdict: pass\n"), "{}", pass.stdout);
    let json = check("checkout", &["-o", "json"]).await?;
    let report: Value = serde_json::from_str(&json.stdout).with_context(|| json.stdout.clone())?;
    assert_eq!(report["verdict"]["verdict"], "pass", "{report}");
    assert_eq!(report["canary"], "v2");
    assert_eq!(
        report["queries"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );

    let fail = weir_testbed::wait_until(
        "payments' gates to fail",
        Duration::from_secs(120),
        || async {
            let run = check("payments", &["--canary", "v2", "--window", "30s"]).await?;
            anyhow::ensure!(
                run.code == Some(1),
                "exit {:?}: {}{}",
                run.code,
                run.stdout,
                run.stderr
            );
            Ok(run)
        },
    )
    .await?;
    assert!(
        fail.stdout.contains("Verdict: fail (error-rate"),
        "{}",
        fail.stdout
    );
    let inconclusive = check("quiet", &[]).await?;
    assert_eq!(inconclusive.code, Some(2), "{inconclusive:?}");
    assert!(
        inconclusive
            .stdout
            .contains("Verdict: inconclusive (no-data)"),
        "{}",
        inconclusive.stdout
    );
    let misconfigured = bed.wait_phase("search", Phase::Misconfigured).await?;
    // Misconfigured from the start: the agent never resolved its settings.
    let invalid = check("search", &[]).await?;
    assert_eq!(invalid.code, Some(3), "{invalid:?}");
    assert!(
        invalid.stderr.contains(
            "search's settings are none recorded in the status (misconfigured since the agent first saw it, or written by an earlier agent)"
        ),
        "{}",
        invalid.stderr
    );

    let explained = bed.cli(&["explain", "search"]).await?;
    let text = ok(&explained);
    assert!(
        text.contains("Service search (namespace shop): Misconfigured"),
        "{text}"
    );
    assert!(
        text.contains(&format!("The agent says: {}", misconfigured.message)),
        "{text}"
    );
    assert!(
        text.contains(r#"weir.dev/steps: "10,5" is not valid"#),
        "{text}"
    );
    assert!(
        text.contains(r#"for example weir.dev/steps: "10,25,50""#),
        "{text}"
    );
    assert!(
        text.contains("kubectl annotate service search -n shop --overwrite"),
        "{text}"
    );

    let progressing = bed.cli(&["explain", "checkout"]).await?;
    let text = ok(&progressing);
    assert!(
        text.contains("Releasing v2 (stable v1): step 1/3 at canary weight 10%"),
        "{text}"
    );
    assert!(text.contains("holds at least 1h"), "{text}");
    assert!(
        text.contains("Failed checks in this rollout: 0 of"),
        "{text}"
    );
    // Once checked, each gate's evidence: what it has, what the step needs.
    weir_testbed::wait_until(
        "explain to show the last check's evidence",
        Duration::from_secs(120),
        || async {
            let text = ok(&bed.cli(&["explain", "checkout"]).await?).to_owned();
            for part in [
                "Evidence (e-values",
                "error-rate: canary",
                "errors-vs-stable: canary",
                "of the 400 that aborts",
            ] {
                anyhow::ensure!(text.contains(part), "no {part:?} in:\n{text}");
            }
            Ok(())
        },
    )
    .await?;
    Ok(())
}

/// The CLI takes no --default-* flags: it shows the settings the agent recorded, here
/// an agent's whose flags are not the built-in defaults, and says so plainly while
/// there is no record rather than guess.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_shows_the_agents_settings_without_its_flags() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.deploy_app(&App::new("checkout").with("min-requests", "20"))
        .await?;

    // Not yet observed by an agent.
    assert_golden(
        "status-unobserved.txt",
        ok(&bed.cli(&["status", "checkout", "--no-age"]).await?),
    );
    assert_golden(
        "explain-unobserved.txt",
        ok(&bed.cli(&["explain", "checkout"]).await?),
    );
    let prometheus = bed.prometheus.url();
    let check = bed
        .cli(&[
            "check",
            "checkout",
            "--prometheus-url",
            &prometheus,
            "--canary",
            "v1",
            "--stable",
            "v1",
            "--window",
            "1m",
        ])
        .await?;
    assert_eq!(check.code, Some(3), "{check:?}");
    assert!(
        check.stderr.contains(
            "not yet observed by the agent: settings shown once the agent records them; its gates depend on the agent's defaults, which the CLI does not know. The annotations set only: weir.dev/enabled=true, weir.dev/min-requests=20"
        ),
        "{}",
        check.stderr
    );
    refused(
        &bed.cli(&["status", "--default-max-error-rate", "2%"])
            .await?,
        "unexpected argument '--default-max-error-rate'",
    );

    let _agent = bed.agent(&[
        "--default-max-error-rate",
        "2%",
        "--default-step-interval",
        "2m",
    ])?;
    bed.wait_status("checkout", "the agent's settings recorded", |s| {
        s.phase == Phase::Idle && s.settings.is_some()
    })
    .await?;
    let status = ok(&bed.cli(&["status", "checkout", "--no-age"]).await?).to_owned();
    assert_golden("status-settings.txt", &status);
    let explained = ok(&bed.cli(&["explain", "checkout"]).await?).to_owned();
    assert_golden("explain-settings.txt", &explained);
    for text in [&status, &explained] {
        assert!(text.contains("errors ≤ 2% (codes 5..)"), "{text}");
        assert!(text.contains("each held at least 2m"), "{text}");
        // The Service's own annotation, over the agent's default.
        assert!(text.contains("at least 20 requests a step"), "{text}");
    }
    let json: Value =
        serde_json::from_str(ok(&bed.cli(&["status", "checkout", "-o", "json"]).await?))?;
    assert_eq!(json["status"]["settings"]["stepInterval"], "2m", "{json}");
    assert_eq!(
        json["status"]["settings"]["gates"]["max_error_rate"], 0.02,
        "{json}"
    );

    // An annotation changed since the agent's record wins in `explain`, as it will at
    // the agent's next reconcile.
    bed.annotate("checkout", "weir.dev/step-interval", Some("30s"))
        .await?;
    let explained = bed.cli(&["explain", "checkout"]).await?;
    assert!(
        ok(&explained).contains("each held at least 30s"),
        "{}",
        explained.stdout
    );
    Ok(())
}

/// `/metrics` shows the phase, weight and step of each Service during a rollout, counts
/// checks by verdict and rollouts by outcome with their duration; `/readyz` is ready.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_a_rollout() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.deploy_app(&App::held("checkout")).await?;
    let agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;
    // Readiness is reported by its own task, which may trail the first reconcile.
    weir_testbed::wait_until(
        "/readyz to report the caches synced",
        crate::support::DEADLINE,
        || async {
            let ready = reqwest::get(format!("{}/readyz", agent.admin_url())).await?;
            anyhow::ensure!(ready.status() == 200, "/readyz says {}", ready.status());
            Ok(())
        },
    )
    .await?;
    let healthy = reqwest::get(format!("{}/healthz", agent.admin_url())).await?;
    assert_eq!(healthy.status(), 200);

    let series = |name: &str, labels: &str| format!("{name}{{{labels}}}");
    let phase = |p: &str| {
        series(
            "weir_rollout_phase",
            &format!(r#"service="checkout",phase="{p}""#),
        )
    };
    let weight = series("weir_canary_weight", r#"service="checkout""#);
    let step = series("weir_rollout_step", r#"service="checkout""#);
    let text = agent.metrics().await?;
    assert_eq!(metric_value(&text, &phase("idle")), Some(1.0), "{text}");
    assert_eq!(
        metric_value(&text, &phase("progressing")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(metric_value(&text, &weight), Some(0.0), "{text}");

    bed.release_to_first_step("checkout", "v2").await?;
    let passing = weir_testbed::wait_until(
        "a passing check to be counted",
        crate::support::DEADLINE,
        || async {
            let text = agent.metrics().await?;
            let passes = metric_value(
                &text,
                r#"weir_checks_total{service="checkout",verdict="pass"}"#,
            );
            anyhow::ensure!(passes.is_some_and(|n| n >= 1.0), "passes {passes:?}");
            Ok(text)
        },
    )
    .await?;
    assert_eq!(
        metric_value(&passing, &phase("progressing")),
        Some(1.0),
        "{passing}"
    );
    assert_eq!(
        metric_value(&passing, &phase("idle")),
        Some(0.0),
        "{passing}"
    );
    assert_eq!(metric_value(&passing, &weight), Some(10.0), "{passing}");
    assert_eq!(metric_value(&passing, &step), Some(1.0), "{passing}");
    let queries = metric_value(&passing, "weir_prometheus_query_duration_seconds_count");
    assert!(queries.is_some_and(|n| n >= 1.0), "{passing}");

    bed.annotate("checkout", "weir.dev/promote", Some("v2"))
        .await?;
    bed.wait_status("checkout", "v2 promoted", |s| {
        s.phase == Phase::Idle && s.stable.as_deref() == Some("v2")
    })
    .await?;
    let done = weir_testbed::wait_until(
        "the promotion to be counted",
        crate::support::DEADLINE,
        || async {
            let text = agent.metrics().await?;
            let promoted = metric_value(
                &text,
                r#"weir_rollouts_total{service="checkout",outcome="promoted"}"#,
            );
            anyhow::ensure!(promoted == Some(1.0), "promoted {promoted:?}");
            Ok(text)
        },
    )
    .await?;
    assert_eq!(
        metric_value(
            &done,
            r#"weir_rollout_duration_seconds_count{outcome="promoted"}"#
        ),
        Some(1.0),
        "{done}"
    );
    assert_eq!(metric_value(&done, &phase("idle")), Some(1.0), "{done}");
    assert_eq!(metric_value(&done, &weight), Some(0.0), "{done}");
    assert_eq!(metric_value(&done, &step), Some(0.0), "{done}");
    assert_eq!(
        metric_value(
            &done,
            r#"weir_rollouts_total{service="checkout",outcome="aborted"}"#
        ),
        None
    );

    // An abort: the outcome and the phase.
    bed.delete_deployment("checkout-v1").await?;
    bed.deploy_version("checkout", "v3", 0.2).await?;
    bed.annotate("checkout", "weir.dev/step-interval", Some("4s"))
        .await?;
    bed.wait_phase("checkout", Phase::Aborted).await?;
    let aborted = weir_testbed::wait_until(
        "the abort to be counted",
        crate::support::DEADLINE,
        || async {
            let text = agent.metrics().await?;
            let aborted = metric_value(
                &text,
                r#"weir_rollouts_total{service="checkout",outcome="aborted"}"#,
            );
            anyhow::ensure!(aborted == Some(1.0), "aborted {aborted:?}");
            Ok(text)
        },
    )
    .await?;
    assert_eq!(
        metric_value(&aborted, &phase("aborted")),
        Some(1.0),
        "{aborted}"
    );
    let fails = metric_value(
        &aborted,
        r#"weir_checks_total{service="checkout",verdict="fail"}"#,
    );
    assert!(fails.is_some_and(|n| n >= 1.0), "{aborted}");

    // A deleted Service's series (and the agent's memory of it) are released.
    bed.services()
        .delete("checkout", &Default::default())
        .await?;
    weir_testbed::wait_until(
        "the deleted Service's series to be released",
        crate::support::DEADLINE,
        || async {
            let text = agent.metrics().await?;
            anyhow::ensure!(
                !text.contains(r#"service="checkout""#),
                "series left: {}",
                text.lines()
                    .filter(|l| l.contains(r#"service="checkout""#))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            Ok(())
        },
    )
    .await?;
    Ok(())
}
