//! An in-process gateway over given agents, as the benchmarks run it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_util::sync::CancellationToken;
use webaccel_gateway::backend::BackendConfig;
use webaccel_gateway::breaker::BreakerConfig;
use webaccel_gateway::discovery::static_list::{self, AgentRef};
use webaccel_gateway::hedge::HedgePolicy;
use webaccel_gateway::service::Policy;

/// Starts a gateway (no ClickHouse, admin port on a free loopback port) in front of
/// `agents` and waits until it routes `model`.
pub async fn start_gateway(
    agents: Vec<AgentRef>,
    stop: &CancellationToken,
    model: &str,
) -> anyhow::Result<webaccel_gateway::Running> {
    start_gateway_hedging(agents, stop, model, None).await
}

/// [`start_gateway`], hedging requests as `hedge` says.
pub async fn start_gateway_hedging(
    agents: Vec<AgentRef>,
    stop: &CancellationToken,
    model: &str,
    hedge: Option<HedgePolicy>,
) -> anyhow::Result<webaccel_gateway::Running> {
    let settings = webaccel_gateway::Settings {
        http: "127.0.0.1:0".parse()?,
        grpc: "127.0.0.1:0".parse()?,
        admin: Some("127.0.0.1:0".parse()?),
        policy: Policy {
            request_timeout: Duration::from_secs(30),
            generation_timeout: Duration::from_secs(60),
            max_attempts: 3,
            max_tensor_bytes: 16 << 20,
            backoff_base: Duration::from_millis(25),
            backoff_cap: Duration::from_secs(1),
            hedge,
        },
        backends: BackendConfig {
            max_outstanding: 16,
            slow_start: Duration::ZERO,
            breaker: BreakerConfig::default(),
            stall_after: Duration::from_secs(1),
        },
        queue_size: 1024,
        retry_budget_ratio: 0.2,
        retry_min_per_second: 10,
        tokens: webaccel_kserve::auth::Tokens::default(),
    };
    let (tx, rx) = tokio::sync::watch::channel(agents);
    let keep = stop.clone();
    tokio::spawn(async move {
        keep.cancelled().await;
        drop(tx);
    });
    let fleet = static_list::start(rx, Duration::from_millis(500), stop.clone());
    let running = webaccel_gateway::start(
        settings,
        fleet,
        Arc::new(webaccel_gateway::waiting::LogOnly),
        webaccel_gateway::record::Recorder::disabled(),
        Default::default(),
    )
    .await?;
    // Wait until it routes.
    let started = Instant::now();
    while reqwest::get(format!("http://{}/v2/models/{model}/ready", running.http))
        .await
        .map_or(true, |r| r.status() != 200)
    {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the gateway never saw the model");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(running)
}
