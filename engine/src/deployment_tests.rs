use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use webaccel_agent_client::AgentResult;
use webaccel_api::ErrorCategory;
use webaccel_api::agent::{AgentStats, Capabilities};

use super::*;

/// Agents as a table: each (browser, model) answers what it holds; loads and unloads are
/// noted and change the table as an agent would.
#[derive(Default)]
struct Table {
    held: Mutex<HashMap<(String, String), ModelOnAgent>>,
    refuse: Mutex<Option<AgentError>>,
    calls: Mutex<Vec<String>>,
}

impl Table {
    fn hold(&self, pod: &str, model: &str, state: ModelOnAgent) {
        self.held
            .lock()
            .unwrap()
            .insert((pod.into(), model.into()), state);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl AgentApi for Table {
    fn stats<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, AgentResult<AgentStats>> {
        Box::pin(async { Ok(AgentStats::default()) })
    }
    fn capabilities<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, AgentResult<Capabilities>> {
        Box::pin(async { Ok(caps()) })
    }
    fn model<'a>(
        &'a self,
        ep: &'a Endpoint,
        name: &'a str,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async move {
            if let Some(e) = self.refuse.lock().unwrap().clone() {
                return Err(e);
            }
            Ok(self
                .held
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
        spec: &'a ModelSpec,
    ) -> BoxFuture<'a, AgentResult<ModelOnAgent>> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push(format!("load {} {} {}", ep.pod, spec.name, spec.backend));
            self.hold(&ep.pod, &spec.name, ModelOnAgent::Loading);
            Ok(ModelOnAgent::Loading)
        })
    }
    fn unload<'a>(&'a self, ep: &'a Endpoint, name: &'a str) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push(format!("unload {} {name}", ep.pod));
            self.held
                .lock()
                .unwrap()
                .remove(&(ep.pod.clone(), name.to_owned()));
            Ok(())
        })
    }
    fn drain<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, AgentResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

fn caps() -> Capabilities {
    Capabilities::synthetic(&[Backend::Wasm], "google", "swiftshader")
}

fn seat<'a>(name: &'a str, caps: &'a Capabilities) -> Seat<'a> {
    Seat {
        name,
        endpoint: Some(Endpoint {
            pod: name.to_owned(),
            base_url: format!("http://{name}"),
            token: None,
        }),
        askable: true,
        draining: false,
        cordoned: false,
        leaving: false,
        capabilities: Some(caps),
        models_held: 0,
        room: None,
    }
}

fn loaded(sha256: &str) -> ModelOnAgent {
    loaded_as(sha256, None)
}

/// A loaded copy of `file:///m.onnx` whose agent says it serves with `settings`.
fn loaded_as(sha256: &str, settings: Option<&ModelSpec>) -> ModelOnAgent {
    ModelOnAgent::Loaded {
        backend: "wasm".into(),
        init_ms: Some(3.0),
        precision: None,
        uri: "file:///m.onnx".into(),
        sha256: sha256.into(),
        memory_bytes: None,
        settings: settings.map(|s| Box::new(s.serving())),
    }
}

/// A load of model `name` from `uri` with digest `sha256`, as the agents read it.
fn spec(name: &str, uri: &str, sha256: Option<&str>, backend: Backend) -> ModelSpec {
    serde_json::from_value(serde_json::json!({
        "name": name, "uri": uri, "sha256": sha256, "backend": backend,
    }))
    .unwrap()
}

fn spec_for(sha256: &str) -> impl Fn(usize, Backend) -> ModelSpec + Sync + '_ {
    move |_, backend| spec("m", "file:///m.onnx", Some(sha256), backend)
}

fn deployment<'a>(units: &'a [Unit], previous: &'a [Vec<ReplicaStatus>]) -> Deployment<'a> {
    Deployment {
        units,
        staged: false,
        replicas: 1,
        backends: &[Backend::Wasm],
        pool_backends: &[Backend::Wasm],
        pool_desired: 2,
        previous,
        same_spec: true,
    }
}

fn units() -> Vec<Unit> {
    vec![Unit {
        name: "m".into(),
        steps: Vec::new(),
    }]
}

#[tokio::test]
async fn a_model_is_loaded_on_a_free_browser_and_reported_loading() {
    let agents = Table::default();
    let c = caps();
    let units = units();
    let placed = place(
        &agents,
        &deployment(&units, &[]),
        &[seat("a", &c)],
        &spec_for("aa"),
    )
    .await;
    assert_eq!(agents.calls(), ["load a m wasm"]);
    assert_eq!(
        placed.placements[0].replicas[0].state,
        ReplicaState::Loading
    );
    assert!(placed.busy());
}

#[tokio::test]
async fn a_changed_digest_renews_the_copy_beside_the_old_one() {
    let agents = Table::default();
    agents.hold("a", "m", loaded("aa"));
    let c = caps();
    let units = units();
    let seats = [seat("a", &c), seat("b", &c)];
    // Same digest: nothing to do.
    let placed = place(&agents, &deployment(&units, &[]), &seats, &spec_for("aa")).await;
    assert!(agents.calls().is_empty(), "{:?}", agents.calls());
    assert!(!placed.busy());
    // A new digest: a copy of the new file on b while a serves.
    let placed = place(&agents, &deployment(&units, &[]), &seats, &spec_for("bb")).await;
    assert_eq!(agents.calls(), ["load b m wasm"]);
    let a = &placed.placements[0].replicas[0];
    assert_eq!((a.pod.as_str(), a.state), ("a", ReplicaState::Loaded));
    // b has loaded the new file: a gives its copy up.
    agents.hold("b", "m", loaded("bb"));
    place(&agents, &deployment(&units, &[]), &seats, &spec_for("bb")).await;
    assert_eq!(agents.calls(), ["load b m wasm", "unload a m"]);
}

#[tokio::test]
async fn an_agent_that_cannot_answer_keeps_its_replica_reported_pending() {
    let agents = Table::default();
    *agents.refuse.lock().unwrap() = Some(AgentError::Refused {
        path: "/v1/repository/models/m".into(),
        status: 401,
        category: ErrorCategory::Unauthorized,
        message: "invalid bearer token".into(),
    });
    let c = caps();
    let units = units();
    let previous = vec![vec![ReplicaStatus::new("a", ReplicaState::Loaded)]];
    let placed = place(
        &agents,
        &deployment(&units, &previous),
        &[seat("a", &c)],
        &spec_for("aa"),
    )
    .await;
    assert!(placed.unauthorized);
    let r = &placed.placements[0].replicas[0];
    assert_eq!(r.state, ReplicaState::Pending);
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .starts_with("agent unauthorized"),
        "{r:?}"
    );
    assert!(
        agents.calls().is_empty(),
        "no load on a browser that cannot answer"
    );
}

#[tokio::test]
async fn a_failure_reported_for_this_spec_keeps_the_browser_out() {
    let agents = Table::default();
    let c = caps();
    let units = units();
    let mut failed = ReplicaStatus::new("a", ReplicaState::FailedToLoad);
    failed.reason = Some("sha256 mismatch".into());
    let previous = vec![vec![failed]];
    let placed = place(
        &agents,
        &deployment(&units, &previous),
        &[seat("a", &c)],
        &spec_for("aa"),
    )
    .await;
    assert!(agents.calls().is_empty());
    assert_eq!(
        placed.placements[0].replicas[0].state,
        ReplicaState::FailedToLoad
    );
    // A new spec tries again.
    let d = Deployment {
        same_spec: false,
        ..deployment(&units, &previous)
    };
    place(&agents, &d, &[seat("a", &c)], &spec_for("aa")).await;
    assert_eq!(agents.calls(), ["load a m wasm"]);
}

#[tokio::test]
async fn an_ensemble_waits_for_a_browser_holding_its_steps() {
    let agents = Table::default();
    let c = caps();
    let units = vec![Unit {
        name: "pipe".into(),
        steps: vec!["first".into(), "second".into()],
    }];
    agents.hold("a", "first", loaded("aa"));
    let placed = place(
        &agents,
        &deployment(&units, &[]),
        &[seat("a", &c)],
        &spec_for("aa"),
    )
    .await;
    assert!(agents.calls().is_empty());
    assert!(
        placed.placements[0]
            .unplaced_reason
            .as_deref()
            .unwrap()
            .contains("every step loaded (first, second)")
    );
    agents.hold("a", "second", loaded("aa"));
    place(
        &agents,
        &deployment(&units, &[]),
        &[seat("a", &c)],
        &spec_for("aa"),
    )
    .await;
    assert_eq!(agents.calls(), ["load a m wasm"]);
}

#[test]
fn a_copy_is_stale_when_its_digest_or_uri_differs_from_the_wanted_one() {
    let want = |sha: Option<&str>, uri: &str| spec("m", uri, sha, Backend::Wasm);
    assert!(!stale(&loaded("aa"), &want(Some("AA"), "file:///m.onnx")));
    assert!(stale(&loaded("aa"), &want(Some("bb"), "file:///m.onnx")));
    assert!(!stale(&loaded("aa"), &want(None, "file:///m.onnx")));
    assert!(stale(&loaded("aa"), &want(None, "file:///other.onnx")));
    assert!(!stale(&ModelOnAgent::Loading, &want(Some("bb"), "x")));
}

/// A re-applied deployment with other serving settings renews its running copies: the
/// soak re-applies a batched model with another queue delay, which used to stay on the
/// old one until something else reloaded it.
#[test]
fn a_copy_is_stale_when_it_serves_with_other_settings_than_the_spec() {
    let mut want = spec("m", "file:///m.onnx", Some("aa"), Backend::Wasm);
    want.max_batch_size = 8;
    want.max_queue_delay_us = 500;
    let held = |spec: &ModelSpec| loaded_as("aa", Some(spec));
    assert!(!stale(&held(&want), &want));
    let mut before = want.clone();
    before.max_queue_delay_us = 400;
    assert!(stale(&held(&before), &want));
    // What does not change how it serves does not renew it.
    let mut other = want.clone();
    other.warmup = false;
    other.task = "vision".into();
    assert!(!stale(&held(&other), &want));
    // An agent that did not say keeps its copy.
    assert!(!stale(&loaded("aa"), &want));
}

#[test]
fn only_the_models_own_failure_is_failed_to_load() {
    let refused = |status, category| AgentError::Refused {
        path: "/v1/repository/models".into(),
        status,
        category,
        message: "no".into(),
    };
    for e in [
        refused(401, ErrorCategory::Unauthorized),
        refused(403, ErrorCategory::Unauthorized),
        refused(503, ErrorCategory::BrowserUnavailable),
        AgentError::Unreachable {
            path: "/v1/repository/models".into(),
            message: "connection refused".into(),
        },
    ] {
        let mut r = ReplicaStatus::new("p", ReplicaState::Loading);
        replica_after_load(&mut r, Err(e.clone()));
        assert_eq!(r.state, ReplicaState::Pending, "{e}");
        assert!(r.reason.unwrap().contains(e.label()));
    }
    let mut r = ReplicaStatus::new("p", ReplicaState::Loading);
    replica_after_load(&mut r, Ok(ModelOnAgent::Failed("sha256 mismatch".into())));
    assert_eq!(r.state, ReplicaState::FailedToLoad);
}

#[tokio::test]
async fn a_models_measured_memory_is_kept_and_places_it_only_where_it_fits() {
    const MIB: u64 = 1 << 20;
    let agents = Table::default();
    let c = caps();
    let units = units();
    // The model was unloaded (scaled to zero); its last status says what it took.
    let mut gone = ReplicaStatus::new("a", ReplicaState::Loaded);
    gone.memory_bytes = Some(400 * MIB);
    let previous = [vec![gone]];
    let room = |name, mib: u64| Seat {
        room: Some(mib * MIB),
        ..seat(name, &c)
    };
    let placed = place(
        &agents,
        &deployment(&units, &previous),
        &[room("a", 100), room("b", 300)],
        &spec_for("aa"),
    )
    .await;
    assert!(agents.calls().is_empty(), "{:?}", agents.calls());
    assert_eq!(placed.placements[0].unplaced_for_room, 1);
    // A browser with room takes it, and its load's measurement is reported.
    agents.hold(
        "c",
        "m",
        ModelOnAgent::Loaded {
            backend: "wasm".into(),
            init_ms: Some(3.0),
            precision: None,
            uri: "file:///m.onnx".into(),
            sha256: "aa".into(),
            memory_bytes: Some(410 * MIB),
            settings: None,
        },
    );
    let placed = place(
        &agents,
        &deployment(&units, &previous),
        &[room("a", 100), room("c", 0)],
        &spec_for("aa"),
    )
    .await;
    let r = &placed.placements[0].replicas[0];
    assert_eq!((r.pod.as_str(), r.memory_bytes), ("c", Some(410 * MIB)));
}
