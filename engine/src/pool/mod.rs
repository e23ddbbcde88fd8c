//! A pool's decisions, the same for Kubernetes pods and local processes: what each
//! browser looks like to the engine ([`browser`]), how big the pool should be ([`size`]),
//! which browsers to create, drain, delete or replace ([`decide`]), and the per-pool
//! memory that paces them ([`memory`]).

pub mod browser;
pub mod decide;
pub mod memory;
pub mod size;
