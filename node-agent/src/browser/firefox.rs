//! Firefox, driven over WebDriver BiDi (built into Firefox; the DevTools protocol is gone
//! from current releases) for lifecycle only: version, liveness, fault injection. The
//! runtime page is opened from the command line, so it loads while BiDi connects.
//!
//! Facts this relies on (Debian's `firefox-esr` 153 ESR):
//! - `--remote-debugging-port 0` prints `WebDriver BiDi listening on ws://127.0.0.1:PORT`
//!   on stderr; sessions open at `ws://…/session`, one at a time.
//! - `session.status` is answered by the main process: the liveness probe. The page's
//!   socket runs through Firefox's socket process, so the heartbeat alone cannot tell a
//!   frozen main process.
//! - A killed content process (`-contentproc … tab`) leaves the main process alive; the
//!   page's socket closes, so the supervisor sees a crash and replaces the browser.
//! - Headless Firefox has no GPU process: WebGPU runs in the main process.
//! - Firefox starts a crash helper (`crashhelper`) outside its process group; it exits
//!   by itself once the main process is gone, and the agent's reaper collects it.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bidi::{self, BiDi};
use super::group::Group;
use super::{LaunchConfig, LaunchError, LaunchTimeouts, ScriptError, bounded, describe};
use crate::reaper::Reaper;

const NAME: &str = "Firefox";

/// How long an orderly `session.end` may take before the kill goes ahead anyway.
const SESSION_END_WAIT: Duration = Duration::from_millis(100);

/// Preferences every profile gets (its `user.js`), `(name, value as JavaScript)`.
/// Firefox also applies the remote agent's recommended preferences (no updates,
/// telemetry or remote settings, no slow-script dialogs) when BiDi starts; the ones
/// read before that, or that matter here, are set from the start.
const PREFS: &[(&str, &str)] = &[
    // No first-run pages, default-browser checks, updates or crash-restore prompts.
    ("browser.shell.checkDefaultBrowser", "false"),
    ("browser.startup.homepage_override.mstone", "\"ignore\""),
    ("startup.homepage_welcome_url", "\"\""),
    ("browser.aboutwelcome.enabled", "false"),
    ("datareporting.policy.dataSubmissionEnabled", "false"),
    ("toolkit.telemetry.reportingpolicy.firstRun", "false"),
    ("app.update.enabled", "false"),
    ("browser.sessionstore.resume_from_crash", "false"),
    ("toolkit.startup.max_resumed_crashes", "-1"),
    // The machine may have no network: nothing to fetch at start.
    (
        "services.settings.server",
        "\"data:,#remote-settings-dummy/v1\"",
    ),
    ("app.normandy.enabled", "false"),
    ("network.connectivity-service.enabled", "false"),
    ("network.captive-portal-service.enabled", "false"),
    ("browser.safebrowsing.update.enabled", "false"),
    // WebGPU is off by default on Linux; its blocklist refuses software Vulkan
    // (lavapipe), which the page then reports as a software adapter.
    ("dom.webgpu.enabled", "true"),
    ("gfx.webgpu.ignore-blocklist", "true"),
    // Firefox's own hang handling would interrupt a page compiling a model; the
    // agent's heartbeat judges hangs instead.
    ("dom.max_script_run_time", "0"),
    ("dom.ipc.reportProcessHangs", "false"),
    // The page must keep its full priority, and no spare content process is needed.
    ("dom.ipc.processPriorityManager.enabled", "false"),
    ("dom.ipc.processPrelaunch.enabled", "false"),
    ("browser.tabs.unloadOnLowMemory", "false"),
];

/// A running Firefox with the runtime page open.
#[derive(Debug)]
pub struct Firefox {
    group: Group,
    bidi: BiDi,
    /// The tab holding the runtime page.
    context: String,
    version: String,
    /// A fresh profile per launch, removed when the process is dropped.
    profile: tempfile::TempDir,
}

impl Firefox {
    /// Launches Firefox with a fresh profile, opening `url`, and opens a BiDi session.
    pub async fn launch(
        cfg: &LaunchConfig,
        url: &str,
        reaper: &Arc<Reaper>,
        timeouts: LaunchTimeouts,
    ) -> Result<Self, LaunchError> {
        let profile = tempfile::Builder::new()
            .prefix("webaccel-firefox-")
            .tempdir_in(cfg.profiles.dir())
            .map_err(LaunchError::Profile)?;
        write_user_js(profile.path(), &cfg.firefox_prefs)?;
        let mut cmd = Command::new(&cfg.executable);
        cmd.args(["--headless", "--no-remote", "--profile"])
            .arg(profile.path())
            .args(["--remote-debugging-port", "0"])
            .arg(url)
            // No crash reports to write or send; no safe-mode prompt after a crash.
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            .env("MOZ_DISABLE_AUTO_SAFE_MODE", "1");
        let group = Group::spawn(cmd, profile.path().join("browser.log"), reaper, NAME)?;
        let fail = |e: LaunchError| group.explain(e);

        let ws_url = tokio::select! {
            url = bidi_url(group.log(), timeouts.endpoint) => url.map_err(fail)?,
            e = group.exited() => {
                return Err(fail(LaunchError::ExitedDuringStart { browser: NAME, status: describe(e) }));
            }
        };
        let bidi = bounded(
            NAME,
            timeouts.command,
            "connecting to WebDriver BiDi",
            BiDi::connect(&format!("{ws_url}/session")),
        )
        .await
        .map_err(fail)?;
        let session = bounded(
            NAME,
            timeouts.command,
            "opening a WebDriver BiDi session",
            bidi.send(&bidi::SessionNew::default()),
        )
        .await
        .map_err(fail)?;
        let caps = session.capabilities;
        // The process that answers must be the one spawned (and whose group is
        // killed): a Firefox that handed over to another instance is not usable.
        if let Some(pid) = caps.moz_process_id
            && pid != group.pid()
        {
            return Err(fail(LaunchError::ForeignProcess {
                browser: NAME,
                answering: pid,
                started: group.pid(),
            }));
        }
        let tree = bounded(
            NAME,
            timeouts.command,
            "listing its tabs",
            bidi.send(&bidi::GetTree { max_depth: Some(0) }),
        )
        .await
        .map_err(fail)?;
        let page = url.split('?').next().unwrap_or(url);
        let context = tree
            .contexts
            .iter()
            .find(|c| c.url.starts_with(page))
            .or_else(|| tree.contexts.first())
            .map(|c| c.context.clone())
            .ok_or_else(|| fail(LaunchError::NoTab { browser: NAME }))?;
        Ok(Self {
            group,
            bidi,
            context,
            version: format!("Firefox/{}", caps.browser_version),
            profile,
        })
    }

    pub(super) fn group(&self) -> &Group {
        &self.group
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Resolves when the BiDi connection has ended (the browser died or closed it).
    pub async fn bidi_closed(&self) {
        self.bidi.closed().await;
    }

    /// `session.status`: an answer proves the main process is not frozen.
    pub async fn bidi_ping(&self) -> bool {
        self.bidi
            .send(&bidi::SessionStatus::default())
            .await
            .is_ok()
    }

    /// Evaluates `expression` in the runtime page.
    pub async fn evaluate(&self, expression: &str) -> Result<(), ScriptError> {
        let evaluate = bidi::Evaluate {
            expression: expression.to_owned(),
            target: bidi::Target {
                context: self.context.clone(),
            },
            await_promise: false,
        };
        match self.bidi.send(&evaluate).await? {
            bidi::EvaluateResult::Success { .. } => Ok(()),
            bidi::EvaluateResult::Exception { exception_details } => {
                Err(ScriptError::Threw(exception_details.text))
            }
        }
    }

    /// Ends the BiDi session if the browser still answers (briefly: a frozen one does
    /// not), then SIGKILLs the whole process group and waits (bounded) for the reaping.
    pub async fn kill(mut self) {
        if !self.bidi.is_closed() && !self.group.has_exited() {
            let _ = tokio::time::timeout(
                SESSION_END_WAIT,
                self.bidi.send(&bidi::SessionEnd::default()),
            )
            .await;
        }
        self.group.kill().await;
        tracing::debug!(profile = %self.profile.path().display(), "profile removed");
    }
}

/// Writes the profile's `user.js`: [`PREFS`], then `extra` (`NAME=VALUE`, which wins).
/// A value that is `true`, `false` or a number is written as is, anything else as a
/// string.
fn write_user_js(profile: &Path, extra: &[String]) -> Result<(), LaunchError> {
    let mut text = String::from("// Written by webaccel-agent for one launch.\n");
    for (name, value) in PREFS {
        text.push_str(&format!("user_pref(\"{name}\", {value});\n"));
    }
    for pref in extra {
        let (name, value) = parse_pref(pref)?;
        text.push_str(&format!("user_pref({name}, {value});\n"));
    }
    let path = profile.join("user.js");
    std::fs::write(&path, text).map_err(|source| LaunchError::WriteProfile { path, source })
}

/// `NAME=VALUE` as JavaScript literals for `user_pref`.
pub fn parse_pref(pref: &str) -> Result<(String, String), LaunchError> {
    let (name, value) = pref
        .split_once('=')
        .filter(|(n, _)| !n.trim().is_empty())
        .ok_or_else(|| LaunchError::BadPreference(pref.to_owned()))?;
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let value = value.trim();
    let literal = if value == "true" || value == "false" || value.parse::<i64>().is_ok() {
        value.to_owned()
    } else {
        quote(value)
    };
    Ok((quote(name.trim()), literal))
}

/// Waits for Firefox to announce its BiDi endpoint on stderr (in `log`).
async fn bidi_url(log: &Path, limit: Duration) -> Result<String, LaunchError> {
    const ANNOUNCE: &str = "WebDriver BiDi listening on ";
    let started = Instant::now();
    loop {
        if let Ok(text) = tokio::fs::read_to_string(log).await
            && let Some(at) = text.find(ANNOUNCE)
        {
            let rest = &text[at + ANNOUNCE.len()..];
            if let Some(end) = rest.find(char::is_whitespace) {
                let url = &rest[..end];
                if url.starts_with("ws://") {
                    return Ok(url.to_owned());
                }
            }
        }
        if started.elapsed() > limit {
            return Err(LaunchError::NoEndpoint {
                browser: NAME,
                protocol: "WebDriver BiDi",
                limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_become_javascript_literals() {
        assert_eq!(
            parse_pref("dom.webgpu.enabled=false").unwrap(),
            ("\"dom.webgpu.enabled\"".into(), "false".into())
        );
        assert_eq!(
            parse_pref("dom.ipc.processCount=2").unwrap().1,
            "2".to_owned()
        );
        assert_eq!(
            parse_pref("general.useragent.override=a \"b\"").unwrap().1,
            "\"a \\\"b\\\"\"".to_owned()
        );
        assert!(parse_pref("novalue").is_err());
        assert!(parse_pref("=1").is_err());
    }

    #[test]
    fn user_js_holds_the_base_preferences_and_the_extra_ones_last() {
        let dir = tempfile::tempdir().unwrap();
        write_user_js(dir.path(), &["dom.webgpu.enabled=false".into()]).unwrap();
        let text = std::fs::read_to_string(dir.path().join("user.js")).unwrap();
        let on = text
            .find("user_pref(\"dom.webgpu.enabled\", true);")
            .unwrap();
        let off = text
            .find("user_pref(\"dom.webgpu.enabled\", false);")
            .unwrap();
        assert!(on < off, "{text}");
        assert!(
            text.contains("user_pref(\"browser.startup.homepage_override.mstone\", \"ignore\");")
        );
    }
}
