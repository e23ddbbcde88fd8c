//! The BrowserPool controller against a mocked API server: each test is one scenario, and
//! the mock checks every request in order (and that nothing else is asked). The watch
//! caches are filled by hand, as the watches would fill them.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use webaccel_crds::v1alpha1::{BrowserPool, BrowserPoolStatus};
use webaccel_operator::poll::{Wake, poll_pool};
use webaccel_operator::pool::build::template_hash;
use webaccel_operator::pool::reconcile::reconcile;

pub const SPEC: &str = "  image: reg/browser:1\n  replicas: 2\n";
const AUTOSCALED: &str = "  image: reg/browser:1\n  replicas: 1\n  autoscaling: {enabled: true, minReplicas: 1, maxReplicas: 5, targetInFlightPerBrowser: 4}\n";

pub fn pool_with_status(p: &BrowserPool) -> (u16, Value) {
    (200, serde_json::to_value(p).unwrap())
}

/// `p` as the cache shows it after the status write in `body`.
fn with_written_status(p: &BrowserPool, body: &Value) -> BrowserPool {
    let mut p = p.clone();
    p.status = Some(serde_json::from_value::<BrowserPoolStatus>(body["status"].clone()).unwrap());
    p.metadata.resource_version = Some("2".into());
    p
}

pub fn regarding(b: &Value) -> (&str, &str, &str) {
    (
        b["regarding"]["kind"].as_str().unwrap_or(""),
        b["regarding"]["name"].as_str().unwrap_or(""),
        b["related"]["name"].as_str().unwrap_or(""),
    )
}

/// Like `mock_api`, but a step with an empty path matches any path under the pods
/// collection (generated pod names).
fn mock_api_paths_relaxed(steps: Vec<Step>) -> (kube::Client, tokio::task::JoinHandle<Vec<Value>>) {
    let steps = steps
        .into_iter()
        .map(|s| {
            if s.path.is_empty() {
                Step {
                    path: format!("{PODS}/*"),
                    ..s
                }
            } else {
                s
            }
        })
        .collect();
    mock_api(steps)
}

fn pod_create(hash: &str) -> Step {
    let hash = hash.to_owned();
    Step {
        method: "PATCH",
        path: String::new(), // pod names are random; checked below
        reply: echo(),
        check: Some(Box::new(move |b: &Value| {
            assert_eq!(
                b["metadata"]["labels"]["webaccel.dev/template-hash"],
                hash.as_str()
            );
            assert!(b["metadata"]["name"].as_str().unwrap().starts_with("web-"));
        })),
    }
}

#[tokio::test]
async fn a_new_pool_gets_its_secret_service_pdb_and_pods_then_status_once() {
    let p = pool(SPEC);
    let hash = template_hash(&p);
    let steps = vec![
        step_checked(
            "POST",
            "/api/v1/namespaces/ml/secrets",
            (201, token_secret()),
            |b| {
                assert_eq!(b["metadata"]["ownerReferences"][0]["name"], "web");
                assert_eq!(b["stringData"]["token"].as_str().unwrap().len(), 40);
            },
        ),
        step_checked("PATCH", "/api/v1/namespaces/ml/services/web", echo(), |b| {
            assert_eq!(b["spec"]["clusterIP"], "None");
        }),
        step(
            "PATCH",
            "/apis/policy/v1/namespaces/ml/poddisruptionbudgets/web",
            echo(),
        ),
        pod_create(&hash),
        pod_create(&hash),
        step_checked(
            "PATCH",
            &format!("{POOL}/status"),
            pool_with_status(&p),
            |b| {
                // A server-side apply of the status: the body names the object's kind.
                assert_eq!(
                    (b["apiVersion"].as_str(), b["kind"].as_str()),
                    (Some("webaccel.dev/v1alpha1"), Some("BrowserPool"))
                );
                let s = &b["status"];
                assert_eq!(s["desiredReplicas"], 2);
                assert_eq!(s["observedGeneration"], 3);
                assert_eq!(
                    s["selector"],
                    "app.kubernetes.io/managed-by=webaccel-operator,webaccel.dev/pool=web"
                );
                // The two pods just created are counted.
                assert_eq!(s["replicas"], 2);
                let progressing = cond(s, "Progressing");
                assert_eq!(
                    (
                        progressing["status"].as_str(),
                        progressing["reason"].as_str()
                    ),
                    (Some("True"), Some("ScalingUp"))
                );
            },
        ),
        // Woken again before the watches deliver what it wrote (the caches show no Secret,
        // Service, PDB, pods or status yet): nothing is written twice, no pod created
        // again; only the status moves on, from creating to starting.
        step_checked(
            "PATCH",
            &format!("{POOL}/status"),
            pool_with_status(&p),
            |b| {
                assert_eq!(b["status"]["replicas"], 2);
                assert_eq!(b["status"]["readyReplicas"], 0);
                assert_eq!(cond(&b["status"], "Progressing")["reason"], "Starting");
            },
        ),
    ];
    let (client, api) = mock_api_paths_relaxed(steps);
    let mut world = World::new(client, FakeAgents::with_loads(&[]));
    world.pool(&p);
    reconcile(Arc::new(p.clone()), world.ctx.clone())
        .await
        .unwrap();
    reconcile(Arc::new(p.clone()), world.ctx.clone())
        .await
        .unwrap();
    // And once more: nothing left to write.
    reconcile(Arc::new(p), world.ctx.clone()).await.unwrap();
    api.await.unwrap();
}

#[tokio::test]
async fn a_failed_pod_is_replaced_with_an_event_on_the_pod_and_degraded_status() {
    let p = pool(SPEC);
    let hash = template_hash(&p);
    let steps = vec![
        step(
            "DELETE",
            &format!("{PODS}/web-bad"),
            (
                200,
                serde_json::to_value(pod("web-bad", &hash, "Failed", false, "")).unwrap(),
            ),
        ),
        step_checked("POST", EVENTS, echo(), |b| {
            assert_eq!(b["reason"], "BrowserReplaced");
            assert_eq!(b["type"], "Warning");
            assert_eq!(regarding(b), ("Pod", "web-bad", "web"));
            assert!(
                b["note"]
                    .as_str()
                    .unwrap()
                    .contains("web-bad: pod phase Failed"),
                "{b}"
            );
        }),
        Step {
            method: "PATCH",
            path: String::new(),
            reply: echo(),
            check: None,
        },
        step_checked(
            "PATCH",
            &format!("{POOL}/status"),
            pool_with_status(&p),
            |b| {
                let degraded = cond(&b["status"], "Degraded");
                assert_eq!(
                    (degraded["status"].as_str(), degraded["reason"].as_str()),
                    (Some("True"), Some("Healing"))
                );
                assert_eq!(b["status"]["readyReplicas"], 1);
            },
        ),
    ];
    let (client, api) = mock_api_paths_relaxed(steps);
    let mut world = World::new(client, FakeAgents::with_loads(&[("web-ok", 0)]));
    world.pool_with_owned(&p);
    world.pod(pod("web-ok", &hash, "Running", true, "10.0.0.1"));
    world.pod(pod("web-bad", &hash, "Failed", false, ""));
    reconcile(Arc::new(p), world.ctx.clone()).await.unwrap();
    api.await.unwrap();
}

#[tokio::test]
async fn each_pods_drain_and_deletion_is_an_event_of_its_own() {
    let p = pool("  image: reg/browser:1\n  replicas: 1\n");
    let hash = template_hash(&p);
    let agents = FakeAgents::with_loads(&[("web-busy", 7), ("web-idle1", 0), ("web-idle2", 0)]);
    let mut steps = Vec::new();
    for name in ["web-idle1", "web-idle2"] {
        let reply = (
            200,
            serde_json::to_value(pod(name, &hash, "Running", true, "")).unwrap(),
        );
        steps.push(step_checked(
            "PATCH",
            &format!("{PODS}/{name}"),
            reply,
            |b| {
                assert!(b["metadata"]["annotations"]["webaccel.dev/draining"].is_string());
            },
        ));
        // Each pod's drain is an Event regarding that pod (a create, not a repeat of the
        // first pod's), with the pool as the related object.
        steps.push(step_checked("POST", EVENTS, echo(), move |b| {
            assert_eq!(b["reason"], "Draining");
            assert_eq!(regarding(b), ("Pod", name, "web"));
            assert_eq!(b["note"], format!("{name}: scaling down"));
        }));
    }
    steps.push(step_checked(
        "PATCH",
        &format!("{POOL}/status"),
        pool_with_status(&p),
        |b| {
            let notes: Vec<&str> = b["status"]["browsers"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|x| x["note"].as_str())
                .collect();
            assert_eq!(notes, ["scaling down", "scaling down"]);
        },
    ));
    // Next round: both drained browsers are idle and go, each with its own Event.
    for name in ["web-idle1", "web-idle2"] {
        steps.push(step(
            "DELETE",
            &format!("{PODS}/{name}"),
            (
                200,
                serde_json::to_value(pod(name, &hash, "Running", true, "")).unwrap(),
            ),
        ));
        steps.push(step_checked("POST", EVENTS, echo(), move |b| {
            assert_eq!(b["reason"], "BrowserDeleted");
            assert_eq!(regarding(b), ("Pod", name, "web"));
        }));
    }
    steps.push(step_checked(
        "PATCH",
        &format!("{POOL}/status"),
        pool_with_status(&p),
        |b| {
            assert_eq!(b["status"]["replicas"], 1);
        },
    ));
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    for (i, name) in ["web-busy", "web-idle1", "web-idle2"].iter().enumerate() {
        world.pod(pod(
            name,
            &hash,
            "Running",
            true,
            &format!("10.0.0.{}", i + 1),
        ));
    }
    reconcile(Arc::new(p.clone()), world.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        agents
            .calls()
            .iter()
            .filter(|c| c.starts_with("drain"))
            .count(),
        2
    );
    // The watch brings the marked pods (the mark is the same the operator wrote).
    for (i, name) in ["web-idle1", "web-idle2"].iter().enumerate() {
        let mut marked = pod(name, &hash, "Running", true, &format!("10.0.0.{}", i + 2));
        marked.metadata.annotations = Some(
            [(
                "webaccel.dev/draining".to_owned(),
                k8s_openapi::jiff::Timestamp::now().to_string(),
            )]
            .into(),
        );
        world.pod(marked);
    }
    reconcile(Arc::new(p), world.ctx.clone()).await.unwrap();
    api.await.unwrap();
    assert_eq!(
        agents
            .calls()
            .iter()
            .filter(|c| c.starts_with("drain"))
            .collect::<Vec<_>>(),
        ["drain web-idle1", "drain web-idle2"]
    );
}

#[tokio::test]
async fn a_status_conflict_fails_the_reconcile_as_a_conflict() {
    let p = pool("  image: reg/browser:1\n  replicas: 0\n");
    let steps = vec![step(
        "PATCH",
        &format!("{POOL}/status"),
        (
            409,
            json!({"kind": "Status", "apiVersion": "v1",
        "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
        ),
    )];
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, FakeAgents::with_loads(&[]));
    world.pool_with_owned(&p);
    let err = reconcile(Arc::new(p), world.ctx.clone()).await.unwrap_err();
    assert_eq!(err.metric_label(), "conflict");
    api.await.unwrap();
}

#[tokio::test]
async fn before_the_caches_are_filled_nothing_is_decided_or_written() {
    let (client, api) = mock_api(vec![]);
    let (stores, _writers) = webaccel_operator::stores::Stores::shared(16);
    let ctx = Arc::new(webaccel_operator::context::Context::new(
        client,
        stores,
        FakeAgents::with_loads(&[]),
        Arc::new(webaccel_operator::metrics::Metrics::default()),
        webaccel_operator::context::Settings::default(),
    ));
    let action = reconcile(Arc::new(pool(SPEC)), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_millis(500)));
    api.await.unwrap();
}

#[tokio::test]
async fn a_settled_pool_costs_no_request_and_wakes_nothing() {
    let p = pool(SPEC);
    let hash = template_hash(&p);
    let agents = FakeAgents::with_loads(&[("web-a", 0), ("web-b", 0)]);
    // The first look writes the status once.
    let (client, api) = mock_api(vec![step(
        "PATCH",
        &format!("{POOL}/status"),
        pool_with_status(&p),
    )]);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    world.pod(pod("web-b", &hash, "Running", true, "10.0.0.2"));
    reconcile(Arc::new(p.clone()), world.ctx.clone())
        .await
        .unwrap();
    let bodies = api.await.unwrap();
    assert_eq!(bodies[0]["status"]["backends"], "wasm,webgpu(software)");

    // The status write comes back through the watch: the reconcile it wakes, the next
    // resync, and every poll of the agents write nothing and read nothing from the API.
    let settled = with_written_status(&p, &bodies[0]);
    let (client, api) = mock_api(vec![]);
    let mut world2 = World::new(client, agents.clone());
    world2.pool_with_owned(&settled);
    world2.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    world2.pod(pod("web-b", &hash, "Running", true, "10.0.0.2"));
    // (This process just started: the first poll learns the browsers' capabilities,
    // which concerns the pool's models, not the pool.)
    assert!(!poll_pool(&world2.ctx, &settled).await.pool);
    for _ in 0..3 {
        assert_eq!(
            poll_pool(&world2.ctx, &settled).await,
            Wake::default(),
            "nothing changed"
        );
        let action = reconcile(Arc::new(settled.clone()), world2.ctx.clone())
            .await
            .unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    }
    // The load moves: that alone is not written (nor does it wake the reconcile) until
    // the status' load figures are a minute old.
    agents.set_load("web-a", 3);
    assert_eq!(poll_pool(&world2.ctx, &settled).await, Wake::default());
    // An agent that reports itself broken is something to act on.
    agents
        .stats
        .lock()
        .unwrap()
        .get_mut("web-b")
        .unwrap()
        .healthy = false;
    assert!(poll_pool(&world2.ctx, &settled).await.pool);
    api.await.unwrap();
}

#[tokio::test]
async fn the_poller_wakes_an_autoscaled_pool_only_when_its_size_decision_changes() {
    let p = pool(AUTOSCALED);
    let hash = template_hash(&p);
    let agents = FakeAgents::with_loads(&[("web-a", 0)]);
    let (client, api) = mock_api(vec![step(
        "PATCH",
        &format!("{POOL}/status"),
        pool_with_status(&p),
    )]);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    reconcile(Arc::new(p.clone()), world.ctx.clone())
        .await
        .unwrap();
    let bodies = api.await.unwrap();
    let settled = with_written_status(&p, &bodies[0]);

    let (client, api) = mock_api(vec![]);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&settled);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    world.ctx.with_pool("ml/web", |m| m.last_desired = Some(1));
    assert!(!poll_pool(&world.ctx, &settled).await.pool);
    for _ in 0..5 {
        assert_eq!(poll_pool(&world.ctx, &settled).await, Wake::default());
    }
    agents.set_load("web-a", 12);
    assert!(
        poll_pool(&world.ctx, &settled).await.pool,
        "load 12 at 4 per browser wants 3 browsers"
    );
    // Polling costs no API request.
    api.await.unwrap();
}

#[tokio::test]
async fn a_firefox_pool_gets_pods_that_run_the_agent_with_firefox() {
    // The Firefox image `scripts/images.sh build firefox` makes (browser-images/firefox).
    let p = pool(
        "  image: ghcr.io/webaccel/browser-firefox:0.1.0\n  browser: firefox\n  replicas: 1\n",
    );
    let hash = template_hash(&p);
    let steps = vec![
        step(
            "POST",
            "/api/v1/namespaces/ml/secrets",
            (201, token_secret()),
        ),
        step("PATCH", "/api/v1/namespaces/ml/services/web", echo()),
        step(
            "PATCH",
            "/apis/policy/v1/namespaces/ml/poddisruptionbudgets/web",
            echo(),
        ),
        Step {
            check: Some(Box::new(move |b: &Value| {
                assert_eq!(
                    b["metadata"]["labels"]["webaccel.dev/template-hash"],
                    hash.as_str()
                );
                let agent = &b["spec"]["containers"][0];
                assert_eq!(agent["image"], "ghcr.io/webaccel/browser-firefox:0.1.0");
                let args: Vec<&str> = agent["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                assert!(args.contains(&"--browser=firefox"), "{args:?}");
                assert!(args.contains(&"--browser-binary=firefox-esr"), "{args:?}");
            })),
            ..pod_create("")
        },
        step_checked(
            "PATCH",
            &format!("{POOL}/status"),
            pool_with_status(&p),
            |b| {
                let s = &b["status"];
                assert_eq!(s["replicas"], 1);
                assert_ne!(cond(s, "Ready")["reason"], "InvalidSpec");
                assert_eq!(cond(s, "Progressing")["reason"], "ScalingUp");
            },
        ),
    ];
    let (client, api) = mock_api_paths_relaxed(steps);
    let mut world = World::new(client, FakeAgents::with_loads(&[]));
    world.pool(&p);
    reconcile(Arc::new(p), world.ctx.clone()).await.unwrap();
    api.await.unwrap();
}

#[tokio::test]
async fn a_firefox_pool_allowing_only_webnn_is_refused_with_a_condition_and_an_event_once() {
    let p = pool("  image: reg/browser:1\n  browser: firefox\n  backends: [webnn]\n");
    let steps = vec![
        step_checked("POST", EVENTS, echo(), |b| {
            assert_eq!(b["reason"], "InvalidSpec")
        }),
        step_checked(
            "PATCH",
            &format!("{POOL}/status"),
            pool_with_status(&p),
            |b| {
                let ready = &b["status"]["conditions"][0];
                assert_eq!(ready["reason"], "InvalidSpec");
                assert!(ready["message"].as_str().unwrap().contains("no WebNN"));
            },
        ),
    ];
    let (client, api) = mock_api(steps);
    let world = World::new(client, FakeAgents::with_loads(&[]));
    reconcile(Arc::new(p.clone()), world.ctx.clone())
        .await
        .unwrap();
    let bodies = api.await.unwrap();
    // Looked at again with the refusal in its status: no new Event, no write.
    let (client, api) = mock_api(vec![]);
    let world = World::new(client, FakeAgents::with_loads(&[]));
    let refused = with_written_status(&p, &bodies[1]);
    reconcile(Arc::new(refused), world.ctx.clone())
        .await
        .unwrap();
    api.await.unwrap();
}

#[tokio::test]
async fn autoscaling_follows_agent_load_with_an_event_and_the_reason_in_status() {
    let mut p = pool(AUTOSCALED);
    p.status = Some(BrowserPoolStatus {
        desired_replicas: 1,
        ..Default::default()
    });
    let hash = template_hash(&p);
    let mut steps = vec![step_checked("POST", EVENTS, echo(), |b| {
        assert_eq!(b["reason"], "Scaled");
        assert_eq!(regarding(b), ("BrowserPool", "web", ""));
        assert_eq!(
            b["note"],
            "3 browsers: load 12 over 1 browsers, target 4/browser → 3"
        );
    })];
    for _ in 0..2 {
        steps.push(step("PATCH", &format!("{PODS}/*"), echo()));
    }
    steps.push(step_checked(
        "PATCH",
        &format!("{POOL}/status"),
        pool_with_status(&p),
        |b| {
            assert_eq!(b["status"]["desiredReplicas"], 3);
            assert_eq!(
                b["status"]["lastScaleReason"],
                "load 12 over 1 browsers, target 4/browser → 3"
            );
            assert_eq!(b["status"]["browsers"][0]["load"], 12);
        },
    ));
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, FakeAgents::with_loads(&[("web-a", 12)]));
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    let ctx = world.ctx.clone();
    let action = reconcile(Arc::new(p), ctx.clone()).await.unwrap();
    api.await.unwrap();
    let decisions = r#"webaccel_operator_scale_decisions_total{namespace="ml",pool="web",direction="up",cause="load"} 1"#;
    assert!(
        ctx.metrics.encode().contains(decisions),
        "{}",
        ctx.metrics.encode()
    );
    // New browsers are starting: looked at again soon (the poller watches the load).
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
}

#[tokio::test]
async fn a_deleted_pools_metric_series_and_memory_are_forgotten() {
    let p = pool("  image: reg/browser:1\n  replicas: 0\n");
    let steps = vec![step(
        "PATCH",
        &format!("{POOL}/status"),
        pool_with_status(&p),
    )];
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, FakeAgents::with_loads(&[]));
    world.pool_with_owned(&p);
    let ctx = world.ctx.clone();
    reconcile(Arc::new(p), ctx.clone()).await.unwrap();
    api.await.unwrap();
    let series = r#"webaccel_operator_pool_browsers{namespace="ml",pool="web",kind="desired"} 0"#;
    assert!(
        ctx.metrics.encode().contains(series),
        "{}",
        ctx.metrics.encode()
    );
    ctx.forget_pools_except(|key| key != "ml/web");
    assert!(
        !ctx.metrics.encode().contains("pool=\"web\""),
        "{}",
        ctx.metrics.encode()
    );
    assert_eq!(ctx.with_pool("ml/web", |m| m.last_desired), None);
}

/// The pool side of a pool applied with its model: the agent of a ready browser answers
/// 503 for its capabilities while its browser starts; the status shows no backends then,
/// and the poller, once the agent knows them, wakes the pool (and its models) to report
/// them. Nothing failed is cached.
#[tokio::test]
async fn the_pools_backends_appear_once_its_agents_know_them() {
    let p = pool("  image: reg/browser:1\n  replicas: 1\n");
    let hash = template_hash(&p);
    let agents = FakeAgents::with_loads(&[("web-a", 0)]);
    agents.capabilities.lock().unwrap().insert(
        "web-a".into(),
        vec![Err(refused(
            "/v1/capabilities",
            503,
            webaccel_api::ErrorCategory::BrowserUnavailable,
        ))],
    );
    let steps = vec![
        step_checked(
            "PATCH",
            &format!("{POOL}/status"),
            pool_with_status(&p),
            |b| {
                assert!(b["status"]["backends"].is_null(), "{b}");
            },
        ),
        step_checked(
            "PATCH",
            &format!("{POOL}/status"),
            pool_with_status(&p),
            |b| {
                assert_eq!(b["status"]["backends"], "wasm,webgpu(software)");
                assert_eq!(
                    b["status"]["browsers"][0]["adapter"],
                    "google swiftshader (software)"
                );
            },
        ),
    ];
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    reconcile(Arc::new(p.clone()), world.ctx.clone())
        .await
        .unwrap();
    assert!(world.ctx.cached_capabilities("uid-web-a").is_none());
    let wake = poll_pool(&world.ctx, &p).await;
    assert_eq!(
        wake,
        Wake {
            pool: true,
            models: true
        }
    );
    reconcile(Arc::new(p), world.ctx.clone()).await.unwrap();
    api.await.unwrap();
}

/// A token Secret the user names (not the operator's, so not in its watch cache) is read
/// once, not on every pass.
#[tokio::test]
async fn a_user_named_token_secret_is_read_once() {
    let p = pool("  image: reg/browser:1\n  replicas: 0\n  tokenSecretName: mine\n");
    let mut secret = token_secret();
    secret["metadata"]["name"] = json!("mine");
    let steps = vec![
        step("GET", "/api/v1/namespaces/ml/secrets/mine", (200, secret)),
        step("PATCH", &format!("{POOL}/status"), pool_with_status(&p)),
    ];
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, FakeAgents::with_loads(&[]));
    world.pool(&p);
    world
        .w
        .services
        .apply_watcher_event(&kube::runtime::watcher::Event::Apply(
            webaccel_operator::pool::build::service(&p),
        ));
    world
        .w
        .pdbs
        .apply_watcher_event(&kube::runtime::watcher::Event::Apply(
            webaccel_operator::pool::build::pdb(&p),
        ));
    for _ in 0..3 {
        let action = reconcile(Arc::new(p.clone()), world.ctx.clone())
            .await
            .unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    }
    assert_eq!(world.ctx.token_of(&p).as_deref(), Some("secret"));
    api.await.unwrap();
}
