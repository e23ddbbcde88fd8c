//! What a model load asks for: `POST /v1/repository/models` on an agent, `--model` on its command
//! line, and what the operator and local mode send.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Ensemble, EnsembleError};
use crate::Precision;
use crate::backend::{Backend, WebNnDevice};
use crate::generate::{GenerationSpec, GenerationSpecError};

/// One model to serve: where it comes from and how to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    /// Where the ONNX file is; empty for an ensemble.
    #[serde(default)]
    pub uri: String,
    /// An ensemble of models loaded on the same agent, run back to back in the page,
    /// instead of a file (`uri` then stays empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<Ensemble>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub backend: Backend,
    #[serde(default)]
    pub webnn_device: WebNnDevice,
    #[serde(default = "default_true")]
    pub warmup: bool,
    /// What the model does (text-embedding, vision, ...), recorded with its metrics.
    #[serde(default)]
    pub task: String,
    /// The precision the model file must have. The agent detects it from the graph and
    /// refuses a file that disagrees; `None` takes what the file is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Dynamic batching, after Triton's dynamic batcher: the most rows (the sum of the
    /// requests' leading dimensions) the agent joins into one run of the model. 0 or 1:
    /// off. Only models whose inputs and outputs all have a dynamic leading dimension
    /// are batched; others are served one request at a time, with the reason shown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_batch_size: u32,
    /// With batching on: how long (microseconds) a request may wait for others to join
    /// its batch. 0: take only what is already waiting, never wait for more.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_queue_delay_us: u64,
    /// A decoder served for text generation: its tokenizer, KV cache and batching.
    /// (Its KServe `infer` stays one forward pass.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationSpec>,
}

/// How a loaded copy serves, beside its file: what a reload with a changed spec would
/// change. A copy whose settings differ from a deployment's current spec is renewed like
/// a copy of a replaced file (one at a time). Backend, warm-up and task are left out: the
/// backend is chosen per browser, and the others change nothing a client sees.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingSettings {
    pub max_batch_size: u32,
    pub max_queue_delay_us: u64,
    pub precision: Option<Precision>,
    pub webnn_device: WebNnDevice,
    pub generation: Option<GenerationSpec>,
    pub ensemble: Option<Ensemble>,
}

impl ModelSpec {
    /// What this spec serves with (see [`ServingSettings`]).
    pub fn serving(&self) -> ServingSettings {
        ServingSettings {
            max_batch_size: self.max_batch_size,
            max_queue_delay_us: self.max_queue_delay_us,
            precision: self.precision,
            webnn_device: self.webnn_device,
            generation: self.generation.clone(),
            ensemble: self.ensemble.clone(),
        }
    }
}

/// The largest `max_batch_size` a spec may ask for.
pub const MAX_BATCH_SIZE: u32 = 4096;
/// The longest `max_queue_delay_us` a spec may ask for (one second).
pub const MAX_QUEUE_DELAY_US: u64 = 1_000_000;

fn default_true() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
pub(crate) fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Why a model spec is refused before anything is fetched (the agent answers 400 with
/// this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("model name '{0}' must be 1-128 characters of letters, digits, '-', '_' or '.'")]
    Name(String),
    #[error("model '{0}' is an ensemble: it has no uri")]
    EnsembleWithUri(String),
    #[error("ensembles are not batched: max_batch_size must be 0")]
    BatchedEnsemble,
    #[error(transparent)]
    Ensemble(#[from] EnsembleError),
    #[error("model URI '{0}' must start with file://, http:// or https://")]
    Scheme(String),
    #[error("sha256 '{0}' must be 64 hexadecimal digits")]
    Digest(String),
    #[error("max_batch_size {0} is more than {MAX_BATCH_SIZE}")]
    BatchSize(u32),
    #[error("max_queue_delay_us {0} is more than {MAX_QUEUE_DELAY_US} (one second)")]
    QueueDelay(u64),
    #[error("backend=auto measures the backends by running the model, so warmup cannot be false")]
    AutoWithoutWarmup,
    #[error(transparent)]
    Generation(#[from] GenerationSpecError),
    #[error("model '{0}' is an ensemble: it cannot generate text")]
    GeneratingEnsemble(String),
    #[error(
        "a text-generation model batches its sequences itself (continuous batching): max_batch_size must be 0"
    )]
    BatchedGeneration,
}

impl ModelSpec {
    /// Checks what can be checked without fetching: name, URI scheme, digest form.
    pub fn validate(&self) -> Result<(), SpecError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 128
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(SpecError::Name(self.name.clone()));
        }
        if let Some(generation) = &self.generation {
            if self.ensemble.is_some() {
                return Err(SpecError::GeneratingEnsemble(self.name.clone()));
            }
            if self.max_batch_size > 1 {
                return Err(SpecError::BatchedGeneration);
            }
            generation.validate()?;
        }
        if let Some(ensemble) = &self.ensemble {
            if !self.uri.is_empty() {
                return Err(SpecError::EnsembleWithUri(self.name.clone()));
            }
            if self.max_batch_size > 1 {
                return Err(SpecError::BatchedEnsemble);
            }
            return Ok(ensemble.validate()?);
        }
        if !["file://", "http://", "https://"]
            .iter()
            .any(|s| self.uri.starts_with(s))
        {
            return Err(SpecError::Scheme(self.uri.clone()));
        }
        if let Some(sha) = &self.sha256
            && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(SpecError::Digest(sha.clone()));
        }
        if self.max_batch_size > MAX_BATCH_SIZE {
            return Err(SpecError::BatchSize(self.max_batch_size));
        }
        if self.max_queue_delay_us > MAX_QUEUE_DELAY_US {
            return Err(SpecError::QueueDelay(self.max_queue_delay_us));
        }
        if self.warmup || self.backend != Backend::Auto {
            Ok(())
        } else {
            Err(SpecError::AutoWithoutWarmup)
        }
    }
}

impl FromStr for ModelSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not NAME=URI[,key=value...]"))?;
        let mut parts = rest.split(',');
        let uri = parts.next().unwrap_or_default();
        let mut spec = ModelSpec {
            name: name.trim().to_owned(),
            uri: uri.trim().to_owned(),
            ensemble: None,
            sha256: None,
            backend: Backend::Auto,
            webnn_device: WebNnDevice::Cpu,
            warmup: true,
            task: String::new(),
            precision: None,
            max_batch_size: 0,
            max_queue_delay_us: 0,
            generation: None,
        };
        for kv in parts {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("option '{kv}' in '{s}' is not key=value"))?;
            match k.trim() {
                "backend" => spec.backend = v.trim().parse()?,
                "sha256" => spec.sha256 = Some(v.trim().to_ascii_lowercase()),
                "webnn_device" => spec.webnn_device = v.trim().parse()?,
                "task" => spec.task = v.trim().to_owned(),
                "precision" => spec.precision = Some(v.parse()?),
                "max_batch_size" => {
                    spec.max_batch_size = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("max_batch_size must be a whole number, got '{v}'"))?
                }
                "max_queue_delay_us" => {
                    spec.max_queue_delay_us = v.trim().parse().map_err(|_| {
                        format!(
                            "max_queue_delay_us must be a whole number of microseconds, got '{v}'"
                        )
                    })?
                }
                "tokenizer" => spec.generation = Some(GenerationSpec::with_tokenizer(v.trim())),
                "kv_cache"
                | "max_sequences"
                | "context_length"
                | "prefill_chunk"
                | "continuous_batching" => {
                    let generation = spec.generation.as_mut().ok_or_else(|| {
                        format!("option '{}' needs tokenizer=URI before it", k.trim())
                    })?;
                    let v = v.trim();
                    let number = || {
                        v.parse::<u32>()
                            .map_err(|_| format!("{} must be a whole number, got '{v}'", k.trim()))
                    };
                    match k.trim() {
                        "kv_cache" => generation.settings.kv_cache = v.parse()?,
                        "max_sequences" => generation.settings.max_sequences = number()?,
                        "context_length" => generation.settings.context_length = Some(number()?),
                        "prefill_chunk" => generation.settings.prefill_chunk = Some(number()?),
                        _ => {
                            generation.settings.continuous_batching = v.parse().map_err(|_| {
                                format!("continuous_batching must be true or false, got '{v}'")
                            })?
                        }
                    }
                }
                "warmup" => {
                    spec.warmup = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("warmup must be true or false, got '{v}'"))?
                }
                other => {
                    return Err(format!(
                        "unknown model option '{other}' (expected backend, sha256, warmup, webnn_device, task, precision, max_batch_size, max_queue_delay_us, tokenizer, kv_cache, max_sequences, context_length, prefill_chunk or continuous_batching)"
                    ));
                }
            }
        }
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_spec() {
        let spec: ModelSpec = format!(
            "mlp=file:///m/mlp.onnx,backend=wasm,sha256={},warmup=false",
            "AB".repeat(32)
        )
        .parse()
        .unwrap();
        assert_eq!(spec.name, "mlp");
        assert_eq!(spec.uri, "file:///m/mlp.onnx");
        assert_eq!(spec.backend, Backend::Wasm);
        assert_eq!(spec.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert!(!spec.warmup);
    }

    #[test]
    fn parses_batching_and_old_clients_get_it_off() {
        let spec: ModelSpec = "mlp=file:///m/mlp.onnx,max_batch_size=8,max_queue_delay_us=500"
            .parse()
            .unwrap();
        assert_eq!((spec.max_batch_size, spec.max_queue_delay_us), (8, 500));
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["max_batch_size"], 8);
        assert_eq!(json["max_queue_delay_us"], 500);
        // A client that knows nothing of batching: off, and not sent when off.
        let old: ModelSpec =
            serde_json::from_value(serde_json::json!({"name": "m", "uri": "file:///m.onnx"}))
                .unwrap();
        assert_eq!((old.max_batch_size, old.max_queue_delay_us), (0, 0));
        let back = serde_json::to_value(&old).unwrap();
        assert!(back.get("max_batch_size").is_none(), "{back}");
    }

    #[test]
    fn defaults_to_auto_with_warmup() {
        let spec: ModelSpec = "m=https://example.invalid/m.onnx".parse().unwrap();
        assert_eq!((spec.backend, spec.warmup), (Backend::Auto, true));
    }

    #[test]
    fn refuses_bad_specs_with_reasons() {
        let cases = [
            ("nouri", "is not NAME=URI"),
            ("m=ftp://x/m.onnx", "must start with file://"),
            ("m=file:///m.onnx,backend=cuda", "unknown backend 'cuda'"),
            ("m=file:///m.onnx,sha256=xyz", "64 hexadecimal digits"),
            ("m=file:///m.onnx,color=red", "unknown model option 'color'"),
            ("bad name=file:///m.onnx", "model name 'bad name'"),
            ("m=file:///m.onnx,warmup=false", "cannot be false"),
            (
                "m=file:///m.onnx,max_batch_size=-1",
                "max_batch_size must be",
            ),
            ("m=file:///m.onnx,max_batch_size=99999", "more than 4096"),
            ("m=file:///m.onnx,max_queue_delay_us=2000000", "one second"),
        ];
        for (input, want) in cases {
            let err = input.parse::<ModelSpec>().unwrap_err();
            assert!(err.contains(want), "{input}: {err}");
        }
    }
}
