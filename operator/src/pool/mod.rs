//! The `BrowserPool` controller: build, decide, apply, report.

pub mod apply;
pub mod build;
pub mod observe;
pub mod reconcile;
pub mod status;
