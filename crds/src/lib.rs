//! webaccel's custom resources and the Kubernetes conventions its parts share: the
//! `webaccel.dev/v1alpha1` types (`BrowserPool`, `ModelDeployment`) from which `crdgen`
//! writes the CRD YAML, the label, annotation and condition names, and how the operator
//! and the gateway find and reach a pool's agents ([`pods`]).
//!
//! The vocabulary without Kubernetes (tensors, errors, the agent contract) is
//! `webaccel-api`; the API server's validation, for local mode, is `webaccel-crds-validate`.

pub mod labels;

pub mod v1alpha1;
