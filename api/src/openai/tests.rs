//! The OpenAI types read and written as the `openai` package and the servers do.

use super::*;

#[test]
fn a_completion_request_as_the_openai_package_sends_it() {
    let req: CompletionRequest = serde_json::from_str(
        r#"{"model":"llm","prompt":"Hi","max_tokens":5,"temperature":0,"stream":true,
            "stream_options":{"include_usage":true},"stop":"\n","logprobs":2,"top_k":-1}"#,
    )
    .expect("parse");
    assert!(req.sampling.stream && req.sampling.include_usage());
    let g = req.to_generate().expect("generate");
    assert_eq!(g.input, GenerateInput::Text { text: "Hi".into() });
    assert_eq!(g.params.max_tokens, Some(5));
    assert_eq!(g.params.temperature, Some(0.0));
    assert_eq!(g.params.stop, ["\n"]);
    assert_eq!(g.params.logprobs, Some(2));
    assert_eq!(g.params.top_k, None);
    let default: CompletionRequest =
        serde_json::from_str(r#"{"model":"llm","prompt":[1,2,3]}"#).expect("parse");
    let g = default.to_generate().expect("generate");
    assert_eq!(g.params.max_tokens, Some(COMPLETION_MAX_TOKENS));
    assert_eq!(g.input, GenerateInput::Tokens { ids: vec![1, 2, 3] });
}

#[test]
fn what_webaccel_does_not_do_is_refused_by_name() {
    let refused = |body: &str| {
        serde_json::from_str::<CompletionRequest>(body)
            .expect("parse")
            .to_generate()
            .unwrap_err()
    };
    assert_eq!(
        refused(r#"{"model":"m","prompt":"x","n":2}"#).param,
        Some("n")
    );
    assert_eq!(
        refused(r#"{"model":"m","prompt":["a","b"]}"#).param,
        Some("prompt")
    );
    assert_eq!(
        refused(r#"{"model":"m","prompt":"x","presence_penalty":0.5}"#).param,
        Some("presence_penalty")
    );
    let chat: ChatRequest = serde_json::from_str(
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
    )
    .expect("parse");
    assert!(
        chat.to_generate()
            .unwrap_err()
            .message
            .contains("image_url")
    );
}

#[test]
fn chat_messages_become_the_conversation() {
    let chat: ChatRequest = serde_json::from_str(
        r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},
           {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],
           "max_completion_tokens":7,"logprobs":true,"top_logprobs":3}"#,
    )
    .expect("parse");
    let g = chat.to_generate().expect("generate");
    let GenerateInput::Chat {
        messages,
        add_generation_prompt,
    } = g.input
    else {
        panic!("not a chat")
    };
    assert!(add_generation_prompt);
    assert_eq!(messages[1].content, "Hi there");
    assert_eq!(g.params.max_tokens, Some(7));
    assert_eq!(g.params.logprobs, Some(3));
}
