//! The agent's command line and the `--model` specification it parses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use webaccel_api::{Backend, WebNnDevice};

/// Runs ONNX models inside one headless Chromium (onnxruntime-web on WebGPU, WebNN or
/// WebAssembly) and serves them over a WebSocket bridge and the KServe v2 HTTP API.
#[derive(Debug, Clone, Parser)]
#[command(name = "webaccel-agent", version)]
pub struct AgentArgs {
    /// Address to serve HTTP and WebSocket on.
    #[arg(long, env = "WEBACCEL_LISTEN", default_value = "127.0.0.1:8700")]
    pub listen: SocketAddr,

    /// A model to load at start: NAME=URI[,backend=auto|webgpu|webnn|wasm][,sha256=HEX]
    /// [,warmup=true|false][,webnn_device=cpu|gpu|npu][,task=T][,precision=P]. URI is
    /// file://, http:// or https://.
    /// Repeat for several models.
    #[arg(long = "model", value_name = "SPEC")]
    pub models: Vec<ModelSpec>,

    /// File holding the bearer token every endpoint but the health probes requires.
    /// Without it the agent accepts unauthenticated requests (and says so in its log).
    #[arg(long, env = "WEBACCEL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Chromium binary (a name on PATH or a path).
    #[arg(long, env = "WEBACCEL_CHROMIUM", default_value = "chromium")]
    pub chromium: String,

    /// Extra Chromium switch, without the leading `--` (e.g. `enable-features=Foo`).
    /// Repeatable.
    #[arg(
        long = "chromium-arg",
        value_name = "SWITCH",
        allow_hyphen_values = true
    )]
    pub chromium_args: Vec<String>,

    /// Keep Chromium's sandbox on. Off by default because containers and root usually
    /// cannot provide it; the pod's seccomp profile and non-root user confine it instead.
    #[arg(long)]
    pub chromium_sandbox: bool,

    /// Folder with the in-page runtime (`src/`) and its npm packages (`node_modules/`).
    /// Defaults to the `web` folder this agent was built from.
    #[arg(long, env = "WEBACCEL_WEB_ROOT")]
    pub web_root: Option<PathBuf>,

    /// Folder where fetched model files are cached by sha256.
    #[arg(long, env = "WEBACCEL_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Largest tensor accepted, in bytes (larger ones get 413).
    #[arg(long, default_value_t = 16 << 20)]
    pub max_tensor_bytes: usize,

    /// Largest HTTP request body accepted, in bytes (JSON is several times larger than
    /// the tensor it carries).
    #[arg(long, default_value_t = 128 << 20)]
    pub max_body_bytes: usize,

    /// Requests accepted at once (running plus queued); more get 429.
    #[arg(long, default_value_t = 64)]
    pub max_in_flight: usize,

    /// Requests one bridge connection may have outstanding; past it the agent stops
    /// reading from that connection (backpressure) until one completes.
    #[arg(long, default_value_t = 32)]
    pub bridge_window: usize,

    /// Deadline for one inference request, queueing included.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Deadline for fetching and compiling one model (auto measurement included).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub load_timeout: Duration,

    /// How often the page is pinged.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// A page that has not answered a ping for this long is declared hung and restarted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub hang_timeout: Duration,

    /// The same while the page is compiling a model, which may block it for seconds.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub load_hang_timeout: Duration,

    /// How long a freshly launched browser's page may take to start its runtime and say
    /// hello before the launch counts as failed.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub page_start_timeout: Duration,

    /// Watchdog: when the browser supervisor has been in one step this long past that
    /// step's own bound, `/healthz` fails with the step's name, so the kubelet restarts
    /// the container. Every step is bounded, so this is the last resort.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub supervisor_stall_timeout: Duration,

    /// How long SIGTERM waits for requests in flight before exiting anyway.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Keep a second browser started (runtime loaded, no models) to switch to when the
    /// serving one crashes or hangs: recovery then takes a model load instead of a
    /// browser cold start, at the cost of one idle browser's memory.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub standby_browser: bool,

    /// WebAssembly threads per session (0: onnxruntime-web's default, half the cores).
    #[arg(long, default_value_t = 0)]
    pub wasm_threads: u32,

    /// ClickHouse HTTP interface for the agent's metrics (`http://host:8123`, with
    /// `user:password@` if needed). Without it nothing is recorded.
    #[arg(long, env = "WEBACCEL_CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,

    /// ClickHouse database for the metrics (created if missing).
    #[arg(long, env = "WEBACCEL_CLICKHOUSE_DATABASE", default_value = "webaccel")]
    pub clickhouse_database: String,

    /// The pool this agent belongs to, recorded with every row.
    #[arg(long, env = "WEBACCEL_POOL", default_value = "local")]
    pub pool: String,

    /// This agent's pod name, recorded with every row (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Enable fault-injection endpoints (`POST /v1/debug/hang`, for tests). Never in
    /// production.
    #[arg(long)]
    pub enable_debug_endpoints: bool,
}

impl AgentArgs {
    /// The runtime folder: the flag, or the `web` folder of this source tree.
    pub fn web_root(&self) -> PathBuf {
        self.web_root
            .clone()
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/web")))
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("webaccel-model-cache"))
    }
}

/// One model to serve: where it comes from and how to run it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub uri: String,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub backend: Backend,
    #[serde(default)]
    pub webnn_device: WebNnDevice,
    #[serde(default = "default_true")]
    pub warmup: bool,
    /// What the model does (text-embedding, vision, ...), recorded with its metrics.
    #[serde(default)]
    pub task: String,
    /// Numeric precision (fp32, fp16, int8, ...), recorded with its metrics.
    #[serde(default)]
    pub precision: String,
}

fn default_true() -> bool {
    true
}

impl ModelSpec {
    /// Checks what can be checked without fetching: name, URI scheme, digest form.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 128
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(format!(
                "model name '{}' must be 1-128 characters of letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if !["file://", "http://", "https://"]
            .iter()
            .any(|s| self.uri.starts_with(s))
        {
            return Err(format!(
                "model URI '{}' must start with file://, http:// or https://",
                self.uri
            ));
        }
        if let Some(sha) = &self.sha256
            && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(format!("sha256 '{sha}' must be 64 hexadecimal digits"));
        }
        if self.warmup || self.backend != Backend::Auto {
            Ok(())
        } else {
            Err("backend=auto measures the backends by running the model, so warmup cannot be false".into())
        }
    }
}

impl FromStr for ModelSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not NAME=URI[,key=value...]"))?;
        let mut parts = rest.split(',');
        let uri = parts.next().unwrap_or_default();
        let mut spec = ModelSpec {
            name: name.trim().to_owned(),
            uri: uri.trim().to_owned(),
            sha256: None,
            backend: Backend::Auto,
            webnn_device: WebNnDevice::Cpu,
            warmup: true,
            task: String::new(),
            precision: String::new(),
        };
        for kv in parts {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("option '{kv}' in '{s}' is not key=value"))?;
            match k.trim() {
                "backend" => spec.backend = v.trim().parse()?,
                "sha256" => spec.sha256 = Some(v.trim().to_ascii_lowercase()),
                "webnn_device" => spec.webnn_device = v.trim().parse()?,
                "task" => spec.task = v.trim().to_owned(),
                "precision" => spec.precision = v.trim().to_owned(),
                "warmup" => {
                    spec.warmup = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("warmup must be true or false, got '{v}'"))?
                }
                other => {
                    return Err(format!(
                        "unknown model option '{other}' (expected backend, sha256, warmup, webnn_device, task or precision)"
                    ));
                }
            }
        }
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_spec() {
        let spec: ModelSpec = format!(
            "mlp=file:///m/mlp.onnx,backend=wasm,sha256={},warmup=false",
            "AB".repeat(32)
        )
        .parse()
        .unwrap();
        assert_eq!(spec.name, "mlp");
        assert_eq!(spec.uri, "file:///m/mlp.onnx");
        assert_eq!(spec.backend, Backend::Wasm);
        assert_eq!(spec.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert!(!spec.warmup);
    }

    #[test]
    fn defaults_to_auto_with_warmup() {
        let spec: ModelSpec = "m=https://example.invalid/m.onnx".parse().unwrap();
        assert_eq!((spec.backend, spec.warmup), (Backend::Auto, true));
    }

    #[test]
    fn refuses_bad_specs_with_reasons() {
        let cases = [
            ("nouri", "is not NAME=URI"),
            ("m=ftp://x/m.onnx", "must start with file://"),
            ("m=file:///m.onnx,backend=cuda", "unknown backend 'cuda'"),
            ("m=file:///m.onnx,sha256=xyz", "64 hexadecimal digits"),
            ("m=file:///m.onnx,color=red", "unknown model option 'color'"),
            ("bad name=file:///m.onnx", "model name 'bad name'"),
            ("m=file:///m.onnx,warmup=false", "cannot be false"),
        ];
        for (input, want) in cases {
            let err = input.parse::<ModelSpec>().unwrap_err();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn command_line_parses() {
        let args = AgentArgs::try_parse_from([
            "webaccel-agent",
            "--listen",
            "127.0.0.1:0",
            "--model",
            "a=file:///a.onnx,backend=wasm",
            "--model",
            "b=file:///b.onnx",
            "--hang-timeout",
            "1500ms",
            "--chromium-arg",
            "enable-features=WebMachineLearningNeuralNetwork",
        ])
        .unwrap();
        assert_eq!(args.models.len(), 2);
        assert_eq!(args.hang_timeout, Duration::from_millis(1500));
        assert_eq!(
            args.chromium_args,
            ["enable-features=WebMachineLearningNeuralNetwork"]
        );
    }
}
