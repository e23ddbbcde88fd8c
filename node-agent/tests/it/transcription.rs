//! Speech-to-text in a real Chromium: the Whisper-style fixture
//! (`fixtures/make_whisper.py`: encoder and decoder with random weights, BPE tokenizer)
//! served by an agent transcribes its WAV files as onnxruntime does, to the stock OpenAI
//! client (`/v1/audio/transcriptions`); audio it cannot read and requests it cannot
//! honour are refused with the reason; an encoder-decoder without its encoder is refused
//! at load.

use serde_json::json;
use webaccel_testkit::fixtures::python_client_with;

use crate::common::{Agent, TOKEN, fixture};

fn whisper_spec(name: &str) -> String {
    format!(
        "{name}=file://{},tokenizer=file://{},backend=wasm,context_length=20",
        fixture("whisper/model.onnx").display(),
        fixture("whisper/tokenizer.json").display()
    )
}

#[tokio::test]
async fn the_openai_client_gets_onnxruntimes_transcriptions() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(&[whisper_spec("whisper")], &[]).await;
    let (_, d) = agent.get("/v1/repository/models/whisper").await;
    assert_eq!(d["status"]["state"], "loaded", "{d}");
    let out = python_client_with(
        "openai_transcribe.py",
        &agent.base,
        &["--token", TOKEN, "--model", "whisper"],
    )
    .await;
    assert!(out.contains("all checks passed"), "{out}");
    // Every sequence has ended; the transcriptions were counted as generations.
    let stats = agent.stats().await.models["whisper"]
        .generation
        .clone()
        .expect("generation figures");
    assert_eq!(stats.sequences, 0, "{stats:?}");
    assert!(stats.generations >= 8, "{stats:?}");

    // Without its encoder beside it, an encoder-decoder is refused at load with why.
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
    ] {
        std::fs::copy(fixture(&format!("whisper/{file}")), dir.path().join(file)).unwrap();
    }
    let (status, body) = agent
        .post(
            "/v1/repository/models",
            &json!({
                "name": "deaf", "uri": format!("file://{}", dir.path().join("model.onnx").display()),
                "backend": "wasm",
                "generation": {"tokenizer": {"uri": format!("file://{}", dir.path().join("tokenizer.json").display())}},
            }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("cannot transcribe") && error.contains("encoder_model.onnx"),
        "{error}"
    );
}
