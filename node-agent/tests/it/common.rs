//! The node agent's tests take their harness from the test kit: a real agent process with
//! its browser (`Agent`), the fixture models and onnxruntime's references.

pub use webaccel_testkit::agent::{AgentProcess as Agent, TOKEN, free_port};
pub use webaccel_testkit::fixtures::{
    assert_outputs_match, assert_tensors_close, firefox, fixture, model_uri, onnxruntime_outputs,
    reference, reference_tensors, tensors_json,
};
pub use webaccel_testkit::procs::signal;
