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
use webaccel_api::generate::FinishReason;
use webaccel_api::{Backend, Precision, WebNnDevice};

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
    Generate(Request<Generate>),
    Cancel(Request<Cancel>),
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
call!(Generate => Generate, GenerateReply);
call!(Cancel => Cancel, CancelReply);
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
    /// The files of the model's weights kept outside its graph.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_data: Vec<ExternalDataFile>,
    /// A decoder served for text generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<PageGeneration>,
}

/// A file of weights beside a model's graph: `path` as the graph names it, `url` where
/// the page fetches it from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalDataFile {
    pub path: String,
    pub url: String,
}

/// How the page generates with a decoder (`web/src/generation/decoder.js`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageGeneration {
    pub layout: DecoderLayout,
    /// fp32, int8 or int4.
    pub kv_cache: Precision,
    pub continuous_batching: bool,
    /// Sequences one instance of the page decodes at once.
    pub max_batch: u32,
    /// Positions the model attends over.
    pub context_length: u32,
    /// The token under the left padding of a batched prefill (masked).
    pub pad_token_id: u32,
    /// Positions a prompt is fed per run (`generation.prefillChunk`); `None`: the whole
    /// prompt in one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_chunk: Option<u32>,
    /// An encoder-decoder's encoder: the page model (loaded before this one) that turns
    /// a sequence's input features into its cross-attention cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_model: Option<String>,
}

/// What the agent read from a decoder's graph (`crate::generation::graph`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecoderLayout {
    pub layers: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub vocab: u32,
    /// `int64` or `int32`: the type of `input_ids`, `attention_mask` and `position_ids`.
    pub ids_type: String,
    /// Whether the graph takes `position_ids`.
    pub position_ids: bool,
    /// An encoder-decoder: its own cache is `past_key_values.{i}.decoder.*` and it
    /// takes the encoder's `past_key_values.{i}.encoder.*` (see `generation::graph`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cross_attention: bool,
}

/// Sampling as the page applies it: `temperature` 0 is greedy, `top_k` 0 and `top_p` 1
/// keep every token, `repetition_penalty` 1 is off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u32,
    pub repetition_penalty: f32,
}

/// Generates from `prompt` with decoder `model`: the page answers when the sequence
/// ends, and sends its tokens before that, step by step, in [`PageEvent::Tokens`]
/// (each token carrying this call's `req`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generate {
    pub model: String,
    pub prompt: Vec<u32>,
    pub max_new_tokens: u32,
    pub sampling: Sampling,
    /// Tokens that end the sequence (the model's end-of-sequence tokens among them).
    pub stop_token_ids: Vec<u32>,
    /// Each token's log-probability and this many top alternatives; `None`: neither.
    pub logprobs: Option<u32>,
    /// Each token's whole logits row (tests and accuracy measurements).
    pub logits: bool,
    /// The prompt's tokens after the first scored (their log-probabilities and
    /// `logprobs` alternatives), sent with the first token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prompt_logprobs: bool,
    /// An encoder-decoder's encoder input (`input_features`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<InputFeatures>,
}

/// A tensor of float32 features for an encoder, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputFeatures {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

/// How a generation ended in the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateReply {
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Milliseconds waiting for a place in a batch, in the prompt's run, and decoding.
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// The most sequences a step of this one ran with.
    pub max_batch: u32,
    /// Bytes of its KV cache at the end, and per position.
    pub kv_bytes: f64,
    pub kv_bytes_per_token: f64,
    pub backend: String,
}

/// Stops generation `generation` (a [`Generate`] call's `req`) before its next step and
/// frees its cache; its call then answers with `cancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelReply {
    pub cancelled: bool,
}

/// One token of a generation step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepToken {
    /// The [`Generate`] call it belongs to.
    pub req: u64,
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprob: Option<f64>,
    /// The most likely tokens and their log-probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<(u32, f64)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
    /// Set on a sequence's last token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<FinishReason>,
    /// On a sequence's first token, with `prompt_logprobs`: one per prompt token after
    /// the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Vec<PromptLogprob>>,
}

/// The model's log-probability of a prompt token given those before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptLogprob {
    pub logprob: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<(u32, f64)>>,
}

/// One step of generation with `model`: the token each of its sequences made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokensEvent {
    pub model: String,
    /// When the page sent them, in milliseconds since the Unix epoch.
    pub t: f64,
    /// The whole step and the model's run in it, in milliseconds.
    pub step_ms: f64,
    pub run_ms: f64,
    /// Sequences the step ran.
    pub batch: u32,
    /// The prompts' run (each sequence's first token).
    pub prefill: bool,
    pub tokens: Vec<StepToken>,
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
    /// A generation step's tokens.
    Tokens(TokensEvent),
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
