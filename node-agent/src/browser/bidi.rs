//! A thin typed WebDriver BiDi client over tokio-tungstenite: one serde type per command
//! the agent sends and per result it reads, and nothing else. Commands are matched to
//! their results by id; events are ignored (the agent subscribes to none).
//!
//! The crates.io client (`webdriverbidi`) needs a WebDriver HTTP server (geckodriver) to
//! open a session and polls its socket in a busy loop; Firefox serves BiDi itself at
//! `ws://host:port/session`, which is all this needs.
//!
//! Firefox allows one BiDi session at a time: a session must be ended
//! ([`SessionEnd`]), or no other can be opened until the browser restarts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{SinkExt as _, StreamExt as _};
use parking_lot::{Mutex, MutexGuard};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A BiDi command: its method name, its parameters (the type itself) and its result.
pub trait Command: Serialize {
    const METHOD: &'static str;
    type Result: DeserializeOwned;
}

/// An empty result (`{}`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Empty {}

/// `session.status`: whether a new session could be opened. Answered by the browser's
/// main process, so any answer proves it is not frozen.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionStatus {}

#[derive(Debug, Clone, Deserialize)]
pub struct SessionStatusResult {
    pub ready: bool,
    #[serde(default)]
    pub message: String,
}

impl Command for SessionStatus {
    const METHOD: &'static str = "session.status";
    type Result = SessionStatusResult;
}

/// `session.new` with no capabilities asked for.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionNew {
    pub capabilities: CapabilitiesRequest,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CapabilitiesRequest {}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionNewResult {
    pub session_id: String,
    pub capabilities: SessionCapabilities,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionCapabilities {
    pub browser_name: String,
    pub browser_version: String,
    #[serde(default)]
    pub user_agent: String,
    /// Firefox's main process id.
    #[serde(rename = "moz:processID", default)]
    pub moz_process_id: Option<u32>,
}

impl Command for SessionNew {
    const METHOD: &'static str = "session.new";
    type Result = SessionNewResult;
}

/// `session.end`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionEnd {}

impl Command for SessionEnd {
    const METHOD: &'static str = "session.end";
    type Result = Empty;
}

/// `browsingContext.getTree`: the top-level browsing contexts (tabs).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetTree {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GetTreeResult {
    pub contexts: Vec<ContextInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContextInfo {
    pub context: String,
    pub url: String,
}

impl Command for GetTree {
    const METHOD: &'static str = "browsingContext.getTree";
    type Result = GetTreeResult;
}

/// `browsingContext.navigate`.
#[derive(Debug, Clone, Serialize)]
pub struct Navigate {
    pub context: String,
    pub url: String,
    /// `none`, `interactive` or `complete`.
    pub wait: &'static str,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NavigateResult {
    #[serde(default)]
    pub url: String,
}

impl Command for Navigate {
    const METHOD: &'static str = "browsingContext.navigate";
    type Result = NavigateResult;
}

/// `script.evaluate` in a browsing context's page realm.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluate {
    pub expression: String,
    pub target: Target,
    pub await_promise: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub context: String,
}

/// The outcome of a script: its value (a BiDi remote value, kept as JSON) or the
/// exception it threw.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EvaluateResult {
    Success {
        result: Value,
    },
    Exception {
        #[serde(rename = "exceptionDetails")]
        exception_details: ExceptionDetails,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExceptionDetails {
    #[serde(default)]
    pub text: String,
}

impl Command for Evaluate {
    const METHOD: &'static str = "script.evaluate";
    type Result = EvaluateResult;
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum BiDiError {
    #[error("the WebDriver BiDi connection is closed")]
    Closed,
    /// The browser answered with an error (`unknown command`, `no such frame`, ...).
    #[error("{error}: {message}")]
    Command { error: String, message: String },
    #[error("malformed WebDriver BiDi message: {0}")]
    Malformed(String),
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tokio_tungstenite::tungstenite::Error,
    },
}

/// One message from the browser: a command's success or error, or an event.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Incoming {
    Success {
        id: u64,
        result: Value,
    },
    Error {
        id: Option<u64>,
        error: String,
        #[serde(default)]
        message: String,
    },
    Event {},
}

type Waiters = Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value, BiDiError>>>>>;

/// A connection to a browser's WebDriver BiDi endpoint.
#[derive(Debug)]
pub struct BiDi {
    out: mpsc::UnboundedSender<Message>,
    /// `None` once the connection is gone: nothing may wait on it any more.
    waiters: std::sync::Arc<Waiters>,
    next_id: AtomicU64,
    closed: CancellationToken,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for BiDi {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl BiDi {
    /// Connects to `url` (`ws://127.0.0.1:PORT/session`). The caller bounds the time.
    pub async fn connect(url: &str) -> Result<Self, BiDiError> {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|source| BiDiError::Connect {
                url: url.to_owned(),
                source,
            })?;
        let (mut sink, mut stream) = socket.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let waiters: std::sync::Arc<Waiters> =
            std::sync::Arc::new(Mutex::new(Some(HashMap::new())));
        let closed = CancellationToken::new();
        let writer = tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let reader = {
            let waiters = waiters.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    if let Message::Text(text) = msg {
                        dispatch(&waiters, &text);
                    }
                }
                let gone = lock(&waiters).take();
                for (_, tx) in gone.into_iter().flatten() {
                    let _ = tx.send(Err(BiDiError::Closed));
                }
                closed.cancel();
            })
        };
        Ok(Self {
            out,
            waiters,
            next_id: AtomicU64::new(1),
            closed,
            tasks: [reader, writer],
        })
    }

    /// Sends a command and waits for its result. Unbounded: a frozen browser never
    /// answers, so callers put a timeout around it.
    pub async fn send<C: Command>(&self, params: &C) -> Result<C::Result, BiDiError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.waiters).as_mut() {
            Some(map) => map.insert(id, tx),
            None => return Err(BiDiError::Closed),
        };
        let text = serde_json::json!({"id": id, "method": C::METHOD, "params": params});
        if self.out.send(Message::text(text.to_string())).is_err() {
            lock(&self.waiters).as_mut().map(|m| m.remove(&id));
            return Err(BiDiError::Closed);
        }
        let value = rx.await.map_err(|_| BiDiError::Closed)??;
        serde_json::from_value(value)
            .map_err(|e| BiDiError::Malformed(format!("the result of {}: {e}", C::METHOD)))
    }

    /// Resolves when the connection has ended (the browser died or closed it).
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

fn lock(w: &Waiters) -> MutexGuard<'_, Option<HashMap<u64, WaiterTx>>> {
    w.lock()
}

type WaiterTx = oneshot::Sender<Result<Value, BiDiError>>;

/// Hands one incoming message to the command waiting for it.
fn dispatch(waiters: &Waiters, text: &str) {
    let (id, result) = match serde_json::from_str::<Incoming>(text) {
        Ok(Incoming::Success { id, result }) => (id, Ok(result)),
        Ok(Incoming::Error {
            id: Some(id),
            error,
            message,
        }) => (id, Err(BiDiError::Command { error, message })),
        Ok(Incoming::Error {
            id: None,
            error,
            message,
        }) => {
            tracing::warn!(%error, %message, "WebDriver BiDi error for no command");
            return;
        }
        Ok(Incoming::Event {}) => return,
        Err(e) => {
            tracing::warn!(error = %e, "malformed WebDriver BiDi message");
            return;
        }
    };
    let waiter = lock(waiters).as_mut().and_then(|m| m.remove(&id));
    if let Some(tx) = waiter {
        let _ = tx.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_serialize_as_the_specification_names_them() {
        let v = serde_json::to_value(Evaluate {
            expression: "1".into(),
            target: Target {
                context: "c".into(),
            },
            await_promise: false,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"expression": "1", "target": {"context": "c"}, "awaitPromise": false})
        );
        assert_eq!(
            serde_json::to_value(SessionNew::default()).unwrap(),
            serde_json::json!({"capabilities": {}})
        );
        assert_eq!(
            serde_json::to_value(GetTree::default()).unwrap(),
            serde_json::json!({})
        );
    }

    #[test]
    fn results_and_errors_reach_their_command() {
        let waiters: Waiters = Mutex::new(Some(HashMap::new()));
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        lock(&waiters).as_mut().unwrap().insert(1, tx1);
        lock(&waiters).as_mut().unwrap().insert(2, tx2);
        dispatch(
            &waiters,
            r#"{"type":"event","method":"log.entryAdded","params":{}}"#,
        );
        dispatch(
            &waiters,
            r#"{"type":"error","id":2,"error":"unknown command","message":"bogus.cmd","stacktrace":""}"#,
        );
        dispatch(
            &waiters,
            r#"{"type":"success","id":1,"result":{"ready":false,"message":"Session already started"}}"#,
        );
        let status: SessionStatusResult =
            serde_json::from_value(rx1.try_recv().unwrap().unwrap()).unwrap();
        assert!(!status.ready);
        assert_eq!(status.message, "Session already started");
        let err = rx2.try_recv().unwrap().unwrap_err();
        assert_eq!(err.to_string(), "unknown command: bogus.cmd");
    }

    #[test]
    fn session_new_and_evaluate_results_parse_as_firefox_sends_them() {
        let r: SessionNewResult = serde_json::from_str(
            r#"{"sessionId":"c265","capabilities":{"acceptInsecureCerts":false,"browserName":"firefox",
               "browserVersion":"153.8.0","platformName":"linux","userAgent":"Mozilla/5.0 Firefox/153.0",
               "moz:processID":8493,"moz:headless":true}}"#,
        )
        .unwrap();
        assert_eq!(r.capabilities.browser_version, "153.8.0");
        assert_eq!(r.capabilities.moz_process_id, Some(8493));
        let ok: EvaluateResult = serde_json::from_str(
            r#"{"realm":"r","type":"success","result":{"type":"boolean","value":true}}"#,
        )
        .unwrap();
        assert!(matches!(ok, EvaluateResult::Success { result } if result["value"] == true));
        let thrown: EvaluateResult = serde_json::from_str(
            r#"{"realm":"r","type":"exception","exceptionDetails":{"text":"ReferenceError: x","lineNumber":0}}"#,
        )
        .unwrap();
        assert!(
            matches!(thrown, EvaluateResult::Exception { exception_details } if exception_details.text.starts_with("ReferenceError"))
        );
    }
}
