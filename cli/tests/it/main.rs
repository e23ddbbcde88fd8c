//! The `webaccel` command's integration tests, one binary: local mode end to end with
//! real agents and Chromium ([`up`], [`ensemble`], [`sharded`]), Chromium against Firefox
//! recommended from real ClickHouse rows ([`browsers`]), the analysis commands
//! ([`analysis`], [`report_chart`]) and `webaccel shard` ([`shard`]).
#![allow(clippy::unwrap_used, clippy::print_stdout)] // test code: a panic is the failure report

mod analysis;
mod autoscale;
mod browsers;
mod common;
mod ensemble;
mod report_chart;
mod shard;
mod sharded;
mod supervised;
mod up;
