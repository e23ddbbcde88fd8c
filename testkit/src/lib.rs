//! webaccel's test kit (`publish = false`): what the tests and benchmarks of every crate
//! share, so there is one of each. Real agent processes with their browsers ([`agent`]),
//! the test models and their onnxruntime references ([`fixtures`]), one fake Kubernetes
//! API server ([`kube`]), the chart's RBAC rules ([`rbac`]), processes read from `/proc`
//! ([`procs`]), and a `webaccel up` driven from outside ([`up`]).
//!
//! Everything here fails loudly: a panic is the test's failure report.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    missing_debug_implementations
)]

pub mod agent;
pub mod fixtures;
pub mod kube;
pub mod procs;
pub mod rbac;
pub mod up;

pub use agent::{AgentProcess, Launch, TOKEN, free_port};
