//! The gateway's inference path, which both fronts (HTTP and gRPC) call through
//! `InferenceApi`: wait (bounded) for a browser that holds the model and can take the
//! request, send it over that agent's bridge, and on a retryable failure try another
//! browser after an exponential backoff with full jitter, as long as the retry budget
//! and the request's deadline allow. Non-retryable errors pass through as the agent
//! said them. A model cut into stages goes through each stage that way in turn
//! ([`crate::pipeline`], to which the gateway is the `Route` each stage takes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tower::retry::budget::{Budget as _, TpsBudget};
use webaccel_agent_client::HttpAgents;
use webaccel_api::oip::{ModelMetadata, ModelReady};
use webaccel_api::timing::{Stage, StageTimes, TailWindow, ms};
use webaccel_api::wire::{InferRequest, InferResponse};
use webaccel_api::{Backoff, ErrorCategory};
use webaccel_kserve::{ApiError, CallOptions, InferenceApi, Inferred};

use crate::backend::conn::CallError;
use crate::backend::{Backends, Lease, Pick};
use crate::discovery::Endpoint;
use crate::hedge::{HedgeDelays, HedgePolicy};
use crate::metrics::Metrics;
use crate::pipeline::{Route, Stages};
use crate::prefer::browser_matches;
/// The routing preferences [`Gateway::new`] takes (kept by [`crate::prefer`]).
pub use crate::prefer::{Preference, Preferences};
use crate::queue::Queues;
use crate::record::{Recorder, RequestRecord, Trace};

/// The retry and deadline policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub request_timeout: Duration,
    /// Deadline of one text generation, its whole stream included.
    pub generation_timeout: Duration,
    pub max_attempts: u32,
    pub max_tensor_bytes: usize,
    /// First backoff step (doubled per attempt, full jitter) and its cap.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Hedged requests (see [`crate::hedge`]); `None`: off.
    pub hedge: Option<HedgePolicy>,
}

#[derive(Debug)]
pub struct Gateway {
    pub(crate) backends: Arc<Backends>,
    pub(crate) queues: Arc<Queues>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) policy: Policy,
    pub(crate) budget: TpsBudget,
    recorder: Arc<Recorder>,
    preferences: Preferences,
    /// Asks agents for model metadata.
    pub(crate) metadata: HttpAgents,
    ready: std::sync::atomic::AtomicBool,
    /// Stopping: not ready any more (so endpoints drop it), still serving.
    draining: std::sync::atomic::AtomicBool,
    /// Models deployed, when the discovery source knows them (Kubernetes, local mode).
    deployed: parking_lot::RwLock<Option<Arc<crate::discovery::Deployed>>>,
    /// Models cut into stages, served as pipelines (see [`crate::pipeline`]).
    stages: Stages,
    /// The last minute's successful requests, for the slowest 1%'s breakdown.
    pub tail: TailWindow,
    /// Each model's hedging delay, when hedging is on.
    hedges: Option<HedgeDelays>,
}

/// How the request to one model is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Every input, as the client sent them.
    All,
    /// The inputs the model names among those given (a pipeline stage: the client's
    /// inputs and what the stage before gave).
    Named,
}

pub(crate) fn api_error(e: CallError) -> ApiError {
    ApiError::new(e.category, e.message)
}

impl Gateway {
    pub fn new(
        backends: Arc<Backends>,
        queues: Arc<Queues>,
        metrics: Arc<Metrics>,
        policy: Policy,
        budget: TpsBudget,
        recorder: Arc<Recorder>,
        preferences: Preferences,
    ) -> Self {
        Self {
            backends,
            queues,
            metrics,
            policy,
            budget,
            recorder,
            preferences,
            metadata: HttpAgents::new(Duration::from_secs(30)),
            ready: std::sync::atomic::AtomicBool::new(false),
            draining: std::sync::atomic::AtomicBool::new(false),
            deployed: parking_lot::RwLock::default(),
            stages: Stages::default(),
            tail: TailWindow::default(),
            hedges: policy.hedge.map(HedgeDelays::new),
        }
    }

    /// Follows the models cut into stages the discovery source publishes.
    pub fn set_pipelines(&self, pipelines: Arc<crate::discovery::Pipelines>) {
        self.stages.set(pipelines);
    }

    /// The stages of `model`, when it is cut into stages.
    pub fn pipeline(&self, model: &str) -> Option<Vec<String>> {
        self.stages.of(model)
    }

    /// Notes the models the discovery source says are deployed.
    pub fn set_deployed(&self, deployed: Arc<crate::discovery::Deployed>) {
        *self.deployed.write() = Some(deployed);
    }

    /// Whether requests for `model` may wait for a browser. Where the discovery source
    /// knows the deployments, a model is known while it is deployed (or a stage of a
    /// deployed pipeline) or a browser serves it: a deleted deployment is unknown at
    /// once. Without that knowledge (agents given by URL), a model any browser has held
    /// stays known. Any other model is unknown (404 at once).
    fn is_known(&self, model: &str) -> bool {
        self.stages.is_stage(model)
            || match &*self.deployed.read() {
                Some(deployed) => deployed.contains(model) || self.backends.serves(model),
                None => self.metrics.is_known(model),
            }
    }

    /// Marks the gateway ready (discovery has reported the fleet once).
    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    /// From now on not ready, for good; requests are still served.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether [`Self::start_draining`] was called.
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn prefers(&self, model: &str) -> impl Fn(&Endpoint) -> bool + use<> {
        let model = model.to_owned();
        let preference = self.preferences.read().get(&model).cloned();
        move |ep: &Endpoint| {
            preference.as_ref().is_some_and(|p| {
                browser_matches(&p.browser, &ep.browser)
                    && ep.backends.get(&model) == Some(&p.backend)
            })
        }
    }

    /// A browser for `model`, waiting (within the deadline) while none can take the
    /// request. Waiting takes a place in the model's bounded queue: when it is full, the
    /// answer is 429 with Retry-After.
    pub(crate) async fn acquire(
        &self,
        model: &str,
        queue_as: &str,
        tried: &[String],
        deadline: Instant,
    ) -> Result<Lease, ApiError> {
        let prefer = self.prefers(model);
        let mut place = None;
        loop {
            // Registered before looking, so a slot freed in between is not missed.
            let changed = self.backends.capacity_changed();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let pick = self.backends.pick(model, tried, &prefer);
            let no_browser = match pick {
                Pick::Chosen(lease) => return Ok(lease),
                Pick::Busy => false,
                Pick::NoBrowser if !self.is_known(model) => {
                    return Err(ApiError::new(
                        ErrorCategory::ModelNotFound,
                        format!(
                            "unknown model '{model}': no browser holds it and no deployment names it"
                        ),
                    ));
                }
                Pick::NoBrowser => true,
            };
            let guard = match &mut place {
                Some(g) => g,
                None => place.insert(self.queues.enter(queue_as).ok_or_else(|| {
                    ApiError::new(
                        ErrorCategory::Overloaded,
                        format!(
                            "{} requests for model '{queue_as}' are already waiting for a browser",
                            self.queues_limit()
                        ),
                    )
                    .with_retry_after(Duration::from_secs(1))
                })?),
            };
            guard.waiting_for_browser(no_browser);
            let now = Instant::now();
            if now >= deadline {
                let what = if no_browser {
                    format!("no ready browser holds model '{model}'")
                } else {
                    format!("every browser holding model '{model}' stayed busy")
                };
                return Err(ApiError::new(
                    ErrorCategory::DeadlineExceeded,
                    format!("the request's deadline passed while waiting: {what}"),
                ));
            }
            // Look again when capacity frees, or at least every 100 ms (circuits
            // half-open and slow start ramp without an event).
            let wait = (deadline - now).min(Duration::from_millis(100));
            tokio::select! {
                () = changed => {},
                () = tokio::time::sleep(wait) => {},
            }
        }
    }

    fn queues_limit(&self) -> usize {
        self.queues.limit()
    }

    /// A request for one model: the plain path, the whole deadline for it.
    async fn infer_inner(
        &self,
        req: &InferRequest,
        options: &CallOptions,
        trace: &mut Trace,
    ) -> Result<Inferred, ApiError> {
        let timeout = options.timeout_within(self.policy.request_timeout);
        let deadline = Instant::now() + timeout;
        self.budget.deposit();
        let response = self
            .call_model(req, &req.model, Feed::All, deadline, options, trace)
            .await?;
        let (pool, browser, _) = trace.answered.last().cloned().unwrap_or_default();
        let parameters = Map::from_iter([
            ("backend".to_owned(), Value::from(response.backend.clone())),
            ("compute_ms".to_owned(), Value::from(response.compute_ms)),
            ("pool".to_owned(), Value::from(pool)),
            ("browser".to_owned(), Value::from(browser)),
            ("attempts".to_owned(), Value::from(trace.attempts)),
        ]);
        Ok(Inferred {
            response,
            parameters,
        })
    }

    /// Runs `req` on a browser holding `req.model`, waiting in `queue_as`'s queue while
    /// none can take it, and on a retryable failure tries another after a backoff, as
    /// the budget and `deadline` allow. With [`Feed::Named`], the request carries the
    /// inputs the model names among `req.inputs` (its metadata, asked of the browser
    /// chosen the first time).
    async fn call_model(
        &self,
        req: &InferRequest,
        queue_as: &str,
        feed: Feed,
        deadline: Instant,
        options: &CallOptions,
        trace: &mut Trace,
    ) -> Result<InferResponse, ApiError> {
        let mut tried: Vec<String> = Vec::new();
        let mut attempt = 0u32;
        loop {
            let lease = self.acquire(&req.model, queue_as, &tried, deadline).await?;
            attempt += 1;
            trace.attempts += 1;
            let ep = lease.backend().endpoint();
            trace.trying = Some((ep.pool.clone(), ep.pod.clone()));
            let remaining = deadline.saturating_duration_since(Instant::now());
            let request = match feed {
                Feed::All => Ok(req.clone()),
                Feed::Named => self.stages.fed(self, req, &ep, remaining).await,
            };
            let result = match request {
                Ok(mut request) => {
                    request.request_id = Some(options.request_id.clone());
                    // Only a plain request is hedged: a pipeline's stages are not.
                    let hedge_after = match (&self.hedges, feed) {
                        (Some(h), Feed::All) => h.delay(&req.model),
                        _ => None,
                    };
                    match hedge_after {
                        Some(delay) => {
                            self.hedged(&lease, request, remaining, delay, &tried, trace)
                                .await
                        }
                        None => {
                            let sent = Instant::now();
                            lease
                                .call(request, remaining)
                                .await
                                .map(|response| (response, sent.elapsed(), None))
                        }
                    }
                }
                Err(e) => Err(e),
            };
            drop(lease);
            match result {
                Ok((response, round_trip, hedge)) => {
                    if let Some(h) = &self.hedges {
                        h.observe(&req.model, round_trip);
                    }
                    trace.answered_after(round_trip, &response.stages);
                    trace.trying = None;
                    trace.compute_ms += response.compute_ms;
                    let answered_by = hedge.unwrap_or(ep);
                    trace.answered.push((
                        answered_by.pool,
                        answered_by.pod,
                        response.backend.clone(),
                    ));
                    return Ok(response);
                }
                Err(e) => {
                    if feed == Feed::Named && e.category == ErrorCategory::BadRequest {
                        // Its inputs may have changed under the same name.
                        self.stages.forget_metadata(&req.model);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !e.retryable() || attempt >= self.policy.max_attempts || left.is_zero() {
                        return Err(api_error(e));
                    }
                    if !self.budget.withdraw() {
                        self.metrics.retry_refused(&req.model, "budget");
                        return Err(api_error(e));
                    }
                    self.metrics.retry(&req.model, e.category.as_str());
                    tracing::debug!(request_id = %options.request_id, model = %req.model, browser = %ep.id, error = %e.message, attempt, "retrying on another browser");
                    tried.push(ep.id);
                    // Before attempt `attempt + 1`: up to `base * 2^(attempt - 1)`, capped.
                    let pause = Backoff::new(self.policy.backoff_base, self.policy.backoff_cap)
                        .full_jitter(attempt - 1)
                        .min(left);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Runs `req` through `stages` in turn within one deadline.
    async fn infer_pipeline(
        &self,
        req: &InferRequest,
        stages: &[String],
        options: &CallOptions,
        trace: &mut Trace,
    ) -> Result<Inferred, ApiError> {
        let timeout = options.timeout_within(self.policy.request_timeout);
        let deadline = Instant::now() + timeout;
        self.budget.deposit();
        self.stages
            .infer(self, req, stages, deadline, options, trace)
            .await
    }
}

impl Route for Gateway {
    async fn call_stage(
        &self,
        req: &InferRequest,
        queue_as: &str,
        deadline: Instant,
        options: &CallOptions,
        trace: &mut Trace,
    ) -> Result<InferResponse, ApiError> {
        self.call_model(req, queue_as, Feed::Named, deadline, options, trace)
            .await
    }

    async fn metadata_at(
        &self,
        ep: &Endpoint,
        name: &str,
        timeout: Duration,
    ) -> Result<ModelMetadata, ApiError> {
        self.metadata_from(ep, name, timeout).await
    }

    async fn metadata_of_any(&self, name: &str) -> Result<ModelMetadata, ApiError> {
        self.holder_metadata(name).await
    }
}

impl InferenceApi for Gateway {
    fn server_name(&self) -> &str {
        "webaccel-gateway"
    }

    fn server_version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire) && !self.draining()
    }

    fn max_tensor_bytes(&self) -> usize {
        self.policy.max_tensor_bytes
    }

    async fn model_metadata(&self, name: &str) -> Result<ModelMetadata, ApiError> {
        match self.pipeline(name) {
            Some(stages) => self.stages.metadata(self, name, &stages).await,
            // Any browser holding the model knows its inputs and outputs.
            None => self.holder_metadata(name).await,
        }
    }

    async fn model_ready(&self, name: &str) -> Result<ModelReady, ApiError> {
        let ready = match self.pipeline(name) {
            Some(stages) => stages.iter().all(|s| self.backends.serves(s)),
            None => self.backends.serves(name),
        };
        Ok(ModelReady {
            name: name.to_owned(),
            ready,
            state: None,
        })
    }

    async fn infer(
        &self,
        request: InferRequest,
        options: CallOptions,
    ) -> Result<Inferred, ApiError> {
        let started = Instant::now();
        let mut record = RequestRecord::new(&request, &options);
        let mut trace = Trace::default();
        let mut result = match self.pipeline(&request.model) {
            Some(stages) => {
                self.infer_pipeline(&request, &stages, &options, &mut trace)
                    .await
            }
            None => self.infer_inner(&request, &options, &mut trace).await,
        };
        // One instant ends the stages and the row's latency, so they add up exactly.
        let finished = Instant::now();
        if let Ok(inferred) = &mut result {
            // The gateway's own stages around the answers': what is left of its span
            // once the round trips and the reply are taken out is routing.
            let reply = trace
                .last_answer
                .map_or(Duration::ZERO, |at| finished.saturating_duration_since(at));
            let stages = &mut trace.stages;
            stages.set(
                Stage::Receive,
                ms(started.saturating_duration_since(options.arrived)),
            );
            stages.set(
                Stage::Route,
                ms(finished - started) - ms(trace.round_trips) - ms(reply),
            );
            stages.set(Stage::GatewayReply, ms(reply));
            inferred.response.stages = *stages;
            options.add_stages(&mut inferred.parameters, stages);
        }
        trace.record(&mut record);
        let elapsed = finished - started;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.category.as_str(),
        };
        self.metrics.finished(&request.model, outcome, elapsed);
        record.finish(elapsed, result.as_ref().err());
        self.recorder.write(record);
        if let Err(e) = &result {
            tracing::debug!(request_id = %options.request_id, model = %request.model, error = %e, "request failed");
        }
        result
    }

    fn refused(&self, error: &ApiError) {
        self.metrics
            .finished("", error.category.as_str(), Duration::ZERO);
    }

    fn answered(&self, model: &str, request_id: &str, stages: &StageTimes, total_ms: f64) {
        self.metrics.stages(model, stages);
        self.tail.push(model, request_id, total_ms, *stages);
    }
}
