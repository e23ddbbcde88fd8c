//! The gateway's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

/// One KServe v2 endpoint (HTTP and gRPC) for every model of a browser fleet: routes each
/// request to the best browser holding the model, over persistent bridge connections to
/// the agents, with circuit breakers, retry budgets, load shedding and scale-from-zero
/// waiting.
#[derive(Debug, Clone, Parser)]
#[command(name = "webaccel-gateway", version)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub log: webaccel_logs::LogArgs,

    /// KServe v2 over HTTP (JSON and binary tensors).
    #[arg(long, env = "WEBACCEL_GATEWAY_HTTP", default_value = "0.0.0.0:8000")]
    pub http: SocketAddr,

    /// KServe v2 over gRPC (`inference.GRPCInferenceService`).
    #[arg(long, env = "WEBACCEL_GATEWAY_GRPC", default_value = "0.0.0.0:8001")]
    pub grpc: SocketAddr,

    /// Health probes, `/metrics` and the gateway's view of the fleet (`/v1/endpoints`).
    #[arg(long, env = "WEBACCEL_GATEWAY_ADMIN", default_value = "0.0.0.0:9090")]
    pub admin: SocketAddr,

    /// A static agent: `URL[,token-file=PATH]`. Repeatable. The agent's models and
    /// readiness are read from it (`/v1/repository/models`, `/v1/stats`).
    #[arg(long = "agent", value_name = "URL[,token-file=PATH]")]
    pub agents: Vec<StaticAgent>,

    /// A file listing static agents, one `URL[,token-file=PATH]` per line (`#` comments).
    #[arg(long, env = "WEBACCEL_GATEWAY_AGENTS_FILE")]
    pub agents_file: Option<PathBuf>,

    /// Discover agents from the Kubernetes API: the browser pods of every BrowserPool
    /// (watched, never polled), their models from the pods' labels and the agents.
    #[arg(long)]
    pub kubernetes: bool,

    /// With --kubernetes: only this namespace (default: all).
    #[arg(long, env = "WEBACCEL_NAMESPACE")]
    pub namespace: Option<String>,

    /// How often static agents are asked for their models and state.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub refresh_interval: Duration,

    /// Deadline of one request, queueing and retries included; a client may ask for less
    /// (`webaccel-timeout` header, the protocol's `timeout` parameter, gRPC's deadline).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Deadline of one text generation, its whole stream included; a client may ask
    /// for less, as for a request.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub generation_timeout: Duration,

    /// Requests that may wait per model for a browser; past it the answer is 429.
    #[arg(long, default_value_t = 256)]
    pub queue_size: usize,

    /// Requests the gateway keeps outstanding on one browser at once (the agent queues
    /// them per model); also the most a browser that has just become ready gets at first.
    #[arg(long, default_value_t = 8)]
    pub max_outstanding_per_browser: usize,

    /// A browser that has just become ready takes a growing share over this long, so a
    /// cold browser is not flooded (Envoy's slow start).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub slow_start: Duration,

    /// Attempts per request, the first included (retries go to another browser).
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,

    /// Retries allowed as a share of requests over the last 10 s (on top of a floor of
    /// `--retry-min-per-second`), so retries never multiply load during an outage.
    #[arg(long, default_value_t = 0.2)]
    pub retry_budget_ratio: f32,

    #[arg(long, default_value_t = 10)]
    pub retry_min_per_second: u32,

    /// A browser's circuit opens after this many failures in a row.
    #[arg(long, default_value_t = 5)]
    pub breaker_consecutive_failures: u32,

    /// ... or when at least half of its last `--breaker-window` outcomes (with at least
    /// 20 requests) failed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub breaker_window: Duration,

    /// First cool-down of an open circuit before a half-open probe; it doubles each time
    /// a probe fails, up to 60 s.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub breaker_cooldown: Duration,

    /// A browser with requests outstanding that answers nothing for this long (or five
    /// times its usual latency, if longer) counts as stalled: its circuit opens at once.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,

    /// Hedged requests: a request its browser has not answered within this quantile of
    /// the model's recent round trips (0.95: the slowest one in twenty) is also sent to
    /// a second browser; the first answer wins, the other is cancelled. Each hedge takes
    /// a token from the retry budget. Off unless given; never for generations or a
    /// pipeline's stages.
    #[arg(long)]
    pub hedge_quantile: Option<f64>,

    /// The shortest wait before a hedge, however fast the model's answers.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pub hedge_min_delay: Duration,

    /// Largest tensor accepted from a client, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_tensor_bytes: usize,

    /// File of client bearer tokens, one per line: when given, every endpoint but the
    /// health probes requires one of them.
    #[arg(long, env = "WEBACCEL_GATEWAY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// ClickHouse HTTP interface for one row per request (`http://host:8123`).
    #[arg(long, env = "WEBACCEL_CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,

    #[arg(long, env = "WEBACCEL_CLICKHOUSE_DATABASE", default_value = "webaccel")]
    pub clickhouse_database: String,

    /// Where request rows wait while ClickHouse is unreachable.
    #[arg(long, env = "WEBACCEL_GATEWAY_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,

    /// On SIGTERM, how long to stay up not ready (still serving, answers closing their
    /// connections) before closing the ports: the time endpoints and kube-proxy take to
    /// stop routing here. Then requests in flight finish and the gateway exits.
    #[arg(long, env = "WEBACCEL_GATEWAY_DRAIN_PERIOD", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_period: Duration,

    /// Size of the volume the spool lives on, as a Kubernetes quantity (`1Gi`, `500M`):
    /// the chart passes its emptyDir's `sizeLimit`. The spool stays a tenth below it (room
    /// for the batch being written and other files in /tmp); when full, new rows are
    /// dropped and counted, so a long ClickHouse outage costs rows, never an eviction
    /// of the pod.
    #[arg(long, env = "WEBACCEL_GATEWAY_SPOOL_SIZE_LIMIT", default_value = "1Gi", value_parser = parse_size)]
    pub spool_size_limit: u64,

    /// Prefer the browser and backend ClickHouse history recommends for a model when the
    /// candidates differ (refreshed in the background; routing never waits on it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub use_recommendations: bool,
}

fn parse_size(q: &str) -> Result<u64, String> {
    webaccel_crds::v1alpha1::quantity_bytes(q)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{q:?} is not a size (a Kubernetes quantity: 1Gi, 500Mi, 2G)"))
}

impl GatewayArgs {
    /// The most the request-row spool may hold: a tenth below its volume's size.
    pub fn spool_max_bytes(&self) -> u64 {
        self.spool_size_limit / 10 * 9
    }
}

/// Why the agents given on the command line cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StaticAgentError {
    #[error("agent '{0}': the URL must start with http:// or https://")]
    Url(String),
    #[error("agent '{agent}': unknown option '{option}' (expected token-file=PATH)")]
    UnknownOption { agent: String, option: String },
    #[error("reading the token file {}: {source}", path.display())]
    ReadToken {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },
    /// `--agents-file` could not be read.
    #[error("reading {}: {source}", path.display())]
    ReadList {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An agent given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticAgent {
    /// `http://host:port`, without a trailing slash.
    pub url: String,
    pub token_file: Option<PathBuf>,
}

impl FromStr for StaticAgent {
    type Err = StaticAgentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let url = parts
            .next()
            .unwrap_or_default()
            .trim()
            .trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(StaticAgentError::Url(s.to_owned()));
        }
        let mut token_file = None;
        for part in parts {
            match part.split_once('=') {
                Some(("token-file", path)) if !path.trim().is_empty() => {
                    token_file = Some(PathBuf::from(path.trim()));
                }
                _ => {
                    return Err(StaticAgentError::UnknownOption {
                        agent: s.to_owned(),
                        option: part.to_owned(),
                    });
                }
            }
        }
        Ok(Self {
            url: url.to_owned(),
            token_file,
        })
    }
}

impl StaticAgent {
    /// Reads `--agents-file`: one agent per line, `#` starts a comment.
    pub fn parse_file(text: &str) -> Result<Vec<Self>, StaticAgentError> {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .filter(|l| !l.is_empty())
            .map(str::parse)
            .collect()
    }

    /// The token from `token-file`, if any.
    pub fn token(&self) -> Result<Option<String>, StaticAgentError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path)
            .map_err(|source| StaticAgentError::ReadToken {
                path: path.clone(),
                source,
            })?
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(StaticAgentError::EmptyToken { path: path.clone() });
        }
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_agents_parse_with_and_without_a_token_file() {
        let a: StaticAgent = "http://127.0.0.1:8700/".parse().unwrap();
        assert_eq!(a.url, "http://127.0.0.1:8700");
        assert_eq!(a.token_file, None);
        let a: StaticAgent = "http://h:1,token-file=/t".parse().unwrap();
        assert_eq!(a.token_file, Some(PathBuf::from("/t")));
        assert!(
            "h:1"
                .parse::<StaticAgent>()
                .unwrap_err()
                .to_string()
                .contains("http://")
        );
        assert!(
            "http://h:1,tok=x"
                .parse::<StaticAgent>()
                .unwrap_err()
                .to_string()
                .contains("unknown option")
        );
        let list = StaticAgent::parse_file("# fleet\nhttp://a:1\n\nhttp://b:2 # second\n").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].url, "http://b:2");
    }

    #[test]
    fn command_line_parses() {
        let args = GatewayArgs::try_parse_from([
            "webaccel-gateway",
            "--agent",
            "http://127.0.0.1:8700",
            "--agent",
            "http://127.0.0.1:8701,token-file=/x",
            "--request-timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(args.agents.len(), 2);
        assert_eq!(args.request_timeout, Duration::from_secs(2));
        assert_eq!(args.http.port(), 8000);
        assert_eq!(args.grpc.port(), 8001);
        assert_eq!(args.admin.port(), 9090);
    }
}
