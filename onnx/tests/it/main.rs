//! webaccel-onnx on real models, checked against onnxruntime, one test binary.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // test code: a panic is the failure report

mod common;
mod precision;
mod shard;
