//! The models this agent serves: their specs, their load state, and loading them into
//! the page (again after every browser restart).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use webaccel_api::Backend;
use webaccel_api::agent::Ensemble;
pub use webaccel_api::agent::{BatchingStatus, IoMeta, LoadedModel, ModelDescription, ModelState};

use crate::agent::Agent;
use crate::batcher::{self, Batcher};
use crate::config::ModelSpec;
use crate::error::AgentError;
use crate::inspect::{self, Inspection};
use crate::page::PageLink;

/// What `auto` chose for a model: the backend, the WebNN device if any, and the
/// measurements behind the choice.
#[derive(Debug, Clone)]
struct PinnedBackend {
    backend: Backend,
    webnn_device: Option<String>,
    candidates: Option<Value>,
}

#[derive(Debug)]
pub struct ModelEntry {
    pub spec: ModelSpec,
    state: RwLock<ModelState>,
    /// The backend `auto` picked, reused after a restart instead of measuring again.
    pinned: RwLock<Option<PinnedBackend>>,
    /// As many runs at once in the page per model as it has workers (onnxruntime-web
    /// instances: each runs one at a time); the rest queue here.
    pub slot: Arc<Semaphore>,
    /// The dynamic batching queue, used when the model loaded with batching enabled.
    pub batcher: Arc<Batcher>,
    /// The file's digest once fetched, so reloads read the cache, not the source.
    resolved_sha: RwLock<Option<String>>,
    /// What the graph of the file with that digest says, read once: a reload after a
    /// browser restart (the recovery path) does not decode the model again.
    inspected: RwLock<Option<(String, Arc<Inspection>)>>,
    /// Whether the agent is unready while this model is not loaded: true for models given
    /// on the command line and for any model once it has loaded (so a browser restart that
    /// must reload it makes the pod unready), false for a model loading for the first time
    /// at run time, which must not take the models already served out of rotation.
    gates_readiness: std::sync::atomic::AtomicBool,
}

impl ModelEntry {
    fn new(spec: ModelSpec, runs_at_once: usize) -> Self {
        Self {
            batcher: Arc::new(Batcher::new(&spec)),
            spec,
            state: RwLock::new(ModelState::Pending),
            pinned: RwLock::new(None),
            slot: Arc::new(Semaphore::new(runs_at_once.max(1))),
            resolved_sha: RwLock::new(None),
            inspected: RwLock::new(None),
            gates_readiness: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> ModelState {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes readiness wait for this model (see `gates_readiness`).
    pub fn gate_readiness(&self) {
        self.gates_readiness
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn gates_readiness(&self) -> bool {
        self.gates_readiness
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Shows the model as loading (a background load is about to start).
    pub fn mark_loading(&self) {
        self.set_state(ModelState::Loading);
    }

    fn set_state(&self, s: ModelState) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    pub fn loaded(&self) -> Result<LoadedModel, AgentError> {
        match self.state() {
            ModelState::Loaded(m) => Ok(*m),
            other => Err(AgentError::ModelNotReady {
                name: self.spec.name.clone(),
                state: other.name().into(),
            }),
        }
    }

    pub fn describe(&self) -> ModelDescription {
        ModelDescription {
            name: self.spec.name.clone(),
            spec: self.spec.clone(),
            status: self.state(),
        }
    }
}

#[derive(Debug, Default)]
pub struct ModelRegistry {
    entries: RwLock<BTreeMap<String, Arc<ModelEntry>>>,
    /// Runs of one model the page takes at once: its workers (`--page-workers`).
    runs_at_once: usize,
}

impl ModelRegistry {
    pub fn new(runs_at_once: usize) -> Self {
        Self {
            entries: RwLock::default(),
            runs_at_once,
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The model called `name`, or the 404 error naming it.
    pub fn require(&self, name: &str) -> Result<Arc<ModelEntry>, AgentError> {
        self.get(name)
            .ok_or_else(|| AgentError::ModelNotFound(name.to_owned()))
    }

    pub fn all(&self) -> Vec<Arc<ModelEntry>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Adds (or replaces) a model in the pending state; the supervisor or the caller
    /// loads it.
    pub fn insert(&self, spec: ModelSpec) -> Arc<ModelEntry> {
        let entry = Arc::new(ModelEntry::new(spec, self.runs_at_once));
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.spec.name.clone(), entry.clone());
        entry
    }

    pub fn remove(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    /// After a browser is lost its sessions are gone: loaded (and loading) models go
    /// back to pending, to be loaded into the next browser.
    pub fn mark_for_reload(&self) {
        for e in self.all() {
            if matches!(e.state(), ModelState::Loaded(_) | ModelState::Loading) {
                e.set_state(ModelState::Pending);
            }
        }
    }

    /// Loads every pending model into a page that is taking over, one after another.
    /// Models a standby page preloaded come back at once; sessions it holds for models
    /// removed since are released.
    pub async fn reload_all(&self, agent: &Agent, link: &PageLink) {
        for e in self.in_load_order() {
            if matches!(e.state(), ModelState::Pending)
                && let Err(err) = load_into(agent, link, &e).await
            {
                tracing::error!(model = %e.spec.name, error = %err, "model failed to load");
            }
        }
        let names: Vec<String> = self.all().iter().map(|e| e.spec.name.clone()).collect();
        if let Ok(Err(e)) = link.control(json!({"op": "retain", "names": names})).await {
            tracing::warn!(error = %e, "releasing stale sessions failed");
        }
    }

    /// Loads the models that are serving into a standby page, without touching their
    /// state, so that switching to it later finds them compiled and warm.
    pub async fn preload(&self, agent: &Agent, link: &PageLink) {
        for e in self.in_load_order() {
            if matches!(e.state(), ModelState::Loaded(_))
                && let Err(err) = load_steps(agent, link, &e).await
            {
                tracing::warn!(model = %e.spec.name, error = %err, "preloading into the standby browser failed");
            }
        }
    }

    /// Every model, ensembles after the models they are made of.
    fn in_load_order(&self) -> Vec<Arc<ModelEntry>> {
        let (ensembles, models): (Vec<_>, Vec<_>) = self
            .all()
            .into_iter()
            .partition(|e| e.spec.ensemble.is_some());
        models.into_iter().chain(ensembles).collect()
    }

    /// Whether any model is still on its way in.
    /// A model readiness waits for is not loaded yet (or again).
    pub fn any_loading(&self) -> bool {
        self.all().iter().any(|e| {
            e.gates_readiness() && matches!(e.state(), ModelState::Pending | ModelState::Loading)
        })
    }
}

/// Fetches a model and loads it into the page behind `link`; the entry's state follows.
pub async fn load_into(
    agent: &Agent,
    link: &PageLink,
    entry: &ModelEntry,
) -> Result<LoadedModel, AgentError> {
    entry.set_state(ModelState::Loading);
    let result = tokio::time::timeout(agent.args.load_timeout, load_steps(agent, link, entry))
        .await
        .unwrap_or_else(|_| {
            Err(AgentError::ModelLoad(format!(
                "loading model '{}' took longer than {:?}",
                entry.spec.name, agent.args.load_timeout
            )))
        });
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
            agent.stats.model_loaded(&entry.spec.name, m);
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
    agent: &Agent,
    link: &PageLink,
    entry: &ModelEntry,
) -> Result<LoadedModel, AgentError> {
    let spec = &entry.spec;
    if let Some(ensemble) = &spec.ensemble {
        return load_ensemble(agent, link, &spec.name, ensemble).await;
    }
    let started = Instant::now();
    let known_sha = spec.sha256.clone().or_else(|| {
        entry
            .resolved_sha
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    });
    let cached = agent
        .cache
        .get(&spec.uri, known_sha.as_deref())
        .await
        .map_err(|e| AgentError::ModelLoad(format!("model '{}': {e}", spec.name)))?;
    *entry
        .resolved_sha
        .write()
        .unwrap_or_else(|p| p.into_inner()) = Some(cached.sha256.clone());
    let inspection = inspect_file(agent, entry, &cached.sha256).await?;
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
    let pinned = entry
        .pinned
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (backend, webnn_device) = match &pinned {
        Some(p) => (p.backend, p.webnn_device.clone()),
        None => (spec.backend, None),
    };
    // Backends that would answer wrongly: refused when asked for, skipped by `auto`.
    let mut avoid = serde_json::Map::new();
    let hazard = inspection.webgpu_hazard(agent.browser.capabilities().as_ref());
    if let Some(defect) = &hazard {
        if backend == Backend::Webgpu {
            return Err(AgentError::ModelLoad(format!(
                "model '{}' cannot run on webgpu: {defect}; use backend wasm",
                spec.name
            )));
        }
        avoid.insert("webgpu".into(), defect.clone().into());
    }
    let op = json!({
        "op": "load",
        "name": spec.name,
        "url": format!("/page/models/{}?s={}", cached.sha256, link.secret()),
        "backend": backend,
        "webnn_device": webnn_device.unwrap_or_else(|| json!(spec.webnn_device).as_str().unwrap_or("cpu").to_owned()),
        "warmup": spec.warmup,
        "avoid": avoid,
    });
    let value = link.control(op).await?.map_err(|reason| {
        AgentError::ModelLoad(format!(
            "model '{}' was refused by the runtime: {reason}",
            spec.name
        ))
    })?;
    let parse_io = |key: &str| serde_json::from_value::<Vec<IoMeta>>(value[key].clone());
    let (inputs, outputs) = match (parse_io("inputs"), parse_io("outputs")) {
        (Ok(i), Ok(o)) => (i, o),
        _ => {
            return Err(AgentError::Internal(format!(
                "page sent bad model metadata: {value}"
            )));
        }
    };
    let backend_label = value["backend"].as_str().unwrap_or_default().to_owned();
    let batching = batcher::status_for(spec, &inputs, &outputs).map(Box::new);
    let model = LoadedModel {
        sha256: cached.sha256,
        bytes: cached.bytes,
        backend: backend_label.clone(),
        precision: Some(detected.precision),
        precision_reason: Some(detected.reason.clone()),
        inputs,
        outputs,
        fetch_ms,
        page_fetch_ms: value["fetch_ms"].as_f64().unwrap_or(0.0),
        create_ms: value["create_ms"].as_f64().unwrap_or(0.0),
        warmup_ms: value["warmup_ms"].as_f64(),
        steady_ms: value["steady_ms"].as_f64(),
        candidates: pinned
            .and_then(|p| p.candidates)
            .or_else(|| Some(value["candidates"].clone()).filter(|c| !c.is_null())),
        batching,
    };
    if spec.backend == Backend::Auto {
        let (b, dev) = match backend_label.split_once(':') {
            Some((b, dev)) => (b.to_owned(), Some(dev.to_owned())),
            None => (backend_label.clone(), None),
        };
        if let Ok(b) = b.parse::<Backend>() {
            *entry.pinned.write().unwrap_or_else(|p| p.into_inner()) = Some(PinnedBackend {
                backend: b,
                webnn_device: dev,
                candidates: model.candidates.clone(),
            });
        }
    }
    Ok(model)
}

/// What the cached file `sha256`'s graph says (off the async threads: a large model
/// takes a moment to decode). A file that is not an ONNX model is refused here with the
/// parser's reason, before the browser spends time on it.
async fn inspect_file(
    agent: &Agent,
    entry: &ModelEntry,
    sha256: &str,
) -> Result<Arc<Inspection>, AgentError> {
    if let Some((sha, seen)) = &*entry.inspected.read().unwrap_or_else(|p| p.into_inner())
        && sha == sha256
    {
        return Ok(seen.clone());
    }
    let path = agent.cache.path_for(sha256);
    let name = &entry.spec.name;
    let inspection = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
        inspect::inspect(&bytes)
    })
    .await
    .map_err(|e| AgentError::Internal(e.to_string()))?
    .map_err(|e| AgentError::ModelLoad(format!("model '{name}' was refused: {e}")))?;
    let inspection = Arc::new(inspection);
    *entry.inspected.write().unwrap_or_else(|p| p.into_inner()) =
        Some((sha256.to_owned(), inspection.clone()));
    Ok(inspection)
}

/// Registers an ensemble in the page: its step models must be loaded here already; the
/// plan (inputs, outputs, the tensors that stay in the page) comes from their metadata.
async fn load_ensemble(
    agent: &Agent,
    link: &PageLink,
    name: &str,
    ensemble: &Ensemble,
) -> Result<LoadedModel, AgentError> {
    let started = Instant::now();
    let refused = |why: String| AgentError::ModelLoad(format!("ensemble '{name}': {why}"));
    let mut steps = Vec::with_capacity(ensemble.steps.len());
    for step in &ensemble.steps {
        let model = agent
            .models
            .get(&step.model)
            .ok_or_else(|| refused(format!("step model '{}' is not on this agent", step.model)))?;
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
        .map_err(refused)?;
    // The steps' backends, in order and once each: `wasm`, or `wasm+webgpu`.
    let mut backends: Vec<&str> = Vec::new();
    for m in &steps {
        if !backends.contains(&m.backend.as_str()) {
            backends.push(&m.backend);
        }
    }
    let backend = backends.join("+");
    let op = json!({
        "op": "ensemble",
        "name": name,
        "steps": ensemble.steps,
        "outputs": ensemble.outputs,
        "backend": backend,
    });
    link.control(op)
        .await?
        .map_err(|reason| refused(format!("refused by the runtime: {reason}")))?;
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
        candidates: None,
        batching: None,
    })
}
