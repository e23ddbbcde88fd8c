//! Test fixtures: object builders, stand-in agents, and a mocked API server that checks
//! each request of a scenario in order (the tower-test pattern of kube's controller-rs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use http::{Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use webaccel_agent_client::{AgentApi, AgentError, AgentResult, Endpoint, ModelOnAgent};
use webaccel_api::agent::{AgentStats, Capabilities, ModelSpec};
use webaccel_crds::v1alpha1::{BrowserPool, ModelDeployment, ModelDeploymentStatus};
use webaccel_operator::context::{Context, Settings};
use webaccel_operator::metrics::Metrics;
use webaccel_operator::pool::build;
use webaccel_operator::stores::{Stores, Writers};
use webaccel_testkit::rbac::{self, Rule};

/// A pool as a user would apply it, plus what the API server adds.
pub fn pool(yaml_spec: &str) -> BrowserPool {
    let text = format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: BrowserPool\nmetadata: {{name: web, namespace: ml, uid: u-1, generation: 3}}\nspec:\n{yaml_spec}"
    );
    serde_yaml_ng::from_str(&text).unwrap()
}

/// A browser pod of pool `web` as the kubelet would report it.
pub fn pod(name: &str, hash: &str, phase: &str, ready: bool, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-11-26T09:00:00Z",
            "labels": {"app.kubernetes.io/managed-by": "webaccel-operator", "webaccel.dev/pool": "web",
                       "webaccel.dev/template-hash": hash}},
        "spec": {"containers": [{"name": "agent", "image": "i"}]},
        "status": {"phase": phase, "podIP": ip,
            "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                            "lastTransitionTime": "2026-11-26T09:00:00Z"}],
            "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": ready,
                                   "restartCount": 0}]}
    }))
    .unwrap()
}
pub fn token_secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-agent-token", "namespace": "ml"},
           "data": {"token": "c2VjcmV0"}})
}

pub fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// A check on a request body.
pub type BodyCheck = Box<dyn Fn(&Value) + Send>;

/// One expected request: method, path (query stripped), and the answer.
pub struct Step {
    pub method: &'static str,
    pub path: String,
    pub reply: (u16, Value),
    /// Extra checks on the request body.
    pub check: Option<BodyCheck>,
}

pub fn step(method: &'static str, path: &str, reply: (u16, Value)) -> Step {
    Step {
        method,
        path: path.to_owned(),
        reply,
        check: None,
    }
}

pub fn step_checked(
    method: &'static str,
    path: &str,
    reply: (u16, Value),
    check: impl Fn(&Value) + Send + 'static,
) -> Step {
    Step {
        method,
        path: path.to_owned(),
        reply,
        check: Some(Box::new(check)),
    }
}

/// Echoes the request body back (what an apply or patch returns, near enough).
pub fn echo() -> (u16, Value) {
    (200, Value::Null)
}

/// Every rule of every Role/ClusterRole in the chart's `rbac.yaml`.
fn operator_rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let rules = rbac::parse("rbac.yaml");
        assert!(rules.len() >= 8, "too few RBAC rules found: {rules:?}");
        rules
    })
}

/// Fails the test unless the chart's RBAC allows the operator the request: checked on
/// every request of every mocked scenario.
fn assert_allowed(method: &str, path: &str, query: &str) {
    if let Some(why) = rbac::refusal(operator_rules(), method, path, query, None) {
        panic!("{why}");
    }
}

/// Serves the steps in order and fails the test on any other request. Returns the bodies
/// seen, for later assertions.
pub fn mock_api(steps: Vec<Step>) -> (Client, tokio::task::JoinHandle<Vec<Value>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for (i, s) in steps.into_iter().enumerate() {
            let (request, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("step {i}: no request came"));
            let path = request.uri().path().to_owned();
            assert_allowed(
                request.method().as_str(),
                &path,
                request.uri().query().unwrap_or(""),
            );
            if let Some(prefix) = s.path.strip_suffix('*') {
                // A generated name: the collection is checked, not the name.
                assert_eq!(request.method().as_str(), s.method, "step {i}");
                assert!(path.starts_with(prefix), "step {i}: {path}");
            } else {
                assert_eq!(
                    (request.method().as_str(), path.as_str()),
                    (s.method, s.path.as_str()),
                    "step {i}"
                );
            }
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if let Some(check) = &s.check {
                check(&body);
            }
            let reply = if s.reply.1.is_null() {
                body.clone()
            } else {
                s.reply.1
            };
            bodies.push(body);
            let response = Response::builder()
                .status(s.reply.0)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(response);
        }
        // Anything more is a request the scenario did not expect.
        if let Ok(Some((request, _))) =
            tokio::time::timeout(std::time::Duration::from_millis(50), handle.next_request()).await
        {
            panic!(
                "unexpected request after the scenario: {} {}",
                request.method(),
                request.uri()
            );
        }
        bodies
    });
    (Client::new(service, "default"), task)
}

/// Agents that answer from tables instead of over HTTP; records what was asked.
///
/// By default every browser can run WebGPU (SwiftShader) and wasm, holds no model, starts a
/// load in the background (`Loading`) and reports it `Loaded` when asked next.
#[derive(Default)]
pub struct FakeAgents {
    pub stats: Mutex<HashMap<String, AgentStats>>,
    pub calls: Mutex<Vec<String>>,
    /// Capabilities answers per pod, used up in order; then the default.
    pub capabilities: Mutex<HashMap<String, Vec<AgentResult<Capabilities>>>>,
    /// What `model()` says per (pod, model).
    pub models: Mutex<HashMap<(String, String), ModelOnAgent>>,
    /// Load answers per pod, used up in order; then `Loading` (and the model loads).
    pub loads: Mutex<HashMap<String, Vec<AgentResult<ModelOnAgent>>>>,
    /// Every load asked for, as the agent received it.
    pub load_specs: Mutex<Vec<ModelSpec>>,
}

/// An agent's error answer, as the typed client returns it.
pub fn refused(path: &str, status: u16, category: webaccel_api::ErrorCategory) -> AgentError {
    AgentError::Refused {
        path: path.into(),
        status,
        category,
        message: format!("{} ({status})", category.as_str()),
    }
}

impl FakeAgents {
    pub fn with_loads(loads: &[(&str, u64)]) -> Arc<Self> {
        let a = Self::default();
        for (pod, load) in loads {
            a.set_load(pod, *load);
        }
        Arc::new(a)
    }

    pub fn set_load(&self, pod: &str, load: u64) {
        self.stats.lock().unwrap().insert(
            pod.to_owned(),
            AgentStats {
                healthy: true,
                ready: true,
                outstanding: load,
                ..AgentStats::default()
            },
        );
    }

    fn note(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }

    /// The load and unload calls made, in order.
    pub fn load_calls(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with("load") || c.starts_with("unload"))
            .collect()
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    pub fn clear_calls(&self) {
        self.calls.lock().unwrap().clear();
    }
}

impl AgentApi for FakeAgents {
    fn stats<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<AgentStats>> {
        Box::pin(async move {
            self.stats
                .lock()
                .unwrap()
                .get(&ep.pod)
                .cloned()
                .ok_or_else(|| AgentError::Unreachable {
                    path: "/v1/stats".into(),
                    message: "connection refused".into(),
                })
        })
    }
    fn capabilities<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<Capabilities>> {
        Box::pin(async move {
            self.note(format!("capabilities {}", ep.pod));
            let scripted = {
                let mut c = self.capabilities.lock().unwrap();
                c.get_mut(&ep.pod)
                    .filter(|l| !l.is_empty())
                    .map(|l| l.remove(0))
            };
            scripted.unwrap_or_else(|| {
                Ok(Capabilities::synthetic(
                    &[webaccel_api::Backend::Webgpu, webaccel_api::Backend::Wasm],
                    "google",
                    "swiftshader",
                ))
            })
        })
    }
    fn model<'a>(
        &'a self,
        ep: &'a Endpoint,
        name: &'a str,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async move {
            self.note(format!("model {} {name}", ep.pod));
            Ok(self
                .models
                .lock()
                .unwrap()
                .get(&(ep.pod.clone(), name.to_owned()))
                .cloned()
                .unwrap_or(ModelOnAgent::Absent))
        })
    }
    fn load<'a>(
        &'a self,
        ep: &'a Endpoint,
        req: &'a ModelSpec,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async move {
            // An ensemble's load names its steps.
            let steps = req.ensemble.as_ref().map_or(String::new(), |e| {
                let names: Vec<&str> = e.steps.iter().map(|s| s.model.as_str()).collect();
                format!(" ensemble[{}]", names.join(","))
            });
            self.note(format!(
                "load {} {} {}{steps}",
                ep.pod, req.name, req.backend
            ));
            self.load_specs.lock().unwrap().push(req.clone());
            let scripted = {
                let mut l = self.loads.lock().unwrap();
                l.get_mut(&ep.pod)
                    .filter(|l| !l.is_empty())
                    .map(|l| l.remove(0))
            };
            if let Some(answer) = scripted {
                return answer;
            }
            // Loads in the background: loaded the next time anyone asks.
            self.models.lock().unwrap().insert(
                (ep.pod.clone(), req.name.clone()),
                ModelOnAgent::Loaded {
                    backend: req.backend.to_string(),
                    init_ms: Some(40.0),
                    precision: Some(webaccel_api::Precision::Fp32),
                    uri: req.uri.clone(),
                    sha256: req.sha256.clone().unwrap_or_default(),
                    memory_bytes: None,
                    settings: Some(Box::new(req.serving())),
                },
            );
            Ok(ModelOnAgent::Loading)
        })
    }
    fn unload<'a>(&'a self, ep: &'a Endpoint, name: &'a str) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async move {
            self.note(format!("unload {} {name}", ep.pod));
            Ok(())
        })
    }
    fn drain<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async move {
            self.note(format!("drain {}", ep.pod));
            Ok(())
        })
    }
}

/// A context over the mocked API, with watch caches the test fills by hand.
pub struct World {
    pub ctx: Arc<Context>,
    pub w: Writers,
}

fn put<K>(w: &mut kube::runtime::reflector::store::Writer<K>, obj: K)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    w.apply_watcher_event(&kube::runtime::watcher::Event::Apply(obj));
}

impl World {
    pub fn new(client: Client, agents: Arc<FakeAgents>) -> Self {
        let (stores, w) = Stores::local();
        let ctx = Arc::new(Context::new(
            client,
            stores,
            agents,
            Arc::new(Metrics::default()),
            Settings::default(),
        ));
        Self { ctx, w }
    }

    /// The pool, and everything it owns as the operator builds it (token Secret, Service,
    /// PDB): what the watch caches of a pool hold once it exists.
    pub fn pool_with_owned(&mut self, p: &BrowserPool) {
        self.pool(p);
        put(&mut self.w.secrets, token_secret_object());
        put(&mut self.w.services, build::service(p));
        put(&mut self.w.pdbs, build::pdb(p));
    }

    pub fn pool(&mut self, p: &BrowserPool) {
        put(&mut self.w.pools, p.clone());
    }

    pub fn pod(&mut self, p: Pod) {
        put(&mut self.w.pods, p);
    }

    pub fn model(&mut self, m: &ModelDeployment) {
        put(&mut self.w.models, m.clone());
    }
}

pub fn token_secret_object() -> k8s_openapi::api::core::v1::Secret {
    let mut s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(token_secret()).unwrap();
    s.metadata.labels = Some(
        [
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "webaccel-operator".to_owned(),
            ),
            ("webaccel.dev/pool".to_owned(), "web".to_owned()),
        ]
        .into(),
    );
    s
}

/// A context with empty caches.
pub fn context(client: Client, agents: Arc<FakeAgents>) -> Arc<Context> {
    World::new(client, agents).ctx
}

pub const POOL: &str = "/apis/webaccel.dev/v1alpha1/namespaces/ml/browserpools/web";
pub const PODS: &str = "/api/v1/namespaces/ml/pods";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ml/events";

/// `status`'s condition of `type_`.
pub fn cond<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

/// `md` as the cache shows it after the status write in `body`.
pub fn with_status(md: &ModelDeployment, body: &Value) -> ModelDeployment {
    let mut md = md.clone();
    md.status =
        Some(serde_json::from_value::<ModelDeploymentStatus>(body["status"].clone()).unwrap());
    md
}

/// A status write of ModelDeployment `md` (in namespace `ml`), checked by `check`.
pub fn status_step(md: &ModelDeployment, check: impl Fn(&Value) + Send + 'static) -> Step {
    let name = md.metadata.name.as_deref().unwrap_or_default();
    step_checked(
        "PATCH",
        &format!("/apis/webaccel.dev/v1alpha1/namespaces/ml/modeldeployments/{name}/status"),
        (200, serde_json::to_value(md).unwrap()),
        check,
    )
}

/// The status writes of a ModelDeployment scenario as they happen, so each look can start
/// from the last one written.
#[derive(Clone, Default)]
pub struct StatusSink(Arc<Mutex<Vec<Value>>>);

impl StatusSink {
    pub fn step(&self, md: &ModelDeployment, check: impl Fn(&Value) + Send + 'static) -> Step {
        let sink = self.clone();
        status_step(md, move |b| {
            check(b);
            sink.0.lock().unwrap().push(b.clone());
        })
    }

    /// `md` with the last status written.
    pub fn applied(&self, md: &ModelDeployment) -> ModelDeployment {
        match self.0.lock().unwrap().last() {
            Some(b) => with_status(md, b),
            None => md.clone(),
        }
    }
}
