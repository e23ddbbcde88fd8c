//! The benchmark's stand-ins: an API server in memory (each pool's pods, the token Secret,
//! echoes for writes, lists and quiet watches for live controllers) and agents that all
//! report one settable load.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use webaccel_api::agent::{AgentStats, Capabilities, ModelSpec};
use webaccel_api::v1alpha1::BrowserPool;
use webaccel_engine::agent::{AgentApi, AgentResult, Endpoint, ModelOnAgent};

pub struct FakeApi {
    /// Per namespace: the pool's PodList, serialised.
    pub pods: HashMap<String, Vec<u8>>,
    /// Per namespace: the pool, serialised.
    pub pools: HashMap<String, Vec<u8>>,
    /// Every pod and every pool, serialised one by one, for paged cluster-wide lists.
    all_pods: Vec<Vec<u8>>,
    /// The same pods as PartialObjectMetadata, for metadata-only lists.
    all_pod_metadata: Vec<Vec<u8>>,
    all_pools: Vec<Vec<u8>>,
    pub requests: AtomicU64,
    pub status_patches: AtomicU64,
    lease: std::sync::Mutex<Option<Vec<u8>>>,
}

/// A whole body, or a watch that stays open and never sends an event.
enum Answer {
    Body(Vec<u8>),
    NotFound,
    QuietWatch,
}

fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// One page of a list, as the API server pages it: `limit` items from offset `continue`,
/// with a continue token while more remain. Assembled from pre-serialised items so the fake
/// itself allocates little.
fn page(kind: &str, api_version: &str, items: &[Vec<u8>], query: &str) -> Vec<u8> {
    let from: usize = param(query, "continue")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let limit: usize = param(query, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    let to = from.saturating_add(limit).min(items.len());
    let next = if to < items.len() {
        format!(r#","continue":"{to}""#)
    } else {
        String::new()
    };
    let mut out = format!(
        r#"{{"apiVersion":"{api_version}","kind":"{kind}","metadata":{{"resourceVersion":"1"{next}}},"items":["#
    )
    .into_bytes();
    for (i, item) in items[from.min(to)..to].iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]}");
    out
}

impl FakeApi {
    pub fn new(pods: HashMap<String, Vec<u8>>, pools: HashMap<String, Vec<u8>>) -> Self {
        let items: Vec<Value> = pods
            .values()
            .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
            .flat_map(|l| l["items"].as_array().cloned().unwrap_or_default())
            .collect();
        let all_pods = items
            .iter()
            .map(|p| serde_json::to_vec(p).unwrap_or_default())
            .collect();
        let all_pod_metadata = items
            .iter()
            .map(|p| {
                serde_json::to_vec(&json!({"apiVersion": "meta.k8s.io/v1",
                    "kind": "PartialObjectMetadata", "metadata": p["metadata"]}))
                .unwrap_or_default()
            })
            .collect();
        let all_pools = pools.values().cloned().collect();
        Self {
            pods,
            pools,
            all_pods,
            all_pod_metadata,
            all_pools,
            requests: AtomicU64::new(0),
            status_patches: AtomicU64::new(0),
            lease: std::sync::Mutex::new(None),
        }
    }

    fn serve(
        &self,
        method: &str,
        path: &str,
        query: &str,
        metadata_only: bool,
        body: &[u8],
    ) -> Answer {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if query.contains("watch=true") {
            return Answer::QuietWatch;
        }
        // One Lease, kept as last written, for leader election.
        if path.contains("/apis/coordination.k8s.io/") {
            let mut lease = self.lease.lock().unwrap_or_else(|p| p.into_inner());
            return match method {
                "GET" => lease.clone().map_or(Answer::NotFound, Answer::Body),
                _ => {
                    let mut obj: Value = serde_json::from_slice(body).unwrap_or_default();
                    obj["metadata"]["resourceVersion"] =
                        json!(self.requests.load(Ordering::Relaxed).to_string());
                    let bytes = serde_json::to_vec(&obj).unwrap_or_default();
                    *lease = Some(bytes.clone());
                    Answer::Body(bytes)
                }
            };
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let ns = parts
            .iter()
            .position(|p| *p == "namespaces")
            .and_then(|i| parts.get(i + 1))
            .copied()
            .unwrap_or("");
        let body = match (method, path) {
            // Cluster-wide lists, paged, as the controllers' watchers make them at start.
            ("GET", "/apis/webaccel.dev/v1alpha1/browserpools") => page(
                "BrowserPoolList",
                "webaccel.dev/v1alpha1",
                &self.all_pools,
                query,
            ),
            ("GET", "/apis/webaccel.dev/v1alpha1/modeldeployments") => {
                page("ModelDeploymentList", "webaccel.dev/v1alpha1", &[], query)
            }
            ("GET", "/api/v1/pods") if metadata_only => page(
                "PartialObjectMetadataList",
                "meta.k8s.io/v1",
                &self.all_pod_metadata,
                query,
            ),
            ("GET", "/api/v1/pods") => page("PodList", "v1", &self.all_pods, query),
            ("GET", p) if p.ends_with("/pods") => self.pods.get(ns).cloned().unwrap_or_default(),
            ("GET", p) if p.contains("/secrets/") => serde_json::to_vec(&json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "t", "namespace": ns}, "data": {"token": "c2VjcmV0"}}))
            .unwrap_or_default(),
            (_, p) if p.ends_with("/status") => {
                self.status_patches.fetch_add(1, Ordering::Relaxed);
                self.pools.get(ns).cloned().unwrap_or_default()
            }
            _ => body.to_vec(),
        };
        Answer::Body(body)
    }
}

const NOT_FOUND: &str = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"}"#;

type AnswerBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

pub fn client(api: Arc<FakeApi>) -> Client {
    let service = tower::service_fn(move |req: Request<Body>| {
        let api = api.clone();
        async move {
            let method = req.method().as_str().to_owned();
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or_default().to_owned();
            let metadata_only = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("as=PartialObjectMetadata"));
            let body = req
                .into_body()
                .collect_bytes()
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            let (status, body): (u16, AnswerBody) =
                match api.serve(&method, &path, &query, metadata_only, &body) {
                    Answer::Body(b) => (200, Full::new(Bytes::from(b)).boxed_unsync()),
                    Answer::NotFound => (404, Full::new(Bytes::from(NOT_FOUND)).boxed_unsync()),
                    Answer::QuietWatch => (
                        200,
                        StreamBody::new(
                            futures::stream::pending::<Result<Frame<Bytes>, Infallible>>(),
                        )
                        .boxed_unsync(),
                    ),
                };
            let mut response = Response::new(body);
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
            Ok::<_, Infallible>(response)
        }
    });
    Client::new(service, "default")
}

pub fn pool(ns: &str, replicas: usize, autoscale: bool) -> BrowserPool {
    let mut spec = json!({"image": "reg/browser:1", "replicas": replicas});
    if autoscale {
        spec["autoscaling"] = json!({"enabled": true, "minReplicas": 1, "maxReplicas": 50,
            "targetInFlightPerBrowser": 4, "scaleDownStabilizationSeconds": 300});
    }
    serde_json::from_value(
        json!({"apiVersion": "webaccel.dev/v1alpha1", "kind": "BrowserPool",
        "metadata": {"name": "web", "namespace": ns, "uid": format!("uid-{ns}"), "generation": 1},
        "spec": spec}),
    )
    .unwrap_or_else(|e| panic!("bench pool: {e}"))
}

/// `n` ready, current browser pods of pool `web` in `ns`, as a PodList.
pub fn pods(ns: &str, n: usize, hash: &str) -> Value {
    let items: Vec<Value> = (0..n)
        .map(|i| json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("web-{i:05}"), "namespace": ns, "uid": format!("{ns}-{i}"),
                "creationTimestamp": "2026-11-26T09:00:00Z",
                "ownerReferences": [{"apiVersion": "webaccel.dev/v1alpha1", "kind": "BrowserPool",
                    "name": "web", "uid": format!("uid-{ns}"), "controller": true}],
                "labels": {"app.kubernetes.io/managed-by": "webaccel-operator", "webaccel.dev/pool": "web",
                           "webaccel.dev/template-hash": hash}},
            "spec": {"containers": [{"name": "agent", "image": "reg/browser:1"}]},
            "status": {"phase": "Running", "podIP": format!("10.0.{}.{}", i / 250, i % 250),
                "conditions": [{"type": "Ready", "status": "True",
                                "lastTransitionTime": "2026-11-26T09:00:00Z"}],
                "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": true,
                                       "restartCount": 0}]}}))
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items})
}

/// Agents answering from memory: every browser reports the same load, which a trial sets.
#[derive(Default)]
pub struct Agents {
    pub load: AtomicU64,
}

impl AgentApi for Agents {
    fn stats<'a>(&'a self, _ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<AgentStats>> {
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
        _: &'a str,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async { Ok(ModelOnAgent::Absent) })
    }
    fn load<'a>(
        &'a self,
        _: &'a Endpoint,
        _: &'a ModelSpec,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async { Ok(ModelOnAgent::Loading) })
    }
    fn unload<'a>(&'a self, _: &'a Endpoint, _: &'a str) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn drain<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// A fleet of `pools` settled pools (one per namespace `ns<i>`) of `browsers` ready pods each.
pub fn fleet(pools: usize, browsers: usize) -> (Vec<BrowserPool>, FakeApi) {
    let all: Vec<BrowserPool> = (0..pools)
        .map(|i| pool(&format!("ns{i}"), browsers, false))
        .collect();
    let hash = all
        .first()
        .map(webaccel_operator::pool::build::template_hash)
        .unwrap_or_default();
    let ns_of = |p: &BrowserPool| p.metadata.namespace.clone().unwrap_or_default();
    let api = FakeApi::new(
        all.iter()
            .map(|p| {
                (
                    ns_of(p),
                    serde_json::to_vec(&pods(&ns_of(p), browsers, &hash)).unwrap_or_default(),
                )
            })
            .collect(),
        all.iter()
            .map(|p| (ns_of(p), serde_json::to_vec(p).unwrap_or_default()))
            .collect(),
    );
    (all, api)
}

/// Serves `api` over HTTP on a free loopback port (printed on stdout as the first line), so
/// the operator under test talks to it as to an API server in another process, and the
/// fake's own memory stays out of the operator's RSS. `GET /fake/status-patches` counts the
/// status writes seen.
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
        let metadata_only = headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("as=PartialObjectMetadata"));
        let query = uri.query().unwrap_or_default();
        let body = match api.serve(method.as_str(), uri.path(), query, metadata_only, &body) {
            Answer::Body(b) => AxumBody::from(b),
            Answer::NotFound => {
                let mut r = axum::response::Response::new(AxumBody::from(NOT_FOUND));
                *r.status_mut() = http::StatusCode::NOT_FOUND;
                return r;
            }
            Answer::QuietWatch => {
                AxumBody::from_stream(futures::stream::pending::<Result<Bytes, Infallible>>())
            }
        };
        axum::response::Response::new(body)
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
