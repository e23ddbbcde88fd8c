//! Rolls and pods the scheduler cannot place, against the mocked API server in the order
//! a real kubelet reports them: new browsers first, an old one drains only once a new one
//! has stayed ready; a new browser OOM-killed after being ready stops the roll with the
//! old ones serving; an unschedulable pod is reported with the scheduler's message and
//! left alone.

use std::sync::Arc;

use crate::common::*;
use serde_json::{Value, json};
use webaccel_operator::pool::build::template_hash;
use webaccel_operator::pool::reconcile::reconcile;

use crate::pool_controller::{SPEC, pool_with_status, regarding};

/// A browser pod as the kubelet reports it at the moment `status` changes: `pod` with
/// its status replaced.
fn with_status(
    mut p: k8s_openapi::api::core::v1::Pod,
    status: Value,
) -> k8s_openapi::api::core::v1::Pod {
    p.status = Some(serde_json::from_value(status).unwrap());
    p
}

#[tokio::test]
async fn a_spec_change_creates_a_new_browser_first_then_drains_an_old_one() {
    let p = pool(SPEC);
    let hash = template_hash(&p);
    // Two old browsers at the desired size: the first new one comes above it.
    let new_hash = hash.clone();
    let steps = vec![
        step_checked("PATCH", &format!("{PODS}/*"), echo(), move |b| {
            assert_eq!(
                b["metadata"]["labels"]["webaccel.dev/template-hash"],
                new_hash.as_str()
            );
        }),
        step_checked(
            "PATCH",
            &format!("{POOL}/status"),
            pool_with_status(&p),
            |b| {
                assert_eq!(cond(&b["status"], "Progressing")["reason"], "ScalingUp");
                assert_eq!(cond(&b["status"], "Ready")["status"], "True");
            },
        ),
    ];
    let agents = FakeAgents::with_loads(&[("web-a", 0), ("web-b", 0)]);
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", "0000000000", "Running", true, "10.0.0.1"));
    world.pod(pod("web-b", "0000000000", "Running", true, "10.0.0.2"));
    reconcile(Arc::new(p.clone()), world.ctx.clone())
        .await
        .unwrap();
    api.await.unwrap();
    assert!(agents.calls().iter().all(|c| !c.starts_with("drain")));

    // The new one has stayed ready: one old browser drains, marked as a roll.
    let reply = (
        200,
        serde_json::to_value(pod("web-a", "0000000000", "Running", true, "")).unwrap(),
    );
    let steps = vec![
        step_checked("PATCH", &format!("{PODS}/web-a"), reply, |b| {
            assert_eq!(
                b["metadata"]["annotations"]["webaccel.dev/drain-reason"],
                "roll"
            );
        }),
        step_checked("POST", EVENTS, echo(), |b| {
            assert_eq!(b["note"], "web-a: rolling to the new spec");
            assert_eq!(regarding(b), ("Pod", "web-a", "web"));
        }),
        step_checked(
            "PATCH",
            &format!("{POOL}/status"),
            pool_with_status(&p),
            |b| {
                assert_eq!(b["status"]["updatedReplicas"], 1);
                assert_eq!(cond(&b["status"], "Progressing")["reason"], "Draining");
            },
        ),
    ];
    let agents = FakeAgents::with_loads(&[("web-a", 0), ("web-b", 0), ("web-new", 0)]);
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", "0000000000", "Running", true, "10.0.0.1"));
    world.pod(pod("web-b", "0000000000", "Running", true, "10.0.0.2"));
    world.pod(pod("web-new", &hash, "Running", true, "10.0.0.3"));
    reconcile(Arc::new(p), world.ctx.clone()).await.unwrap();
    api.await.unwrap();
    assert!(agents.calls().contains(&"drain web-a".to_owned()));
}

/// The event order a real kubelet gave when a roll lowered the memory limit: the new
/// browser was ready, then OOM-killed (not ready, one restart). No old browser goes; the
/// pool says the roll stopped and why, and takes the failing new one back.
#[tokio::test]
async fn a_new_browser_oom_killed_during_a_roll_stops_it_with_the_old_ones_serving() {
    let p = pool(SPEC);
    let hash = template_hash(&p);
    let oom = with_status(
        pod("web-new", &hash, "Running", false, "10.0.0.3"),
        json!({"phase": "Running", "podIP": "10.0.0.3",
               "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-12-06T00:00:00Z"}],
               "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": false, "restartCount": 1,
                   "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                   "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
    );
    let steps = vec![
        step("DELETE", &format!("{PODS}/web-new"), echo()),
        step_checked("POST", EVENTS, echo(), |b| {
            assert_eq!(b["reason"], "RollStopped");
            assert_eq!(b["type"], "Warning");
            assert_eq!(
                b["note"],
                "web-new: the roll to the new spec stopped: web-new: agent container restarted 1 times"
            );
        }),
        step_checked(
            "PATCH",
            &format!("{POOL}/status"),
            pool_with_status(&p),
            |b| {
                let degraded = cond(&b["status"], "Degraded");
                assert_eq!(degraded["status"], "True");
                assert_eq!(degraded["reason"], "RollStopped");
                assert!(
                    degraded["message"].as_str().unwrap().contains("web-new"),
                    "{degraded}"
                );
                assert_eq!(b["status"]["readyReplicas"], 2, "the old browsers serve on");
            },
        ),
    ];
    let agents = FakeAgents::with_loads(&[("web-a", 1), ("web-b", 1)]);
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, agents.clone());
    world.pool_with_owned(&p);
    world.pod(pod("web-a", "0000000000", "Running", true, "10.0.0.1"));
    world.pod(pod("web-b", "0000000000", "Running", true, "10.0.0.2"));
    world.pod(oom);
    reconcile(Arc::new(p), world.ctx.clone()).await.unwrap();
    api.await.unwrap();
    assert!(
        agents.calls().iter().all(|c| !c.starts_with("drain")),
        "{:?}",
        agents.calls()
    );
}

/// A pod the scheduler cannot place (`PodScheduled` false, `Unschedulable`) long past
/// the unready grace: left alone (it was deleted and recreated every 180 s, forever),
/// and the pool says why with the scheduler's message.
#[tokio::test]
async fn a_pod_no_node_can_take_is_reported_not_recreated() {
    let p = pool(SPEC);
    let hash = template_hash(&p);
    let pending = with_status(
        pod("web-b", &hash, "Pending", false, ""),
        json!({"phase": "Pending",
               "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                               "message": "0/2 nodes are available: 1 Insufficient cpu.",
                               "lastTransitionTime": "2026-11-26T09:00:00Z"}]}),
    );
    let steps = vec![step_checked(
        "PATCH",
        &format!("{POOL}/status"),
        pool_with_status(&p),
        |b| {
            let degraded = cond(&b["status"], "Degraded");
            assert_eq!(degraded["reason"], "Unschedulable");
            assert_eq!(
                degraded["message"],
                "web-b cannot be scheduled: 0/2 nodes are available: 1 Insufficient cpu."
            );
        },
    )];
    let (client, api) = mock_api(steps);
    let mut world = World::new(client, FakeAgents::with_loads(&[("web-a", 0)]));
    world.pool_with_owned(&p);
    world.pod(pod("web-a", &hash, "Running", true, "10.0.0.1"));
    world.pod(pending);
    reconcile(Arc::new(p), world.ctx.clone()).await.unwrap();
    api.await.unwrap();
}
