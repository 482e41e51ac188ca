//! The `weir` command line: the agent and, for people, the commands that steer it.
//!
//! The same binary is a kubectl plugin: installed (or linked) as `kubectl-weir` on the
//! PATH, `kubectl weir status` runs `weir status`. Every command that talks to the
//! cluster reads the kubeconfig as kubectl does and takes `--kubeconfig`, `--context`
//! and `-n/--namespace`, before or after the command's name.

mod agent;
mod check;
mod cluster;
mod control;
mod dashboard;
mod explain;
mod prometheus;
mod status;
mod view;
mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Serialize;

pub use agent::{AgentArgs, DefaultArgs};
pub use check::CheckArgs;
pub use cluster::{ClusterArgs, Error, error_chain};
pub use control::{Control, ControlArgs};
pub use dashboard::DashboardArgs;
pub use explain::ExplainArgs;
pub use prometheus::PrometheusArgs;
pub use status::StatusArgs;
pub use watch::WatchArgs;

/// The executable name under which kubectl finds weir as its plugin `weir`.
pub const KUBECTL_PLUGIN: &str = "kubectl-weir";

/// Exit status of `watch` and `check` when they could not find out (their 1 and 2 have
/// meanings of their own).
const COULD_NOT_TELL: u8 = 3;

/// Unattended progressive delivery on Istio.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
pub struct Cli {
    /// The cluster flags, also accepted before the command (`kubectl weir -n shop status`).
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent for one namespace. (This and `check` are boxed: their Prometheus
    /// flags outweigh the other commands'.)
    Agent(Box<AgentArgs>),
    /// Show where each opted-in Service's release is.
    Status(StatusArgs),
    /// Follow a rollout until it ends: exit 0 promoted, 1 aborted, 2 timed out, 3 error.
    Watch(WatchArgs),
    /// Promote the canary now, skipping the steps and checks left.
    Promote(ControlArgs),
    /// Abort the rollout: the canary's weight goes to 0 at once.
    Abort(ControlArgs),
    /// Hold the rollout at its current weight: no checks, no steps.
    Pause(ControlArgs),
    /// Continue a paused rollout.
    Resume(ControlArgs),
    /// Release the last aborted version again.
    Retry(ControlArgs),
    /// Say why the agent does what it does, or what is misconfigured and how to fix it.
    Explain(ExplainArgs),
    /// Evaluate the gates now: exit 0 pass, 1 fail, 2 inconclusive, 3 error.
    Check(Box<CheckArgs>),
    /// Serve a live web page of the namespace's rollouts, with buttons for the
    /// controls, on http://127.0.0.1:3100 (loopback only unless --address says otherwise).
    Dashboard(DashboardArgs),
}

/// How a command prints what it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML.
fn print_structured(value: &impl Serialize, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        // Through JSON, so that enums read as maps (`bound: {max: 0.01}`), not YAML tags.
        Output::Yaml => print!("{}", serde_yaml::to_string(&serde_json::to_value(value)?)?),
        Output::Table => unreachable!("tables are printed by each command"),
    }
    Ok(())
}

/// A duration flag, in the annotations' syntax (`90s`, `5m`).
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::spec::parse_duration(text).map_err(|e| e.to_string())
}

/// Whether this process was started as kubectl's plugin (`kubectl weir …`).
pub fn invoked_as_kubectl_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|name| name == KUBECTL_PLUGIN)
}

impl Cli {
    /// Parses the process's arguments; help and usage say `kubectl weir` when run as
    /// kubectl's plugin.
    pub fn from_env() -> Cli {
        let mut command = Cli::command();
        if invoked_as_kubectl_plugin() {
            command = command.bin_name("kubectl weir");
        }
        let matches = command.get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// Runs the chosen command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let outer = &self.cluster;
        match self.command {
            Command::Agent(args) => {
                anyhow::ensure!(
                    !outer.any(),
                    "`weir agent` reads its cluster from KUBECONFIG or the Pod, and takes its namespace as `weir agent --namespace`"
                );
                (*args).run().await
            }
            Command::Status(args) => args.run(outer).await,
            Command::Watch(args) => could_not_tell(args.run(outer).await),
            Command::Promote(args) => args.run(Control::Promote, outer).await,
            Command::Abort(args) => args.run(Control::Abort, outer).await,
            Command::Pause(args) => args.run(Control::Pause, outer).await,
            Command::Resume(args) => args.run(Control::Resume, outer).await,
            Command::Retry(args) => args.run(Control::Retry, outer).await,
            Command::Explain(args) => args.run(outer).await,
            Command::Check(args) => could_not_tell((*args).run(outer).await),
            Command::Dashboard(args) => args.run(outer).await,
        }
    }
}

/// An error of a command whose exit status 1 and 2 are answers: reported, exit 3.
fn could_not_tell(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    result.or_else(|e| {
        eprintln!("error: {e:#}");
        Ok(ExitCode::from(COULD_NOT_TELL))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cluster_flags_go_before_or_after_the_command() {
        let before =
            Cli::try_parse_from(["weir", "-n", "shop", "--context", "prod", "status"]).unwrap();
        assert_eq!(before.cluster.namespace.as_deref(), Some("shop"));
        assert_eq!(before.cluster.context.as_deref(), Some("prod"));
        let after = Cli::try_parse_from(["weir", "status", "checkout", "-n", "shop", "-o", "json"])
            .unwrap();
        let Command::Status(args) = after.command else {
            panic!("parsed as {:?}", after.command);
        };
        assert_eq!(args.cluster.namespace.as_deref(), Some("shop"));
        assert_eq!(args.service.as_deref(), Some("checkout"));
        assert_eq!(args.output, Output::Json);
    }

    #[test]
    fn the_agent_keeps_its_own_namespace_flag() {
        let cli = Cli::try_parse_from([
            "weir",
            "agent",
            "--namespace",
            "shop",
            "--prometheus-url",
            "http://prometheus:9090",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Agent(ref a) if a.namespace == "shop"));
        assert!(!cli.cluster.any());
    }

    #[test]
    fn watch_and_check_parse_their_flags() {
        let cli = Cli::try_parse_from([
            "weir",
            "watch",
            "checkout",
            "--timeout",
            "90s",
            "--version",
            "v2",
        ])
        .unwrap();
        let Command::Watch(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.timeout, std::time::Duration::from_secs(90));
        assert_eq!(args.version.as_deref(), Some("v2"));
        let cli = Cli::try_parse_from([
            "weir",
            "check",
            "checkout",
            "--prometheus-url",
            "http://prometheus:9090",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::Check(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.output, Output::Json);
        assert!(
            Cli::try_parse_from(["weir", "promote"]).is_err(),
            "promote needs a Service"
        );
    }

    #[test]
    fn the_dashboard_takes_several_namespaces_and_listens_on_loopback_by_default() {
        let cli =
            Cli::try_parse_from(["weir", "dashboard", "-n", "shop", "-n", "payments"]).unwrap();
        let Command::Dashboard(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.namespaces, ["shop", "payments"]);
        assert!(args.address.is_loopback());
        assert_eq!(args.port, 3100);
        let cli = Cli::try_parse_from(["weir", "dashboard", "--address", "0.0.0.0", "--port", "0"])
            .unwrap();
        let Command::Dashboard(args) = cli.command else {
            panic!()
        };
        assert!(args.address.is_unspecified());
        assert_eq!(args.port, 0);
    }

    #[test]
    fn only_the_agent_takes_the_default_flags() {
        // The other commands read the settings the agent recorded in the status.
        for command in [
            &["status"][..],
            &["watch", "checkout"],
            &["explain", "checkout"],
            &["promote", "checkout"],
            &["check", "checkout", "--prometheus-url", "http://p:9090"],
        ] {
            let args = [&["weir"][..], command, &["--default-step-interval", "2m"]].concat();
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?} parsed");
        }
        let agent = Cli::try_parse_from([
            "weir",
            "agent",
            "--namespace",
            "shop",
            "--prometheus-url",
            "http://p:9090",
            "--default-step-interval",
            "2m",
        ]);
        assert!(agent.is_ok(), "{agent:?}");
    }
}
