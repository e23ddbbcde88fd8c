//! The fixture tokenizer against what Hugging Face's Python `tokenizers` and jinja2 made
//! of the same prompts (tests/fixtures/make_decoder.py wrote them into reference.json).

use serde_json::Value;

use super::*;

fn fixture(file: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/models/decoder/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (run make_decoder.py)"))
}

fn codec(template: Option<&str>) -> TextCodec {
    let config = ModelConfig::parse(&fixture("config.json")).expect("config.json");
    TextCodec::new(
        &fixture("tokenizer.json"),
        Some(&fixture("tokenizer_config.json")),
        Some(&config),
        template,
    )
    .expect("codec")
}

fn reference() -> Value {
    serde_json::from_slice(&fixture("reference.json")).expect("reference.json")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32"))
        .collect()
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).expect("messages")
}

#[test]
fn prompts_tokenize_as_hugging_face_tokenizes_them() {
    let codec = codec(None);
    assert_eq!(codec.vocab_size(), 384);
    assert_eq!(codec.eos_ids(), [1, 4]);
    for p in reference()["prompts"].as_array().expect("prompts") {
        let got = match p.get("messages") {
            Some(m) => {
                let text = codec.render_chat(&messages(m), true).expect("render");
                assert_eq!(text, p["text"].as_str().expect("text"), "rendered chat");
                codec.encode_chat(&messages(m), true).expect("encode")
            }
            None => codec
                .encode_text(p["text"].as_str().expect("text"))
                .expect("encode"),
        };
        assert_eq!(got, ids(&p["input_ids"]), "{}", p["name"]);
    }
}

#[test]
fn streamed_text_is_the_completion_without_special_tokens() {
    let codec = codec(None);
    for p in reference()["prompts"].as_array().expect("prompts") {
        let tokens = ids(&p["tokens"]);
        let end = p["first_eos_step"]
            .as_u64()
            .map_or(tokens.len(), |s| usize::try_from(s).expect("step"));
        let mut stream = codec.stream(&ids(&p["input_ids"]));
        let text: String = tokens[..end]
            .iter()
            .map(|&id| codec.step(&mut stream, id).expect("step"))
            .collect();
        let completion = p["completion"].as_str().expect("completion");
        assert!(completion.starts_with(&text), "{text:?} vs {completion:?}");
        if end == tokens.len() {
            assert_eq!(text, completion);
        }
    }
    assert!(codec.is_special(4));
    assert!(!codec.is_special(100));
}

#[test]
fn the_template_refuses_with_its_own_message() {
    let codec = codec(None);
    let chat = [ChatMessage {
        role: "tool".into(),
        content: "x".into(),
        name: None,
    }];
    let err = codec.encode_chat(&chat, true).unwrap_err();
    assert!(
        matches!(&err, TextError::Chat(m) if m.starts_with("Unknown role: tool")),
        "{err}"
    );
}

#[test]
fn a_deployment_template_replaces_the_configured_one_with_python_methods_and_trimmed_blocks() {
    // Python str methods, trim_blocks and lstrip_blocks, as Hugging Face renders
    // (the expected text is what Python's jinja2 renders with those settings:
    // lstrip_blocks strips before `{%` only, so the `{{` line keeps its indent).
    let template = "{% for m in messages %}\n  {{ m['role'].upper() }}: {{ m['content'].strip() }}|\n{% endfor %}\n{% if add_generation_prompt %}ASSISTANT:{% endif %}";
    let codec = codec(Some(template));
    let chat = [
        ChatMessage {
            role: "user".into(),
            content: "  hi  ".into(),
            name: None,
        },
        ChatMessage {
            role: "assistant".into(),
            content: "hello".into(),
            name: None,
        },
    ];
    assert_eq!(
        codec.render_chat(&chat, true).expect("render"),
        "  USER: hi|\n  ASSISTANT: hello|\nASSISTANT:"
    );
    assert!(matches!(
        TextCodec::new(&fixture("tokenizer.json"), None, None, Some("{% for %}")),
        Err(TextError::Template(_))
    ));
    let plain = TextCodec::new(&fixture("tokenizer.json"), None, None, None).expect("codec");
    assert!(matches!(
        plain.render_chat(&chat, true),
        Err(TextError::NoTemplate)
    ));
    assert!(matches!(
        TextCodec::new(b"{}", None, None, None),
        Err(TextError::Tokenizer(_))
    ));
}
