//! Client-side validation as the API server does it, one test binary.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // test code: a panic is the failure report

mod rules;
mod validate;
