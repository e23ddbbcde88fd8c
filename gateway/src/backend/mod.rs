//! The browsers the gateway routes to: one [`Backend`] per discovered agent, with its
//! bridge connection, circuit breaker, outstanding count, slow-start clock and, per
//! model, a peak-EWMA latency estimate (tower's `PeakEwma`); and the choice among them,
//! power of two choices on that load.

pub mod conn;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tower::Service;
use tower::load::Load;
use tower::load::completion::CompleteOnResponse;
use tower::load::peak_ewma::PeakEwma;
use webaccel_api::generate::{GenerateRequest, GenerationEvent};
use webaccel_api::wire::{InferRequest, InferResponse};

use crate::breaker::{Admit, Breaker, BreakerConfig};
use crate::discovery::{Endpoint, Endpoints};
use conn::{AgentConn, CallError, Generating};

/// How the gateway treats each browser.
#[derive(Debug, Clone, Copy)]
pub struct BackendConfig {
    /// Requests outstanding on one browser at most.
    pub max_outstanding: usize,
    /// A browser that just became ready ramps up to `max_outstanding` over this long.
    pub slow_start: Duration,
    pub breaker: BreakerConfig,
    /// A browser with requests outstanding that answers nothing for this long (or five
    /// times its usual latency, if longer) is taken as stalled: its circuit opens at
    /// once, before its agent's own hang detection fails what it holds.
    pub stall_after: Duration,
}

/// Peak-EWMA's starting guess for a model's latency on a browser, before any answer;
/// its decay window.
const DEFAULT_RTT: Duration = Duration::from_millis(5);
const DECAY: Duration = Duration::from_secs(10);

/// One model on one browser, as a tower service, so `PeakEwma` can time it.
#[derive(Debug, Clone)]
struct Route(Arc<AgentConn>);

/// What a route is asked: a request, or a generation.
enum RouteCall {
    Infer(InferRequest, Duration),
    Generate(GenerateRequest, Duration),
}

/// A route's answer. A generation answers at its first event, so that its time to
/// first token is what the latency estimate learns (the rest of a stream is the
/// client's length, not the browser's speed).
enum Answer {
    Inferred(InferResponse),
    Generating(GenerationEvent, Generating),
}

impl Service<RouteCall> for Route {
    type Response = Answer;
    type Error = CallError;
    type Future = BoxFuture<'static, Result<Answer, CallError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: RouteCall) -> Self::Future {
        let conn = self.0.clone();
        Box::pin(async move {
            match call {
                RouteCall::Infer(req, timeout) => {
                    conn.call(req, timeout).await.map(Answer::Inferred)
                }
                RouteCall::Generate(req, timeout) => {
                    let mut generating = conn.generate(req, timeout).await?;
                    match generating.next().await {
                        Some(Ok(first)) => Ok(Answer::Generating(first, generating)),
                        Some(Err(e)) => Err(e),
                        None => Err(CallError::connection(
                            "the generation ended before it began",
                        )),
                    }
                }
            }
        })
    }
}

type Timed = PeakEwma<Route, CompleteOnResponse>;

#[derive(Debug)]
pub struct Backend {
    endpoint: RwLock<Endpoint>,
    conn: Arc<AgentConn>,
    breaker: Mutex<Breaker>,
    outstanding: AtomicUsize,
    /// When it last became ready to serve: the slow-start clock.
    serving_since: Mutex<Instant>,
    routes: Mutex<HashMap<String, Timed>>,
    /// Models the agent said it does not hold although discovery listed them (unloaded
    /// since): skipped until discovery next lists the endpoint's models.
    missing: Mutex<HashSet<String>>,
    /// The agent answered that it is shutting down: no new request goes there, whatever
    /// discovery (a poll or a watch behind) still says, until discovery sees it come
    /// back after a restart (not serving, then serving again).
    draining: AtomicBool,
    /// For stall detection: when it last answered, when it last went from idle to busy,
    /// and its usual latency (EWMA, milliseconds).
    activity: Mutex<Activity>,
}

#[derive(Debug, Clone, Copy)]
struct Activity {
    last_answer: Instant,
    busy_since: Instant,
    latency_ms: f64,
}

impl Backend {
    fn new(endpoint: Endpoint, cfg: &BackendConfig) -> Self {
        Self {
            conn: AgentConn::start(&endpoint.url, endpoint.token.clone()),
            endpoint: RwLock::new(endpoint),
            breaker: Mutex::new(Breaker::new(cfg.breaker)),
            outstanding: AtomicUsize::new(0),
            serving_since: Mutex::new(Instant::now()),
            routes: Mutex::new(HashMap::new()),
            missing: Mutex::new(HashSet::new()),
            draining: AtomicBool::new(false),
            activity: Mutex::new(Activity {
                last_answer: Instant::now(),
                busy_since: Instant::now(),
                latency_ms: 0.0,
            }),
        }
    }

    /// How long it has been waiting for any answer with requests outstanding, if it
    /// has been longer than `cfg.stall_after` (or five times its usual latency).
    fn stalled_for(&self, cfg: &BackendConfig, now: Instant) -> Option<Duration> {
        if self.outstanding() == 0 {
            return None;
        }
        let a = *self.activity.lock();
        let waiting = now.duration_since(a.last_answer.max(a.busy_since));
        let bound = cfg
            .stall_after
            .max(Duration::from_secs_f64(a.latency_ms * 5.0 / 1e3));
        (waiting > bound).then_some(waiting)
    }

    pub fn endpoint(&self) -> Endpoint {
        self.endpoint.read().clone()
    }

    pub fn id(&self) -> String {
        self.endpoint.read().id.clone()
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_connected()
    }

    pub fn breaker_state(&self) -> (&'static str, i64) {
        let b = self.breaker.lock();
        (b.state_name(), b.state_code())
    }

    fn holds(&self, model: &str) -> bool {
        let ep = self.endpoint.read();
        ep.serving
            && ep.models.contains(model)
            && !self.draining.load(Ordering::Acquire)
            && !self.missing.lock().contains(model)
    }

    /// How many requests it may have outstanding now (slow start).
    fn limit(&self, cfg: &BackendConfig, now: Instant) -> usize {
        let age = now.duration_since(*self.serving_since.lock());
        if cfg.slow_start.is_zero() || age >= cfg.slow_start {
            return cfg.max_outstanding;
        }
        let share = age.as_secs_f64() / cfg.slow_start.as_secs_f64();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let n = (cfg.max_outstanding as f64 * share).ceil() as usize;
        n.clamp(1, cfg.max_outstanding)
    }

    fn with_route<R>(&self, model: &str, f: impl FnOnce(&mut Timed) -> R) -> R {
        let mut routes = self.routes.lock();
        let route = routes.entry(model.to_owned()).or_insert_with(|| {
            PeakEwma::new(
                Route(self.conn.clone()),
                DEFAULT_RTT,
                DECAY.as_nanos() as f64,
                CompleteOnResponse::default(),
            )
        });
        f(route)
    }

    fn load(&self, model: &str) -> tower::load::peak_ewma::Cost {
        self.with_route(model, |r| r.load())
    }
}

/// A request's place on a browser: counted in its outstanding until dropped.
#[derive(Debug)]
pub struct Lease {
    backend: Arc<Backend>,
    capacity: Arc<Notify>,
    probe: bool,
}

impl Lease {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Sends the request; the outcome feeds the browser's breaker and latency estimate.
    pub async fn call(
        &self,
        req: InferRequest,
        timeout: Duration,
    ) -> Result<InferResponse, CallError> {
        let model = req.model.clone();
        let answer = self.route(&model, RouteCall::Infer(req, timeout)).await;
        match answer {
            Ok(Answer::Inferred(response)) => Ok(response),
            Ok(Answer::Generating(..)) => {
                Err(CallError::connection("a request answered as a generation"))
            }
            Err(e) => Err(e),
        }
    }

    /// Starts a generation and waits for its first event (the rest follow on the
    /// returned [`Generating`]); the time to it feeds the latency estimate, the outcome
    /// the breaker. Keep the lease while the stream runs: it is one of the browser's
    /// outstanding requests until then.
    pub async fn generate(
        &self,
        req: GenerateRequest,
        timeout: Duration,
    ) -> Result<(GenerationEvent, Generating), CallError> {
        let model = req.model.clone();
        match self.route(&model, RouteCall::Generate(req, timeout)).await {
            Ok(Answer::Generating(first, rest)) => Ok((first, rest)),
            Ok(Answer::Inferred(_)) => {
                Err(CallError::connection("a generation answered as a request"))
            }
            Err(e) => Err(e),
        }
    }

    /// Notes that the browser answered (an event of a stream): it is not stalled.
    pub fn heard(&self) {
        self.backend.activity.lock().last_answer = Instant::now();
    }

    /// A generation's stream failed after its start: a health failure counts against
    /// the browser's breaker as a failed request would.
    pub fn stream_failed(&self, e: &CallError) {
        if e.health {
            self.backend.breaker.lock().record(Instant::now(), false);
        }
    }

    async fn route(&self, model: &str, call: RouteCall) -> Result<Answer, CallError> {
        let started = Instant::now();
        let fut = self.backend.with_route(model, |r| r.call(call));
        let result = fut.await;
        {
            let mut a = self.backend.activity.lock();
            a.last_answer = Instant::now();
            let ms = started.elapsed().as_secs_f64() * 1e3;
            a.latency_ms = if a.latency_ms == 0.0 {
                ms
            } else {
                0.9 * a.latency_ms + 0.1 * ms
            };
        }
        let healthy = match &result {
            Ok(_) => true,
            Err(e) => !e.health,
        };
        self.backend.breaker.lock().record(Instant::now(), healthy);
        match &result {
            Err(e) if e.category == webaccel_api::ErrorCategory::ModelNotFound => {
                self.backend.missing.lock().insert(model.to_owned());
            }
            Err(e) if e.category == webaccel_api::ErrorCategory::ShuttingDown => {
                self.backend.draining.store(true, Ordering::Release);
            }
            _ => {}
        }
        result
    }

    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.capacity.notify_waiters();
    }
}

/// What a pick found.
#[derive(Debug)]
pub enum Pick {
    Chosen(Lease),
    /// Browsers hold the model, but none can take a request now (all busy, or their
    /// circuits open).
    Busy,
    /// No ready browser holds the model.
    NoBrowser,
}

/// Every browser the gateway knows.
#[derive(Debug)]
pub struct Backends {
    cfg: BackendConfig,
    map: RwLock<HashMap<String, Arc<Backend>>>,
    /// Signalled when a request finishes or the fleet changes: waiters look again.
    capacity: Arc<Notify>,
}

impl Backends {
    pub fn new(cfg: BackendConfig) -> Self {
        Self {
            cfg,
            map: RwLock::new(HashMap::new()),
            capacity: Arc::new(Notify::new()),
        }
    }

    /// Resolves when it may be worth looking for a browser again (enable it before
    /// looking, so a change in between is not missed).
    pub fn capacity_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.capacity.notified()
    }

    pub fn all(&self) -> Vec<Arc<Backend>> {
        self.map.read().values().cloned().collect()
    }

    /// Follows the fleet: connects to new agents, forgets gone ones (their connection
    /// closes once the last request on it ends), updates the rest.
    pub fn sync(&self, fleet: &Endpoints) {
        let mut map = self.map.write();
        map.retain(|id, _| fleet.contains_key(id));
        for (id, ep) in fleet {
            match map.get(id) {
                Some(b) if b.endpoint().url == ep.url && b.endpoint().token == ep.token => {
                    let mut current = b.endpoint.write();
                    if ep.serving && !current.serving {
                        *b.serving_since.lock() = Instant::now();
                        b.draining.store(false, Ordering::Release);
                    }
                    if current.models != ep.models {
                        b.missing.lock().clear();
                    }
                    *current = ep.clone();
                }
                _ => {
                    map.insert(id.clone(), Arc::new(Backend::new(ep.clone(), &self.cfg)));
                }
            }
        }
        drop(map);
        self.capacity.notify_waiters();
    }

    /// Opens the circuit of every browser that stopped answering (see
    /// [`BackendConfig::stall_after`]); run every 100 ms.
    pub fn trip_stalled(&self) {
        let now = Instant::now();
        for b in self.all() {
            if let Some(waited) = b.stalled_for(&self.cfg, now) {
                let mut breaker = b.breaker.lock();
                if breaker.state_name() == "closed" {
                    breaker.trip(now);
                    tracing::warn!(browser = %b.id(), outstanding = b.outstanding(), ?waited, "a browser answered nothing; its circuit opens");
                }
            }
        }
    }

    /// Whether any ready browser holds `model` (whatever its load).
    pub fn serves(&self, model: &str) -> bool {
        self.all()
            .iter()
            .any(|b| b.holds(model) && b.is_connected())
    }

    /// Picks a browser for `model` by power of two choices on peak-EWMA load, among the
    /// ready, connected ones holding it whose circuit admits a request and that are
    /// under their outstanding limit, leaving out `exclude` (browsers already tried)
    /// unless nothing else holds the model. `prefer` narrows the choice to the
    /// recommended browsers when any of them can take the request.
    pub fn pick(
        &self,
        model: &str,
        exclude: &[String],
        prefer: &dyn Fn(&Endpoint) -> bool,
    ) -> Pick {
        let now = Instant::now();
        let holders: Vec<Arc<Backend>> = self
            .all()
            .into_iter()
            .filter(|b| b.holds(model) && b.is_connected())
            .collect();
        if holders.is_empty() {
            return Pick::NoBrowser;
        }
        let available = |b: &&Arc<Backend>| {
            b.outstanding() < b.limit(&self.cfg, now) && b.breaker.lock().would_admit(now)
        };
        let fresh: Vec<&Arc<Backend>> = holders
            .iter()
            .filter(|b| !exclude.contains(&b.id()))
            .filter(available)
            .collect();
        // A retry goes elsewhere when it can; with one browser, to the same one.
        let mut pool: Vec<&Arc<Backend>> = if fresh.is_empty() {
            holders.iter().filter(available).collect()
        } else {
            fresh
        };
        let preferred: Vec<&Arc<Backend>> = pool
            .iter()
            .copied()
            .filter(|b| prefer(&b.endpoint()))
            .collect();
        if !preferred.is_empty() {
            pool = preferred;
        }
        while !pool.is_empty() {
            // A browser whose circuit is ready for its half-open probe goes first: its
            // latency estimate still remembers the failure and would starve it.
            let chosen = pool
                .iter()
                .position(|b| b.breaker.lock().probe_due(now))
                .unwrap_or_else(|| p2c(&pool, |b| b.load(model)));
            let b = pool.swap_remove(chosen).clone();
            let admit = b.breaker.lock().admit(now);
            if admit == Admit::No {
                continue;
            }
            if b.outstanding.fetch_add(1, Ordering::AcqRel) == 0 {
                b.activity.lock().busy_since = now;
            }
            return Pick::Chosen(Lease {
                backend: b,
                capacity: self.capacity.clone(),
                probe: admit == Admit::Probe,
            });
        }
        Pick::Busy
    }
}

/// Power of two choices: two distinct candidates at random, the less loaded wins.
fn p2c<T, L: PartialOrd>(items: &[T], load: impl Fn(&T) -> L) -> usize {
    match items.len() {
        0 | 1 => 0,
        n => {
            let a = rand::random_range(0..n);
            let mut b = rand::random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            if load(&items[b]) < load(&items[a]) {
                b
            } else {
                a
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_choices_never_pick_the_most_loaded_of_three() {
        let loads = [5.0, 1.0, 9.0];
        for _ in 0..200 {
            let i = p2c(&loads, |l| *l);
            assert_ne!(i, 2, "the most loaded one loses every pairing");
        }
        assert_eq!(p2c(&[7.0], |l: &f64| *l), 0);
    }
}
