//! Test helpers: a local ClickHouse server that panics on failure.

pub use webaccel_analytics::local::LocalClickHouse as ClickHouse;

pub async fn start() -> ClickHouse {
    ClickHouse::start().await.unwrap()
}

pub async fn query(ch: &ClickHouse, sql: &str) -> String {
    ch.query(sql).await.unwrap()
}

/// Inserts `rows` into their table in one batch.
pub async fn insert_rows<T: webaccel_analytics::rows::TableRow>(
    client: &clickhouse::Client,
    rows: &[T],
) {
    let mut insert = client.insert::<T>(T::TABLE).await.unwrap();
    for r in rows {
        insert.write(r).await.unwrap();
    }
    insert.end().await.unwrap();
}
