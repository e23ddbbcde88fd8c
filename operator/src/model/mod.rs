//! The `ModelDeployment` controller: place a model (or each stage of a model cut into
//! stages) on browsers of its pool through the engine's placement round
//! (`webaccel_engine::deployment`), label the pods that hold it, unload it on delete; with
//! `spec.autoscaling`, size its replicas by its demand and report each change ([`scale`]).

pub mod reconcile;
pub mod scale;
