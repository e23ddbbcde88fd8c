//! The object store behind the fake API server: objects by collection, namespace and
//! name, one resourceVersion counter, and the log of changes watches replay and follow.
//! Each verb is served here as kube-apiserver serves it (see [`super`] for the list).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::patch::{apply_merge, json_patch, merge_patch};
use super::request::{
    Route, api_version_of, bad_field_selector, fields_match, labels_match, list_kind,
    metadata_only, status_body,
};
use super::{Answer, Inner, WatchInfo};

/// Changes kept for watches that start from an older resourceVersion.
const LOG_LIMIT: usize = 200_000;

/// One object's place: (collection, namespace, name).
pub type Key = (String, String, String);

/// One change: the object before and after (`None` when created or deleted), kept so
/// that each watch sees it through its own selectors.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub coll: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

#[derive(Debug, Default)]
pub struct State {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    pub log: VecDeque<Arc<Change>>,
    /// Watches from a version older than this get 410 Gone.
    pub log_start: u64,
    pub pods_made: u64,
}

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn answer(code: u16, v: &Value) -> Answer {
    Answer::Body(code, serde_json::to_vec(v).unwrap_or_default())
}

pub fn error(code: u16, reason: &str, message: &str) -> Answer {
    answer(code, &status_body(code, reason, message))
}

fn key(r: &Route, name: &str) -> Key {
    (
        r.coll.clone(),
        r.ns.clone().unwrap_or_default(),
        name.to_owned(),
    )
}

/// What a watch with these selectors is.
#[derive(Debug, Clone)]
pub struct Selection {
    pub coll: String,
    pub ns: Option<String>,
    pub labels: String,
    pub fields: String,
}

impl Selection {
    pub fn of(r: &Route, labels: String, fields: String) -> Self {
        Self {
            coll: r.coll.clone(),
            ns: r.ns.clone(),
            labels,
            fields,
        }
    }

    fn sees(&self, coll: &str, obj: &Value) -> bool {
        self.coll == coll
            && self
                .ns
                .as_deref()
                .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && labels_match(&self.labels, obj)
            && fields_match(&self.fields, obj)
    }

    /// The event this selection gets for `change`: an object that starts matching is
    /// ADDED, one that stops matching (or is deleted) DELETED, as the API server does.
    fn event(&self, c: &Change, meta: bool) -> Option<Bytes> {
        let old = c.old.as_ref().filter(|o| self.sees(&c.coll, o));
        let new = c.new.as_ref().filter(|o| self.sees(&c.coll, o));
        let (kind, object) = match (old, new) {
            (None, Some(n)) => ("ADDED", n),
            (Some(_), Some(n)) => ("MODIFIED", n),
            // Deleted, or no longer matching: gone from this watch's view.
            (Some(o), None) => ("DELETED", c.new.as_ref().unwrap_or(o)),
            (None, None) => return None,
        };
        let object = if meta {
            metadata_only(object)
        } else {
            object.clone()
        };
        Some(Bytes::from(format!(
            "{}\n",
            json!({"type": kind, "object": object})
        )))
    }
}

impl Inner {
    /// Stores `new` at `key` (or deletes it, `new` = `None`), bumping the resourceVersion,
    /// and tells the watches.
    pub fn commit(&self, st: &mut State, key: Key, new: Option<Value>) -> Value {
        st.rv += 1;
        let rv = json!(st.rv.to_string());
        // The object as it was, at the new version: what a watch that stops seeing it
        // gets in its DELETED event (matching reads only its namespace, name and labels).
        let old = st.objects.remove(&key).map(|mut o| {
            o["metadata"]["resourceVersion"] = rv.clone();
            o
        });
        let new = new.map(|mut o| {
            o["metadata"]["resourceVersion"] = rv.clone();
            st.objects.insert(key.clone(), o.clone());
            o
        });
        let gone = old.clone();
        let change = Arc::new(Change {
            rv: st.rv,
            coll: key.0,
            old,
            new: new.clone(),
        });
        st.log.push_back(change.clone());
        while st.log.len() > LOG_LIMIT {
            if let Some(c) = st.log.pop_front() {
                st.log_start = c.rv;
            }
        }
        let _ = self.changes.send(change);
        new.or(gone).unwrap_or(Value::Null)
    }

    /// What a new object gets from the API server (and, for pods, from the kubelet).
    fn admit(&self, st: &mut State, r: &Route, obj: &mut Value) {
        let ns = r.ns.clone().unwrap_or_default();
        if !ns.is_empty() {
            obj["metadata"]["namespace"] = json!(ns);
        }
        obj["metadata"]["uid"] = json!(format!("uid-{}-{}", r.resource, st.rv + 1));
        obj["metadata"]["creationTimestamp"] = json!(now());
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
        if r.resource == "pods" && self.options.kubelet {
            let n = st.pods_made;
            st.pods_made += 1;
            obj["status"] = json!({"phase": "Running",
                "podIP": format!("10.200.{}.{}", (n / 250) % 250, n % 250 + 1),
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now()}],
                "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": true,
                                       "restartCount": 0}]});
        }
    }

    pub fn get(&self, r: &Route, meta: bool) -> Answer {
        let st = self.state.lock();
        match st.objects.get(&key(r, r.name.as_deref().unwrap_or(""))) {
            Some(o) if meta => answer(200, &metadata_only(o)),
            Some(o) => answer(200, o),
            None => error(404, "NotFound", "not found"),
        }
    }

    pub fn list(&self, r: &Route, q: &BTreeMap<String, String>, meta: bool) -> Answer {
        let sel = Selection::of(
            r,
            q.get("labelSelector").cloned().unwrap_or_default(),
            q.get("fieldSelector").cloned().unwrap_or_default(),
        );
        if let Some(why) = bad_field_selector(&sel.fields) {
            return error(400, "BadRequest", &why);
        }
        let st = self.state.lock();
        let items: Vec<&Value> = st
            .objects
            .iter()
            .filter(|(k, o)| k.0 == r.coll && sel.sees(&r.coll, o))
            .map(|(_, o)| o)
            .collect();
        let from: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let limit: usize = q
            .get("limit")
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

    /// A watch from `resourceVersion`: the logged changes after it, then live ones, until
    /// `timeoutSeconds` (when the server times watches out) or the client goes away.
    pub fn watch(&self, r: &Route, q: &BTreeMap<String, String>, meta: bool) -> Answer {
        let sel = Selection::of(
            r,
            q.get("labelSelector").cloned().unwrap_or_default(),
            q.get("fieldSelector").cloned().unwrap_or_default(),
        );
        if let Some(why) = bad_field_selector(&sel.fields) {
            return error(400, "BadRequest", &why);
        }
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290u64);
        let (replay, rx) = {
            let st = self.state.lock();
            if from < st.log_start {
                let gone = json!({"type": "ERROR", "object": status_body(410, "Expired",
                    &format!("too old resource version: {from} ({})", st.log_start))});
                let line = Bytes::from(format!("{gone}\n"));
                return Answer::Watch(futures::stream::iter([line]).boxed());
            }
            let replay: Vec<Arc<Change>> = st.log.iter().filter(|c| c.rv > from).cloned().collect();
            (replay, self.changes.subscribe())
        };
        let open = Arc::new(());
        self.watches.lock().push(WatchInfo {
            selection: sel.clone(),
            open: Arc::downgrade(&open),
        });
        let last = replay.last().map_or(from, |c| c.rv);
        let first: Vec<Bytes> = replay.iter().filter_map(|c| sel.event(c, meta)).collect();
        let deadline = self
            .options
            .watch_timeouts
            .then(|| tokio::time::Instant::now() + Duration::from_secs(timeout));
        let live = futures::stream::unfold(
            (rx, last, sel, open),
            move |(mut rx, last, sel, open)| async move {
                loop {
                    let next = match deadline {
                        Some(at) => tokio::time::timeout_at(at, rx.recv()).await,
                        None => Ok(rx.recv().await),
                    };
                    match next {
                        Ok(Ok(c)) if c.rv > last => {
                            if let Some(out) = sel.event(&c, meta) {
                                return Some((out, (rx, c.rv, sel, open)));
                            }
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

    pub fn create(&self, r: &Route, mut body: Value) -> Answer {
        let name = body["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if name.is_empty() {
            return error(422, "Invalid", "metadata.name is required");
        }
        let mut st = self.state.lock();
        let key = key(r, &name);
        if st.objects.contains_key(&key) {
            return error(409, "AlreadyExists", &format!("{name} already exists"));
        }
        self.admit(&mut st, r, &mut body);
        let obj = self.commit(&mut st, key, Some(body));
        answer(201, &obj)
    }

    pub fn patch(&self, r: &Route, content_type: &str, body: &Value) -> Answer {
        let name = r.name.clone().unwrap_or_default();
        let key = key(r, &name);
        let status_only = r.sub.as_deref() == Some("status");
        let mut st = self.state.lock();
        let apply = content_type.contains("apply-patch");
        let Some(old) = st.objects.get(&key).cloned() else {
            if !apply || status_only {
                return error(404, "NotFound", &format!("{name} not found"));
            }
            // Server-side apply creates.
            let mut obj = body.clone();
            obj["metadata"]["name"] = json!(name);
            self.admit(&mut st, r, &mut obj);
            let obj = self.commit(&mut st, key, Some(obj));
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
            return self.commit(st, key, None);
        }
        self.commit(st, key, Some(new))
    }

    pub fn update(&self, r: &Route, body: Value) -> Answer {
        let name = r.name.clone().unwrap_or_default();
        let key = key(r, &name);
        let mut st = self.state.lock();
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

    pub fn delete(&self, r: &Route) -> Answer {
        let name = r.name.clone().unwrap_or_default();
        let key = key(r, &name);
        let mut st = self.state.lock();
        let Some(old) = st.objects.get(&key).cloned() else {
            return error(404, "NotFound", &format!("{name} not found"));
        };
        let held = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if held {
            let mut new = old.clone();
            if new["metadata"]["deletionTimestamp"].is_null() {
                new["metadata"]["deletionTimestamp"] = json!(now());
            }
            return answer(200, &self.store_update(&mut st, key, &old, new));
        }
        answer(200, &self.commit(&mut st, key, None))
    }
}
