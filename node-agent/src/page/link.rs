//! The agent's end of the loopback WebSocket the page opens back to the agent: tensors
//! travel as binary wire frames, control messages (load, unload, ping) as JSON text
//! ([`super::protocol`]).
//!
//! A link belongs to one browser generation. When it dies every request waiting on it is
//! failed at once with a retryable category, so nothing hangs on a dead browser.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use webaccel_api::ErrorCategory;
use webaccel_api::agent::{Capabilities, PageWorker};
use webaccel_api::timing::{Stage, ms};
use webaccel_api::wire::{self, InferRequest, InferResponse, Message};

use super::protocol::{
    self, Call, CallError, CallResult, Generate, LoadReply, PageEvent, StepToken,
};
use crate::error::AgentError;

/// Why a page's connection could not be taken over: it must open with a hello.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("page closed or sent no hello: {0}")]
    NoHello(String),
    #[error("first page message was not a hello: {0}")]
    NotHello(String),
    #[error("the page's hello is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// When a request left for the page and when its answer came back (agent clock).
#[derive(Debug, Clone, Copy)]
pub struct Hop {
    pub sent: Instant,
    pub answered: Instant,
}

/// The page's answer to one inference and its [`Hop`].
#[derive(Debug)]
pub struct PageRun {
    pub response: InferResponse,
    pub hop: Hop,
}

/// What a waiting caller gets back from the page.
#[derive(Debug)]
enum Reply {
    /// Boxed: a response's stages make it several times the size of the others.
    Frame(Box<Message>),
    Control(CallResult),
    Failed(AgentError),
}

#[derive(Debug)]
pub struct PageLink {
    out: mpsc::UnboundedSender<WsMessage>,
    /// `None` once the link is dead: nothing may wait on it any more.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>,
    next_id: AtomicU64,
    last_pong: Mutex<Instant>,
    /// When the last unanswered ping was sent, and the last round trip in microseconds:
    /// the cost of one message each way through Chromium's WebSocket plumbing.
    ping_sent: Mutex<Option<Instant>>,
    last_rtt_us: AtomicU64,
    /// The page's workers as its last pong reported them.
    workers: Mutex<Vec<PageWorker>>,
    closed: watch::Sender<bool>,
    /// Set when the page reports that its WebGPU device was lost (the GPU process died):
    /// its WebGPU sessions are unusable, so the browser must be replaced.
    gpu_lost: watch::Sender<Option<String>>,
    /// Control operations (model loads) the page is working on. Compiling a model can
    /// block the page's thread for seconds, so the supervisor is more patient then.
    controls_in_progress: AtomicUsize,
    /// The slowest single run of a model loaded in the page, as its load measured it
    /// (warm-up, steady), in microseconds: a run blocks the page's thread that long.
    slowest_run_us: AtomicU64,
    /// The page's secret, which the URLs it fetches (model bytes) must carry.
    secret: String,
    /// What the page reported it can run, in its hello.
    capabilities: Capabilities,
    /// The generations running in the page, by call number: where their tokens go.
    generations: Mutex<HashMap<u64, mpsc::UnboundedSender<PageStep>>>,
}

/// One token of a generation, with the step that made it.
#[derive(Debug, Clone)]
pub struct PageStep {
    pub token: StepToken,
    /// When the page sent it (milliseconds since the Unix epoch).
    pub t: f64,
    pub step_ms: f64,
    pub run_ms: f64,
    pub batch: u32,
    pub prefill: bool,
}

/// A generation running in the page: its call number (to cancel it), its tokens as
/// they come, and its end.
#[derive(Debug)]
pub struct PageGeneration {
    pub id: u64,
    pub steps: mpsc::UnboundedReceiver<PageStep>,
    reply: oneshot::Receiver<Reply>,
}

impl PageGeneration {
    /// How the generation ended: after this resolves, every token is in `steps` (the
    /// page sends them before its answer, on one ordered socket).
    pub async fn finished(&mut self) -> Result<protocol::GenerateReply, CallError> {
        match (&mut self.reply).await {
            Ok(Reply::Control(result)) => result.reply::<Generate>(),
            Ok(Reply::Failed(e)) => Err(e.into()),
            Ok(Reply::Frame(other)) => {
                Err(AgentError::Internal(format!("unexpected reply from page: {other:?}")).into())
            }
            Err(_) => Err(AgentError::browser(
                ErrorCategory::BrowserCrashed,
                "the browser's page connection closed",
            )
            .into()),
        }
    }
}

impl PageLink {
    /// Takes over an upgraded page socket. Returns the link and the page's hello message
    /// (its capabilities). The caller bounds how long the hello may take.
    pub async fn accept(
        socket: WebSocket,
        secret: String,
    ) -> Result<(std::sync::Arc<Self>, Capabilities), HelloError> {
        let (mut sink, mut stream) = socket.split();
        let capabilities = match stream.next().await {
            Some(Ok(WsMessage::Text(t))) => match serde_json::from_str::<PageEvent>(&t)? {
                PageEvent::Hello { capabilities } => *capabilities,
                _ => return Err(HelloError::NotHello(t.to_string())),
            },
            other => return Err(HelloError::NoHello(format!("{other:?}"))),
        };
        let (out, mut out_rx) = mpsc::unbounded_channel::<WsMessage>();
        let link = std::sync::Arc::new(Self {
            out,
            pending: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(1),
            last_pong: Mutex::new(Instant::now()),
            ping_sent: Mutex::new(None),
            last_rtt_us: AtomicU64::new(0),
            workers: Mutex::new(Vec::new()),
            closed: watch::channel(false).0,
            gpu_lost: watch::channel(None).0,
            controls_in_progress: AtomicUsize::new(0),
            slowest_run_us: AtomicU64::new(0),
            secret,
            capabilities: capabilities.clone(),
            generations: Mutex::default(),
        });
        tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let reader = link.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                reader.on_message(msg);
            }
            reader.fail_all(AgentError::browser(
                ErrorCategory::BrowserCrashed,
                "the browser's page connection closed while the request was in flight",
            ));
        });
        Ok((link, capabilities))
    }

    fn on_message(&self, msg: WsMessage) {
        match msg {
            WsMessage::Binary(buf) => match wire::decode(buf) {
                Ok((id, frame)) => self.resolve(id, Reply::Frame(Box::new(frame))),
                Err(e) => {
                    // The page is ours: a malformed frame is a bug, fail that request.
                    if let Some(id) = e.id {
                        self.resolve(id, Reply::Failed(AgentError::Internal(e.to_string())));
                    }
                    tracing::error!(error = %e, "page sent a malformed frame");
                }
            },
            WsMessage::Text(text) => self.on_control(&text),
            _ => {}
        }
    }

    fn on_control(&self, text: &str) {
        let event = match serde_json::from_str::<PageEvent>(text) {
            Ok(event) => event,
            Err(e) => {
                // The page is ours: a message the agent cannot read is a bug.
                tracing::error!(%text, error = %e, "page sent a malformed or unknown control message");
                return;
            }
        };
        match event {
            PageEvent::Pong { workers } => {
                let now = Instant::now();
                *self.last_pong.lock() = now;
                if let Some(sent) = self.ping_sent.lock().take() {
                    let rtt = u64::try_from((now - sent).as_micros()).unwrap_or(u64::MAX);
                    self.last_rtt_us.store(rtt, Ordering::Relaxed);
                }
                *self.workers.lock() = workers;
            }
            PageEvent::Result(result) => {
                self.generations.lock().remove(&result.req);
                self.resolve(result.req, Reply::Control(result));
            }
            PageEvent::Tokens(step) => {
                let generations = self.generations.lock();
                for token in step.tokens {
                    if let Some(tx) = generations.get(&token.req) {
                        let _ = tx.send(PageStep {
                            token,
                            t: step.t,
                            step_ms: step.step_ms,
                            run_ms: step.run_ms,
                            batch: step.batch,
                            prefill: step.prefill,
                        });
                    }
                }
            }
            PageEvent::GpuLost { message } => {
                tracing::warn!(reason = %message, "the page lost its WebGPU device");
                self.gpu_lost.send_replace(Some(message));
            }
            PageEvent::Log { message } => tracing::info!(target: "page", "{message}"),
            PageEvent::Hello { .. } => tracing::warn!("the page said hello twice"),
        }
    }

    fn resolve(&self, id: u64, reply: Reply) {
        let waiter = self.pending.lock().as_mut().and_then(|m| m.remove(&id));
        if let Some(tx) = waiter {
            let _ = tx.send(reply);
        }
    }

    /// Marks the link dead and fails everyone waiting on it with `err`.
    pub fn fail_all(&self, err: AgentError) {
        self.generations.lock().clear();
        let waiters = self.pending.lock().take();
        for (_, tx) in waiters.into_iter().flatten() {
            let _ = tx.send(Reply::Failed(err.clone()));
        }
        self.closed.send_replace(true);
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves when the link has died.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Resolves when the page has reported the loss of its WebGPU device.
    pub async fn gpu_lost(&self) {
        let mut rx = self.gpu_lost.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    fn register(&self) -> Result<(u64, oneshot::Receiver<Reply>), AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock();
        match pending.as_mut() {
            Some(map) => {
                map.insert(id, tx);
                Ok((id, rx))
            }
            None => Err(AgentError::browser(
                ErrorCategory::BrowserUnavailable,
                "the browser is restarting",
            )),
        }
    }

    async fn wait(
        &self,
        id: u64,
        rx: oneshot::Receiver<Reply>,
        send: WsMessage,
    ) -> Result<Reply, AgentError> {
        if self.out.send(send).is_err() {
            self.resolve(id, Reply::Failed(AgentError::Internal(String::new())));
            return Err(AgentError::browser(
                ErrorCategory::BrowserCrashed,
                "the browser's page connection is gone",
            ));
        }
        match rx.await {
            Ok(Reply::Failed(e)) => Err(e),
            Ok(reply) => Ok(reply),
            Err(_) => Err(AgentError::browser(
                ErrorCategory::BrowserCrashed,
                "the browser's page connection closed",
            )),
        }
    }

    /// Runs one inference in the page. The answer's `page_link` stage is the socket's
    /// share of the round trip: all of it less the page's own span.
    pub async fn infer(&self, req: InferRequest) -> Result<PageRun, AgentError> {
        let (id, rx) = self.register()?;
        let frame = wire::encode(id, &Message::Request(req));
        let sent = Instant::now();
        let reply = self.wait(id, rx, WsMessage::Binary(frame.into())).await?;
        let answered = Instant::now();
        let reply = match reply {
            Reply::Frame(message) => *message,
            other => {
                return Err(AgentError::Internal(format!(
                    "unexpected reply from page: {other:?}"
                )));
            }
        };
        match reply {
            Message::Response(mut response) => {
                let page = Stage::PAGE
                    .iter()
                    .filter_map(|s| response.stages.get(*s))
                    .sum::<f64>();
                let page = if page > 0.0 {
                    page
                } else {
                    response.page_ms.unwrap_or(0.0)
                };
                response
                    .stages
                    .set(Stage::PageLink, ms(answered - sent) - page);
                Ok(PageRun {
                    response,
                    hop: Hop { sent, answered },
                })
            }
            Message::Error(e) => Err(AgentError::from_frame(e)),
            other => Err(AgentError::Internal(format!(
                "unexpected reply from page: {other:?}"
            ))),
        }
    }

    /// Sends a call to the page and waits for its reply: [`CallError::Refused`] with
    /// the page's reason when it could not do it.
    pub async fn call<C: Call>(&self, call: C) -> Result<C::Reply, CallError> {
        let (id, rx) = self.register()?;
        let text = serde_json::to_string(&call.command(id))
            .map_err(|e| AgentError::Internal(format!("encoding a page command: {e}")))?;
        self.controls_in_progress.fetch_add(1, Ordering::AcqRel);
        let reply = self.wait(id, rx, WsMessage::Text(text.into())).await;
        self.controls_in_progress.fetch_sub(1, Ordering::AcqRel);
        match reply? {
            Reply::Control(result) => result.reply::<C>(),
            other => {
                Err(AgentError::Internal(format!("unexpected reply from page: {other:?}")).into())
            }
        }
    }

    /// Starts a generation in the page; its tokens arrive in the returned
    /// [`PageGeneration`]'s `steps` as the page makes them.
    pub fn generate(&self, call: Generate) -> Result<PageGeneration, AgentError> {
        let (id, reply) = self.register()?;
        let (tx, steps) = mpsc::unbounded_channel();
        self.generations.lock().insert(id, tx);
        let text = serde_json::to_string(&Call::command(call, id))
            .map_err(|e| AgentError::Internal(format!("encoding a page command: {e}")))?;
        if self.out.send(WsMessage::Text(text.into())).is_err() {
            self.generations.lock().remove(&id);
            self.resolve(id, Reply::Failed(AgentError::Internal(String::new())));
            return Err(AgentError::browser(
                ErrorCategory::BrowserCrashed,
                "the browser's page connection is gone",
            ));
        }
        Ok(PageGeneration { id, steps, reply })
    }

    /// Generations running in the page now.
    pub fn generations(&self) -> usize {
        self.generations.lock().len()
    }

    /// Sends a heartbeat ping; the page answers with a pong that updates `since_pong`.
    pub fn ping(&self) {
        self.ping_sent.lock().get_or_insert_with(Instant::now);
        let _ = self
            .out
            .send(WsMessage::Text(Utf8Bytes::from_static(protocol::PING)));
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// What the page reported it can run, in its hello.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Pings and waits up to `limit` for the answer.
    pub async fn responsive(&self, limit: Duration) -> bool {
        let asked = Instant::now();
        self.ping();
        while asked.elapsed() < limit {
            if self.since_pong() < asked.elapsed() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        false
    }

    /// The last heartbeat's round trip through the page, in milliseconds.
    pub fn heartbeat_rtt_ms(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        let us = self.last_rtt_us.load(Ordering::Relaxed) as f64;
        (us > 0.0).then_some(us / 1e3)
    }

    /// The page's workers as its last heartbeat reported them.
    pub fn page_workers(&self) -> Vec<PageWorker> {
        self.workers.lock().clone()
    }

    /// Whether the page is busy with a control operation (a model load).
    pub fn control_in_progress(&self) -> bool {
        self.controls_in_progress.load(Ordering::Acquire) > 0
    }

    /// Notes the runs a load measured in the page (its warm-up and steady runs).
    pub fn observe_load(&self, reply: &LoadReply) {
        let ms = reply
            .warmup_ms
            .unwrap_or(0.0)
            .max(reply.steady_ms.unwrap_or(0.0));
        if ms.is_finite() && ms > 0.0 {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let us = (ms * 1e3) as u64;
            self.slowest_run_us.fetch_max(us, Ordering::AcqRel);
        }
    }

    /// The slowest single run of a model loaded in the page, as measured at load.
    pub fn slowest_run(&self) -> Duration {
        Duration::from_micros(self.slowest_run_us.load(Ordering::Acquire))
    }

    /// Time since the page last answered a ping.
    pub fn since_pong(&self) -> Duration {
        self.last_pong.lock().elapsed()
    }

    /// Requests waiting on the page right now.
    pub fn pending_count(&self) -> usize {
        self.pending.lock().as_ref().map_or(0, HashMap::len)
    }
}
