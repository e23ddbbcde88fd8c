//! One persistent `/v1/bridge` WebSocket to one agent: binary frames, requests
//! multiplexed by id, reconnected with exponential backoff and jitter when it drops.
//! Everything waiting on a connection that drops fails at once as retryable, so the
//! router can send it elsewhere; a call whose caller goes away sends a cancel frame.
//! A generation is a call answered by a stream of events ([`Generating`]); dropped
//! before its end, it sends a cancel frame, which stops it in the page.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;
use webaccel_api::generate::{GenerateRequest, GenerationEvent};
use webaccel_api::wire::{self, ErrorFrame, InferRequest, InferResponse, Message};
use webaccel_api::{Backoff, ErrorCategory};

/// Why a call to an agent failed.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    pub category: ErrorCategory,
    pub message: String,
    /// Whether the failure says something about the agent's health (its browser or its
    /// connection), as opposed to the request (bad input) or plain load (overloaded):
    /// only those count against its circuit breaker.
    pub health: bool,
}

impl CallError {
    pub(crate) fn connection(message: impl Into<String>) -> Self {
        Self {
            category: ErrorCategory::BrowserUnavailable,
            message: message.into(),
            health: true,
        }
    }

    pub fn from_frame(frame: ErrorFrame) -> Self {
        let health = matches!(
            frame.category,
            ErrorCategory::BrowserCrashed
                | ErrorCategory::BrowserHung
                | ErrorCategory::BrowserUnavailable
                | ErrorCategory::Internal
        );
        Self {
            category: frame.category,
            message: frame.message,
            health,
        }
    }

    /// Whether the request may go to another browser (the one policy on
    /// [`ErrorCategory`]).
    pub fn retryable(&self) -> bool {
        self.category.is_retryable_elsewhere()
    }
}

type Pending = HashMap<u64, oneshot::Sender<Result<InferResponse, CallError>>>;

/// A generation's events as they arrive. Unbounded, so that a slow client never stalls
/// the connection's reader (and every other request on it): a generation's events are
/// bounded by its token limit.
type EventSender = mpsc::UnboundedSender<Result<GenerationEvent, CallError>>;

/// The live half of a connection: where frames go, and who waits for what comes back.
#[derive(Debug, Clone)]
struct Live {
    tx: mpsc::Sender<WsMessage>,
    pending: Arc<parking_lot::Mutex<Pending>>,
    generations: Arc<parking_lot::Mutex<HashMap<u64, EventSender>>>,
}

impl Live {
    /// Hands a frame from the agent to whoever waits for `id`.
    fn deliver(&self, id: u64, reply: Message) {
        match reply {
            Message::Generation(event) => {
                let last = matches!(event, GenerationEvent::End(_));
                let mut generations = self.generations.lock();
                if let Some(tx) = generations.get(&id) {
                    let _ = tx.send(Ok(event));
                }
                if last {
                    generations.remove(&id);
                }
            }
            reply => {
                let result = match reply {
                    Message::Response(r) => Ok(r),
                    Message::Error(e) => Err(CallError::from_frame(e)),
                    other => Err(CallError::connection(format!(
                        "the agent sent an unexpected frame: {other:?}"
                    ))),
                };
                // An error may end a generation as well as a request.
                if let Some(waiter) = self.pending.lock().remove(&id) {
                    let _ = waiter.send(result);
                } else if let (Some(tx), Err(e)) = (self.generations.lock().remove(&id), result) {
                    let _ = tx.send(Err(e));
                }
            }
        }
    }

    /// Fails everything waiting: the connection is gone.
    fn fail_all(&self) {
        let lost = "the connection to the agent was lost while the request was in flight";
        for (_, waiter) in self.pending.lock().drain() {
            let _ = waiter.send(Err(CallError::connection(lost)));
        }
        for (_, tx) in self.generations.lock().drain() {
            let _ = tx.send(Err(CallError::connection(lost)));
        }
    }
}

/// A generation running on an agent: its events in order, the last an end or an
/// error. Dropped before that, it tells the agent to stop the generation.
#[derive(Debug)]
pub struct Generating {
    live: Live,
    id: u64,
    events: mpsc::UnboundedReceiver<Result<GenerationEvent, CallError>>,
    deadline: tokio::time::Instant,
    ended: bool,
}

impl Generating {
    /// The next event; `None` after the last. Nothing by the deadline is an error
    /// (the agent holds its own deadline too; this one holds when the agent is frozen).
    pub async fn next(&mut self) -> Option<Result<GenerationEvent, CallError>> {
        if self.ended {
            return None;
        }
        let event = match tokio::time::timeout_at(self.deadline, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => Err(CallError::connection("the agent's bridge closed")),
            Err(_) => Err(CallError {
                category: ErrorCategory::DeadlineExceeded,
                message: "the generation's deadline passed before its end".into(),
                health: false,
            }),
        };
        self.ended = !matches!(event, Ok(GenerationEvent::Tokens(_)));
        Some(event)
    }
}

impl Drop for Generating {
    fn drop(&mut self) {
        if self.live.generations.lock().remove(&self.id).is_some() || !self.ended {
            let frame = wire::encode(self.id, &Message::Cancel);
            let _ = self.live.tx.try_send(WsMessage::Binary(frame.into()));
        }
    }
}

#[derive(Debug)]
pub struct AgentConn {
    url: String,
    token: Option<String>,
    live: watch::Sender<Option<Live>>,
    next_id: AtomicU64,
    stop: CancellationToken,
}

/// Reconnect pauses: 50 ms doubling to 5 s, with full jitter.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

fn reconnect_delay(failures: u32) -> Duration {
    RECONNECT.full_jitter(failures)
}

impl AgentConn {
    /// Starts connecting to the agent at `url` (`http://host:port`) and keeps the
    /// connection up until the returned handle is dropped (or `stop` fires).
    pub fn start(url: &str, token: Option<String>) -> Arc<Self> {
        let conn = Arc::new(Self {
            url: format!("{}/v1/bridge", url.replacen("http", "ws", 1)),
            token,
            live: watch::channel(None).0,
            next_id: AtomicU64::new(1),
            stop: CancellationToken::new(),
        });
        tokio::spawn(Self::run(Arc::downgrade(&conn), conn.stop.clone()));
        conn
    }

    /// Whether the bridge is connected now.
    pub fn is_connected(&self) -> bool {
        self.live.borrow().is_some()
    }

    /// Resolves when the connection state changes.
    pub async fn changed(&self) {
        let mut rx = self.live.subscribe();
        let _ = rx.changed().await;
    }

    /// Connects; the returned future runs the connection until it drops.
    async fn connect(&self) -> Result<(Live, BoxFuture<'static, ()>), String> {
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("{}: {e}", self.url))?;
        if let Some(t) = &self.token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| "the agent token is not a valid header value".to_owned())?;
            req.headers_mut().insert("authorization", value);
        }
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async_with_config(req, None, true),
        )
        .await
        .map_err(|_| format!("{}: no connection within 3 s", self.url))?
        .map_err(|e| format!("{}: {e}", self.url))?;
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::channel::<WsMessage>(256);
        let live = Live {
            tx,
            pending: Arc::default(),
            generations: Arc::default(),
        };
        let reader_live = live.clone();
        let session = Box::pin(async move {
            let writer = async {
                while let Some(msg) = rx.recv().await {
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
            };
            let reader = async {
                while let Some(Ok(msg)) = stream.next().await {
                    let WsMessage::Binary(buf) = msg else {
                        continue;
                    };
                    match wire::decode(buf) {
                        Ok((id, reply)) => reader_live.deliver(id, reply),
                        Err(e) => tracing::warn!(error = %e, "malformed frame from an agent"),
                    }
                }
            };
            tokio::select! {
                () = writer => {},
                () = reader => {},
            }
        });
        Ok((live, session))
    }

    async fn run(conn: std::sync::Weak<Self>, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let Some(this) = conn.upgrade() else { return };
            match this.connect().await {
                Ok((live, session)) => {
                    failures = 0;
                    let waiting = live.clone();
                    this.live.send_replace(Some(live));
                    drop(this);
                    tokio::select! {
                        () = session => {},
                        () = stop.cancelled() => {},
                    }
                    let Some(this) = conn.upgrade() else { return };
                    this.live.send_replace(None);
                    waiting.fail_all();
                    tracing::info!(url = %this.url, "agent bridge disconnected");
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "cannot reach an agent's bridge");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(reconnect_delay(failures)) => {},
            }
        }
    }

    /// Sends one request and waits up to `timeout` for its answer. If the caller drops
    /// the future first (its client went away), the agent is told to drop the request.
    pub async fn call(
        &self,
        mut req: InferRequest,
        timeout: Duration,
    ) -> Result<InferResponse, CallError> {
        let Some(live) = self.live.borrow().clone() else {
            return Err(CallError::connection("the agent's bridge is not connected"));
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        req.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let (tx, rx) = oneshot::channel();
        live.pending.lock().insert(id, tx);
        let mut guard = CancelOnDrop {
            live: &live,
            id,
            armed: true,
        };
        let frame = wire::encode(id, &Message::Request(req));
        if live.tx.send(WsMessage::Binary(frame.into())).await.is_err() {
            guard.armed = false;
            live.pending.lock().remove(&id);
            return Err(CallError::connection("the agent's bridge closed"));
        }
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CallError::connection("the agent's bridge closed")),
            Err(_) => Err(CallError {
                category: ErrorCategory::DeadlineExceeded,
                message: format!(
                    "the agent did not answer within {:?}",
                    started.elapsed().max(timeout)
                ),
                health: false,
            }),
        };
        // Answered: nothing to cancel. Timed out: the guard cancels on the way out.
        guard.armed = result
            .as_ref()
            .is_err_and(|e| e.category == ErrorCategory::DeadlineExceeded);
        result
    }
}

impl AgentConn {
    /// Starts a generation; its events follow on the returned [`Generating`], for up to
    /// `timeout` in all.
    pub async fn generate(
        &self,
        mut req: GenerateRequest,
        timeout: Duration,
    ) -> Result<Generating, CallError> {
        let Some(live) = self.live.borrow().clone() else {
            return Err(CallError::connection("the agent's bridge is not connected"));
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        req.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let (tx, events) = mpsc::unbounded_channel();
        live.generations.lock().insert(id, tx);
        let frame = wire::encode(id, &Message::Generate(req));
        let generating = Generating {
            live,
            id,
            events,
            deadline: tokio::time::Instant::now() + timeout,
            ended: false,
        };
        if generating
            .live
            .tx
            .send(WsMessage::Binary(frame.into()))
            .await
            .is_err()
        {
            return Err(CallError::connection("the agent's bridge closed"));
        }
        Ok(generating)
    }
}

impl Drop for AgentConn {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Tells the agent to drop a request nobody waits for any more.
struct CancelOnDrop<'a> {
    live: &'a Live,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.live.pending.lock().remove(&self.id);
        let frame = wire::encode(self.id, &Message::Cancel);
        let _ = self.live.tx.try_send(WsMessage::Binary(frame.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_pauses_grow_with_full_jitter_up_to_5_s() {
        for failures in 0..20 {
            let d = reconnect_delay(failures);
            let cap = Duration::from_millis(50u64 << failures.min(7)).min(Duration::from_secs(5));
            assert!(d <= cap, "{failures}: {d:?}");
        }
    }

    #[test]
    fn only_browser_and_connection_failures_count_against_health() {
        let e = |c| CallError::from_frame(ErrorFrame::new(c, "x"));
        assert!(e(ErrorCategory::BrowserCrashed).health);
        assert!(!e(ErrorCategory::BadRequest).health);
        assert!(!e(ErrorCategory::Overloaded).health);
        assert!(e(ErrorCategory::Overloaded).retryable());
        assert!(e(ErrorCategory::ModelNotFound).retryable());
        assert!(!e(ErrorCategory::DeadlineExceeded).retryable());
        assert!(!e(ErrorCategory::BadRequest).retryable());
    }
}
