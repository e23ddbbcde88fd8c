//! Text generation's shared types: what a generation asks for ([`GenerateRequest`]: the
//! bridge's generate frame, and what the agent's and the gateway's OpenAI and Triton
//! front ends make of their requests), what it streams back ([`GenerationEvent`]), and
//! how a deployment generates ([`GenerationSpec`], part of a model load).
//!
//! Tokenization happens on the agent that holds the model's tokenizer: requests carry
//! text (or chat messages), events carry token ids with their text.

pub mod triton;

use serde::{Deserialize, Serialize};

use crate::Precision;

/// Where a deployment's `tokenizer.json` is (same URI rules as the model file). Its
/// `tokenizer_config.json` (chat template, special tokens) is read from beside it, as
/// Hugging Face repositories lay them out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenizerSource {
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 2048)))]
    pub uri: String,
    /// Hex SHA-256 of `tokenizer.json`; a download that does not match is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^[0-9a-fA-F]{64}$")))]
    pub sha256: Option<String>,
}

/// Sampling settings a deployment applies where a request gives none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct GenerationDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
}

/// How a decoder model generates text: part of its load when its task is text
/// generation. On the wire the settings sit beside the tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationSpec {
    pub tokenizer: TokenizerSource,
    #[serde(flatten)]
    pub settings: GenerationSettings,
}

/// How a deployment generates, beside its tokenizer: a ModelDeployment's
/// `spec.generation`, every field optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct GenerationSettings {
    /// A Jinja chat template used instead of the one in `tokenizer_config.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Positions the model attends over (prompt and generated tokens). Absent: the
    /// `max_position_embeddings` of the `config.json` beside the model file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 2)))]
    pub context_length: Option<u32>,
    /// Sequences one browser generates at once; more wait for a place.
    #[serde(default = "default_max_sequences")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 256)))]
    pub max_sequences: u32,
    /// The KV cache's precision in the page: fp32, or int8 / int4 quantized per head and
    /// block of 32 positions (less memory per token, a little accuracy).
    #[serde(default = "default_kv_cache")]
    pub kv_cache: Precision,
    /// Sequences decode together, joining and leaving between steps. Off: one sequence
    /// per run, taking turns.
    #[serde(default = "default_true")]
    pub continuous_batching: bool,
    /// A prompt longer than this is fed this many positions per run, each run attending
    /// to the cache the earlier ones left (chunked prefill): a run's size and memory
    /// stay bounded, and with a quantized cache the prompt's later positions see it, as
    /// generated tokens do. Absent: the whole prompt in one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 65536)))]
    pub prefill_chunk: Option<u32>,
    /// Sampling settings where a request gives none.
    #[serde(default, skip_serializing_if = "is_default")]
    pub defaults: GenerationDefaults,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        Self {
            chat_template: None,
            context_length: None,
            max_sequences: default_max_sequences(),
            kv_cache: default_kv_cache(),
            continuous_batching: true,
            prefill_chunk: None,
            defaults: GenerationDefaults::default(),
        }
    }
}

fn default_max_sequences() -> u32 {
    16
}

fn default_kv_cache() -> Precision {
    Precision::Fp32
}

fn default_true() -> bool {
    true
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The most sequences a browser may be asked to generate at once.
pub const MAX_SEQUENCES: u32 = 256;

/// Why a generation spec is refused before anything is fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerationSpecError {
    #[error("generation.maxSequences must be 1 to {MAX_SEQUENCES}, not {0}")]
    MaxSequences(u32),
    #[error("generation.kvCache must be fp32, int8 or int4, not {0}")]
    KvCache(Precision),
    #[error("generation.contextLength must be at least 2")]
    ContextLength,
    #[error("generation.prefillChunk must be at least 1")]
    PrefillChunk,
    #[error("generation.tokenizer.uri '{0}' must start with file://, http:// or https://")]
    TokenizerScheme(String),
    #[error("generation.tokenizer.sha256 '{0}' must be 64 hexadecimal digits")]
    TokenizerDigest(String),
}

impl GenerationSettings {
    pub fn validate(&self) -> Result<(), GenerationSpecError> {
        if !(1..=MAX_SEQUENCES).contains(&self.max_sequences) {
            return Err(GenerationSpecError::MaxSequences(self.max_sequences));
        }
        if self.kv_cache == Precision::Fp16 {
            return Err(GenerationSpecError::KvCache(self.kv_cache));
        }
        if self.context_length.is_some_and(|c| c < 2) {
            return Err(GenerationSpecError::ContextLength);
        }
        if self.prefill_chunk == Some(0) {
            return Err(GenerationSpecError::PrefillChunk);
        }
        Ok(())
    }
}

impl GenerationSpec {
    /// A spec for the tokenizer at `uri`, everything else as defaulted.
    pub fn with_tokenizer(uri: impl Into<String>) -> Self {
        Self {
            tokenizer: TokenizerSource {
                uri: uri.into(),
                sha256: None,
            },
            settings: GenerationSettings::default(),
        }
    }

    pub fn validate(&self) -> Result<(), GenerationSpecError> {
        self.settings.validate()?;
        let uri = &self.tokenizer.uri;
        if !["file://", "http://", "https://"]
            .iter()
            .any(|s| uri.starts_with(s))
        {
            return Err(GenerationSpecError::TokenizerScheme(uri.clone()));
        }
        if let Some(sha) = &self.tokenizer.sha256
            && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(GenerationSpecError::TokenizerDigest(sha.clone()));
        }
        Ok(())
    }
}

/// One message of a chat, its content as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What to continue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GenerateInput {
    /// Plain text, tokenized with the tokenizer's special tokens (a BOS where it adds
    /// one).
    Text { text: String },
    /// A conversation, rendered with the deployment's chat template.
    Chat {
        messages: Vec<ChatMessage>,
        /// End the rendered prompt with the assistant's header (the template's
        /// `add_generation_prompt`).
        #[serde(default = "default_true")]
        add_generation_prompt: bool,
    },
    /// Token ids, as they are.
    Tokens { ids: Vec<u32> },
    /// Audio to transcribe with a speech-to-text (encoder-decoder) model: a WAV file,
    /// base64 in JSON. `language` names the spoken language as Whisper's tokens do
    /// (`en`); absent: the model's first.
    Audio {
        wav_base64: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        language: Option<String>,
    },
}

/// How to generate; `None` takes the deployment's default, then the server's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateParams {
    /// New tokens at most. Absent: the deployment's default, else what the context
    /// leaves after the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// 0 is greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// 0 keeps every token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Makes sampling reproducible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Hugging Face's repetition penalty; 1 is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// Strings that end the generation; the text stops before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Token ids that end the generation, beside the model's end-of-sequence tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_token_ids: Vec<u32>,
    /// Go on past the end-of-sequence tokens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
    /// Give the prompt back before the completion: its text first, and with
    /// `logprobs` its tokens' log-probabilities (the first has none), as the OpenAI
    /// completions API's `echo` does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo: bool,
    /// Report each token's log-probability and this many most likely alternatives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
}

/// The most alternatives a request may ask log-probabilities for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// One generation: the bridge's generate frame (kind 5), and what the HTTP front ends
/// build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub model: String,
    pub input: GenerateInput,
    #[serde(default)]
    pub params: GenerateParams,
    /// How long the sender waits for the whole generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The caller's request id, for logs across hops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
    /// The client went away or cancelled.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A likely token at some position and its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub text: String,
    pub logprob: f64,
}

/// A token the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedToken {
    pub id: u32,
    /// This token alone, decoded (may be part of a character).
    pub text: String,
    /// Special tokens (end of sequence) are not part of the text.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub special: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprob: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_logprobs: Vec<TokenLogprob>,
}

/// The tokens of one step, as they go out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenChunk {
    /// Text these tokens complete: stop strings held back and cut, characters split
    /// across tokens sent once whole.
    pub text: String,
    pub tokens: Vec<GeneratedToken>,
    /// When the page made them: milliseconds since the Unix epoch, on the agent's host.
    pub produced_at_ms: f64,
    /// The page's step that made them, in milliseconds, and how many sequences it ran.
    pub step_ms: f64,
    pub batch: u32,
    /// With `echo`, on a generation's first chunk: the prompt's text (as given, or
    /// decoded from its ids), before `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<String>,
    /// With `echo` and `logprobs`, on the first chunk: the prompt's tokens, scored by
    /// the model (each given those before it; the first has no score).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt: Vec<GeneratedToken>,
}

/// Prompt and completion tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// What a generation cost, for responses, metrics and ClickHouse.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationTimings {
    /// What ran it (`wasm`, `webgpu`) and where (the agent's browser).
    pub backend: String,
    /// Waiting for a place in the page's batch.
    pub queue_ms: f64,
    /// The prompt's run.
    pub prefill_ms: f64,
    /// From the agent taking the request to its first token leaving.
    pub ttft_ms: f64,
    /// Time between consecutive tokens, median and 99th percentile.
    pub inter_token_p50_ms: f64,
    pub inter_token_p99_ms: f64,
    /// Completion tokens per second after the first.
    pub tokens_per_s: f64,
    pub kv_cache: Option<Precision>,
    /// Bytes the sequence's KV cache held at the end, and per position.
    pub kv_bytes: u64,
    pub kv_bytes_per_token: f64,
    /// The most sequences a step of this one ran with.
    pub max_batch: u32,
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationEnd {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: GenerationTimings,
}

/// What a generation streams: its tokens, step by step, then its end (an error ends a
/// stream as an error frame instead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GenerationEvent {
    Tokens(TokenChunk),
    End(GenerationEnd),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_with_defaults_reads_from_its_tokenizer_alone() {
        let spec: GenerationSpec =
            serde_json::from_str(r#"{"tokenizer":{"uri":"file:///m/tokenizer.json"}}"#)
                .expect("spec");
        assert_eq!(
            spec,
            GenerationSpec::with_tokenizer("file:///m/tokenizer.json")
        );
        assert!(spec.validate().is_ok());
        let mut bad = spec.clone();
        bad.settings.max_sequences = 0;
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "generation.maxSequences must be 1 to 256, not 0"
        );
        let mut fp16 = spec;
        fp16.settings.kv_cache = Precision::Fp16;
        assert!(fp16.validate().is_err());
    }

    #[test]
    fn events_are_tagged() {
        let end = GenerationEvent::End(GenerationEnd {
            finish_reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
            },
            timings: GenerationTimings::default(),
        });
        let json = serde_json::to_value(&end).expect("json");
        assert_eq!(json["event"], "end");
        assert_eq!(json["finish_reason"], "length");
        let back: GenerationEvent = serde_json::from_value(json).expect("back");
        assert_eq!(back, end);
    }
}
