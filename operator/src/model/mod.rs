//! The `ModelDeployment` controller: place a model on browsers of its pool through their
//! agents' load API, label the pods that hold it, unload it on delete.

pub mod reconcile;
