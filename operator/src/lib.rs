//! webaccel-operator: the controllers that turn `BrowserPool` and `ModelDeployment`
//! resources into browser pods, keep them healthy, size them by load, and place models.

pub mod context;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod poll;
pub mod pool;
pub mod proxy;
pub mod run;
pub mod stores;
