//! `ModelDeployment`: a model to keep loaded on some browsers of a `BrowserPool`.
// kube's printcolumn(...) attributes repeat keys such as `type_` by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use webaccel_api::Backend;
pub use webaccel_api::Precision;
use webaccel_api::agent::ModelSpec;
use webaccel_api::generate::{GenerationSettings, GenerationSpec, TokenizerSource};
use webaccel_engine::deployment::Unit;
use webaccel_engine::model_scale::DEFAULT_TARGET;
pub use webaccel_engine::policy::ModelAutoscaling;
pub use webaccel_engine::replica::{ReplicaState, ReplicaStatus};

/// A model that webaccel-operator keeps loaded on `replicas` browsers of a pool, or on as
/// many as its demand asks for (`autoscaling`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "webaccel.dev",
    version = "v1alpha1",
    kind = "ModelDeployment",
    namespaced,
    shortname = "mdep",
    category = "webaccel",
    status = "ModelDeploymentStatus",
    derive = "PartialEq",
    doc = "A model that webaccel-operator keeps loaded on some browsers of a BrowserPool.",
    validation = kube::core::Rule::new("size(self.metadata.name) <= 57").message("a ModelDeployment name is at most 57 characters, so that the pod label webaccel.dev/model.<name> is valid"),
    validation = kube::core::Rule::new("!has(self.spec.stages) || size(self.metadata.name) <= 49").message("a ModelDeployment with stages has a name of at most 49 characters, so that the pod labels webaccel.dev/model.<name>.stage<i> are valid"),
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.poolRef.name"),
    printcolumn(name = "Task", type_ = "string", json_path = ".spec.model.task"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desiredReplicas"),
    printcolumn(name = "Loaded", type_ = "integer", json_path = ".status.loadedReplicas"),
    printcolumn(name = "Backend", type_ = "string", json_path = ".status.backend"),
    printcolumn(name = "Scaling", type_ = "string", json_path = ".status.autoscaler.reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.model) ? 1 : 0) + (has(self.stages) ? 1 : 0) + (has(self.ensemble) ? 1 : 0) == 1").message("exactly one of model (one file), stages (a model cut by `webaccel shard`, in pipeline order) or ensemble (other ModelDeployments chained) must be set"))]
#[x_kube(validation = kube::core::Rule::new("has(self.tokenizer) == (has(self.model) && self.model.task in ['text-generation', 'speech-to-text'])").message("a text-generation or speech-to-text model (model.task) needs a tokenizer (tokenizer.uri: its tokenizer.json), and only such a model takes one"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.generation) || has(self.tokenizer)").message("generation settings apply to a text-generation model with a tokenizer"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.tokenizer) || !has(self.batching)").message("a text-generation model batches its sequences itself (continuous batching, generation.maxSequences): batching must not be set"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.tokenizer) || self.tokenizer.uri.startsWith('https://') || self.tokenizer.uri.startsWith('http://') || self.tokenizer.uri.startsWith('file://')").message("tokenizer.uri must start with https://, http:// or file://"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.generation) || !has(self.generation.kvCache) || self.generation.kvCache != 'fp16'").message("generation.kvCache must be fp32, int8 or int4"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.replicas) || !has(self.autoscaling)").message("set replicas (a fixed number) or autoscaling (replicas that follow the model's demand), not both"))]
pub struct ModelDeploymentSpec {
    pub pool_ref: PoolRef,
    /// The model file. Exactly one of `model` and `stages` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSource>,
    /// A model cut into pipeline stages (the files `webaccel shard` writes), in order.
    /// Each stage is loaded as a model of its own, `<name>.stage<i>`, on browsers that
    /// hold no other stage of it when the pool has enough; `replicas` counts per stage.
    /// The gateway serves the stages as one model named after the deployment: stage 0
    /// gets the request, each next stage the tensors the one before gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("size(self) >= 1").message("stages needs at least one entry: the stage files `webaccel shard` writes, in order"))]
    #[schemars(length(max = 16))]
    pub stages: Option<Vec<ModelSource>>,
    /// Other ModelDeployments of the same pool chained into one model, after Triton's
    /// ensemble scheduling: the page runs the steps back to back and intermediate tensors
    /// never leave it (on WebGPU they stay in GPU buffers). Placed on browsers that hold
    /// every step; served under this deployment's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleSpec>,
    /// Backends to run on, in order of preference; a browser is chosen for the first one it
    /// can run. `auto` lets the agent measure the candidates and keep the fastest.
    #[serde(default = "auto")]
    #[x_kube(validation = kube::core::Rule::new("size(self) > 0").message("backends needs at least one entry: auto, webgpu, webnn or wasm"))]
    #[schemars(length(max = 4))]
    pub backends: Vec<Backend>,
    /// Browsers that hold the model, a fixed number (1 when neither this nor
    /// `autoscaling` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Replicas that follow the model's own demand (requests in flight and queued on its
    /// replicas, for text generation its active sequences, plus requests the gateway
    /// holds for it), down to zero with `minReplicas: 0`; the pool's browsers follow the
    /// replicas when the pool autoscales.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
    #[x_kube(validation = kube::core::Rule::new("self.panicWindowSeconds <= self.stableWindowSeconds").message("autoscaling.panicWindowSeconds must not exceed autoscaling.stableWindowSeconds"))]
    pub autoscaling: Option<ModelAutoscaling>,
    /// The precision the model file must have (fp32, fp16, int8, int4). The agent detects
    /// a model's precision from its graph and refuses a file that disagrees; unset takes
    /// what the file is. Status shows what was detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Run the model once at load so the first request does not pay for compilation.
    #[serde(default = "yes")]
    pub warmup: bool,
    /// Dynamic batching: requests waiting for the same model are joined into one run
    /// (only for models whose inputs and outputs have a dynamic leading dimension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
    /// The tokenizer of a text-generation or speech-to-text model (`model.task`, which
    /// then needs one): a Hugging Face `tokenizer.json`, read with the
    /// `tokenizer_config.json` (chat template, special tokens) and `config.json`
    /// (context length) beside it, as in a Hugging Face repository; a speech-to-text
    /// model's `preprocessor_config.json` and `generation_config.json` beside the model.
    /// Same URI rules as the model file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerSource>,
    /// How a text-generation model generates: concurrent sequences per browser, context
    /// length, the KV cache's precision, continuous batching, a chat template and
    /// sampling defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationSettings>,
}

/// An ensemble of other ModelDeployments (`spec.ensemble`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnsembleSpec {
    #[x_kube(validation = kube::core::Rule::new("size(self) >= 1").message("ensemble.steps needs at least one step"))]
    #[schemars(length(max = 16))]
    pub steps: Vec<EnsembleStepSpec>,
    /// Ensemble tensors returned, in this order.
    #[x_kube(validation = kube::core::Rule::new("size(self) >= 1").message("ensemble.outputs must name at least one tensor"))]
    #[schemars(length(max = 64))]
    pub outputs: Vec<String>,
    /// What the ensemble does, recorded with its metrics.
    pub task: Task,
}

/// One step of an ensemble.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnsembleStepSpec {
    /// A ModelDeployment (with `model`, not `stages`) of the same pool.
    #[schemars(length(min = 1, max = 63))]
    pub model: String,
    /// The step model's input → the ensemble tensor it reads.
    #[serde(default)]
    pub input_map: std::collections::BTreeMap<String, String>,
    /// The step model's output → the ensemble tensor it writes.
    #[serde(default)]
    pub output_map: std::collections::BTreeMap<String, String>,
}

impl EnsembleSpec {
    /// The agent's form: step models named as the agents know them (a ModelDeployment
    /// with `model` is loaded under its own name).
    pub fn for_agents(&self) -> webaccel_api::agent::Ensemble {
        webaccel_api::agent::Ensemble {
            steps: self
                .steps
                .iter()
                .map(|s| webaccel_api::agent::EnsembleStep {
                    model: s.model.clone(),
                    input_map: s.input_map.clone(),
                    output_map: s.output_map.clone(),
                })
                .collect(),
            outputs: self.outputs.clone(),
        }
    }

    /// The step models, in order: an ensemble is placed only where all are loaded.
    pub fn step_models(&self) -> Vec<String> {
        self.steps.iter().map(|s| s.model.clone()).collect()
    }
}

/// The most stages a ModelDeployment may have (the schema's `maxItems`).
pub const MAX_STAGES: usize = 16;

/// The model name stage `stage` of deployment `deployment` has on the agents (and in the
/// pod label `webaccel.dev/model.<name>`): `<deployment>.stage<stage>`.
pub fn stage_model_name(deployment: &str, stage: usize) -> String {
    format!("{deployment}.stage{stage}")
}

/// One model agents load for a deployment: the deployment's own file, named after it, or
/// one of its stages.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentModel<'a> {
    /// The name on the agents.
    pub name: String,
    /// The file; `None` for an ensemble, which has none.
    pub source: Option<&'a ModelSource>,
    /// What it does, recorded with its metrics.
    pub task: Task,
    /// For an ensemble: its steps, which must be loaded on a browser before it.
    pub ensemble: Option<&'a EnsembleSpec>,
    /// Its place in the pipeline, for a stage.
    pub stage: Option<usize>,
}

impl AgentModel<'_> {
    /// Where its file is; empty for an ensemble (the agent's load spec then carries the
    /// ensemble instead of a URI).
    pub fn uri(&self) -> &str {
        self.source.map_or("", |s| s.uri.as_str())
    }

    /// The model as the engine places it.
    pub fn unit(&self) -> Unit {
        Unit {
            name: self.name.clone(),
            steps: self
                .ensemble
                .map(EnsembleSpec::step_models)
                .unwrap_or_default(),
        }
    }

    /// What an agent is asked to load for this model (the deployment's file, or one of
    /// its stages) of `spec` placed on `backend`, the same for pods and local processes;
    /// only where the file is read from (`uri`) is the host's to say (local mode resolves
    /// a relative `file://` against the manifest).
    pub fn load_request(
        &self,
        spec: &ModelDeploymentSpec,
        uri: String,
        backend: Backend,
    ) -> ModelSpec {
        let (max_batch_size, max_queue_delay_us) = Batching::agent_settings(spec.batching.as_ref());
        ModelSpec {
            name: self.name.clone(),
            uri,
            ensemble: self.ensemble.map(EnsembleSpec::for_agents),
            sha256: self.source.and_then(|s| s.sha256.clone()),
            backend,
            webnn_device: Default::default(),
            warmup: spec.warmup,
            task: self.task.as_str().into(),
            precision: spec.precision,
            max_batch_size,
            max_queue_delay_us,
            // Only a deployment's one model file generates (the schema allows a tokenizer
            // with `model` alone).
            generation: spec
                .tokenizer
                .as_ref()
                .filter(|_| self.ensemble.is_none())
                .map(|tokenizer| GenerationSpec {
                    tokenizer: tokenizer.clone(),
                    settings: spec.generation.clone().unwrap_or_default(),
                }),
        }
    }
}

impl ModelDeploymentSpec {
    /// The replicas when the number is fixed (`autoscaling` unset).
    pub fn fixed_replicas(&self) -> Option<i32> {
        match self.autoscaling {
            Some(_) => None,
            None => Some(self.replicas.unwrap_or(1)),
        }
    }

    /// The concurrency one replica is meant to hold when autoscaling: the spec's, else a
    /// text-generation model's concurrent sequences, else the engine's default.
    pub fn target_per_replica(&self) -> i32 {
        let generation = self.tokenizer.as_ref().map(|_| {
            let settings = self.generation.clone().unwrap_or_default();
            i32::try_from(settings.max_sequences).unwrap_or(i32::MAX)
        });
        self.autoscaling
            .as_ref()
            .and_then(|a| a.target_per_replica)
            .or(generation)
            .unwrap_or(DEFAULT_TARGET)
            .max(1)
    }

    /// The models agents load for the deployment named `name`: `[name]` for `model`,
    /// `[name.stage0, name.stage1, ...]` for `stages`. Empty only for a spec the schema
    /// refuses (neither set).
    pub fn agent_models(&self, name: &str) -> Vec<AgentModel<'_>> {
        match (&self.stages, &self.model) {
            (Some(stages), _) => stages
                .iter()
                .enumerate()
                .map(|(i, source)| AgentModel {
                    name: stage_model_name(name, i),
                    source: Some(source),
                    task: source.task,
                    ensemble: None,
                    stage: Some(i),
                })
                .collect(),
            (None, Some(source)) => vec![AgentModel {
                name: name.to_owned(),
                source: Some(source),
                task: source.task,
                ensemble: None,
                stage: None,
            }],
            (None, None) => match &self.ensemble {
                Some(e) => vec![AgentModel {
                    name: name.to_owned(),
                    source: None,
                    task: e.task,
                    ensemble: Some(e),
                    stage: None,
                }],
                None => Vec::new(),
            },
        }
    }

    /// The stages' model names in pipeline order, for a deployment with stages.
    pub fn stage_names(&self, name: &str) -> Option<Vec<String>> {
        let stages = self.stages.as_ref()?;
        Some(
            (0..stages.len())
                .map(|i| stage_model_name(name, i))
                .collect(),
        )
    }
}

/// Dynamic batching settings, after Triton's dynamic batcher.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Batching {
    /// The most rows (the sum of the requests' leading dimensions) joined into one run;
    /// 0 or 1 turns batching off.
    #[serde(default)]
    #[schemars(range(min = 0, max = 4096))]
    pub max_batch_size: u32,
    /// How long a request may wait for others to join its batch; 0 takes only the
    /// requests already waiting.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_queue_delay_microseconds: u64,
}

impl Batching {
    /// `(max_batch_size, max_queue_delay_us)` for an agent's model spec; `(0, 0)` (off)
    /// without settings.
    pub fn agent_settings(batching: Option<&Self>) -> (u32, u64) {
        batching.map_or((0, 0), |b| {
            (b.max_batch_size, b.max_queue_delay_microseconds)
        })
    }
}

fn auto() -> Vec<Backend> {
    vec![Backend::Auto]
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct PoolRef {
    /// A `BrowserPool` in the same namespace.
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// `https://`, `http://`, or `file:///` for a file in the browser pod (a ConfigMap or
    /// PersistentVolumeClaim mounted through the pool's `template.volumes`). Local mode
    /// also reads a relative `file://name.onnx` from the manifest's folder.
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://') || self.startsWith('http://') || self.startsWith('file://')").message("model.uri must start with https://, http:// or file://"))]
    #[schemars(length(min = 1, max = 2048))]
    pub uri: String,
    /// Hex SHA-256 of the file; the agent refuses a download that does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,
    #[serde(default)]
    pub format: ModelFormat,
    pub task: Task,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    #[default]
    Onnx,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    TextEmbedding,
    Vision,
    Audio,
    TextGeneration,
    /// An encoder-decoder (Whisper's layout) that transcribes audio: the decoder is
    /// `model.uri`, its encoder `encoder_model.onnx` beside it.
    SpeechToText,
    Multimodal,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TextEmbedding => "text-embedding",
            Self::Vision => "vision",
            Self::Audio => "audio",
            Self::TextGeneration => "text-generation",
            Self::SpeechToText => "speech-to-text",
            Self::Multimodal => "multimodal",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub loaded_replicas: i32,
    /// The replicas wanted: `spec.replicas`, or what the autoscaler decided.
    #[serde(default)]
    pub desired_replicas: i32,
    /// With `spec.autoscaling`: the autoscaler's last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<ModelAutoscalerStatus>,
    /// Replicas wanted that a browser would take but for its memory budget (the most of
    /// any stage): an autoscaled pool adds browsers for them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replicas_without_room: i32,
    /// The backend the loaded replicas run on (comma-separated if they differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The precision the agents detected from the model's graph (comma-separated if
    /// stages differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaStatus>,
    /// With `spec.stages`: each stage's replicas, in pipeline order; `loadedReplicas` is
    /// then the fewest loaded of any stage (complete pipelines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
}

/// What the per-model autoscaler saw and decided last.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelAutoscalerStatus {
    /// Requests of this model in flight and queued on its replicas.
    pub in_flight: u64,
    /// Requests the gateway holds for it (no replica serves it).
    pub waiting: u64,
    /// Panic mode: a burst scaled up at once and scale-down is held.
    #[serde(default)]
    pub panicking: bool,
    pub reason: String,
    /// When the desired replicas last changed, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
}

impl ModelDeploymentStatus {
    /// The replicas this status reports for `model` (the deployment's own file, or one of
    /// its stages).
    pub fn replicas_of(&self, model: &AgentModel<'_>) -> &[ReplicaStatus] {
        match model.stage {
            None => &self.replicas,
            Some(_) => self
                .stages
                .iter()
                .find(|s| s.model == model.name)
                .map_or(&[], |s| &s.replicas),
        }
    }
}

/// One stage of a deployment with `spec.stages`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// The stage's model name on the agents: `<deployment>.stage<i>`.
    pub model: String,
    #[serde(default)]
    pub loaded_replicas: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaStatus>,
}
