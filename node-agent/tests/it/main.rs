//! The node agent's integration tests, one binary: real agents with real Chromium and
//! Firefox, checked against onnxruntime's outputs and driven through every interface
//! (bridge, KServe v2 HTTP and gRPC with stock clients), with faults injected.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // test code: a panic is the failure report

mod bad_input;
mod batching;
mod cli;
mod common;
mod control;
mod drain;
mod ensemble;
mod firefox;
mod generation;
mod grpc;
mod metrics;
mod numerics;
mod operator_client;
mod page_workers;
mod quantized;
mod recovery;
mod reload;
mod stages;
mod startup;
mod transcription;
