//! The bodies each sink is sent: the generic webhook's JSON, and a Slack message.

use serde_json::{Value, json};

use super::message::{Kind, Notification, cut};

/// The generic webhook's body: the [`Notification`] as JSON.
pub fn webhook(notification: &Notification) -> Value {
    serde_json::to_value(notification).expect("a notification serializes to JSON")
}

/// Slack's limit on a section's text; longer messages are cut.
const SECTION_TEXT: usize = 2900;

/// A Slack incoming webhook's body: `text`, the one-line summary (what a phone shows),
/// and `blocks`: the summary, the full message, the versions and weights, and how to
/// find out more. Works with Slack-compatible receivers that read only `text`.
pub fn slack(notification: &Notification) -> Value {
    let n = notification;
    let icon = match n.kind {
        Kind::Started => ":rocket:",
        Kind::Advanced => ":arrow_up:",
        Kind::Paused => ":double_vertical_bar:",
        Kind::Inconclusive => ":grey_question:",
        Kind::Aborted => ":red_circle:",
        Kind::Promoted => ":white_check_mark:",
        Kind::Misconfigured => ":warning:",
    };
    let text = format!("{icon} {}", escape(&n.summary));
    let field = |name: &str, value: &str| json!({"type": "mrkdwn", "text": format!("*{name}*\n{}", escape(value))});
    let none = "none";
    let mut fields = vec![
        field("Stable", n.stable.as_deref().unwrap_or(none)),
        field("Canary", n.canary.as_deref().unwrap_or(none)),
        field(
            "Weights",
            &format!("{} stable / {} canary", n.weights.stable, n.weights.canary),
        ),
    ];
    if let Some(step) = n.step {
        fields.push(field("Step", &format!("{}/{}", step.number, step.of)));
    }
    let mut more = format!("`{}`", escape(&n.explain));
    if let Some(link) = &n.link {
        more.push_str(&format!(" · <{}|dashboard>", escape(link)));
    }
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": text},
    })];
    if !n.message.trim().is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": escape(&cut(&n.message, SECTION_TEXT))},
        }));
    }
    blocks.push(json!({"type": "section", "fields": fields}));
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": more}],
    }));
    json!({"text": text, "blocks": blocks})
}

/// Escapes the three characters Slack's mrkdwn reads as markup (links, mentions).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
