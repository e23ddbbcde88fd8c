//! Cutting a model into pipeline stages: contiguous runs of its nodes (in topological
//! order), each a valid model, balanced by the parameter bytes they carry.
//!
//! Stage `i` reads the original graph inputs its nodes use plus what stage `i-1` gives
//! it, and gives stage `i+1` every tensor that stage or a later one reads: a tensor
//! needed two stages on is passed through the stage between (a graph input that is
//! also a graph output, no node). The last stage gives the original graph outputs, so
//! running the stages one after another, each fed by the one before, computes what the
//! whole model does. Each stage carries only the initializers its nodes read; a
//! constant read on both sides of a cut (typically a shape or a scale) is copied into
//! each stage that reads it, and [`StagePlan::duplicated_parameter_bytes`] says how
//! much that adds.

mod cut;

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::Error;
use crate::proto::{GraphProto, ModelProto, ValueInfoProto};
use crate::tensor::{TensorInfo, tensor_bytes, typed_values};

/// Why a model cannot be cut as asked.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Model(#[from] Error),
    #[error("a model is cut into at least one stage")]
    NoStages,
    #[error("node '{node}' is {} {op}: control flow cannot be cut", article(.op))]
    ControlFlow { node: String, op: String },
    #[error(
        "node '{node}' ({op}) holds a subgraph in attribute '{attribute}': nodes with \
         subgraphs cannot be cut"
    )]
    Subgraph {
        node: String,
        op: String,
        attribute: String,
    },
    #[error(
        "{stages} stages need {} cut points, but a graph of {nodes} nodes has only {}",
        .stages - 1,
        .nodes.saturating_sub(1)
    )]
    TooFewCutPoints { stages: usize, nodes: usize },
    #[error(
        "stage {stage} of {stages} would be empty: it would hold no parameters, as the \
         model's parameters are read by too few nodes to spread over {stages} stages"
    )]
    EmptyStage { stage: usize, stages: usize },
    #[error(
        "tensor '{tensor}' crosses from stage {from} to stage {to}, but the model states no \
         type for it; run shape inference on the model first, e.g. python3 -c \"import \
         onnx; onnx.save(onnx.shape_inference.infer_shapes(onnx.load('MODEL.onnx')), \
         'MODEL.onnx')\" (or python3 -m onnxruntime.tools.symbolic_shape_infer for \
         models with com.microsoft operators)"
    )]
    MissingType {
        tensor: String,
        from: usize,
        to: usize,
    },
    #[error("invalid graph: {0}")]
    Invalid(String),
}

fn article(op: &str) -> &'static str {
    match op.chars().next() {
        Some('A' | 'E' | 'I' | 'O' | 'U' | 'a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// What a cut produced, for people and `stages.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StagePlan {
    /// The model's name (its graph's), which the stages' names start with.
    pub model: String,
    /// Initializer bytes of the whole model.
    pub parameter_bytes: u64,
    /// Bytes of initializers held by more than one stage, counted once per extra copy:
    /// the stages' parameter bytes add up to `parameter_bytes` plus this (less any
    /// initializer no node reads, which no stage keeps).
    pub duplicated_parameter_bytes: u64,
    pub stages: Vec<StageSummary>,
}

/// One stage of a [`StagePlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageSummary {
    /// `<model>_stage<i>`, the stage graph's name.
    pub name: String,
    /// Number of nodes.
    pub nodes: usize,
    /// The first and last node (names, or op and index for unnamed nodes).
    pub first_node: String,
    pub last_node: String,
    /// Initializer bytes this stage carries.
    pub parameter_bytes: u64,
    /// Number of initializers this stage carries.
    pub initializers: usize,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

/// The stage models and their summary.
#[derive(Debug, Clone)]
pub struct Sharded {
    pub models: Vec<ModelProto>,
    pub plan: StagePlan,
}

/// Cuts `model` into `stages` stage models; see the module documentation.
pub fn shard(model: &ModelProto, stages: usize) -> Result<Vec<ModelProto>, ShardError> {
    shard_with_plan(model, stages).map(|s| s.models)
}

fn initializer_bytes(graph: &GraphProto) -> u64 {
    let sparse = graph
        .sparse_initializer
        .iter()
        .filter_map(|s| s.values.as_ref());
    graph
        .initializer
        .iter()
        .chain(sparse)
        .map(tensor_bytes)
        .sum()
}

/// Cuts `model` into `stages` stage models and describes them.
pub fn shard_with_plan(model: &ModelProto, stages: usize) -> Result<Sharded, ShardError> {
    let layout = Layout::new(model, stages)?;
    let mut models = Vec::with_capacity(stages);
    let mut summaries = Vec::with_capacity(stages);
    for s in 0..stages {
        let (stage, summary) = layout.stage(s)?;
        models.push(stage);
        summaries.push(summary);
    }
    let unique: HashMap<&str, u64> = models
        .iter()
        .filter_map(|m| m.graph.as_ref())
        .flat_map(|g| {
            let sparse = g
                .sparse_initializer
                .iter()
                .filter_map(|s| s.values.as_ref());
            g.initializer.iter().chain(sparse)
        })
        .map(|t| (t.name(), tensor_bytes(t)))
        .collect();
    let stage_sum: u64 = summaries.iter().map(|s| s.parameter_bytes).sum();
    let duplicated = stage_sum.saturating_sub(unique.values().sum());
    let plan = StagePlan {
        model: layout.name.to_owned(),
        parameter_bytes: initializer_bytes(layout.graph),
        duplicated_parameter_bytes: duplicated,
        stages: summaries,
    };
    Ok(Sharded { models, plan })
}

/// A decided cut: the nodes of each stage and the tensors crossing between stages.
struct Layout<'a> {
    model: &'a ModelProto,
    graph: &'a GraphProto,
    /// The model's name, which the stages' names start with.
    name: &'a str,
    stages: usize,
    /// Node indices in topological order; stage `s` holds `order[starts[s]..ends[s]]`.
    order: Vec<usize>,
    starts: Vec<usize>,
    ends: Vec<usize>,
    /// Node-produced tensors in production order, with the stage producing each.
    produced: Vec<(&'a str, usize)>,
    /// The last stage reading each tensor (graph outputs: the last stage).
    needed_until: HashMap<&'a str, usize>,
    types: HashMap<&'a str, ValueInfoProto>,
}

impl<'a> Layout<'a> {
    fn new(model: &'a ModelProto, stages: usize) -> Result<Self, ShardError> {
        let graph = crate::main_graph(model)?;
        if stages == 0 {
            return Err(ShardError::NoStages);
        }
        if stages > 1 {
            cut::check_no_subgraphs(graph)?;
        }
        let n = graph.node.len();
        if stages > n.max(1) {
            return Err(ShardError::TooFewCutPoints { stages, nodes: n });
        }
        let order = cut::topological_order(graph)?;
        let weights = cut::node_weights(graph, &order);
        let cuts = cut::choose_cuts(&weights, &cut::crossings(graph, &order), stages);
        let starts: Vec<usize> = std::iter::once(0).chain(cuts.iter().copied()).collect();
        let ends: Vec<usize> = cuts.iter().copied().chain(std::iter::once(n)).collect();
        let weightless = |s: &usize| weights[starts[*s]..ends[*s]].iter().all(|&w| w == 0);
        if weights.iter().any(|&w| w > 0)
            && let Some(stage) = (0..stages).find(weightless)
        {
            return Err(ShardError::EmptyStage { stage, stages });
        }

        let mut stage_at = vec![0usize; n];
        for s in 0..stages {
            stage_at[starts[s]..ends[s]].fill(s);
        }
        let mut produced = Vec::new();
        let mut needed_until: HashMap<&str, usize> = HashMap::new();
        for (pos, &i) in order.iter().enumerate() {
            let node = &graph.node[i];
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                produced.push((out.as_str(), stage_at[pos]));
            }
            for input in &node.input {
                let until = needed_until.entry(input.as_str()).or_insert(stage_at[pos]);
                *until = (*until).max(stage_at[pos]);
            }
        }
        for out in &graph.output {
            needed_until.insert(out.name(), stages - 1);
        }
        Ok(Self {
            model,
            graph,
            name: Some(graph.name())
                .filter(|s| !s.is_empty())
                .unwrap_or("model"),
            stages,
            order,
            starts,
            ends,
            produced,
            needed_until,
            types: typed_values(graph),
        })
    }

    /// The value info of a tensor crossing a cut, which the stage interface needs.
    fn crossing(&self, tensor: &str, from: usize) -> Result<ValueInfoProto, ShardError> {
        self.types
            .get(tensor)
            .cloned()
            .ok_or_else(|| ShardError::MissingType {
                tensor: tensor.to_owned(),
                from,
                to: self.needed_until.get(tensor).copied().unwrap_or(from),
            })
    }

    /// Tensor names stage `s` reads: its nodes' inputs, what subgraph bodies read from
    /// the enclosing graph (only in a single stage: cuts refuse subgraphs), and for the
    /// last stage the graph outputs.
    fn reads(&self, s: usize) -> HashSet<&'a str> {
        let mut used = HashSet::new();
        for &i in &self.order[self.starts[s]..self.ends[s]] {
            let node = &self.graph.node[i];
            used.extend(node.input.iter().map(String::as_str));
            for attr in &node.attribute {
                let bodies = attr.g.iter().chain(&attr.graphs);
                for body in bodies.flat_map(crate::tensor::graphs) {
                    used.extend(
                        body.node
                            .iter()
                            .flat_map(|n| n.input.iter().map(String::as_str)),
                    );
                }
            }
        }
        if s + 1 == self.stages {
            used.extend(self.graph.output.iter().map(|o| o.name()));
        }
        used.remove("");
        used
    }

    /// Stage `s` as a model, and its summary.
    fn stage(&self, s: usize) -> Result<(ModelProto, StageSummary), ShardError> {
        let (graph, name, stages) = (self.graph, self.name, self.stages);
        let last = s + 1 == stages;
        let positions = self.starts[s]..self.ends[s];
        let indices = &self.order[positions.clone()];
        let produced_here: HashSet<&str> = indices
            .iter()
            .flat_map(|&i| graph.node[i].output.iter().map(String::as_str))
            .collect();
        let used = self.reads(s);

        let mut input: Vec<ValueInfoProto> = (graph.input.iter())
            .filter(|v| used.contains(v.name()))
            .cloned()
            .collect();
        let mut output = Vec::new();
        for &(t, from) in &self.produced {
            let until = self.needed_until.get(t).copied().unwrap_or(from);
            if from < s && s <= until {
                input.push(self.crossing(t, from)?);
            }
            if !last && from <= s && s < until {
                output.push(self.crossing(t, from)?);
            }
        }
        if last {
            output = graph.output.clone();
        }
        let output_names: HashSet<&str> = output.iter().map(|o| o.name()).collect();
        // Types of the stage's inner tensors, kept for tools that read them.
        let value_info = graph
            .value_info
            .iter()
            .filter(|v| produced_here.contains(v.name()) && !output_names.contains(v.name()))
            .cloned()
            .collect();
        let stage_name = format!("{name}_stage{s}");
        let label = |pos: usize| cut::node_label(&graph.node[self.order[pos]], self.order[pos]);
        let (first_node, last_node) = match positions.clone().last() {
            Some(end) => (label(positions.start), label(end)),
            None => (String::new(), String::new()),
        };
        let stage_graph = GraphProto {
            node: indices.iter().map(|&i| graph.node[i].clone()).collect(),
            name: Some(stage_name.clone()),
            initializer: (graph.initializer.iter())
                .filter(|t| used.contains(t.name()))
                .cloned()
                .collect(),
            sparse_initializer: (graph.sparse_initializer.iter())
                .filter(|t| t.values.as_ref().is_some_and(|v| used.contains(v.name())))
                .cloned()
                .collect(),
            doc_string: Some(format!(
                "stage {s} of {stages} of '{name}': nodes {first_node} to {last_node}"
            )),
            input,
            output,
            value_info,
            quantization_annotation: (graph.quantization_annotation.iter())
                .filter(|a| {
                    used.contains(a.tensor_name()) || produced_here.contains(a.tensor_name())
                })
                .cloned()
                .collect(),
            metadata_props: graph.metadata_props.clone(),
        };
        let summary = StageSummary {
            name: stage_name,
            nodes: positions.len(),
            first_node,
            last_node,
            parameter_bytes: initializer_bytes(&stage_graph),
            initializers: stage_graph.initializer.len() + stage_graph.sparse_initializer.len(),
            inputs: stage_graph
                .input
                .iter()
                .map(TensorInfo::from_value_info)
                .collect(),
            outputs: stage_graph
                .output
                .iter()
                .map(TensorInfo::from_value_info)
                .collect(),
        };
        let model = self.model;
        let stage = ModelProto {
            ir_version: model.ir_version,
            opset_import: model.opset_import.clone(),
            producer_name: model.producer_name.clone(),
            producer_version: model.producer_version.clone(),
            domain: model.domain.clone(),
            model_version: model.model_version,
            doc_string: Some(format!("webaccel stage {s} of {stages} of '{name}'")),
            graph: Some(stage_graph),
            metadata_props: model.metadata_props.clone(),
            // Model-local functions may be called from any stage's nodes.
            functions: model.functions.clone(),
            configuration: model.configuration.clone(),
            // Training info describes the whole model; a stage is for inference.
            ..Default::default()
        };
        Ok((stage, summary))
    }
}
