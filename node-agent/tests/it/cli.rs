//! The command line the Helm chart and the operator use: every option documented, bad
//! values refused before anything starts.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webaccel-agent"))
}

#[test]
fn help_documents_every_option() {
    let out = agent().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for option in [
        "--listen",
        "--model",
        "--token-file",
        "--chromium",
        "--chromium-arg",
        "--web-root",
        "--cache-dir",
        "--max-tensor-bytes",
        "--max-in-flight",
        "--bridge-window",
        "--request-timeout",
        "--hang-timeout",
        "--drain-timeout",
        "--standby-browser",
        "WEBACCEL_CHROMIUM",
        "backend=auto|webgpu|webnn|wasm",
    ] {
        assert!(
            help.contains(option),
            "--help does not mention {option}:\n{help}"
        );
    }
}

#[test]
fn bad_model_spec_and_missing_browser_are_refused_with_a_reason() {
    let out = agent()
        .args(["--model", "m=ftp://x/m.onnx"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must start with file://, http:// or https://"),
        "{err}"
    );

    let out = agent()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--chromium",
            "/nonexistent/chromium",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Chromium binary '/nonexistent/chromium' does not exist"),
        "{err}"
    );

    let out = agent()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--clickhouse-url",
            "localhost:8123",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("(setting --clickhouse-url / WEBACCEL_CLICKHOUSE_URL)"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "\n").unwrap();
    let out = agent()
        .arg("--token-file")
        .arg(&token)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));
}
