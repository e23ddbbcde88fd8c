//! The gateway's test fixtures: real agents (the test kit's, each with its own Chromium)
//! serving fixture models, and a gateway (the library, in process) over them with static
//! discovery whose agent list the test controls.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use webaccel_gateway::backend::BackendConfig;
use webaccel_gateway::breaker::BreakerConfig;
use webaccel_gateway::discovery::static_list::{self, AgentRef};
use webaccel_gateway::record::Recorder;
use webaccel_gateway::service::{Policy, Preferences};
use webaccel_gateway::waiting::{WaitingByModel, WaitingSink};
use webaccel_gateway::{Running, Settings};
use webaccel_kserve::auth::Tokens;
use webaccel_testkit::fixtures::fixture;
use webaccel_testkit::{AgentProcess, Launch, TOKEN};

/// How long an agent may take to be ready with its standby browser.
pub const READY: Duration = Duration::from_secs(90);

/// An agent (this build's, with its own Chromium) serving the fixture models `models` on
/// wasm; started, not waited for.
pub fn spawn_agent(models: &[&str], extra: &[&str]) -> AgentProcess {
    let models: Vec<String> = models
        .iter()
        .map(|m| {
            format!(
                "{m}=file://{},backend=wasm",
                fixture(&format!("{m}.onnx")).display()
            )
        })
        .collect();
    AgentProcess::spawn_with(Launch::new(&models).quiet().args(extra))
}

/// The static-discovery entry of `agent`, in pool `test`.
pub fn agent_ref(agent: &AgentProcess) -> AgentRef {
    AgentRef {
        url: agent.base.clone(),
        token: Some(TOKEN.into()),
        pool: Some("test".into()),
    }
}

/// Records every waiting count the gateway publishes.
#[derive(Debug, Default)]
pub struct Published(pub Mutex<Vec<WaitingByModel>>);

impl WaitingSink for Published {
    fn publish(&self, waiting: &WaitingByModel) {
        self.0.lock().unwrap().push(waiting.clone());
    }
}

impl Published {
    /// Waits (up to 5 s) until what was published so far satisfies `check`.
    pub async fn until(&self, what: &str, check: impl Fn(&[WaitingByModel]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check(&self.0.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "{what} not published: {:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub struct TestGateway {
    pub running: Running,
    /// The static discovery's agent list: the discovery runs while this is held.
    _agents: watch::Sender<Vec<AgentRef>>,
    stop: CancellationToken,
}

impl TestGateway {
    /// Stops the discovery and the gateway (draining what it holds).
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.running.shutdown().await;
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.running.http)
    }

    pub fn grpc(&self) -> String {
        self.running.grpc.to_string()
    }
}

pub fn settings(f: impl FnOnce(&mut Settings)) -> Settings {
    let mut s = Settings {
        http: "127.0.0.1:0".parse().unwrap(),
        grpc: "127.0.0.1:0".parse().unwrap(),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        policy: Policy {
            request_timeout: Duration::from_secs(20),
            generation_timeout: Duration::from_secs(60),
            max_attempts: 3,
            max_tensor_bytes: 16 << 20,
            backoff_base: Duration::from_millis(25),
            backoff_cap: Duration::from_secs(1),
            hedge: None,
        },
        backends: BackendConfig {
            max_outstanding: 8,
            slow_start: Duration::from_secs(2),
            breaker: BreakerConfig::default(),
            stall_after: Duration::from_secs(1),
        },
        queue_size: 64,
        retry_budget_ratio: 0.2,
        retry_min_per_second: 10,
        tokens: Tokens::default(),
    };
    f(&mut s);
    s
}

pub async fn gateway(agents: Vec<AgentRef>, settings: Settings) -> TestGateway {
    let stop = CancellationToken::new();
    let (tx, rx) = watch::channel(agents);
    let fleet = static_list::start(rx, Duration::from_millis(200), stop.clone());
    let running = webaccel_gateway::start(
        settings,
        fleet,
        Arc::new(Published::default()),
        Recorder::disabled(),
        Preferences::default(),
    )
    .await
    .unwrap();
    TestGateway {
        running,
        _agents: tx,
        stop,
    }
}

/// Waits until the gateway routes `model` (a ready browser holds it).
pub async fn wait_model(gw: &TestGateway, model: &str) {
    let started = Instant::now();
    loop {
        let r = reqwest::get(format!("{}/v2/models/{model}/ready", gw.http())).await;
        if r.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{model} never ready at the gateway"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The mlp fixture's request body (KServe v2 JSON).
pub fn mlp_body() -> Value {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("mlp.json")).unwrap()).unwrap();
    serde_json::json!({"inputs": fixture["inputs"]})
}

pub fn mlp_expected() -> Value {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("mlp.json")).unwrap()).unwrap();
    fixture["outputs"].clone()
}

/// The chart template with the gateway's RBAC rules.
pub const GATEWAY_RBAC: &str = "gateway-rbac.yaml";

/// Every (group, resource, verb) the gateway's (Cluster)Role grants; none names objects.
pub fn gateway_rules_granted() -> std::collections::BTreeSet<(String, String, String)> {
    let rules = webaccel_testkit::rbac::parse(GATEWAY_RBAC);
    assert!(
        rules.iter().all(|r| !r.names_objects),
        "the gateway's rules name no objects"
    );
    webaccel_testkit::rbac::granted(&rules)
}
