//! The pools' history lands in a real ClickHouse server: a reconcile that scales and heals
//! writes one `pool_events` row for each, with its reason, and a model's replica change
//! its `model_scale` row.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use webaccel_analytics::WriterConfig;
use webaccel_analytics::history::PoolHistory;
use webaccel_analytics::local::LocalClickHouse;
use webaccel_crds::v1alpha1::BrowserPoolStatus;
use webaccel_operator::pool::build::template_hash;
use webaccel_operator::pool::reconcile::reconcile;

#[tokio::test]
async fn scale_and_heal_decisions_become_pool_event_rows() {
    let ch = LocalClickHouse::start().await.unwrap();
    let settings = ch.settings("webaccel_operator_test");
    webaccel_analytics::schema::migrate(&settings)
        .await
        .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let config = WriterConfig {
        period: Duration::from_millis(100),
        ..WriterConfig::new(spool.path().to_owned())
    };
    let history = PoolHistory::start(settings, config).unwrap();

    let mut p = pool(
        "  image: reg/browser:1\n  autoscaling: {enabled: true, minReplicas: 1, maxReplicas: 5, targetInFlightPerBrowser: 4}\n",
    );
    p.status = Some(BrowserPoolStatus {
        desired_replicas: 1,
        ..Default::default()
    });
    let hash = template_hash(&p);
    let mut steps = vec![step("POST", EVENTS, echo())];
    steps.push(step(
        "DELETE",
        &format!("{PODS}/web-bad"),
        (
            200,
            serde_json::to_value(pod("web-bad", &hash, "Failed", false, "")).unwrap(),
        ),
    ));
    steps.push(step("POST", EVENTS, echo()));
    steps.push(step("PATCH", &format!("{PODS}/*"), echo()));
    steps.push(step("PATCH", &format!("{PODS}/*"), echo()));
    steps.push(step(
        "PATCH",
        &format!("{POOL}/status"),
        (200, serde_json::to_value(&p).unwrap()),
    ));
    let (client, api) = mock_api(steps);
    let (stores, mut w) = webaccel_operator::stores::Stores::local();
    let ctx = Arc::new(
        webaccel_operator::context::Context::new(
            client,
            stores,
            FakeAgents::with_loads(&[("web-a", 12)]),
            Arc::new(webaccel_operator::metrics::Metrics::default()),
            Default::default(),
        )
        .with_history(history),
    );
    let apply = |e| kube::runtime::watcher::Event::Apply(e);
    w.pools.apply_watcher_event(&apply(p.clone()));
    w.secrets
        .apply_watcher_event(&kube::runtime::watcher::Event::Apply(token_secret_object()));
    w.services
        .apply_watcher_event(&kube::runtime::watcher::Event::Apply(
            webaccel_operator::pool::build::service(&p),
        ));
    w.pdbs
        .apply_watcher_event(&kube::runtime::watcher::Event::Apply(
            webaccel_operator::pool::build::pdb(&p),
        ));
    for pod in [
        pod("web-a", &hash, "Running", true, "10.0.0.1"),
        pod("web-bad", &hash, "Failed", false, ""),
    ] {
        w.pods
            .apply_watcher_event(&kube::runtime::watcher::Event::Apply(pod));
    }
    reconcile(Arc::new(p), ctx.clone()).await.unwrap();
    api.await.unwrap();
    // A ModelDeployment's autoscaler decision, as its reconcile records it.
    ctx.history.record_model(
        "ml",
        "web",
        "minilm",
        0,
        2,
        "3 requests waiting and no replica",
    );
    ctx.history.shutdown().await;

    let rows = ch
        .query(
            "SELECT namespace, pool, event, pod, model, from_replicas, to_replicas, reason \
                FROM webaccel_operator_test.pool_events FINAL ORDER BY event FORMAT TSV",
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        "ml\tweb\theal\tweb-bad\t\t3\t3\tpod phase Failed\n\
         ml\tweb\tmodel_scale\t\tminilm\t0\t2\t3 requests waiting and no replica\n\
         ml\tweb\tscale\t\t\t1\t3\tload 12 over 1 browsers, target 4/browser → 3"
    );
}
