//! The agent as a KServe v2 server: the shared protocol routes (`webaccel_kserve::http`)
//! over the models loaded in this browser.

use std::time::Duration;

use serde_json::{Map, Value};
use webaccel_api::oip::{ModelMetadata, ModelReady, TensorMetadata};
use webaccel_api::timing::StageTimes;
use webaccel_api::wire::InferRequest;
use webaccel_kserve::http::VERSION;
use webaccel_kserve::{ApiError, CallOptions, InferenceApi, Inferred};

use crate::agent::Agent;
use crate::error::AgentError;
use crate::models::IoMeta;

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        Self::new(e.category(), e.to_string())
    }
}

fn io_metadata(list: &[IoMeta]) -> Vec<TensorMetadata> {
    list.iter()
        .map(|m| TensorMetadata {
            name: m.name.clone(),
            datatype: m
                .datatype
                .map_or_else(|| m.ort_type.to_uppercase(), |d| d.as_str().to_owned()),
            shape: m.shape.clone(),
        })
        .collect()
}

impl InferenceApi for Agent {
    fn server_name(&self) -> &str {
        "webaccel-agent"
    }

    fn server_version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn live(&self) -> bool {
        super::admin::unhealthy_reason(self).is_none()
    }

    fn ready(&self) -> bool {
        self.is_ready()
    }

    fn max_tensor_bytes(&self) -> usize {
        self.args.max_tensor_bytes
    }

    async fn model_metadata(&self, name: &str) -> Result<ModelMetadata, ApiError> {
        let loaded = self.models.require(name)?.loaded()?;
        Ok(ModelMetadata {
            name: name.to_owned(),
            versions: vec![VERSION.into()],
            platform: "onnxruntime_onnx".into(),
            inputs: io_metadata(&loaded.inputs),
            outputs: io_metadata(&loaded.outputs),
            parameters: Map::from_iter([("backend".to_owned(), loaded.backend.into())]),
        })
    }

    async fn model_ready(&self, name: &str) -> Result<ModelReady, ApiError> {
        let entry = self.models.require(name)?;
        Ok(ModelReady {
            name: name.to_owned(),
            ready: entry.loaded().is_ok() && self.browser.link().is_some(),
            state: Some(entry.state().name().to_owned()),
        })
    }

    async fn infer(
        &self,
        mut request: InferRequest,
        options: CallOptions,
    ) -> Result<Inferred, ApiError> {
        let timeout: Duration = options.timeout_within(self.args.request_timeout);
        // Its row carries the id the client (or a gateway) sent, or the one generated.
        request
            .request_id
            .get_or_insert_with(|| options.request_id.clone());
        let ran = Agent::infer_run(self, request, timeout, options.arrived).await?;
        let response = ran.response;
        let mut parameters = Map::from_iter([
            // Rows of the run in the page that answered (more than the request's own
            // when dynamic batching joined it with others), and the requests it joined.
            ("batch_size".to_owned(), Value::from(ran.batch_rows)),
            ("batch_requests".to_owned(), Value::from(ran.batch_requests)),
            ("backend".to_owned(), Value::from(response.backend.clone())),
            ("compute_ms".to_owned(), Value::from(response.compute_ms)),
            (
                "page_ms".to_owned(),
                response.page_ms.map_or(Value::Null, Value::from),
            ),
        ]);
        options.add_stages(&mut parameters, &response.stages);
        Ok(Inferred {
            response,
            parameters,
        })
    }

    fn refused(&self, error: &ApiError) {
        self.stats.error(error.category);
    }

    fn answered(&self, model: &str, request_id: &str, stages: &StageTimes, total_ms: f64) {
        Agent::answered(self, model, request_id, stages, total_ms);
    }
}
