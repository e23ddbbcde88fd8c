//! What the operator knows of the cluster: one watch cache (reflector store) per kind it
//! reads. Reconciles and the agent poller read these, never the API server: a settled pool
//! costs no request at all. Each store is shared, so both controllers are woken by the same
//! watch instead of opening one each.
//!
//! Objects are slimmed before they are stored (no managed fields, no pod spec), which keeps
//! 10,000 browser pods in a few tens of MiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use webaccel_crds::labels;
use webaccel_crds::v1alpha1::{BrowserPool, ModelDeployment};

/// The kinds the operator caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pools,
    Models,
    Pods,
    Secrets,
    Services,
    Pdbs,
}

const KINDS: usize = 6;

/// Which stores have their first full list (a watch cache is trusted only after it).
#[derive(Debug, Default)]
pub struct Synced([AtomicBool; KINDS]);

impl Synced {
    pub fn mark(&self, kind: Kind) {
        self.0[kind as usize].store(true, Ordering::SeqCst);
    }

    pub fn all(&self) -> bool {
        self.0.iter().all(|f| f.load(Ordering::SeqCst))
    }
}

/// The readers, shared by the reconciles and the poller.
#[derive(Clone)]
pub struct Stores {
    pub pools: Store<BrowserPool>,
    pub models: Store<ModelDeployment>,
    pub pods: Store<Pod>,
    pub secrets: Store<Secret>,
    pub services: Store<Service>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub synced: Arc<Synced>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("pools", &self.pools.len())
            .field("pods", &self.pods.len())
            .finish_non_exhaustive()
    }
}

/// The writers, driven by the reflectors (or, in tests, by hand).
pub struct Writers {
    pub pools: Writer<BrowserPool>,
    pub models: Writer<ModelDeployment>,
    pub pods: Writer<Pod>,
    pub secrets: Writer<Secret>,
    pub services: Writer<Service>,
    pub pdbs: Writer<PodDisruptionBudget>,
    pub synced: Arc<Synced>,
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writers").finish_non_exhaustive()
    }
}

impl Stores {
    /// Shared stores for the live controllers; `buffer` bounds each subscriber's backlog.
    pub fn shared(buffer: usize) -> (Self, Writers) {
        Self::build(Some(buffer))
    }

    /// Plain stores that a test fills by hand; they count as synced from the start.
    pub fn local() -> (Self, Writers) {
        let (stores, writers) = Self::build(None);
        for k in [
            Kind::Pools,
            Kind::Models,
            Kind::Pods,
            Kind::Secrets,
            Kind::Services,
            Kind::Pdbs,
        ] {
            stores.synced.mark(k);
        }
        (stores, writers)
    }

    /// One store per kind, shared (with that backlog bound) or plain.
    fn build(shared: Option<usize>) -> (Self, Writers) {
        fn store<K>(shared: Option<usize>) -> (Store<K>, Writer<K>)
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            match shared {
                Some(buffer) => reflector::store_shared(buffer),
                None => reflector::store(),
            }
        }
        let (pools, pools_w) = store(shared);
        let (models, models_w) = store(shared);
        let (pods, pods_w) = store(shared);
        let (secrets, secrets_w) = store(shared);
        let (services, services_w) = store(shared);
        let (pdbs, pdbs_w) = store(shared);
        let synced = Arc::new(Synced::default());
        (
            Self {
                pools,
                models,
                pods,
                secrets,
                services,
                pdbs,
                synced: synced.clone(),
            },
            Writers {
                pools: pools_w,
                models: models_w,
                pods: pods_w,
                secrets: secrets_w,
                services: services_w,
                pdbs: pdbs_w,
                synced,
            },
        )
    }

    /// Whether every store has its first full list: before that, a missing pod may only be
    /// one the list has not reached yet, and nothing may be decided from it.
    pub fn synced(&self) -> bool {
        self.synced.all()
    }

    pub fn pool(&self, ns: &str, name: &str) -> Option<Arc<BrowserPool>> {
        self.pools.get(&ObjectRef::new(name).within(ns))
    }

    /// The browser pods of pool `pool` in `ns`, by name.
    pub fn pods_of(&self, ns: &str, pool: &str) -> Vec<Arc<Pod>> {
        let mut pods = self.pods.state_filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns)
                && p.labels().get(labels::POOL).map(String::as_str) == Some(pool)
        });
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        pods
    }

    pub fn secret(&self, ns: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&ObjectRef::new(name).within(ns))
    }

    pub fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(ns))
    }

    pub fn pdb(&self, ns: &str, name: &str) -> Option<Arc<PodDisruptionBudget>> {
        self.pdbs.get(&ObjectRef::new(name).within(ns))
    }

    /// The ModelDeployments placed on pool `pool` in `ns`, whole.
    pub fn deployments_in(&self, ns: &str, pool: &str) -> Vec<Arc<ModelDeployment>> {
        self.models.state_filter(|m| {
            m.metadata.namespace.as_deref() == Some(ns) && m.spec.pool_ref.name == pool
        })
    }

    /// The ModelDeployments placed on pool `pool` in `ns`.
    pub fn models_of(&self, ns: &str, pool: &str) -> Vec<ObjectRef<ModelDeployment>> {
        self.models
            .state_filter(|m| {
                m.metadata.namespace.as_deref() == Some(ns) && m.spec.pool_ref.name == pool
            })
            .iter()
            .map(|m| ObjectRef::from_obj(&**m))
            .collect()
    }
}

/// A pod as the operator keeps it: metadata without managed fields, no spec, and of the
/// status only what the pool engine reads (phase, IP, conditions, restarts and waiting
/// reasons).
pub fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.spec = None;
    if let Some(s) = pod.status.take() {
        pod.status = Some(PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            conditions: s.conditions.map(|c| {
                c.into_iter()
                    .filter(|c| c.type_ == "Ready")
                    .map(|mut c| {
                        c.message = None;
                        c
                    })
                    .collect()
            }),
            container_statuses: s.container_statuses.map(|cs| {
                cs.into_iter()
                    .map(|c| ContainerStatus {
                        name: c.name,
                        ready: c.ready,
                        restart_count: c.restart_count,
                        state: c.state,
                        ..ContainerStatus::default()
                    })
                    .collect()
            }),
            ..PodStatus::default()
        });
    }
}

/// Any object without its managed fields and the last-applied annotation.
pub fn slim<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}
