//! The benchmark's agents: the test kit's agent process, started as the benchmark wants
//! it (no token, debug endpoints on, warnings only), and timed from launch to ready.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;
pub use webaccel_testkit::AgentProcess;
use webaccel_testkit::Launch;

/// Starts an agent of `bin` with `models` and `extra` arguments; the agent once ready and
/// how long that took.
pub async fn start(
    bin: &Path,
    models: &[String],
    extra: &[&str],
) -> anyhow::Result<(AgentProcess, Duration)> {
    let mut launch = Launch::new(models)
        .binary(bin)
        .without_token()
        .args(&["--enable-debug-endpoints"])
        .args(extra);
    "warn,chromiumoxide=off".clone_into(&mut launch.rust_log);
    let started = Instant::now();
    let agent = AgentProcess::launch(launch, Duration::from_secs(120)).await;
    Ok((agent, started.elapsed()))
}

/// Loads a model (`POST /v1/repository/models` with `spec`); fails unless it loaded. Returns the
/// agent's description of it.
pub async fn load(agent: &AgentProcess, spec: &Value) -> anyhow::Result<Value> {
    let (_, r) = agent.post("/v1/repository/models", spec).await;
    if r["status"]["state"] != "loaded" {
        bail!("{} did not load: {r}", spec["name"]);
    }
    Ok(r)
}
