//! webaccel's shared vocabulary: the tensor types, the error categories and the binary
//! wire protocol spoken between clients, the node agent and the in-page runtime.
//!
//! With the `kube` feature it also holds the custom resources (`v1alpha1`) and the label and
//! condition names the operator and the gateway share. Without it nothing here depends on
//! Kubernetes, so the agent and external clients use the wire protocol without pulling in kube.

pub mod agent;
pub mod backend;
pub mod error;
pub mod kserve;
pub mod labels;
pub mod precision;
pub mod tensor;
#[cfg(feature = "kube")]
pub mod v1alpha1;
pub mod wire;

pub use backend::{Backend, WebNnDevice};
pub use error::ErrorCategory;
pub use precision::Precision;
pub use tensor::{DataType, Tensor, TensorError};
