//! Model metadata as the browsers holding a model say it: asked of each holder in turn
//! (any of them knows the model's inputs and outputs), or of one agent.

use std::time::Duration;

use webaccel_api::ErrorCategory;
use webaccel_api::oip::ModelMetadata;
use webaccel_kserve::ApiError;

use crate::discovery::Endpoint;
use crate::service::Gateway;

impl Gateway {
    /// Model metadata as a browser holding `name` says it, asked of each in turn.
    pub(crate) async fn holder_metadata(&self, name: &str) -> Result<ModelMetadata, ApiError> {
        let holders: Vec<Endpoint> = self
            .backends
            .all()
            .iter()
            .map(|b| b.endpoint())
            .filter(|e| e.serving && e.models.contains(name))
            .collect();
        let mut last = ApiError::new(
            ErrorCategory::ModelNotFound,
            format!("no ready browser holds model '{name}'"),
        );
        for ep in holders {
            match self.metadata_from(&ep, name, Duration::from_secs(5)).await {
                Ok(meta) => return Ok(meta),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Model metadata of `name` as the agent at `ep` says it within `timeout`. The
    /// agent's own error keeps its category (the model is gone, or not ready there); no
    /// answer at all is the browser being unavailable.
    pub(crate) async fn metadata_from(
        &self,
        ep: &Endpoint,
        name: &str,
        timeout: Duration,
    ) -> Result<ModelMetadata, ApiError> {
        let agent = webaccel_agent_client::Endpoint {
            pod: ep.id.clone(),
            base_url: ep.url.clone(),
            token: ep.token.clone(),
        };
        let asked = tokio::time::timeout(timeout, self.metadata.model_metadata(&agent, name));
        match asked.await {
            Err(_) => Err(ApiError::new(
                ErrorCategory::BrowserUnavailable,
                format!("{}: no metadata within {timeout:?}", ep.id),
            )),
            Ok(Ok(mut meta)) => {
                // Which browser answered is no business of the client's.
                meta.parameters.remove("backend");
                Ok(meta)
            }
            Ok(Err(e)) => Err(ApiError::new(
                e.category().unwrap_or(ErrorCategory::BrowserUnavailable),
                format!("{}: {e}", ep.id),
            )),
        }
    }
}
