//! webaccel's shared vocabulary, with no Kubernetes in it: the error categories, tensors,
//! the binary bridge wire format, the agent's HTTP contract, the KServe v2 / Open
//! Inference Protocol messages, text generation's requests and events (and their
//! OpenAI and Triton forms), the one [`BrowserKind`] and the one [`Backoff`].
//!
//! Everything that crosses a process boundary is one serde type here, used by both
//! sides: the agent writes what the operator, the gateway and local mode read. The
//! custom resources live in `webaccel-crds`, which builds on this crate.

pub mod agent;
pub mod backend;
pub mod backoff;
pub mod browser;
pub mod error;
pub mod generate;
pub mod oip;
pub mod openai;
pub mod precision;
pub mod tensor;
pub mod timing;
pub mod wire;

pub use backend::{Backend, WebNnDevice};
pub use backoff::Backoff;
pub use browser::BrowserKind;
pub use error::ErrorCategory;
pub use precision::Precision;
pub use tensor::{DataType, Tensor, TensorError};
