//! Text generation in tests: the fixture decoder's onnxruntime reference and the
//! server-sent event streams of a generation.

use serde_json::{Value, json};

use crate::fixtures::fixture;

/// `decoder/reference.json`: onnxruntime's greedy generations of the fixture decoder.
pub fn decoder_reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("decoder/reference.json")).unwrap())
        .unwrap()
}

/// The reference prompt `name` (`story`, `browser`, `chat`).
pub fn decoder_prompt(name: &str) -> Value {
    decoder_reference()["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no reference prompt {name}"))
        .clone()
}

/// Starts a long streamed completion of model `llm` at `base` (past end-of-sequence
/// tokens, so it runs its whole length) and returns it once its first chunk came.
pub async fn long_stream(http: &reqwest::Client, base: &str) -> reqwest::Response {
    let mut response = http
        .post(format!("{base}/v1/completions"))
        .json(&json!({
            "model": "llm", "prompt": "A browser", "max_tokens": 240,
            "temperature": 0, "stream": true, "ignore_eos": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    response
}

/// The last `data:` event of a server-sent event body other than `[DONE]`.
pub fn last_event(body: &str) -> Value {
    let last = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .rfind(|d| *d != "[DONE]")
        .unwrap_or_else(|| panic!("no event in {body}"));
    serde_json::from_str(last).unwrap()
}
