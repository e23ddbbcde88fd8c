//! webaccel's shared vocabulary: the tensor types, the error categories and the binary
//! wire protocol spoken between clients, the node agent and the in-page runtime.
//!
//! Nothing here depends on Kubernetes, so the gateway, the agent and external clients can
//! use the wire protocol without pulling in kube.

pub mod backend;
pub mod error;
pub mod tensor;
pub mod wire;

pub use backend::{Backend, WebNnDevice};
pub use error::ErrorCategory;
pub use tensor::{DataType, Tensor, TensorError};
