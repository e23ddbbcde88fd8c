//! A pool's decisions, the same for Kubernetes pods and local processes: what each
//! browser looks like to the engine ([`browser`]), how big the pool should be ([`size`]),
//! which browsers to create, drain, delete or replace ([`decide`]), the per-pool
//! memory that paces them ([`memory`]), and one whole round of them ([`round`]).

pub mod browser;
pub mod decide;
pub mod memory;
pub mod round;
pub mod size;
