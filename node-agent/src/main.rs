//! `webaccel-agent`: see the library for what it does.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = webaccel_agent::AgentArgs::parse();
    args.log.init("info,chromiumoxide=off");
    match webaccel_agent::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
