//! The models this agent serves: their specs and their load state ([`ModelRegistry`]),
//! and loading them into a page, again after every browser restart ([`Loader`]).

mod encoder;
mod load;
mod warmup;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;
use tokio::sync::Semaphore;
use webaccel_api::agent::BackendCandidate;
pub use webaccel_api::agent::{BatchingStatus, IoMeta, LoadedModel, ModelDescription, ModelState};
use webaccel_api::{Backend, WebNnDevice};

pub use load::Loader;

use crate::batcher::Batcher;
use crate::config::ModelSpec;
use crate::error::AgentError;
use crate::generation::Generator;
use crate::inspect::Inspection;

/// What `auto` chose for a model: the backend, the WebNN device if any, and the
/// measurements behind the choice.
#[derive(Debug, Clone)]
struct PinnedBackend {
    backend: Backend,
    webnn_device: Option<WebNnDevice>,
    candidates: Option<Vec<BackendCandidate>>,
}

#[derive(Debug)]
pub struct ModelEntry {
    pub spec: ModelSpec,
    state: RwLock<ModelState>,
    /// The backend `auto` picked, reused after a restart instead of measuring again.
    pinned: RwLock<Option<PinnedBackend>>,
    /// Requests of the model in the page at once: `--page-pipeline` per page worker
    /// (onnxruntime-web instance, each running one at a time); the rest queue here.
    pub slot: Arc<Semaphore>,
    /// The dynamic batcher's runners at once: one per page worker, so a batch forms
    /// while the one before runs.
    pub batch_slot: Arc<Semaphore>,
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
    gates_readiness: AtomicBool,
    /// For a decoder loaded for text generation: its tokenizer and layout.
    pub(crate) generator: RwLock<Option<Arc<Generator>>>,
    /// Requests of this model inside the agent now (see [`Outstanding`]).
    outstanding: Arc<AtomicU64>,
}

/// One request of a model counted while it is inside the agent: running, queued for a
/// run or a place in the page, or generating. What the per-model autoscaler sizes by
/// (`ModelStats::outstanding`).
#[derive(Debug)]
pub struct Outstanding(Arc<AtomicU64>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ModelEntry {
    fn new(spec: ModelSpec, runs_at_once: usize, pipeline: usize) -> Self {
        Self {
            batcher: Arc::new(Batcher::new(&spec)),
            spec,
            state: RwLock::new(ModelState::Pending),
            pinned: RwLock::new(None),
            slot: Arc::new(Semaphore::new(runs_at_once.max(1) * pipeline.max(1))),
            batch_slot: Arc::new(Semaphore::new(runs_at_once.max(1))),
            resolved_sha: RwLock::new(None),
            inspected: RwLock::new(None),
            gates_readiness: AtomicBool::new(false),
            generator: RwLock::new(None),
            outstanding: Arc::default(),
        }
    }

    /// Counts a request of this model until the guard is dropped.
    pub fn hold(&self) -> Outstanding {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        Outstanding(self.outstanding.clone())
    }

    /// Requests of this model inside the agent now.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Acquire)
    }

    /// The model's generator, when it is loaded for text generation.
    pub fn generator(&self) -> Option<Arc<Generator>> {
        self.generator.read().clone()
    }

    pub fn state(&self) -> ModelState {
        self.state.read().clone()
    }

    /// Makes readiness wait for this model (see `gates_readiness`).
    pub fn gate_readiness(&self) {
        self.gates_readiness.store(true, Ordering::Release);
    }

    fn gates_readiness(&self) -> bool {
        self.gates_readiness.load(Ordering::Acquire)
    }

    /// Shows the model as loading (a background load is about to start).
    pub fn mark_loading(&self) {
        self.set_state(ModelState::Loading);
    }

    fn set_state(&self, s: ModelState) {
        *self.state.write() = s;
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
    /// Models whose serving copy is being replaced by a load of another spec (a
    /// re-applied deployment, a changed file), with that spec: the old copy serves until
    /// the new one is loaded, and the same replacement asked for again meanwhile (a
    /// controller's next round) is not started twice.
    replacing: parking_lot::Mutex<BTreeMap<String, ModelSpec>>,
    /// Runs of one model the page takes at once: its workers (`--page-workers`).
    runs_at_once: usize,
    /// Requests per worker sent before the one running has answered (`--page-pipeline`).
    pipeline: usize,
}

impl ModelRegistry {
    pub fn new(runs_at_once: usize, pipeline: usize) -> Self {
        Self {
            entries: RwLock::default(),
            replacing: parking_lot::Mutex::default(),
            runs_at_once,
            pipeline,
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.entries.read().get(name).cloned()
    }

    /// The model called `name`, or the 404 error naming it.
    pub fn require(&self, name: &str) -> Result<Arc<ModelEntry>, AgentError> {
        self.get(name)
            .ok_or_else(|| AgentError::ModelNotFound(name.to_owned()))
    }

    pub fn all(&self) -> Vec<Arc<ModelEntry>> {
        self.entries.read().values().cloned().collect()
    }

    /// Adds (or replaces) a model in the pending state; the supervisor or the caller
    /// loads it.
    pub fn insert(&self, spec: ModelSpec) -> Arc<ModelEntry> {
        let entry = Arc::new(ModelEntry::new(spec, self.runs_at_once, self.pipeline));
        self.entries
            .write()
            .insert(entry.spec.name.clone(), entry.clone());
        entry
    }

    /// The entry serving `name` now, if its copy is loaded.
    pub fn serving(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.get(name)
            .filter(|e| matches!(e.state(), ModelState::Loaded(_)))
    }

    /// Starts replacing the serving copy of `spec.name` with `spec`: a new entry, not yet
    /// registered (requests keep going to the old one), that [`Replacement::finish`]
    /// puts in its place. `None` when that same replacement is already under way.
    pub fn begin_replacement(
        self: &Arc<Self>,
        spec: ModelSpec,
        old: &ModelEntry,
    ) -> Option<Replacement> {
        {
            let mut replacing = self.replacing.lock();
            if replacing.get(&spec.name) == Some(&spec) {
                return None;
            }
            replacing.insert(spec.name.clone(), spec.clone());
        }
        let entry = Arc::new(ModelEntry::new(spec, self.runs_at_once, self.pipeline));
        if old.gates_readiness() {
            entry.gate_readiness();
        }
        Some(Replacement {
            registry: self.clone(),
            entry,
        })
    }

    pub fn remove(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.entries.write().remove(name)
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

/// A model's new copy loading beside the one serving (see
/// [`ModelRegistry::begin_replacement`]). Dropped unfinished (the load's task was
/// cancelled), the old copy stays and the replacement may be asked for again.
#[derive(Debug)]
pub struct Replacement {
    registry: Arc<ModelRegistry>,
    pub entry: Arc<ModelEntry>,
}

impl Replacement {
    /// Puts the new entry in the old one's place, whatever its load's outcome: a copy
    /// that failed to load is reported as failed, as a first load would be, and one cut
    /// short by a lost browser is pending, for the next browser. The old entry's
    /// requests already inside the agent finish on it.
    pub fn finish(self) {
        let name = self.entry.spec.name.clone();
        let mut entries = self.registry.entries.write();
        // Unloaded meanwhile: the replacement goes with it.
        if entries.contains_key(&name) {
            entries.insert(name, self.entry.clone());
        }
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        let mut replacing = self.registry.replacing.lock();
        if replacing.get(&self.entry.spec.name) == Some(&self.entry.spec) {
            replacing.remove(&self.entry.spec.name);
        }
    }
}
