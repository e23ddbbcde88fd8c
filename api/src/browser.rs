//! The browsers webaccel drives, one name for the `BrowserPool`'s `browser`, the agent's
//! `--browser`, its stats and the metric rows.

use serde::{Deserialize, Serialize};

/// Which browser a pool runs. Chrome and Edge are driven exactly like Chromium (the same
/// switches and protocol), only from their own binaries; Firefox over WebDriver BiDi.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum BrowserKind {
    #[default]
    Chromium,
    Chrome,
    Edge,
    Firefox,
}

/// How a browser is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// The DevTools protocol.
    Chromium,
    /// WebDriver BiDi.
    Firefox,
}

impl BrowserKind {
    /// Every kind, in the order of the `BrowserPool` schema.
    pub const ALL: [Self; 4] = [Self::Chromium, Self::Chrome, Self::Edge, Self::Firefox];

    /// The name in the resource, metric rows, logs and the agent's `--browser`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chromium => "chromium",
            Self::Chrome => "chrome",
            Self::Edge => "edge",
            Self::Firefox => "firefox",
        }
    }

    /// The name in messages.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Chromium => "Chromium",
            Self::Chrome => "Chrome",
            Self::Edge => "Edge",
            Self::Firefox => "Firefox",
        }
    }

    pub fn family(self) -> Family {
        match self {
            Self::Chromium | Self::Chrome | Self::Edge => Family::Chromium,
            Self::Firefox => Family::Firefox,
        }
    }

    /// The binary looked up on PATH when none is given, as Debian's and the vendors'
    /// packages (and webaccel's images) install them.
    pub fn default_binary(self) -> &'static str {
        match self {
            Self::Chromium => "chromium",
            Self::Chrome => "google-chrome",
            Self::Edge => "microsoft-edge",
            Self::Firefox => "firefox-esr",
        }
    }
}

impl std::fmt::Display for BrowserKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`BrowserKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown browser '{0}': expected chromium, chrome, edge or firefox")]
pub struct UnknownBrowser(pub String);

impl std::str::FromStr for BrowserKind {
    type Err = UnknownBrowser;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownBrowser(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for kind in BrowserKind::ALL {
            assert_eq!(kind.as_str().parse::<BrowserKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        assert!("safari".parse::<BrowserKind>().is_err());
        assert_eq!(BrowserKind::Edge.family(), Family::Chromium);
        assert_eq!(BrowserKind::Firefox.default_binary(), "firefox-esr");
    }
}
