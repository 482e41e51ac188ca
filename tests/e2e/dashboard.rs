//! `weir dashboard` in a real headless browser (issue 13): a rollout on the test bed as
//! a person sees it, the weights bar moving 10 → 25 → 50; the Pause, Promote and Resume
//! buttons, each after a confirmation that names the version; an abort shown with the
//! agent's reason; a user who may only read sees the API's refusal of a write; and a
//! misconfiguration shown with its fix.
//! Screenshots are kept in `target/e2e-artifacts/dashboard/`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use serde_json::json;
use weir::plan::{Outcome, Phase};

use crate::support::browser::{Browser, Dashboard};
use crate::support::{App, Bed};

const CARD: &str = "[data-testid=service][data-name=checkout]";

fn on_card(part: &str) -> String {
    format!("{CARD} [data-testid={part}]")
}

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-artifacts/dashboard")
}

/// Clicks the card's `action` button and confirms the question, which must name
/// `version`.
async fn confirm(browser: &Browser, action: &str, question: &str) -> anyhow::Result<()> {
    browser
        .click(&on_card(&format!("control-{action}")))
        .await?;
    let asked = browser
        .wait_text("[data-testid=confirm-question]", "the confirmation", |t| {
            !t.is_empty()
        })
        .await?;
    ensure!(
        asked == question,
        "the page asked {asked:?}, not {question:?}"
    );
    browser.click("[data-testid=confirm-ok]").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_seen_and_steered_in_a_browser() -> anyhow::Result<()> {
    let began = Instant::now();
    let bed = Bed::start().await?;
    // Steps long enough for the page to be seen at each weight, and for the test to
    // pause the rollout at 50 before the agent promotes it.
    bed.deploy_app(
        &App::new("checkout")
            .with("steps", "10,25,50")
            .with("step-interval", "10s"),
    )
    .await?;
    let _agent = bed.agent(&[])?;
    bed.wait_phase("checkout", Phase::Idle).await?;

    let dashboard = Dashboard::start(&bed, bed.control_plane.kubeconfig_path()).await?;
    let browser = Browser::start(bed.logs.path().join("chromedriver.log")).await?;
    browser.goto(&dashboard.url).await?;
    browser
        .wait_text(&on_card("phase"), "checkout Idle on the page", |t| {
            t == "Idle"
        })
        .await?;
    browser
        .wait_text(&on_card("stable-weight"), "stable at 100%", |t| {
            t == "stable 100%"
        })
        .await?;

    // A healthy v2: the bar moves through every step, without a reload.
    bed.deploy_version("checkout", "v2", 0.0).await?;
    for weight in [10, 25, 50] {
        let shown = format!("canary {weight}%");
        browser
            .wait_text(
                &on_card("canary-weight"),
                &format!("the bar at {shown}"),
                |t| t == shown,
            )
            .await?;
        if weight == 25 {
            let step = browser.text(&on_card("step")).await?.unwrap_or_default();
            ensure!(step.starts_with("step 2/3"), "the step shows {step:?}");
            ensure!(
                browser.text(&on_card("canary")).await?.as_deref() == Some("v2"),
                "the canary is named"
            );
            browser
                .wait_text("[data-testid=charts]", "the checks charted", |t| {
                    t.contains("error-rate")
                })
                .await?;
            browser
                .screenshot(&artifacts().join("progressing.png"))
                .await?;
        }
    }

    // Held at 50 by the Pause button, then promoted by the Promote button.
    confirm(&browser, "pause", "Pause the rollout of v2 of checkout?").await?;
    let paused = bed.wait_phase("checkout", Phase::Paused).await?;
    ensure!(paused.weight == 50, "paused at {}%, not 50%", paused.weight);
    browser
        .wait_text(&on_card("phase"), "Paused on the page", |t| t == "Paused")
        .await?;
    confirm(&browser, "promote", "Promote v2 of checkout to 100%?").await?;
    browser
        .wait_text(&on_card("ended"), "the promotion on the page", |t| {
            t.contains("promoted v2")
        })
        .await?;
    browser
        .wait_text(&on_card("stable-weight"), "v2 at 100%", |t| {
            t == "stable 100%"
        })
        .await?;
    ensure!(browser.text(&on_card("stable")).await?.as_deref() == Some("v2"));
    let promoted = bed.status("checkout").await?.context("a status")?;
    ensure!(
        promoted
            .ended
            .as_ref()
            .map(|e| (e.outcome, e.version.as_str()))
            == Some((Outcome::Promoted, "v2")),
        "the status records {:?}",
        promoted.ended
    );
    bed.assert_promoted("checkout", "v2").await?;
    browser
        .screenshot(&artifacts().join("promoted.png"))
        .await?;

    // The pause is still set for the next rollout: lifted by the Resume button.
    confirm(
        &browser,
        "resume",
        "Let checkout's next rollout start without pausing?",
    )
    .await?;
    weir_testbed::wait_until("the pause lifted", crate::support::DEADLINE, || async {
        let service = bed.services().get("checkout").await?;
        match service.annotations().get("weir.dev/pause") {
            None => Ok(()),
            Some(v) => Err(anyhow::anyhow!("weir.dev/pause={v}")),
        }
    })
    .await?;

    // A bad v3: the agent aborts it, and the page says why, in the agent's words.
    bed.deploy_version("checkout", "v3", 0.5).await?;
    let aborted = bed.wait_phase("checkout", Phase::Aborted).await?;
    let reason = aborted.ended.context("an aborted rollout's end")?.reason;
    let shown = browser
        .wait_text(&on_card("ended"), "the abort on the page", |t| {
            t.contains("aborted v3")
        })
        .await?;
    ensure!(
        shown.contains(&reason),
        "the page shows {shown:?}, not the reason {reason:?}"
    );
    browser
        .wait_text(&on_card("phase"), "Aborted on the page", |t| t == "Aborted")
        .await?;
    browser
        .wait_text(&on_card("canary-weight"), "the canary at 0%", |t| {
            t == "canary 0%"
        })
        .await?;
    browser.screenshot(&artifacts().join("aborted.png")).await?;

    // A write without the dashboard's header is refused (a page of another site cannot
    // send one).
    let forged = reqwest::Client::new()
        .post(format!(
            "{}/api/namespaces/shop/services/checkout/retry",
            dashboard.url
        ))
        .body(r#"{"version":"v3"}"#)
        .send()
        .await?;
    ensure!(
        forged.status() == 403,
        "a write without X-Weir answered {}",
        forged.status()
    );

    // Someone who may only read: the page shows the Service, and the API's refusal of
    // the Retry button's write.
    let reader = read_only_kubeconfig(&bed).await?;
    let read_only = Dashboard::start(&bed, &reader).await?;
    browser.goto(&read_only.url).await?;
    browser
        .wait_text(&on_card("phase"), "Aborted for the reader", |t| {
            t == "Aborted"
        })
        .await?;
    confirm(&browser, "retry", "Retry v3 of checkout?").await?;
    let refusal = browser
        .wait_text("[data-testid=notice]", "the refusal on the page", |t| {
            t.contains("refused")
        })
        .await?;
    ensure!(
        refusal.contains("(403)")
            && refusal.contains("you may not patch services in namespace shop")
            && refusal.contains("system:serviceaccount:shop:reader"),
        "the page shows {refusal:?}"
    );
    browser.screenshot(&artifacts().join("refused.png")).await?;
    let after = bed.status("checkout").await?.context("a status")?;
    ensure!(
        after.phase == Phase::Aborted,
        "the refused retry changed nothing"
    );

    // A misconfiguration, with the agent's account and `weir explain`'s fix.
    browser.goto(&dashboard.url).await?;
    bed.annotate("checkout", "weir.dev/steps", Some("50,25"))
        .await?;
    browser
        .wait_text(&on_card("phase"), "Misconfigured on the page", |t| {
            t == "Misconfigured"
        })
        .await?;
    let problem = browser
        .text(&on_card("misconfiguration"))
        .await?
        .unwrap_or_default();
    let message = bed.status("checkout").await?.context("a status")?.message;
    ensure!(
        problem.contains(&message) && problem.contains("weir explain checkout -n shop"),
        "the page shows {problem:?} for the agent's {message:?}"
    );
    browser
        .wait_text("[data-testid=explanation]", "weir explain's account", |t| {
            t.contains("weir.dev/steps")
                && t.contains("Fix with: kubectl annotate service checkout")
        })
        .await?;
    browser
        .screenshot(&artifacts().join("misconfigured.png"))
        .await?;

    eprintln!("dashboard test took {:?}", began.elapsed());
    Ok(())
}

/// A kubeconfig for a ServiceAccount that may get, list and watch Services and Events
/// in the namespace, and nothing else.
async fn read_only_kubeconfig(bed: &Bed) -> anyhow::Result<PathBuf> {
    let ns = &bed.namespace;
    let post = PostParams::default();
    let accounts: Api<ServiceAccount> = Api::namespaced(bed.client.clone(), ns);
    accounts
        .create(
            &post,
            &serde_json::from_value(json!({"metadata": {"name": "reader"}}))?,
        )
        .await?;
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "weir-dashboard-reader"},
        "rules": [
            {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["get", "list", "watch"]}
        ]
    }))?;
    Api::<Role>::namespaced(bed.client.clone(), ns)
        .create(&post, &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "weir-dashboard-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "weir-dashboard-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]
    }))?;
    Api::<RoleBinding>::namespaced(bed.client.clone(), ns)
        .create(&post, &binding)
        .await?;
    bed.control_plane
        .kubeconfig_for_service_account(ns, "reader")
        .await
}
