//! The agent as a text-generation server: Triton's generate extension and the OpenAI
//! API (`webaccel_kserve::generate`, `webaccel_kserve::openai`) over the decoders loaded
//! in this browser.

use std::sync::Arc;

use futures::StreamExt;
use webaccel_api::generate::GenerateRequest;
use webaccel_kserve::generate::{GenerationApi, GenerationModel, GenerationStream};
use webaccel_kserve::{ApiError, CallOptions};

use crate::agent::Agent;

impl GenerationApi for Agent {
    async fn generate(
        self: &Arc<Self>,
        mut request: GenerateRequest,
        options: CallOptions,
    ) -> Result<GenerationStream, ApiError> {
        request.request_id.get_or_insert(options.request_id.clone());
        let timeout = options.timeout_within(self.args.generation_timeout);
        let mut events = Agent::generate(self, request, timeout)?;
        // Dropping the stream drops the receiver: the generation stops at its next step.
        Ok(futures::stream::poll_fn(move |cx| events.poll_recv(cx))
            .map(|e| e.map_err(ApiError::from))
            .boxed())
    }

    async fn generation_models(&self) -> Vec<GenerationModel> {
        self.models
            .all()
            .iter()
            .filter(|e| e.loaded().is_ok())
            .filter_map(|e| {
                e.generator().map(|g| GenerationModel {
                    name: e.spec.name.clone(),
                    context_length: Some(g.context_length),
                })
            })
            .collect()
    }

    fn refused(&self, error: &ApiError) {
        self.stats.error(error.category);
    }
}
