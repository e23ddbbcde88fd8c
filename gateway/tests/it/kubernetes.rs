//! Kubernetes discovery against a mocked API server (`webaccel_testkit::kube`): each test is one ordered
//! scenario of what the operator and the kubelet do to pods, pools, models and Secrets, and
//! what the gateway must publish (or write) after each step. Every request the gateway makes
//! is checked against the chart's RBAC for its ServiceAccount, and the calls are counted.
//!
//! The tests run on a paused tokio clock: waiting "a while" costs no real time, and what
//! did not happen can be asserted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use webaccel_testkit::kube::*;

use crate::support::{GATEWAY_RBAC, gateway_rules_granted};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use webaccel_gateway::discovery::kubernetes::{self, PoolAnnotations};
use webaccel_gateway::discovery::{Endpoints, Fleet};
use webaccel_gateway::waiting::{WaitingByModel, WaitingSink as _};

const LIMIT: Duration = Duration::from_secs(60);
const SELECTOR: &str = "app.kubernetes.io/managed-by=webaccel-operator,webaccel.dev/pool";
const POOLS: &str = "/apis/webaccel.dev/v1alpha1/namespaces/ml/browserpools";
const MODELS: &str = "/apis/webaccel.dev/v1alpha1/namespaces/ml/modeldeployments";

struct Scenario {
    api: ApiServer,
    fleet: Fleet,
    sink: PoolAnnotations,
    stop: CancellationToken,
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Discovery over `objects`, in `namespace` (the gateway's Role) or all namespaces.
fn start(objects: Vec<Value>, namespace: Option<&str>) -> Scenario {
    let (client, api) = ApiServer::start(objects, GATEWAY_RBAC, namespace);
    let stop = CancellationToken::new();
    let (fleet, sink) = kubernetes::start(client, namespace.map(str::to_owned), stop.clone());
    Scenario {
        api,
        fleet,
        sink,
        stop,
    }
}

impl Scenario {
    /// Waits for the fleet to satisfy `pred` (it is re-checked at each publish).
    async fn until(&mut self, what: &str, pred: impl Fn(&Endpoints) -> bool) -> Arc<Endpoints> {
        let fleet = &mut self.fleet;
        let wait = async {
            loop {
                let now = fleet.current();
                if pred(&now) {
                    return now;
                }
                assert!(fleet.changed().await, "the discovery stopped");
            }
        };
        match tokio::time::timeout(LIMIT, wait).await {
            Ok(now) => now,
            Err(_) => panic!(
                "timed out waiting until {what}; the fleet is {:#?}",
                self.fleet.current()
            ),
        }
    }

    /// Asserts that nothing is published for a while.
    async fn no_publish(&mut self, after: &str) {
        let changed = tokio::time::timeout(Duration::from_secs(10), self.fleet.changed()).await;
        assert!(
            changed.is_err(),
            "the fleet was published after {after}, though it did not change: {:#?}",
            self.fleet.current()
        );
    }

    /// Waits until the API server has seen `n` PATCH requests.
    /// The patches of one kind of object (`POOLS` or `MODELS`) so far.
    fn patches_of(&self, kind: &str) -> Vec<Call> {
        self.api
            .patches()
            .into_iter()
            .filter(|c| c.path.starts_with(kind))
            .collect()
    }

    /// Waits for `n` patches of pools.
    async fn patches(&self, n: usize) -> Vec<Call> {
        self.patches_n(POOLS, n).await
    }

    /// Waits for `n` patches of `kind`.
    async fn patches_n(&self, kind: &str, n: usize) -> Vec<Call> {
        let wait = async {
            loop {
                let p = self.patches_of(kind);
                if p.len() >= n {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(LIMIT, wait)
            .await
            .unwrap_or_else(|_| panic!("no {n} patches came: {:#?}", self.api.patches()))
    }
}

fn ids(fleet: &Endpoints) -> Vec<&str> {
    fleet.keys().map(String::as_str).collect()
}

fn waiting(pairs: &[(&str, usize)]) -> WaitingByModel {
    pairs.iter().map(|(m, n)| ((*m).to_owned(), *n)).collect()
}

/// The gateway's calls, as `VERB path`, sorted.
fn sorted_lines(api: &ApiServer) -> Vec<String> {
    let mut l = api.lines();
    l.sort();
    l
}

#[tokio::test(start_paused = true)]
async fn a_pod_is_an_endpoint_only_while_running_ready_and_not_draining() {
    let a = pod("ml", "web", "web-a", "Running", false, "10.0.0.1");
    let b = with_model(
        pod("ml", "web", "web-b", "Running", true, "10.0.0.2"),
        "bert",
        Some("loaded"),
    );
    // Pending, no IP yet; and one Running and Ready but without an IP (never routable).
    let c = pod("ml", "web", "web-c", "Pending", false, "");
    let d = pod("ml", "web", "web-d", "Running", true, "");
    let mut s = start(
        vec![
            pool("ml", "web", None),
            operator_secret("ml", "web", "s3cret"),
            a.clone(),
            b.clone(),
            c,
            d,
        ],
        Some("ml"),
    );

    // The kubelet reports Running long before Ready: web-a is no endpoint yet.
    let fleet = s
        .until("web-b serves", |f| f.contains_key("ml/web-b"))
        .await;
    assert_eq!(ids(&fleet), vec!["ml/web-b"]);
    let ep = &fleet["ml/web-b"];
    assert_eq!(ep.url, "http://10.0.0.2:8700");
    assert_eq!(ep.token.as_deref(), Some("s3cret"));
    assert_eq!(ep.pool, "web");
    assert_eq!(ep.pod, "web-b");
    assert!(ep.serving);
    assert_eq!(ep.models, BTreeSet::from(["bert".to_owned()]));

    // Ready: it joins.
    s.api.apply(ready(a.clone(), true));
    s.until("web-a joins once Ready", |f| f.contains_key("ml/web-a"))
        .await;
    // Unready (a failing readiness probe): it leaves.
    s.api.apply(ready(a.clone(), false));
    let fleet = s
        .until("web-a leaves when unready", |f| !f.contains_key("ml/web-a"))
        .await;
    assert_eq!(ids(&fleet), vec!["ml/web-b"]);
    // Ready again, then marked draining by the operator: it leaves though still Ready.
    s.api.apply(ready(a.clone(), true));
    s.until("web-a back", |f| f.contains_key("ml/web-a")).await;
    s.api.apply(annotate(
        ready(a.clone(), true),
        "webaccel.dev/draining",
        "2026-11-26T10:00:00Z",
    ));
    s.until("web-a leaves when draining", |f| {
        !f.contains_key("ml/web-a")
    })
    .await;
    // Being deleted (graceful termination, still Ready for a moment): it leaves.
    let mut deleting = b.clone();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-26T10:01:00Z");
    s.api.apply(deleting);
    let fleet = s
        .until("web-b leaves when deleted", |f| !f.contains_key("ml/web-b"))
        .await;
    assert!(fleet.is_empty(), "{fleet:#?}");

    // One LIST and one WATCH per kind, and nothing else: no GET, no re-LIST.
    assert_eq!(
        sorted_lines(&s.api),
        vec![
            "LIST /api/v1/namespaces/ml/pods",
            "LIST /api/v1/namespaces/ml/secrets",
            "LIST /apis/webaccel.dev/v1alpha1/namespaces/ml/browserpools",
            "LIST /apis/webaccel.dev/v1alpha1/namespaces/ml/modeldeployments",
            "WATCH /api/v1/namespaces/ml/pods",
            "WATCH /api/v1/namespaces/ml/secrets",
            "WATCH /apis/webaccel.dev/v1alpha1/namespaces/ml/browserpools",
            "WATCH /apis/webaccel.dev/v1alpha1/namespaces/ml/modeldeployments",
        ]
    );
    // Pods and Secrets only as the operator labels them: never all Secrets.
    for call in s.api.calls() {
        if call.path.ends_with("/pods") || call.path.ends_with("/secrets") {
            assert_eq!(
                call.query.get("labelSelector").map(String::as_str),
                Some(SELECTOR),
                "{call:?}"
            );
        }
    }
    s.api.assert_rbac_allowed_all();
}

#[tokio::test(start_paused = true)]
async fn the_fleet_is_published_once_per_change() {
    let x = pod("ml", "web", "web-x", "Running", false, "10.0.0.10");
    let y = pod("ml", "web", "web-y", "Running", false, "10.0.0.11");
    let z = pod("ml", "web", "web-z", "Running", false, "10.0.0.12");
    let w = pod("ml", "web", "web-w", "Running", true, "10.0.0.13");
    let mut s = start(
        vec![
            pool("ml", "web", None),
            operator_secret("ml", "web", "t"),
            x.clone(),
            y.clone(),
            z.clone(),
            w.clone(),
        ],
        Some("ml"),
    );
    s.until("web-w serves", |f| f.contains_key("ml/web-w"))
        .await;

    // Changes that do not change the fleet publish nothing.
    s.api
        .apply(annotate(w.clone(), "example.com/note", "hello"));
    s.api
        .apply(annotate(x.clone(), "example.com/note", "still unready"));
    s.no_publish("changes that leave the fleet as it is").await;

    // A burst (three pods turning Ready within a few tens of milliseconds) is one publish.
    s.api.apply(ready(x, true));
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.api.apply(ready(y, true));
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.api.apply(ready(z, true));
    let changed = tokio::time::timeout(LIMIT, s.fleet.changed()).await;
    assert_eq!(changed, Ok(true));
    assert_eq!(
        ids(&s.fleet.current()),
        vec!["ml/web-w", "ml/web-x", "ml/web-y", "ml/web-z"]
    );
    s.no_publish("the burst was published").await;
    s.api.assert_rbac_allowed_all();
}

#[tokio::test(start_paused = true)]
async fn a_pod_losing_a_model_label_stops_being_a_candidate_for_it() {
    let p = pod("ml", "web", "web-a", "Running", true, "10.0.0.1");
    let p = with_model(
        with_model(p, "bert", Some("loaded")),
        "clip",
        Some("loaded"),
    );
    let mut s = start(
        vec![
            pool("ml", "web", None),
            operator_secret("ml", "web", "t"),
            model("ml", "bert", "web"),
            model("ml", "clip", "web"),
            p.clone(),
        ],
        Some("ml"),
    );
    let fleet = s
        .until("web-a serves", |f| f.contains_key("ml/web-a"))
        .await;
    assert_eq!(
        fleet["ml/web-a"].models,
        BTreeSet::from(["bert".to_owned(), "clip".to_owned()])
    );
    // The deployed models are the ModelDeployments (requests for them may wait).
    assert_eq!(
        s.fleet.deployed().unwrap().iter().collect::<Vec<_>>(),
        vec!["bert", "clip"]
    );

    // The operator unloads clip: its label goes.
    let p = with_model(p, "clip", None);
    s.api.apply(p.clone());
    let fleet = s
        .until("clip is gone from web-a", |f| {
            f.get("ml/web-a")
                .is_some_and(|e| !e.models.contains("clip"))
        })
        .await;
    assert_eq!(
        fleet["ml/web-a"].models,
        BTreeSet::from(["bert".to_owned()])
    );
    // A label that is not `loaded` does not make a candidate.
    s.api.apply(with_model(p, "clip", Some("loading")));
    s.no_publish("a model label that is not `loaded`").await;

    // Its ModelDeployment deleted: clip is no longer deployed.
    s.api.delete(&model("ml", "clip", "web"));
    let wait = async {
        while !s.fleet.deployed().unwrap().iter().eq(["bert"]) {
            assert!(s.fleet.changed().await);
        }
    };
    tokio::time::timeout(LIMIT, wait).await.unwrap();
    s.api.assert_rbac_allowed_all();
}

#[tokio::test(start_paused = true)]
async fn two_pools_holding_the_same_model_are_both_candidates() {
    // All namespaces (a ClusterRole): two pools in ml, one in team, each with its token.
    let pods = [("ml", "web"), ("ml", "gpu"), ("team", "web")].map(|(ns, pool)| {
        with_model(
            pod(ns, pool, &format!("{pool}-1"), "Running", true, "10.1.0.1"),
            "bert",
            Some("loaded"),
        )
    });
    let mut objects = vec![
        pool("ml", "web", None),
        pool("ml", "gpu", None),
        pool("team", "web", None),
        operator_secret("ml", "web", "t-ml-web"),
        operator_secret("ml", "gpu", "t-ml-gpu"),
        operator_secret("team", "web", "t-team-web"),
    ];
    objects.extend(pods);
    let mut s = start(objects, None);
    let fleet = s.until("three browsers", |f| f.len() == 3).await;
    let holders: Vec<(&str, &str, Option<&str>)> = fleet
        .values()
        .filter(|e| e.models.contains("bert"))
        .map(|e| (e.id.as_str(), e.pool.as_str(), e.token.as_deref()))
        .collect();
    assert_eq!(
        holders,
        vec![
            ("ml/gpu-1", "gpu", Some("t-ml-gpu")),
            ("ml/web-1", "web", Some("t-ml-web")),
            ("team/web-1", "web", Some("t-team-web")),
        ]
    );
    assert_eq!(
        sorted_lines(&s.api),
        vec![
            "LIST /api/v1/pods",
            "LIST /api/v1/secrets",
            "LIST /apis/webaccel.dev/v1alpha1/browserpools",
            "LIST /apis/webaccel.dev/v1alpha1/modeldeployments",
            "WATCH /api/v1/pods",
            "WATCH /api/v1/secrets",
            "WATCH /apis/webaccel.dev/v1alpha1/browserpools",
            "WATCH /apis/webaccel.dev/v1alpha1/modeldeployments",
        ]
    );
    s.api.assert_rbac_allowed_all();
}

#[tokio::test(start_paused = true)]
async fn the_token_comes_from_the_pools_secret() {
    let web = pod("ml", "web", "web-a", "Running", true, "10.0.0.1");
    let other = pod("ml", "other", "other-a", "Running", true, "10.0.0.2");
    let mut s = start(
        vec![
            // web names its own Secret, which does not exist yet; an old operator-made one
            // is still there and must not be used.
            pool("ml", "web", Some("my-token")),
            operator_secret("ml", "web", "stale"),
            pool("ml", "other", None),
            operator_secret("ml", "other", "t-other"),
            web.clone(),
            other,
        ],
        Some("ml"),
    );
    let fleet = s
        .until("other-a serves", |f| f.contains_key("ml/other-a"))
        .await;
    assert_eq!(fleet["ml/other-a"].token.as_deref(), Some("t-other"));
    // No token known for web: no endpoint (nothing could call its agent).
    s.no_publish("a pool whose Secret is missing").await;
    assert!(!s.fleet.current().contains_key("ml/web-a"));

    // The user creates the Secret: the pod joins with its token.
    s.api.apply(user_secret("ml", "my-token", "mine\n"));
    let fleet = s
        .until("web-a serves with the user's token", |f| {
            f.contains_key("ml/web-a")
        })
        .await;
    assert_eq!(fleet["ml/web-a"].token.as_deref(), Some("mine"));
    // Rotated: followed (a watch, not a read at pool changes).
    s.api.apply(user_secret("ml", "my-token", "mine-2"));
    s.until("the rotated token", |f| {
        f["ml/web-a"].token.as_deref() == Some("mine-2")
    })
    .await;
    // An unrelated Secret changing is seen by no watch: nothing is published.
    s.api
        .apply(user_secret("ml", "database-password", "hunter2"));
    s.no_publish("an unrelated Secret").await;

    // The user Secret is watched alone, by name.
    let named: Vec<Call> = s
        .api
        .calls()
        .into_iter()
        .filter(|c| c.query.contains_key("fieldSelector"))
        .collect();
    assert_eq!(
        named.iter().map(Call::line).collect::<Vec<_>>(),
        vec![
            "LIST /api/v1/namespaces/ml/secrets",
            "WATCH /api/v1/namespaces/ml/secrets"
        ]
    );
    for c in &named {
        assert_eq!(c.query["fieldSelector"], "metadata.name=my-token");
        assert!(!c.query.contains_key("labelSelector"));
    }

    // The pool goes back to the operator's Secret: that token, and the named watch ends.
    s.api.apply(pool("ml", "web", None));
    s.api.apply(operator_secret("ml", "web", "t-web"));
    s.until("the operator's token", |f| {
        f["ml/web-a"].token.as_deref() == Some("t-web")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open = s.api.open_watches();
    assert!(
        !open.iter().any(|w| w.contains("fields=")),
        "the user Secret's watch is still open: {open:#?}"
    );
    assert_eq!(s.api.calls().len(), 10, "{:#?}", s.api.lines());
    s.api.assert_rbac_allowed_all();
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_are_written_on_the_model_and_its_pool_and_cleared() {
    let mut s = start(
        vec![
            pool("ml", "web", None),
            pool("ml", "gpu", None),
            model("ml", "bert", "web"),
            model("ml", "clip", "gpu"),
            model("ml", "orphan", "nowhere"),
        ],
        Some("ml"),
    );
    // Synced once the ModelDeployments are known.
    let wait = async {
        while s.fleet.deployed().is_none_or(|d| d.len() != 3) {
            assert!(s.fleet.changed().await);
        }
    };
    tokio::time::timeout(LIMIT, wait).await.unwrap();

    // Requests wait for bert (and for a model nobody deployed): bert's deployment (which
    // wakes the model from zero replicas) and its pool (from zero browsers) get the count.
    s.sink.publish(&waiting(&[("bert", 3), ("ghost", 1)]));
    let m = s.patches_n(MODELS, 1).await;
    assert_eq!(m[0].path, format!("{MODELS}/bert"));
    assert_eq!(
        m[0].body["metadata"]["annotations"]["webaccel.dev/waiting-requests"],
        "3"
    );
    let p = s.patches(1).await;
    assert_eq!(p[0].path, format!("{POOLS}/web"));
    assert_eq!(p[0].content_type, "application/merge-patch+json");
    assert_eq!(p[0].query["fieldManager"], "webaccel-gateway");
    let a = &p[0].body["metadata"]["annotations"];
    assert_eq!(a["webaccel.dev/waiting-requests"], "3");
    let at = a["webaccel.dev/waiting-requests-at"].as_str().unwrap();
    at.parse::<k8s_openapi::jiff::Timestamp>().unwrap();
    let stored = s.api.get(&pool("ml", "web", None)).unwrap();
    assert_eq!(
        stored["metadata"]["annotations"]["webaccel.dev/waiting-requests"],
        "3"
    );

    // More wait at once: written, but not sooner than a second after the last write.
    s.sink.publish(&waiting(&[("bert", 5)]));
    let p = s.patches(2).await;
    assert_eq!(
        p[1].body["metadata"]["annotations"]["webaccel.dev/waiting-requests"],
        "5"
    );
    assert!(p[1].at - p[0].at >= Duration::from_secs(1), "rate limit");

    // The same count again (the waiting loop republishes): no write until the refresh.
    s.sink.publish(&waiting(&[("bert", 5)]));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(s.patches_of(POOLS).len(), 2);
    // While requests still wait, the signal is refreshed before the operator's TTL.
    let p = s.patches(3).await;
    assert!(p[2].at - p[1].at >= kubernetes_refresh());
    assert!(p[2].at - p[1].at < Duration::from_secs(60));
    assert_eq!(
        p[2].body["metadata"]["annotations"]["webaccel.dev/waiting-requests"],
        "5"
    );
    let refreshed_at = p[2].body["metadata"]["annotations"]["webaccel.dev/waiting-requests-at"]
        .as_str()
        .unwrap()
        .to_owned();

    // Nothing waits any more: the count goes to 0, if still ours.
    s.sink.publish(&WaitingByModel::new());
    let p = s.patches(4).await;
    assert_eq!(p[3].path, format!("{POOLS}/web"));
    assert_eq!(p[3].content_type, "application/json-patch+json");
    assert_eq!(
        p[3].body[0],
        json!({"op": "test", "path": "/metadata/annotations/webaccel.dev~1waiting-requests-at",
               "value": refreshed_at})
    );
    let stored = s.api.get(&pool("ml", "web", None)).unwrap();
    assert_eq!(
        stored["metadata"]["annotations"]["webaccel.dev/waiting-requests"],
        "0"
    );
    let m = s.patches_n(MODELS, 4).await;
    assert_eq!(m[3].content_type, "application/json-patch+json");
    let stored = s.api.get(&model("ml", "bert", "web")).unwrap();
    assert_eq!(
        stored["metadata"]["annotations"]["webaccel.dev/waiting-requests"],
        "0"
    );
    s.sink.publish(&WaitingByModel::new());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(s.patches_of(POOLS).len(), 4, "nothing more to write");
    assert_eq!(s.patches_of(MODELS).len(), 4);

    // clip waits: its own pool. Then another gateway replica writes its count over ours;
    // when our requests are gone, we must not clear theirs.
    s.sink.publish(&waiting(&[("clip", 2)]));
    let p = s.patches(5).await;
    assert_eq!(p[4].path, format!("{POOLS}/gpu"));
    let mut theirs = s.api.get(&pool("ml", "gpu", None)).unwrap();
    theirs["metadata"]["annotations"] = json!({
        "webaccel.dev/waiting-requests": "7",
        "webaccel.dev/waiting-requests-at": "2099-01-01T00:00:00Z",
    });
    s.api.apply(theirs);
    s.sink.publish(&WaitingByModel::new());
    let p = s.patches(6).await;
    assert_eq!(p[5].content_type, "application/json-patch+json");
    let stored = s.api.get(&pool("ml", "gpu", None)).unwrap();
    assert_eq!(
        stored["metadata"]["annotations"]["webaccel.dev/waiting-requests"],
        "7"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(s.patches_of(POOLS).len(), 6, "a failed test is not retried");

    // A model whose pool does not exist: its deployment gets the count, no pool does.
    s.sink.publish(&waiting(&[("orphan", 4)]));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(s.patches_of(POOLS).len(), 6);
    assert!(
        s.patches_of(MODELS)
            .iter()
            .any(|c| c.path == format!("{MODELS}/orphan"))
    );

    // Only the four watches and the patches: no GET of a pool before writing it.
    let reads: Vec<String> = s
        .api
        .lines()
        .into_iter()
        .filter(|l| !l.starts_with("PATCH"))
        .collect();
    assert_eq!(reads.len(), 8, "{reads:#?}");
    s.api.assert_rbac_allowed_all();
    // The chart grants the gateway exactly what this scenario used: nothing unused.
    assert_eq!(s.api.used_permissions(), gateway_rules_granted());
}

fn kubernetes_refresh() -> Duration {
    // The refresh interval: at least what the test waited before (5 s) and well inside the
    // operator's two-minute TTL.
    Duration::from_secs(15)
}
