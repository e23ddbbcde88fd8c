//! Running a helper command (python fixtures and stock clients) that must succeed.

use std::process::Command;

/// Runs a command; its stdout, or a failure with what it said.
pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (this test needs python3 with numpy, onnx, onnxruntime and tritonclient: pip install -r requirements-test.txt)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
