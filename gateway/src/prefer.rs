//! Routing preferences from ClickHouse history: per model, the browser and backend that
//! `webaccel recommend` picks, refreshed in the background so routing never waits on
//! ClickHouse. Only confident picks between real rivals count; a preference narrows the
//! choice among free browsers and never makes a request wait (see `Backends::pick`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use webaccel_analytics::ClickHouseSettings;
use webaccel_analytics::queries::{self, Recommendation, Scope};

/// Which browsers ClickHouse history recommends per model (browser kind and backend),
/// refreshed in the background by [`spawn_refresh`].
pub type Preferences = Arc<RwLock<HashMap<String, Preference>>>;

/// The browser kind and backend the history recommends for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    pub browser: String,
    pub backend: String,
}

/// How far back the history is read, and how many successful requests each choice needs.
const WINDOW: Duration = Duration::from_secs(3600);
const MIN_SAMPLES: u64 = 20;
/// The probability that the pick is faster than the runner-up below which the history
/// is not trusted (noise between two equal browsers must not steer traffic).
const MIN_CONFIDENCE: f64 = 0.95;

/// Whether a browser's reported version (`HeadlessChrome/142.0...`, `Firefox/140.0`,
/// `Edg/...`) is of the kind recorded in the history (`chromium`, `chrome`, `edge`,
/// `firefox`, as the agent's `--browser` names it). Chromium and Chrome report the same
/// product string, so they count as one kind here.
pub fn browser_matches(kind: &str, version: &str) -> bool {
    let v = version.to_ascii_lowercase();
    match kind {
        "firefox" => v.contains("firefox"),
        "edge" => v.contains("edg"),
        "chromium" | "chrome" => v.contains("chrome") && !v.contains("edg"),
        other => v.starts_with(other),
    }
}

/// The preferences the recommendations imply: confident picks that beat a rival.
pub fn from_recommendations(recs: &[Recommendation]) -> HashMap<String, Preference> {
    recs.iter()
        .filter(|r| r.runner_up.is_some() && r.confidence >= MIN_CONFIDENCE)
        .map(|r| {
            (
                r.key.clone(),
                Preference {
                    browser: r.browser.clone(),
                    backend: r.backend.clone(),
                },
            )
        })
        .collect()
}

/// Refreshes `preferences` every `every` until `stop`; a failed query keeps the last
/// preferences (logged once per failure streak).
pub fn spawn_refresh(
    settings: ClickHouseSettings,
    preferences: Preferences,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = settings.client(true);
        let mut failing = false;
        // The server's version, asked once it answers (not on every refresh).
        let mut features = None;
        loop {
            let result = async {
                let f = match features {
                    Some(f) => f,
                    None => *features.insert(webaccel_analytics::server::detect(&client).await?),
                };
                queries::recommend(&client, f, Scope::Model, WINDOW, MIN_SAMPLES).await
            }
            .await;
            match result {
                Ok(recs) => {
                    let next = from_recommendations(&recs);
                    let mut current = preferences.write();
                    if *current != next {
                        tracing::info!(preferences = ?next, "routing preferences from ClickHouse history");
                        *current = next;
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read recommendations; keeping the last preferences");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use webaccel_analytics::queries::Measure;

    fn rec(key: &str, browser: &str, confidence: f64, rival: bool) -> Recommendation {
        Recommendation {
            key: key.into(),
            measure: Measure::Latency,
            browser: browser.into(),
            backend: "wasm".into(),
            p50_ms: 1.0,
            throughput_rps: 1.0,
            tokens_per_s: None,
            samples: 100,
            runner_up: rival.then(|| ("firefox".into(), "wasm".into(), 2.0)),
            confidence,
        }
    }

    #[test]
    fn only_confident_picks_over_a_rival_become_preferences() {
        let p = from_recommendations(&[
            rec("a", "chromium", 0.99, true),
            rec("b", "chromium", 0.7, true),
            rec("c", "chromium", 1.0, false),
        ]);
        assert_eq!(p.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(p["a"].browser, "chromium");
    }

    #[test]
    fn kinds_match_the_versions_browsers_report() {
        assert!(browser_matches("chromium", "HeadlessChrome/142.0.7444.175"));
        assert!(browser_matches("chrome", "Chrome/142.0"));
        assert!(!browser_matches("chromium", "Firefox/140.0"));
        assert!(browser_matches("firefox", "Firefox/140.5.0"));
        assert!(browser_matches("edge", "Edg/142.0"));
        assert!(!browser_matches("chromium", "HeadlessEdg/142.0"));
    }
}
