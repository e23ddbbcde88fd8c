//! The control half of the agent ↔ page WebSocket: JSON text messages tagged by `op`,
//! one serde type per message, the same types whichever way they are read or written.
//! (Tensors travel in the other half, as binary wire frames: `webaccel_api::wire`.)
//!
//! The agent sends [`PageCommand`]s: a heartbeat [`PageCommand::Ping`], and calls
//! numbered by `req` that the page answers with one [`PageEvent::Result`] each. Every
//! call is a type of its own implementing [`Call`], which names the reply the page
//! sends back for it ([`Load`] → [`LoadReply`], ...). The page sends [`PageEvent`]s:
//! its hello with its capabilities, pongs, call results, and the unprompted reports
//! (`gpu_lost`, `log`).
//!
//! The page's side is `web/src/protocol.js` (the op names and JSDoc types); the files in
//! `web/test/golden/` hold one message of each kind, read by the tests of both sides
//! so the two cannot drift apart.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use webaccel_api::agent::{BackendCandidate, Capabilities, EnsembleStep, IoMeta, PageWorker};
use webaccel_api::{Backend, WebNnDevice};

/// A message from the agent to the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PageCommand {
    /// Heartbeat: the page answers at once with [`PageEvent::Pong`].
    Ping,
    Load(Request<Load>),
    Unload(Request<Unload>),
    Retain(Request<Retain>),
    Ensemble(Request<RegisterEnsemble>),
    HangWorker(Request<HangWorker>),
}

/// A call as sent: its number, which the page's [`CallResult`] carries back, and the
/// call's own fields beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request<C> {
    pub req: u64,
    #[serde(flatten)]
    pub call: C,
}

/// A command the page answers with a result: what the reply to it holds.
pub trait Call: Sized {
    /// The `value` of a successful [`CallResult`] for this call.
    type Reply: DeserializeOwned;
    /// The command carrying this call as number `req`.
    fn command(self, req: u64) -> PageCommand;
}

macro_rules! call {
    ($call:ident => $variant:ident, $reply:ty) => {
        impl Call for $call {
            type Reply = $reply;
            fn command(self, req: u64) -> PageCommand {
                PageCommand::$variant(Request { req, call: self })
            }
        }
    };
}

call!(Load => Load, LoadReply);
call!(Unload => Unload, UnloadReply);
call!(Retain => Retain, RetainReply);
call!(RegisterEnsemble => Ensemble, EnsembleReply);
call!(HangWorker => HangWorker, HangWorkerReply);

/// Creates a model's session in every instance of the page, from model bytes the page
/// fetches from the agent at `url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub name: String,
    /// `/page/models/{sha256}?s={secret}`.
    pub url: String,
    /// `auto` measures every backend this page has and keeps the fastest.
    pub backend: Backend,
    pub webnn_device: WebNnDevice,
    /// Run the model once (and a few more times, measured) before serving it.
    pub warmup: bool,
    /// Backends (`webgpu`, `webnn:gpu`, ...) that `auto` must skip, and why: they would
    /// compute this model wrongly.
    pub avoid: BTreeMap<String, String>,
}

/// What the page made of a [`Load`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReply {
    /// What runs the model: `wasm`, `webgpu` or `webnn:<device>`.
    #[serde(default)]
    pub backend: String,
    pub inputs: Vec<IoMeta>,
    pub outputs: Vec<IoMeta>,
    /// Milliseconds: the page fetching the bytes from the agent, creating the session,
    /// the first run, and the median of the runs after it.
    #[serde(default)]
    pub fetch_ms: f64,
    #[serde(default)]
    pub create_ms: f64,
    #[serde(default)]
    pub warmup_ms: Option<f64>,
    #[serde(default)]
    pub steady_ms: Option<f64>,
    /// With `auto`: every backend tried (`null` otherwise).
    #[serde(default)]
    pub candidates: Option<Vec<BackendCandidate>>,
}

/// Releases a model's sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unload {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnloadReply {
    /// Whether any instance held the model.
    pub unloaded: bool,
}

/// Releases every session whose model is not in `names` (sessions a standby page
/// preloaded for models removed since).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retain {
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetainReply {
    pub released: Vec<String>,
}

/// Registers an ensemble of models loaded in the page (the agent has checked that its
/// steps fit together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterEnsemble {
    pub name: String,
    pub steps: Vec<EnsembleStep>,
    pub outputs: Vec<String>,
    /// The steps' backends, once each in order (`wasm+webgpu`).
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleReply {
    pub registered: String,
}

/// Fault injection (the agent's debug endpoint): page worker `index` spins forever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HangWorker {
    pub index: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HangWorkerReply {
    pub hanging: u32,
}

/// A message from the page to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PageEvent {
    /// The page's first message, once its runtime has started. (Boxed: the report is
    /// large and sent once.)
    Hello {
        capabilities: Box<Capabilities>,
    },
    /// The answer to a [`PageCommand::Ping`]: the page's instances as they are now.
    Pong {
        #[serde(default)]
        workers: Vec<PageWorker>,
    },
    Result(CallResult),
    /// The page's WebGPU device was lost (the GPU process died): its WebGPU sessions
    /// are unusable.
    GpuLost {
        #[serde(default)]
        message: String,
    },
    /// A line for the agent's log (a replaced worker, a dropped frame).
    Log {
        #[serde(default)]
        message: String,
    },
}

/// The page's answer to call `req`: `value` when `ok`, else `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResult {
    #[serde(default)]
    pub req: u64,
    /// Absent counts as a refusal, as an error always is.
    #[serde(default)]
    pub ok: bool,
    /// The reply, whose type depends on the call `req` numbers and so is not known
    /// until the waiting caller takes it ([`CallResult::reply`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a call to the page brought no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The page answered that it could not do it; its reason.
    #[error("{0}")]
    Refused(String),
    /// No answer came (the browser went away), or it was malformed.
    #[error(transparent)]
    Failed(#[from] crate::error::AgentError),
}

impl CallResult {
    /// The reply to call `C`, the page's reason when it refused, or why the reply is
    /// not one.
    pub fn reply<C: Call>(self) -> Result<C::Reply, CallError> {
        if !self.ok {
            return Err(CallError::Refused(
                self.error.unwrap_or_else(|| "unknown error".to_owned()),
            ));
        }
        let value = self.value.unwrap_or(serde_json::Value::Null);
        C::Reply::deserialize(&value).map_err(|e| {
            CallError::Failed(crate::error::AgentError::Internal(format!(
                "the page sent a malformed reply ({e}): {value}"
            )))
        })
    }
}

/// [`PageCommand::Ping`] as sent, written once: the heartbeat goes out several times a
/// second.
pub const PING: &str = r#"{"op":"ping"}"#;

#[cfg(test)]
mod tests;
