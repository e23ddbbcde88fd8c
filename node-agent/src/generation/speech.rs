//! Speech-to-text with an encoder-decoder (Whisper's layout): what a transcription
//! starts from. The audio becomes log-mel features ([`super::audio`]) that the page's
//! encoder turns into the decoder's cross-attention cache; the decoder starts from
//! Whisper's prompt, `<|startoftranscript|>`, the language, the task and
//! `<|notimestamps|>`, as the model's `generation_config.json` names them
//! (`decoder_start_token_id`, `lang_to_id`, `task_to_id`, `no_timestamps_token_id`), or
//! failing that its tokenizer's tokens of those names.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

use super::audio::{AudioError, FrontEnd, read_wav};
use super::text::TextCodec;
use crate::page::protocol::InputFeatures;

/// Why a model cannot transcribe.
#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    #[error("generation_config.json: {0}")]
    Config(String),
    #[error(
        "its start of transcript is unknown: no decoder_start_token_id in generation_config.json and no <|startoftranscript|> token"
    )]
    NoStart,
    #[error("its encoder takes {encoder} mel bands but preprocessor_config.json makes {front_end}")]
    Mels { encoder: u32, front_end: usize },
    #[error(
        "its encoder takes {encoder} frames but preprocessor_config.json makes {front_end} (chunk_length * sampling_rate / hop_length)"
    )]
    Frames { encoder: u32, front_end: usize },
    #[error(transparent)]
    Audio(#[from] AudioError),
}

#[derive(Debug, Default, Deserialize)]
struct GenerationConfig {
    #[serde(default)]
    decoder_start_token_id: Option<u32>,
    #[serde(default)]
    lang_to_id: BTreeMap<String, u32>,
    #[serde(default)]
    task_to_id: BTreeMap<String, u32>,
    #[serde(default)]
    no_timestamps_token_id: Option<u32>,
}

/// How one encoder-decoder transcribes.
#[derive(Debug)]
pub struct Speech {
    pub front_end: FrontEnd,
    start: u32,
    /// By language code (`en`).
    languages: BTreeMap<String, u32>,
    transcribe: Option<u32>,
    no_timestamps: Option<u32>,
}

impl Speech {
    /// From the model's front end and `generation_config.json` (if any), its special
    /// tokens looked up in `codec` where the file is silent.
    pub fn new(
        front_end: FrontEnd,
        generation_config: Option<&[u8]>,
        codec: &TextCodec,
    ) -> Result<Self, SpeechError> {
        let config: GenerationConfig = match generation_config {
            Some(bytes) => {
                serde_json::from_slice(bytes).map_err(|e| SpeechError::Config(e.to_string()))?
            }
            None => GenerationConfig::default(),
        };
        let start = config
            .decoder_start_token_id
            .or_else(|| codec.token_id("<|startoftranscript|>"))
            .ok_or(SpeechError::NoStart)?;
        let mut languages: BTreeMap<String, u32> = config
            .lang_to_id
            .iter()
            .map(|(token, &id)| {
                let code = token.trim_start_matches("<|").trim_end_matches("|>");
                (code.to_owned(), id)
            })
            .collect();
        if languages.is_empty()
            && let Some(id) = codec.token_id("<|en|>")
        {
            languages.insert("en".into(), id);
        }
        Ok(Self {
            front_end,
            start,
            languages,
            transcribe: config
                .task_to_id
                .get("transcribe")
                .copied()
                .or_else(|| codec.token_id("<|transcribe|>")),
            no_timestamps: config
                .no_timestamps_token_id
                .or_else(|| codec.token_id("<|notimestamps|>")),
        })
    }

    /// Checks the encoder's input against the front end.
    pub fn check_encoder(&self, mels: u32, frames: Option<u32>) -> Result<(), SpeechError> {
        let c = self.front_end.config();
        if usize::try_from(mels).ok() != Some(c.feature_size) {
            return Err(SpeechError::Mels {
                encoder: mels,
                front_end: c.feature_size,
            });
        }
        if let Some(f) = frames
            && usize::try_from(f).ok() != Some(c.frames())
        {
            return Err(SpeechError::Frames {
                encoder: f,
                front_end: c.frames(),
            });
        }
        Ok(())
    }

    /// The decoder's prompt for a transcription in `language` (a code such as `en`;
    /// absent: English where the model has it, else its first language).
    pub fn prompt(&self, language: Option<&str>) -> Result<Vec<u32>, String> {
        let lang = match language {
            Some(code) => Some(*self.languages.get(code).ok_or_else(|| {
                format!(
                    "language '{code}' is not one this model knows ({})",
                    self.languages
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?),
            None => self
                .languages
                .get("en")
                .or_else(|| self.languages.values().next())
                .copied(),
        };
        Ok(
            [Some(self.start), lang, self.transcribe, self.no_timestamps]
                .into_iter()
                .flatten()
                .collect(),
        )
    }

    /// The encoder's input for a WAV file sent as base64.
    pub fn features(&self, wav_base64: &str) -> Result<InputFeatures, AudioError> {
        let wav = base64::engine::general_purpose::STANDARD
            .decode(wav_base64.trim())
            .map_err(|e| AudioError::Wav(format!("its base64 does not decode: {e}")))?;
        let (rate, samples) = read_wav(&wav)?;
        let c = self.front_end.config();
        if rate != c.sampling_rate {
            return Err(AudioError::SampleRate {
                got: rate,
                want: c.sampling_rate,
            });
        }
        Ok(InputFeatures {
            dims: vec![1, c.feature_size, c.frames()],
            data: self.front_end.features(&samples),
        })
    }
}
