//! The KServe v2 / Open Inference Protocol servers webaccel's agent and gateway share, so
//! both speak it identically: [`http`] (JSON tensors and the binary tensor data
//! extension, as `tritonclient.http` uses by default) and [`grpc`] (the
//! `inference.GRPCInferenceService`, as `tritonclient.grpc` uses it) over one trait,
//! [`InferenceApi`], which each implements once.
//!
//! The wire-level body formats live in `webaccel_api::oip`; this crate is the
//! servers: routes, status codes, headers, deadlines and request ids.

pub mod api;
pub mod auth;
pub mod grpc;
pub mod http;

pub use api::{ApiError, CallOptions, InferenceApi, Inferred};
