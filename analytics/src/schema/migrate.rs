//! Applying the migrations, from any number of processes at once. Every agent, gateway
//! replica, the operator and `webaccel` commands migrate the one ClickHouse they write
//! to, and on a cluster they all start together. ClickHouse has no transactional DDL and
//! no lock to take (18.16 has neither `ADD COLUMN IF NOT EXISTS` nor advisory locks), so
//! instead of a lock every step is judged by what it leaves behind: a statement that
//! fails while its outcome is there afterwards was done by another migrator between our
//! look and our statement, and counts as done. Recording a version twice is harmless
//! (`schema_migrations` is read with `DISTINCT`).

use std::time::Duration;

use super::{Features, Outcome, migrations};
use crate::server;
use crate::settings::ClickHouseSettings;

/// What a migration run did.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationReport {
    pub features: Features,
    /// Versions this run applied (or found applied by a migrator running beside it).
    pub applied: Vec<u32>,
    /// Versions recorded before this run looked.
    pub already: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("ClickHouse at {url}: {source}")]
    ClickHouse {
        url: String,
        #[source]
        source: clickhouse::error::Error,
    },
}

/// How long a failed statement's outcome is looked for: another migrator's statement on
/// the same table may still be running when ours fails.
const SETTLE: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_secs(1),
];

/// Whether `outcome` exists; `db` is a client of the migrated database.
async fn present(db: &clickhouse::Client, outcome: &Outcome) -> clickhouse::error::Result<bool> {
    Ok(db.query(&outcome.exists_sql()).fetch_one::<u64>().await? > 0)
}

/// Runs `sql` unless `outcome` is there already. A failure is forgiven when the outcome
/// appears (see the module documentation).
async fn apply(
    client: &clickhouse::Client,
    sql: &str,
    outcome: &Outcome,
) -> clickhouse::error::Result<()> {
    if present(client, outcome).await? {
        return Ok(());
    }
    let Err(e) = client.query(sql).execute().await else {
        return Ok(());
    };
    for wait in SETTLE {
        tokio::time::sleep(wait).await;
        if present(client, outcome).await? {
            tracing::debug!(?outcome, error = %e, "made by another migrator meanwhile");
            return Ok(());
        }
    }
    Err(e)
}

/// Creates the database and applies the migrations it has not recorded yet. Safe to run
/// any number of times, from any number of processes at once.
pub async fn migrate(settings: &ClickHouseSettings) -> Result<MigrationReport, MigrationError> {
    let wrap = |source| MigrationError::ClickHouse {
        url: settings.url.clone(),
        source,
    };
    let root = settings.client(false);
    let features = server::detect(&root).await.map_err(wrap)?;
    apply(
        &root,
        &format!("CREATE DATABASE IF NOT EXISTS {}", settings.database),
        &Outcome::Database(settings.database.clone()),
    )
    .await
    .map_err(wrap)?;
    let db = settings.client(true);
    apply(
        &db,
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, applied_at DateTime) \
         ENGINE = ReplacingMergeTree() ORDER BY version",
        &Outcome::Table("schema_migrations".to_owned()),
    )
    .await
    .map_err(wrap)?;
    let done: Vec<u32> = db
        .query("SELECT DISTINCT version FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .map_err(wrap)?;
    let mut report = MigrationReport {
        features,
        applied: Vec::new(),
        already: Vec::new(),
    };
    for m in migrations(features) {
        if done.contains(&m.version) {
            report.already.push(m.version);
            continue;
        }
        apply(&db, &m.sql, &m.outcome).await.map_err(wrap)?;
        db.query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, now())")
            .bind(m.version)
            .bind(&m.name)
            .execute()
            .await
            .map_err(wrap)?;
        tracing::info!(version = m.version, name = %m.name, "ClickHouse migration applied");
        report.applied.push(m.version);
    }
    Ok(report)
}
