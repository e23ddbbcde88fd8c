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
    cli.log.init(default);
    match webaccel_cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webaccel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
