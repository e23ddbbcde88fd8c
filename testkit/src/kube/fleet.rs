//! Fleets at scale for the fake API server: settled pools (the pool, its ready pods on
//! the current template, its token Secret, optionally a loaded deployment), one per
//! namespace, as the operator leaves them; for the operator's benchmark and its binary
//! test.

use serde_json::{Value, json};
use webaccel_crds::pods::token_secret_name;
use webaccel_crds::template::template_hash;
use webaccel_crds::v1alpha1::BrowserPool;

use super::{ApiServer, Options};

/// What a fleet is made of.
#[derive(Debug, Clone, Copy)]
pub struct FleetShape {
    pub pools: usize,
    pub browsers: usize,
    pub autoscale: bool,
    /// One ModelDeployment per pool, loaded on every browser.
    pub models: bool,
}

pub fn fleet_pool(ns: &str, replicas: usize, autoscale: bool) -> BrowserPool {
    let mut spec = json!({"image": "reg/browser:1", "replicas": replicas});
    if autoscale {
        spec["autoscaling"] = json!({"enabled": true, "minReplicas": replicas.max(1),
            "maxReplicas": 50, "targetInFlightPerBrowser": 4,
            "scaleDownStabilizationSeconds": 300});
    }
    serde_json::from_value(
        json!({"apiVersion": "webaccel.dev/v1alpha1", "kind": "BrowserPool",
        "metadata": {"name": "web", "namespace": ns, "uid": format!("uid-{ns}"), "generation": 1},
        "spec": spec}),
    )
    .unwrap_or_else(|e| panic!("bench pool: {e}"))
}

/// `n` ready, current browser pods of pool `web` in `ns`.
pub fn fleet_pods(ns: &str, n: usize, hash: &str, model: bool) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut labels = json!({"app.kubernetes.io/managed-by": "webaccel-operator",
                "webaccel.dev/pool": "web", "webaccel.dev/template-hash": hash});
            if model {
                labels["webaccel.dev/model.minilm"] = json!("loaded");
            }
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("web-{i:05}"), "namespace": ns, "uid": format!("{ns}-{i}"),
                "creationTimestamp": "2026-11-26T09:00:00Z",
                "ownerReferences": [{"apiVersion": "webaccel.dev/v1alpha1", "kind": "BrowserPool",
                    "name": "web", "uid": format!("uid-{ns}"), "controller": true,
                    "blockOwnerDeletion": true}],
                "labels": labels},
            "spec": {"containers": [{"name": "agent", "image": "reg/browser:1"}]},
            "status": {"phase": "Running", "podIP": format!("10.0.{}.{}", i / 250, i % 250),
                "conditions": [{"type": "Ready", "status": "True",
                                "lastTransitionTime": "2026-11-26T09:00:00Z"}],
                "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": true,
                                       "restartCount": 0}]}})
        })
        .collect()
}

/// Everything a settled pool in `ns` has: the pool, its pods, its token Secret, and with
/// `models` a ModelDeployment (its finalizer already added).
pub fn pool_objects(ns: &str, shape: FleetShape) -> Vec<Value> {
    let p = fleet_pool(ns, shape.browsers, shape.autoscale);
    let hash = template_hash(&p.spec, &token_secret_name(&p));
    let owner = json!([{"apiVersion": "webaccel.dev/v1alpha1", "kind": "BrowserPool",
        "name": "web", "uid": format!("uid-{ns}"), "controller": true, "blockOwnerDeletion": true}]);
    let labels =
        json!({"app.kubernetes.io/managed-by": "webaccel-operator", "webaccel.dev/pool": "web"});
    let mut out = vec![serde_json::to_value(&p).unwrap_or_default()];
    out.extend(fleet_pods(ns, shape.browsers, &hash, shape.models));
    out.push(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "web-agent-token", "namespace": ns, "labels": labels,
                     "ownerReferences": owner},
        "data": {"token": "c2VjcmV0"}}),
    );
    if shape.models {
        out.push(json!({"apiVersion": "webaccel.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "minilm", "namespace": ns, "uid": format!("m-{ns}"), "generation": 1,
                         "finalizers": ["webaccel.dev/unload-model"]},
            "spec": {"poolRef": {"name": "web"}, "model": {"uri": "https://h/m.onnx", "task": "text-embedding"},
                     "backends": ["wasm"], "replicas": shape.browsers.max(1)}}));
    }
    out
}

/// A fleet: one pool per namespace `ns<i>`.
pub fn fleet(shape: FleetShape, options: Options) -> (Vec<BrowserPool>, ApiServer) {
    let pools: Vec<BrowserPool> = (0..shape.pools)
        .map(|i| fleet_pool(&format!("ns{i}"), shape.browsers, shape.autoscale))
        .collect();
    let objects = (0..shape.pools)
        .flat_map(|i| pool_objects(&format!("ns{i}"), shape))
        .collect();
    (pools, ApiServer::new(objects, options))
}
