//! The agent's error type: every failure carries a machine-readable category that picks
//! its HTTP status, its wire error frame and its metric label.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use webaccel_api::ErrorCategory;
use webaccel_api::wire::ErrorFrame;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown model '{0}'")]
    ModelNotFound(String),
    #[error("model '{name}' is not ready ({state})")]
    ModelNotReady { name: String, state: String },
    #[error("{0}")]
    ModelLoad(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{limit} requests already in flight; retry later")]
    Overloaded { limit: usize },
    /// The browser failed underneath the request (crashed, hung, restarting).
    #[error("{message}")]
    Browser {
        category: ErrorCategory,
        message: String,
    },
    #[error("the agent is shutting down and takes no new work")]
    ShuttingDown,
    #[error("request deadline of {0:?} exceeded")]
    Deadline(Duration),
    #[error("inference failed in the page: {0}")]
    Inference(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AgentError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            Self::BadRequest(_) => ErrorCategory::BadRequest,
            Self::ModelNotFound(_) => ErrorCategory::ModelNotFound,
            Self::ModelNotReady { .. } => ErrorCategory::ModelNotReady,
            Self::ModelLoad(_) => ErrorCategory::ModelLoadFailed,
            Self::PayloadTooLarge(_) => ErrorCategory::PayloadTooLarge,
            Self::Overloaded { .. } => ErrorCategory::Overloaded,
            Self::Browser { category, .. } => *category,
            Self::ShuttingDown => ErrorCategory::ShuttingDown,
            Self::Deadline(_) => ErrorCategory::DeadlineExceeded,
            Self::Inference(_) => ErrorCategory::InferenceFailed,
            Self::Internal(_) => ErrorCategory::Internal,
        }
    }

    pub fn browser(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self::Browser {
            category,
            message: message.into(),
        }
    }

    /// Rebuilds an error from a wire error frame (as sent by the page).
    pub fn from_frame(frame: ErrorFrame) -> Self {
        match frame.category {
            ErrorCategory::BadRequest => Self::BadRequest(frame.message),
            ErrorCategory::ModelNotReady => Self::ModelNotReady {
                name: String::new(),
                state: frame.message,
            },
            ErrorCategory::InferenceFailed => Self::Inference(frame.message),
            c @ (ErrorCategory::BrowserCrashed
            | ErrorCategory::BrowserHung
            | ErrorCategory::BrowserUnavailable) => Self::browser(c, frame.message),
            _ => Self::Internal(frame.message),
        }
    }

    pub fn to_frame(&self) -> ErrorFrame {
        ErrorFrame::new(self.category(), self.to_string())
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let category = self.category();
        let status = StatusCode::from_u16(category.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // `error` is the Open Inference Protocol's field; the others let clients decide
        // without parsing the message.
        let body = webaccel_api::oip::ErrorBody {
            error: self.to_string(),
            category,
            retryable: category.is_retryable(),
        };
        (status, Json(body)).into_response()
    }
}
