//! Text generation on this agent. At load a decoder's graph is checked against the
//! convention ([`graph`]) and its tokenizer read ([`text`]); a loaded decoder keeps a
//! [`Generator`]. A request is tokenized and checked here ([`Generator::prepare`]:
//! context, limits, sampling), then runs in the page, which streams its tokens back
//! ([`run`]); text goes out as characters complete, stop strings cut it ([`stop`]).

pub mod audio;
pub mod graph;
pub mod load;
pub mod run;
pub mod speech;
pub mod stop;
pub mod text;

use std::sync::Arc;

use tokio::sync::Semaphore;
use webaccel_api::Precision;
use webaccel_api::generate::{
    GenerateInput, GenerateParams, GenerateRequest, GenerationSpec, MAX_TOP_LOGPROBS,
};

use crate::error::AgentError;
use crate::page::protocol::{DecoderLayout, Generate, PageGeneration, Sampling};
use text::TextCodec;

/// A decoder loaded for generation: what the page was told, and what turns requests
/// into page calls and tokens into text.
#[derive(Debug)]
pub struct Generator {
    pub codec: Arc<TextCodec>,
    pub layout: DecoderLayout,
    /// Positions the model attends over.
    pub context_length: u32,
    pub spec: GenerationSpec,
    /// Sequences the page runs at once (`maxSequences`); the others wait here.
    pub slots: Arc<Semaphore>,
    /// An encoder-decoder's: how it transcribes audio.
    pub speech: Option<Arc<speech::Speech>>,
}

/// A request made ready for the page: its prompt tokens and the call.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub call: Generate,
    /// Strings that end the text.
    pub stop: Vec<String>,
    /// With `echo`: the prompt's text, sent before the first token's.
    pub echo: Option<String>,
}

/// The page model an encoder-decoder `model`'s encoder is loaded as: a name no
/// deployment can have (`#` is not allowed in one), so it never meets a real model.
pub fn encoder_page_model(model: &str) -> String {
    format!("{model}#encoder")
}

fn bad(message: impl Into<String>) -> AgentError {
    AgentError::BadRequest(message.into())
}

impl Generator {
    /// What the page generates with for this decoder.
    pub fn page_config(&self) -> PageGeneration {
        PageGeneration {
            layout: self.layout.clone(),
            kv_cache: self.spec.settings.kv_cache,
            continuous_batching: self.spec.settings.continuous_batching,
            max_batch: self.spec.settings.max_sequences,
            context_length: self.context_length,
            pad_token_id: self.codec.pad_id(),
            prefill_chunk: self.spec.settings.prefill_chunk,
            // Named by the loader, which loads the encoder (see `encoder_page_model`).
            encoder_model: None,
        }
    }

    /// What the KV cache of `maxSequences` sequences at the full context takes at its
    /// peak, in bytes: the reservation placement counts for this decoder.
    ///
    /// The page keeps a sequence's cache between steps as float32, or quantized (int8 or
    /// int4 values and a float32 scale per head and 32-position block). A step feeds the
    /// batch's whole cache to onnxruntime as float32 and gets it back one position
    /// longer, so during a step the float32 cache is there twice (past and present), and
    /// with a quantized cache the quantized copy besides. A quantized cache saves memory
    /// between steps, not at a step's peak; the reservation says so rather than promise
    /// a browser more sequences than it can step.
    pub fn kv_reserve_bytes(&self) -> u64 {
        let l = &self.layout;
        // Cache tensors (a key and a value per layer) times heads.
        let vectors = 2 * u64::from(l.layers) * u64::from(l.kv_heads);
        let dim = u64::from(l.head_dim);
        let float_per_position = vectors * dim * 4;
        // Eighths of a byte, so int4's half bytes and the scale's share stay exact.
        let kept_eighths_per_position = match self.spec.settings.kv_cache {
            Precision::Int8 => vectors * (dim * 8 + 1),
            Precision::Int4 => vectors * (dim * 4 + 1),
            Precision::Fp32 | Precision::Fp16 => 0,
        };
        let positions =
            u64::from(self.spec.settings.max_sequences) * u64::from(self.context_length);
        positions * (2 * float_per_position) + (positions * kept_eighths_per_position).div_ceil(8)
    }

    /// Tokenizes `req` and checks it against the model: a clear 400 for a prompt that
    /// fills the context, limits out of range, or a chat the template refuses.
    pub fn prepare(&self, req: &GenerateRequest) -> Result<Prepared, AgentError> {
        // Audio goes to an encoder-decoder, anything else to a decoder that reads text.
        let mut features = None;
        let prompt = match (&req.input, &self.speech) {
            (
                GenerateInput::Audio {
                    wav_base64,
                    language,
                },
                Some(speech),
            ) => {
                features = Some(
                    speech
                        .features(wav_base64)
                        .map_err(|e| bad(e.to_string()))?,
                );
                Ok(speech.prompt(language.as_deref()).map_err(bad)?)
            }
            (GenerateInput::Audio { .. }, None) => {
                return Err(bad(
                    "this model generates text from text: send a prompt, not audio",
                ));
            }
            (_, Some(_)) => {
                return Err(bad(
                    "this model transcribes audio: send audio (POST /v1/audio/transcriptions)",
                ));
            }
            (GenerateInput::Text { text }, None) => self.codec.encode_text(text),
            (
                GenerateInput::Chat {
                    messages,
                    add_generation_prompt,
                },
                None,
            ) => {
                if messages.is_empty() {
                    return Err(bad("messages must hold at least one message"));
                }
                self.codec.encode_chat(messages, *add_generation_prompt)
            }
            (GenerateInput::Tokens { ids }, None) => {
                if let Some(id) = ids.iter().find(|&&id| id >= self.layout.vocab) {
                    return Err(bad(format!(
                        "token id {id} is outside the model's vocabulary of {}",
                        self.layout.vocab
                    )));
                }
                Ok(ids.clone())
            }
        }
        .map_err(|e| bad(e.to_string()))?;
        if prompt.is_empty() {
            return Err(bad("the prompt is empty: it has no tokens"));
        }
        let p = &req.params;
        let context = self.context_length;
        let prompt_len = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        if prompt_len >= context {
            return Err(bad(format!(
                "this model's maximum context length is {context} tokens, and the prompt has {prompt_len}: it leaves no room for a new token"
            )));
        }
        let room = context - prompt_len;
        let max_new = match p.max_tokens.or(self.spec.settings.defaults.max_tokens) {
            Some(0) => return Err(bad("max_tokens must be at least 1")),
            Some(n) if p.max_tokens.is_some() && n > room => {
                return Err(bad(format!(
                    "this model's maximum context length is {context} tokens; you asked for {} ({prompt_len} in the prompt and {n} for the completion): lower max_tokens to at most {room}",
                    u64::from(prompt_len) + u64::from(n)
                )));
            }
            // A deployment default never fails a request: it is cut to the room left.
            Some(n) => n.min(room),
            None => room,
        };
        let sampling = self.sampling(p)?;
        if let Some(n) = p.logprobs
            && n > MAX_TOP_LOGPROBS
        {
            return Err(bad(format!(
                "logprobs asks for {n} alternatives; at most {MAX_TOP_LOGPROBS}"
            )));
        }
        if let Some(id) = p.stop_token_ids.iter().find(|&&id| id >= self.layout.vocab) {
            return Err(bad(format!(
                "stop token id {id} is outside the model's vocabulary of {}",
                self.layout.vocab
            )));
        }
        let mut stop_token_ids = p.stop_token_ids.clone();
        if !p.ignore_eos {
            stop_token_ids.extend_from_slice(self.codec.eos_ids());
        }
        stop_token_ids.sort_unstable();
        stop_token_ids.dedup();
        let echo = p.echo.then(|| match &req.input {
            GenerateInput::Text { text } => text.clone(),
            _ => self.codec.decode(&prompt),
        });
        Ok(Prepared {
            call: Generate {
                model: req.model.clone(),
                prompt,
                max_new_tokens: max_new,
                sampling,
                stop_token_ids,
                logprobs: p.logprobs,
                logits: false,
                prompt_logprobs: p.echo && p.logprobs.is_some(),
                features,
            },
            stop: p.stop.clone(),
            echo,
        })
    }

    /// The request's sampling, defaults filled in from the deployment and then as the
    /// OpenAI API has them (temperature 1, top_p 1); a request without a seed gets a
    /// random one.
    fn sampling(&self, p: &GenerateParams) -> Result<Sampling, AgentError> {
        let d = &self.spec.settings.defaults;
        let temperature = p.temperature.or(d.temperature).unwrap_or(1.0);
        let top_p = p.top_p.or(d.top_p).unwrap_or(1.0);
        let top_k = p.top_k.or(d.top_k).unwrap_or(0);
        let repetition_penalty = p.repetition_penalty.or(d.repetition_penalty).unwrap_or(1.0);
        if !(0.0..=100.0).contains(&temperature) {
            return Err(bad(format!(
                "temperature must be between 0 and 100, not {temperature}"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(bad(format!(
                "top_p must be above 0 and at most 1, not {top_p}"
            )));
        }
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
            return Err(bad(format!(
                "repetition_penalty must be above 0, not {repetition_penalty}"
            )));
        }
        // The page's generator takes 32 bits: a 64-bit seed folds its halves together.
        #[allow(clippy::cast_possible_truncation)]
        let seed = p
            .seed
            .map_or_else(rand::random::<u32>, |s| (s ^ (s >> 32)) as u32);
        Ok(Sampling {
            temperature,
            top_k,
            top_p,
            seed,
            repetition_penalty,
        })
    }
}
