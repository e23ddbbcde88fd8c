//! Client-side validation: valid manifests read into the types with the schema's defaults, and
//! bad ones are refused with the message `kubectl apply` prints against a v1.33 API server.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use webaccel_api::Backend;
use webaccel_crds::v1alpha1::BrowserKind;
use webaccel_crds_validate::{Resource, parse, parse_files, validate};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn every_example_passes() {
    let resources = parse_files(&[examples()]).unwrap();
    assert!(resources.len() >= 5, "only {} resources", resources.len());
    let mut files = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = parse(&text, &path.display().to_string());
        assert!(parsed.is_ok(), "{}: {:?}", path.display(), parsed.err());
    }
    assert!(files >= 4);
    let sources: Vec<&str> = resources.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        sources
            .iter()
            .any(|s| s.ends_with("modeldeployment-vision-pvc.yaml#2")),
        "{sources:?}"
    );
}

#[test]
fn the_local_examples_pass() {
    for (dir, kinds) in [("local", 2), ("generation", 2), ("speech", 2)] {
        let yaml: Vec<PathBuf> = std::fs::read_dir(examples().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        let resources = parse_files(&yaml).unwrap();
        assert_eq!(resources.len(), kinds, "examples/{dir}");
    }
}

const POOL: &str = "apiVersion: webaccel.dev/v1alpha1
kind: BrowserPool
metadata:
  name: cpu
  namespace: default
spec:
  image: ghcr.io/webaccel/browser-chromium:0.1.0
";

const MODEL: &str = "apiVersion: webaccel.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: minilm
  namespace: default
spec:
  poolRef: {name: cpu}
  model:
    uri: https://models.example.com/minilm.onnx
    task: text-embedding
";

/// `base` (YAML) with `patch` merged in (JSON merge patch: `null` removes).
fn with(base: &str, patch: Value) -> Value {
    fn merge(target: &mut Value, patch: Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge(t.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p,
        }
    }
    let mut doc: Value = serde_yaml_ng::from_str(base).unwrap();
    merge(&mut doc, patch);
    doc
}

fn refused(object: &Value) -> String {
    match validate(object, "bad.yaml") {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => {
            assert_eq!(e.source, "bad.yaml");
            e.message
        }
    }
}

const NOT_CHECKED: &str = "<nil>: Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";

#[test]
fn bad_objects_are_refused_with_the_api_servers_messages() {
    let long_url = format!("http://{}", "c".repeat(2042));
    let cases: Vec<(&str, Value, String)> = vec![
        (
            "out of range",
            with(POOL, json!({"spec": {"replicas": 2000}})),
            "The BrowserPool \"cpu\" is invalid: spec.replicas: Invalid value: 2000: spec.replicas in body should be less than or equal to 1000".to_owned(),
        ),
        (
            "below the minimum, also under /scale",
            with(POOL, json!({"spec": {"replicas": -1}})),
            "The BrowserPool \"cpu\" is invalid: [spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0, .spec.replicas: Invalid value: -1: should be a non-negative integer]".to_owned(),
        ),
        (
            "wrong type",
            with(MODEL, json!({"spec": {"replicas": "2"}})),
            format!("The ModelDeployment \"minilm\" is invalid: [spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\", {NOT_CHECKED}]"),
        ),
        (
            "wrong type under /scale",
            with(POOL, json!({"spec": {"replicas": "two"}})),
            format!("The BrowserPool \"cpu\" is invalid: [spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\", .spec.replicas: Invalid value: 0: .spec.replicas accessor error: two is of the type string, expected int64, {NOT_CHECKED}]"),
        ),
        (
            "a fraction where an int32 goes",
            with(MODEL, json!({"spec": {"replicas": 1.5}})),
            format!("The ModelDeployment \"minilm\" is invalid: [spec.replicas: Invalid value: \"float64\": spec.replicas in body must be of type int32: \"float64\", {NOT_CHECKED}]"),
        ),
        (
            "missing required field",
            with(MODEL, json!({"spec": {"poolRef": null}})),
            format!("The ModelDeployment \"minilm\" is invalid: [spec.poolRef: Required value, {NOT_CHECKED}]"),
        ),
        (
            "missing spec",
            with(MODEL, json!({"spec": null})),
            format!("The ModelDeployment \"minilm\" is invalid: [spec: Required value, {NOT_CHECKED}]"),
        ),
        (
            "null where no null is allowed is a missing field",
            with(POOL, json!({"spec": {"gpu": {"vendor": Value::Null, "count": 1}}})),
            format!("The BrowserPool \"cpu\" is invalid: [spec.gpu.vendor: Required value, {NOT_CHECKED}]"),
        ),
        (
            "enum value",
            with(POOL, json!({"spec": {"browser": "safari"}})),
            format!("The BrowserPool \"cpu\" is invalid: [spec.browser: Unsupported value: \"safari\": supported values: \"chromium\", \"chrome\", \"edge\", \"firefox\", {NOT_CHECKED}]"),
        ),
        (
            "enum value in a list",
            with(MODEL, json!({"spec": {"backends": ["webgpu", "cuda"]}})),
            format!("The ModelDeployment \"minilm\" is invalid: [spec.backends[1]: Unsupported value: \"cuda\": supported values: \"auto\", \"webgpu\", \"webnn\", \"wasm\", {NOT_CHECKED}]"),
        ),
        (
            "too many items",
            with(POOL, json!({"spec": {"backends": ["webgpu", "webnn", "wasm", "wasm"]}})),
            format!("The BrowserPool \"cpu\" is invalid: [spec.backends: Too many: 4: must have at most 3 items, {NOT_CHECKED}]"),
        ),
        (
            "too long a string",
            with(POOL, json!({"spec": {"metrics": {"url": long_url}}})),
            format!("The BrowserPool \"cpu\" is invalid: [spec.metrics.url: Too long: may not be more than 2048 bytes, {NOT_CHECKED}]"),
        ),
        (
            "too short a string",
            with(POOL, json!({"spec": {"image": ""}})),
            "The BrowserPool \"cpu\" is invalid: spec.image: Invalid value: \"\": spec.image in body should be at least 1 chars long".to_owned(),
        ),
        (
            "pattern",
            with(MODEL, json!({"spec": {"model": {"sha256": "abc"}}})),
            "The ModelDeployment \"minilm\" is invalid: spec.model.sha256: Invalid value: \"abc\": spec.model.sha256 in body should match '^[0-9a-fA-F]{64}$'".to_owned(),
        ),
        (
            "a float where int-or-string goes",
            with(POOL, json!({"spec": {"template": {"resources": {"requests": {"cpu": 0.5, "memory": "1Gi"}}}}})),
            format!("The BrowserPool \"cpu\" is invalid: [spec.template.resources.requests.cpu: Invalid value: \"number\": spec.template.resources.requests.cpu in body must be of type integer,string: \"number\", {NOT_CHECKED}]"),
        ),
        (
            "autoscaling min > max (CEL)",
            with(POOL, json!({"spec": {"autoscaling": {"enabled": true, "minReplicas": 5, "maxReplicas": 2}}})),
            "The BrowserPool \"cpu\" is invalid: spec.autoscaling: Invalid value: \"object\": autoscaling.minReplicas must not be greater than autoscaling.maxReplicas".to_owned(),
        ),
        (
            "two CEL rules on two fields",
            with(POOL, json!({"spec": {"backends": [], "metrics": {"url": "tcp://ch:9000"}}})),
            "The BrowserPool \"cpu\" is invalid: [spec.backends: Invalid value: \"array\": backends must list at least one of webgpu, webnn or wasm, spec.metrics.url: Invalid value: \"string\": metrics.url must start with http:// or https://]".to_owned(),
        ),
        (
            "too long a name (CEL on the root)",
            with(MODEL, json!({"metadata": {"name": "m".repeat(58)}})),
            format!("The ModelDeployment \"{}\" is invalid: <nil>: Invalid value: \"object\": a ModelDeployment name is at most 57 characters, so that the pod label webaccel.dev/model.<name> is valid", "m".repeat(58)),
        ),
        (
            "a name that is no DNS subdomain",
            with(POOL, json!({"metadata": {"name": "Bad_Name"}})),
            "The BrowserPool \"Bad_Name\" is invalid: [metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*'), <nil>: Invalid value: \"object\": a BrowserPool name is at most 50 lowercase letters, digits and '-', starting with a letter (it names the pool's Service and prefixes its pod names)]".to_owned(),
        ),
        (
            "no name",
            with(MODEL, json!({"metadata": {"name": null}})),
            format!("The ModelDeployment \"\" is invalid: [metadata.name: Required value: name or generateName is required, {NOT_CHECKED}]"),
        ),
        (
            "bad label",
            with(MODEL, json!({"metadata": {"labels": {"team": "-ml"}}})),
            "The ModelDeployment \"minilm\" is invalid: metadata.labels: Invalid value: \"-ml\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_owned(),
        ),
        (
            "unknown fields (strict field validation)",
            with(POOL, json!({"spec": {"foo": 1, "autoscaling": {"maxReplicas": 2, "max": 3}}, "metadata": {"lables": {}}})),
            "Error from server (BadRequest): error when creating \"bad.yaml\": BrowserPool in version \"v1alpha1\" cannot be handled as a BrowserPool: strict decoding error: unknown field \"metadata.lables\", unknown field \"spec.autoscaling.max\", unknown field \"spec.foo\"".to_owned(),
        ),
        (
            "metadata of the wrong type",
            with(POOL, json!({"metadata": {"labels": {"n": 1}}})),
            "Error from server (BadRequest): error when creating \"bad.yaml\": BrowserPool in version \"v1alpha1\" cannot be handled as a BrowserPool: json: cannot unmarshal number into Go struct field ObjectMeta.labels of type string".to_owned(),
        ),
        (
            "unknown kind",
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}),
            "error: resource mapping not found for name: \"web\" namespace: \"\" from \"bad.yaml\": no matches for kind \"Deployment\" in version \"apps/v1\"; webaccel supports kind BrowserPool or ModelDeployment in version webaccel.dev/v1alpha1".to_owned(),
        ),
        (
            "known kind, other version",
            with(POOL, json!({"apiVersion": "webaccel.dev/v1"})),
            "error: resource mapping not found for name: \"cpu\" namespace: \"default\" from \"bad.yaml\": no matches for kind \"BrowserPool\" in version \"webaccel.dev/v1\"; webaccel supports kind BrowserPool or ModelDeployment in version webaccel.dev/v1alpha1".to_owned(),
        ),
        (
            "no kind",
            json!({"apiVersion": "webaccel.dev/v1alpha1", "metadata": {"name": "x"}}),
            "error: unable to decode \"bad.yaml\": Object 'Kind' is missing in '{\"apiVersion\":\"webaccel.dev/v1alpha1\",\"metadata\":{\"name\":\"x\"}}'; webaccel supports kind BrowserPool or ModelDeployment in version webaccel.dev/v1alpha1".to_owned(),
        ),
    ];
    let mut failed = Vec::new();
    for (what, object, expected) in cases {
        let got = refused(&object);
        if got != expected {
            failed.push(format!("{what}:\n  expected {expected}\n       got {got}"));
        }
    }
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}

#[test]
fn causes_are_listed_one_by_one() {
    let err = validate(
        &with(
            POOL,
            json!({"spec": {"replicas": 2000, "browser": "safari"}}),
        ),
        "p.yaml",
    )
    .unwrap_err();
    assert_eq!(
        (err.kind.as_str(), err.name.as_str()),
        ("BrowserPool", "cpu")
    );
    let causes: Vec<(&str, &str, &str)> = err
        .causes
        .iter()
        .map(|c| (c.reason, c.field.as_str(), c.message.as_str()))
        .collect();
    assert_eq!(
        causes,
        [
            (
                "FieldValueNotSupported",
                "spec.browser",
                "Unsupported value: \"safari\": supported values: \"chromium\", \"chrome\", \"edge\", \"firefox\""
            ),
            (
                "FieldValueInvalid",
                "spec.replicas",
                "Invalid value: 2000: spec.replicas in body should be less than or equal to 1000"
            ),
            ("FieldValueInvalid", "<nil>", &NOT_CHECKED[7..]),
        ]
    );
    let cel = validate(
        &with(
            POOL,
            json!({"spec": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}),
        ),
        "p.yaml",
    )
    .unwrap_err();
    assert_eq!(cel.causes.len(), 1);
    assert_eq!(
        cel.causes[0].rule.as_deref(),
        Some("self.minReplicas <= self.maxReplicas")
    );
    assert_eq!(
        cel.causes[0].detail,
        "autoscaling.minReplicas must not be greater than autoscaling.maxReplicas"
    );
}

#[test]
fn schema_defaults_apply_and_nullable_fields_take_null() {
    let parsed: [Resource; 1] = parse(POOL, "p.yaml").unwrap().try_into().unwrap();
    let [Resource::BrowserPool(pool)] = parsed else {
        panic!("not a pool");
    };
    assert_eq!(pool.spec.replicas, 1);
    assert_eq!(pool.spec.browser, BrowserKind::Chromium);
    assert_eq!(
        pool.spec.backends,
        [Backend::Webgpu, Backend::Webnn, Backend::Wasm]
    );
    assert_eq!(pool.spec.max_in_flight_per_browser, 64);
    assert!(pool.status.is_none());

    // Defaults inside an object that is given; a given status is dropped, as on create.
    let Resource::BrowserPool(pool) = validate(
        &with(
            POOL,
            json!({"spec": {"autoscaling": {"maxReplicas": 4}, "gpu": null},
                           "status": {"replicas": 3}}),
        ),
        "p.yaml",
    )
    .unwrap() else {
        panic!("not a pool");
    };
    let autoscaling = pool.spec.autoscaling.unwrap();
    assert_eq!(
        (
            autoscaling.min_replicas,
            autoscaling.max_replicas,
            autoscaling.target_in_flight_per_browser
        ),
        (1, 4, 4)
    );
    assert!(pool.spec.gpu.is_none());
    assert!(pool.status.is_none());

    // A non-nullable null with a default takes the default.
    let Resource::ModelDeployment(model) = validate(
        &with(
            MODEL,
            json!({"spec": {"warmup": Value::Null, "replicas": Value::Null, "precision": Value::Null}}),
        ),
        "m.yaml",
    )
    .unwrap() else {
        panic!("not a model");
    };
    assert!(model.spec.warmup);
    // `replicas` is nullable (it and `autoscaling` are one or the other): unset is 1.
    assert_eq!(model.spec.replicas, None);
    assert_eq!(model.spec.fixed_replicas(), Some(1));
    assert_eq!(
        model.spec.precision, None,
        "unset: the file's own precision"
    );
    assert_eq!(model.spec.backends, [Backend::Auto]);
    assert!(model.spec.warmup);
}

#[test]
fn integral_numbers_and_quantities_read_as_kubectl_sends_them() {
    // kubectl sends 2.0 as 2; quantities may be integers or strings.
    let pool = with(
        POOL,
        json!({"spec": {"replicas": 2.0, "template": {"resources": {"requests": {"cpu": 2, "memory": "1Gi"}}}}}),
    );
    let Resource::BrowserPool(pool) = validate(&pool, "p.yaml").unwrap() else {
        panic!("not a pool");
    };
    assert_eq!(pool.spec.replicas, 2);
}

#[test]
fn multi_document_yaml_with_comments() {
    let text = format!(
        "# webaccel manifests\n# (a header of only comments)\n---\n{POOL}---\n# nothing here\n---\n\n{MODEL}\n---\n"
    );
    let resources = parse(&text, "all.yaml").unwrap();
    let kinds: Vec<(&str, &str)> = resources.iter().map(|r| (r.kind(), r.name())).collect();
    assert_eq!(
        kinds,
        [("BrowserPool", "cpu"), ("ModelDeployment", "minilm")]
    );

    // Nothing but comments is nothing to apply, not an error.
    assert!(
        parse("# empty\n---\n# still empty\n", "e.yaml")
            .unwrap()
            .is_empty()
    );

    // A List stands for its items; a JSON stream works as kubectl reads one.
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        serde_yaml_ng::from_str::<Value>(POOL).unwrap(),
        serde_yaml_ng::from_str::<Value>(MODEL).unwrap()]});
    assert_eq!(parse(&list.to_string(), "list.json").unwrap().len(), 2);
    let stream = format!(
        "{}\n{}",
        serde_yaml_ng::from_str::<Value>(POOL).unwrap(),
        serde_yaml_ng::from_str::<Value>(MODEL).unwrap()
    );
    assert_eq!(parse(&stream, "stream.json").unwrap().len(), 2);
}

#[test]
fn two_documents_in_one_file_with_one_bad() {
    let bad_model = MODEL.replace("task: text-embedding", "task: translation");
    let text = format!("{POOL}---\n{bad_model}");
    let refused = parse(&text, "two.yaml").unwrap_err();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let e = &refused[0];
    assert_eq!(
        (e.kind.as_str(), e.name.as_str(), e.source.as_str()),
        ("ModelDeployment", "minilm", "two.yaml#2")
    );
    assert_eq!(
        e.message,
        format!(
            "The ModelDeployment \"minilm\" is invalid: [spec.model.task: Unsupported value: \"translation\": supported values: \"text-embedding\", \"vision\", \"audio\", \"text-generation\", \"multimodal\", \"speech-to-text\", {NOT_CHECKED}]"
        )
    );
    assert_eq!(
        e.to_string(),
        format!("two.yaml#2: {}", e.message),
        "Display names the document"
    );

    // YAML that does not parse is refused with where.
    let broken = parse(&format!("{POOL}---\nkind: [\n"), "broken.yaml").unwrap_err();
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0].source, "broken.yaml#2");
    assert!(
        broken[0]
            .message
            .starts_with("error: error parsing broken.yaml: error converting YAML to JSON: "),
        "{}",
        broken[0].message
    );
}

#[test]
fn files_directories_and_missing_paths() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("b-model.yml", MODEL);
    write("a-pool.yaml", POOL);
    write("notes.txt", "not a manifest");
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    std::fs::write(dir.path().join("nested/other.yaml"), "kind: [").unwrap();
    let got = parse_files(&[dir.path().to_path_buf()]).unwrap();
    let names: Vec<(String, &str)> = got
        .iter()
        .map(|(source, r)| {
            let file = Path::new(source)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (file, r.kind())
        })
        .collect();
    assert_eq!(
        names,
        [
            ("a-pool.yaml".to_owned(), "BrowserPool"),
            ("b-model.yml".to_owned(), "ModelDeployment")
        ]
    );

    let missing = dir.path().join("missing.yaml");
    let err = parse_files(std::slice::from_ref(&missing)).unwrap_err();
    assert_eq!(
        err[0].message,
        format!("error: the path \"{}\" does not exist", missing.display())
    );
    let empty = tempfile::tempdir().unwrap();
    let err = parse_files(&[empty.path().to_path_buf()]).unwrap_err();
    assert_eq!(err[0].message, "error: no objects passed to apply");
}
