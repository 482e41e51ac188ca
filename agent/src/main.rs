use std::process::ExitCode;

use weir::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::from_env().run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
