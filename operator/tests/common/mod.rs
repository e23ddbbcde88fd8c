//! Test fixtures: object builders, stand-in agents, and a mocked API server that checks
//! each request of a scenario in order (the tower-test pattern of kube's controller-rs).
#![allow(dead_code)]

pub mod rbac;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::{Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use webaccel_api::agent::{AgentStats, Capabilities, ModelSpec};
use webaccel_api::v1alpha1::BrowserPool;
use webaccel_engine::agent::{AgentApi, AgentError, AgentResult, Endpoint, ModelOnAgent};
use webaccel_operator::context::{Context, Settings};
use webaccel_operator::metrics::Metrics;

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

pub fn list(items: Vec<Pod>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items})
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
            rbac::assert_allowed(
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
        bodies
    });
    (Client::new(service, "default"), task)
}

/// Agents that answer from a table instead of over HTTP; records what was asked.
#[derive(Default)]
pub struct FakeAgents {
    pub stats: Mutex<HashMap<String, AgentStats>>,
    pub calls: Mutex<Vec<String>>,
}

impl FakeAgents {
    pub fn with_loads(loads: &[(&str, u64)]) -> Arc<Self> {
        let a = Self::default();
        for (pod, load) in loads {
            a.stats.lock().unwrap().insert(
                (*pod).to_owned(),
                AgentStats {
                    healthy: true,
                    ready: true,
                    outstanding: *load,
                    ..AgentStats::default()
                },
            );
        }
        Arc::new(a)
    }

    fn note(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
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
    fn capabilities<'a>(&'a self, _ep: &'a Endpoint) -> BoxFuture<'a, AgentResult<Capabilities>> {
        Box::pin(async move {
            Ok(Capabilities::synthetic(
                &[webaccel_api::Backend::Webgpu, webaccel_api::Backend::Wasm],
                "google",
                "swiftshader",
            ))
        })
    }
    fn model<'a>(
        &'a self,
        ep: &'a Endpoint,
        name: &'a str,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async move {
            self.note(format!("model {} {name}", ep.pod));
            Ok(ModelOnAgent::Absent)
        })
    }
    fn load<'a>(
        &'a self,
        ep: &'a Endpoint,
        req: &'a ModelSpec,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async move {
            self.note(format!("load {} {} {}", ep.pod, req.name, req.backend));
            Ok(ModelOnAgent::Loaded {
                backend: req.backend.to_string(),
                init_ms: Some(40.0),
            })
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

pub fn context(client: Client, agents: Arc<FakeAgents>) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        agents,
        Arc::new(Metrics::default()),
        Settings::default(),
    ))
}

pub const POOL: &str = "/apis/webaccel.dev/v1alpha1/namespaces/ml/browserpools/web";
pub const PODS: &str = "/api/v1/namespaces/ml/pods";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ml/events";

/// The requests every reconcile of pool `web` starts with: token Secret, Service, PDB.
pub fn owned_objects_exist() -> Vec<Step> {
    vec![
        step(
            "GET",
            "/api/v1/namespaces/ml/secrets/web-agent-token",
            (200, token_secret()),
        ),
        step("PATCH", "/api/v1/namespaces/ml/services/web", echo()),
        step(
            "PATCH",
            "/apis/policy/v1/namespaces/ml/poddisruptionbudgets/web",
            echo(),
        ),
    ]
}
