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
pub mod generation;
pub mod kube;
pub mod procs;
pub mod rbac;
pub mod triton;
pub mod up;

pub use agent::{AgentProcess, Launch, TOKEN, free_port};

/// The machine, shared by the tests of one test binary (cargo runs the binaries one
/// after another, and a binary's tests two at a time on a 2-core machine).
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// For a test whose assertions hold only on an otherwise quiet machine (time bounds,
/// failover under load, several browsers at once): it runs alone among the tests that
/// take [`alone`] or [`beside`].
pub async fn alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

/// For a test that starts a browser but asserts no timing: it runs beside others like
/// it, never beside one that runs [`alone`].
pub async fn beside() -> tokio::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().await
}
