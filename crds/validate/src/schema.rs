//! What the API server does with a custom resource's structural schema on create, in its
//! order: while decoding, pruning of unknown fields (reported under strict field validation),
//! pruning of non-nullable nulls and defaulting (apiextensions-apiserver's `structuralpruning`
//! and `structuraldefaulting`); then the OpenAPI v3 validation of kube-openapi's
//! `SchemaValidator`, turned into field errors as `kubeOpenAPIResultToFieldErrors` does.

use serde_json::{Map, Value};

use super::field::{FieldError, go_float, go_quote};

/// The fields every object has that a resource's schema does not describe.
const META_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

fn flag(s: &Value, name: &str) -> bool {
    s.get(name).and_then(Value::as_bool) == Some(true)
}

fn properties(s: &Value) -> Option<&Map<String, Value>> {
    s.get("properties").and_then(Value::as_object)
}

fn property<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    properties(s).and_then(|p| p.get(name))
}

/// `additionalProperties` when it is a schema.
fn additional(s: &Value) -> Option<&Value> {
    s.get("additionalProperties").filter(|a| a.is_object())
}

fn items(s: &Value) -> Option<&Value> {
    s.get("items").filter(|i| i.is_object())
}

fn nullable(s: &Value) -> bool {
    flag(s, "nullable")
}

fn default_of(s: &Value) -> Option<&Value> {
    s.get("default")
}

fn format(s: &Value) -> &str {
    s.get("format").and_then(Value::as_str).unwrap_or("")
}

/// The schema's types as go-openapi sees them: `x-kubernetes-int-or-string` is
/// `["integer", "string"]`.
fn types(s: &Value) -> Vec<&str> {
    if flag(s, "x-kubernetes-int-or-string") {
        return vec!["integer", "string"];
    }
    s.get("type").and_then(Value::as_str).into_iter().collect()
}

/// The `type` of the schema node at a field path as kube's CEL validator writes it
/// (`spec.backends[0]`): what the API server prints as the bad value of a failed rule.
pub(super) fn type_at(root: &Value, path: &str) -> String {
    let mut node = Some(root);
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (name, indices) = match segment.find('[') {
            Some(i) => (&segment[..i], segment[i..].matches('[').count()),
            None => (segment, 0),
        };
        if !name.is_empty() {
            node = node.and_then(|s| property(s, name).or_else(|| additional(s)));
        }
        for _ in 0..indices {
            node = node.and_then(items);
        }
    }
    node.and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// `structuralpruning.PruneWithOptions(obj, schema, isResourceRoot=true, tracking)`: drops
/// every field the schema does not know (`apiVersion`, `kind` and `metadata` are left alone at
/// the root) and returns their paths, sorted, as strict field validation reports them.
pub(super) fn prune(object: &mut Value, schema: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    let mut path = String::new();
    prune_node(object, Some(schema), true, &mut path, &mut unknown);
    unknown.sort();
    unknown
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn prune_node(
    x: &mut Value,
    s: Option<&Value>,
    resource_root: bool,
    path: &mut String,
    unknown: &mut Vec<String>,
) {
    if let Some(s) = s
        && flag(s, "x-kubernetes-preserve-unknown-fields")
    {
        skip_prune(x, s, resource_root, path, unknown);
        return;
    }
    let parent = path.len();
    match x {
        Value::Object(map) => {
            let Some(s) = s else {
                for key in map.keys() {
                    push_key(path, key);
                    unknown.push(path.clone());
                    path.truncate(parent);
                }
                map.clear();
                return;
            };
            let embedded = resource_root || flag(s, "x-kubernetes-embedded-resource");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if embedded && META_FIELDS.contains(&key.as_str()) {
                    continue;
                }
                let child = property(s, &key).or_else(|| additional(s));
                match (child, map.get_mut(&key)) {
                    (Some(child), Some(v)) => {
                        push_key(path, &key);
                        prune_node(v, Some(child), false, path, unknown);
                        path.truncate(parent);
                    }
                    _ => {
                        if !META_FIELDS.contains(&key.as_str()) || !path.is_empty() {
                            push_key(path, &key);
                            unknown.push(path.clone());
                            path.truncate(parent);
                        }
                        map.remove(&key);
                    }
                }
            }
        }
        Value::Array(list) => {
            for (i, v) in list.iter_mut().enumerate() {
                path.push_str(&format!("[{i}]"));
                prune_node(v, s.and_then(items), false, path, unknown);
                path.truncate(parent);
            }
        }
        _ => {}
    }
}

/// Under `x-kubernetes-preserve-unknown-fields` unknown fields stay, known ones are pruned.
fn skip_prune(
    x: &mut Value,
    s: &Value,
    resource_root: bool,
    path: &mut String,
    unknown: &mut Vec<String>,
) {
    let parent = path.len();
    match x {
        Value::Object(map) => {
            let embedded = resource_root || flag(s, "x-kubernetes-embedded-resource");
            for (key, v) in map.iter_mut() {
                if embedded && META_FIELDS.contains(&key.as_str()) {
                    continue;
                }
                if let Some(child) = property(s, key).or_else(|| additional(s)) {
                    push_key(path, key);
                    prune_node(v, Some(child), false, path, unknown);
                    path.truncate(parent);
                }
            }
        }
        Value::Array(list) => {
            if let Some(item) = items(s) {
                for (i, v) in list.iter_mut().enumerate() {
                    path.push_str(&format!("[{i}]"));
                    skip_prune(v, item, false, path, unknown);
                    path.truncate(parent);
                }
            }
        }
        _ => {}
    }
}

/// `structuraldefaulting.PruneNonNullableNullsWithoutDefaults`: a `null` where the schema
/// allows none and has no default is dropped, as if the field were not there.
pub(super) fn prune_nulls(x: &mut Value, s: &Value) {
    match x {
        Value::Object(map) => {
            map.retain(|key, v| {
                let Some(child) = property(s, key).or_else(|| additional(s)) else {
                    return true;
                };
                if v.is_null() && !nullable(child) && default_of(child).is_none() {
                    return false;
                }
                prune_nulls(v, child);
                true
            });
        }
        Value::Array(list) => {
            if let Some(item) = items(s) {
                for v in list {
                    prune_nulls(v, item);
                }
            }
        }
        _ => {}
    }
}

fn non_nullable_null(v: &Value, s: &Value) -> bool {
    v.is_null() && !nullable(s)
}

/// `structuraldefaulting.Default`: every missing field (or non-nullable `null`) that has a
/// default gets it, outside in.
pub(super) fn default(x: &mut Value, s: &Value) {
    match x {
        Value::Object(map) => {
            if let Some(props) = properties(s) {
                for (key, child) in props {
                    if let Some(d) = default_of(child)
                        && map.get(key).is_none_or(|v| non_nullable_null(v, child))
                    {
                        map.insert(key.clone(), d.clone());
                    }
                }
            }
            for (key, v) in map.iter_mut() {
                if let Some(child) = property(s, key) {
                    default(v, child);
                } else if let Some(child) = additional(s) {
                    if let Some(d) = default_of(child)
                        && non_nullable_null(v, child)
                    {
                        *v = d.clone();
                    }
                    default(v, child);
                }
            }
        }
        Value::Array(list) => {
            if let Some(item) = items(s) {
                for v in list {
                    if let Some(d) = default_of(item)
                        && non_nullable_null(v, item)
                    {
                        *v = d.clone();
                    }
                    default(v, item);
                }
            }
        }
        _ => {}
    }
}

/// kube-openapi's `SchemaValidator.Validate(object)` with the errors as the API server lists
/// them. go-openapi walks Go maps in random order; here an object's additional properties and
/// then its properties are checked in key order, then its required fields in schema order.
pub(super) fn validate(object: &Value, schema: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check(object, schema, "", &mut errors);
    errors
}

/// The field of an error: go-openapi's path without a leading `.`.
fn field(path: &str) -> &str {
    path.strip_prefix('.').unwrap_or(path)
}

/// `errors.InvalidType` as a `TypeInvalid` field error.
fn invalid_type(path: &str, type_name: &str, value: &str) -> FieldError {
    FieldError::type_invalid(
        field(path),
        Value::from(value),
        format!(
            "{path} in body must be of type {type_name}: {}",
            go_quote(value)
        ),
    )
}

/// go-openapi's type and format of a decoded JSON value (`schemaInfoForType`).
fn schema_info(data: &Value) -> (&'static str, &'static str) {
    match data {
        Value::Null => ("null", ""),
        Value::Bool(_) => ("boolean", ""),
        Value::Number(n) if n.is_i64() => ("integer", "int64"),
        Value::Number(_) => ("number", "float64"),
        Value::String(_) => ("string", ""),
        Value::Array(_) => ("array", ""),
        Value::Object(_) => ("object", ""),
    }
}

/// `swag.IsFloat64AJSONInteger`.
fn is_json_integer(f: f64) -> bool {
    const MAX: f64 = 9_007_199_254_740_991.0; // 1<<53 - 1
    f.is_finite() && (-MAX..=MAX).contains(&f) && f.fract() == 0.0
}

/// The `typeValidator`.
fn check_type(data: &Value, s: &Value, path: &str) -> Option<FieldError> {
    let types = types(s);
    let s_format = format(s);
    if data.is_null() {
        if !types.is_empty() && !types.contains(&"null") && !nullable(s) {
            return Some(invalid_type(path, &types.join(","), "null"));
        }
        return None;
    }
    if types.is_empty() && s_format.is_empty() {
        return None;
    }
    let (sch_type, data_format) = schema_info(data);
    let contains = |t: &str| types.contains(&t);
    let is_float_int =
        sch_type == "number" && data.as_f64().is_some_and(is_json_integer) && contains("integer");
    let is_int_float = sch_type == "integer" && contains("number");
    let string_or_slice = data.is_string() || data.is_array();
    let has_format = !s_format.is_empty();
    let type_fits = contains(sch_type) || is_float_int || is_int_float;
    if has_format && !string_or_slice && !(type_fits || data_format == s_format) {
        return Some(invalid_type(path, s_format, data_format));
    }
    let numeric = contains("number") || contains("integer");
    if has_format && string_or_slice && !numeric {
        return None;
    }
    if !type_fits {
        return Some(invalid_type(path, &types.join(","), sch_type));
    }
    None
}

fn int_or_float(n: &serde_json::Number) -> Result<i64, f64> {
    n.as_i64().ok_or_else(|| n.as_f64().unwrap_or(f64::NAN))
}

/// The `numberValidator`: multipleOf, minimum, maximum.
fn check_number(n: &serde_json::Number, s: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let data = Value::Number(n.clone());
    let bound = |name: &str| s.get(name).and_then(Value::as_f64);
    let (min_excl, max_excl) = (flag(s, "exclusiveMinimum"), flag(s, "exclusiveMaximum"));
    if let Some(factor) = bound("multipleOf") {
        let ok = match int_or_float(n) {
            Ok(i) => {
                #[allow(clippy::cast_possible_truncation)]
                let f = factor as i64;
                f == 0 || i % f == 0
            }
            Err(f) => is_json_integer(if factor < 1.0 {
                1.0 / factor * f
            } else {
                f / factor
            }),
        };
        if !ok {
            errors.push(FieldError::invalid(
                field(path),
                data.clone(),
                format!(
                    "{path} in body should be a multiple of {}",
                    go_float(factor)
                ),
            ));
        }
    }
    // The bound as the message prints it: `int64(bound)` for an integer, `%v` for a float.
    #[allow(clippy::cast_possible_truncation)]
    let (below, above, text): (bool, bool, fn(f64) -> String) = match int_or_float(n) {
        Ok(i) => (
            bound("minimum").is_some_and(|m| {
                let m = m as i64;
                if min_excl { i <= m } else { i < m }
            }),
            bound("maximum").is_some_and(|m| {
                let m = m as i64;
                if max_excl { i >= m } else { i > m }
            }),
            |b| (b as i64).to_string(),
        ),
        Err(f) => (
            bound("minimum").is_some_and(|m| if min_excl { f <= m } else { f < m }),
            bound("maximum").is_some_and(|m| if max_excl { f >= m } else { f > m }),
            go_float,
        ),
    };
    if below && let Some(m) = bound("minimum") {
        let relation = if min_excl {
            "greater than"
        } else {
            "greater than or equal to"
        };
        errors.push(FieldError::invalid(
            field(path),
            data.clone(),
            format!("{path} in body should be {relation} {}", text(m)),
        ));
    }
    if above && let Some(m) = bound("maximum") {
        let relation = if max_excl {
            "less than"
        } else {
            "less than or equal to"
        };
        errors.push(FieldError::invalid(
            field(path),
            data,
            format!("{path} in body should be {relation} {}", text(m)),
        ));
    }
}

/// The `stringValidator`: maxLength, minLength, pattern; the first that fails.
fn check_string(data: &str, s: &Value, path: &str) -> Option<FieldError> {
    let chars = i64::try_from(data.chars().count()).unwrap_or(i64::MAX);
    if let Some(max) = s.get("maxLength").and_then(Value::as_i64)
        && chars > max
    {
        return Some(FieldError::too_long(field(path), max));
    }
    if let Some(min) = s.get("minLength").and_then(Value::as_i64)
        && chars < min
    {
        return Some(FieldError::invalid(
            field(path),
            Value::from(data),
            format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(pattern) = s.get("pattern").and_then(Value::as_str) {
        let failed = match regex::Regex::new(pattern) {
            Ok(re) => (!re.is_match(data)).then(|| pattern.to_owned()),
            Err(e) => Some(format!("{pattern}, but pattern is invalid: {e}")),
        };
        if let Some(shown) = failed {
            return Some(FieldError::invalid(
                field(path),
                Value::from(data),
                format!("{path} in body should match '{shown}'"),
            ));
        }
    }
    None
}

/// The slice validator: items, then minItems, maxItems, uniqueItems.
fn check_array(list: &[Value], s: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(item) = items(s) {
        for (i, v) in list.iter().enumerate() {
            check(v, item, &format!("{path}[{i}]"), errors);
        }
    }
    let size = i64::try_from(list.len()).unwrap_or(i64::MAX);
    if let Some(min) = s.get("minItems").and_then(Value::as_i64)
        && size < min
    {
        errors.push(FieldError::invalid(
            field(path),
            Value::from(size),
            format!("{path} in body should have at least {min} items"),
        ));
    }
    if let Some(max) = s.get("maxItems").and_then(Value::as_i64)
        && size > max
    {
        errors.push(FieldError::too_many(field(path), size, max));
    }
    if flag(s, "uniqueItems") && list.iter().enumerate().any(|(i, v)| list[..i].contains(v)) {
        errors.push(FieldError::invalid(
            field(path),
            Value::from(""),
            format!("{path} in body shouldn't contain duplicates"),
        ));
    }
}

/// go's `reflect.DeepEqual` after conversion, as the enum check compares.
fn enum_matches(data: &Value, candidate: &Value) -> bool {
    match (data, candidate) {
        (Value::Null, _) => false,
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => data == candidate,
    }
}

/// The common validator: `enum`.
fn check_enum(data: &Value, s: &Value, path: &str) -> Option<FieldError> {
    let values = s.get("enum").and_then(Value::as_array)?;
    if values.is_empty() || values.iter().any(|v| enum_matches(data, v)) {
        return None;
    }
    let supported: Vec<String> = values
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    Some(FieldError::not_supported(
        field(path),
        data.clone(),
        &supported,
    ))
}

/// The object validator: min/maxProperties, additional properties, properties, required.
fn check_object(map: &Map<String, Value>, s: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let count = i64::try_from(map.len()).unwrap_or(i64::MAX);
    if let Some(min) = s.get("minProperties").and_then(Value::as_i64)
        && count < min
    {
        errors.push(FieldError::invalid(
            field(path),
            Value::from(min),
            format!("{path} in body should have at least {min} properties"),
        ));
        return;
    }
    if let Some(max) = s.get("maxProperties").and_then(Value::as_i64)
        && count > max
    {
        errors.push(FieldError::too_many(field(path), count, max));
        return;
    }
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    if let Some(extra) = additional(s) {
        for key in &keys {
            if property(s, key).is_none() {
                check(&map[key.as_str()], extra, &format!("{path}.{key}"), errors);
            }
        }
    }
    for key in &keys {
        if let Some(child) = property(s, key) {
            let child_path = if path.is_empty() {
                (*key).clone()
            } else {
                format!("{path}.{key}")
            };
            check(&map[key.as_str()], child, &child_path, errors);
        }
    }
    for name in s
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(name) {
            errors.push(FieldError::required(field(&format!("{path}.{name}")), ""));
        }
    }
}

/// One value against one schema node: the type check, then every validator that applies to
/// the value's kind (go-openapi runs them all, even after a type error).
fn check(data: &Value, s: &Value, path: &str, errors: &mut Vec<FieldError>) {
    errors.extend(check_type(data, s, path));
    match data {
        Value::String(text) => errors.extend(check_string(text, s, path)),
        Value::Number(n) => check_number(n, s, path, errors),
        Value::Array(list) => check_array(list, s, path, errors),
        _ => {}
    }
    errors.extend(check_enum(data, s, path));
    if let Value::Object(map) = data {
        check_object(map, s, path, errors);
    }
}
