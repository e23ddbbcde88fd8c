//! The agent's shared context (what every handler and the supervisor hold) and the
//! inference path all interfaces share: admit, validate, queue per model, run in the
//! page, record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use webaccel_api::ErrorCategory;
use webaccel_api::generate::{GenerateRequest, GenerationEvent};
use webaccel_api::timing::{Stage, StageTimes, ms};
use webaccel_api::wire::{InferRequest, InferResponse};

use crate::admission::Admission;
pub use crate::batcher::Ran;
use crate::batcher::RunnerContext;
use crate::cache::ModelCache;
use crate::config::{AgentArgs, ModelSpec};
use crate::error::AgentError;
use crate::models::{LoadedModel, Loader, ModelEntry, ModelRegistry};
use crate::page::protocol::{CallError, Unload};
use crate::recorder::{GenerationRecord, InferenceRecord, Recorder};
use crate::stats::Stats;
use crate::supervisor::BrowserSupervisor;
use crate::validate::check_request;

#[derive(Debug)]
pub struct Agent {
    pub args: AgentArgs,
    /// Shared with the supervisor's loops, which run on their own tasks.
    pub browser: Arc<BrowserSupervisor>,
    pub models: Arc<ModelRegistry>,
    pub cache: ModelCache,
    pub admission: Arc<Admission>,
    pub stats: Arc<Stats>,
    /// Rows for ClickHouse (disabled without `--clickhouse-url`).
    pub recorder: Arc<Recorder>,
    /// Bearer tokens accepted (the one from `--token-file`); none disables
    /// authentication.
    pub tokens: webaccel_kserve::auth::Tokens,
}

/// Decrements a gauge when dropped, so every exit path (errors, timeouts) counts.
struct GaugeGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> GaugeGuard<'a> {
    fn new(g: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The rows of a request: its first input's leading dimension (1 without one).
fn rows_of(req: &InferRequest) -> u32 {
    req.inputs
        .first()
        .and_then(|t| t.shape.first())
        .and_then(|&d| u32::try_from(d).ok())
        .unwrap_or(1)
}

impl Agent {
    /// What loading models needs from the agent (see [`Loader`]).
    pub fn loader(&self) -> Loader {
        Loader {
            models: self.models.clone(),
            cache: self.cache.clone(),
            stats: self.stats.clone(),
            timeout: self.args.load_timeout,
            warmup_requests: self.args.warmup_requests,
        }
    }

    /// Runs one inference request end to end, within `timeout` (queueing included).
    /// `arrived`: when its front first saw it (its `receive` stage ends now).
    pub async fn infer(
        &self,
        req: InferRequest,
        timeout: Duration,
        arrived: Instant,
    ) -> Result<InferResponse, AgentError> {
        self.infer_run(req, timeout, arrived)
            .await
            .map(|r| r.response)
    }

    /// [`Agent::infer`], also saying how the run that answered was batched. The
    /// answer's stages gain the agent's own: `receive`, `agent_queue`, `page_link` and
    /// `agent_reply` around the page's.
    pub async fn infer_run(
        &self,
        req: InferRequest,
        timeout: Duration,
        arrived: Instant,
    ) -> Result<Ran, AgentError> {
        let started = Instant::now();
        let model = req.model.clone();
        let bytes_in: usize = req.inputs.iter().map(|t| t.data.len()).sum();
        let batch_size = rows_of(&req);
        let request_id = req.request_id.clone();
        let mut result = self.infer_inner(req, timeout).await;
        let finished = Instant::now();
        if let Ok(ran) = &mut result {
            let stages = &mut ran.response.stages;
            stages.set(Stage::Receive, ms(started - arrived));
            stages.set(
                Stage::AgentQueue,
                ms(ran.hop.sent.saturating_duration_since(started)),
            );
            stages.set(
                Stage::AgentReply,
                ms(finished.saturating_duration_since(ran.hop.answered)),
            );
        }
        // One instant ends the stages and the row's latency, so they add up exactly.
        self.record(
            &model,
            finished - started,
            &result,
            (bytes_in, batch_size),
            request_id.as_deref(),
        );
        match &result {
            Ok(ran) => self
                .stats
                .record(&model, started.elapsed(), Ok(ran.response.compute_ms)),
            // Unknown models get no per-model series (a client could create unbounded
            // label values), only the category counter.
            Err(AgentError::ModelNotFound(_)) => self.stats.error(ErrorCategory::ModelNotFound),
            Err(e) => self
                .stats
                .record(&model, started.elapsed(), Err(e.category())),
        }
        result
    }

    /// Told by a front that it encoded a successful answer: `stages` complete, `send`
    /// included, and `total_ms` from its first sight of the request. Feeds the stage
    /// histograms and the window of the slowest 1%.
    pub fn answered(&self, model: &str, request_id: &str, stages: &StageTimes, total_ms: f64) {
        self.stats
            .stages
            .answered(model, request_id, stages, total_ms);
    }

    async fn infer_inner(&self, req: InferRequest, timeout: Duration) -> Result<Ran, AgentError> {
        let _admitted = self.admission.admit()?;
        let entry = self.models.require(&req.model)?;
        let _held = entry.hold();
        let loaded = entry.loaded()?;
        check_request(&req.model, &loaded, &req, self.args.max_tensor_bytes)?;
        let batching = loaded.batching.as_ref().is_some_and(|b| b.enabled);
        let run = async {
            if batching {
                let ctx = RunnerContext {
                    links: self.browser.link_watch(),
                    stats: self.stats.clone(),
                };
                return entry
                    .batcher
                    .submit(&entry.batch_slot, &ctx, req, timeout)
                    .await;
            }
            let batch_rows = rows_of(&req);
            let _permit = {
                let _queued = GaugeGuard::new(&self.stats.queued);
                entry
                    .slot
                    .acquire()
                    .await
                    .map_err(|_| AgentError::Internal("model slot closed".into()))?
            };
            let _running = GaugeGuard::new(&self.stats.in_flight);
            let link = self.browser.link().ok_or_else(|| {
                AgentError::browser(
                    ErrorCategory::BrowserUnavailable,
                    "the browser is restarting",
                )
            })?;
            link.infer(req).await.map(|run| Ran {
                response: run.response,
                batch_rows,
                batch_requests: 1,
                hop: run.hop,
            })
        };
        let ran = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| AgentError::Deadline(timeout))??;
        check_backend(&loaded, &ran.response)?;
        Ok(ran)
    }

    /// Sends the request's tensors through the page and back without running a model
    /// (see `wire::ECHO_MODEL`): the bridge's floor, for benchmarks. Only with
    /// `--enable-debug-endpoints`; nothing is recorded.
    pub async fn echo(
        &self,
        req: InferRequest,
        timeout: Duration,
    ) -> Result<InferResponse, AgentError> {
        if !self.args.enable_debug_endpoints {
            return Err(AgentError::ModelNotFound(req.model));
        }
        let _admitted = self.admission.admit()?;
        let link = self.browser.link().ok_or_else(|| {
            AgentError::browser(
                ErrorCategory::BrowserUnavailable,
                "the browser is restarting",
            )
        })?;
        tokio::time::timeout(timeout, link.infer(req))
            .await
            .map_err(|_| AgentError::Deadline(timeout))?
            .map(|run| run.response)
    }

    /// Hands the request's figures to the metrics recorder (never waits).
    fn record(
        &self,
        model: &str,
        elapsed: Duration,
        result: &Result<Ran, AgentError>,
        (bytes_in, batch_size): (usize, u32),
        request_id: Option<&str>,
    ) {
        let response = result.as_ref().map(|r| &r.response);
        let Some(entry) = self.models.get(model) else {
            return;
        };
        let loaded = entry.loaded().ok();
        let category = result.as_ref().err().map(|e| e.category().as_str());
        let backend = match (response, &loaded) {
            (Ok(resp), _) => resp.backend.clone(),
            (Err(_), Some(m)) => m.backend.clone(),
            (Err(_), None) => String::new(),
        };
        self.recorder.inference(&InferenceRecord {
            model,
            task: &entry.spec.task,
            precision: loaded
                .as_ref()
                .and_then(|m| m.precision)
                .or(entry.spec.precision)
                .map_or("", webaccel_api::Precision::as_str),
            backend: &backend,
            init_ms: loaded.as_ref().map_or(0.0, |m| m.create_ms),
            compute_ms: response.map_or(0.0, |r| r.compute_ms),
            latency_ms: elapsed.as_secs_f64() * 1e3,
            batch_size,
            dynamic_batch_size: result.as_ref().map_or(0, |r| r.batch_rows),
            bytes_in: bytes_in as u64,
            bytes_out: response.map_or(0, |r| r.outputs.iter().map(|t| t.data.len() as u64).sum()),
            error: category,
            request_id,
            stages: response.map(|r| r.stages).unwrap_or_default(),
        });
    }

    /// Starts a generation: it is checked and tokenized now (a bad request fails here,
    /// as does one the agent cannot take), then runs on a task of its own that sends its
    /// events (tokens as they come, then the end, or an error that ends it) on the
    /// returned channel. Dropping the channel stops the generation at the page's next
    /// step and frees its place.
    pub fn generate(
        self: &Arc<Self>,
        req: GenerateRequest,
        timeout: Duration,
    ) -> Result<mpsc::Receiver<Result<GenerationEvent, AgentError>>, AgentError> {
        let started = Instant::now();
        let result = self.start_generation(req.clone(), started, timeout);
        if let Err(e) = &result {
            match e {
                AgentError::ModelNotFound(_) => self.stats.error(e.category()),
                _ => self.stats.generation_refused(&req.model, e.category()),
            }
        }
        result
    }

    fn start_generation(
        self: &Arc<Self>,
        req: GenerateRequest,
        started: Instant,
        timeout: Duration,
    ) -> Result<mpsc::Receiver<Result<GenerationEvent, AgentError>>, AgentError> {
        let admitted = self.admission.admit_owned()?;
        let entry = self.models.require(&req.model)?;
        let held = entry.hold();
        entry.loaded()?;
        let generator = entry.generator().ok_or_else(|| {
            AgentError::BadRequest(format!(
                "model '{}' does not generate text: it was loaded without a tokenizer (a text-generation deployment names one)",
                req.model
            ))
        })?;
        let prepared = generator.prepare(&req)?;
        let timeout = req
            .timeout_ms
            .map(Duration::from_millis)
            .map_or(timeout, |t| t.min(timeout));
        let deadline = tokio::time::Instant::from_std(started) + timeout;
        // Room for a few steps' events: a slow client slows its own stream only.
        let (events, rx) = mpsc::channel(64);
        let agent = self.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            let _held = held;
            let model = req.model.clone();
            let waited = tokio::select! {
                permit = generator.slots.clone().acquire_owned() => permit.ok(),
                () = events.closed() => None,
                () = tokio::time::sleep_until(deadline) => {
                    let _ = events.send(Err(AgentError::Deadline(timeout))).await;
                    None
                }
            };
            let Some(_slot) = waited else { return };
            let Some(link) = agent.browser.link() else {
                let e = AgentError::browser(
                    ErrorCategory::BrowserUnavailable,
                    "the browser is restarting",
                );
                agent.stats.generation_refused(&model, e.category());
                let _ = events.send(Err(e)).await;
                return;
            };
            let _running = agent.stats.sequence_started(&model);
            let outcome = crate::generation::run::stream(
                generator.clone(),
                link,
                prepared,
                started,
                deadline,
                &events,
            )
            .await;
            agent.stats.generation_finished(&model, &outcome);
            agent.recorder.generation(&GenerationRecord {
                model: &model,
                backend: outcome
                    .end
                    .as_ref()
                    .map_or("", |e| e.timings.backend.as_str()),
                end: outcome.end.as_ref(),
                error: outcome.error.map(ErrorCategory::as_str),
                abandoned: outcome.abandoned,
            });
        });
        Ok(rx)
    }

    /// Adds a model at run time and loads it into the current browser (or leaves it
    /// pending if the browser is restarting; the supervisor will load it).
    ///
    /// A model already serving keeps serving its copy while the new one loads beside it
    /// (the page swaps its session only once the new one is created), so a re-applied
    /// deployment or a changed file costs no request. `None` also when that same
    /// replacement is already under way.
    pub async fn load_model(&self, spec: ModelSpec) -> Result<Option<LoadedModel>, AgentError> {
        spec.validate()
            .map_err(|e| AgentError::BadRequest(e.to_string()))?;
        let Some(link) = self.browser.link() else {
            self.models.insert(spec);
            return Ok(None);
        };
        let Some(serving) = self.models.serving(&spec.name) else {
            let entry = self.models.insert(spec);
            return self.loader().load_into(&link, &entry).await.map(Some);
        };
        let Some(replacement) = self.models.begin_replacement(spec, &serving) else {
            return Ok(None);
        };
        let loaded = self.loader().load_into(&link, &replacement.entry).await;
        replacement.finish();
        loaded.map(Some)
    }

    /// Starts loading a model in the background (`?wait=false`) and gives the entry that
    /// describes it meanwhile: the new one, loading, or the copy serving until its
    /// replacement is loaded.
    pub fn start_loading(self: &Arc<Self>, spec: ModelSpec) -> Result<Arc<ModelEntry>, AgentError> {
        spec.validate()
            .map_err(|e| AgentError::BadRequest(e.to_string()))?;
        // Without a browser up the model stays pending: the supervisor loads it.
        let Some(link) = self.browser.link() else {
            return Ok(self.models.insert(spec));
        };
        let background = self.clone();
        if let Some(serving) = self.models.serving(&spec.name) {
            tokio::spawn(async move {
                // The outcome lands in the new entry's state once it takes over.
                let _ = background.load_model(spec).await;
            });
            return Ok(serving);
        }
        let entry = self.models.insert(spec);
        // Shown as loading at once, not pending, for whoever looks next.
        entry.mark_loading();
        let loading = entry.clone();
        tokio::spawn(async move {
            // The outcome lands in the model's state (loaded, or failed with why).
            let _ = background.loader().load_into(&link, &loading).await;
        });
        Ok(entry)
    }

    /// Removes a model; requests already running on it finish.
    pub async fn unload_model(&self, name: &str) -> Result<(), AgentError> {
        self.models
            .remove(name)
            .ok_or_else(|| AgentError::ModelNotFound(name.to_owned()))?;
        if let Some(link) = self.browser.link() {
            // With an encoder-decoder's encoder, a page model of its own (none: a no-op).
            for name in [name.to_owned(), crate::generation::encoder_page_model(name)] {
                link.call(Unload { name }).await.map_err(|e| match e {
                    CallError::Refused(reason) => AgentError::Internal(reason),
                    CallError::Failed(e) => e,
                })?;
            }
        }
        Ok(())
    }

    /// Ready means: a browser is up, not draining, and every model given at start (or
    /// loaded before a browser restart) is loaded. A model loading for the first time at
    /// run time does not count: the models already served stay in rotation.
    pub fn is_ready(&self) -> bool {
        !self.admission.is_draining() && self.browser.link().is_some() && !self.models.any_loading()
    }
}

/// A request must have run on the backend the model reports; anything else is a bug
/// that would make every figure webaccel records a lie.
fn check_backend(loaded: &LoadedModel, resp: &InferResponse) -> Result<(), AgentError> {
    if resp.backend == loaded.backend {
        Ok(())
    } else {
        Err(AgentError::Internal(format!(
            "model reports backend {} but the page ran it on {}",
            loaded.backend, resp.backend
        )))
    }
}

pub type SharedAgent = Arc<Agent>;
