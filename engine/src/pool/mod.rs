//! A pool's decisions, the same for Kubernetes pods and local processes: what each
//! browser looks like to the engine ([`browser`]), which to create, drain, delete or
//! replace ([`decide`]), the per-pool memory that paces them ([`memory`]), and what makes a
//! browser out of date ([`template`]).

pub mod browser;
pub mod decide;
pub mod memory;
pub mod size;
pub mod template;
