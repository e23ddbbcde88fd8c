//! BrowserPool and ModelDeployment objects checked on the client exactly as the Kubernetes
//! API server checks them on create, and refused with the messages `kubectl apply` prints, so
//! that local mode (`webaccel up -f manifests/`) refuses bad YAML the way a cluster would.
//!
//! The API server's steps, in its order (apiextensions-apiserver, Kubernetes v1.33):
//!
//! 1. `apiVersion`/`kind` must name a served kind (`webaccel.dev/v1alpha1`, `BrowserPool` or
//!    `ModelDeployment`); otherwise kubectl finds no resource mapping and says so.
//! 2. Decoding: `metadata` must decode as an ObjectMeta; fields the structural schema does not
//!    know are pruned. `kubectl apply` (v1.27 and later, its default `--validate=strict`)
//!    asks a v1.27+ server for strict field validation, so unknown fields are refused with
//!    `Error from server (BadRequest): ... strict decoding error: unknown field "spec.foo"`
//!    rather than pruned silently. Then non-nullable `null`s are dropped and schema defaults
//!    applied; create drops `status` (the kinds have a status subresource).
//! 3. Validation, as one list of causes: `metadata` (`name` required and a DNS-1123
//!    subdomain, the namespace a DNS-1123 label, label and annotation keys and values), the
//!    OpenAPI v3 schema (types, `required`, `enum`, minimum/maximum, min/maxLength, pattern,
//!    min/maxItems, nullable, int-or-string), BrowserPool's `/scale` path `.spec.replicas`,
//!    then the CEL rules (`x-kubernetes-validations`, through kube's CEL validator), which
//!    the API server skips, with a cause saying so, when a type, required, enum or size
//!    cause came before.
//!
//! A refused object's message is `kubectl apply`'s: `The BrowserPool "cpu" is invalid: `
//! followed by the causes aggregated as the API server aggregates a `field.ErrorList` (one
//! cause as is, several as `[cause1, cause2]`, duplicates dropped). kubectl prints several
//! causes one per line instead; [`Invalid::causes`] holds them one by one.
//!
//! Where the API server walks Go maps (in random order) this walks keys in sorted order, so
//! several causes always come in the same order. Not checked, because these resources' schemas
//! do not use them: `x-kubernetes-list-type`, string formats (only in `status`, which create
//! drops), owner references, finalizers and managed fields. YAML is read as YAML 1.2, so
//! unquoted `yes`/`no`/`on`/`off` are strings here where kubectl's YAML 1.1 reads booleans.

mod field;
mod meta;
mod schema;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kube::core::cel;
use serde::Deserialize as _;
use serde_json::Value;

use self::field::{FieldError, go_quote, go_type, go_v};
use webaccel_crds::v1alpha1::{BrowserPool, ModelDeployment, openapi_v3_schema};

/// The API group and version of the resources webaccel runs.
pub const API_VERSION: &str = "webaccel.dev/v1alpha1";
const VERSION: &str = "v1alpha1";

/// A resource webaccel runs, parsed and valid.
// A manifest holds a handful of these, moved once: boxing the larger one saves nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    BrowserPool(BrowserPool),
    ModelDeployment(ModelDeployment),
}

impl Resource {
    /// `BrowserPool` or `ModelDeployment`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BrowserPool(_) => "BrowserPool",
            Self::ModelDeployment(_) => "ModelDeployment",
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        let meta = match self {
            Self::BrowserPool(p) => &p.metadata,
            Self::ModelDeployment(m) => &m.metadata,
        };
        meta.name.as_deref().unwrap_or("")
    }
}

/// One reason an object is invalid, as the API server lists it in `status.details.causes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
    /// The field as the API server names it: `spec.replicas`, `metadata.name`, `<nil>` for a
    /// rule on the whole object.
    pub field: String,
    /// What follows the field: `Invalid value: 2000: spec.replicas in body should be less than
    /// or equal to 1000`.
    pub message: String,
    /// The part of the message the check wrote, without the bad value: for a CEL rule, the
    /// rule's message.
    pub detail: String,
    /// The CEL rule, when an `x-kubernetes-validations` rule failed.
    pub rule: Option<String>,
}

impl From<&FieldError> for Cause {
    fn from(e: &FieldError) -> Self {
        Self {
            reason: e.kind.reason(),
            field: e.field.clone(),
            message: e.body(),
            detail: e.detail.clone(),
            rule: e.rule.clone(),
        }
    }
}

/// Why one document was refused: `message` as `kubectl apply` would print it, e.g.
/// `The BrowserPool "cpu" is invalid: spec.replicas: Invalid value: 2000: spec.replicas in
/// body should be less than or equal to 1000`, and `source`: the file (`-` reads as `STDIN`),
/// with `#N` (from 1) for the Nth document of a multi-document file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The document's `kind`, as written (empty when it has none).
    pub kind: String,
    /// The document's `metadata.name` (empty when it has none).
    pub name: String,
    pub source: String,
    pub message: String,
    /// The causes of an invalid object, one by one; empty when the object was refused before
    /// validation (unknown kind, unknown fields, YAML that does not parse).
    pub causes: Vec<Cause>,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

impl std::error::Error for Invalid {}

/// What this module knows of one kind.
struct Kind {
    name: &'static str,
    /// The CRD's `openAPIV3Schema`.
    schema: Value,
    /// Its CEL rules, compiled once.
    rules: cel::CompiledSchema,
    /// Whether the CRD has a `/scale` subresource at `.spec.replicas`.
    scale: bool,
}

fn kinds() -> &'static [Kind; 2] {
    static KINDS: OnceLock<[Kind; 2]> = OnceLock::new();
    KINDS.get_or_init(|| {
        let kind = |name, schema: Option<Value>, scale| {
            let schema = schema.unwrap_or_default();
            Kind {
                name,
                rules: cel::compile_schema(&schema),
                schema,
                scale,
            }
        };
        [
            kind("BrowserPool", openapi_v3_schema::<BrowserPool>(), true),
            kind(
                "ModelDeployment",
                openapi_v3_schema::<ModelDeployment>(),
                false,
            ),
        ]
    })
}

/// Every document of a (multi-document) YAML or JSON text, each parsed and valid, or why each
/// refused one was refused. Documents that are empty or only comments are skipped; a `List`
/// stands for its items; a document of another apiVersion/kind is refused with a message
/// naming what is supported.
pub fn parse(text: &str, source: &str) -> Result<Vec<Resource>, Vec<Invalid>> {
    let (resources, refused) = parse_located(text, source);
    if refused.is_empty() {
        Ok(resources.into_iter().map(|(_, r)| r).collect())
    } else {
        Err(refused)
    }
}

/// One object (already parsed to JSON), checked as the API server checks a create, and read
/// into its type with the schema's defaults applied. `source` names it in `Invalid::source`
/// and, as kubectl names the file, in the messages that carry one.
pub fn validate(object: &Value, source: &str) -> Result<Resource, Invalid> {
    check(object, source, source)
}

/// `kubectl apply -f` for each path: a file (whatever its name), every `*.yaml`, `*.yml` and
/// `*.json` file directly inside a directory (sorted, not recursive), or `-` for stdin. Each
/// resource comes with its source (as in [`Invalid::source`]); every refused document is
/// reported. Like kubectl, nothing to apply is an error.
pub fn parse_files(paths: &[PathBuf]) -> Result<Vec<(String, Resource)>, Vec<Invalid>> {
    let mut resources = Vec::new();
    let mut refused = Vec::new();
    let mut read = |text: Result<String, String>, source: &str| match text {
        Ok(text) => {
            let (ok, bad) = parse_located(&text, source);
            resources.extend(ok);
            refused.extend(bad);
        }
        Err(message) => refused.push(refusal("", "", source, message)),
    };
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            let result = std::io::stdin()
                .read_to_string(&mut text)
                .map(|_| text)
                .map_err(|e| format!("error: reading STDIN: {e}"));
            read(result, "STDIN");
            continue;
        }
        let shown = path.display().to_string();
        match std::fs::metadata(path) {
            Err(_) => read(
                Err(format!(
                    "error: the path {} does not exist",
                    go_quote(&shown)
                )),
                &shown,
            ),
            Ok(m) if m.is_dir() => match manifest_files(path) {
                Ok(files) => {
                    for file in files {
                        read(read_file(&file), &file.display().to_string());
                    }
                }
                Err(message) => read(Err(message), &shown),
            },
            Ok(_) => read(read_file(path), &shown),
        }
    }
    if refused.is_empty() && resources.is_empty() {
        refused.push(refusal(
            "",
            "",
            "",
            "error: no objects passed to apply".to_owned(),
        ));
    }
    if refused.is_empty() {
        Ok(resources)
    } else {
        Err(refused)
    }
}

fn read_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("error: {}: {e}", path.display()))
}

/// The files `kubectl apply -f dir/` reads: `.json`, `.yaml`, `.yml`, sorted, not recursive.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("error: {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "json" | "yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn refusal(kind: &str, name: &str, source: &str, message: String) -> Invalid {
    Invalid {
        kind: kind.to_owned(),
        name: name.to_owned(),
        source: source.to_owned(),
        message,
        causes: Vec::new(),
    }
}

/// The documents of a text, as kubectl's YAML-or-JSON decoder splits them: a JSON stream when
/// the text starts with `{`, YAML documents otherwise. Reading stops at the first that does
/// not parse.
fn documents(text: &str) -> Vec<Result<Value, String>> {
    let mut docs = Vec::new();
    if text.trim_start().starts_with('{') {
        for doc in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            let failed = doc.is_err();
            docs.push(doc.map_err(|e| e.to_string()));
            if failed {
                break;
            }
        }
    } else {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let doc =
                Value::deserialize(doc).map_err(|e| format!("error converting YAML to JSON: {e}"));
            let failed = doc.is_err();
            docs.push(doc);
            if failed {
                break;
            }
        }
    }
    docs
}

fn parse_located(text: &str, file: &str) -> (Vec<(String, Resource)>, Vec<Invalid>) {
    let docs = documents(text);
    let several = docs.len() > 1;
    let mut resources = Vec::new();
    let mut refused = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let label = if several {
            format!("{file}#{}", i + 1)
        } else {
            file.to_owned()
        };
        let doc = match doc {
            Ok(doc) => doc,
            Err(e) => {
                refused.push(refusal(
                    "",
                    "",
                    &label,
                    format!("error: error parsing {file}: {e}"),
                ));
                continue;
            }
        };
        if doc.is_null() {
            continue;
        }
        let items = match list_items(&doc) {
            Some(items) => items
                .iter()
                .enumerate()
                .map(|(j, item)| (format!("{label} items[{j}]"), item))
                .collect(),
            None => vec![(label, &doc)],
        };
        for (source, object) in items {
            match check(object, &source, file) {
                Ok(resource) => resources.push((source, resource)),
                Err(invalid) => refused.push(invalid),
            }
        }
    }
    (resources, refused)
}

/// The items of a `List` (`kind: List`, or any `...List` with `items`), which kubectl applies
/// one by one.
fn list_items(doc: &Value) -> Option<&Vec<Value>> {
    let kind = doc.get("kind")?.as_str()?;
    if !kind.ends_with("List") || kind == "List" && doc.get("apiVersion")?.as_str()? != "v1" {
        return None;
    }
    doc.get("items")?.as_array()
}

/// What kubectl's round trip through Go does to numbers: an integral float is sent as an
/// integer, an integer beyond int64 arrives as a float.
fn normalize_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if n.is_u64() && !n.is_i64() {
                if let Some(f) = n.as_f64().and_then(serde_json::Number::from_f64) {
                    *n = f;
                }
            } else if n.is_f64()
                && let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && (-9.2e18..9.2e18).contains(&f)
            {
                #[allow(clippy::cast_possible_truncation)]
                let i = f as i64;
                *n = serde_json::Number::from(i);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_numbers),
        Value::Object(map) => map.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

fn go_json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

const SUPPORTED: &str =
    "webaccel supports kind BrowserPool or ModelDeployment in version webaccel.dev/v1alpha1";

/// One object through the API server's create path. `file` is what kubectl names in its
/// messages; `source` what [`Invalid::source`] says.
fn check(object: &Value, source: &str, file: &str) -> Result<Resource, Invalid> {
    let text_at = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
    let kind = text_at("/kind").unwrap_or("");
    let name = text_at("/metadata/name").unwrap_or("");
    let refuse = |message: String| refusal(kind, name, source, message);
    if !object.is_object() {
        return Err(refuse(format!(
            "error: unable to decode {}: json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            go_quote(file),
            go_json_kind(object)
        )));
    }
    let compact = || serde_json::to_string(object).unwrap_or_default();
    if kind.is_empty() {
        return Err(refuse(format!(
            "error: unable to decode {}: Object 'Kind' is missing in '{}'; {SUPPORTED}",
            go_quote(file),
            compact()
        )));
    }
    let api_version = text_at("/apiVersion").unwrap_or("");
    if api_version.is_empty() {
        return Err(refuse(format!(
            "error: unable to decode {}: Object 'apiVersion' is missing in '{}'; {SUPPORTED}",
            go_quote(file),
            compact()
        )));
    }
    let known = kinds()
        .iter()
        .find(|k| k.name == kind && api_version == API_VERSION);
    let Some(known) = known else {
        return Err(refuse(format!(
            "error: resource mapping not found for name: {} namespace: {} from {}: no matches for kind {} in version {}; {SUPPORTED}",
            go_quote(name),
            go_quote(text_at("/metadata/namespace").unwrap_or("")),
            go_quote(file),
            go_quote(kind),
            go_quote(api_version)
        )));
    };
    if name.is_empty() && text_at("/metadata/generateName").is_some_and(|g| !g.is_empty()) {
        return Err(refuse(format!(
            "error: from {file}: cannot use generate name with apply"
        )));
    }

    // Decoding: ObjectMeta, pruning (strict: unknown fields are errors), nulls, defaults.
    let bad_request = |detail: String| {
        refuse(format!(
            "Error from server (BadRequest): error when creating {}: {kind} in version {} cannot be handled as a {kind}: {detail}",
            go_quote(file),
            go_quote(VERSION)
        ))
    };
    let mut object = object.clone();
    normalize_numbers(&mut object);
    let mut unknown = meta::decode(&object).map_err(bad_request)?;
    unknown.extend(schema::prune(&mut object, &known.schema));
    if !unknown.is_empty() {
        let fields: Vec<String> = unknown
            .iter()
            .map(|path| format!("unknown field \"{path}\""))
            .collect();
        return Err(bad_request(format!(
            "strict decoding error: {}",
            fields.join(", ")
        )));
    }
    schema::prune_nulls(&mut object, &known.schema);
    schema::default(&mut object, &known.schema);
    if let Some(map) = object.as_object_mut() {
        // PrepareForCreate: the status subresource's half is not the client's to set.
        map.remove("status");
    }

    // Validation.
    let mut errors = meta::validate(&object);
    errors.extend(schema::validate(&object, &known.schema));
    if known.scale {
        errors.extend(scale_spec_replicas(&object));
    }
    if errors.iter().any(|e| e.kind.blocks_cel()) {
        errors.push(FieldError::invalid(
            "",
            Value::Null,
            "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".to_owned(),
        ));
    } else {
        errors.extend(cel_rules(&object, known));
    }
    if !errors.is_empty() {
        let mut causes: Vec<Cause> = Vec::new();
        for cause in errors.iter().map(Cause::from) {
            if !causes.contains(&cause) {
                causes.push(cause);
            }
        }
        return Err(Invalid {
            kind: kind.to_owned(),
            name: name.to_owned(),
            source: source.to_owned(),
            message: format!(
                "The {kind} {} is invalid: {}",
                go_quote(name),
                field::aggregate(&errors)
            ),
            causes,
        });
    }

    let typed = match known.name {
        "BrowserPool" => serde_json::from_value(object).map(Resource::BrowserPool),
        _ => serde_json::from_value(object).map(Resource::ModelDeployment),
    };
    typed.map_err(|e| {
        refuse(format!(
            "error: internal error: the {kind} passed validation but does not read as one: {e}"
        ))
    })
}

/// `ValidateScaleSpec`: the `/scale` subresource reads `.spec.replicas` as an int64.
fn scale_spec_replicas(object: &Value) -> Vec<FieldError> {
    const PATH: &str = ".spec.replicas";
    let accessor = |v: &Value, expected: &str| {
        vec![FieldError::invalid(
            PATH,
            Value::from(0),
            format!(
                "{PATH} accessor error: {} is of the type {}, expected {expected}",
                go_v(v),
                go_type(v)
            ),
        )]
    };
    let replicas = match object.get("spec") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Object(spec)) => match spec.get("replicas") {
            None => return Vec::new(),
            Some(r) => r,
        },
        Some(other) => return accessor(other, "map[string]interface{}"),
    };
    match replicas.as_i64().filter(|_| replicas.is_i64()) {
        None => accessor(replicas, "int64"),
        Some(r) if r < 0 => vec![FieldError::invalid(
            PATH,
            Value::from(r),
            "should be a non-negative integer".to_owned(),
        )],
        Some(r) if r > i64::from(i32::MAX) => vec![FieldError::invalid(
            PATH,
            Value::from(r),
            format!("should be less than or equal to {}", i32::MAX),
        )],
        Some(_) => Vec::new(),
    }
}

/// The `x-kubernetes-validations` rules through kube's CEL validator, each failure as the API
/// server reports it: the node's schema type as the bad value, the rule's message as detail.
fn cel_rules(object: &Value, kind: &Kind) -> Vec<FieldError> {
    let Err(failures) = cel::validate_compiled(&kind.rules, object, None) else {
        return Vec::new();
    };
    let mut failures = failures.into_vec();
    failures.sort_by(|a, b| a.field_path.cmp(&b.field_path));
    failures
        .into_iter()
        .map(|f| {
            let node_type = Value::from(schema::type_at(&kind.schema, &f.field_path));
            let mut e = match f.reason.as_deref() {
                Some("FieldValueForbidden") => FieldError::forbidden(&f.field_path, f.message),
                Some("FieldValueRequired") => FieldError::required(&f.field_path, &f.message),
                Some("FieldValueDuplicate") => FieldError::duplicate(&f.field_path, node_type),
                _ => FieldError::invalid(&f.field_path, node_type, f.message),
            };
            e.rule = Some(f.rule);
            e
        })
        .collect()
}
