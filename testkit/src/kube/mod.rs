//! One fake Kubernetes API server for every test and bench that needs one: the gateway's
//! discovery tests and the operator's benchmark.
//!
//! It keeps objects by collection, namespace and name, and serves what webaccel uses the
//! way kube-apiserver does: paged lists with label and field selectors (an unknown field
//! selector is a 400), watches from a resourceVersion (newline-delimited events; an object
//! that starts or stops matching a watch's selectors is ADDED or DELETED for it; ended after
//! `timeoutSeconds`; 410 Gone for a version no longer remembered), named GETs, creates,
//! server-side apply (as a deep merge), merge and JSON patches (a failed `test` is a 422),
//! replaces with resourceVersion preconditions (409 on a stale one, which leader election
//! relies on), the status subresource, and deletes (finalizers hold an object back). A
//! write that changes nothing changes no resourceVersion and sends no watch event.
//!
//! Optionally it plays the kubelet (pods it creates are Running and Ready at once) and
//! checks every request against the chart's RBAC ([`crate::rbac`]), refusing with 403 what
//! a ServiceAccount bound to it could not do. It logs every request ([`Call`]) and counts
//! them by verb and resource, so a test can assert which calls were made and how many.
//!
//! Tests change the cluster directly with [`ApiServer::apply`] and [`ApiServer::delete`],
//! the way a kubelet, the operator or a user would.

mod fleet;
mod objects;
mod patch;
mod request;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::Client;
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};

pub use fleet::{FleetShape, fleet, fleet_pods, fleet_pool, pool_objects};
pub use objects::*;
pub use patch::{apply_merge, json_patch, merge_patch};
pub use request::{fields_match, labels_match};
use request::{key_of, parse_query, route};
use store::{Change, Selection, State, error};

use crate::rbac::{self, Rule};

/// One request webaccel made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `LIST`, `WATCH`, `GET`, `POST`, `PATCH`, `PUT`, `DELETE`.
    pub verb: String,
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: Value,
    /// When it came (tokio's clock, which tests may pause).
    pub at: tokio::time::Instant,
}

impl Call {
    /// `VERB path`, e.g. `WATCH /api/v1/namespaces/ml/pods`.
    pub fn line(&self) -> String {
        format!("{} {}", self.verb, self.path)
    }
}

/// How the fake server behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pods it creates are Running and Ready at once, with an IP (a stand-in kubelet).
    pub kubelet: bool,
    /// Watches end after their `timeoutSeconds`, as a real API server's do. Off under
    /// tokio's paused clock, where every idle moment jumps to the next timer and a
    /// watch would end at once.
    pub watch_timeouts: bool,
    /// Keep every request in the log ([`ApiServer::calls`]); a benchmark making millions
    /// counts them only.
    pub log_calls: bool,
    /// The RBAC rules every request must pass, and the namespace of their Role (`None`
    /// for a ClusterRole).
    pub rbac: Option<(Vec<Rule>, Option<String>)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kubelet: true,
            watch_timeouts: true,
            log_calls: true,
            rbac: None,
        }
    }
}

/// A watch that was opened, for [`ApiServer::open_watches`].
struct WatchInfo {
    selection: Selection,
    /// Alive while its stream is.
    open: Weak<()>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// An answer: a whole body, or a watch that streams events until it ends.
pub enum Answer {
    Body(u16, Vec<u8>),
    Watch(WatchStream),
}

struct Inner {
    options: Options,
    state: Mutex<State>,
    changes: tokio::sync::broadcast::Sender<Arc<Change>>,
    calls: Mutex<Vec<Call>>,
    counts: Mutex<BTreeMap<String, u64>>,
    status_patches: std::sync::atomic::AtomicU64,
    refused: Mutex<Vec<String>>,
    watches: Mutex<Vec<WatchInfo>>,
}

/// The fake API server; clones share it.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer").finish_non_exhaustive()
    }
}

impl ApiServer {
    /// A server holding `objects` (each with apiVersion, kind and metadata), there before
    /// anyone watches (no change to replay).
    pub fn new(objects: Vec<Value>, options: Options) -> Self {
        let (changes, _) = tokio::sync::broadcast::channel(65_536);
        let inner = Inner {
            options,
            state: Mutex::new(State::default()),
            changes,
            calls: Mutex::default(),
            counts: Mutex::default(),
            status_patches: Default::default(),
            refused: Mutex::default(),
            watches: Mutex::default(),
        };
        {
            let mut st = inner.state.lock();
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
        Self {
            inner: Arc::new(inner),
        }
    }

    /// A server holding `objects` whose every request must pass the RBAC rules of the
    /// chart's `template` (bound in `role_namespace`, or cluster-wide), with watches that
    /// never time out (for tests on tokio's paused clock), and a client of it.
    pub fn start(
        objects: Vec<Value>,
        template: &str,
        role_namespace: Option<&str>,
    ) -> (Client, Self) {
        let api = Self::new(
            objects,
            Options {
                kubelet: false,
                watch_timeouts: false,
                log_calls: true,
                rbac: Some((rbac::parse(template), role_namespace.map(str::to_owned))),
            },
        );
        (api.client(), api)
    }

    /// A client talking to this server in this process.
    pub fn client(&self) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect_bytes().await.unwrap_or_default();
                let answer = api.handle(
                    parts.method.as_str(),
                    parts.uri.path(),
                    parts.uri.query().unwrap_or_default(),
                    &parts.headers,
                    &body,
                );
                Ok::<_, Infallible>(http_response(answer))
            }
        });
        Client::new(service, "default")
    }

    /// Serves one request.
    pub fn handle(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Answer {
        let inner = &self.inner;
        let q = parse_query(query);
        let meta = headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("as=PartialObjectMetadata"));
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let Some(r) = route(path) else {
            return error(404, "NotFound", &format!("no route {path}"));
        };
        let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
        let verb = match method {
            "GET" if watch => "WATCH",
            "GET" if r.name.is_some() => "GET",
            "GET" => "LIST",
            other => other,
        };
        if inner.options.log_calls {
            inner.calls.lock().push(Call {
                verb: verb.to_owned(),
                path: path.to_owned(),
                query: q.clone(),
                content_type: content_type.clone(),
                body: body.clone(),
                at: tokio::time::Instant::now(),
            });
        }
        let resource = match &r.sub {
            Some(sub) => format!("{}/{}", r.resource, sub.split('/').next().unwrap_or("")),
            None => r.resource.clone(),
        };
        *inner
            .counts
            .lock()
            .entry(format!("{} {resource}", verb.to_lowercase()))
            .or_default() += 1;
        if let Some((rules, ns)) = &inner.options.rbac
            && let Some(why) = rbac::refusal(rules, method, path, query, ns.as_deref())
        {
            inner.refused.lock().push(why.clone());
            return error(403, "Forbidden", &why);
        }
        if r.sub.as_deref() == Some("status") && matches!(verb, "PATCH" | "PUT") {
            inner
                .status_patches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if r.sub.as_deref().is_some_and(|s| s != "status") {
            return error(404, "NotFound", &format!("{path}: subresource not served"));
        }
        match verb {
            "WATCH" => inner.watch(&r, &q, meta),
            "LIST" => inner.list(&r, &q, meta),
            "GET" => inner.get(&r, meta),
            "POST" => inner.create(&r, body),
            "PATCH" => inner.patch(&r, &content_type, &body),
            "PUT" => inner.update(&r, body),
            "DELETE" => inner.delete(&r),
            _ => error(405, "MethodNotAllowed", method),
        }
    }

    /// Creates or replaces an object (resourceVersion set by the server), as the operator,
    /// a kubelet or a user would; the watches that see it get the event.
    pub fn apply(&self, obj: Value) {
        let key = key_of(&obj).expect("an object the fake stores");
        let mut st = self.inner.state.lock();
        self.inner.commit(&mut st, key, Some(obj));
    }

    /// Deletes an object at once (finalizers or not), if it exists.
    pub fn delete(&self, obj: &Value) {
        let key = key_of(obj).expect("an object the fake stores");
        let mut st = self.inner.state.lock();
        if st.objects.contains_key(&key) {
            self.inner.commit(&mut st, key, None);
        }
    }

    /// The stored object like `obj` (same kind, namespace and name).
    pub fn get(&self, obj: &Value) -> Option<Value> {
        let key = key_of(obj)?;
        self.inner.state.lock().objects.get(&key).cloned()
    }

    /// One stored object, by collection (`api/v1/pods`), namespace and name.
    pub fn object(&self, coll: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (coll.to_owned(), ns.to_owned(), name.to_owned());
        self.inner.state.lock().objects.get(&key).cloned()
    }

    /// Every request so far (with `log_calls`).
    pub fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().clone()
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

    /// Requests by `verb resource`, e.g. `patch pods`, `watch browserpools`.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.inner.counts.lock().clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> u64 {
        self.counts().values().sum()
    }

    /// Status writes so far.
    pub fn status_patches(&self) -> u64 {
        self.inner
            .status_patches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `collection[ labels=..][ fields=..]` of the watches still open (their client has
    /// not gone away).
    pub fn open_watches(&self) -> Vec<String> {
        let mut watches = self.inner.watches.lock();
        watches.retain(|w| w.open.strong_count() > 0);
        watches
            .iter()
            .map(|w| {
                let s = &w.selection;
                let ns =
                    s.ns.as_deref()
                        .map_or(String::new(), |n| format!(" ns={n}"));
                let labels = if s.labels.is_empty() {
                    String::new()
                } else {
                    format!(" labels={}", s.labels)
                };
                let fields = if s.fields.is_empty() {
                    String::new()
                } else {
                    format!(" fields={}", s.fields)
                };
                format!("{}{ns}{labels}{fields}", s.coll)
            })
            .collect()
    }

    /// (group, resource, verb) of every request so far, as the API server authorizes them.
    pub fn used_permissions(&self) -> BTreeSet<(String, String, String)> {
        self.calls()
            .iter()
            .map(|c| match c.verb.as_str() {
                "WATCH" => rbac::attributes("GET", &c.path, "watch=true"),
                "LIST" => rbac::attributes("GET", &c.path, ""),
                other => rbac::attributes(other, &c.path, ""),
            })
            .collect()
    }

    /// Fails the test if any request was refused by the RBAC rules.
    pub fn assert_rbac_allowed_all(&self) {
        let refused = self.inner.refused.lock().clone();
        assert!(refused.is_empty(), "refused by RBAC: {refused:#?}");
    }

    /// Serves this server over HTTP on a free loopback port, in this process's runtime;
    /// its base URL. A process under test then talks to it as to an API server
    /// elsewhere (and the fake's memory stays out of that process's RSS). `GET
    /// /fake/status-patches` counts the status writes; `GET /fake/requests` gives every
    /// request count by verb and resource.
    pub async fn spawn_http(&self) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = self.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(url)
    }

    /// Serves this server over HTTP on a free loopback port, printed on stdout as the
    /// first line, until the process ends (`webaccel-operator-bench --serve-fake-api`).
    pub async fn serve_http(self) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        axum::serve(listener, self.router()).await
    }

    fn router(&self) -> axum::Router {
        use axum::body::Body as AxumBody;
        use axum::extract::State;
        use axum::http::{HeaderMap, Method, Uri};

        async fn any(
            State(api): State<ApiServer>,
            method: Method,
            uri: Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> axum::response::Response {
            if uri.path() == "/fake/status-patches" {
                return axum::response::Response::new(AxumBody::from(
                    api.status_patches().to_string(),
                ));
            }
            if uri.path() == "/fake/requests" {
                let counts = json!({"total": api.requests(), "by": api.counts()});
                return axum::response::Response::new(AxumBody::from(counts.to_string()));
            }
            let answer = api.handle(
                method.as_str(),
                uri.path(),
                uri.query().unwrap_or_default(),
                &headers,
                &body,
            );
            match answer {
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

        axum::Router::new().fallback(any).with_state(self.clone())
    }
}

type AnswerBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn http_response(answer: Answer) -> Response<AnswerBody> {
    let (status, body): (u16, AnswerBody) = match answer {
        Answer::Body(code, b) => (code, Full::new(Bytes::from(b)).boxed_unsync()),
        Answer::Watch(s) => (
            200,
            StreamBody::new(s.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync(),
        ),
    };
    let mut response = Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
