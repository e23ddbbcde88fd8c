//! OpenAI's `POST /v1/audio/transcriptions` as webaccel takes it: the multipart form's
//! fields, refused where webaccel cannot honour them, and the JSON answer.

use serde::{Deserialize, Serialize};

use super::{RequestError, refuse};
use crate::generate::{GenerateInput, GenerateParams, GenerateRequest};

/// `POST /v1/audio/transcriptions`, from its multipart form: the audio file and the
/// fields webaccel reads. Fields it cannot honour are refused, not ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TranscriptionForm {
    pub model: Option<String>,
    pub file: Option<Vec<u8>>,
    pub language: Option<String>,
    pub response_format: Option<String>,
    pub temperature: Option<f32>,
}

impl TranscriptionForm {
    /// Takes one form field (`name`, its text or bytes).
    pub fn field(&mut self, name: &str, value: Vec<u8>) -> Result<(), RequestError> {
        let text = |v: Vec<u8>| {
            String::from_utf8(v)
                .map_err(|_| refuse(param_name(name), format!("{name} must be text")))
        };
        match name {
            "file" => self.file = Some(value),
            "model" => self.model = Some(text(value)?),
            "language" => self.language = Some(text(value)?).filter(|l| !l.is_empty()),
            "response_format" => self.response_format = Some(text(value)?),
            "temperature" => {
                let t = text(value)?;
                self.temperature = Some(t.trim().parse().map_err(|_| {
                    refuse(
                        "temperature",
                        format!("temperature must be a number, not '{t}'"),
                    )
                })?);
            }
            "prompt" if value.is_empty() => {}
            "prompt" => {
                return Err(refuse(
                    "prompt",
                    "prompt (a transcript to continue) is not supported",
                ));
            }
            "stream" if value == b"false" => {}
            "stream" => {
                return Err(refuse(
                    "stream",
                    "streamed transcriptions are not supported: omit stream",
                ));
            }
            "timestamp_granularities[]" | "timestamp_granularities" => {
                return Err(refuse(
                    "timestamp_granularities",
                    "timestamps are not supported (webaccel transcribes with <|notimestamps|>)",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The generation this asks for, and whether the answer is plain text
    /// (`response_format: text`) rather than JSON.
    pub fn to_generate(&self) -> Result<(GenerateRequest, bool), RequestError> {
        use base64::Engine;
        let model = self
            .model
            .clone()
            .ok_or_else(|| refuse("model", "the form needs a model field"))?;
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| refuse("file", "the form needs a file field: the audio"))?;
        let text = match self.response_format.as_deref() {
            None | Some("json") => false,
            Some("text") => true,
            Some(other) => {
                return Err(refuse(
                    "response_format",
                    format!("response_format must be json or text, not {other}"),
                ));
            }
        };
        if self.temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(refuse("temperature", "temperature must be between 0 and 1"));
        }
        let request = GenerateRequest {
            model,
            input: GenerateInput::Audio {
                wav_base64: base64::engine::general_purpose::STANDARD.encode(file),
                language: self.language.clone(),
            },
            params: GenerateParams {
                // OpenAI's default for transcriptions is 0: greedy.
                temperature: Some(self.temperature.unwrap_or(0.0)),
                ..GenerateParams::default()
            },
            timeout_ms: None,
            request_id: None,
        };
        Ok((request, text))
    }
}

/// A form field's name as an error's `param` (bounded: the known fields, else `form`).
fn param_name(name: &str) -> &'static str {
    match name {
        "model" => "model",
        "language" => "language",
        "response_format" => "response_format",
        _ => "form",
    }
}

/// A transcription, as OpenAI's `json` response format has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptionResponse {
    pub text: String,
}
