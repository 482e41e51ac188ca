//! The `weir` command line: the agent and, for people, the commands that steer it.

mod agent;

use clap::{Parser, Subcommand};

pub use agent::AgentArgs;

/// Unattended progressive delivery on Istio.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent for one namespace.
    Agent(AgentArgs),
}

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> anyhow::Result<std::process::ExitCode> {
        match self.command {
            Command::Agent(args) => args.run().await,
        }
    }
}
