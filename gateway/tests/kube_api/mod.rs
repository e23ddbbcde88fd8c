//! A mocked Kubernetes API server for the gateway's discovery, in kube's tower-test pattern
//! (`tower_test::mock::pair` behind a `kube::Client`), grown into a tiny object store so that
//! watches behave as a real API server's do:
//!
//! - LIST answers the stored objects that match the request's label and field selectors,
//!   with the store's resourceVersion; WATCH (`watch=true`) streams, from the given
//!   resourceVersion on, `ADDED`/`MODIFIED`/`DELETED` events for the objects that match (an
//!   object that stops matching a selector is `DELETED` for that watch, as the API server
//!   does);
//! - PATCH of a BrowserPool applies a JSON merge patch or a JSON Patch (with `test`) to its
//!   annotations, answers 404 for a missing pool and 422 for a failed test, and streams the
//!   change to the watches;
//! - every request is checked against the chart's RBAC for the gateway's ServiceAccount
//!   (`rbac`), and refused with 403 (and recorded) if the chart does not allow it;
//! - every request is logged, so a test can assert which calls were made, and how many.
//!
//! Tests change the cluster with [`ApiServer::apply`] and [`ApiServer::delete`], the way a
//! kubelet or the operator would.
#![allow(dead_code)]

pub mod rbac;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt as _;
use futures::channel::mpsc;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

type RespBody = UnsyncBoxBody<Bytes, Infallible>;

/// One request the gateway made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `LIST`, `WATCH`, `GET`, `PATCH`, ...
    pub verb: String,
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: Value,
    /// When it came (tokio's clock, which the tests pause).
    pub at: tokio::time::Instant,
}

impl Call {
    /// `VERB path`, e.g. `WATCH /api/v1/namespaces/ml/pods`.
    pub fn line(&self) -> String {
        format!("{} {}", self.verb, self.path)
    }
}

/// `(collection path without namespace, namespace, name)`, e.g. `("api/v1/pods", "ml", "p")`.
type Key = (String, String, String);

struct Watch {
    collection: String,
    namespace: Option<String>,
    labels: Option<String>,
    fields: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// One change, kept so that a watch opened at an older resourceVersion still sees it.
struct Change {
    rv: u64,
    collection: String,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    watches: Vec<Watch>,
    calls: Vec<Call>,
    refused: Vec<String>,
}

/// The mocked API server.
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
    /// The namespace of the gateway's Role, or `None` for its ClusterRole.
    role_namespace: Option<String>,
}

/// The collection (`api/v1/pods`, `apis/webaccel.dev/v1alpha1/browserpools`) of an object.
fn collection_of(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap();
    let plural = match obj["kind"].as_str().unwrap() {
        "Pod" => "pods",
        "Secret" => "secrets",
        "BrowserPool" => "browserpools",
        "ModelDeployment" => "modeldeployments",
        other => panic!("the mock has no collection for kind {other}"),
    };
    if api_version.contains('/') {
        format!("apis/{api_version}/{plural}")
    } else {
        format!("api/{api_version}/{plural}")
    }
}

fn key_of(obj: &Value) -> Key {
    (
        collection_of(obj),
        obj["metadata"]["namespace"].as_str().unwrap().to_owned(),
        obj["metadata"]["name"].as_str().unwrap().to_owned(),
    )
}

/// `(collection, namespace, name)` of a request path.
fn parse_path(path: &str) -> (String, Option<String>, Option<String>) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let prefix = if parts[0] == "api" { 2 } else { 3 };
    let base = parts[..prefix].join("/");
    let rest = &parts[prefix..];
    let (ns, rest) = if rest.first() == Some(&"namespaces") {
        (Some(rest[1].to_owned()), &rest[2..])
    } else {
        (None, rest)
    };
    (
        format!("{base}/{}", rest[0]),
        ns,
        rest.get(1).map(|s| (*s).to_owned()),
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Whether `obj` matches a label selector (`k=v`, `k!=v`, `k`, `!k`, comma-separated).
pub fn labels_match(obj: &Value, selector: Option<&str>) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k].as_str() != Some(v)
            } else if let Some((k, v)) = term.split_once('=') {
                labels[k.trim_end_matches('=')].as_str() == Some(v)
            } else if let Some(k) = term.strip_prefix('!') {
                labels.get(k).is_none()
            } else {
                labels.get(term).is_some()
            }
        })
}

/// Whether `obj` matches a field selector (`metadata.name=x`, `metadata.namespace=x`).
pub fn fields_match(obj: &Value, selector: Option<&str>) -> bool {
    selector
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| {
            let (k, v) = term.split_once('=').unwrap();
            let field = match k.trim_end_matches('=') {
                "metadata.name" => &obj["metadata"]["name"],
                "metadata.namespace" => &obj["metadata"]["namespace"],
                other => panic!("the mock does not support the field selector {other}"),
            };
            field.as_str() == Some(v)
        })
}

impl Watch {
    fn sees(&self, collection: &str, obj: &Value) -> bool {
        self.collection == collection
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && labels_match(obj, self.labels.as_deref())
            && fields_match(obj, self.fields.as_deref())
    }

    /// The event this watch gets for a change, if any; whether it is still open.
    fn send(&self, change: &Change) -> bool {
        let old = change
            .old
            .as_ref()
            .filter(|o| self.sees(&change.collection, o));
        let new = change
            .new
            .as_ref()
            .filter(|o| self.sees(&change.collection, o));
        let event = match (old, new, &change.new) {
            (None, Some(n), _) => json!({"type": "ADDED", "object": n}),
            (Some(_), Some(n), _) => json!({"type": "MODIFIED", "object": n}),
            // Deleted, or no longer matching: gone from this watch's view.
            (Some(o), None, None) => json!({"type": "DELETED", "object": o}),
            (Some(_), None, Some(n)) => json!({"type": "DELETED", "object": n}),
            (None, None, _) => return true,
        };
        let mut line = serde_json::to_vec(&event).unwrap();
        line.push(b'\n');
        self.tx.unbounded_send(Bytes::from(line)).is_ok()
    }
}

fn full(status: u16, body: &Value) -> Response<RespBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed_unsync())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<RespBody> {
    full(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": reason, "code": code, "message": message}),
    )
}

fn pointer_key(path: &str) -> Option<String> {
    path.strip_prefix("/metadata/annotations/")
        .map(|k| k.replace("~1", "/").replace("~0", "~"))
}

impl State {
    fn record(&mut self, collection: String, old: Option<Value>, new: Option<Value>) {
        let change = Change {
            rv: self.rv,
            collection,
            old,
            new,
        };
        self.watches.retain(|w| w.send(&change));
        self.history.push(change);
    }

    fn put(&mut self, mut obj: Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = key_of(&obj);
        let old = self.objects.insert(key.clone(), obj.clone());
        self.record(key.0, old, Some(obj));
    }

    fn remove(&mut self, key: &Key) {
        if let Some(mut old) = self.objects.remove(key) {
            self.rv += 1;
            old["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            self.record(key.0.clone(), Some(old), None);
        }
    }

    fn patch(&mut self, key: &Key, content_type: &str, body: &Value) -> Response<RespBody> {
        let Some(current) = self.objects.get(key) else {
            return status(404, "NotFound", "not found");
        };
        let mut obj = current.clone();
        let annotations = obj["metadata"]
            .as_object_mut()
            .unwrap()
            .entry("annotations")
            .or_insert_with(|| json!({}));
        match content_type {
            "application/merge-patch+json" => {
                let patch = body.as_object().unwrap();
                assert_eq!(
                    patch.keys().collect::<Vec<_>>(),
                    vec!["metadata"],
                    "the gateway patches nothing but metadata: {body}"
                );
                let meta = body["metadata"].as_object().unwrap();
                assert_eq!(
                    meta.keys().collect::<Vec<_>>(),
                    vec!["annotations"],
                    "the gateway patches nothing but annotations: {body}"
                );
                for (k, v) in body["metadata"]["annotations"].as_object().unwrap() {
                    if v.is_null() {
                        annotations.as_object_mut().unwrap().remove(k);
                    } else {
                        annotations[k] = v.clone();
                    }
                }
            }
            "application/json-patch+json" => {
                for op in body.as_array().unwrap() {
                    let key = pointer_key(op["path"].as_str().unwrap())
                        .expect("the gateway patches nothing but annotations");
                    match op["op"].as_str().unwrap() {
                        "test" => {
                            if annotations.get(&key) != Some(&op["value"]) {
                                return status(
                                    422,
                                    "Invalid",
                                    &format!("testing value /metadata/annotations/{key} failed"),
                                );
                            }
                        }
                        "replace" => {
                            if annotations.get(&key).is_none() {
                                return status(422, "Invalid", "replace of a missing key");
                            }
                            annotations[&key] = op["value"].clone();
                        }
                        "add" => annotations[&key] = op["value"].clone(),
                        "remove" => {
                            annotations.as_object_mut().unwrap().remove(&key);
                        }
                        other => panic!("unexpected JSON Patch op {other}"),
                    }
                }
            }
            other => panic!("unexpected patch content type {other}"),
        }
        self.put(obj);
        full(200, &self.objects[key].clone())
    }

    fn list(&self, collection: &str, ns: Option<&str>, q: &BTreeMap<String, String>) -> Value {
        let probe = Watch {
            collection: collection.to_owned(),
            namespace: ns.map(str::to_owned),
            labels: q.get("labelSelector").cloned(),
            fields: q.get("fieldSelector").cloned(),
            tx: mpsc::unbounded().0,
        };
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((c, _, _), o)| c == collection && probe.sees(collection, o))
            .map(|(_, o)| o.clone())
            .collect();
        json!({"apiVersion": "v1", "kind": "List",
               "metadata": {"resourceVersion": self.rv.to_string()}, "items": items})
    }

    fn serve(&mut self, call: &Call, role_namespace: Option<&str>) -> Response<RespBody> {
        let raw_query = call
            .query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let method = if call.verb == "LIST" || call.verb == "WATCH" {
            "GET"
        } else {
            call.verb.as_str()
        };
        if let Some(why) = rbac::refusal(method, &call.path, &raw_query, role_namespace) {
            self.refused.push(why.clone());
            return status(403, "Forbidden", &why);
        }
        let (collection, ns, name) = parse_path(&call.path);
        match (call.verb.as_str(), name) {
            ("LIST", None) => full(200, &self.list(&collection, ns.as_deref(), &call.query)),
            ("WATCH", None) => {
                let (tx, rx) = mpsc::unbounded();
                let watch = Watch {
                    collection,
                    namespace: ns,
                    labels: call.query.get("labelSelector").cloned(),
                    fields: call.query.get("fieldSelector").cloned(),
                    tx,
                };
                let from: u64 = call
                    .query
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                for change in self.history.iter().filter(|c| c.rv > from) {
                    watch.send(change);
                }
                self.watches.push(watch);
                let body = StreamBody::new(rx.map(|b| Ok::<_, Infallible>(Frame::data(b))));
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(body.boxed_unsync())
                    .unwrap()
            }
            ("PATCH", Some(name)) => {
                let key = (collection, ns.unwrap_or_default(), name);
                self.patch(&key, &call.content_type, &call.body)
            }
            ("GET", Some(name)) => {
                let key = (collection, ns.unwrap_or_default(), name);
                match self.objects.get(&key) {
                    Some(o) => full(200, o),
                    None => status(404, "NotFound", "not found"),
                }
            }
            _ => status(405, "MethodNotAllowed", "not in the mock"),
        }
    }
}

impl ApiServer {
    /// A mocked API server holding `objects`, and a client of it. `role_namespace`: the
    /// gateway runs with a Role in that namespace (`watchNamespace`), or a ClusterRole.
    pub fn start(objects: Vec<Value>, role_namespace: Option<&str>) -> (Client, Self) {
        let mut state = State::default();
        for o in objects {
            state.put(o);
        }
        // The initial objects are there before anyone watches: no history to replay.
        state.history.clear();
        let server = Self {
            state: Arc::new(Mutex::new(state)),
            role_namespace: role_namespace.map(str::to_owned),
        };
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
        let serving = server.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let query = parse_query(parts.uri.query().unwrap_or(""));
                let verb = match parts.method.as_str() {
                    "GET" if query.get("watch").map(String::as_str) == Some("true") => "WATCH",
                    "GET" if parse_path(parts.uri.path()).2.is_none() => "LIST",
                    other => other,
                };
                let call = Call {
                    verb: verb.to_owned(),
                    path: parts.uri.path().to_owned(),
                    query,
                    content_type: parts
                        .headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    at: tokio::time::Instant::now(),
                };
                let response = {
                    let mut state = serving.state.lock().unwrap();
                    let response = state.serve(&call, serving.role_namespace.as_deref());
                    state.calls.push(call);
                    response
                };
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), server)
    }

    /// Creates or replaces an object (resourceVersion set by the server), as the operator
    /// or a kubelet would; the watches that see it get the event.
    pub fn apply(&self, obj: Value) {
        self.state.lock().unwrap().put(obj);
    }

    /// Deletes an object, if it exists.
    pub fn delete(&self, obj: &Value) {
        self.state.lock().unwrap().remove(&key_of(obj));
    }

    /// The stored object like `obj` (same kind, namespace and name).
    pub fn get(&self, obj: &Value) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&key_of(obj))
            .cloned()
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// `VERB path` of every request so far.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(Call::line).collect()
    }

    /// The PATCH requests so far.
    pub fn patches(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.verb == "PATCH")
            .collect()
    }

    /// `VERB path?selectors` of the watches still open (their client has not gone away).
    pub fn open_watches(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .watches
            .iter()
            .filter(|w| !w.tx.is_closed())
            .map(|w| {
                format!(
                    "{}{}{}",
                    w.collection,
                    w.labels
                        .as_deref()
                        .map(|l| format!(" labels={l}"))
                        .unwrap_or_default(),
                    w.fields
                        .as_deref()
                        .map(|f| format!(" fields={f}"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    /// (group, resource, verb) of every request so far, as the API server authorizes them.
    pub fn used_permissions(&self) -> std::collections::BTreeSet<(String, String, String)> {
        self.calls()
            .iter()
            .map(|c| match c.verb.as_str() {
                "WATCH" => rbac::attributes("GET", &c.path, "watch=true"),
                "LIST" => rbac::attributes("GET", &c.path, ""),
                other => rbac::attributes(other, &c.path, ""),
            })
            .collect()
    }

    /// Fails the test if any request was refused by the chart's RBAC.
    pub fn assert_rbac_allowed_all(&self) {
        let refused = self.state.lock().unwrap().refused.clone();
        assert!(refused.is_empty(), "refused by RBAC: {refused:#?}");
    }
}

// Objects, as the operator and a kubelet write them.

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
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
