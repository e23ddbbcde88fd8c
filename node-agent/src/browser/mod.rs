//! One browser process tree, whichever the browser: launched by the agent in a process
//! group of its own, driven over its control protocol for lifecycle only (open the
//! page, version, liveness, fault injection), and killed as a whole. Tensors never
//! travel over the control protocol: the page connects back to the agent itself.
//!
//! Two families sit behind one interface ([`BrowserProcess`]), so the supervisor does
//! not care which browser it watches:
//!
//! - [`chromium`]: Chromium, Chrome and Edge over the DevTools protocol (chromiumoxide).
//! - [`firefox`]: Firefox over WebDriver BiDi ([`bidi`], a thin typed client); Firefox
//!   no longer implements the DevTools protocol.
//!
//! Every step is bounded by a timeout and every failure ends in SIGKILL of the whole
//! group: a browser that is dead, frozen (SIGSTOP) or half-started can never make the
//! agent wait. Exits are collected by the [`Reaper`].

pub mod bidi;
mod chromium;
mod error;
mod firefox;
mod group;
mod pipe;
pub mod profiles;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::reaper::{Exit, Reaper};
pub use chromium::Chromium;
pub use error::{LaunchError, ScriptError};
pub use firefox::Firefox;
pub use firefox::parse_pref as firefox_pref;

pub use webaccel_api::BrowserKind;
pub use webaccel_api::browser::Family;

/// The options that name `kind`'s binary, for error messages.
fn binary_options(kind: BrowserKind) -> &'static str {
    match kind.family() {
        Family::Chromium => "--chromium, --browser-binary or WEBACCEL_CHROMIUM",
        Family::Firefox => "--firefox, --browser-binary or WEBACCEL_FIREFOX",
    }
}

/// How to launch the browser.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub kind: BrowserKind,
    pub executable: PathBuf,
    /// Chromium family: extra switches, without the leading `--`.
    pub extra_args: Vec<String>,
    /// Firefox: extra preferences, `NAME=VALUE`, written to the profile's `user.js`.
    pub firefox_prefs: Vec<String>,
    pub sandbox: bool,
    /// Chromium's HTTP cache, kept for the agent's lifetime while each launch gets a
    /// fresh profile: onnxruntime-web's wasm and its compiled code survive a restart.
    /// (Firefox keeps its cache in its profile: two Firefox processes, the active and
    /// the standby, must not share one.)
    pub disk_cache_dir: PathBuf,
    /// Where each launch's fresh profile goes (see [`profiles`]).
    pub profiles: Arc<profiles::Profiles>,
}

/// Bounds on each launch step. A step that takes longer fails the launch (and kills the
/// browser), so the supervisor always moves on.
#[derive(Debug, Clone, Copy)]
pub struct LaunchTimeouts {
    /// From spawning the process to its control endpoint (DevTools, WebDriver BiDi)
    /// being announced.
    pub endpoint: Duration,
    /// Connecting to the control endpoint and each command (version, open the page).
    pub command: Duration,
}

impl Default for LaunchTimeouts {
    fn default() -> Self {
        Self {
            endpoint: Duration::from_secs(15),
            command: Duration::from_secs(10),
        }
    }
}

/// The busy loop injected for fault tests. The expression returns at once; the loop
/// starts on the next task and never yields.
const HANG_SCRIPT: &str = "setTimeout(() => { for (;;) {} }, 0); true";

/// A running browser with the runtime page open. (Chromium's handle, chromiumoxide's
/// browser and page, is several times the size of Firefox's: boxed.)
#[derive(Debug)]
pub enum BrowserProcess {
    Chromium(Box<Chromium>),
    Firefox(Firefox),
}

impl BrowserProcess {
    /// Launches the configured browser with a fresh profile and opens `url`.
    pub async fn launch(
        cfg: &LaunchConfig,
        url: &str,
        reaper: &Arc<Reaper>,
        timeouts: LaunchTimeouts,
    ) -> Result<Self, LaunchError> {
        match cfg.kind.family() {
            Family::Chromium => Ok(Self::Chromium(Box::new(
                Chromium::launch(cfg, url, reaper, timeouts).await?,
            ))),
            Family::Firefox => Ok(Self::Firefox(
                Firefox::launch(cfg, url, reaper, timeouts).await?,
            )),
        }
    }

    pub fn kind(&self) -> BrowserKind {
        match self {
            Self::Chromium(b) => b.kind(),
            Self::Firefox(_) => BrowserKind::Firefox,
        }
    }

    /// The main process id (also the process group id).
    pub fn pid(&self) -> u32 {
        match self {
            Self::Chromium(b) => b.group().pid(),
            Self::Firefox(b) => b.group().pid(),
        }
    }

    /// The product and version, as the browser reports it (`HeadlessChrome/…`,
    /// `Firefox/…`).
    pub fn version(&self) -> &str {
        match self {
            Self::Chromium(b) => b.version(),
            Self::Firefox(b) => b.version(),
        }
    }

    /// Resolves when the control connection has ended (the browser died or closed it).
    pub async fn control_closed(&self) {
        match self {
            Self::Chromium(b) => b.devtools_closed().await,
            Self::Firefox(b) => b.bidi_closed().await,
        }
    }

    /// Asks the browser's main process something over the control protocol: an answer
    /// proves it is not frozen, which the page's heartbeat alone cannot (the page's
    /// socket runs through a network process of its own). May stay pending for a
    /// frozen browser; the caller times it.
    pub async fn control_ping(&self) -> bool {
        match self {
            Self::Chromium(b) => b.devtools_ping().await,
            Self::Firefox(b) => b.bidi_ping().await,
        }
    }

    /// Resolves when the main process has exited.
    pub async fn exited(&self) -> Option<Exit> {
        match self {
            Self::Chromium(b) => b.group().exited().await,
            Self::Firefox(b) => b.group().exited().await,
        }
    }

    /// Starts a busy loop in the page, for fault-injection tests.
    pub async fn inject_hang(&self) -> Result<(), ScriptError> {
        match self {
            Self::Chromium(b) => b.evaluate(HANG_SCRIPT).await,
            Self::Firefox(b) => b.evaluate(HANG_SCRIPT).await,
        }
    }

    /// SIGKILLs the whole process group and waits (bounded) until the main process is
    /// reaped. The browser's other processes die with it and are reaped by the
    /// [`Reaper`].
    pub async fn kill(self) {
        match self {
            Self::Chromium(b) => b.kill().await,
            Self::Firefox(b) => b.kill().await,
        }
    }
}

/// Finds an executable by name on PATH, or checks a path. `kind` names the browser in
/// the error.
pub fn resolve_executable(name: &str, kind: BrowserKind) -> Result<PathBuf, LaunchError> {
    let what = kind.display_name();
    let what = if kind.family() == Family::Chromium && kind != BrowserKind::Chromium {
        format!("{what} (Chromium family)")
    } else {
        what.to_owned()
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(LaunchError::BinaryMissing {
                what,
                name: name.to_owned(),
            })
        };
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| LaunchError::BinaryNotOnPath {
            what,
            name: name.to_owned(),
            options: binary_options(kind),
        })
}

/// Where the runtime's files are, checked up front so a bad install fails loudly.
pub fn check_web_root(root: &Path) -> Result<(), LaunchError> {
    let needed = [
        "src/runtime.js",
        "node_modules/onnxruntime-web/dist/ort.all.min.mjs",
        "node_modules/onnxruntime-web/dist/ort.wasm.min.mjs",
    ];
    for file in needed {
        if !root.join(file).is_file() {
            return Err(LaunchError::WebRootIncomplete {
                file: root.join(file),
                root: root.to_owned(),
            });
        }
    }
    Ok(())
}

/// Runs `fut` within `limit`, naming the step and the browser in the error.
async fn bounded<T, E: std::error::Error + Send + Sync + 'static>(
    browser: &'static str,
    limit: Duration,
    step: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, LaunchError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(LaunchError::Step {
            browser,
            step,
            source: Box::new(e),
        }),
        Err(_) => Err(LaunchError::StepTimedOut {
            browser,
            step,
            limit,
        }),
    }
}

fn describe(exit: Option<Exit>) -> String {
    exit.map_or_else(|| "unknown status".to_owned(), |e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chrome_and_edge_are_driven_as_chromium_from_their_own_binaries() {
        assert_eq!(BrowserKind::Chrome.family(), Family::Chromium);
        assert_eq!(BrowserKind::Edge.family(), Family::Chromium);
        assert_eq!(BrowserKind::Firefox.family(), Family::Firefox);
        assert_eq!(BrowserKind::Chrome.default_binary(), "google-chrome");
        assert_eq!(BrowserKind::Firefox.default_binary(), "firefox-esr");
    }

    #[test]
    fn a_missing_binary_names_the_browser_and_the_options() {
        let e = resolve_executable("/nonexistent/chromium", BrowserKind::Chromium)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "Chromium binary '/nonexistent/chromium' does not exist");
        let e = resolve_executable("no-such-firefox-xyz", BrowserKind::Firefox)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Firefox binary 'no-such-firefox-xyz' is not on PATH"),
            "{e}"
        );
        assert!(e.contains("--firefox"), "{e}");
        let e = resolve_executable("no-such-chrome-xyz", BrowserKind::Chrome)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("Chrome (Chromium family) binary"), "{e}");
    }
}
