//! Chromium, Chrome and Edge, driven over the DevTools protocol (chromiumoxide) for
//! lifecycle only: version, open the page, liveness, fault injection. DevTools runs over
//! a pipe (see [`super::pipe`]): the browser opens no port.

use std::process::Command;
use std::sync::Arc;

use chromiumoxide::browser::Browser;
use chromiumoxide::handler::HandlerConfig;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::group::{AbortOnDrop, Group};
use super::pipe::DevtoolsPipes;
use super::{
    BrowserKind, LaunchConfig, LaunchError, LaunchTimeouts, ScriptError, bounded, describe,
};
use crate::reaper::Reaper;

/// Switches every launch gets.
const BASE_ARGS: &[&str] = &[
    "--headless=new",
    // WebGPU is behind this switch on Linux.
    "--enable-unsafe-webgpu",
    // The machine may have no network: keep Chromium from trying to phone home.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-client-side-phishing-detection",
    "--disable-features=TranslateUI",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--password-store=basic",
    "--use-mock-keychain",
    "--mute-audio",
    "--hide-scrollbars",
    // Chromium's own hang monitor would kill a renderer compiling a model; the agent's
    // heartbeat judges hangs instead.
    "--disable-hang-monitor",
    "--disable-breakpad",
    // Many small WebSocket messages must not be throttled as an IPC flood.
    "--disable-ipc-flooding-protection",
    // A hidden page must keep running at full speed.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
];

/// A running Chromium-family browser with the runtime page open.
#[derive(Debug)]
pub struct Chromium {
    kind: BrowserKind,
    group: Group,
    browser: Browser,
    page: chromiumoxide::Page,
    /// Drives the DevTools connection; aborted when the browser is killed.
    handler: JoinHandle<()>,
    /// Relays that connection to the browser's pipes.
    relay: JoinHandle<()>,
    /// Cancelled when the DevTools connection ends (the browser died or closed it).
    devtools_gone: CancellationToken,
    version: String,
    /// A fresh profile per launch, removed when the process is dropped.
    profile: tempfile::TempDir,
}

impl Chromium {
    /// Launches the browser with a fresh profile and opens `url`.
    pub async fn launch(
        cfg: &LaunchConfig,
        url: &str,
        reaper: &Arc<Reaper>,
        timeouts: LaunchTimeouts,
    ) -> Result<Self, LaunchError> {
        let name = cfg.kind.display_name();
        let profile = tempfile::Builder::new()
            .prefix(&format!("webaccel-{}-", cfg.kind))
            .tempdir_in(cfg.profiles.dir())
            .map_err(LaunchError::Profile)?;
        let mut cmd = Command::new(&cfg.executable);
        cmd.args(BASE_ARGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--disk-cache-dir={}", cfg.disk_cache_dir.display()))
            .args(cfg.extra_args.iter().map(|a| format!("--{a}")))
            .arg("about:blank");
        if !cfg.sandbox {
            cmd.args(["--no-sandbox", "--disable-setuid-sandbox"]);
        }
        let pipes = DevtoolsPipes::attach(&mut cmd)?;
        let group = Group::spawn(cmd, profile.path().join("browser.log"), reaper, name)?;
        let fail = |e: LaunchError| group.explain(e);

        let (ws_url, relay) = pipes.serve().await.map_err(fail)?;
        let relay_guard = AbortOnDrop(Some(relay.abort_handle()));
        let config = HandlerConfig {
            request_timeout: timeouts.command,
            ..HandlerConfig::default()
        };
        // Connecting reaches the relay at once; the first answer comes once the browser
        // has started and reads its pipe, so the start is bounded there. A browser that
        // exits meanwhile is reported as such, not as a command that timed out.
        let start = async {
            let (browser, mut handler) = bounded(
                name,
                timeouts.command,
                "connecting to DevTools over its pipe",
                Browser::connect_with_config(ws_url, config),
            )
            .await?;
            // The handler drives the DevTools connection; it must be polled on its own task.
            let devtools_gone = CancellationToken::new();
            let gone = devtools_gone.clone();
            let handler = tokio::spawn(async move {
                while handler.next().await.is_some() {}
                gone.cancel();
            });
            let aborter = AbortOnDrop(Some(handler.abort_handle()));
            let version = bounded(
                name,
                timeouts.endpoint + timeouts.command,
                "asking its version",
                browser.version(),
            )
            .await?
            .product;
            let page = bounded(
                name,
                timeouts.command,
                "opening the runtime page",
                browser.new_page(url),
            )
            .await?;
            // chromiumoxide enables the Network domain on every page it opens. With it on,
            // Chromium reports every WebSocket frame over DevTools, its payload in base64:
            // each request's tensors went to the browser process, through the DevTools
            // pipe and into the agent's JSON parser twice over (a fifth of a request's
            // CPU for a small model, megabytes of JSON for a large tensor). Nothing here
            // reads those events.
            bounded(
                name,
                timeouts.command,
                "turning off DevTools network events",
                page.execute(
                    chromiumoxide::cdp::browser_protocol::network::DisableParams::default(),
                ),
            )
            .await?;
            Ok::<_, LaunchError>((browser, handler, aborter, devtools_gone, version, page))
        };
        let (browser, handler, aborter, devtools_gone, version, page) = tokio::select! {
            started = start => started.map_err(fail)?,
            e = group.exited() => {
                return Err(fail(LaunchError::ExitedDuringStart { browser: name, status: describe(e) }));
            }
        };
        aborter.disarm();
        relay_guard.disarm();
        Ok(Self {
            kind: cfg.kind,
            group,
            browser,
            page,
            handler,
            relay,
            devtools_gone,
            version,
            profile,
        })
    }

    pub fn kind(&self) -> BrowserKind {
        self.kind
    }

    pub(super) fn group(&self) -> &Group {
        &self.group
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Resolves when the DevTools connection has ended (the browser died or closed it).
    pub async fn devtools_closed(&self) {
        self.devtools_gone.cancelled().await;
    }

    /// Asks the browser process for its version over DevTools: an answer proves the
    /// main process is not frozen.
    pub async fn devtools_ping(&self) -> bool {
        self.browser.version().await.is_ok()
    }

    /// Evaluates `expression` in the runtime page.
    pub async fn evaluate(&self, expression: &str) -> Result<(), ScriptError> {
        self.page.evaluate_expression(expression).await?;
        Ok(())
    }

    /// SIGKILLs the whole process group and waits (bounded) until it is reaped.
    pub async fn kill(mut self) {
        self.handler.abort();
        self.relay.abort();
        self.group.kill().await;
        tracing::debug!(profile = %self.profile.path().display(), "profile removed");
    }
}
