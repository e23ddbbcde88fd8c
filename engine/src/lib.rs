//! webaccel-engine: the pool logic shared by the operator (browsers as pods) and local
//! mode (browsers as processes), with no Kubernetes client: the autoscaler, the heal /
//! scale-down / roll / recycle plan, model placement (the stages of a cut model on
//! browsers of their own: [`stages`]), the per-pool memory, the agent's command line,
//! and the agent client over the agent's typed contract.
//!
//! Everything here decides; nothing here acts. A host observes its browsers into
//! [`pool::browser::BrowserView`]s, asks [`pool::decide::plan`] and [`place::plan`] what
//! to do, and does it its own way (applying pods, starting processes).

pub mod autoscale;
pub mod command;
pub mod ensemble;
pub mod place;
pub mod pool;
pub mod stages;
