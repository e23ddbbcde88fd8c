//! webaccel-analytics against a real ClickHouse server (and chdb for modern SQL), one
//! test binary.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // test code: a panic is the failure report

mod common;
mod local_server;
mod migrations;
mod modern_sql;
mod queries;
mod writer;
