//! The OpenAI API's text generation bodies, as the agent and the gateway serve them
//! (`POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`): the requests
//! with the fields the `openai` package sends (and vLLM's extras: `top_k`,
//! `repetition_penalty`, `ignore_eos`, `stop_token_ids`), turned into a
//! [`GenerateRequest`]; the responses, stream chunks and errors as the package reads
//! them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::generate::{
    ChatMessage, FinishReason, GenerateInput, GenerateParams, GenerateRequest, TokenLogprob, Usage,
};

/// Why a request cannot be served as asked (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub message: String,
    /// The offending field.
    pub param: Option<&'static str>,
}

fn refuse(param: &'static str, message: impl Into<String>) -> RequestError {
    RequestError {
        message: message.into(),
        param: Some(param),
    }
}

/// One string or several (`stop`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// A completion prompt: text or token ids, one or a batch of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields both requests share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub user: Option<String>,
    /// vLLM's extras.
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
}

impl Sampling {
    /// The generation parameters, refusing what webaccel does not do.
    fn params(
        &self,
        max_tokens: Option<u32>,
        logprobs: Option<u32>,
    ) -> Result<GenerateParams, RequestError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(refuse(
                "n",
                "n must be 1: webaccel returns one choice per request",
            ));
        }
        for (param, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(refuse(
                    param,
                    format!("{param} is not supported; use repetition_penalty"),
                ));
            }
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(refuse("logit_bias", "logit_bias is not supported"));
        }
        let top_k = match self.top_k {
            None | Some(-1 | 0) => None,
            Some(k) if k > 0 => Some(u32::try_from(k).unwrap_or(u32::MAX)),
            Some(k) => {
                return Err(refuse(
                    "top_k",
                    format!("top_k must be -1 (off) or positive, not {k}"),
                ));
            }
        };
        Ok(GenerateParams {
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k,
            seed: self.seed,
            repetition_penalty: self.repetition_penalty,
            stop: self
                .stop
                .clone()
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
            stop_token_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
            echo: false,
            logprobs,
        })
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    /// The OpenAI API's default is 16.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Log-probabilities of each token and this many alternatives.
    #[serde(default)]
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub echo: bool,
    #[serde(default)]
    pub best_of: Option<u32>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// The completions API's default `max_tokens`.
pub const COMPLETION_MAX_TOKENS: u32 = 16;

impl CompletionRequest {
    /// The generation this asks for.
    pub fn to_generate(&self) -> Result<GenerateRequest, RequestError> {
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(refuse("best_of", "best_of must be 1"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(refuse("suffix", "suffix is not supported"));
        }
        let input = match &self.prompt {
            Prompt::Text(text) => GenerateInput::Text { text: text.clone() },
            Prompt::Tokens(ids) => GenerateInput::Tokens { ids: ids.clone() },
            Prompt::Texts(v) if v.len() == 1 => GenerateInput::Text { text: v[0].clone() },
            Prompt::TokenLists(v) if v.len() == 1 => GenerateInput::Tokens { ids: v[0].clone() },
            _ => {
                return Err(refuse(
                    "prompt",
                    "prompt must be one text or one list of token ids: send one request per prompt",
                ));
            }
        };
        Ok(GenerateRequest {
            model: self.model.clone(),
            input,
            params: GenerateParams {
                echo: self.echo,
                ..self.sampling.params(
                    Some(self.max_tokens.unwrap_or(COMPLETION_MAX_TOKENS)),
                    self.logprobs,
                )?
            },
            timeout_ms: None,
            request_id: None,
        })
    }
}

/// A message's content: text, or parts of which only text ones are taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub logprobs: bool,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

impl ChatRequest {
    pub fn to_generate(&self) -> Result<GenerateRequest, RequestError> {
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(refuse("tools", "tools are not supported"));
        }
        if let Some(format) = &self.response_format
            && format.get("type").and_then(Value::as_str) != Some("text")
        {
            return Err(refuse(
                "response_format",
                "only the text response format is supported",
            ));
        }
        let messages = self
            .messages
            .iter()
            .map(|m| {
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for p in parts {
                            match (&*p.kind, &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                (kind, _) => {
                                    return Err(refuse(
                                        "messages",
                                        format!("content parts of type '{kind}' are not supported: text only"),
                                    ));
                                }
                            }
                        }
                        text
                    }
                };
                Ok(ChatMessage {
                    role: m.role.clone(),
                    content,
                    name: m.name.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if messages.is_empty() {
            return Err(refuse(
                "messages",
                "messages must hold at least one message",
            ));
        }
        let logprobs = match (self.logprobs, self.top_logprobs) {
            (true, top) => Some(top.unwrap_or(0)),
            (false, Some(_)) => {
                return Err(refuse("top_logprobs", "top_logprobs needs logprobs: true"));
            }
            (false, None) => None,
        };
        Ok(GenerateRequest {
            model: self.model.clone(),
            input: GenerateInput::Chat {
                messages,
                add_generation_prompt: true,
            },
            params: self
                .sampling
                .params(self.max_completion_tokens.or(self.max_tokens), logprobs)?,
            timeout_ms: None,
            request_id: None,
        })
    }
}

/// OpenAI's usage block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBody {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl From<Usage> for UsageBody {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// A finish reason as the OpenAI API names it (a cancelled generation never answers).
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

/// The completions API's log-probabilities of a run of tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// `null` for a prompt's first token (echoed): nothing comes before it.
    pub token_logprobs: Vec<Option<f64>>,
    pub top_logprobs: Vec<serde_json::Map<String, Value>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
}

/// A completion, or (`object: text_completion`, no usage) one chunk of a streamed one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageBody>,
}

/// One alternative at a position, as the chat API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

impl ChatTokenLogprob {
    pub fn new(text: &str, logprob: f64, top: &[TokenLogprob]) -> Self {
        Self {
            token: text.to_owned(),
            logprob,
            bytes: text.as_bytes().to_vec(),
            top_logprobs: top
                .iter()
                .map(|t| ChatTopLogprob {
                    token: t.text.clone(),
                    logprob: t.logprob,
                    bytes: t.text.as_bytes().to_vec(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageBody,
}

/// What a stream chunk adds to the assistant's message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// One chunk of a streamed chat completion (`object: chat.completion.chunk`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageBody>,
}

/// `GET /v1/models` entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// Positions the model attends over, as vLLM reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// An error as the OpenAI API writes it: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `not_found_error`, `rate_limit_error`, `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    /// webaccel's error category.
    pub code: Option<String>,
}

mod transcription;
pub use transcription::{TranscriptionForm, TranscriptionResponse};

#[cfg(test)]
mod tests;
