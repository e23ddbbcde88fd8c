//! An encoder-decoder's encoder (speech-to-text, Whisper's layout): a second graph,
//! `encoder_model.onnx` beside the decoder as Optimum exports one, loaded into the page
//! as a model of its own before the decoder, which runs it once per sequence. Checked
//! first against the decoder (a cross-attention cache for each of its layers) and the
//! audio front end (its mel bands and frames).

use std::collections::BTreeMap;

use webaccel_api::agent::ModelSpec;
use webaccel_api::{Backend, WebNnDevice};

use super::load::Loader;
use crate::cache::sibling;
use crate::error::AgentError;
use crate::generation::{Generator, encoder_page_model};
use crate::inspect;
use crate::page::PageLink;
use crate::page::protocol::{CallError, Load};

/// Where an encoder-decoder's encoder is, beside its decoder.
pub const ENCODER_FILE: &str = "encoder_model.onnx";

impl Loader {
    /// Loads the encoder of `spec`'s decoder into the page behind `link`, on the
    /// decoder's backend; returns its page model name.
    pub(super) async fn load_encoder(
        &self,
        link: &PageLink,
        spec: &ModelSpec,
        backend: Backend,
        webnn_device: WebNnDevice,
        avoid: &BTreeMap<String, String>,
        generator: &Generator,
    ) -> Result<String, AgentError> {
        let refused = |why: String| {
            AgentError::ModelLoad(format!(
                "model '{}' cannot transcribe: its encoder ({ENCODER_FILE} beside it): {why}",
                spec.name
            ))
        };
        let uri = sibling(&spec.uri, ENCODER_FILE);
        let cached = self
            .cache
            .get(&uri, None)
            .await
            .map_err(|e| refused(e.to_string()))?;
        let path = self.cache.path_for(&cached.sha256);
        let inspection = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
            inspect::inspect(&bytes).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))?
        .map_err(refused)?;
        let layout = inspection.encoder.map_err(|e| refused(e.to_string()))?;
        if layout.layers != generator.layout.layers {
            return Err(refused(format!(
                "it makes a cross-attention cache for {} layers; the decoder has {}",
                layout.layers, generator.layout.layers
            )));
        }
        if let Some(speech) = &generator.speech {
            speech
                .check_encoder(layout.mels, layout.frames)
                .map_err(|e| refused(e.to_string()))?;
        }
        let external_data = self
            .external_data(link, &uri, &inspection.external_data)
            .await
            .map_err(refused)?;
        let name = encoder_page_model(&spec.name);
        let load = Load {
            name: name.clone(),
            url: format!("/page/models/{}?s={}", cached.sha256, link.secret()),
            backend,
            webnn_device,
            warmup: spec.warmup,
            avoid: avoid.clone(),
            external_data,
            generation: None,
        };
        let reply = link.call(load).await.map_err(|e| match e {
            CallError::Refused(reason) => refused(format!("the runtime refused it: {reason}")),
            CallError::Failed(e) => e,
        })?;
        // Its run blocks the page for as long as it takes (see the supervisor's patience).
        link.observe_load(&reply);
        tracing::info!(model = %spec.name, backend = %reply.backend, create_ms = reply.create_ms, warmup_ms = ?reply.warmup_ms, steady_ms = ?reply.steady_ms, slowest_run = ?link.slowest_run(), "encoder loaded");
        Ok(name)
    }
}
