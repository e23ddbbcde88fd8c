//! The batching writer. Callers hand rows over without waiting ([`WriterHandle::write`]
//! is a channel `try_send`); one task per table batches them through the clickhouse
//! crate's inserter (maximum rows and period). When ClickHouse fails, the batch goes to
//! the [`Spool`] and is replayed, oldest first, once the server answers again. Rows
//! keep their `row_id`, so a batch that reached the server before its error was seen
//! collapses on merge instead of counting twice. Every row is also journaled before it
//! is queued (see [`crate::journal`]), so a process killed with rows in memory loses
//! none: the next writer over the same folder spools them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::journal::{Journal, Settled};
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
    /// Whether rows are journaled on their way in (see [`crate::journal`]).
    pub journal: bool,
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
            journal: true,
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
    /// Rows a dead process left in its journal, found at start and spooled.
    pub recovered: AtomicU64,
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
    pub recovered: u64,
    pub failures: u64,
    pub healthy: bool,
    pub last_error: Option<String>,
    pub spool_bytes: u64,
}

/// The caller's side of a writer: cheap to clone, never blocks.
#[derive(Debug)]
pub struct WriterHandle<T: TableRow> {
    tx: mpsc::Sender<Entry<T>>,
    sink: Arc<Sink<T>>,
    overflow: Arc<Overflow<T>>,
}

/// A row on its way to the writer task, with the journal segment it is in.
#[derive(Debug)]
struct Entry<T> {
    segment: Option<u64>,
    row: T,
}

/// Rows in memory, with their journal segments to settle once they are safe elsewhere.
#[derive(Debug)]
struct Rows<T> {
    rows: Vec<T>,
    settled: Settled,
}

impl<T> Default for Rows<T> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            settled: Settled::default(),
        }
    }
}

impl<T> Rows<T> {
    fn push(&mut self, e: Entry<T>) {
        self.settled.add(e.segment);
        self.rows.push(e.row);
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Rows that found the channel full, gathered so they reach the spool as batches (a
/// file and an fsync per row would make the overflow path the slow one).
#[derive(Debug)]
struct Overflow<T>(parking_lot::Mutex<Rows<T>>);

/// Overflowed rows written to the spool at once.
const OVERFLOW_BATCH: usize = 1_000;

impl<T: TableRow> Overflow<T> {
    fn push(&self, e: Entry<T>) -> Option<Rows<T>> {
        let mut rows = self.0.lock();
        rows.push(e);
        (rows.len() >= OVERFLOW_BATCH).then(|| std::mem::take(&mut *rows))
    }

    fn take(&self) -> Rows<T> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl<T: TableRow> Clone for WriterHandle<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            sink: self.sink.clone(),
            overflow: self.overflow.clone(),
        }
    }
}

/// Where rows go when ClickHouse cannot take them, and what counts them: shared by the
/// handles and the task.
#[derive(Debug)]
struct Sink<T> {
    spool: Spool<T>,
    journal: Option<Journal<T>>,
    stats: WriterStats,
}

impl<T: TableRow> Sink<T> {
    /// Spools `rows` (or drops them, counted and logged, when the spool is full or
    /// failing); either way their journal segments are settled.
    fn spool_or_drop(&self, rows: Rows<T>) {
        let n = rows.len() as u64;
        match self.spool.append(&rows.rows) {
            Ok(true) => {
                self.stats.spooled.fetch_add(n, Ordering::Relaxed);
            }
            Ok(false) => {
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(table = T::TABLE, rows = n, "spool full: rows dropped");
            }
            Err(e) => {
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(table = T::TABLE, rows = n, error = %e, "spool write failed: rows dropped");
            }
        }
        self.settle(rows.settled);
    }

    /// Notes rows as safe (in ClickHouse or the spool).
    fn settle(&self, settled: Settled) {
        if let Some(j) = &self.journal {
            j.settle(settled);
        }
    }
}

impl<T: TableRow> WriterHandle<T> {
    /// Hands a row to the writer. Never waits: when the channel is full the row goes to
    /// the spool.
    pub fn write(&self, row: T) {
        let segment = self.sink.journal.as_ref().and_then(|j| {
            j.append(&row)
                .inspect_err(|e| {
                    tracing::warn!(table = T::TABLE, error = %e, "journaling a row failed: it is kept in memory only");
                })
                .ok()
        });
        if let Err(e) = self.tx.try_send(Entry { segment, row }) {
            let entry = match e {
                mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => e,
            };
            if let Some(batch) = self.overflow.push(entry) {
                // Disk writes (and their fsync) stay off the caller's thread.
                let sink = self.sink.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn_blocking(move || sink.spool_or_drop(batch));
                    }
                    Err(_) => sink.spool_or_drop(batch),
                }
            }
        }
    }

    /// Free slots in the channel: a producer that can wait uses it to pace itself.
    pub fn room(&self) -> usize {
        self.tx.capacity()
    }

    pub fn snapshot(&self) -> WriterSnapshot {
        let s = &self.sink.stats;
        WriterSnapshot {
            written: s.written.load(Ordering::Relaxed),
            spooled: s.spooled.load(Ordering::Relaxed),
            replayed: s.replayed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            recovered: s.recovered.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            healthy: s.healthy.load(Ordering::Relaxed),
            last_error: s.last_error.lock().clone(),
            spool_bytes: self.sink.spool.bytes(),
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
        let spool = Spool::open(config.spool_dir.join(T::TABLE), config.spool_max_bytes)?;
        let stats = WriterStats::default();
        // Healthy until an attempt fails.
        stats.healthy.store(true, Ordering::Relaxed);
        let journal = if config.journal {
            let dir = config.spool_dir.join(format!("{}.journal", T::TABLE));
            let (journal, recovered) = Journal::open(dir, |rows| {
                let n = rows.len() as u64;
                if spool.append(&rows)? {
                    stats.spooled.fetch_add(n, Ordering::Relaxed);
                } else {
                    stats.dropped.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(
                        table = T::TABLE,
                        rows = n,
                        "spool full: recovered rows dropped"
                    );
                }
                Ok(())
            })?;
            if recovered > 0 {
                tracing::info!(
                    table = T::TABLE,
                    rows = recovered,
                    "rows a stopped process left unwritten recovered from its journal"
                );
            }
            stats.recovered.store(recovered, Ordering::Relaxed);
            Some(journal)
        } else {
            None
        };
        let sink = Arc::new(Sink {
            spool,
            journal,
            stats,
        });
        let (tx, rx) = mpsc::channel(config.channel_capacity);
        let overflow = Arc::new(Overflow(parking_lot::Mutex::new(Rows::default())));
        let task = Task {
            client: settings.client(true),
            config,
            sink: sink.clone(),
            overflow: overflow.clone(),
            pending: Rows::default(),
            held: Rows::default(),
            inserter: None,
            down_since: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(task.run(rx, stopped));
        Ok(Self {
            handle: WriterHandle { tx, sink, overflow },
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
    sink: Arc<Sink<T>>,
    overflow: Arc<Overflow<T>>,
    /// Rows in the open INSERT, kept until it is committed so a failure loses none.
    pending: Rows<T>,
    /// Rows that arrived while ClickHouse was down, not sent anywhere yet.
    held: Rows<T>,
    inserter: Option<clickhouse::inserter::Inserter<T>>,
    /// Set while ClickHouse is failing: rows go straight to the spool until
    /// `retry_interval` has passed.
    down_since: Option<Instant>,
}

impl<T: TableRow> Task<T> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Entry<T>>,
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
                    if let Some(j) = &self.sink.journal {
                        j.rotate();
                    }
                }
            }
        }
        self.commit(true).await;
        self.replay().await;
        self.spool_pending();
        self.spool_held();
        self.spool_overflow();
        if let Some(j) = &self.sink.journal {
            j.close();
        }
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
        self.sink.stats.healthy.store(false, Ordering::Relaxed);
        self.sink.stats.failures.fetch_add(1, Ordering::Relaxed);
        *self.sink.stats.last_error.lock() = Some(format!("{what}: {e}"));
    }

    fn succeeded(&mut self) {
        self.down_since = None;
        self.sink.stats.healthy.store(true, Ordering::Relaxed);
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
        self.sink.spool_or_drop(std::mem::take(&mut self.pending));
    }

    async fn accept(&mut self, entry: Entry<T>) {
        if self.is_down() {
            self.held.push(entry);
            if self.held.len() as u64 >= self.config.max_rows {
                self.spool_held();
            }
            return;
        }
        if !self.flush_held().await {
            self.held.push(entry);
            return;
        }
        let mut inserter = match self.inserter.take() {
            Some(i) => i,
            None => self.new_inserter(),
        };
        match inserter.write(&entry.row).await {
            Ok(()) => {
                self.pending.push(entry);
                self.inserter = Some(inserter);
                self.commit(false).await;
            }
            Err(e) => {
                self.pending.push(entry);
                self.failed("insert", &e);
                self.spool_pending();
            }
        }
    }

    fn spool_overflow(&self) {
        self.sink.spool_or_drop(self.overflow.take());
    }

    fn spool_held(&mut self) {
        self.sink.spool_or_drop(std::mem::take(&mut self.held));
    }

    /// Writes the rows held while ClickHouse was down, in one INSERT. Returns whether
    /// ClickHouse is (still) up.
    async fn flush_held(&mut self) -> bool {
        if self.held.is_empty() {
            return true;
        }
        let rows = std::mem::take(&mut self.held);
        match insert_batch(&self.client, self.config.insert_timeout, &rows.rows).await {
            Ok(()) => {
                self.sink
                    .stats
                    .written
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                self.sink.settle(rows.settled);
                self.succeeded();
                true
            }
            Err(e) => {
                self.failed("insert", &e);
                self.sink.spool_or_drop(rows);
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
                self.sink
                    .stats
                    .written
                    .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
                let done = std::mem::take(&mut self.pending);
                self.sink.settle(done.settled);
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
            let batch = match self.sink.spool.oldest() {
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
                    self.sink
                        .stats
                        .replayed
                        .fetch_add(batch.rows.len() as u64, Ordering::Relaxed);
                    if let Err(e) = self.sink.spool.remove(batch.seq) {
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
