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
    /// Whether the same request may succeed if sent again (to this or another browser).
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
    fn crash_is_retryable_503_and_bad_request_is_not() {
        assert!(ErrorCategory::BrowserCrashed.is_retryable());
        assert_eq!(ErrorCategory::BrowserCrashed.http_status(), 503);
        assert!(!ErrorCategory::BadRequest.is_retryable());
        assert_eq!(ErrorCategory::BadRequest.http_status(), 400);
    }
}
