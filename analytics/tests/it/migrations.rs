//! Migrations against a real ClickHouse server (Debian's 18.16 here): the tables come
//! out with the types this server supports, running them twice changes nothing, and
//! many migrators at once on a fresh database all succeed.

use webaccel_analytics::schema::migrate;

/// Every migration's number: 1 to 9, then 10-26 (the request stages' columns).
fn all() -> Vec<u32> {
    (1..=26).collect()
}

#[tokio::test]
async fn migrations_apply_once_and_adapt_to_the_server() {
    let ch = crate::common::start().await;
    let settings = ch.settings("webaccel_test");

    let first = migrate(&settings).await.unwrap();
    assert_eq!(first.applied, all());
    assert!(first.already.is_empty());
    let second = migrate(&settings).await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.already, all());

    let tables = crate::common::query(
        &ch,
        "SELECT name FROM system.tables WHERE database = 'webaccel_test' ORDER BY name",
    )
    .await;
    assert_eq!(
        tables.lines().collect::<Vec<_>>(),
        [
            "browser_connections",
            "gateway_requests",
            "generation_performance",
            "inference_performance",
            "pool_events",
            "regressions",
            "schema_migrations"
        ]
    );
    assert_eq!(
        crate::common::query(&ch, "SELECT count() FROM webaccel_test.schema_migrations").await,
        all().len().to_string()
    );

    let version = crate::common::query(&ch, "SELECT version()").await;
    let event_time = crate::common::query(&ch, "SELECT type FROM system.columns WHERE database = 'webaccel_test' AND table = 'inference_performance' AND name = 'event_time'")
        .await;
    let model = crate::common::query(&ch, "SELECT type FROM system.columns WHERE database = 'webaccel_test' AND table = 'inference_performance' AND name = 'model'")
        .await;
    if first.features.datetime64 {
        assert_eq!(event_time, "DateTime64(3)", "server {version}");
    } else {
        assert_eq!(event_time, "Int64", "server {version}");
    }
    if first.features.low_cardinality {
        assert_eq!(model, "LowCardinality(String)");
    } else {
        assert_eq!(model, "String", "server {version}");
    }

    // Migration 6 added dynamic_batch_size, which reads as batch_size where unwritten.
    crate::common::query(
        &ch,
        "INSERT INTO webaccel_test.inference_performance (row_id, batch_size) VALUES (1, 3)",
    )
    .await;
    assert_eq!(
        crate::common::query(
            &ch,
            "SELECT dynamic_batch_size FROM webaccel_test.inference_performance WHERE row_id = 1"
        )
        .await,
        "3"
    );
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let settings =
        webaccel_analytics::ClickHouseSettings::new("http://127.0.0.1:9", "db", "test").unwrap();
    let err = migrate(&settings).await.unwrap_err().to_string();
    assert!(err.contains("http://127.0.0.1:9"), "{err}");
}

/// On a cluster every agent, both gateway replicas and the operator start at once against
/// one ClickHouse: two of them adding the same column used to fail the slower one
/// ("Cannot add column dynamic_batch_size: column with this name already exists"), whose
/// rows then spooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_migrators_at_once_on_a_fresh_database_all_succeed() {
    let ch = crate::common::start().await;
    for round in 0..3 {
        let settings = ch.settings(&format!("webaccel_race{round}"));
        let runs: Vec<_> = (0..16)
            .map(|_| {
                let s = settings.clone();
                tokio::spawn(async move { migrate(&s).await })
            })
            .collect();
        for run in runs {
            let report = run
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            let mut seen = [report.applied, report.already].concat();
            seen.sort_unstable();
            assert_eq!(seen, all(), "round {round}");
        }
        let db = settings.database.clone();
        assert_eq!(
            crate::common::query(
                &ch,
                &format!("SELECT count(DISTINCT version) FROM {db}.schema_migrations")
            )
            .await,
            all().len().to_string()
        );
        let columns = crate::common::query(
            &ch,
            &format!(
                "SELECT count() FROM system.columns WHERE database = '{db}' \
                 AND ((table = 'inference_performance' AND name IN ('dynamic_batch_size', 'request_id')) \
                 OR (table = 'pool_events' AND name = 'model'))"
            ),
        )
        .await;
        assert_eq!(columns, "3", "round {round}");
    }
}
