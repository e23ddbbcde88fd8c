//! The fleet's history in ClickHouse, written by both hosts (the operator and `webaccel
//! up`): one `pool_events` row per scale decision, heal, drain, roll and recycle, and per
//! change of a ModelDeployment's replicas, with its reason, through webaccel-analytics' writer. It never blocks a
//! reconcile; with ClickHouse down, rows spool to disk and are replayed later.

use std::time::Duration;

use crate::rows::{PoolEventRow, new_row_id, now_ms};
use crate::{ClickHouseSettings, Writer, WriterConfig, WriterHandle};
use parking_lot::Mutex;

/// How often the schema migration is retried while ClickHouse cannot be reached.
const MIGRATION_RETRY: Duration = Duration::from_secs(5);

/// What happened to a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolEvent {
    Scale,
    Heal,
    Drain,
    Roll,
    Recycle,
    /// A ModelDeployment's replicas changed (its autoscaler decided).
    ModelScale,
}

impl PoolEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scale => "scale",
            Self::Heal => "heal",
            Self::Drain => "drain",
            Self::Roll => "roll",
            Self::Recycle => "recycle",
            Self::ModelScale => "model_scale",
        }
    }
}

#[derive(Debug, Default)]
pub struct PoolHistory {
    sink: Option<(ClickHouseSettings, WriterHandle<PoolEventRow>)>,
    writer: Mutex<Option<Writer<PoolEventRow>>>,
}

impl PoolHistory {
    /// Records nothing (no ClickHouse configured).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Starts the writer, spooling under `spool_dir`.
    pub fn start(settings: ClickHouseSettings, config: WriterConfig) -> std::io::Result<Self> {
        let writer = Writer::start(&settings, config)?;
        Ok(Self {
            sink: Some((settings, writer.handle.clone())),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Applies the schema, retrying until ClickHouse answers; run it on its own task.
    pub async fn migrate_until_done(&self) {
        let Some((settings, _)) = &self.sink else {
            return;
        };
        loop {
            match crate::schema::migrate(settings).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?MIGRATION_RETRY, "ClickHouse not usable yet; pool events spool to disk");
                }
            }
            tokio::time::sleep(MIGRATION_RETRY).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        namespace: &str,
        pool: &str,
        event: PoolEvent,
        pod: &str,
        from: i32,
        to: i32,
        reason: &str,
    ) {
        self.write(namespace, pool, event, pod, "", from, to, reason);
    }

    /// A ModelDeployment's replicas going `from` → `to` on `pool`, and why.
    pub fn record_model(
        &self,
        namespace: &str,
        pool: &str,
        model: &str,
        from: i32,
        to: i32,
        reason: &str,
    ) {
        self.write(
            namespace,
            pool,
            PoolEvent::ModelScale,
            "",
            model,
            from,
            to,
            reason,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        namespace: &str,
        pool: &str,
        event: PoolEvent,
        pod: &str,
        model: &str,
        from: i32,
        to: i32,
        reason: &str,
    ) {
        let Some((_, handle)) = &self.sink else {
            return;
        };
        handle.write(PoolEventRow {
            event_time: now_ms(),
            row_id: new_row_id(),
            namespace: namespace.to_owned(),
            pool: pool.to_owned(),
            event: event.as_str().to_owned(),
            pod: pod.to_owned(),
            from_replicas: from.max(0) as u32,
            to_replicas: to.max(0) as u32,
            reason: reason.to_owned(),
            model: model.to_owned(),
        });
    }

    /// Writes (or spools) what was recorded and stops the writer.
    pub async fn shutdown(&self) {
        let writer = self.writer.lock().take();
        if let Some(w) = writer {
            w.shutdown().await;
        }
    }
}
