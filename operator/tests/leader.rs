//! Leader election through a Lease against a mocked API server: the first replica creates it,
//! a second waits while it is renewed, takes it over once it expires, and a takeover race is
//! lost cleanly on 409.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use webaccel_operator::leader::{Elector, LeaseSettings};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/webaccel-system/leases";

fn elector(client: kube::Client, identity: &str) -> Elector {
    Elector::new(
        client,
        LeaseSettings {
            namespace: "webaccel-system".into(),
            name: "webaccel-operator".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        },
    )
}

fn lease(holder: &str, renewed_secs_ago: i64, transitions: i32) -> Value {
    let renewed = Timestamp::now()
        .checked_sub(jiff_seconds(renewed_secs_ago))
        .unwrap();
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "webaccel-operator", "namespace": "webaccel-system", "resourceVersion": "41"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "acquireTime": "2026-11-26T08:00:00.000000Z",
                 "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                 "leaseTransitions": transitions}})
}

fn jiff_seconds(s: i64) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_secs(s)
}

fn conflict() -> (u16, Value) {
    (
        409,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict",
                 "code": 409, "message": "the object has been modified"}),
    )
}

#[tokio::test]
async fn the_first_replica_creates_the_lease() {
    let (client, api) = mock_api(vec![
        step("GET", &format!("{LEASES}/webaccel-operator"), not_found()),
        step_checked("POST", LEASES, (201, lease("a", 0, 0)), |b| {
            assert_eq!(b["spec"]["holderIdentity"], "a");
            assert_eq!(b["spec"]["leaseDurationSeconds"], 15);
        }),
    ]);
    assert!(elector(client, "a").try_hold().await.unwrap());
    api.await.unwrap();
}

#[tokio::test]
async fn a_second_replica_waits_while_the_holder_renews() {
    let (client, api) = mock_api(vec![step(
        "GET",
        &format!("{LEASES}/webaccel-operator"),
        (200, lease("a", 3, 0)),
    )]);
    assert!(!elector(client, "b").try_hold().await.unwrap());
    api.await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let (client, api) = mock_api(vec![
        step(
            "GET",
            &format!("{LEASES}/webaccel-operator"),
            (200, lease("a", 20, 2)),
        ),
        step_checked(
            "PUT",
            &format!("{LEASES}/webaccel-operator"),
            (200, lease("b", 0, 3)),
            |b| {
                assert_eq!(
                    b["metadata"]["resourceVersion"], "41",
                    "the write is conditional on what was read"
                );
                assert_eq!(b["spec"]["holderIdentity"], "b");
                assert_eq!(b["spec"]["leaseTransitions"], 3);
            },
        ),
    ]);
    assert!(elector(client, "b").try_hold().await.unwrap());
    api.await.unwrap();
}

#[tokio::test]
async fn a_lost_takeover_race_is_a_clean_no() {
    let (client, api) = mock_api(vec![
        step(
            "GET",
            &format!("{LEASES}/webaccel-operator"),
            (200, lease("a", 20, 2)),
        ),
        step("PUT", &format!("{LEASES}/webaccel-operator"), conflict()),
    ]);
    assert!(!elector(client, "c").try_hold().await.unwrap());
    api.await.unwrap();
}

#[tokio::test]
async fn the_holder_renews_keeping_its_acquire_time() {
    let (client, api) = mock_api(vec![
        step(
            "GET",
            &format!("{LEASES}/webaccel-operator"),
            (200, lease("a", 5, 1)),
        ),
        step_checked(
            "PUT",
            &format!("{LEASES}/webaccel-operator"),
            (200, lease("a", 0, 1)),
            |b| {
                assert_eq!(b["spec"]["acquireTime"], "2026-11-26T08:00:00.000000Z");
                assert_eq!(b["spec"]["leaseTransitions"], 1);
            },
        ),
    ]);
    assert!(elector(client, "a").try_hold().await.unwrap());
    api.await.unwrap();
}
