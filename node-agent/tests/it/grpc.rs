//! The agent's KServe v2 gRPC API (`--grpc-listen`) in a real Chromium, driven by the
//! stock `tritonclient.grpc` from PyPI at its default settings (raw tensors both ways),
//! plus typed contents through the same package's generated stub, against native
//! onnxruntime on the same model files; refusals (unknown model, BYTES, typed FP16,
//! wrong or missing token) carry their gRPC codes; the gRPC listener closes with the
//! agent on SIGTERM.

use std::time::Duration;

use crate::common::{Agent, free_port, model_uri};

#[tokio::test]
async fn tritonclient_grpc_with_its_defaults_gets_onnxruntime_answers() {
    let _machine = webaccel_testkit::beside().await;
    let models: Vec<String> = ["mlp", "cnn", "transformer", "types"]
        .iter()
        .map(|m| format!("{m}={},backend=wasm", model_uri(&format!("{m}.onnx"))))
        .collect();
    let grpc_addr = format!("127.0.0.1:{}", free_port());
    let mut agent = Agent::start(&models, &["--grpc-listen", &grpc_addr]).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/triton_grpc.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&grpc_addr)
        .arg(crate::common::fixture(""))
        .args(["--token", crate::common::TOKEN])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "ok mlp defaults",
        "ok mlp typed",
        "ok cnn typed",
        "ok transformer typed",
        "ok types defaults",
        "ok types outputs listed",
        "ok types subset",
        "ok unknown model: StatusCode.NOT_FOUND",
        "ok BYTES refused: StatusCode.INVALID_ARGUMENT",
        "ok typed FP16 refused",
        "ok wrong token: StatusCode.UNAUTHENTICATED",
        "ok no token metadata: unauthorized",
    ] {
        assert!(stdout.contains(line), "missing '{line}' in:\n{stdout}");
    }

    // Refusals before inference are counted with the agent's other errors.
    let stats = agent.stats().await;
    let errors = &stats.errors_by_category;
    assert!(errors["unauthorized"] >= 3, "{stats:?}");
    assert!(errors["bad_request"] >= 2, "{stats:?}");

    // The gRPC server goes with the agent, even with a client connection held open.
    let mut idle_client = tokio::process::Command::new("python3")
        .args([
            "-c",
            "import sys, time, tritonclient.grpc as g\n\
             c = g.InferenceServerClient(sys.argv[1])\n\
             assert c.is_server_live()\n\
             print('connected', flush=True)\n\
             time.sleep(120)",
            &grpc_addr,
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = tokio::io::BufReader::new(idle_client.stdout.take().unwrap());
    tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line)
        .await
        .unwrap();
    assert_eq!(line.trim(), "connected");
    let started = std::time::Instant::now();
    let status = agent
        .terminate(Duration::from_secs(30))
        .expect("agent exits");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "exit took {:?}",
        started.elapsed()
    );
    println!("agent exited {:?} after SIGTERM", started.elapsed());
    idle_client.kill().await.unwrap();
    assert!(
        std::net::TcpStream::connect(&grpc_addr).is_err(),
        "the gRPC port is closed after exit"
    );
}
