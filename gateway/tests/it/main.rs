//! The gateway's integration tests, one binary: over real agents ([`fleet`],
//! [`ensemble`]) and against the test kit's fake Kubernetes API server
//! ([`kubernetes`], [`kubernetes_stages`]).
#![allow(clippy::unwrap_used, clippy::print_stdout)] // test code: a panic is the failure report

mod drain;
mod ensemble;
mod fleet;
mod generation;
mod hedge;
mod kubernetes;
mod kubernetes_stages;
mod logs;
mod support;
mod transcription;
