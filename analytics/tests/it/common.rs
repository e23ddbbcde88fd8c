//! Test helpers: a local ClickHouse server that panics on failure.

pub use webaccel_analytics::local::LocalClickHouse as ClickHouse;

pub async fn start() -> ClickHouse {
    ClickHouse::start().await.unwrap()
}

pub async fn query(ch: &ClickHouse, sql: &str) -> String {
    ch.query(sql).await.unwrap()
}
