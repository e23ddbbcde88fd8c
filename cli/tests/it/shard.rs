//! `webaccel shard` end to end: the built binary cuts the (shape-inferred) fixture
//! transformer, the stages.json it writes matches the files, and onnxruntime running
//! the stages one after another gives the whole model's output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use webaccel_testkit::fixtures::{fixture, repo};
/// Runs `python3 ARGS` (the run_stages.py helper of webaccel-onnx's tests); a missing
/// python3 or onnxruntime fails the test with the reason.
fn python<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = Command::new("python3").args(args).output().expect(
        "this test needs python3 with numpy, onnx and onnxruntime \
         (pip install -r requirements-test.txt)",
    );
    assert!(
        out.status.success(),
        "python3 failed (this test needs numpy, onnx and onnxruntime: pip install -r \
         requirements-test.txt):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn helper() -> PathBuf {
    repo().join("onnx/tests/run_stages.py")
}

fn webaccel(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_webaccel"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn inferred_transformer(dir: &Path) -> PathBuf {
    let path = dir.join("transformer.onnx");
    python(&[
        helper().as_os_str(),
        "infer".as_ref(),
        fixture("transformer.onnx").as_os_str(),
        path.as_os_str(),
    ]);
    path
}

fn stage_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn shard_writes_the_stages_and_stages_json() {
    let dir = tempfile::tempdir().unwrap();
    let model = inferred_transformer(dir.path());
    let out = webaccel(&[
        "shard".as_ref(),
        model.as_os_str(),
        "--stages".as_ref(),
        "2".as_ref(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("cut into 2 stages"), "{stdout}");
    assert!(
        stdout.contains("stage0.onnx") && stdout.contains("stage1.onnx"),
        "{stdout}"
    );

    // Default folder: beside the model, named after its stem.
    let stages_dir = dir.path().join("transformer.stages");
    assert_eq!(
        stage_files(&stages_dir),
        ["stage0.onnx", "stage1.onnx", "stages.json"]
    );
    let json: Value =
        serde_json::from_slice(&std::fs::read(stages_dir.join("stages.json")).unwrap()).unwrap();
    assert_eq!(json["precision"], "fp32");
    let model_bytes = std::fs::read(&model).unwrap();
    assert_eq!(
        json["model_sha256"],
        hex::encode(Sha256::digest(&model_bytes))
    );
    let stages = json["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    let mut parameter_sum = 0;
    let mut available = vec!["tokens".to_owned()];
    for (i, stage) in stages.iter().enumerate() {
        assert_eq!(stage["index"], i);
        assert_eq!(stage["name"], format!("transformer_stage{i}"));
        let data = std::fs::read(stages_dir.join(stage["file"].as_str().unwrap())).unwrap();
        assert_eq!(
            stage["sha256"],
            hex::encode(Sha256::digest(&data)),
            "stage {i}"
        );
        assert_eq!(stage["bytes"], data.len(), "stage {i}");
        parameter_sum += stage["parameter_bytes"].as_u64().unwrap();
        // Each stage reads only the model's input and what the stage before gives.
        for input in stage["inputs"].as_array().unwrap() {
            let name = input["name"].as_str().unwrap();
            assert!(
                available.iter().any(|a| a == name),
                "stage {i} reads {name}"
            );
            assert!(
                input["datatype"].is_string() && input["shape"].is_array(),
                "{input}"
            );
        }
        available = stage["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_owned())
            .chain(["tokens".to_owned()])
            .collect();
    }
    assert_eq!(stages[1]["outputs"][0]["name"], "hidden");
    assert_eq!(
        stages[1]["outputs"][0]["shape"],
        serde_json::json!([1, 8, 16])
    );
    let whole = json["parameter_bytes"].as_u64().unwrap();
    assert_eq!(
        parameter_sum,
        whole + json["duplicated_parameter_bytes"].as_u64().unwrap()
    );

    // The stages, run in turn, compute what the whole model does.
    let report: Value = serde_json::from_str(&python(&[
        helper().as_os_str(),
        "run".as_ref(),
        model.as_os_str(),
        fixture("transformer.json").as_os_str(),
        stages_dir.join("stage0.onnx").as_os_str(),
        stages_dir.join("stage1.onnx").as_os_str(),
    ]))
    .unwrap();
    let error = report["max_abs_error"].as_f64().unwrap();
    assert!(error <= 1e-5, "max abs error {error}");

    // Cutting again into fewer stages leaves no stale stage file behind.
    let custom = dir.path().join("custom");
    for stages in ["3", "2"] {
        let out = webaccel(&[
            "shard".as_ref(),
            model.as_os_str(),
            "--stages".as_ref(),
            stages.as_ref(),
            "--out".as_ref(),
            custom.as_os_str(),
            "--json".as_ref(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            printed["stages"].as_array().unwrap().len().to_string(),
            stages
        );
    }
    assert_eq!(
        stage_files(&custom),
        ["stage0.onnx", "stage1.onnx", "stages.json"]
    );
}

#[test]
fn shard_refuses_what_cannot_be_cut() {
    let dir = tempfile::tempdir().unwrap();
    let model = inferred_transformer(dir.path());
    let refused = |model: &Path, stages: &str| {
        let out = webaccel(&[
            "shard".as_ref(),
            model.as_os_str(),
            "--stages".as_ref(),
            stages.as_ref(),
        ]);
        assert!(
            !out.status.success(),
            "{stages} stages of {} accepted",
            model.display()
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&model, "50");
    assert!(err.contains("50 stages need 49 cut points"), "{err}");
    // Not shape-inferred: the tensors crossing the cut have no types.
    let err = refused(&fixture("transformer.onnx"), "2");
    assert!(err.contains("run shape inference"), "{err}");
    let err = refused(&fixture("invalid.onnx"), "2");
    assert!(err.contains("not an ONNX model"), "{err}");
    // Refused before anything is written beside the model.
    assert!(!fixture("transformer.stages").exists());
}
