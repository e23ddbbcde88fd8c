//! The inference front ends webaccel's agent and gateway share, so both speak them
//! identically: KServe v2 / Open Inference Protocol [`http`] (JSON tensors and the binary
//! tensor data extension, as `tritonclient.http` uses by default) and [`grpc`] (the
//! `inference.GRPCInferenceService`, as `tritonclient.grpc` uses it) over one trait,
//! [`InferenceApi`]; text generation's Triton generate extension ([`generate`]) and
//! OpenAI API ([`openai`]) over another, [`generate::GenerationApi`]. Each side
//! implements the traits once.
//!
//! The wire-level body formats live in `webaccel_api::oip`; this crate is the
//! servers: routes, status codes, headers, deadlines and request ids.

pub mod api;
pub mod auth;
pub mod generate;
pub mod grpc;
pub mod http;
pub mod openai;

pub use api::{ApiError, CallOptions, InferenceApi, Inferred};
