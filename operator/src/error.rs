//! Why a reconcile failed, with a short label per kind for the error metric.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("{0} has no namespace")]
    NoNamespace(String),
}

impl Error {
    /// A bounded label for `webaccel_operator_reconcile_errors_total{error=...}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Self::Kube(kube::Error::Api(_)) => "api",
            Self::Kube(_) => "client",
            Self::Finalizer(_) => "finalizer",
            Self::NoNamespace(_) => "no_namespace",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
