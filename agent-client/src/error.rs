//! Why a call to an agent failed, and how an answer is read: the agent's own error body
//! keeps its category; anything else (a proxy answered) gets one from the status.

use webaccel_api::ErrorCategory;
use webaccel_api::oip::ErrorBody;

/// Why a call to an agent failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    /// No answer: connection refused, timeout, reset.
    #[error("{path}: agent unreachable: {message}")]
    Unreachable { path: String, message: String },
    /// The agent answered with an error, in its own words.
    #[error("{path}: HTTP {status} ({category}): {message}")]
    Refused {
        path: String,
        status: u16,
        category: ErrorCategory,
        message: String,
    },
    /// The agent answered something that is not its contract.
    #[error("{path}: malformed answer: {message}")]
    Malformed { path: String, message: String },
}

impl AgentError {
    /// Whether asking again later may work (the agent is restarting its browser, is
    /// unreachable for now, or is overloaded). Refusals because of the request itself
    /// (bad model, bad spec) and authentication failures are not retryable.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Malformed { .. } => true,
            Self::Refused { category, .. } => category.is_retryable(),
        }
    }

    /// The agent refused the token (rotated, or not the pool's): ask again with a fresh one.
    pub fn unauthorized(&self) -> bool {
        self.category() == Some(ErrorCategory::Unauthorized)
    }

    /// The category the agent gave, when it answered with an error.
    pub fn category(&self) -> Option<ErrorCategory> {
        match self {
            Self::Refused { category, .. } => Some(*category),
            Self::Unreachable { .. } | Self::Malformed { .. } => None,
        }
    }

    /// A bounded label for metrics: `unreachable`, `malformed` or the category.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::Malformed { .. } => "malformed",
            Self::Refused { category, .. } => category.as_str(),
        }
    }
}

pub type AgentResult<T> = Result<T, AgentError>;

/// An agent's answer to `path` as the contract reads it: a 2xx body (none when empty), or
/// the agent's error with its category. A body that is not the agent's error (a proxy
/// answered) gets its category from the status.
pub fn interpret<T: serde::de::DeserializeOwned>(
    path: &str,
    status: u16,
    bytes: &[u8],
) -> AgentResult<(u16, Option<T>)> {
    if (200..300).contains(&status) {
        if bytes.is_empty() {
            return Ok((status, None));
        }
        return serde_json::from_slice(bytes)
            .map(|v| (status, Some(v)))
            .map_err(|e| AgentError::Malformed {
                path: path.to_owned(),
                message: e.to_string(),
            });
    }
    let (category, message) = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => (b.category, b.error),
        // Not the agent's error body: a proxy or something else answered.
        Err(_) => (
            match status {
                401 | 403 => ErrorCategory::Unauthorized,
                404 => ErrorCategory::ModelNotFound,
                502..=504 => ErrorCategory::BrowserUnavailable,
                _ => ErrorCategory::Internal,
            },
            String::from_utf8_lossy(bytes).chars().take(500).collect(),
        ),
    };
    Err(AgentError::Refused {
        path: path.to_owned(),
        status,
        category,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_agent_states_are_retryable() {
        let refused = |category| AgentError::Refused {
            path: "/v1/repository/models".into(),
            status: 503,
            category,
            message: "x".into(),
        };
        assert!(refused(ErrorCategory::BrowserUnavailable).retryable());
        assert!(!refused(ErrorCategory::Unauthorized).retryable());
        assert!(
            AgentError::Unreachable {
                path: "/".into(),
                message: "refused".into()
            }
            .retryable()
        );
        assert_eq!(refused(ErrorCategory::Unauthorized).label(), "unauthorized");
    }

    #[test]
    fn an_answer_that_is_not_the_agents_error_gets_its_category_from_the_status() {
        let e = interpret::<()>("/v1/stats", 502, b"<html>bad gateway</html>").unwrap_err();
        assert_eq!(e.category(), Some(ErrorCategory::BrowserUnavailable));
        let body = br#"{"error":"no such model","category":"model_not_found","retryable":false}"#;
        let e = interpret::<()>("/v1/repository/models/m", 404, body).unwrap_err();
        assert_eq!(e.category(), Some(ErrorCategory::ModelNotFound));
        assert!(e.to_string().contains("no such model"), "{e}");
    }
}
