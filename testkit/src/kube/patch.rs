//! The patch forms the API server takes: JSON merge patch (RFC 7386), server-side apply
//! (approximated as a deep merge), and JSON patch (RFC 6902: add, remove, replace, test).

use serde_json::{Value, json};

/// JSON merge patch (RFC 7386).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Server-side apply, approximated: objects merge key by key, everything else is replaced.
pub fn apply_merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                apply_merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *target = patch.clone(),
    }
}

fn pointer_parts(path: &str) -> Vec<String> {
    path.split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// JSON patch (RFC 6902): add, remove, replace and test, which is what kube's finalizer
/// helper and the gateway's annotation updates send. `Err` is the API server's 422.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().into_iter().flatten() {
        let path = op["path"].as_str().unwrap_or("");
        let parts = pointer_parts(path);
        let (last, parents) = parts.split_last().ok_or("empty path")?;
        let mut parent = &mut *target;
        for p in parents {
            parent = match parent {
                Value::Object(m) => m.entry(p.clone()).or_insert(json!({})),
                Value::Array(a) => {
                    let i: usize = p.parse().map_err(|_| format!("bad index {p}"))?;
                    a.get_mut(i).ok_or(format!("no element {p}"))?
                }
                _ => return Err(format!("{path}: not a container")),
            };
        }
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        match (op["op"].as_str().unwrap_or(""), parent) {
            ("test", p) => {
                let actual = match p {
                    Value::Object(m) => m.get(last).cloned(),
                    Value::Array(a) => last.parse::<usize>().ok().and_then(|i| a.get(i).cloned()),
                    _ => None,
                };
                if actual.as_ref() != Some(&value) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            ("replace", Value::Object(m)) if !m.contains_key(last) => {
                return Err(format!("{path}: replace of a missing key"));
            }
            ("add" | "replace", Value::Object(m)) => {
                m.insert(last.clone(), value);
            }
            ("add", Value::Array(a)) if last == "-" => a.push(value),
            ("add", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| "bad index")?;
                if i > a.len() {
                    return Err(format!("{path}: out of range"));
                }
                a.insert(i, value);
            }
            ("replace", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| "bad index")?;
                *a.get_mut(i).ok_or("out of range")? = value;
            }
            ("remove", Value::Object(m)) => {
                m.remove(last).ok_or(format!("{path}: nothing to remove"))?;
            }
            ("remove", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| "bad index")?;
                if i >= a.len() {
                    return Err(format!("{path}: out of range"));
                }
                a.remove(i);
            }
            (other, _) => return Err(format!("unsupported op {other} at {path}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_patches_test_remove_and_refuse_as_the_api_server_does() {
        let mut o = json!({"metadata": {"finalizers": ["x", "y"], "annotations": {"a": "1"}}});
        json_patch(
            &mut o,
            &json!([{"op": "test", "path": "/metadata/finalizers/1", "value": "y"},
                    {"op": "remove", "path": "/metadata/finalizers/1"}]),
        )
        .unwrap();
        assert_eq!(o["metadata"]["finalizers"], json!(["x"]));
        let failed = json_patch(
            &mut o,
            &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "z"}]),
        );
        assert_eq!(
            failed.unwrap_err(),
            "testing value /metadata/finalizers/0 failed"
        );
        assert!(
            json_patch(
                &mut o,
                &json!([{"op": "replace", "path": "/metadata/annotations/b", "value": "2"}])
            )
            .is_err(),
            "replace needs the key"
        );
        let mut t = json!({"a": {"b": 1, "c": 2}});
        merge_patch(&mut t, &json!({"a": {"b": null, "d": 3}}));
        assert_eq!(t, json!({"a": {"c": 2, "d": 3}}));
    }
}
