//! The agent's command line and the `--model` specification it parses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
pub use webaccel_api::agent::ModelSpec;

pub use crate::browser::BrowserKind;
use crate::browser::Family;

/// Runs ONNX models inside one headless browser, Chromium (or Chrome, Edge) or Firefox
/// (onnxruntime-web on WebGPU, WebNN or WebAssembly) and serves them over a WebSocket
/// bridge and the KServe v2 HTTP API.
#[derive(Debug, Clone, Parser)]
#[command(name = "webaccel-agent", version)]
pub struct AgentArgs {
    #[command(flatten)]
    pub log: webaccel_logs::LogArgs,

    /// Address to serve HTTP and WebSocket on.
    #[arg(long, env = "WEBACCEL_LISTEN", default_value = "127.0.0.1:8700")]
    pub listen: SocketAddr,

    /// Address to also serve the KServe v2 gRPC API on (`inference.GRPCInferenceService`,
    /// as `tritonclient.grpc` speaks it), e.g. `0.0.0.0:8701`. Off when not given. The
    /// bearer token guards it as it does HTTP (`authorization: Bearer <token>` metadata),
    /// except ServerLive and ServerReady.
    #[arg(long, env = "WEBACCEL_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<SocketAddr>,

    /// A model to load at start: NAME=URI[,backend=auto|webgpu|webnn|wasm][,sha256=HEX]
    /// [,warmup=true|false][,webnn_device=cpu|gpu|npu][,task=T][,precision=P]
    /// [,max_batch_size=N][,max_queue_delay_us=US]. URI is file://, http:// or https://.
    /// max_batch_size > 1 turns on dynamic batching (waiting requests joined along their
    /// leading dimension, up to N rows, for models whose inputs and outputs all have a
    /// dynamic one); max_queue_delay_us is how long a request may wait for its batch to
    /// fill (default 0: only what is already waiting).
    /// Repeat for several models.
    #[arg(long = "model", value_name = "SPEC")]
    pub models: Vec<ModelSpec>,

    /// File holding the bearer token every endpoint but the health probes requires.
    /// Without it the agent accepts unauthenticated requests (and says so in its log).
    #[arg(long, env = "WEBACCEL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// The browser to run: `chromium`, `chrome` or `edge` (driven over the DevTools
    /// protocol) or `firefox` (driven over WebDriver BiDi).
    #[arg(long, env = "WEBACCEL_BROWSER", default_value_t = BrowserKind::Chromium,
        value_parser = PossibleValuesParser::new(BrowserKind::ALL.map(BrowserKind::as_str)).try_map(|s| s.parse::<BrowserKind>()))]
    pub browser: BrowserKind,

    /// The Chromium-family binary (a name on PATH or a path), for `--browser chromium`,
    /// `chrome` or `edge`. Default: `chromium`, `google-chrome` or `microsoft-edge`.
    #[arg(long, env = "WEBACCEL_CHROMIUM", value_name = "PATH")]
    pub chromium: Option<String>,

    /// The Firefox binary (a name on PATH or a path), for `--browser firefox`.
    /// Default: `firefox-esr`.
    #[arg(long, env = "WEBACCEL_FIREFOX", value_name = "PATH")]
    pub firefox: Option<String>,

    /// The browser binary, whichever the browser (overrides `--chromium` and
    /// `--firefox`).
    #[arg(long, env = "WEBACCEL_BROWSER_BINARY", value_name = "PATH")]
    pub browser_binary: Option<String>,

    /// Extra Chromium switch, without the leading `--` (e.g. `enable-features=Foo`).
    /// Repeatable. Chromium family only.
    #[arg(
        long = "chromium-arg",
        value_name = "SWITCH",
        allow_hyphen_values = true
    )]
    pub chromium_args: Vec<String>,

    /// Extra Firefox preference for the profile's `user.js`, `NAME=VALUE` (e.g.
    /// `dom.webgpu.enabled=false`); `true`, `false` and integers are written as such,
    /// anything else as a string. Repeatable. Firefox only.
    #[arg(long = "firefox-pref", value_name = "NAME=VALUE", value_parser = parse_firefox_pref)]
    pub firefox_prefs: Vec<String>,

    /// Keep Chromium's sandbox on. Off by default because containers and root usually
    /// cannot provide it; the pod's seccomp profile and non-root user confine it instead.
    /// (Firefox always keeps its own sandbox, which lowers itself where the kernel
    /// cannot provide a layer.)
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
    /// the tensor it carries); also the largest gRPC request message.
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

    /// Deadline for one text generation, from its arrival to its last token (a
    /// request's own timeout may be shorter).
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    pub generation_timeout: Duration,

    /// Deadline for fetching and compiling one model (auto measurement included).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub load_timeout: Duration,

    /// Requests of one model sent to each page worker before the one running there has
    /// answered. With 2 the next request's frame travels to the page, and the last
    /// one's answer back, while a run goes on, instead of the page idling for a socket
    /// round trip (about half a millisecond through Chromium, more than a small model's
    /// run) between runs; the page queues them. 1: one at a time.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub page_pipeline: u32,

    /// Zero-filled requests sent through the page after each model loads (at most 2 s of
    /// them), before it counts as loaded and the agent as ready: so the first clients do
    /// not pay for compiling the request path. 0: none (the page still warms the session
    /// unless the model says `warmup: false`).
    #[arg(long, default_value_t = 200)]
    pub warmup_requests: usize,

    /// How often the page is pinged.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// A page that has not answered a ping for this long is declared hung and restarted
    /// (or for five times the slowest single run its models' loads measured, where
    /// that is longer: one run blocks the page's thread).
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

    /// WebAssembly threads per onnxruntime-web instance (0: the CPUs this agent may use,
    /// from its CPU affinity and cgroup quota, shared out among the page workers).
    #[arg(long, default_value_t = 0)]
    pub wasm_threads: u32,

    /// onnxruntime-web instances in the page, each in its own Web Worker with its own
    /// sessions of every model, so that many requests compute at once (1: the page's own
    /// thread, no workers). 0: from the CPUs this agent may use — one per two CPUs from
    /// four CPUs up, else one — so workers × threads fits the CPUs.
    #[arg(long, default_value_t = 0)]
    pub page_workers: u32,

    /// The onnxruntime-web build that runs wasm sessions: `plain` (the WebAssembly-only
    /// build, faster) or `all` (the WebGPU/WebNN build, whose asyncify and JSEP
    /// machinery every kernel call then carries; for comparison).
    #[arg(long, value_enum, default_value_t = WasmBuild::Plain)]
    pub wasm_build: WasmBuild,

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

    /// Drain and exit when the process that started the agent goes away (local mode's
    /// `webaccel up` passes this, so no agent outlives it, even when it is SIGKILLed).
    #[arg(long)]
    pub exit_with_parent: bool,

    /// Enable fault-injection endpoints (`POST /v1/debug/hang`, for tests). Never in
    /// production.
    #[arg(long)]
    pub enable_debug_endpoints: bool,
}

/// The onnxruntime-web build for wasm sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WasmBuild {
    Plain,
    All,
}

impl WasmBuild {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::All => "all",
        }
    }
}

fn parse_firefox_pref(s: &str) -> Result<String, crate::browser::LaunchError> {
    crate::browser::firefox_pref(s).map(|_| s.to_owned())
}

impl AgentArgs {
    /// The browser binary to run: `--browser-binary`, else the family's own option,
    /// else the kind's usual name.
    pub fn browser_binary(&self) -> String {
        let family = match self.browser.family() {
            Family::Chromium => &self.chromium,
            Family::Firefox => &self.firefox,
        };
        self.browser_binary
            .clone()
            .or_else(|| family.clone())
            .unwrap_or_else(|| self.browser.default_binary().to_owned())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(args.grpc_listen, None, "gRPC is off by default");
        assert_eq!(args.hang_timeout, Duration::from_millis(1500));
        assert_eq!(
            args.chromium_args,
            ["enable-features=WebMachineLearningNeuralNetwork"]
        );
    }

    #[test]
    fn the_binary_follows_the_browser_and_the_generic_option_wins() {
        let parse = |args: &[&str]| {
            let mut all = vec!["webaccel-agent"];
            all.extend_from_slice(args);
            AgentArgs::try_parse_from(all).unwrap()
        };
        assert_eq!(parse(&[]).browser, BrowserKind::Chromium);
        assert_eq!(parse(&[]).browser_binary(), "chromium");
        assert_eq!(parse(&["--chromium", "/c"]).browser_binary(), "/c");
        let ff = parse(&["--browser", "firefox", "--chromium", "/c"]);
        assert_eq!(
            ff.browser_binary(),
            "firefox-esr",
            "--chromium is for Chromium"
        );
        let ff = parse(&["--browser", "firefox", "--firefox", "/f"]);
        assert_eq!(ff.browser_binary(), "/f");
        let ff = parse(&["--browser=firefox", "--firefox=/f", "--browser-binary=/b"]);
        assert_eq!(ff.browser_binary(), "/b");
        assert_eq!(
            parse(&["--browser", "chrome"]).browser_binary(),
            "google-chrome"
        );
        assert_eq!(
            parse(&["--browser", "edge", "--chromium", "/opt/edge"]).browser_binary(),
            "/opt/edge"
        );
        let err = AgentArgs::try_parse_from(["webaccel-agent", "--browser", "safari"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("firefox"), "{err}");
        let err = AgentArgs::try_parse_from(["webaccel-agent", "--firefox-pref", "x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("NAME=VALUE"), "{err}");
    }

    #[test]
    fn grpc_listen_parses_an_address() {
        let args =
            AgentArgs::try_parse_from(["webaccel-agent", "--grpc-listen", "0.0.0.0:8701"]).unwrap();
        assert_eq!(args.grpc_listen, Some("0.0.0.0:8701".parse().unwrap()));
        let err = AgentArgs::try_parse_from(["webaccel-agent", "--grpc-listen", "8701"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--grpc-listen"), "{err}");
    }
}
