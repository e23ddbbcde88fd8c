//! Triton's generate extension (`POST /v2/models/{m}/generate` and `/generate_stream`):
//! a request is one JSON object whose keys are the model's inputs (`text_input`, and
//! `max_tokens`, `temperature`, `stream`... as Triton's LLM backends name them) with a
//! `parameters` object beside them; a response is `model_name`, `model_version` and
//! `text_output`, once or (streamed) chunk by chunk as server-sent events.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{GenerateInput, GenerateParams, GenerateRequest};

/// Why a generate body cannot be served (answered 400 with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// A generate request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateBody {
    pub text_input: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// The other inputs, at the top level.
    #[serde(flatten)]
    pub inputs: Map<String, Value>,
}

fn number<T: TryFrom<u64>>(key: &str, v: &Value) -> Result<T, BodyError> {
    v.as_u64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| BodyError(format!("'{key}' must be a whole number, not {v}")))
}

#[allow(clippy::cast_possible_truncation)] // sampling settings are f32 in the page
fn float(key: &str, v: &Value) -> Result<f32, BodyError> {
    v.as_f64()
        .map(|f| f as f32)
        .ok_or_else(|| BodyError(format!("'{key}' must be a number, not {v}")))
}

fn words(key: &str, v: &Value) -> Result<Vec<String>, BodyError> {
    match v {
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| BodyError(format!("'{key}' must be strings, not {i}")))
            })
            .collect(),
        other => Err(BodyError(format!(
            "'{key}' must be a string or a list of strings, not {other}"
        ))),
    }
}

impl GenerateBody {
    /// The generation for model `model`, and whether the body asks to stream.
    pub fn to_generate(&self, model: &str) -> Result<(GenerateRequest, bool), BodyError> {
        let text = self
            .text_input
            .clone()
            .ok_or_else(|| BodyError("the body has no 'text_input'".into()))?;
        let mut params = GenerateParams::default();
        let mut stream = false;
        // Top-level inputs first, then `parameters`, which win.
        for (key, v) in self.inputs.iter().chain(self.parameters.iter()) {
            match key.as_str() {
                "max_tokens" => params.max_tokens = Some(number(key, v)?),
                "temperature" => params.temperature = Some(float(key, v)?),
                "top_p" => params.top_p = Some(float(key, v)?),
                "top_k" => params.top_k = Some(number(key, v)?).filter(|&k| k > 0),
                "seed" | "random_seed" => params.seed = Some(number(key, v)?),
                "repetition_penalty" => params.repetition_penalty = Some(float(key, v)?),
                "stop" | "stop_words" => params.stop = words(key, v)?,
                "ignore_eos" => {
                    params.ignore_eos = v
                        .as_bool()
                        .ok_or_else(|| BodyError(format!("'{key}' must be true or false")))?;
                }
                "stream" => {
                    stream = v
                        .as_bool()
                        .ok_or_else(|| BodyError(format!("'{key}' must be true or false")))?;
                }
                // Accepted as Triton's LLM backends accept them, with nothing to do.
                "bad_words" | "end_id" | "pad_id" | "exclude_input_in_output" => {}
                other => {
                    return Err(BodyError(format!(
                        "unknown input or parameter '{other}' (webaccel takes text_input, max_tokens, temperature, top_p, top_k, seed, repetition_penalty, stop, ignore_eos, stream)"
                    )));
                }
            }
        }
        Ok((
            GenerateRequest {
                model: model.to_owned(),
                input: GenerateInput::Text { text },
                params,
                timeout_ms: None,
                request_id: None,
            },
            stream,
        ))
    }
}

/// A generate response, or one chunk of a streamed one (its `text_output` the new
/// text; the last chunk carries the finish reason and token counts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateResponse {
    pub model_name: String,
    pub model_version: String,
    pub text_output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_parameters_become_the_generation() {
        let body: GenerateBody = serde_json::from_str(
            r#"{"text_input":"Hi","max_tokens":8,"stop_words":["\n"],
                "parameters":{"temperature":0,"stream":true,"max_tokens":4}}"#,
        )
        .expect("parse");
        let (g, stream) = body.to_generate("llm").expect("generate");
        assert!(stream);
        assert_eq!(g.params.max_tokens, Some(4));
        assert_eq!(g.params.temperature, Some(0.0));
        assert_eq!(g.params.stop, ["\n"]);
        assert_eq!(g.input, GenerateInput::Text { text: "Hi".into() });
    }

    #[test]
    fn a_body_without_text_or_with_unknown_keys_is_refused() {
        let refused = |s: &str| {
            serde_json::from_str::<GenerateBody>(s)
                .expect("parse")
                .to_generate("m")
                .unwrap_err()
                .0
        };
        assert!(refused(r#"{"max_tokens":4}"#).contains("text_input"));
        assert!(refused(r#"{"text_input":"x","beam_width":2}"#).contains("'beam_width'"));
        assert!(refused(r#"{"text_input":"x","max_tokens":-1}"#).contains("whole number"));
    }
}
