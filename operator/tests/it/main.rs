//! The operator's integration tests, one binary: the controllers against mocked API
//! scenarios checked in order and against the chart's RBAC ([`pool_controller`],
//! [`model_controller`], [`model_autoscale`], [`model_stages`], [`model_ensemble`], [`leader`],
//! [`agent_access`]), the chart as helm renders it ([`chart`]), history rows in a real
//! ClickHouse ([`history`]), and the binary over HTTP with leader handover ([`binary`]).
#![allow(clippy::unwrap_used, clippy::print_stdout)] // test code: a panic is the failure report

mod agent_access;
mod binary;
mod chart;
mod common;
mod history;
mod leader;
mod model_autoscale;
mod model_controller;
mod model_ensemble;
mod model_stages;
mod pool_controller;
mod pool_roll;
