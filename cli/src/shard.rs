//! `webaccel shard`: cuts an ONNX model into pipeline stages, one `.onnx` file per stage
//! and a `stages.json` describing them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use webaccel_onnx::{Precision, TensorInfo, human_bytes};

#[derive(Debug, clap::Args)]
pub struct ShardArgs {
    /// The model (a self-contained .onnx file, shape-inferred so that the tensors
    /// crossing a cut have types).
    model: PathBuf,
    /// How many stages to cut it into, balanced by parameter bytes.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    stages: u16,
    /// Where to write stage0.onnx... and stages.json; default: `<model stem>.stages/`
    /// beside the model.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `stages.json`: what a pipeline runner needs to chain the stages.
#[derive(Debug, Serialize)]
struct StagesFile {
    /// The model file cut, as given.
    model: String,
    model_sha256: String,
    precision: Precision,
    /// What the precision was read from, e.g. `4 MatMulNBits nodes with bits=4`.
    precision_reason: String,
    /// Initializer bytes of the whole model.
    parameter_bytes: u64,
    /// Bytes of small constants copied into more than one stage.
    duplicated_parameter_bytes: u64,
    stages: Vec<StageEntry>,
}

#[derive(Debug, Serialize)]
struct StageEntry {
    index: usize,
    /// File name, relative to stages.json.
    file: String,
    sha256: String,
    bytes: u64,
    name: String,
    nodes: usize,
    parameter_bytes: u64,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `<dir>/<stem>.stages` for `<dir>/<stem>.onnx`.
fn default_out(model: &Path) -> anyhow::Result<PathBuf> {
    let stem = model
        .file_stem()
        .with_context(|| format!("{} names no file", model.display()))?;
    let mut name = stem.to_os_string();
    name.push(".stages");
    Ok(model.with_file_name(name))
}

/// Removes the stage files of an earlier cut into more stages, so that the folder
/// holds exactly what stages.json lists.
fn remove_old_stages(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_stage = name
            .strip_prefix("stage")
            .and_then(|rest| rest.strip_suffix(".onnx"))
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
        if is_stage {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// A list of names for the table: the first two and how many more.
fn names(tensors: &[TensorInfo]) -> String {
    let mut shown: Vec<&str> = tensors.iter().take(2).map(|t| t.name.as_str()).collect();
    let more = tensors.len().saturating_sub(2);
    let extra = format!("+{more} more");
    if more > 0 {
        shown.push(&extra);
    }
    shown.join(", ")
}

/// Runs `webaccel shard`; prints the stages as a table (or stages.json with `--json`).
#[allow(clippy::print_stdout)]
pub fn run(args: ShardArgs, json: bool) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let model = webaccel_onnx::parse(&bytes).with_context(|| args.model.display().to_string())?;
    let precision = webaccel_onnx::detect(&model)?;
    let sharded = webaccel_onnx::shard_with_plan(&model, usize::from(args.stages))
        .with_context(|| format!("cannot cut {}", args.model.display()))?;
    let out = match args.out {
        Some(out) => out,
        None => default_out(&args.model)?,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    remove_old_stages(&out)?;

    let mut stages = Vec::with_capacity(sharded.models.len());
    for (index, (stage, summary)) in sharded.models.iter().zip(sharded.plan.stages).enumerate() {
        let file = format!("stage{index}.onnx");
        let data = webaccel_onnx::encode(stage);
        let path = out.join(&file);
        std::fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
        stages.push(StageEntry {
            index,
            file,
            sha256: sha256(&data),
            bytes: data.len() as u64,
            name: summary.name,
            nodes: summary.nodes,
            parameter_bytes: summary.parameter_bytes,
            inputs: summary.inputs,
            outputs: summary.outputs,
        });
    }
    let description = StagesFile {
        model: args.model.display().to_string(),
        model_sha256: sha256(&bytes),
        precision: precision.precision,
        precision_reason: precision.reason,
        parameter_bytes: sharded.plan.parameter_bytes,
        duplicated_parameter_bytes: sharded.plan.duplicated_parameter_bytes,
        stages,
    };
    let text = serde_json::to_string_pretty(&description)?;
    let index = out.join("stages.json");
    std::fs::write(&index, format!("{text}\n"))
        .with_context(|| format!("writing {}", index.display()))?;

    if json {
        println!("{text}");
        return Ok(());
    }
    println!(
        "{}: {} ({}), {} of parameters, cut into {} stages in {}",
        args.model.display(),
        description.precision,
        description.precision_reason,
        human_bytes(description.parameter_bytes),
        description.stages.len(),
        out.display()
    );
    let rows: Vec<[String; 5]> = description
        .stages
        .iter()
        .map(|s| {
            [
                s.file.clone(),
                s.nodes.to_string(),
                human_bytes(s.parameter_bytes),
                names(&s.inputs),
                names(&s.outputs),
            ]
        })
        .collect();
    let header = ["STAGE", "NODES", "PARAMETERS", "INPUTS", "OUTPUTS"].map(String::from);
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    println!(
        "serve them as one model with a ModelDeployment listing them under spec.stages, in this order (uri and sha256 from stages.json)"
    );
    if description.duplicated_parameter_bytes > 0 {
        println!(
            "{} of constants read on both sides of a cut are copied into each stage that reads them",
            human_bytes(description.duplicated_parameter_bytes)
        );
    }
    Ok(())
}
