//! `webaccel`: parses the command line, sets up logging and runs the command
//! ([`webaccel_cli::run`]).

use clap::Parser as _;
use webaccel_cli::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `up` tells what it does (browsers starting, scaling, loading); the other commands
    // only warn.
    let default = if cli.is_up() {
        "info,chromiumoxide=off,tower=warn,hyper=warn,reqwest=warn"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
    match webaccel_cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webaccel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
