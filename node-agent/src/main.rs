//! `webaccel-agent`: see the library for what it does.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The same binary, started by an agent as its browsers' keeper.
    if std::env::args().nth(1).as_deref() == Some(webaccel_agent::keeper::ARG) {
        return webaccel_agent::keeper::run();
    }
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
