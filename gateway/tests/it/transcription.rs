//! Speech-to-text through the gateway over two real agents serving the Whisper-style
//! fixture: the stock OpenAI client's `/v1/audio/transcriptions` (a multipart upload)
//! is routed like any generation and gets onnxruntime's transcriptions, and refusals
//! keep their reasons across the hop.

use webaccel_testkit::fixtures::fixture;
use webaccel_testkit::{AgentProcess, Launch};

use crate::support::{READY, agent_ref, gateway, settings, wait_model};

fn whisper_agent() -> AgentProcess {
    let spec = format!(
        "whisper=file://{},tokenizer=file://{},backend=wasm,context_length=20",
        fixture("whisper/model.onnx").display(),
        fixture("whisper/tokenizer.json").display()
    );
    AgentProcess::spawn_with(Launch::new(&[spec]).quiet())
}

#[tokio::test]
async fn transcriptions_go_through_the_gateway_to_either_browser() {
    let _machine = webaccel_testkit::beside().await;
    let (a, b) = (whisper_agent(), whisper_agent());
    a.wait_standby(READY).await;
    b.wait_standby(READY).await;
    let gw = gateway(vec![agent_ref(&a), agent_ref(&b)], settings(|_| {})).await;
    wait_model(&gw, "whisper").await;
    let out = tokio::process::Command::new("python3")
        .arg(
            webaccel_testkit::fixtures::repo()
                .join("node-agent/tests/clients/openai_transcribe.py"),
        )
        .arg(gw.http())
        .arg(fixture(""))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both browsers transcribed (p2c spreads the requests).
    for agent in [&a, &b] {
        let g = agent.stats().await.models["whisper"]
            .generation
            .clone()
            .unwrap_or_default();
        assert!(
            g.generations > 0,
            "{} transcribed nothing: {g:?}",
            agent.base
        );
    }
}
