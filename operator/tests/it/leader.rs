//! Leader election through a Lease against a mocked API server: the first replica creates it,
//! a second waits while it is renewed, takes it over once it has seen it unchanged for its
//! duration (by its own clock), a takeover race is lost cleanly on 409, and a stopping
//! holder releases it.

use std::time::Duration;

use crate::common::*;
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

/// Expiry is judged by this replica's clock, from when it saw the Lease last change: a
/// holder whose clock is an hour behind is not taken over while it renews, and a Lease
/// seen unchanged for its duration is, whatever its timestamps say.
#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let seen = lease("a", 3600, 2);
    let get = || {
        step(
            "GET",
            &format!("{LEASES}/webaccel-operator"),
            (200, seen.clone()),
        )
    };
    let (client, api) = mock_api(vec![
        get(),
        get(),
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
    let e = elector(client, "b");
    // First sight: renewed "an hour ago" by the holder's clock, which proves nothing.
    assert!(!e.try_hold().await.unwrap());
    // Unchanged for longer than its 15 s: expired.
    tokio::time::advance(Duration::from_secs(16)).await;
    assert!(e.try_hold().await.unwrap());
    api.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_keeps_renewing_is_never_taken_over_whatever_its_clock() {
    // Its clock is an hour behind ours, but its renewTime moves.
    let steps = (0..5)
        .map(|i| {
            let mut l = lease("a", 3600 - 5 * i, 2);
            l["metadata"]["resourceVersion"] = json!(format!("{}", 41 + i));
            step("GET", &format!("{LEASES}/webaccel-operator"), (200, l))
        })
        .collect();
    let (client, api) = mock_api(steps);
    let e = elector(client, "b");
    for _ in 0..5 {
        assert!(!e.try_hold().await.unwrap());
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    api.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lost_takeover_race_is_a_clean_no() {
    let seen = lease("a", 20, 2);
    let get = || {
        step(
            "GET",
            &format!("{LEASES}/webaccel-operator"),
            (200, seen.clone()),
        )
    };
    let (client, api) = mock_api(vec![
        get(),
        get(),
        step("PUT", &format!("{LEASES}/webaccel-operator"), conflict()),
    ]);
    let e = elector(client, "c");
    assert!(!e.try_hold().await.unwrap());
    tokio::time::advance(Duration::from_secs(16)).await;
    assert!(!e.try_hold().await.unwrap());
    api.await.unwrap();
}

#[tokio::test]
async fn the_holder_renews_keeping_its_acquire_time_without_reading_again() {
    let renewed = |b: &Value| {
        assert_eq!(b["spec"]["acquireTime"], "2026-11-26T08:00:00.000000Z");
        assert_eq!(b["spec"]["leaseTransitions"], 1);
        assert_eq!(b["spec"]["holderIdentity"], "a");
    };
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
            renewed,
        ),
        // The next renewal starts from what it wrote: no GET.
        step_checked(
            "PUT",
            &format!("{LEASES}/webaccel-operator"),
            (200, lease("a", 0, 1)),
            renewed,
        ),
    ]);
    let e = elector(client, "a");
    assert!(e.try_hold().await.unwrap());
    assert!(e.try_hold().await.unwrap());
    api.await.unwrap();
}

#[tokio::test]
async fn a_stopping_holder_releases_the_lease_and_the_next_takes_it_at_once() {
    let (client, api) = mock_api(vec![
        step("GET", &format!("{LEASES}/webaccel-operator"), not_found()),
        step("POST", LEASES, (201, lease("a", 0, 0))),
        step_checked(
            "PUT",
            &format!("{LEASES}/webaccel-operator"),
            (200, json!({})),
            |b| {
                assert!(b["spec"]["holderIdentity"].is_null(), "{b}");
                assert_eq!(b["spec"]["leaseDurationSeconds"], 1);
                assert_eq!(b["metadata"]["resourceVersion"], "41");
            },
        ),
    ]);
    let a = elector(client, "a");
    assert!(a.try_hold().await.unwrap());
    a.release().await;
    api.await.unwrap();

    // Another replica sees a Lease without holder: it takes it on first sight.
    let mut released = lease("a", 0, 0);
    released["spec"]["holderIdentity"] = Value::Null;
    released["spec"]["leaseDurationSeconds"] = json!(1);
    let (client, api) = mock_api(vec![
        step(
            "GET",
            &format!("{LEASES}/webaccel-operator"),
            (200, released),
        ),
        step_checked(
            "PUT",
            &format!("{LEASES}/webaccel-operator"),
            (200, lease("b", 0, 1)),
            |b| assert_eq!(b["spec"]["holderIdentity"], "b"),
        ),
    ]);
    assert!(elector(client, "b").try_hold().await.unwrap());
    api.await.unwrap();
}
