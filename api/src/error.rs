//! Machine-readable error categories shared by every webaccel interface.
//!
//! A category tells a caller (the gateway, a client library) what to do next without
//! parsing messages: retry elsewhere, fix the request, or give up.

use serde::{Deserialize, Serialize};

/// Why a request failed. Serialised in `snake_case` on HTTP error bodies and in wire
/// error frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCategory {
    /// The request is malformed or does not match the model (names, shapes, datatypes).
    BadRequest,
    /// Missing or wrong bearer token.
    Unauthorized,
    /// The model is unknown to this agent.
    ModelNotFound,
    /// The model is known but not loaded (yet, or any more).
    ModelNotReady,
    /// The model could not be fetched, verified or compiled.
    ModelLoadFailed,
    /// A tensor or body is larger than the configured limit.
    PayloadTooLarge,
    /// Too many requests in flight; back off and retry.
    Overloaded,
    /// The browser died while the request was in flight.
    BrowserCrashed,
    /// The browser stopped answering its heartbeat while the request was in flight.
    BrowserHung,
    /// The browser is (re)starting and cannot take work yet.
    BrowserUnavailable,
    /// The agent is draining before exit.
    ShuttingDown,
    /// The request's deadline passed before it completed.
    DeadlineExceeded,
    /// The runtime in the page failed while running the model.
    InferenceFailed,
    /// A bug or an unexpected condition in the agent.
    Internal,
}

impl ErrorCategory {
    /// Every category, in declaration order.
    pub const ALL: [Self; 14] = [
        Self::BadRequest,
        Self::Unauthorized,
        Self::ModelNotFound,
        Self::ModelNotReady,
        Self::ModelLoadFailed,
        Self::PayloadTooLarge,
        Self::Overloaded,
        Self::BrowserCrashed,
        Self::BrowserHung,
        Self::BrowserUnavailable,
        Self::ShuttingDown,
        Self::DeadlineExceeded,
        Self::InferenceFailed,
        Self::Internal,
    ];

    /// Whether the same request may succeed if sent again (to this or another browser).
    /// The one retry policy: every `retryable` flag on the wire, in HTTP and gRPC error
    /// bodies and in the page's error frames (its `categories.js` is generated from this)
    /// says what this says.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Overloaded
                | Self::BrowserCrashed
                | Self::BrowserHung
                | Self::BrowserUnavailable
                | Self::ShuttingDown
                | Self::ModelNotReady
                | Self::DeadlineExceeded
        )
    }

    /// Whether a router holding a request may try it again on another browser within
    /// the same request's deadline: what [`Self::is_retryable`] allows, except a passed
    /// deadline (the request's own deadline is gone too), and also a model the browser
    /// does not hold (it was unloaded there since the router looked; another browser may
    /// well hold it).
    pub fn is_retryable_elsewhere(self) -> bool {
        self.is_retryable() && self != Self::DeadlineExceeded || self == Self::ModelNotFound
    }

    /// The HTTP status that carries this category.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::ModelNotFound => 404,
            Self::PayloadTooLarge => 413,
            Self::ModelLoadFailed => 422,
            Self::Overloaded => 429,
            Self::InferenceFailed | Self::Internal => 500,
            Self::BrowserCrashed
            | Self::BrowserHung
            | Self::BrowserUnavailable
            | Self::ShuttingDown
            | Self::ModelNotReady => 503,
            Self::DeadlineExceeded => 504,
        }
    }

    /// The `snake_case` name, as used in metric labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::ModelNotFound => "model_not_found",
            Self::ModelNotReady => "model_not_ready",
            Self::ModelLoadFailed => "model_load_failed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Overloaded => "overloaded",
            Self::BrowserCrashed => "browser_crashed",
            Self::BrowserHung => "browser_hung",
            Self::BrowserUnavailable => "browser_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::InferenceFailed => "inference_failed",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_as_str() {
        for c in [
            ErrorCategory::BrowserCrashed,
            ErrorCategory::PayloadTooLarge,
        ] {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
    }

    #[test]
    fn all_lists_every_category_once() {
        let names: std::collections::BTreeSet<&str> =
            ErrorCategory::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCategory::ALL.len());
        // A category added to the enum stops this match compiling: the reminder to add
        // it to ALL as well.
        for c in ErrorCategory::ALL {
            match c {
                ErrorCategory::BadRequest
                | ErrorCategory::Unauthorized
                | ErrorCategory::ModelNotFound
                | ErrorCategory::ModelNotReady
                | ErrorCategory::ModelLoadFailed
                | ErrorCategory::PayloadTooLarge
                | ErrorCategory::Overloaded
                | ErrorCategory::BrowserCrashed
                | ErrorCategory::BrowserHung
                | ErrorCategory::BrowserUnavailable
                | ErrorCategory::ShuttingDown
                | ErrorCategory::DeadlineExceeded
                | ErrorCategory::InferenceFailed
                | ErrorCategory::Internal => {}
            }
        }
    }

    #[test]
    fn retrying_elsewhere_is_retrying_but_within_the_deadline_and_for_a_model_moved() {
        for c in ErrorCategory::ALL {
            let want = match c {
                ErrorCategory::DeadlineExceeded => false,
                ErrorCategory::ModelNotFound => true,
                c => c.is_retryable(),
            };
            assert_eq!(c.is_retryable_elsewhere(), want, "{c}");
        }
    }

    #[test]
    fn crash_is_retryable_503_and_bad_request_is_not() {
        assert!(ErrorCategory::BrowserCrashed.is_retryable());
        assert_eq!(ErrorCategory::BrowserCrashed.http_status(), 503);
        assert!(!ErrorCategory::BadRequest.is_retryable());
        assert_eq!(ErrorCategory::BadRequest.http_status(), 400);
    }
}
