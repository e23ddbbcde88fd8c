//! The BrowserPool controller against a mocked API server: each test is one scenario, and
//! the mock checks every request in order.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{Value, json};
use webaccel_operator::pool::build::template_hash;
use webaccel_operator::pool::reconcile::reconcile;

const SPEC: &str = "  image: reg/browser:1\n  replicas: 2\n";

fn pool_with_status(p: &webaccel_api::v1alpha1::BrowserPool) -> (u16, Value) {
    (200, serde_json::to_value(p).unwrap())
}

#[tokio::test]
async fn a_new_pool_gets_its_secret_service_pdb_and_pods_then_status() {
    let p = pool(SPEC);
    let hash = template_hash(&p);
    let mut steps = vec![
        step(
            "GET",
            "/api/v1/namespaces/ml/secrets/web-agent-token",
            not_found(),
        ),
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
        step("GET", PODS, (200, list(vec![]))),
    ];
    for _ in 0..2 {
        let hash = hash.clone();
        steps.push(Step {
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
        });
    }
    steps.push(step_checked(
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
            assert_eq!(s["replicas"], 0);
            assert_eq!(s["observedGeneration"], 3);
            assert_eq!(
                s["selector"],
                "app.kubernetes.io/managed-by=webaccel-operator,webaccel.dev/pool=web"
            );
            let progressing = s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Progressing")
                .unwrap();
            assert_eq!(
                (
                    progressing["status"].as_str(),
                    progressing["reason"].as_str()
                ),
                (Some("True"), Some("ScalingUp"))
            );
        },
    ));
    let (client, api) = mock_api_paths_relaxed(steps);
    let ctx = context(client, FakeAgents::with_loads(&[]));
    reconcile(Arc::new(p), ctx).await.unwrap();
    api.await.unwrap();
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

#[tokio::test]
async fn a_failed_pod_is_replaced_with_an_event_and_degraded_status() {
    let p = pool(SPEC);
    let hash = template_hash(&p);
    let pods = vec![
        pod("web-ok", &hash, "Running", true, "10.0.0.1"),
        pod("web-bad", &hash, "Failed", false, ""),
    ];
    let mut steps = owned_objects_exist();
    steps.push(step("GET", PODS, (200, list(pods))));
    steps.push(step_checked("POST", EVENTS, echo(), |b| {
        assert_eq!(b["reason"], "BrowserReplaced");
        assert_eq!(b["type"], "Warning");
        assert!(
            b["note"]
                .as_str()
                .unwrap()
                .contains("web-bad: pod phase Failed"),
            "{b}"
        );
    }));
    steps.push(step(
        "DELETE",
        &format!("{PODS}/web-bad"),
        (
            200,
            serde_json::to_value(pod("web-bad", &hash, "Failed", false, "")).unwrap(),
        ),
    ));
    steps.push(Step {
        method: "PATCH",
        path: String::new(),
        reply: echo(),
        check: None,
    });
    steps.push(step_checked(
        "PATCH",
        &format!("{POOL}/status"),
        pool_with_status(&p),
        |b| {
            let degraded = b["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Degraded")
                .unwrap()
                .clone();
            assert_eq!(
                (degraded["status"].as_str(), degraded["reason"].as_str()),
                (Some("True"), Some("Healing"))
            );
            assert_eq!(b["status"]["readyReplicas"], 1);
        },
    ));
    let (client, api) = mock_api_paths_relaxed(steps);
    reconcile(
        Arc::new(p),
        context(client, FakeAgents::with_loads(&[("web-ok", 0)])),
    )
    .await
    .unwrap();
    api.await.unwrap();
}

#[tokio::test]
async fn scale_down_drains_idle_browsers_through_their_agents_and_keeps_the_busy_one() {
    let p = pool("  image: reg/browser:1\n  replicas: 1\n");
    let hash = template_hash(&p);
    let pods = vec![
        pod("web-busy", &hash, "Running", true, "10.0.0.1"),
        pod("web-idle1", &hash, "Running", true, "10.0.0.2"),
        pod("web-idle2", &hash, "Running", true, "10.0.0.3"),
    ];
    let mut steps = owned_objects_exist();
    steps.push(step("GET", PODS, (200, list(pods))));
    for (name, event) in [
        ("web-idle1", ("POST", EVENTS.to_owned())),
        ("web-idle2", ("PATCH", format!("{EVENTS}/*"))),
    ] {
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
        // The second Draining event continues the first as a series (a PATCH of it).
        steps.push(step(event.0, &event.1, echo()));
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
    let agents = FakeAgents::with_loads(&[("web-busy", 7), ("web-idle1", 0), ("web-idle2", 0)]);
    let (client, api) = mock_api(steps);
    reconcile(Arc::new(p), context(client, agents.clone()))
        .await
        .unwrap();
    api.await.unwrap();
    assert_eq!(agents.calls(), ["drain web-idle1", "drain web-idle2"]);
}

#[tokio::test]
async fn a_status_conflict_fails_the_reconcile_as_a_conflict() {
    let p = pool("  image: reg/browser:1\n  replicas: 0\n");
    let mut steps = owned_objects_exist();
    steps.push(step("GET", PODS, (200, list(vec![]))));
    steps.push(step("PATCH", &format!("{POOL}/status"), (409, json!({"kind": "Status", "apiVersion": "v1",
        "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}))));
    let (client, api) = mock_api(steps);
    let err = reconcile(Arc::new(p), context(client, FakeAgents::with_loads(&[])))
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "conflict");
    api.await.unwrap();
}

#[tokio::test]
async fn an_api_error_while_listing_pods_fails_without_writing_anything() {
    let p = pool(SPEC);
    let mut steps = owned_objects_exist();
    steps.push(step(
        "GET",
        PODS,
        (
            500,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "InternalError", "code": 500, "message": "etcd timeout"}),
        ),
    ));
    let (client, api) = mock_api(steps);
    let err = reconcile(Arc::new(p), context(client, FakeAgents::with_loads(&[])))
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "api");
    // The mock ends after the failed list: any write after it would have failed the test.
    api.await.unwrap();
}

#[tokio::test]
async fn firefox_is_refused_with_a_condition_and_an_event() {
    let p = pool("  image: reg/browser:1\n  browser: firefox\n");
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
                assert!(
                    ready["message"]
                        .as_str()
                        .unwrap()
                        .contains("Chrome DevTools Protocol")
                );
            },
        ),
    ];
    let (client, api) = mock_api(steps);
    reconcile(Arc::new(p), context(client, FakeAgents::with_loads(&[])))
        .await
        .unwrap();
    api.await.unwrap();
}

#[tokio::test]
async fn a_spec_change_drains_one_out_of_date_browser() {
    let p = pool(SPEC);
    let hash = template_hash(&p);
    let pods = vec![
        pod("web-old", "0000000000", "Running", true, "10.0.0.1"),
        pod("web-new", &hash, "Running", true, "10.0.0.2"),
    ];
    let mut steps = owned_objects_exist();
    steps.push(step("GET", PODS, (200, list(pods))));
    let reply = (
        200,
        serde_json::to_value(pod("web-old", "0000000000", "Running", true, "")).unwrap(),
    );
    steps.push(step("PATCH", &format!("{PODS}/web-old"), reply));
    steps.push(step_checked("POST", EVENTS, echo(), |b| {
        assert_eq!(b["note"], "web-old: rolling to the new spec");
    }));
    steps.push(step_checked(
        "PATCH",
        &format!("{POOL}/status"),
        pool_with_status(&p),
        |b| {
            assert_eq!(b["status"]["updatedReplicas"], 1);
            let progressing = b["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Progressing")
                .unwrap()
                .clone();
            assert_eq!(progressing["reason"], "Draining");
        },
    ));
    let agents = FakeAgents::with_loads(&[("web-old", 0), ("web-new", 0)]);
    let (client, api) = mock_api(steps);
    reconcile(Arc::new(p), context(client, agents.clone()))
        .await
        .unwrap();
    api.await.unwrap();
    assert_eq!(agents.calls(), ["drain web-old"]);
}

#[tokio::test]
async fn autoscaling_follows_agent_load_with_an_event_and_the_reason_in_status() {
    let mut p = pool(
        "  image: reg/browser:1\n  replicas: 1\n  autoscaling: {enabled: true, minReplicas: 1, maxReplicas: 5, targetInFlightPerBrowser: 4}\n",
    );
    p.status = Some(webaccel_api::v1alpha1::BrowserPoolStatus {
        desired_replicas: 1,
        ..Default::default()
    });
    let hash = template_hash(&p);
    let mut steps = owned_objects_exist();
    steps.push(step(
        "GET",
        PODS,
        (
            200,
            list(vec![pod("web-a", &hash, "Running", true, "10.0.0.1")]),
        ),
    ));
    steps.push(step_checked("POST", EVENTS, echo(), |b| {
        assert_eq!(b["reason"], "Scaled");
        assert_eq!(
            b["note"],
            "3 browsers: load 12 over 1 browsers, target 4/browser → 3"
        );
    }));
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
    let ctx = context(client, FakeAgents::with_loads(&[("web-a", 12)]));
    let action = reconcile(Arc::new(p), ctx.clone()).await.unwrap();
    api.await.unwrap();
    let decisions = r#"webaccel_operator_scale_decisions_total{namespace="ml",pool="web",direction="up",cause="load"} 1"#;
    assert!(
        ctx.metrics.encode().contains(decisions),
        "{}",
        ctx.metrics.encode()
    );
    // Autoscaled pools are looked at again after the load poll interval.
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(1))
    );
}

#[tokio::test]
async fn a_deleted_pools_metric_series_and_memory_are_forgotten() {
    let p = pool("  image: reg/browser:1\n  replicas: 0\n");
    let mut steps = owned_objects_exist();
    steps.push(step("GET", PODS, (200, list(vec![]))));
    steps.push(step(
        "PATCH",
        &format!("{POOL}/status"),
        pool_with_status(&p),
    ));
    let (client, api) = mock_api(steps);
    let ctx = context(client, FakeAgents::with_loads(&[]));
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
