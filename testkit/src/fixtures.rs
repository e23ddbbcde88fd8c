//! The test models and their reference outputs: the ONNX files and onnxruntime's outputs
//! that `node-agent/tests/fixtures/make_models.py` writes (never computed by webaccel),
//! comparisons against them, onnxruntime run on inputs made at run time, the stock
//! Python clients, and the browsers the tests need.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use webaccel_api::{DataType, Tensor};

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap()
}

/// A file of the test models folder (`node-agent/tests/fixtures/models`); `""` for the
/// folder itself.
pub fn fixture(name: &str) -> PathBuf {
    repo().join("node-agent/tests/fixtures/models").join(name)
}

/// A fixture model as a `file://` URI.
pub fn model_uri(file: &str) -> String {
    format!("file://{}", fixture(file).display())
}

/// The stored inputs and onnxruntime outputs of a fixture model.
pub fn reference(model: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{model}.json"))).unwrap())
        .unwrap()
}

/// Reference inputs as tensors (for the bridge).
pub fn reference_tensors(model: &str) -> Vec<Tensor> {
    reference(model)["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let shape = i["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            Tensor::from_json(
                i["name"].as_str().unwrap(),
                DataType::parse(i["datatype"].as_str().unwrap()).unwrap(),
                shape,
                &i["data"],
            )
            .unwrap()
        })
        .collect()
}

/// Asserts every output matches the reference within `abs + rel * |expected|`.
pub fn assert_outputs_match(model: &str, outputs: &[Value], abs: f64, rel: f64) {
    let expected = reference(model);
    let expected = expected["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), expected.len(), "{model}: output count");
    for want in expected {
        let name = want["name"].as_str().unwrap();
        let got = outputs
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("{model}: output {name} missing"));
        assert_eq!(
            got["datatype"], want["datatype"],
            "{model}/{name}: datatype"
        );
        assert_eq!(got["shape"], want["shape"], "{model}/{name}: shape");
        let (g, w) = (
            got["data"].as_array().unwrap(),
            want["data"].as_array().unwrap(),
        );
        assert_eq!(g.len(), w.len(), "{model}/{name}: element count");
        let mut worst = 0.0f64;
        for (k, (a, b)) in g.iter().zip(w).enumerate() {
            if b.is_boolean() || b.is_i64() || b.is_u64() {
                assert_eq!(a, b, "{model}/{name}[{k}]");
                continue;
            }
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            let err = (a - b).abs();
            assert!(
                err <= abs + rel * b.abs(),
                "{model}/{name}[{k}]: got {a}, expected {b} (error {err})"
            );
            worst = worst.max(err);
        }
        println!(
            "{model}/{name}: {} values, max abs error {worst:e}",
            g.len()
        );
    }
}

/// Output tensors as protocol JSON, for [`assert_outputs_match`].
pub fn tensors_json(ts: &[Tensor]) -> Vec<Value> {
    ts.iter()
        .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.to_json_data()}))
        .collect()
}

/// onnxruntime's outputs (CPU provider, each request on its own) for requests made up at
/// run time: one list of output tensors (protocol JSON) per request. Runs
/// `fixtures/reference.py` with the system's python3.
pub fn onnxruntime_outputs(model_file: &str, requests: &[Vec<Value>]) -> Vec<Vec<Value>> {
    use std::io::Write as _;
    let script = repo().join("node-agent/tests/fixtures/reference.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs");
    let job = json!({"model": fixture(model_file), "requests": requests});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "reference.py failed: {:?}",
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts `got` (protocol JSON tensors) matches `want` within `abs + rel * |expected|`:
/// same names, datatypes, shapes; exact for integers and booleans.
pub fn assert_tensors_close(label: &str, got: &[Value], want: &[Value], abs: f64, rel: f64) {
    assert_eq!(got.len(), want.len(), "{label}: output count");
    for w in want {
        let name = w["name"].as_str().unwrap();
        let g = got
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("{label}: output {name} missing"));
        assert_eq!(g["datatype"], w["datatype"], "{label}/{name}: datatype");
        assert_eq!(g["shape"], w["shape"], "{label}/{name}: shape");
        let (gd, wd) = (g["data"].as_array().unwrap(), w["data"].as_array().unwrap());
        assert_eq!(gd.len(), wd.len(), "{label}/{name}: element count");
        for (k, (a, b)) in gd.iter().zip(wd).enumerate() {
            if b.is_boolean() || b.is_i64() || b.is_u64() {
                assert_eq!(a, b, "{label}/{name}[{k}]");
                continue;
            }
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= abs + rel * b.abs(),
                "{label}/{name}[{k}]: got {a}, expected {b}"
            );
        }
    }
}

/// The Firefox binary: `WEBACCEL_FIREFOX`, else `firefox-esr` on PATH. Fails the test
/// with what to install when there is none.
pub fn firefox() -> String {
    if let Some(path) = std::env::var_os("WEBACCEL_FIREFOX") {
        return path.into_string().unwrap();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("firefox-esr"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "firefox-esr is not installed: this test runs agents with --browser firefox. \
                 Install it (`apt-get install firefox-esr`, as scripts/setup.sh does) or set \
                 WEBACCEL_FIREFOX to a Firefox binary."
            )
        })
        .display()
        .to_string()
}

/// Whether outputs (protocol JSON) equal the onnxruntime `want` within 1e-5 + 1e-4·|x|.
pub fn matches_reference(got: &Value, want: &Value) -> bool {
    let (Some(got), Some(want)) = (got.as_array(), want.as_array()) else {
        return false;
    };
    want.iter().all(|w| {
        got.iter()
            .find(|g| g["name"] == w["name"])
            .is_some_and(|g| {
                let (gd, wd) = (g["data"].as_array().unwrap(), w["data"].as_array().unwrap());
                gd.len() == wd.len()
                    && gd.iter().zip(wd).all(|(a, b)| {
                        (a.as_f64().unwrap() - b.as_f64().unwrap()).abs()
                            <= 1e-5 + 1e-4 * b.as_f64().unwrap().abs()
                    })
            })
    })
}

/// Runs one of the stock-client scripts (`node-agent/tests/clients/*.py`: tritonclient,
/// kserve, openai from PyPI at their default settings) against `target`; its stdout.
pub async fn python_client(script: &str, target: &str) -> String {
    python_client_with(script, target, &[]).await
}

/// [`python_client`] with more arguments (`--token`, `--model`), which must end with
/// "all checks passed".
pub async fn python_client_with(script: &str, target: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new("python3")
        .arg(repo().join("node-agent/tests/clients").join(script))
        .arg(target)
        .arg(fixture(""))
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("{script}: {e} (python3 with the test requirements: pip install -r requirements-test.txt)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{script}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
