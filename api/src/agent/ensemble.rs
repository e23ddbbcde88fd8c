//! Ensembles, after Triton's ensemble scheduling: a model made of other models loaded in
//! the same page, run back to back in the page so intermediate tensors never cross the
//! bridge. Each step maps ensemble tensors to its model's inputs (`input_map`: model
//! input → ensemble tensor) and its outputs to ensemble tensors (`output_map`: model
//! output → ensemble tensor); the ensemble's inputs are the tensors steps read that no
//! step writes, its outputs the tensors named in `outputs`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::IoMeta;
use crate::DataType;

/// The most steps an ensemble may have.
pub const MAX_STEPS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ensemble {
    pub steps: Vec<EnsembleStep>,
    /// Ensemble tensors returned, in this order.
    pub outputs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsembleStep {
    /// A model loaded on the same agent.
    pub model: String,
    /// Model input → ensemble tensor it reads. Every input of the model must be mapped.
    #[serde(default)]
    pub input_map: BTreeMap<String, String>,
    /// Model output → ensemble tensor it writes. Unmapped outputs are dropped in the page.
    #[serde(default)]
    pub output_map: BTreeMap<String, String>,
}

/// An ensemble's inputs and outputs as clients see them (model metadata).
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleIo {
    pub inputs: Vec<IoMeta>,
    pub outputs: Vec<IoMeta>,
    /// Tensors passed between steps inside the page.
    pub intermediates: Vec<String>,
}

/// Why an ensemble's steps do not make an ensemble (the agent refuses its load with
/// this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnsembleError {
    #[error("an ensemble needs 1 to {MAX_STEPS} steps, not {0}")]
    StepCount(usize),
    #[error("an ensemble must name at least one output")]
    NoOutputs,
    #[error("step {step} ({model}): the model has no input '{input}'")]
    NoSuchInput {
        step: usize,
        model: String,
        input: String,
    },
    #[error(
        "step {step} ({model}): input '{input}' takes {takes:?} but tensor '{tensor}' is {is:?}"
    )]
    InputType {
        step: usize,
        model: String,
        input: String,
        tensor: String,
        takes: Option<DataType>,
        is: Option<DataType>,
    },
    #[error("ensemble input '{tensor}' is read as {first:?} and as {then:?}")]
    InputReadAsTwoTypes {
        tensor: String,
        first: Option<DataType>,
        then: Option<DataType>,
    },
    #[error("step {step} ({model}): model input '{input}' is not in input_map")]
    Unmapped {
        step: usize,
        model: String,
        input: String,
    },
    #[error("step {step} ({model}): the model has no output '{output}'")]
    NoSuchOutput {
        step: usize,
        model: String,
        output: String,
    },
    #[error("step {step} ({model}): tensor '{tensor}' is written twice")]
    WrittenTwice {
        step: usize,
        model: String,
        tensor: String,
    },
    #[error("ensemble output '{0}' is written by no step")]
    OutputUnwritten(String),
}

impl Ensemble {
    /// Checks the shape of the graph without the step models: step count, outputs named.
    pub fn validate(&self) -> Result<(), EnsembleError> {
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(EnsembleError::StepCount(self.steps.len()));
        }
        if self.outputs.is_empty() {
            return Err(EnsembleError::NoOutputs);
        }
        Ok(())
    }

    /// The ensemble's inputs and outputs from its step models' metadata (`models`: the
    /// inputs and outputs of each step's model, in step order), or why the steps do not
    /// fit together.
    pub fn plan(&self, models: &[(&[IoMeta], &[IoMeta])]) -> Result<EnsembleIo, EnsembleError> {
        self.validate()?;
        let mut written: BTreeMap<&str, &IoMeta> = BTreeMap::new();
        let mut inputs: Vec<IoMeta> = Vec::new();
        let mut read: BTreeSet<&str> = BTreeSet::new();
        for (i, (step, (model_inputs, model_outputs))) in self.steps.iter().zip(models).enumerate()
        {
            let model = || step.model.clone();
            for (model_input, tensor) in &step.input_map {
                let meta = model_inputs
                    .iter()
                    .find(|m| &m.name == model_input)
                    .ok_or_else(|| EnsembleError::NoSuchInput {
                        step: i,
                        model: model(),
                        input: model_input.clone(),
                    })?;
                read.insert(tensor);
                if let Some(source) = written.get(tensor.as_str()) {
                    if source.datatype != meta.datatype {
                        return Err(EnsembleError::InputType {
                            step: i,
                            model: model(),
                            input: model_input.clone(),
                            tensor: tensor.clone(),
                            takes: meta.datatype,
                            is: source.datatype,
                        });
                    }
                } else if let Some(seen) = inputs.iter().find(|m| &m.name == tensor) {
                    if seen.datatype != meta.datatype {
                        return Err(EnsembleError::InputReadAsTwoTypes {
                            tensor: tensor.clone(),
                            first: seen.datatype,
                            then: meta.datatype,
                        });
                    }
                } else {
                    inputs.push(IoMeta {
                        name: tensor.clone(),
                        ..meta.clone()
                    });
                }
            }
            if let Some(unmapped) = model_inputs
                .iter()
                .find(|m| !step.input_map.contains_key(&m.name))
            {
                return Err(EnsembleError::Unmapped {
                    step: i,
                    model: model(),
                    input: unmapped.name.clone(),
                });
            }
            for (model_output, tensor) in &step.output_map {
                let meta = model_outputs
                    .iter()
                    .find(|m| &m.name == model_output)
                    .ok_or_else(|| EnsembleError::NoSuchOutput {
                        step: i,
                        model: model(),
                        output: model_output.clone(),
                    })?;
                if written.contains_key(tensor.as_str()) || inputs.iter().any(|m| &m.name == tensor)
                {
                    return Err(EnsembleError::WrittenTwice {
                        step: i,
                        model: model(),
                        tensor: tensor.clone(),
                    });
                }
                written.insert(tensor, meta);
            }
        }
        let outputs = self
            .outputs
            .iter()
            .map(|name| {
                written
                    .get(name.as_str())
                    .map(|m| IoMeta {
                        name: name.clone(),
                        ..(*m).clone()
                    })
                    .ok_or_else(|| EnsembleError::OutputUnwritten(name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let intermediates = written
            .keys()
            .filter(|t| read.contains(*t))
            .map(|t| (*t).to_owned())
            .collect();
        Ok(EnsembleIo {
            inputs,
            outputs,
            intermediates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataType;

    fn io(name: &str, dt: DataType, shape: &[i64]) -> IoMeta {
        IoMeta {
            name: name.into(),
            datatype: Some(dt),
            ort_type: "float32".into(),
            shape: shape.to_vec(),
        }
    }

    fn step(model: &str, inputs: &[(&str, &str)], outputs: &[(&str, &str)]) -> EnsembleStep {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        EnsembleStep {
            model: model.into(),
            input_map: map(inputs),
            output_map: map(outputs),
        }
    }

    #[test]
    fn two_steps_plan_their_inputs_outputs_and_intermediates() {
        let a = (
            vec![io("x", DataType::Fp32, &[1, 16])],
            vec![io("h", DataType::Fp32, &[1, 32])],
        );
        let b = (
            vec![io("in", DataType::Fp32, &[1, 32])],
            vec![io("y", DataType::Fp32, &[1, 8])],
        );
        let e = Ensemble {
            steps: vec![
                step("a", &[("x", "INPUT")], &[("h", "hidden")]),
                step("b", &[("in", "hidden")], &[("y", "OUTPUT")]),
            ],
            outputs: vec!["OUTPUT".into(), "hidden".into()],
        };
        let plan = e.plan(&[(&a.0, &a.1), (&b.0, &b.1)]).unwrap();
        assert_eq!(plan.inputs, [io("INPUT", DataType::Fp32, &[1, 16])]);
        assert_eq!(
            plan.outputs,
            [
                io("OUTPUT", DataType::Fp32, &[1, 8]),
                io("hidden", DataType::Fp32, &[1, 32])
            ]
        );
        assert_eq!(plan.intermediates, ["hidden"]);
    }

    #[test]
    fn what_does_not_fit_is_refused_with_the_reason() {
        let a = (
            vec![io("x", DataType::Fp32, &[1, 16])],
            vec![io("h", DataType::Fp32, &[1, 32])],
        );
        let b = (
            vec![io("in", DataType::Int64, &[1, 32])],
            vec![io("y", DataType::Fp32, &[1, 8])],
        );
        let models = [(&a.0[..], &a.1[..]), (&b.0[..], &b.1[..])];
        let plan = |steps, outputs: &[&str]| {
            Ensemble {
                steps,
                outputs: outputs.iter().map(|s| (*s).to_owned()).collect(),
            }
            .plan(&models)
            .unwrap_err()
            .to_string()
        };
        let err = plan(
            vec![
                step("a", &[("x", "X")], &[("h", "H")]),
                step("b", &[("in", "H")], &[("y", "Y")]),
            ],
            &["Y"],
        );
        assert!(
            err.contains("takes Some(Int64) but tensor 'H' is Some(Fp32)"),
            "{err}"
        );
        let err = plan(vec![step("a", &[], &[("h", "H")])], &["H"]);
        assert!(err.contains("model input 'x' is not in input_map"), "{err}");
        let err = plan(vec![step("a", &[("x", "X")], &[("h", "H")])], &["Z"]);
        assert!(err.contains("'Z' is written by no step"), "{err}");
        let err = plan(vec![step("a", &[("nope", "X")], &[])], &["X"]);
        assert!(err.contains("no input 'nope'"), "{err}");
        let err = Ensemble {
            steps: vec![],
            outputs: vec!["Y".into()],
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("1 to 16 steps"), "{err}");
    }
}
