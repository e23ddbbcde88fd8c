//! `webaccel-gateway`: see the library for what it does.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = webaccel_gateway::GatewayArgs::parse();
    args.log.init("info");
    match webaccel_gateway::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
