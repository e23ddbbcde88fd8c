//! The benchmark's stand-ins: a small API server in memory and agents that answer from
//! memory.
//!
//! The API server keeps objects by collection, namespace and name, and serves what the
//! operator uses the way kube-apiserver does: paged lists with label and field selectors,
//! watches from a resourceVersion (newline-delimited events, ended after `timeoutSeconds`
//! like the real one, 410 Gone for a version it no longer remembers), named GETs, creates,
//! server-side apply (as a deep merge), merge and JSON patches, replaces with
//! resourceVersion preconditions (409 on a stale one, which leader election relies on),
//! the status subresource, and deletes (finalizers hold an object back). A write that
//! changes nothing changes no resourceVersion and sends no watch event, as on a real API
//! server. Pods it creates become Running and Ready at once (a stand-in kubelet).
//!
//! It counts every request by verb and resource (`GET /fake/requests`), so the operator's
//! API cost can be measured, and status writes (`GET /fake/status-patches`).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use webaccel_agent_client::{AgentApi, AgentResult, Endpoint, ModelOnAgent};
use webaccel_api::agent::{AgentStats, Capabilities, ModelSpec};
use webaccel_crds::v1alpha1::BrowserPool;

/// Changes kept for watches that start from an older resourceVersion.
const LOG_LIMIT: usize = 200_000;

/// One object's place: collection (`api/v1/pods`, `apis/webaccel.dev/v1alpha1/browserpools`),
/// namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    coll: String,
    ns: String,
    name: String,
}

#[derive(Debug)]
struct Change {
    rv: u64,
    coll: String,
    ns: String,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Arc<Change>>,
    /// Watches from a version older than this get 410 Gone.
    log_start: u64,
}

/// What one request asked for, from its path.
#[derive(Debug, Clone)]
struct Route {
    coll: String,
    /// The last segment of the collection (`pods`), for counting and RBAC-style verbs.
    resource: String,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match segs.first() {
        Some(&"api") if segs.len() >= 3 => (format!("api/{}", segs[1]), &segs[2..]),
        Some(&"apis") if segs.len() >= 4 => (format!("apis/{}/{}", segs[1], segs[2]), &segs[3..]),
        _ => return None,
    };
    let (ns, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_owned()), &rest[2..])
    } else {
        (None, rest)
    };
    let resource = (*rest.first()?).to_owned();
    Some(Route {
        coll: format!("{prefix}/{resource}"),
        resource,
        ns,
        name: rest.get(1).map(|s| (*s).to_owned()),
        sub: (rest.len() > 2).then(|| rest[2..].join("/")),
    })
}

fn param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let v = kv.strip_prefix(key)?.strip_prefix('=')?;
        Some(percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated, against `labels`.
fn labels_match(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
        if let Some((k, v)) = term.split_once("!=") {
            get(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k).is_none()
        } else {
            get(term).is_some()
        }
    })
}

/// `metadata.name=x`, `metadata.namespace=y`.
fn fields_match(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) else {
            return true;
        };
        let actual = match k.trim() {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            _ => return true,
        };
        actual == Some(v.trim())
    })
}

/// JSON merge patch (RFC 7386).
fn merge_patch(target: &mut Value, patch: &Value) {
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
fn apply_merge(target: &mut Value, patch: &Value) {
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
/// helper sends. `Err` is the API server's 422.
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
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
                    return Err(format!("test of {path} failed"));
                }
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

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "code": code, "message": message})
}

fn metadata_only(obj: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
}

/// The kind of a list of `coll`'s objects, from one of them or from the collection.
fn list_kind(coll: &str, sample: Option<&Value>) -> String {
    if let Some(k) = sample.and_then(|o| o["kind"].as_str()) {
        return format!("{k}List");
    }
    let res = coll.rsplit('/').next().unwrap_or("");
    match res {
        "pods" => "PodList",
        "secrets" => "SecretList",
        "services" => "ServiceList",
        "poddisruptionbudgets" => "PodDisruptionBudgetList",
        "browserpools" => "BrowserPoolList",
        "modeldeployments" => "ModelDeploymentList",
        "leases" => "LeaseList",
        "events" => "EventList",
        _ => "List",
    }
    .to_owned()
}

fn api_version_of(coll: &str) -> String {
    let parts: Vec<&str> = coll.split('/').collect();
    match parts.as_slice() {
        ["api", v, _] => (*v).to_owned(),
        ["apis", g, v, _] => format!("{g}/{v}"),
        _ => "v1".to_owned(),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// An answer: a whole body, or a watch that streams events until it times out.
pub enum Answer {
    Body(u16, Vec<u8>),
    Watch(WatchStream),
}

fn answer(code: u16, v: &Value) -> Answer {
    Answer::Body(code, serde_json::to_vec(v).unwrap_or_default())
}

fn error(code: u16, reason: &str, message: &str) -> Answer {
    answer(code, &status_body(code, reason, message))
}

pub struct FakeApi {
    state: Mutex<State>,
    changes: tokio::sync::broadcast::Sender<Arc<Change>>,
    counts: Mutex<BTreeMap<String, u64>>,
    pub requests: AtomicU64,
    pub status_patches: AtomicU64,
    pods_made: AtomicU64,
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl FakeApi {
    /// An API server holding `objects` (each with apiVersion, kind and metadata).
    pub fn new(objects: Vec<Value>) -> Self {
        let (changes, _) = tokio::sync::broadcast::channel(65_536);
        let api = Self {
            state: Mutex::new(State::default()),
            changes,
            counts: Mutex::default(),
            requests: AtomicU64::new(0),
            status_patches: AtomicU64::new(0),
            pods_made: AtomicU64::new(0),
        };
        {
            let mut st = api.lock();
            for mut o in objects {
                let Some(key) = key_of(&o) else { continue };
                st.rv += 1;
                o["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                if o["metadata"]["uid"].is_null() {
                    o["metadata"]["uid"] = json!(format!("uid-{}", st.rv));
                }
                st.objects.insert(key, o);
            }
            st.log_start = st.rv;
        }
        api
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests by `verb resource`, e.g. `patch pods`, `watch browserpools`.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One stored object, if it exists.
    pub fn object(&self, coll: &str, ns: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&Key {
                coll: coll.into(),
                ns: ns.into(),
                name: name.into(),
            })
            .cloned()
    }

    fn count(&self, verb: &str, r: &Route) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resource = match &r.sub {
            Some(sub) => format!("{}/{}", r.resource, sub.split('/').next().unwrap_or("")),
            None => r.resource.clone(),
        };
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(format!("{verb} {resource}"))
            .or_default() += 1;
    }

    /// Stores `obj` at `key` as a change of `kind`, bumping the resourceVersion.
    fn commit(&self, st: &mut State, key: Key, mut obj: Value, kind: &'static str) -> Value {
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let change = Arc::new(Change {
            rv: st.rv,
            coll: key.coll.clone(),
            ns: key.ns.clone(),
            kind,
            object: obj.clone(),
        });
        if kind == "DELETED" {
            st.objects.remove(&key);
        } else {
            st.objects.insert(key, obj.clone());
        }
        st.log.push_back(change.clone());
        while st.log.len() > LOG_LIMIT {
            if let Some(c) = st.log.pop_front() {
                st.log_start = c.rv;
            }
        }
        let _ = self.changes.send(change);
        obj
    }

    /// What a new object gets from the API server (and, for pods, from the kubelet).
    fn admit(&self, st: &State, r: &Route, obj: &mut Value) {
        let ns = r.ns.clone().unwrap_or_default();
        if !ns.is_empty() {
            obj["metadata"]["namespace"] = json!(ns);
        }
        obj["metadata"]["uid"] = json!(format!("uid-{}-{}", r.resource, st.rv + 1));
        obj["metadata"]["creationTimestamp"] =
            json!(Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        if r.coll.starts_with("apis/webaccel.dev") {
            obj["metadata"]["generation"] = json!(1);
        }
        if obj["apiVersion"].is_null() {
            obj["apiVersion"] = json!(api_version_of(&r.coll));
        }
        if r.resource == "secrets"
            && let Some(data) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
        {
            for (k, v) in data.as_object().into_iter().flatten() {
                let bytes = k8s_openapi::ByteString(v.as_str().unwrap_or("").as_bytes().to_vec());
                obj["data"][k] = serde_json::to_value(bytes).unwrap_or_default();
            }
        }
        if r.resource == "pods" {
            let n = self.pods_made.fetch_add(1, Ordering::Relaxed);
            let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
            obj["status"] = json!({"phase": "Running",
                "podIP": format!("10.200.{}.{}", (n / 250) % 250, n % 250 + 1),
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": true,
                                       "restartCount": 0}]});
        }
    }

    /// Serves one request.
    pub fn handle(
        self: &Arc<Self>,
        method: &str,
        path: &str,
        query: &str,
        content_type: &str,
        metadata_only: bool,
        body: &[u8],
    ) -> Answer {
        let Some(r) = route(path) else {
            return error(404, "NotFound", &format!("no route {path}"));
        };
        let watch = param(query, "watch").is_some_and(|w| w == "true" || w == "1");
        let verb = match method {
            "GET" if watch => "watch",
            "GET" if r.name.is_some() => "get",
            "GET" => "list",
            "POST" => "create",
            "PATCH" => "patch",
            "PUT" => "update",
            "DELETE" => "delete",
            _ => "other",
        };
        self.count(verb, &r);
        if r.sub.as_deref() == Some("status") && matches!(verb, "patch" | "update") {
            self.status_patches.fetch_add(1, Ordering::Relaxed);
        }
        if r.sub.as_deref().is_some_and(|s| s != "status") {
            return error(404, "NotFound", &format!("{path}: subresource not served"));
        }
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match verb {
            "watch" => self.watch(&r, query, metadata_only),
            "list" => self.list(&r, query, metadata_only),
            "get" => self.get(&r, metadata_only),
            "create" => self.create(&r, body),
            "patch" => self.patch(&r, content_type, &body),
            "update" => self.update(&r, body),
            "delete" => self.delete(&r),
            _ => error(405, "MethodNotAllowed", method),
        }
    }

    fn key(r: &Route, name: &str) -> Key {
        Key {
            coll: r.coll.clone(),
            ns: r.ns.clone().unwrap_or_default(),
            name: name.to_owned(),
        }
    }

    fn get(&self, r: &Route, meta: bool) -> Answer {
        let st = self.lock();
        match st
            .objects
            .get(&Self::key(r, r.name.as_deref().unwrap_or("")))
        {
            Some(o) if meta => answer(200, &metadata_only(o)),
            Some(o) => answer(200, o),
            None => error(404, "NotFound", "not found"),
        }
    }

    fn selected<'a>(st: &'a State, r: &'a Route, query: &str) -> Vec<&'a Value> {
        let labels = param(query, "labelSelector").unwrap_or_default();
        let fields = param(query, "fieldSelector").unwrap_or_default();
        st.objects
            .iter()
            .filter(|(k, _)| k.coll == r.coll && r.ns.as_ref().is_none_or(|ns| &k.ns == ns))
            .map(|(_, o)| o)
            .filter(|o| labels_match(&labels, &o["metadata"]["labels"]) && fields_match(&fields, o))
            .collect()
    }

    fn list(&self, r: &Route, query: &str, meta: bool) -> Answer {
        let st = self.lock();
        let items = Self::selected(&st, r, query);
        let from: usize = param(query, "continue")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let limit: usize = param(query, "limit")
            .and_then(|l| l.parse().ok())
            .filter(|&l| l > 0)
            .unwrap_or(usize::MAX);
        let to = from.saturating_add(limit).min(items.len());
        let mut metadata = json!({"resourceVersion": st.rv.to_string()});
        if to < items.len() {
            metadata["continue"] = json!(to.to_string());
        }
        let page: Vec<Value> = items[from.min(to)..to]
            .iter()
            .map(|o| if meta { metadata_only(o) } else { (*o).clone() })
            .collect();
        let (api_version, kind) = if meta {
            (
                "meta.k8s.io/v1".to_owned(),
                "PartialObjectMetadataList".to_owned(),
            )
        } else {
            (
                api_version_of(&r.coll),
                list_kind(&r.coll, items.first().copied()),
            )
        };
        answer(
            200,
            &json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": page}),
        )
    }

    fn watch(&self, r: &Route, query: &str, meta: bool) -> Answer {
        let from: u64 = param(query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = param(query, "timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290u64);
        let labels = param(query, "labelSelector").unwrap_or_default();
        let fields = param(query, "fieldSelector").unwrap_or_default();
        let (replay, rx) = {
            let st = self.lock();
            if from < st.log_start {
                let gone = json!({"type": "ERROR", "object": status_body(410, "Expired",
                    &format!("too old resource version: {from} ({})", st.log_start))});
                let line = Bytes::from(format!("{gone}\n"));
                return Answer::Watch(futures::stream::iter([line]).boxed());
            }
            let replay: Vec<Arc<Change>> = st.log.iter().filter(|c| c.rv > from).cloned().collect();
            (replay, self.changes.subscribe())
        };
        let r = r.clone();
        let matches = move |c: &Change| {
            c.coll == r.coll
                && r.ns.as_ref().is_none_or(|ns| &c.ns == ns)
                && labels_match(&labels, &c.object["metadata"]["labels"])
                && fields_match(&fields, &c.object)
        };
        let line = move |c: &Change| {
            let object = if meta {
                metadata_only(&c.object)
            } else {
                c.object.clone()
            };
            Bytes::from(format!("{}\n", json!({"type": c.kind, "object": object})))
        };
        let last = replay.last().map_or(from, |c| c.rv);
        let first: Vec<Bytes> = replay
            .iter()
            .filter(|c| matches(c))
            .map(|c| line(c))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let live = futures::stream::unfold(
            (rx, last, matches, line),
            move |(mut rx, last, matches, line)| async move {
                loop {
                    let next = tokio::time::timeout_at(deadline, rx.recv()).await;
                    match next {
                        Ok(Ok(c)) if c.rv > last && matches(&c) => {
                            let out = line(&c);
                            return Some((out, (rx, c.rv, matches, line)));
                        }
                        Ok(Ok(_)) => {}
                        // Lagged, closed or timed out: end the watch; the client watches again.
                        _ => return None,
                    }
                }
            },
        );
        Answer::Watch(futures::stream::iter(first).chain(live).boxed())
    }

    fn create(&self, r: &Route, mut body: Value) -> Answer {
        let name = body["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if name.is_empty() {
            return error(422, "Invalid", "metadata.name is required");
        }
        let mut st = self.lock();
        let key = Self::key(r, &name);
        if st.objects.contains_key(&key) {
            return error(409, "AlreadyExists", &format!("{name} already exists"));
        }
        self.admit(&st, r, &mut body);
        let obj = self.commit(&mut st, key, body, "ADDED");
        answer(201, &obj)
    }

    fn patch(&self, r: &Route, content_type: &str, body: &Value) -> Answer {
        let name = r.name.clone().unwrap_or_default();
        let key = Self::key(r, &name);
        let status_only = r.sub.as_deref() == Some("status");
        let mut st = self.lock();
        let existing = st.objects.get(&key).cloned();
        let apply = content_type.contains("apply-patch");
        let Some(old) = existing else {
            if !apply || status_only {
                return error(404, "NotFound", &format!("{name} not found"));
            }
            // Server-side apply creates.
            let mut obj = body.clone();
            obj["metadata"]["name"] = json!(name);
            self.admit(&st, r, &mut obj);
            let obj = self.commit(&mut st, key, obj, "ADDED");
            return answer(201, &obj);
        };
        let mut new = old.clone();
        if status_only {
            if apply {
                new["status"] = body["status"].clone();
            } else {
                merge_patch(&mut new, &json!({"status": body["status"]}));
            }
        } else if apply {
            let mut b = body.clone();
            if let Some(o) = b.as_object_mut() {
                o.remove("status");
            }
            apply_merge(&mut new, &b);
        } else if content_type.contains("json-patch") {
            if let Err(e) = json_patch(&mut new, body) {
                return error(422, "Invalid", &e);
            }
        } else {
            merge_patch(&mut new, body);
        }
        answer(200, &self.store_update(&mut st, key, &old, new))
    }

    /// Stores `new` over `old`: no change, no new version and no event.
    fn store_update(&self, st: &mut State, key: Key, old: &Value, mut new: Value) -> Value {
        for k in [
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "namespace",
            "name",
        ] {
            new["metadata"][k] = old["metadata"][k].clone();
        }
        if new == *old {
            return new;
        }
        if old.get("spec") != new.get("spec") && old["metadata"].get("generation").is_some() {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        // The last finalizer gone from an object being deleted: it goes.
        let deleting = !new["metadata"]["deletionTimestamp"].is_null();
        let finalizers = new["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers {
            return self.commit(st, key, new, "DELETED");
        }
        self.commit(st, key, new, "MODIFIED")
    }

    fn update(&self, r: &Route, body: Value) -> Answer {
        let name = r.name.clone().unwrap_or_default();
        let key = Self::key(r, &name);
        let mut st = self.lock();
        let Some(old) = st.objects.get(&key).cloned() else {
            return error(404, "NotFound", &format!("{name} not found"));
        };
        if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
            && Some(rv) != old["metadata"]["resourceVersion"].as_str()
        {
            return error(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            );
        }
        let new = if r.sub.as_deref() == Some("status") {
            let mut n = old.clone();
            n["status"] = body["status"].clone();
            n
        } else {
            body
        };
        answer(200, &self.store_update(&mut st, key, &old, new))
    }

    fn delete(&self, r: &Route) -> Answer {
        let name = r.name.clone().unwrap_or_default();
        let key = Self::key(r, &name);
        let mut st = self.lock();
        let Some(old) = st.objects.get(&key).cloned() else {
            return error(404, "NotFound", &format!("{name} not found"));
        };
        let held = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if held {
            let mut new = old.clone();
            if new["metadata"]["deletionTimestamp"].is_null() {
                new["metadata"]["deletionTimestamp"] =
                    json!(Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
            }
            return answer(200, &self.store_update(&mut st, key, &old, new));
        }
        answer(200, &self.commit(&mut st, key, old, "DELETED"))
    }
}

fn key_of(o: &Value) -> Option<Key> {
    let api_version = o["apiVersion"].as_str()?;
    let kind = o["kind"].as_str()?;
    let resource = match kind {
        "Pod" => "pods",
        "Secret" => "secrets",
        "Service" => "services",
        "PodDisruptionBudget" => "poddisruptionbudgets",
        "BrowserPool" => "browserpools",
        "ModelDeployment" => "modeldeployments",
        "Lease" => "leases",
        _ => return None,
    };
    let prefix = if api_version.contains('/') {
        format!("apis/{api_version}")
    } else {
        format!("api/{api_version}")
    };
    Some(Key {
        coll: format!("{prefix}/{resource}"),
        ns: o["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
        name: o["metadata"]["name"].as_str()?.to_owned(),
    })
}

type AnswerBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn is_metadata_only(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("as=PartialObjectMetadata"))
}

fn content_type(headers: &http::HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A client talking to `api` in this process.
pub fn client(api: Arc<FakeApi>) -> Client {
    let service = tower::service_fn(move |req: Request<Body>| {
        let api = api.clone();
        async move {
            let method = req.method().as_str().to_owned();
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or_default().to_owned();
            let meta = is_metadata_only(req.headers());
            let ct = content_type(req.headers());
            let body = req
                .into_body()
                .collect_bytes()
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            let (status, body): (u16, AnswerBody) = match api
                .handle(&method, &path, &query, &ct, meta, &body)
            {
                Answer::Body(code, b) => (code, Full::new(Bytes::from(b)).boxed_unsync()),
                Answer::Watch(s) => (
                    200,
                    StreamBody::new(s.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync(),
                ),
            };
            let mut response = Response::new(body);
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
            Ok::<_, Infallible>(response)
        }
    });
    Client::new(service, "default")
}

/// What a fleet is made of.
#[derive(Debug, Clone, Copy)]
pub struct FleetShape {
    pub pools: usize,
    pub browsers: usize,
    pub autoscale: bool,
    /// One ModelDeployment per pool, loaded on every browser.
    pub models: bool,
}

pub fn pool(ns: &str, replicas: usize, autoscale: bool) -> BrowserPool {
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
pub fn pods(ns: &str, n: usize, hash: &str, model: bool) -> Vec<Value> {
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
    let p = pool(ns, shape.browsers, shape.autoscale);
    let hash = webaccel_operator::pool::build::template_hash(&p);
    let owner = json!([{"apiVersion": "webaccel.dev/v1alpha1", "kind": "BrowserPool",
        "name": "web", "uid": format!("uid-{ns}"), "controller": true, "blockOwnerDeletion": true}]);
    let labels =
        json!({"app.kubernetes.io/managed-by": "webaccel-operator", "webaccel.dev/pool": "web"});
    let mut out = vec![serde_json::to_value(&p).unwrap_or_default()];
    out.extend(pods(ns, shape.browsers, &hash, shape.models));
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
pub fn fleet(shape: FleetShape) -> (Vec<BrowserPool>, FakeApi) {
    let pools: Vec<BrowserPool> = (0..shape.pools)
        .map(|i| pool(&format!("ns{i}"), shape.browsers, shape.autoscale))
        .collect();
    let objects = (0..shape.pools)
        .flat_map(|i| pool_objects(&format!("ns{i}"), shape))
        .collect();
    (pools, FakeApi::new(objects))
}

/// Agents answering from memory: every browser reports the same load, which a trial sets,
/// and holds model `minilm`.
#[derive(Default)]
pub struct Agents {
    pub load: AtomicU64,
    pub calls: AtomicU64,
}

impl AgentApi for Agents {
    fn stats<'a>(&'a self, _ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<AgentStats>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let load = self.load.load(Ordering::Relaxed);
        Box::pin(async move {
            Ok(AgentStats {
                healthy: true,
                ready: true,
                outstanding: load,
                ..AgentStats::default()
            })
        })
    }
    fn capabilities<'a>(&'a self, _ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<Capabilities>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async {
            Ok(Capabilities::synthetic(
                &[webaccel_api::Backend::Wasm],
                "",
                "",
            ))
        })
    }
    fn model<'a>(
        &'a self,
        _: &'a Endpoint,
        name: &'a str,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            Ok(if name == "minilm" {
                ModelOnAgent::Loaded {
                    backend: "wasm".into(),
                    init_ms: Some(40.0),
                    precision: Some(webaccel_api::Precision::Fp32),
                    uri: String::new(),
                    sha256: String::new(),
                }
            } else {
                ModelOnAgent::Absent
            })
        })
    }
    fn load<'a>(
        &'a self,
        _: &'a Endpoint,
        _: &'a ModelSpec,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(ModelOnAgent::Loading) })
    }
    fn unload<'a>(&'a self, _: &'a Endpoint, _: &'a str) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn drain<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// Serves `api` over HTTP on a free loopback port (printed on stdout as the first line), so
/// the operator under test talks to it as to an API server in another process, and the
/// fake's own memory stays out of the operator's RSS. `GET /fake/status-patches` counts the
/// status writes seen; `GET /fake/requests` gives every request count by verb and resource.
pub async fn serve_http(api: FakeApi) -> anyhow::Result<()> {
    use axum::body::Body as AxumBody;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, Uri};

    async fn any(
        State(api): State<Arc<FakeApi>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        if uri.path() == "/fake/status-patches" {
            let n = api.status_patches.load(Ordering::Relaxed);
            return axum::response::Response::new(AxumBody::from(n.to_string()));
        }
        if uri.path() == "/fake/requests" {
            let counts = json!({"total": api.requests.load(Ordering::Relaxed), "by": api.counts()});
            return axum::response::Response::new(AxumBody::from(counts.to_string()));
        }
        let query = uri.query().unwrap_or_default();
        let ct = content_type(&headers);
        match api.handle(
            method.as_str(),
            uri.path(),
            query,
            &ct,
            is_metadata_only(&headers),
            &body,
        ) {
            Answer::Body(code, b) => {
                let mut r = axum::response::Response::new(AxumBody::from(b));
                *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or_default();
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
            Answer::Watch(s) => {
                axum::response::Response::new(AxumBody::from_stream(s.map(Ok::<_, Infallible>)))
            }
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    #[allow(clippy::print_stdout)]
    {
        println!("{port}");
    }
    let app = axum::Router::new().fallback(any).with_state(Arc::new(api));
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_patches_behave_like_the_api_server() {
        let labels = json!({"a": "1", "b": "2"});
        assert!(labels_match("a=1,b", &labels));
        assert!(!labels_match("a!=1", &labels));
        assert!(labels_match("!c", &labels));
        let mut o = json!({"metadata": {"finalizers": ["x", "y"]}});
        json_patch(
            &mut o,
            &json!([{"op": "test", "path": "/metadata/finalizers/1", "value": "y"},
                    {"op": "remove", "path": "/metadata/finalizers/1"}]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o["metadata"]["finalizers"], json!(["x"]));
        assert!(
            json_patch(
                &mut o,
                &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "z"}])
            )
            .is_err()
        );
        assert_eq!(percent_decode("a%3Db%2Cc"), "a=b,c");
    }
}
