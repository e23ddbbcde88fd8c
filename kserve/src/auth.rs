//! Bearer tokens, checked the same way on HTTP and gRPC: `authorization: Bearer <token>`
//! must carry one of the accepted tokens (compared in constant time). An empty set
//! accepts everyone (the caller says so in its log).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use webaccel_api::ErrorCategory;

use crate::api::ApiError;

#[derive(Clone, Default)]
pub struct Tokens(Vec<String>);

/// Why a token file gives no tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading the token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {} holds no token", path.display())]
    Empty { path: PathBuf },
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} accepted)", self.0.len())
    }
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timing.
fn token_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    pub fn new(tokens: impl IntoIterator<Item = String>) -> Self {
        Self(tokens.into_iter().filter(|t| !t.is_empty()).collect())
    }

    /// Reads a token file: one token per line, blank lines ignored.
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let tokens = Self::new(text.lines().map(|l| l.trim().to_owned()));
        if tokens.0.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(tokens)
    }

    /// Whether a token is required at all.
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Checks an `authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let presented = authorization.and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(p) if self.0.iter().any(|t| token_eq(p.as_bytes(), t.as_bytes())) => Ok(()),
            Some(_) => Err(ApiError::new(
                ErrorCategory::Unauthorized,
                "invalid bearer token",
            )),
            None => Err(ApiError::new(
                ErrorCategory::Unauthorized,
                "missing bearer token: send `authorization: Bearer <token>`",
            )),
        }
    }
}

pub use webaccel_api::agent::TOKEN_HEADER;

/// The token a request presents: its `authorization` header, else `x-webaccel-token`.
pub fn presented(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .or_else(|| headers.get(TOKEN_HEADER))
        .and_then(|v| v.to_str().ok())
}

/// Axum middleware: refuses a request without an accepted token with 401.
pub async fn require(State(tokens): State<Arc<Tokens>>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match tokens.check(header) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_exactly() {
        let t = Tokens::new(["secret".to_owned(), "other".to_owned()]);
        assert!(t.check(Some("Bearer secret")).is_ok());
        assert!(t.check(Some("Bearer other")).is_ok());
        assert!(t.check(Some("Bearer secreT")).is_err());
        assert!(t.check(Some("secret")).is_err());
        assert!(t.check(None).unwrap_err().message.contains("missing"));
        assert!(Tokens::default().check(None).is_ok());
        assert!(token_eq(b"a", b"a") && !token_eq(b"a", b"ab"));
    }

    #[test]
    fn the_token_may_come_in_the_proxy_header() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert(TOKEN_HEADER, "Bearer secret".parse().unwrap());
        assert_eq!(presented(&h), Some("Bearer secret"));
        h.insert(AUTHORIZATION, "Bearer other".parse().unwrap());
        assert_eq!(
            presented(&h),
            Some("Bearer other"),
            "authorization goes first"
        );
    }
}
