//! The batching writer. Callers hand rows over without waiting ([`WriterHandle::write`]
//! is a channel `try_send`); one task per table batches them through the clickhouse
//! crate's inserter (maximum rows and period). When ClickHouse fails, the batch goes to
//! the [`Spool`] and is replayed, oldest first, once the server answers again. Rows
//! keep their `row_id`, so a batch that reached the server before its error was seen
//! collapses on merge instead of counting twice.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::rows::TableRow;
use crate::settings::ClickHouseSettings;
use crate::spool::Spool;

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Rows per INSERT at most.
    pub max_rows: u64,
    /// An INSERT ends after this long even if not full.
    pub period: Duration,
    /// Rows waiting in memory for the writer task; past it they go to the spool.
    pub channel_capacity: usize,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// After a failure, how long before ClickHouse is tried again.
    pub retry_interval: Duration,
    /// Send and end timeouts of one INSERT.
    pub insert_timeout: Duration,
}

impl WriterConfig {
    pub fn new(spool_dir: PathBuf) -> Self {
        Self {
            max_rows: 10_000,
            period: Duration::from_secs(1),
            channel_capacity: 100_000,
            spool_dir,
            spool_max_bytes: 1 << 30,
            retry_interval: Duration::from_secs(1),
            insert_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of one writer.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    pub spooled: AtomicU64,
    pub replayed: AtomicU64,
    pub dropped: AtomicU64,
    pub failures: AtomicU64,
    /// Whether the last attempt to reach ClickHouse succeeded.
    pub healthy: AtomicBool,
    pub last_error: parking_lot::Mutex<Option<String>>,
}

/// A point-in-time copy of [`WriterStats`], with the spool's size.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WriterSnapshot {
    pub written: u64,
    pub spooled: u64,
    pub replayed: u64,
    pub dropped: u64,
    pub failures: u64,
    pub healthy: bool,
    pub last_error: Option<String>,
    pub spool_bytes: u64,
}

/// The caller's side of a writer: cheap to clone, never blocks.
#[derive(Debug)]
pub struct WriterHandle<T: TableRow> {
    tx: mpsc::Sender<T>,
    spool: Arc<Spool<T>>,
    stats: Arc<WriterStats>,
    overflow: Arc<Overflow<T>>,
}

/// Rows that found the channel full, gathered so they reach the spool as batches (a
/// file and an fsync per row would make the overflow path the slow one).
#[derive(Debug)]
struct Overflow<T>(parking_lot::Mutex<Vec<T>>);

/// Overflowed rows written to the spool at once.
const OVERFLOW_BATCH: usize = 1_000;

impl<T: TableRow> Overflow<T> {
    fn push(&self, row: T) -> Option<Vec<T>> {
        let mut rows = self.0.lock();
        rows.push(row);
        (rows.len() >= OVERFLOW_BATCH).then(|| std::mem::take(&mut *rows))
    }

    fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl<T: TableRow> Clone for WriterHandle<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            spool: self.spool.clone(),
            stats: self.stats.clone(),
            overflow: self.overflow.clone(),
        }
    }
}

fn spool_or_drop<T: TableRow>(spool: &Spool<T>, stats: &WriterStats, rows: &[T]) {
    let n = rows.len() as u64;
    match spool.append(rows) {
        Ok(true) => {
            stats.spooled.fetch_add(n, Ordering::Relaxed);
        }
        Ok(false) => {
            stats.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::error!(table = T::TABLE, rows = n, "spool full: rows dropped");
        }
        Err(e) => {
            stats.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::error!(table = T::TABLE, rows = n, error = %e, "spool write failed: rows dropped");
        }
    }
}

impl<T: TableRow> WriterHandle<T> {
    /// Hands a row to the writer. Never waits: when the channel is full the row goes to
    /// the spool.
    pub fn write(&self, row: T) {
        if let Err(e) = self.tx.try_send(row) {
            let row = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            if let Some(batch) = self.overflow.push(row) {
                // Disk writes (and their fsync) stay off the caller's thread.
                let (spool, stats) = (self.spool.clone(), self.stats.clone());
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn_blocking(move || spool_or_drop(&spool, &stats, &batch));
                    }
                    Err(_) => spool_or_drop(&spool, &stats, &batch),
                }
            }
        }
    }

    /// Free slots in the channel: a producer that can wait uses it to pace itself.
    pub fn room(&self) -> usize {
        self.tx.capacity()
    }

    pub fn snapshot(&self) -> WriterSnapshot {
        let s = &self.stats;
        WriterSnapshot {
            written: s.written.load(Ordering::Relaxed),
            spooled: s.spooled.load(Ordering::Relaxed),
            replayed: s.replayed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            healthy: s.healthy.load(Ordering::Relaxed),
            last_error: s.last_error.lock().clone(),
            spool_bytes: self.spool.bytes(),
        }
    }
}

/// A running writer for table `T::TABLE`.
#[derive(Debug)]
pub struct Writer<T: TableRow> {
    pub handle: WriterHandle<T>,
    task: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl<T: TableRow> Writer<T> {
    /// Starts the writer task. Rows a previous process spooled are replayed first.
    pub fn start(settings: &ClickHouseSettings, config: WriterConfig) -> std::io::Result<Self> {
        let spool = Arc::new(Spool::open(
            config.spool_dir.join(T::TABLE),
            config.spool_max_bytes,
        )?);
        let stats = Arc::new(WriterStats::default());
        // Healthy until an attempt fails.
        stats.healthy.store(true, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(config.channel_capacity);
        let overflow = Arc::new(Overflow(parking_lot::Mutex::new(Vec::new())));
        let task = Task {
            client: settings.client(true),
            config,
            spool: spool.clone(),
            stats: stats.clone(),
            overflow: overflow.clone(),
            pending: Vec::new(),
            held: Vec::new(),
            inserter: None,
            down_since: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(task.run(rx, stopped));
        Ok(Self {
            handle: WriterHandle {
                tx,
                spool,
                stats,
                overflow,
            },
            task,
            stop,
        })
    }

    /// Writes (or spools) every row handed over so far and stops. Handles still held
    /// elsewhere send later rows to the spool, for the next writer to replay.
    pub async fn shutdown(self) {
        let Self { handle, task, stop } = self;
        drop(handle);
        let _ = stop.send(());
        let _ = task.await;
    }
}

/// One INSERT of a whole batch (used for replays and for rows held while down). A
/// free function so the future borrows only the client, not the task.
async fn insert_batch<T: TableRow>(
    client: &clickhouse::Client,
    timeout: Duration,
    rows: &[T],
) -> Result<(), clickhouse::error::Error> {
    let mut insert = client
        .insert::<T>(T::TABLE)
        .await?
        .with_timeouts(Some(timeout), Some(timeout));
    for r in rows {
        insert.write(r).await?;
    }
    insert.end().await
}

struct Task<T: TableRow> {
    client: clickhouse::Client,
    config: WriterConfig,
    spool: Arc<Spool<T>>,
    stats: Arc<WriterStats>,
    overflow: Arc<Overflow<T>>,
    /// Rows in the open INSERT, kept until it is committed so a failure loses none.
    pending: Vec<T>,
    /// Rows that arrived while ClickHouse was down, not sent anywhere yet.
    held: Vec<T>,
    inserter: Option<clickhouse::inserter::Inserter<T>>,
    /// Set while ClickHouse is failing: rows go straight to the spool until
    /// `retry_interval` has passed.
    down_since: Option<Instant>,
}

impl<T: TableRow> Task<T> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<T>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut tick =
            tokio::time::interval(self.config.period.min(self.config.retry_interval) / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                row = rx.recv() => match row {
                    Some(row) => self.accept(row).await,
                    None => break,
                },
                _ = &mut stop => {
                    // Take what was handed over before the stop, then no more.
                    rx.close();
                    while let Some(row) = rx.recv().await {
                        self.accept(row).await;
                    }
                    break;
                }
                _ = tick.tick() => {
                    self.commit(false).await;
                    self.spool_overflow();
                    self.replay().await;
                }
            }
        }
        self.commit(true).await;
        self.replay().await;
        self.spool_pending();
        self.spool_held();
        self.spool_overflow();
    }

    fn is_down(&self) -> bool {
        self.down_since
            .is_some_and(|t| t.elapsed() < self.config.retry_interval)
    }

    fn failed(&mut self, what: &str, e: &clickhouse::error::Error) {
        if self.down_since.is_none() || !self.is_down() {
            tracing::warn!(table = T::TABLE, error = %e, "{what} failed; spooling until ClickHouse answers");
        }
        self.down_since = Some(Instant::now());
        self.stats.healthy.store(false, Ordering::Relaxed);
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        *self.stats.last_error.lock() = Some(format!("{what}: {e}"));
    }

    fn succeeded(&mut self) {
        self.down_since = None;
        self.stats.healthy.store(true, Ordering::Relaxed);
    }

    fn new_inserter(&self) -> clickhouse::inserter::Inserter<T> {
        self.client
            .inserter::<T>(T::TABLE)
            .with_max_rows(self.config.max_rows)
            .with_period(Some(self.config.period))
            .with_timeouts(
                Some(self.config.insert_timeout),
                Some(self.config.insert_timeout),
            )
    }

    /// Moves the open INSERT's rows to the spool and forgets the INSERT.
    fn spool_pending(&mut self) {
        self.inserter = None;
        let rows = std::mem::take(&mut self.pending);
        spool_or_drop(&self.spool, &self.stats, &rows);
    }

    async fn accept(&mut self, row: T) {
        if self.is_down() {
            self.held.push(row);
            if self.held.len() as u64 >= self.config.max_rows {
                self.spool_held();
            }
            return;
        }
        if !self.flush_held().await {
            self.held.push(row);
            return;
        }
        let mut inserter = match self.inserter.take() {
            Some(i) => i,
            None => self.new_inserter(),
        };
        match inserter.write(&row).await {
            Ok(()) => {
                self.pending.push(row);
                self.inserter = Some(inserter);
                self.commit(false).await;
            }
            Err(e) => {
                self.pending.push(row);
                self.failed("insert", &e);
                self.spool_pending();
            }
        }
    }

    fn spool_overflow(&self) {
        let rows = self.overflow.take();
        spool_or_drop(&self.spool, &self.stats, &rows);
    }

    fn spool_held(&mut self) {
        let rows = std::mem::take(&mut self.held);
        spool_or_drop(&self.spool, &self.stats, &rows);
    }

    /// Writes the rows held while ClickHouse was down, in one INSERT. Returns whether
    /// ClickHouse is (still) up.
    async fn flush_held(&mut self) -> bool {
        if self.held.is_empty() {
            return true;
        }
        let rows = std::mem::take(&mut self.held);
        match insert_batch(&self.client, self.config.insert_timeout, &rows).await {
            Ok(()) => {
                self.stats
                    .written
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                self.succeeded();
                true
            }
            Err(e) => {
                self.failed("insert", &e);
                spool_or_drop(&self.spool, &self.stats, &rows);
                false
            }
        }
    }

    /// Ends the open INSERT if its limits are reached (or `force`).
    async fn commit(&mut self, force: bool) {
        if self.is_down() {
            if force || self.held.len() as u64 >= self.config.max_rows {
                self.spool_held();
            }
            return;
        }
        if !self.flush_held().await {
            return;
        }
        let Some(inserter) = self.inserter.as_mut() else {
            return;
        };
        let result = if force {
            inserter.force_commit().await
        } else {
            inserter.commit().await
        };
        match result {
            Ok(q) if q.transactions > 0 || force => {
                self.stats
                    .written
                    .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
                self.pending.clear();
                self.succeeded();
            }
            Ok(_) => {}
            Err(e) => {
                self.failed("insert", &e);
                self.spool_pending();
            }
        }
    }

    /// Replays spooled batches, oldest first, while ClickHouse takes them.
    async fn replay(&mut self) {
        while !self.is_down() {
            let batch = match self.spool.oldest() {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(table = T::TABLE, error = %e, "reading the spool failed");
                    return;
                }
            };
            match insert_batch(&self.client, self.config.insert_timeout, &batch.rows).await {
                Ok(()) => {
                    self.succeeded();
                    self.stats
                        .replayed
                        .fetch_add(batch.rows.len() as u64, Ordering::Relaxed);
                    if let Err(e) = self.spool.remove(batch.seq) {
                        tracing::error!(table = T::TABLE, error = %e, "removing a replayed batch failed");
                        return;
                    }
                }
                Err(e) => {
                    self.failed("replay", &e);
                    return;
                }
            }
        }
    }
}
