//! The gateway binary's logs as a log pipeline and a log file see them: with
//! `--log-format json` every line of standard error is one JSON object with the level,
//! the message and the event's fields; as text into a pipe, no colour escapes.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Runs the gateway for a while, pointed at an agent and a ClickHouse that do not
/// answer (so it warns, with fields), stops it with SIGTERM; its standard error.
fn run_gateway(extra: &[&str]) -> String {
    let spool = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_webaccel-gateway"))
        .args([
            "--http=127.0.0.1:0",
            "--grpc=127.0.0.1:0",
            "--admin=127.0.0.1:0",
            "--agent=http://127.0.0.1:9",
            "--clickhouse-url=http://127.0.0.1:9",
            &format!("--spool-dir={}", spool.path().display()),
        ])
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("WEBACCEL_LOG_FORMAT")
        .env_remove("WEBACCEL_LOG_COLOR")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    kill(
        Pid::from_raw(i32::try_from(child.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {err}");
    err
}

#[test]
fn json_logs_are_one_object_per_line_and_text_into_a_pipe_has_no_colour() {
    let json = run_gateway(&["--log-format=json"]);
    let lines: Vec<&str> = json.lines().collect();
    assert!(lines.len() >= 3, "{json}");
    let mut warned_with_fields = false;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(
            v["target"].as_str().unwrap().starts_with("webaccel"),
            "{line}"
        );
        assert!(v["fields"]["message"].is_string(), "{line}");
        warned_with_fields |= v["level"] == "WARN"
            && v["fields"]
                .as_object()
                .unwrap()
                .keys()
                .any(|k| k != "message");
        assert!(!line.contains('\u{1b}'), "{line}");
    }
    assert!(warned_with_fields, "no warning with its fields: {json}");

    let text = run_gateway(&[]);
    assert!(text.contains("WARN"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour escapes into a pipe: {text}"
    );
    // Asked for, colour is there.
    let colored = run_gateway(&["--log-color=always"]);
    assert!(colored.contains("\u{1b}["), "{colored}");
}
