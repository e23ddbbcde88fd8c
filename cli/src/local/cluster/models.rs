//! One deployment's round in local mode, as the operator's: the pool's processes as the
//! engine's seats, the engine's placement round ([`deployment::place`]: ask the agents,
//! decide, start the loads and unloads), and the status the operator would write. A
//! deleted deployment is unloaded from every browser that may hold it, so the gateway
//! stops serving it, as the operator's finalizer does.

use std::path::Path;

use k8s_openapi::jiff::Timestamp;
use webaccel_crds::scale;
use webaccel_crds::status::model::{not_ready, status_of};
use webaccel_crds::v1alpha1::{
    AgentModel, ModelDeployment, ModelDeploymentStatus, ReplicaState, ReplicaStatus,
};
use webaccel_engine::deployment::{self, Call, Deployment, Seat, Unit};
use webaccel_engine::model_scale::ModelScaler;

use super::{DeploymentState, Desired, Engine, resolve_uri};

impl DeploymentState {
    fn new(pool: &str) -> Self {
        Self {
            pool: pool.to_owned(),
            models: Vec::new(),
            status: ModelDeploymentStatus::default(),
            scaler: ModelScaler::default(),
        }
    }
}

impl Engine {
    /// Unloads the deployments that are gone from every live browser of the pool they
    /// were in.
    pub(super) async fn unload_deleted(&mut self, desired: &Desired) {
        let gone: Vec<String> = self
            .deployments
            .keys()
            .filter(|name| !desired.models.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            let Some(placed) = self.deployments.remove(&name) else {
                continue;
            };
            let endpoints: Vec<_> = self
                .pools
                .get(&placed.pool)
                .into_iter()
                .flat_map(|p| &p.browsers)
                .filter(|b| b.exited.is_none())
                .map(|b| b.endpoint.clone())
                .collect();
            tracing::info!(model = %name, browsers = endpoints.len(), "deployment deleted: unloading it");
            for (browser, model, e) in
                deployment::unload_everywhere(&self.agents, &endpoints, &placed.models).await
            {
                // A browser that cannot be reached loses the model when it goes anyway.
                tracing::warn!(%model, %browser, error = %e, "unload failed");
            }
        }
    }

    pub(super) async fn reconcile_model(
        &mut self,
        name: &str,
        md: &ModelDeployment,
        base: &Path,
        desired: &Desired,
        waiting: u64,
    ) -> ModelDeploymentStatus {
        let now = Timestamp::now();
        let models = md.spec.agent_models(name);
        let pool_name = &md.spec.pool_ref.name;
        let old = self
            .deployments
            .get(name)
            .map(|d| d.status.clone())
            .unwrap_or_default();
        let mut shown = md.clone();
        shown.status = Some(old.clone());
        // Validate: a model, stages or an ensemble (the schema says so).
        if models.is_empty() {
            let msg = "none of model, stages or ensemble is set".to_owned();
            return self.keep(
                name,
                pool_name,
                &[],
                not_ready(&shown, "InvalidSpec", msg, now),
            );
        }
        let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
        let (Some(pool), Some(state)) = (desired.pools.get(pool_name), self.pools.get(pool_name))
        else {
            let msg = format!("BrowserPool {pool_name} is not running");
            return self.keep(
                name,
                pool_name,
                &names,
                not_ready(&shown, "PoolNotFound", msg, now),
            );
        };

        // Build: the pool's processes as seats.
        let units: Vec<Unit> = models.iter().map(AgentModel::unit).collect();
        let previous: Vec<Vec<ReplicaStatus>> =
            models.iter().map(|m| old.replicas_of(m).to_vec()).collect();
        let budget = pool.spec.memory_budget_bytes();
        // What other deployments hold per browser, from their last rounds (an agent's
        // stats name only the models that have served requests).
        let mut held_elsewhere: std::collections::HashMap<String, usize> = Default::default();
        for (_, d) in self.deployments.iter().filter(|(n, _)| n.as_str() != name) {
            let replicas = d
                .status
                .replicas
                .iter()
                .chain(d.status.stages.iter().flat_map(|s| &s.replicas));
            let mut pods: Vec<&str> = replicas
                .filter(|r| matches!(r.state, ReplicaState::Loaded | ReplicaState::Loading))
                .map(|r| r.pod.as_str())
                .collect();
            pods.sort_unstable();
            pods.dedup();
            for pod in pods {
                *held_elsewhere.entry(pod.to_owned()).or_insert(0) += 1;
            }
        }
        let seats: Vec<Seat<'_>> = state
            .browsers
            .iter()
            .map(|b| Seat {
                name: &b.name,
                endpoint: Some(b.endpoint.clone()),
                askable: b.is_ready(),
                // Cordoned: its models are being loaded elsewhere before it drains.
                draining: b.draining_since.is_some() || b.cordoned_since.is_some(),
                cordoned: b.cordoned_since.is_some(),
                leaving: b.exited.is_some(),
                capabilities: b.capabilities.as_ref(),
                // Models of other deployments it holds or loads, to spread them.
                models_held: held_elsewhere.get(&b.name).copied().unwrap_or(0),
                room: scale::room(budget, b.stats.as_ref()),
            })
            .collect();
        // How many: fixed, or what the model's demand asks for (its agents' answers from
        // the pool's round, and what the gateway holds for it).
        let answers: Vec<scale::Answer<'_>> = state
            .browsers
            .iter()
            .map(|b| (b.name.as_str(), b.stats.as_ref()))
            .collect();
        let scaler = &mut self
            .deployments
            .entry(name.to_owned())
            .or_insert_with(|| DeploymentState::new(pool_name))
            .scaler;
        let wanted = scale::wanted(&shown, scaler, &answers, waiting, now);
        if let Some(a) = &wanted.autoscaler
            && wanted.desired != old.desired_replicas
        {
            tracing::info!(model = %name, from = old.desired_replicas, to = wanted.desired, reason = %a.reason, "scaling the model");
            self.history.record_model(
                "",
                pool_name,
                name,
                old.desired_replicas,
                wanted.desired,
                &a.reason,
            );
        }
        let round = Deployment {
            units: &units,
            staged: md.spec.stages.is_some(),
            replicas: wanted.desired,
            backends: &md.spec.backends,
            pool_backends: &pool.spec.backends,
            pool_desired: state.memory.last_desired.unwrap_or(0),
            previous: &previous,
            same_spec: old.observed_generation == md.metadata.generation,
        };

        // Place: the engine asks the agents, decides, and starts the loads and unloads.
        // A local file the spec gives no digest for is hashed here, so a changed file is
        // reloaded.
        let uris: Vec<String> = models.iter().map(|m| resolve_uri(m.uri(), base)).collect();
        let mut digests = Vec::with_capacity(models.len());
        for (m, uri) in models.iter().zip(&uris) {
            digests.push(match m.source.and_then(|s| s.sha256.clone()) {
                Some(given) => Some(given),
                None => self.digests.of(uri).await,
            });
        }
        let request = |i: usize, backend| {
            let mut spec = models[i].load_request(&md.spec, uris[i].clone(), backend);
            spec.sha256.clone_from(&digests[i]);
            // A relative tokenizer is beside the manifest too.
            if let Some(generation) = &mut spec.generation {
                generation.tokenizer.uri = resolve_uri(&generation.tokenizer.uri, base);
            }
            spec
        };
        let placed = deployment::place(&self.agents, &round, &seats, &request).await;
        for (call, model, browser, e) in &placed.failed_calls {
            match call {
                Call::Load => {
                    tracing::warn!(%model, %browser, error = %e, "load not started; trying again");
                }
                Call::Unload => tracing::warn!(%model, %browser, error = %e, "unload failed"),
            }
        }
        let status = status_of(
            &shown,
            wanted,
            &models,
            &placed.placements,
            placed.shared.as_deref(),
            now,
        );
        self.keep(name, pool_name, &names, status)
    }

    /// Remembers what a deployment's round reported, and returns it.
    fn keep(
        &mut self,
        name: &str,
        pool: &str,
        models: &[String],
        status: ModelDeploymentStatus,
    ) -> ModelDeploymentStatus {
        let state = self
            .deployments
            .entry(name.to_owned())
            .or_insert_with(|| DeploymentState::new(pool));
        state.pool = pool.to_owned();
        // Names its spec no longer has (fewer stages) are kept until the deployment is
        // deleted, so a deletion unloads everything it placed in its pool.
        for m in models {
            if !state.models.contains(m) {
                state.models.push(m.clone());
            }
        }
        state.status = status.clone();
        status
    }
}
