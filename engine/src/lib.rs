//! webaccel-engine: the decisions shared by the operator (browsers as pods) and local
//! mode (browsers as processes), with no Kubernetes and no HTTP client: the autoscaler,
//! the heal / scale-down / roll / recycle plan, model placement (the stages of a cut
//! model on browsers of their own: [`stages`]; ensembles where their steps are:
//! [`ensemble`]) and the per-pool memory.
//!
//! Everything here decides; nothing here acts. A host observes its browsers into
//! [`pool::browser::BrowserView`]s, asks [`pool::decide::plan`] and [`place::plan`] what
//! to do, and does it its own way (applying pods, starting processes). The policies it
//! decides with ([`policy`]) and the replica states it reports ([`replica`]) are the
//! types the custom resources embed.

pub mod autoscale;
pub mod deployment;
pub mod ensemble;
pub mod model_scale;
pub mod place;
pub mod policy;
pub mod pool;
pub mod replica;
pub mod stages;
