//! `metadata`: how the API server decodes it (`schemaobjectmeta.GetObjectMetaWithOptions`,
//! strictly) and validates it (`ValidateObjectMetaAccessor` with `NameIsDNSSubdomain`, as for
//! every custom resource).

use serde_json::{Map, Value};

use super::field::FieldError;

/// Go's name of a JSON value's kind in `json: cannot unmarshal <kind> into ...`.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_error(v: &Value, field: &str, go_type: &str) -> String {
    format!(
        "json: cannot unmarshal {} into Go struct field ObjectMeta.{field} of type {go_type}",
        json_kind(v)
    )
}

/// `json.Unmarshal` of `metadata` into `metav1.ObjectMeta`, strictly: the first type error
/// (the decoding fails) or the paths of unknown fields. Owner references, managed fields and
/// timestamps are taken as they come.
pub(super) fn decode(object: &Value) -> Result<Vec<String>, String> {
    let metadata = match object.get("metadata") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type v1.ObjectMeta",
                json_kind(other)
            ));
        }
    };
    let mut keys: Vec<&String> = metadata.keys().collect();
    keys.sort();
    let mut unknown = Vec::new();
    for key in keys {
        let v = &metadata[key.as_str()];
        let error = match key.as_str() {
            "name" | "generateName" | "namespace" | "selfLink" | "uid" | "resourceVersion" => {
                (!v.is_null() && !v.is_string()).then(|| type_error(v, key, "string"))
            }
            "generation" | "deletionGracePeriodSeconds" => match v {
                Value::Null => None,
                Value::Number(n) if n.is_i64() => None,
                Value::Number(n) => Some(format!(
                    "json: cannot unmarshal number {n} into Go struct field ObjectMeta.{key} of type int64"
                )),
                other => Some(type_error(other, key, "int64")),
            },
            "labels" | "annotations" => match v {
                Value::Null => None,
                Value::Object(map) => map
                    .values()
                    .find(|x| !x.is_null() && !x.is_string())
                    .map(|x| type_error(x, key, "string")),
                other => Some(type_error(other, key, "map[string]string")),
            },
            "finalizers" => match v {
                Value::Null => None,
                Value::Array(list) => list
                    .iter()
                    .find(|x| !x.is_null() && !x.is_string())
                    .map(|x| type_error(x, key, "string")),
                other => Some(type_error(other, key, "[]string")),
            },
            "creationTimestamp" | "deletionTimestamp" | "ownerReferences" | "managedFields" => None,
            _ => {
                unknown.push(format!("metadata.{key}"));
                None
            }
        };
        if let Some(error) = error {
            return Err(error);
        }
    }
    Ok(unknown)
}

fn string_at<'a>(metadata: Option<&'a Map<String, Value>>, key: &str) -> &'a str {
    metadata
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
/// `TotalAnnotationSizeLimitB`.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// apimachinery's `validation.RegexError`.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{example}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// `validation.IsDNS1123Label`.
fn dns1123_label(s: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if s.len() > 63 {
        errors.push(max_len_error(63));
    }
    if !is_dns_label(s) {
        errors.push(regex_error(
            DNS1123_LABEL_MSG,
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    errors
}

/// `validation.IsDNS1123Subdomain`.
fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if s.len() > 253 {
        errors.push(max_len_error(253));
    }
    if !s.split('.').all(is_dns_label) {
        errors.push(regex_error(
            DNS1123_SUBDOMAIN_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errors
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `validation.IsQualifiedName`.
fn qualified_name(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_owned());
            } else {
                errors.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errors.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_MSG,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return errors;
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errors.push(format!("name part {}", max_len_error(63)));
    }
    if !is_qualified_name_part(name) {
        errors.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errors
}

/// `validation.IsValidLabelValue`.
fn label_value(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push(max_len_error(63));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        errors.push(regex_error(
            LABEL_VALUE_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errors
}

/// `ValidateObjectMetaAccessor(meta, namespaced=true, NameIsDNSSubdomain, "metadata")` for what
/// a manifest can hold. An empty namespace is the client's to fill (kubectl uses its context's),
/// so only a given one is checked. Labels and annotations are checked in key order.
pub(super) fn validate(object: &Value) -> Vec<FieldError> {
    let metadata = object.get("metadata").and_then(Value::as_object);
    let mut errors = Vec::new();
    let generate_name = string_at(metadata, "generateName");
    if !generate_name.is_empty() {
        // NameIsDNSSubdomain(prefix=true) masks a trailing '-'.
        let mut masked = generate_name.to_owned();
        if masked.len() > 1 && masked.ends_with('-') {
            masked.pop();
            masked.push('a');
        }
        for msg in dns1123_subdomain(&masked) {
            errors.push(FieldError::invalid(
                "metadata.generateName",
                Value::from(generate_name),
                msg,
            ));
        }
    }
    let name = string_at(metadata, "name");
    if name.is_empty() {
        errors.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for msg in dns1123_subdomain(name) {
            errors.push(FieldError::invalid("metadata.name", Value::from(name), msg));
        }
    }
    let namespace = string_at(metadata, "namespace");
    if !namespace.is_empty() {
        for msg in dns1123_label(namespace) {
            errors.push(FieldError::invalid(
                "metadata.namespace",
                Value::from(namespace),
                msg,
            ));
        }
    }
    let map_at = |key: &str| -> Vec<(String, String)> {
        let mut entries: Vec<(String, String)> = metadata
            .and_then(|m| m.get(key))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
            .collect();
        entries.sort();
        entries
    };
    for (key, value) in map_at("labels") {
        for msg in qualified_name(&key) {
            errors.push(FieldError::invalid(
                "metadata.labels",
                Value::from(key.as_str()),
                msg,
            ));
        }
        for msg in label_value(&value) {
            errors.push(FieldError::invalid(
                "metadata.labels",
                Value::from(value.as_str()),
                msg,
            ));
        }
    }
    let annotations = map_at("annotations");
    for (key, _) in &annotations {
        for msg in qualified_name(&key.to_lowercase()) {
            errors.push(FieldError::invalid(
                "metadata.annotations",
                Value::from(key.as_str()),
                msg,
            ));
        }
    }
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > ANNOTATIONS_MAX_BYTES {
        errors.push(FieldError::too_long(
            "metadata.annotations",
            i64::try_from(ANNOTATIONS_MAX_BYTES).unwrap_or(i64::MAX),
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_checks_word_as_apimachinery() {
        assert!(dns1123_subdomain("gpu.pool-2").is_empty());
        assert_eq!(
            dns1123_subdomain("Bad_Name"),
            [
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ]
        );
        assert_eq!(
            dns1123_label("Default"),
            [
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            ]
        );
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert_eq!(qualified_name("a/b/c").len(), 1);
        assert!(label_value("").is_empty());
        assert_eq!(label_value("-x").len(), 1);
    }
}
