//! `weir status [service]`: where each opted-in Service's release is.

use std::process::ExitCode;

use clap::Args;
use jiff::Timestamp;

use super::cluster::ClusterArgs;
use super::view::{self, ServiceView};
use super::{Output, print_structured};

/// Flags of `weir status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One Service [default: every opted-in Service of the namespace]
    pub service: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Leave out the AGE column, for output that does not change while nothing happens.
    #[arg(long)]
    pub no_age: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl StatusArgs {
    pub async fn run(self, outer: &ClusterArgs) -> anyhow::Result<ExitCode> {
        let cluster = self.cluster.or(outer).connect().await?;
        let services = match &self.service {
            Some(name) => vec![cluster.managed_service(name).await?],
            None => cluster.managed_services().await?,
        };
        let views: Vec<ServiceView> = services.iter().map(ServiceView::new).collect();
        let ns = cluster.namespace.as_str();
        match (self.output, &self.service) {
            (Output::Table, _) if views.is_empty() => eprintln!(
                "No Service in namespace {ns} has opted in to weir (annotate one with weir.dev/enabled=true)."
            ),
            (Output::Table, _) => {
                let now = (!self.no_age).then(Timestamp::now);
                print!("{}", render(&views, now));
            }
            (output, Some(_)) => print_structured(&views[0].record(ns), output)?,
            (output, None) => {
                let records: Vec<_> = views.iter().map(|v| v.record(ns)).collect();
                print_structured(&records, output)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The table; for a single Service, followed by the agent's message about it and the
/// settings it recorded.
pub fn render(views: &[ServiceView], now: Option<Timestamp>) -> String {
    let rows: Vec<Vec<String>> = views.iter().map(|v| v.row(now)).collect();
    let mut out = view::table(&view::header(now.is_some()), &rows);
    if let [single] = views {
        let message = match &single.status {
            Ok(Some(status)) if !status.message.is_empty() => Some(status.message.clone()),
            Ok(Some(_)) => None,
            Ok(None) => Some(
                "no status yet: no weir agent has reconciled it (is one running for this namespace?)"
                    .to_owned(),
            ),
            Err(problem) => Some(problem.clone()),
        };
        if let Some(message) = message {
            out.push_str(&format!("\n{}: {message}\n", single.name));
        }
        out.push_str(&settings(single));
    }
    out
}

/// The settings the agent recorded for the Service, or why there are none to show.
pub fn settings(view: &ServiceView) -> String {
    match (view.settings(), view.settings_unknown()) {
        (Some(settings), _) => {
            let mut out = "\nSettings, as the agent resolved them:\n".to_owned();
            for line in view::settings(settings) {
                out.push_str(&format!("  {line}\n"));
            }
            out
        }
        (None, why) => format!("\nSettings: {}.\n", why.unwrap_or_default()),
    }
}
