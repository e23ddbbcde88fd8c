//! Speech-to-text through the gateway over two real agents serving the Whisper-style
//! fixture: the stock OpenAI client's `/v1/audio/transcriptions` (a multipart upload)
//! is routed like any generation and gets onnxruntime's transcriptions, and refusals
//! keep their reasons across the hop.

use webaccel_testkit::fixtures::{fixture, python_client};
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
    let out = python_client("openai_transcribe.py", &gw.http()).await;
    assert!(out.contains("all checks passed"), "{out}");
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
