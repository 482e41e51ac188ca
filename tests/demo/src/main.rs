//! `weir-demo` (`make demo`): a healthy release promoted and a bad one aborted, on the
//! test bed. `--short` (or WEIR_DEMO_SHORT=1) is CI's faster mode; `--keep` (or
//! WEIR_DEMO_KEEP=1) leaves the cluster running until Ctrl-C, to explore with kubectl. The `weir` binary is
//! taken from WEIR_BIN, else from beside this program.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use weir_demo::{Options, run};

#[tokio::main]
async fn main() -> ExitCode {
    match demo().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> anyhow::Result<ExitCode> {
    let short = std::env::args().any(|a| a == "--short")
        || std::env::var("WEIR_DEMO_SHORT").is_ok_and(|v| v == "1");
    let keep = std::env::args().any(|a| a == "--keep")
        || std::env::var("WEIR_DEMO_KEEP").is_ok_and(|v| v == "1");
    let weir = match std::env::var_os("WEIR_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?
            .parent()
            .context("this program has no directory")?
            .join("weir"),
    };
    anyhow::ensure!(
        weir.is_file(),
        "no weir binary at {}: build it with `cargo build -p weir` or set WEIR_BIN",
        weir.display()
    );
    println!("weir demo: a healthy release promoted, then a bad one aborted, on a local test bed.");
    let summary = run(&Options { weir, short, keep }).await?;
    print!("{}", summary.describe());
    let expected = summary.healthy.watch_exit == Some(0) && summary.faulty.watch_exit == Some(1);
    if expected {
        println!("\nEverything the demo started has stopped.");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("\nUnexpected outcome: v2 should be promoted and v3 aborted.");
        Ok(ExitCode::FAILURE)
    }
}
