//! Objects as the operator, a kubelet or a user writes them, for scenarios on the fake
//! API server: pools, deployments, token Secrets and browser pods in the states a real
//! kubelet reports (Running long before Ready, draining, deleting).

use serde_json::{Value, json};

pub const MANAGED: &str = "app.kubernetes.io/managed-by";

pub fn pool(ns: &str, name: &str, token_secret: Option<&str>) -> Value {
    let mut spec = json!({"image": "reg/browser:1", "replicas": 1});
    if let Some(s) = token_secret {
        spec["tokenSecretName"] = json!(s);
    }
    json!({"apiVersion": "webaccel.dev/v1alpha1", "kind": "BrowserPool",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "generation": 1},
           "spec": spec})
}

pub fn model(ns: &str, name: &str, pool: &str) -> Value {
    json!({"apiVersion": "webaccel.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-m-{name}"), "generation": 1},
           "spec": {"poolRef": {"name": pool},
                    "model": {"uri": format!("https://models.example/{name}.onnx"), "task": "text-embedding"}}})
}

/// The token Secret the operator creates for `pool`: labelled, key `token`.
pub fn operator_secret(ns: &str, pool: &str, token: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": format!("{pool}-agent-token"), "namespace": ns,
                        "labels": {MANAGED: "webaccel-operator", "webaccel.dev/pool": pool}},
           "data": {"token": b64(token)}})
}

/// A Secret a user made (no labels).
pub fn user_secret(ns: &str, name: &str, token: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": name, "namespace": ns},
           "data": {"token": b64(token)}})
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A browser pod of `pool` as a kubelet reports it: `phase`, the Ready condition, an IP.
pub fn pod(ns: &str, pool: &str, name: &str, phase: &str, ready: bool, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                        "creationTimestamp": "2026-11-26T09:00:00Z",
                        "labels": {MANAGED: "webaccel-operator", "webaccel.dev/pool": pool,
                                   "webaccel.dev/template-hash": "abc"}},
           "spec": {"containers": [{"name": "agent", "image": "reg/browser:1"}]},
           "status": {"phase": phase, "podIP": ip,
                      "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
}

/// `pod` with a model label set to `value` (`loaded`), or removed (`None`).
pub fn with_model(mut pod: Value, model: &str, value: Option<&str>) -> Value {
    let key = format!("webaccel.dev/model.{model}");
    let labels = pod["metadata"]["labels"].as_object_mut().unwrap();
    match value {
        Some(v) => {
            labels.insert(key, json!(v));
        }
        None => {
            labels.remove(&key);
        }
    }
    pod
}

pub fn ready(mut pod: Value, ready: bool) -> Value {
    pod["status"]["conditions"][0]["status"] = json!(if ready { "True" } else { "False" });
    pod
}

pub fn annotate(mut pod: Value, key: &str, value: &str) -> Value {
    let meta = pod["metadata"].as_object_mut().unwrap();
    meta.entry("annotations").or_insert_with(|| json!({}))[key] = json!(value);
    pod
}
