//! The `ModelDeployment` controller: place a model (or each stage of a model cut into
//! stages) on browsers of its pool through their agents' load API, label the pods that
//! hold it, unload it on delete.

pub mod look;
pub mod reconcile;
pub mod status;
