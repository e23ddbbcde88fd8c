//! Loading models into a page: fetch (through the cache), inspect the graph, ask the page
//! to create the sessions, and keep the outcome in the model's state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use webaccel_api::agent::Ensemble;
use webaccel_api::{Backend, agent::backend_of};

use super::{BatchingStatus, LoadedModel, ModelEntry, ModelRegistry, ModelState, PinnedBackend};
use crate::batcher;
use crate::cache::ModelCache;
use crate::error::AgentError;
use crate::inspect::{self, Inspection};
use crate::page::PageLink;
use crate::page::protocol::{CallError, ExternalDataFile, Load, RegisterEnsemble, Retain};
use crate::stats::Stats;

/// What loading models into a page needs, and no more: the registry (an ensemble reads
/// its step models from it), the file cache, the stats a load reports to, and the bound
/// on one load. Cheap to clone: the supervisor's loops keep one.
#[derive(Debug, Clone)]
pub struct Loader {
    pub models: Arc<ModelRegistry>,
    pub cache: ModelCache,
    pub stats: Arc<Stats>,
    /// How long one model's load may take (`--load-timeout`).
    pub timeout: Duration,
    /// Requests sent through the page after a load, before it counts as loaded
    /// (`--warmup-requests`; see [`super::warmup`]).
    pub warmup_requests: usize,
}

impl Loader {
    /// Loads every pending model into a page that is taking over, one after another.
    /// Models a standby page preloaded come back at once; sessions it holds for models
    /// removed since are released.
    pub async fn reload_all(&self, link: &PageLink) {
        for e in self.models.in_load_order() {
            if matches!(e.state(), ModelState::Pending)
                && let Err(err) = self.load_into(link, &e).await
            {
                tracing::error!(model = %e.spec.name, error = %err, "model failed to load");
            }
        }
        // An encoder-decoder's encoder is a page model of its own.
        let names: Vec<String> = self
            .models
            .all()
            .iter()
            .flat_map(|e| {
                [
                    e.spec.name.clone(),
                    crate::generation::encoder_page_model(&e.spec.name),
                ]
            })
            .collect();
        if let Err(CallError::Refused(e)) = link.call(Retain { names }).await {
            tracing::warn!(error = %e, "releasing stale sessions failed");
        }
    }

    /// Loads the models that are serving into a standby page, without touching their
    /// state, so that switching to it later finds them compiled and warm.
    pub async fn preload(&self, link: &PageLink) {
        for e in self.models.in_load_order() {
            if matches!(e.state(), ModelState::Loaded(_))
                && let Err(err) = self.load_steps(link, &e).await
            {
                tracing::warn!(model = %e.spec.name, error = %err, "preloading into the standby browser failed");
            }
        }
    }

    /// Fetches a model and loads it into the page behind `link`; the entry's state
    /// follows.
    pub async fn load_into(
        &self,
        link: &PageLink,
        entry: &ModelEntry,
    ) -> Result<LoadedModel, AgentError> {
        entry.set_state(ModelState::Loading);
        let before = crate::procmem::browsers_bytes_now();
        let mut result = tokio::time::timeout(self.timeout, self.load_steps(link, entry))
            .await
            .unwrap_or_else(|_| {
                Err(AgentError::ModelLoad(format!(
                    "loading model '{}' took longer than {:?}",
                    entry.spec.name, self.timeout
                )))
            });
        // What the load (session, weights, warm-up) added to the browsers' memory. Loads
        // run one at a time per page; a request served meanwhile may add a little.
        if let (Ok(m), Some(before)) = (&mut result, before) {
            m.memory_bytes =
                crate::procmem::browsers_bytes_now().map(|after| after.saturating_sub(before));
        }
        match &result {
            Ok(m) => {
                tracing::info!(model = %entry.spec.name, backend = %m.backend, create_ms = m.create_ms, warmup_ms = ?m.warmup_ms, "model loaded");
                match m.batching.as_deref() {
                    Some(BatchingStatus {
                        reason: None,
                        max_batch_size,
                        max_queue_delay_us,
                        ..
                    }) => {
                        tracing::info!(model = %entry.spec.name, max_batch_size, max_queue_delay_us, "dynamic batching on");
                    }
                    Some(BatchingStatus {
                        reason: Some(reason),
                        ..
                    }) => {
                        tracing::warn!(model = %entry.spec.name, %reason, "dynamic batching refused: requests run one at a time");
                    }
                    None => {}
                }
                self.stats.model_loaded(&entry.spec.name, m);
                entry.set_state(ModelState::Loaded(Box::new(m.clone())));
                entry.gate_readiness();
            }
            // The browser went away mid-load: try again in the next one.
            Err(AgentError::Browser { .. }) => entry.set_state(ModelState::Pending),
            Err(e) => entry.set_state(ModelState::Failed {
                reason: e.to_string(),
            }),
        }
        result
    }

    async fn load_steps(
        &self,
        link: &PageLink,
        entry: &ModelEntry,
    ) -> Result<LoadedModel, AgentError> {
        let spec = &entry.spec;
        if let Some(ensemble) = &spec.ensemble {
            return self.load_ensemble(link, &spec.name, ensemble).await;
        }
        let started = Instant::now();
        let known_sha = spec
            .sha256
            .clone()
            .or_else(|| entry.resolved_sha.read().clone());
        let cached = self
            .cache
            .get(&spec.uri, known_sha.as_deref())
            .await
            .map_err(|e| AgentError::ModelLoad(format!("model '{}': {e}", spec.name)))?;
        *entry.resolved_sha.write() = Some(cached.sha256.clone());
        let inspection = self.inspect_file(entry, &cached.sha256).await?;
        let detected = &inspection.precision;
        if let Some(wanted) = spec.precision
            && wanted != detected.precision
        {
            return Err(AgentError::ModelLoad(format!(
                "model '{}': the spec asks for precision {wanted} but the file is {} ({})",
                spec.name, detected.precision, detected.reason
            )));
        }
        let fetch_ms = if cached.hit {
            0.0
        } else {
            started.elapsed().as_secs_f64() * 1e3
        };
        let pinned = entry.pinned.read().clone();
        let (backend, webnn_device) = match &pinned {
            Some(p) => (p.backend, p.webnn_device.unwrap_or(spec.webnn_device)),
            None => (spec.backend, spec.webnn_device),
        };
        // Backends that would answer wrongly: refused when asked for, skipped by `auto`.
        let mut avoid = std::collections::BTreeMap::new();
        if let Some(defect) = inspection.webgpu_hazard(Some(link.capabilities())) {
            if backend == Backend::Webgpu {
                return Err(AgentError::ModelLoad(format!(
                    "model '{}' cannot run on webgpu: {defect}; use backend wasm",
                    spec.name
                )));
            }
            avoid.insert("webgpu".to_owned(), defect);
        }
        let external_data = self
            .external_data(link, &spec.uri, &inspection.external_data)
            .await
            .map_err(|e| AgentError::ModelLoad(format!("model '{}': {e}", spec.name)))?;
        let generator = match &spec.generation {
            None => None,
            Some(generation) => {
                let layout = inspection.decoder.clone().map_err(|e| {
                    AgentError::ModelLoad(format!(
                        "model '{}' cannot generate text: {e}",
                        spec.name
                    ))
                })?;
                let made =
                    crate::generation::load::generator(&self.cache, &spec.uri, layout, generation)
                        .await
                        .map_err(|e| {
                            AgentError::ModelLoad(format!(
                                "model '{}' cannot generate text: {e}",
                                spec.name
                            ))
                        })?;
                Some(Arc::new(made))
            }
        };
        let mut generation = generator.as_ref().map(|g| g.page_config());
        if let (Some(g), Some(page)) = (&generator, &mut generation)
            && g.layout.cross_attention
        {
            let encoder = self
                .load_encoder(link, spec, backend, webnn_device, &avoid, g)
                .await?;
            page.encoder_model = Some(encoder);
        }
        let load = Load {
            name: spec.name.clone(),
            url: format!("/page/models/{}?s={}", cached.sha256, link.secret()),
            backend,
            webnn_device,
            warmup: spec.warmup,
            avoid,
            external_data,
            generation,
        };
        let reply = link.call(load).await.map_err(|e| match e {
            CallError::Refused(reason) => AgentError::ModelLoad(format!(
                "model '{}' was refused by the runtime: {reason}",
                spec.name
            )),
            CallError::Failed(e) => e,
        })?;
        link.observe_load(&reply);
        let mut path_warmup = None;
        if spec.warmup && generator.is_none() && self.warmup_requests > 0 {
            match super::warmup::warm_path(link, &spec.name, &reply.inputs, self.warmup_requests)
                .await
            {
                Ok(w) => {
                    tracing::debug!(model = %spec.name, requests = w.requests, first_ms = w.first_ms, last_ms = w.last_ms, "request path warmed");
                    path_warmup = Some(w);
                }
                Err(e) => {
                    tracing::warn!(model = %spec.name, error = %e, "warming the request path stopped; serving anyway");
                }
            }
        }
        let kv_reserve_bytes = generator.as_ref().map(|g| g.kv_reserve_bytes());
        *entry.generator.write() = generator;
        let batching = batcher::status_for(spec, &reply.inputs, &reply.outputs).map(Box::new);
        let model = LoadedModel {
            sha256: cached.sha256,
            bytes: cached.bytes,
            backend: reply.backend.clone(),
            precision: Some(detected.precision),
            precision_reason: Some(detected.reason.clone()),
            inputs: reply.inputs,
            outputs: reply.outputs,
            fetch_ms,
            page_fetch_ms: reply.fetch_ms,
            create_ms: reply.create_ms,
            warmup_ms: reply.warmup_ms,
            steady_ms: reply.steady_ms,
            path_warmup,
            candidates: pinned.and_then(|p| p.candidates).or(reply.candidates),
            batching,
            memory_bytes: None,
            kv_reserve_bytes,
        };
        if spec.backend == Backend::Auto
            && let Some((backend, webnn_device)) = backend_of(&reply.backend)
        {
            *entry.pinned.write() = Some(PinnedBackend {
                backend,
                webnn_device,
                candidates: model.candidates.clone(),
            });
        }
        Ok(model)
    }

    /// The files beside the model at `model_uri` holding tensors its graph keeps outside
    /// it (`files`), fetched through the cache, as the page fetches them.
    pub(super) async fn external_data(
        &self,
        link: &PageLink,
        model_uri: &str,
        files: &[String],
    ) -> Result<Vec<ExternalDataFile>, String> {
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            let uri = crate::cache::sibling(model_uri, file);
            let data = self
                .cache
                .get(&uri, None)
                .await
                .map_err(|e| format!("its external data file '{file}': {e}"))?;
            out.push(ExternalDataFile {
                path: file.clone(),
                url: format!("/page/models/{}?s={}", data.sha256, link.secret()),
            });
        }
        Ok(out)
    }

    /// What the cached file `sha256`'s graph says (off the async threads: a large model
    /// takes a moment to decode). A file that is not an ONNX model is refused here with
    /// the parser's reason, before the browser spends time on it.
    async fn inspect_file(
        &self,
        entry: &ModelEntry,
        sha256: &str,
    ) -> Result<Arc<Inspection>, AgentError> {
        if let Some((sha, seen)) = &*entry.inspected.read()
            && sha == sha256
        {
            return Ok(seen.clone());
        }
        let path = self.cache.path_for(sha256);
        let name = &entry.spec.name;
        let inspection = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path)?;
            inspect::inspect(&bytes)
        })
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))?
        .map_err(|e| AgentError::ModelLoad(format!("model '{name}' was refused: {e}")))?;
        let inspection = Arc::new(inspection);
        *entry.inspected.write() = Some((sha256.to_owned(), inspection.clone()));
        Ok(inspection)
    }

    /// Registers an ensemble in the page: its step models must be loaded here already;
    /// the plan (inputs, outputs, the tensors that stay in the page) comes from their
    /// metadata.
    async fn load_ensemble(
        &self,
        link: &PageLink,
        name: &str,
        ensemble: &Ensemble,
    ) -> Result<LoadedModel, AgentError> {
        let started = Instant::now();
        let refused = |why: String| AgentError::ModelLoad(format!("ensemble '{name}': {why}"));
        let mut steps = Vec::with_capacity(ensemble.steps.len());
        for step in &ensemble.steps {
            let model = self.models.get(&step.model).ok_or_else(|| {
                refused(format!("step model '{}' is not on this agent", step.model))
            })?;
            if model.spec.ensemble.is_some() {
                return Err(refused(format!(
                    "step '{}' is itself an ensemble",
                    step.model
                )));
            }
            let loaded = model.loaded().map_err(|_| {
                refused(format!(
                    "step model '{}' is not loaded (it is {})",
                    step.model,
                    model.state().name()
                ))
            })?;
            steps.push(loaded);
        }
        let io = ensemble
            .plan(
                &steps
                    .iter()
                    .map(|m| (&m.inputs[..], &m.outputs[..]))
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| refused(e.to_string()))?;
        // The steps' backends, in order and once each: `wasm`, or `wasm+webgpu`.
        let mut backends: Vec<&str> = Vec::new();
        for m in &steps {
            if !backends.contains(&m.backend.as_str()) {
                backends.push(&m.backend);
            }
        }
        let backend = backends.join("+");
        let register = RegisterEnsemble {
            name: name.to_owned(),
            steps: ensemble.steps.clone(),
            outputs: ensemble.outputs.clone(),
            backend: backend.clone(),
        };
        link.call(register).await.map_err(|e| match e {
            CallError::Refused(reason) => refused(format!("refused by the runtime: {reason}")),
            CallError::Failed(e) => e,
        })?;
        tracing::info!(ensemble = %name, steps = steps.len(), intermediates = ?io.intermediates, "ensemble registered");
        Ok(LoadedModel {
            sha256: String::new(),
            bytes: 0,
            backend,
            precision: None,
            precision_reason: None,
            inputs: io.inputs,
            outputs: io.outputs,
            fetch_ms: 0.0,
            page_fetch_ms: 0.0,
            create_ms: started.elapsed().as_secs_f64() * 1e3,
            warmup_ms: None,
            steady_ms: None,
            path_warmup: None,
            candidates: None,
            batching: None,
            memory_bytes: None,
            kv_reserve_bytes: None,
        })
    }
}
