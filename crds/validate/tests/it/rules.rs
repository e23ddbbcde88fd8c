//! The CEL rules of the CRDs refuse bad resources with the messages a user sees, checked
//! through the whole client-side validation as the API server would run it.

use serde_json::{Value, json};

/// The messages of the CEL rules an object breaks, as the API server reports them: the
/// object goes through the whole client-side validation, and only its CEL causes count.
fn cel_failures(object: &Value) -> Vec<String> {
    match webaccel_crds_validate::validate(object, "test.yaml") {
        Ok(_) => Vec::new(),
        Err(invalid) => {
            assert!(
                !invalid.causes.is_empty(),
                "refused before validation: {invalid}"
            );
            invalid
                .causes
                .into_iter()
                .filter(|c| c.rule.is_some())
                .map(|c| c.detail)
                .collect()
        }
    }
}

fn pool(spec: Value) -> Value {
    json!({"apiVersion": "webaccel.dev/v1alpha1", "kind": "BrowserPool",
           "metadata": {"name": "p", "namespace": "default"}, "spec": spec})
}

fn model(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "webaccel.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

#[test]
fn autoscaling_minimum_above_maximum_is_refused() {
    let bad = pool(
        json!({"image": "i", "autoscaling": {"enabled": true, "minReplicas": 5, "maxReplicas": 2}}),
    );
    assert_eq!(
        cel_failures(&bad),
        ["autoscaling.minReplicas must not be greater than autoscaling.maxReplicas"]
    );
    let good = pool(
        json!({"image": "i", "autoscaling": {"enabled": true, "minReplicas": 0, "maxReplicas": 2}}),
    );
    assert!(cel_failures(&good).is_empty());
}

#[test]
fn pool_names_must_make_valid_service_and_pod_names() {
    let named = |name: &str| {
        let mut p = pool(json!({"image": "i"}));
        p["metadata"]["name"] = json!(name);
        cel_failures(&p)
    };
    assert!(named("gpu-pool-2").is_empty());
    for bad in ["gpu.pool", "1gpu", "gpu-", &"p".repeat(51)] {
        assert_eq!(named(bad).len(), 1, "{bad}");
    }
}

#[test]
fn pool_backends_must_be_a_non_empty_list_without_auto() {
    let empty = pool(json!({"image": "i", "backends": []}));
    assert_eq!(
        cel_failures(&empty),
        ["backends must list at least one of webgpu, webnn or wasm"]
    );
    let auto = pool(json!({"image": "i", "backends": ["wasm", "auto"]}));
    assert_eq!(
        cel_failures(&auto),
        ["backends lists what the pool allows; 'auto' belongs in a ModelDeployment"]
    );
}

#[test]
fn metrics_needs_exactly_one_url_source_with_an_http_scheme() {
    let both = pool(json!({"image": "i", "metrics": {"url": "http://ch:8123",
        "urlSecretRef": {"name": "s", "key": "url"}}}));
    assert_eq!(
        cel_failures(&both),
        ["metrics needs exactly one of url or urlSecretRef"]
    );
    let tcp = pool(json!({"image": "i", "metrics": {"url": "tcp://ch:9000"}}));
    assert_eq!(
        cel_failures(&tcp),
        ["metrics.url must start with http:// or https://"]
    );
}

#[test]
fn model_uri_scheme_backends_and_name_length_are_checked() {
    let spec = |uri: &str, backends: Value| json!({"poolRef": {"name": "p"}, "model": {"uri": uri, "task": "vision"}, "backends": backends});
    assert!(
        cel_failures(&model(
            "m",
            spec("https://h/m.onnx", json!(["webgpu", "wasm"]))
        ))
        .is_empty()
    );
    assert_eq!(
        cel_failures(&model("m", spec("s3://bucket/m.onnx", json!(["auto"])))),
        ["model.uri must start with https://, http:// or file://"]
    );
    // A relative file:// URI is admitted (local mode reads it beside the manifest; the
    // operator refuses it with a reason).
    assert!(cel_failures(&model("m", spec("file://m.onnx", json!(["wasm"])))).is_empty());
    assert_eq!(
        cel_failures(&model("m", spec("file:///m/x.onnx", json!([])))),
        ["backends needs at least one entry: auto, webgpu, webnn or wasm"]
    );
    let long = "m".repeat(58);
    assert_eq!(
        cel_failures(&model(&long, spec("file:///m/x.onnx", json!(["wasm"])))).len(),
        1
    );
}

#[test]
fn stages_are_one_to_sixteen_model_sources_instead_of_model() {
    let source =
        |i: usize| json!({"uri": format!("file://stage{i}.onnx"), "task": "text-embedding"});
    let staged = |n: usize| json!({"poolRef": {"name": "p"}, "stages": (0..n).map(source).collect::<Vec<_>>()});
    let failures = |name: &str, spec: Value| {
        webaccel_crds_validate::validate(&model(name, spec), "test.yaml")
            .err()
            .map(|e| e.message)
            .unwrap_or_default()
    };
    assert_eq!(failures("enc", staged(2)), "");
    assert_eq!(failures("enc", staged(16)), "");
    let none = failures("enc", staged(0));
    assert!(
        none.contains("spec.stages: Invalid value: \"array\": stages needs at least one entry"),
        "{none}"
    );
    let many = failures("enc", staged(17));
    assert!(
        many.contains("spec.stages: Too many: 17: must have at most 16 items"),
        "{many}"
    );
    let mut both = staged(2);
    both["model"] = source(0);
    let both = failures("enc", both);
    assert!(
        both.contains("exactly one of model (one file), stages"),
        "{both}"
    );
    let neither = failures("enc", json!({"poolRef": {"name": "p"}}));
    assert!(
        neither.contains("exactly one of model (one file), stages"),
        "{neither}"
    );
    let bad_uri = failures(
        "enc",
        json!({"poolRef": {"name": "p"}, "stages": [{"uri": "s3://b/x.onnx", "task": "vision"}]}),
    );
    assert!(bad_uri.contains("spec.stages[0].uri"), "{bad_uri}");
    // The stage labels webaccel.dev/model.<name>.stage<i> must stay valid label keys.
    let long = failures(&"e".repeat(50), staged(2));
    assert!(long.contains("at most 49 characters"), "{long}");
    assert_eq!(failures(&"e".repeat(49), staged(16)), "");
    let key = webaccel_crds::labels::model_label(&webaccel_crds::v1alpha1::stage_model_name(
        &"e".repeat(49),
        15,
    ));
    assert!(key.split_once('/').unwrap().1.len() <= 63, "{key}");
}

#[test]
fn an_ensemble_chains_other_deployments_instead_of_model() {
    let failures = |spec: Value| {
        webaccel_crds_validate::validate(&model("pipe", spec), "test.yaml")
            .err()
            .map(|e| e.message)
            .unwrap_or_default()
    };
    let ensemble = |steps: Value, outputs: Value| json!({"poolRef": {"name": "p"}, "ensemble": {"task": "vision", "steps": steps, "outputs": outputs}});
    let step = json!({"model": "first", "inputMap": {"x": "IN"}, "outputMap": {"y": "OUT"}});
    assert_eq!(failures(ensemble(json!([step]), json!(["OUT"]))), "");
    let empty = failures(ensemble(json!([]), json!(["OUT"])));
    assert!(
        empty.contains("ensemble.steps needs at least one step"),
        "{empty}"
    );
    let no_outputs = failures(ensemble(json!([step]), json!([])));
    assert!(
        no_outputs.contains("ensemble.outputs must name at least one tensor"),
        "{no_outputs}"
    );
    let mut both = ensemble(json!([step]), json!(["OUT"]));
    both["model"] = json!({"uri": "file:///m.onnx", "task": "vision"});
    let both = failures(both);
    assert!(
        both.contains("exactly one of model (one file), stages"),
        "{both}"
    );
}

#[test]
fn a_text_generation_model_needs_a_tokenizer_and_only_it_takes_one() {
    let source = |task: &str| json!({"uri": "https://m/model.onnx", "task": task});
    let tokenizer = json!({"uri": "https://m/tokenizer.json"});
    let needs = "a text-generation or speech-to-text model (model.task) needs a tokenizer (tokenizer.uri: its tokenizer.json), and only such a model takes one";
    let llm = |extra: Value| {
        let mut spec = json!({"poolRef": {"name": "p"}, "model": source("text-generation"), "tokenizer": tokenizer});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        model("llm", spec)
    };
    assert!(cel_failures(&llm(json!({}))).is_empty());
    // A speech-to-text model (an encoder-decoder) takes one too, and needs it.
    assert!(
        cel_failures(&model(
            "whisper",
            json!({"poolRef": {"name": "p"}, "model": source("speech-to-text"), "tokenizer": tokenizer})
        ))
        .is_empty()
    );
    assert_eq!(
        cel_failures(&model(
            "whisper",
            json!({"poolRef": {"name": "p"}, "model": source("speech-to-text")})
        )),
        [needs]
    );
    assert!(
        cel_failures(&llm(
            json!({"generation": {"maxSequences": 8, "kvCache": "int8", "contextLength": 2048}})
        ))
        .is_empty()
    );
    assert_eq!(
        cel_failures(&model(
            "llm",
            json!({"poolRef": {"name": "p"}, "model": source("text-generation")})
        )),
        [needs]
    );
    assert_eq!(
        cel_failures(&model(
            "enc",
            json!({"poolRef": {"name": "p"}, "model": source("vision"), "tokenizer": tokenizer})
        )),
        [needs]
    );
    assert_eq!(
        cel_failures(&llm(json!({"batching": {"maxBatchSize": 8}}))),
        [
            "a text-generation model batches its sequences itself (continuous batching, generation.maxSequences): batching must not be set"
        ]
    );
    assert_eq!(
        cel_failures(&llm(json!({"tokenizer": {"uri": "s3://m/tokenizer.json"}}))),
        ["tokenizer.uri must start with https://, http:// or file://"]
    );
    assert_eq!(
        cel_failures(&llm(json!({"generation": {"kvCache": "fp16"}}))),
        ["generation.kvCache must be fp32, int8 or int4"]
    );
    assert_eq!(
        cel_failures(&model(
            "m",
            json!({"poolRef": {"name": "p"}, "model": source("vision"), "generation": {"maxSequences": 4}})
        )),
        ["generation settings apply to a text-generation model with a tokenizer"]
    );
    // Out-of-range numbers are the schema's, before the rules.
    let err = webaccel_crds_validate::validate(
        &llm(json!({"generation": {"maxSequences": 0}})),
        "t.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("spec.generation.maxSequences"), "{err}");
    let err = webaccel_crds_validate::validate(
        &llm(json!({"generation": {"prefillChunk": 0}})),
        "t.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("spec.generation.prefillChunk"), "{err}");
    assert_eq!(
        cel_failures(&llm(json!({"generation": {"prefillChunk": 32}}))),
        Vec::<String>::new()
    );
}

#[test]
fn a_model_has_fixed_replicas_or_autoscaling_within_sane_bounds() {
    let spec = |extra: Value| {
        let mut spec = json!({"poolRef": {"name": "p"}, "model": {"uri": "https://m/model.onnx", "task": "vision"}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        model("m", spec)
    };
    let auto = json!({"minReplicas": 0, "maxReplicas": 4});
    assert!(cel_failures(&spec(json!({"replicas": 2}))).is_empty());
    assert!(cel_failures(&spec(json!({"autoscaling": auto}))).is_empty());
    assert_eq!(
        cel_failures(&spec(json!({"replicas": 2, "autoscaling": auto}))),
        [
            "set replicas (a fixed number) or autoscaling (replicas that follow the model's demand), not both"
        ]
    );
    assert_eq!(
        cel_failures(&spec(
            json!({"autoscaling": {"minReplicas": 5, "maxReplicas": 4}})
        )),
        ["autoscaling.minReplicas must not exceed autoscaling.maxReplicas"]
    );
    assert_eq!(
        cel_failures(&spec(
            json!({"autoscaling": {"maxReplicas": 4, "stableWindowSeconds": 10, "panicWindowSeconds": 20}})
        )),
        ["autoscaling.panicWindowSeconds must not exceed autoscaling.stableWindowSeconds"]
    );
    // The defaults fill in (KPA's 60 s stable and 6 s panic windows), and a missing
    // maxReplicas is the schema's refusal.
    let Ok(webaccel_crds_validate::Resource::ModelDeployment(m)) = webaccel_crds_validate::validate(
        &spec(json!({"autoscaling": {"maxReplicas": 3}})),
        "m.yaml",
    ) else {
        panic!("refused");
    };
    let a = m.spec.autoscaling.unwrap();
    assert_eq!(
        (
            a.min_replicas,
            a.stable_window_seconds,
            a.panic_window_seconds
        ),
        (1, 60, 6)
    );
    let err = webaccel_crds_validate::validate(&spec(json!({"autoscaling": {}})), "m.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.autoscaling.maxReplicas: Required value"),
        "{err}"
    );
}

#[test]
fn a_rollout_must_be_able_to_replace_something() {
    let bad = pool(json!({"image": "i", "rollout": {"maxSurge": 0, "maxUnavailable": 0}}));
    assert_eq!(
        cel_failures(&bad),
        [
            "rollout.maxSurge and rollout.maxUnavailable cannot both be 0: a roll could replace nothing"
        ]
    );
    // The defaults (one surge, none unavailable) and the old way (one at a time, no surge).
    for ok in [
        json!({}),
        json!({"maxSurge": 0, "maxUnavailable": 1, "minReadySeconds": 0}),
    ] {
        assert!(cel_failures(&pool(json!({"image": "i", "rollout": ok}))).is_empty());
    }
    // Out of range is refused by the schema, naming the field.
    let Err(invalid) = webaccel_crds_validate::validate(
        &pool(json!({"image": "i", "rollout": {"minReadySeconds": -1}})),
        "test.yaml",
    ) else {
        panic!("a negative minReadySeconds was accepted");
    };
    assert!(invalid.to_string().contains("minReadySeconds"), "{invalid}");
}
