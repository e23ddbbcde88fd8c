//! Local mode's model placement, as the operator's: ask each live browser's agent about
//! every model a deployment is made of (its own file, or each of its stages), let the
//! engine place them ([`place::plan`], or [`stages::plan_stages`] which keeps stages on
//! browsers of their own), start the loads and unloads, and report each replica (per
//! stage for a model cut into stages).

use std::path::Path;

use futures::future::join_all;
use webaccel_agent_client::{AgentApi, ModelOnAgent};
use webaccel_crds::v1alpha1::{AgentModel, ModelDeployment, ReplicaState, ReplicaStatus};
use webaccel_engine::place::{self, Candidate, Placement};
use webaccel_engine::{ensemble, stages};

use super::super::status::{ModelLine, ReplicaLine, StageLine};
use super::{Desired, Engine, PoolState, resolve_uri};

fn lines(replicas: &[ReplicaStatus]) -> Vec<ReplicaLine> {
    replicas
        .iter()
        .map(|r| ReplicaLine {
            browser: r.pod.clone(),
            state: format!("{:?}", r.state),
            backend: r.backend.clone(),
            reason: r.reason.clone(),
        })
        .collect()
}

fn loaded(replicas: &[ReplicaStatus]) -> i32 {
    let n = replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Loaded)
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// How many browsers the pool has or is about to have, draining ones left out: whether
/// stages can wait for browsers of their own.
fn pool_browsers(state: &PoolState) -> usize {
    let staying = state
        .browsers
        .iter()
        .filter(|b| b.exited.is_none() && b.draining_since.is_none())
        .count();
    let desired = state.memory.last_desired.unwrap_or(0);
    staying.max(usize::try_from(desired).unwrap_or(0))
}

impl Engine {
    pub(super) async fn reconcile_model(
        &mut self,
        name: &str,
        md: &ModelDeployment,
        base: &Path,
        desired: &Desired,
    ) -> ModelLine {
        let pool_name = &md.spec.pool_ref.name;
        let mut line = ModelLine {
            name: name.to_owned(),
            pool: pool_name.clone(),
            desired: md.spec.replicas,
            ..ModelLine::default()
        };
        let models = md.spec.agent_models(name);
        if models.is_empty() {
            line.note = "none of model, stages or ensemble is set".to_owned();
            return line;
        }
        let (Some(pool), Some(state)) = (desired.pools.get(pool_name), self.pools.get(pool_name))
        else {
            line.note = format!("BrowserPool {pool_name} is not running");
            return line;
        };
        let spec_key = format!("{:?}", md.spec);
        let (agents, failures, spec_key_ref, models_ref) =
            (&self.agents, &self.failures, &spec_key, &models);
        // Per browser, one candidate per model; a ready browser whose agent does not
        // answer about a model is left out this round.
        let seen = join_all(state.browsers.iter().filter(|b| b.exited.is_none()).map(
            |b| async move {
                let answers: Vec<Option<ModelOnAgent>> = if b.is_ready() {
                    join_all(
                        models_ref
                            .iter()
                            .map(|m| agents.model(&b.endpoint, &m.name)),
                    )
                    .await
                    .into_iter()
                    .map(Result::ok)
                    .collect()
                } else {
                    vec![Some(ModelOnAgent::Absent); models_ref.len()]
                };
                let held = b.stats.as_ref().map_or(0, |s| s.models.len());
                // An ensemble goes only where its steps are loaded.
                let mut missing = Vec::with_capacity(models_ref.len());
                for m in models_ref.iter() {
                    missing.push(match m.ensemble {
                        Some(e) => {
                            ensemble::missing_step(agents, &b.endpoint, &e.step_models()).await
                        }
                        None => None,
                    });
                }
                models_ref
                    .iter()
                    .zip(answers)
                    .zip(missing)
                    .map(|((m, model), missing)| {
                        let failed_before = failures
                            .get(&(m.name.clone(), b.name.clone()))
                            .filter(|(key, _)| key == spec_key_ref)
                            .map(|(_, why)| why.clone());
                        let mut candidate = Candidate {
                            pod: b.name.clone(),
                            usable: b.is_ready() && b.draining_since.is_none(),
                            backends: b
                                .capabilities
                                .as_ref()
                                .map(|c| c.backends())
                                .unwrap_or_default(),
                            adapter: b.capabilities.as_ref().and_then(|c| c.adapter_label()),
                            model: model?,
                            models_held: held,
                            failed_before,
                        };
                        ensemble::require_steps(&mut candidate, missing.as_deref());
                        Some(candidate)
                    })
                    .collect::<Option<Vec<Candidate>>>()
            },
        ))
        .await;
        let seen: Vec<Vec<Candidate>> = seen.into_iter().flatten().collect();
        let per_model: Vec<Vec<Candidate>> = (0..models.len())
            .map(|i| seen.iter().map(|c| c[i].clone()).collect())
            .collect();
        let (placements, shared): (Vec<Placement>, Option<String>) = if md.spec.stages.is_some() {
            let p = stages::plan_stages(
                md.spec.replicas,
                &md.spec.backends,
                &pool.spec.backends,
                &per_model,
                pool_browsers(state),
            );
            (p.stages, p.shared)
        } else {
            let p = per_model
                .iter()
                .zip(&models)
                .map(|(c, m)| {
                    let mut p =
                        place::plan(md.spec.replicas, &md.spec.backends, &pool.spec.backends, c);
                    if let Some(e) = m.ensemble {
                        ensemble::explain_unplaced(&mut p, &e.step_models());
                    }
                    p
                })
                .collect();
            (p, None)
        };
        for (m, placement) in models.iter().zip(&placements) {
            self.act(m, md, base, placement, &spec_key).await;
        }
        line.loaded = placements
            .iter()
            .map(|p| loaded(&p.replicas))
            .min()
            .unwrap_or(0);
        if md.spec.stages.is_some() {
            line.stages = models
                .iter()
                .zip(&placements)
                .map(|(m, p)| StageLine {
                    model: m.name.clone(),
                    loaded: loaded(&p.replicas),
                    replicas: lines(&p.replicas),
                })
                .collect();
        } else if let Some(p) = placements.first() {
            line.replicas = lines(&p.replicas);
        }
        let notes: Vec<String> = placements
            .iter()
            .filter(|p| p.unplaced > 0)
            .map(|p| {
                p.unplaced_reason
                    .clone()
                    .unwrap_or_else(|| format!("{} replicas cannot be placed yet", p.unplaced))
            })
            .chain(shared)
            .collect();
        line.note = notes.join("; ");
        line
    }

    /// Starts the loads and unloads `placement` asks for `model`.
    async fn act(
        &mut self,
        model: &AgentModel<'_>,
        md: &ModelDeployment,
        base: &Path,
        placement: &Placement,
        spec_key: &str,
    ) {
        let Some(state) = self.pools.get(&md.spec.pool_ref.name) else {
            return;
        };
        let name = &model.name;
        for (browser, backend) in &placement.load {
            let Some(b) = state.browsers.iter().find(|b| &b.name == browser) else {
                continue;
            };
            let spec = model.load_request(&md.spec, resolve_uri(model.uri(), base), *backend);
            tracing::info!(model = %name, %browser, %backend, "loading the model");
            match self.agents.load(&b.endpoint, &spec).await {
                Ok(ModelOnAgent::Failed(why)) => {
                    tracing::warn!(model = %name, %browser, reason = %why, "the model was refused");
                    self.failures
                        .insert((name.clone(), browser.clone()), (spec_key.to_owned(), why));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(model = %name, %browser, error = %e, "load not started; trying again");
                }
            }
        }
        for browser in &placement.unload {
            if let Some(b) = state.browsers.iter().find(|b| &b.name == browser) {
                tracing::info!(model = %name, %browser, "unloading the model");
                if let Err(e) = self.agents.unload(&b.endpoint, name).await {
                    tracing::warn!(model = %name, %browser, error = %e, "unload failed");
                }
            }
        }
    }
}
