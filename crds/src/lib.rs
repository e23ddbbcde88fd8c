//! webaccel's custom resources and the Kubernetes conventions its parts share: the
//! `webaccel.dev/v1alpha1` types (`BrowserPool`, `ModelDeployment`) from which `crdgen`
//! writes the CRD YAML, the label, annotation and condition names, how a pool's agents
//! run ([`agent`]: their command line) and are found and reached on Kubernetes
//! ([`pods`]: selector, token Secret, port, URL, readiness), what makes a browser out of
//! date ([`template`]), and the statuses both hosts report ([`status`]).
//!
//! The policies inside the specs (autoscaling, healing, recycling) and the replica
//! states are the engine's own types (`webaccel-engine`, no Kubernetes), embedded here,
//! so the engine decides with exactly what the resource says. The vocabulary without
//! Kubernetes (tensors, errors, the agent contract) is `webaccel-api`; the API server's
//! validation, for local mode, is `webaccel-crds-validate`.

pub mod agent;
pub mod labels;
pub mod pods;
pub mod scale;
pub mod status;
pub mod template;
pub mod v1alpha1;
