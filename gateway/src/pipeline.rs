//! Models cut into stages (a ModelDeployment's `spec.stages`), served as one model named
//! after the deployment. A request runs stage 0 on a browser holding `<name>.stage0`,
//! then stage 1 on one holding `<name>.stage1` fed with what stage 0 gave (the tensors
//! keep their names: a stage's inputs are the outputs of the one before, plus any of
//! the client's inputs it reads itself), and so on; the last stage's outputs are the
//! answer. Tensors go from stage to stage as they came back over the bridge (binary
//! frames, never JSON).
//!
//! Each stage is a request of its own to the gateway's routing (the `Route` the
//! gateway's service is): power of two choices, breakers, retries of retryable failures
//! on another browser within the retry budget, waiting (in the deployment's queue, so the
//! scale-from-zero signal names the deployment) while no browser holds the stage. One
//! deadline spans every stage. There is no lock per request: stage 1 of one request runs
//! while stage 0 runs the next, so concurrent requests fill the pipeline.
//!
//! What a stage is fed is chosen by its inputs, from its metadata (asked once of a
//! browser holding it, then cached until the pipelines change or the stage refuses a
//! request as malformed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde_json::{Map, Value};
use webaccel_api::ErrorCategory;
use webaccel_api::oip::{ModelMetadata, TensorMetadata};
use webaccel_api::wire::{InferRequest, InferResponse};
use webaccel_kserve::{ApiError, CallOptions, Inferred};

use crate::backend::conn::CallError;
use crate::discovery::{Endpoint, Pipelines};
use crate::record::Trace;

/// What a pipeline needs of the gateway: one model's request routed through the fleet,
/// and a model's metadata as a browser holding it says it. The pipeline stays apart from
/// the routing, which in turn feeds each stage through [`Stages::fed`].
pub(crate) trait Route: Sync {
    /// Runs the stage request `req` on a browser holding `req.model`, fed with the
    /// inputs that model names, waiting in `queue_as`'s queue while none can take it.
    fn call_stage(
        &self,
        req: &InferRequest,
        queue_as: &str,
        deadline: Instant,
        options: &CallOptions,
        trace: &mut Trace,
    ) -> impl Future<Output = Result<InferResponse, ApiError>> + Send;

    /// The metadata of `name` as the agent at `ep` says it within `timeout`.
    fn metadata_at(
        &self,
        ep: &Endpoint,
        name: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<ModelMetadata, ApiError>> + Send;

    /// The metadata of `name` as any browser holding it says it.
    fn metadata_of_any(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<ModelMetadata, ApiError>> + Send;
}

/// Stage metadata, by the stage's model name.
#[derive(Debug, Default)]
struct MetadataCache(Mutex<HashMap<String, Arc<ModelMetadata>>>);

impl MetadataCache {
    fn get(&self, model: &str) -> Option<Arc<ModelMetadata>> {
        self.0.lock().get(model).cloned()
    }

    fn put(&self, model: &str, meta: ModelMetadata) -> Arc<ModelMetadata> {
        let meta = Arc::new(meta);
        self.0.lock().insert(model.to_owned(), meta.clone());
        meta
    }

    fn forget(&self, model: &str) {
        self.0.lock().remove(model);
    }

    fn clear(&self) {
        self.0.lock().clear();
    }
}

/// The error of stage `index` (`model`), its category kept.
fn at_stage(index: usize, model: &str, e: ApiError) -> ApiError {
    ApiError {
        message: format!("stage {index} ({model}): {}", e.message),
        ..e
    }
}

/// The inputs of a pipeline as a client sees them: stage 0's, and those a later stage
/// reads that the stage before does not give (the client's own inputs it reads itself).
fn pipeline_inputs(stages: &[Arc<ModelMetadata>]) -> Vec<TensorMetadata> {
    let mut inputs: Vec<TensorMetadata> = Vec::new();
    let mut given: Vec<&str> = Vec::new();
    for meta in stages {
        for i in &meta.inputs {
            if !given.contains(&i.name.as_str()) && !inputs.iter().any(|x| x.name == i.name) {
                inputs.push(i.clone());
            }
        }
        given = meta.outputs.iter().map(|o| o.name.as_str()).collect();
    }
    inputs
}

/// The models cut into stages that the discovery source publishes, and each stage's
/// metadata (its inputs pick what it is fed), as a browser holding it said.
#[derive(Debug, Default)]
pub struct Stages {
    pipelines: RwLock<Arc<Pipelines>>,
    metadata: MetadataCache,
}

impl Stages {
    /// Follows the models cut into stages the discovery source publishes.
    pub fn set(&self, pipelines: Arc<Pipelines>) {
        let mut current = self.pipelines.write();
        if **current != *pipelines {
            // A stage of the same name may now be another file.
            self.metadata.clear();
            *current = pipelines;
        }
    }

    /// The stages of `model`, when it is cut into stages.
    pub fn of(&self, model: &str) -> Option<Vec<String>> {
        self.pipelines.read().get(model).cloned()
    }

    /// Whether `model` is a stage of some pipeline.
    pub fn is_stage(&self, model: &str) -> bool {
        self.pipelines
            .read()
            .values()
            .any(|stages| stages.iter().any(|s| s == model))
    }

    /// Forgets the metadata of stage `model` (it refused a request as malformed: its
    /// inputs may have changed under the same name).
    pub fn forget_metadata(&self, model: &str) {
        self.metadata.forget(model);
    }

    /// The metadata of stage `model`: cached, else asked of `ep` (a browser holding it)
    /// or, without one, of any browser holding it.
    async fn stage_meta<R: Route>(
        &self,
        route: &R,
        model: &str,
        ep: Option<&Endpoint>,
        timeout: Duration,
    ) -> Result<Arc<ModelMetadata>, ApiError> {
        if let Some(meta) = self.metadata.get(model) {
            return Ok(meta);
        }
        let meta = match ep {
            Some(ep) => route.metadata_at(ep, model, timeout).await?,
            None => route.metadata_of_any(model).await?,
        };
        Ok(self.metadata.put(model, meta))
    }

    /// `req` with only the inputs its model names, for the browser at `ep` (which is
    /// asked for the model's metadata when it is not known yet). A failure to ask is the
    /// browser's (retryable elsewhere).
    pub(crate) async fn fed<R: Route>(
        &self,
        route: &R,
        req: &InferRequest,
        ep: &Endpoint,
        timeout: Duration,
    ) -> Result<InferRequest, CallError> {
        let meta = self
            .stage_meta(
                route,
                &req.model,
                Some(ep),
                timeout.min(Duration::from_secs(5)),
            )
            .await
            .map_err(|e| CallError {
                category: ErrorCategory::BrowserUnavailable,
                message: format!("asking {} for the inputs of '{}': {e}", ep.id, req.model),
                health: false,
            })?;
        let inputs = req
            .inputs
            .iter()
            .filter(|t| meta.inputs.iter().any(|i| i.name == t.name))
            .cloned()
            .collect();
        Ok(InferRequest {
            inputs,
            ..req.clone()
        })
    }

    /// Runs `req` through `stages` in turn within one deadline.
    pub(crate) async fn infer<R: Route>(
        &self,
        route: &R,
        req: &InferRequest,
        stages: &[String],
        deadline: Instant,
        options: &CallOptions,
        trace: &mut Trace,
    ) -> Result<Inferred, ApiError> {
        if stages.is_empty() {
            return Err(ApiError::new(
                ErrorCategory::Internal,
                format!("model '{}' has no stages", req.model),
            ));
        }
        // What the stage before gave (moved on, not copied).
        let mut given: Vec<webaccel_api::Tensor> = Vec::new();
        for (i, stage) in stages.iter().enumerate() {
            // What the stage before gave, then the client's inputs (a stage may read
            // those itself); the stage takes those it names.
            let mut inputs = std::mem::take(&mut given);
            inputs.extend(
                req.inputs
                    .iter()
                    .filter(|t| !inputs.iter().any(|c| c.name == t.name))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            let stage_req = InferRequest {
                model: stage.clone(),
                inputs,
                // Intermediate stages give everything (what they give is what the next
                // needs); the last gives what the client asked for.
                outputs: if i + 1 == stages.len() {
                    req.outputs.clone()
                } else {
                    Vec::new()
                },
                timeout_ms: None,
                request_id: None,
            };
            let response = route
                .call_stage(&stage_req, &req.model, deadline, options, trace)
                .await
                .map_err(|e| at_stage(i, stage, e))?;
            given = response.outputs;
        }
        let response = InferResponse {
            model: req.model.clone(),
            backend: trace.backends(),
            compute_ms: trace.compute_ms,
            page_ms: None,
            stages: Default::default(),
            outputs: given,
        };
        let pool = trace
            .answered
            .first()
            .map(|a| a.0.clone())
            .unwrap_or_default();
        let parameters = Map::from_iter([
            ("backend".to_owned(), Value::from(response.backend.clone())),
            ("compute_ms".to_owned(), Value::from(response.compute_ms)),
            ("pool".to_owned(), Value::from(pool)),
            ("browser".to_owned(), Value::from(trace.browsers())),
            ("attempts".to_owned(), Value::from(trace.attempts)),
            ("stages".to_owned(), Value::from(stages.len())),
        ]);
        Ok(Inferred {
            response,
            parameters,
        })
    }

    /// A pipeline's metadata: its name, the inputs a client gives (stage 0's, and any of
    /// its own inputs a later stage reads), the last stage's outputs.
    pub(crate) async fn metadata<R: Route>(
        &self,
        route: &R,
        name: &str,
        stages: &[String],
    ) -> Result<ModelMetadata, ApiError> {
        let mut metas = Vec::with_capacity(stages.len());
        for (i, stage) in stages.iter().enumerate() {
            let meta = self
                .stage_meta(route, stage, None, Duration::from_secs(5))
                .await
                .map_err(|e| at_stage(i, stage, e))?;
            metas.push(meta);
        }
        let (Some(first), Some(last)) = (metas.first(), metas.last()) else {
            return Err(ApiError::new(
                ErrorCategory::ModelNotFound,
                format!("model '{name}' has no stages"),
            ));
        };
        let mut parameters = first.parameters.clone();
        parameters.insert("stages".to_owned(), Value::from(stages.join(",")));
        Ok(ModelMetadata {
            name: name.to_owned(),
            versions: first.versions.clone(),
            platform: first.platform.clone(),
            inputs: pipeline_inputs(&metas),
            outputs: last.outputs.clone(),
            parameters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(inputs: &[&str], outputs: &[&str]) -> Arc<ModelMetadata> {
        let t = |n: &&str| TensorMetadata {
            name: (*n).to_owned(),
            datatype: "FP32".into(),
            shape: vec![1],
        };
        Arc::new(ModelMetadata {
            name: "s".into(),
            versions: vec![],
            platform: "onnxruntime_onnx".into(),
            inputs: inputs.iter().map(t).collect(),
            outputs: outputs.iter().map(t).collect(),
            parameters: Map::new(),
        })
    }

    #[test]
    fn a_pipelines_inputs_are_stage_zeros_and_what_later_stages_read_themselves() {
        let stages = [
            meta(&["tokens"], &["h1", "mask"]),
            meta(&["h1", "mask", "tokens"], &["h2"]),
            meta(&["h2", "position"], &["hidden"]),
        ];
        let names: Vec<String> = pipeline_inputs(&stages)
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["tokens", "position"]);
    }
}
