//! Why a browser could not be found, started, or made to run a script. The messages
//! name the browser and the step, because they end up in `/v1/stats`
//! (`last_launch_error`) and in the agent's log, where the cause must be plain.

use std::path::PathBuf;
use std::time::Duration;

/// Any error of a launch step, kept as the step reported it.
pub type StepSource = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{what} binary '{name}' does not exist")]
    BinaryMissing { what: String, name: String },
    #[error("{what} binary '{name}' is not on PATH (set {options})")]
    BinaryNotOnPath {
        what: String,
        name: String,
        /// The options that name the binary.
        options: &'static str,
    },
    #[error(
        "{} is missing: run `npm ci` in {} (or point --web-root at a built runtime)",
        file.display(),
        root.display()
    )]
    WebRootIncomplete { file: PathBuf, root: PathBuf },
    #[error("Firefox preference '{0}' is not NAME=VALUE")]
    BadPreference(String),
    #[error("cannot create a profile directory: {0}")]
    Profile(#[source] std::io::Error),
    #[error("cannot write {}: {source}", path.display())]
    WriteProfile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    CreateLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the DevTools pipe: {0}")]
    DevtoolsPipe(#[source] std::io::Error),
    #[error("cannot share the log file: {0}")]
    ShareLog(#[source] std::io::Error),
    #[error("launching {program} failed: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{browser} exited during start ({status})")]
    ExitedDuringStart {
        browser: &'static str,
        status: String,
    },
    /// The browser never said where its control protocol listens.
    #[error("{browser} announced no {protocol} endpoint within {limit:?}")]
    NoEndpoint {
        browser: &'static str,
        /// `DevTools` or `WebDriver BiDi`.
        protocol: &'static str,
        limit: Duration,
    },
    #[error("{browser} failed {step}: {source}")]
    Step {
        browser: &'static str,
        step: &'static str,
        source: StepSource,
    },
    #[error("{browser} did not finish {step} within {limit:?}")]
    StepTimedOut {
        browser: &'static str,
        step: &'static str,
        limit: Duration,
    },
    /// A Firefox that handed over to another instance: not the process the agent
    /// started (and whose group it kills).
    #[error("{browser}'s main process is {answering}, not the process started ({started})")]
    ForeignProcess {
        browser: &'static str,
        answering: u32,
        started: u32,
    },
    #[error("{browser} has no tab open")]
    NoTab { browser: &'static str },
    /// An error of a started process, with the last lines it logged.
    #[error("{error}; {browser}'s last output:\n{tail}")]
    WithOutput {
        error: Box<LaunchError>,
        browser: &'static str,
        tail: String,
    },
}

/// Why a script could not be run in the page (fault injection).
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error(transparent)]
    DevTools(#[from] chromiumoxide::error::CdpError),
    #[error(transparent)]
    BiDi(#[from] super::bidi::BiDiError),
    /// The script threw; the exception's text.
    #[error("{0}")]
    Threw(String),
}
