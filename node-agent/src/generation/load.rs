//! What a decoder's load adds: its tokenizer (`tokenizer.json`, with the
//! `tokenizer_config.json` beside it), the model's `config.json` (beside the model file
//! or one folder up, as Optimum and transformers.js lay repositories out), the checks
//! that they fit the graph, and the [`Generator`] made of them.

use std::sync::Arc;

use tokio::sync::Semaphore;
use webaccel_api::generate::GenerationSpec;

use super::Generator;
use super::audio::{FrontEnd, PreprocessorConfig};
use super::speech::Speech;
use super::text::{ModelConfig, TextCodec};
use crate::cache::{ModelCache, sibling};
use crate::error::AgentError;
use crate::page::protocol::DecoderLayout;

/// Why a decoder's generation could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("its tokenizer: {0}")]
    Fetch(String),
    #[error(transparent)]
    Text(#[from] super::text::TextError),
    #[error(
        "the tokenizer has {tokenizer} tokens but the model's logits cover {model}: ids past {model} would index outside the model's vocabulary (a tokenizer of another model?)"
    )]
    Vocabulary { tokenizer: u32, model: u32 },
    #[error(
        "its context length is unknown: no config.json with max_position_embeddings beside the model; set generation.contextLength"
    )]
    NoContextLength,
    #[error(transparent)]
    Speech(#[from] super::speech::SpeechError),
}

/// The bytes of the file at `uri`, through the cache; `None` when it does not exist.
async fn optional(cache: &ModelCache, uri: &str) -> Result<Option<Vec<u8>>, SetupError> {
    match cache.get(uri, None).await {
        Ok(file) => tokio::fs::read(&file.path)
            .await
            .map(Some)
            .map_err(|e| SetupError::Fetch(format!("{uri}: {e}"))),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(SetupError::Fetch(e.to_string())),
    }
}

/// Sets up generation for the decoder at `model_uri` with graph `layout`, as `spec`
/// asks.
pub async fn generator(
    cache: &ModelCache,
    model_uri: &str,
    layout: DecoderLayout,
    spec: &GenerationSpec,
) -> Result<Generator, SetupError> {
    let tokenizer_uri = &spec.tokenizer.uri;
    let tokenizer = cache
        .get(tokenizer_uri, spec.tokenizer.sha256.as_deref())
        .await
        .map_err(|e| SetupError::Fetch(e.to_string()))?;
    let tokenizer_json = tokio::fs::read(&tokenizer.path)
        .await
        .map_err(|e| SetupError::Fetch(format!("{tokenizer_uri}: {e}")))?;
    let tokenizer_config =
        optional(cache, &sibling(tokenizer_uri, "tokenizer_config.json")).await?;
    let mut model_config = None;
    for name in ["config.json", "../config.json"] {
        if let Some(bytes) = optional(cache, &sibling(model_uri, name)).await? {
            model_config = Some(ModelConfig::parse(&bytes)?);
            break;
        }
    }
    let template = spec.settings.chat_template.clone();
    let config = model_config.clone();
    // A large vocabulary takes a moment to read: off the async threads.
    let codec = tokio::task::spawn_blocking(move || {
        TextCodec::new(
            &tokenizer_json,
            tokenizer_config.as_deref(),
            config.as_ref(),
            template.as_deref(),
        )
    })
    .await
    .map_err(|e| SetupError::Fetch(e.to_string()))??;
    // Padding rows beyond the tokenizer's vocabulary are common (a multiple of 64 or
    // 128); ids the model cannot score are not.
    if codec.vocab_size() > layout.vocab {
        return Err(SetupError::Vocabulary {
            tokenizer: codec.vocab_size(),
            model: layout.vocab,
        });
    }
    let context_length = spec
        .settings
        .context_length
        .or_else(|| model_config.and_then(|c| c.max_position_embeddings))
        .ok_or(SetupError::NoContextLength)?;
    // An encoder-decoder transcribes: its front end and prompt from the files beside it.
    let speech = if layout.cross_attention {
        let front = match optional(cache, &sibling(model_uri, "preprocessor_config.json")).await? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                super::speech::SpeechError::Audio(super::audio::AudioError::Config(e.to_string()))
            })?,
            None => PreprocessorConfig::default(),
        };
        let front_end = FrontEnd::new(front).map_err(super::speech::SpeechError::Audio)?;
        let generation_config =
            optional(cache, &sibling(model_uri, "generation_config.json")).await?;
        Some(Arc::new(Speech::new(
            front_end,
            generation_config.as_deref(),
            &codec,
        )?))
    } else {
        None
    };
    Ok(Generator {
        speech,
        codec: Arc::new(codec),
        layout,
        context_length,
        spec: spec.clone(),
        slots: Arc::new(Semaphore::new(spec.settings.max_sequences as usize)),
    })
}

impl From<SetupError> for AgentError {
    fn from(e: SetupError) -> Self {
        Self::ModelLoad(e.to_string())
    }
}
