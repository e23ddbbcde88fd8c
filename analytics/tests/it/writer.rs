//! The writer against a real ClickHouse server: concurrent load, an outage in the
//! middle of a stream, and a restart with a non-empty spool. Every row is counted
//! exactly: nothing lost, nothing twice.

use std::time::{Duration, Instant};

use webaccel_analytics::rows::{InferenceRow, now_ms};
use webaccel_analytics::schema::migrate;
use webaccel_analytics::{Writer, WriterConfig, WriterHandle};

const DB: &str = "webaccel_writer_test";

fn row(k: u64) -> InferenceRow {
    InferenceRow {
        pod: format!("pod-{}", k % 3),
        ..InferenceRow::synthetic(
            &format!("model-{}", k % 4),
            "chromium",
            "wasm",
            now_ms(),
            0.5,
        )
    }
}

fn config(spool: &std::path::Path) -> WriterConfig {
    WriterConfig {
        max_rows: 2_000,
        period: Duration::from_millis(200),
        retry_interval: Duration::from_millis(200),
        insert_timeout: Duration::from_secs(5),
        ..WriterConfig::new(spool.to_owned())
    }
}

/// Rows in the table, duplicates collapsed (FINAL), and distinct row ids.
async fn counts(ch: &crate::common::ClickHouse) -> (u64, u64) {
    let text = crate::common::query(
        ch,
        &format!("SELECT count(), uniqExact(row_id) FROM {DB}.inference_performance FINAL"),
    )
    .await;
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

async fn wait_drained(handle: &WriterHandle<InferenceRow>) {
    let start = Instant::now();
    while handle.snapshot().spool_bytes > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "spool not drained: {:?}",
            handle.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn concurrent_writers_lose_nothing() {
    let ch = crate::common::start().await;
    let settings = ch.settings(DB);
    migrate(&settings).await.unwrap();
    let spool = tempfile::tempdir().unwrap();
    let writer = Writer::<InferenceRow>::start(&settings, config(spool.path())).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let handle = writer.handle.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..5_000 {
                handle.write(row(t * 10_000 + k));
                if k % 500 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let handle = writer.handle.clone();
    writer.shutdown().await;
    let snap = handle.snapshot();
    assert_eq!(snap.dropped, 0, "{snap:?}");
    assert_eq!(snap.written + snap.replayed, 40_000, "{snap:?}");
    assert_eq!(counts(&ch).await, (40_000, 40_000));
}

#[tokio::test]
async fn an_outage_mid_stream_loses_nothing_and_duplicates_nothing() {
    let mut ch = crate::common::start().await;
    let settings = ch.settings(DB);
    migrate(&settings).await.unwrap();
    let spool = tempfile::tempdir().unwrap();
    let writer = Writer::<InferenceRow>::start(&settings, config(spool.path())).unwrap();

    // 1,000 rows/s for 4 s; the server is down from 1 s to 2.5 s.
    let producer = {
        let handle = writer.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for k in 0..400u64 {
                tick.tick().await;
                for j in 0..10 {
                    handle.write(row(k * 10 + j));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ch.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = writer.handle.snapshot();
    assert!(
        !during.healthy,
        "the writer must notice the outage: {during:?}"
    );
    assert!(during.spooled > 0, "{during:?}");
    ch.restart().await.unwrap();
    producer.await.unwrap();
    wait_drained(&writer.handle).await;
    let handle = writer.handle.clone();
    writer.shutdown().await;
    let snap = handle.snapshot();
    assert_eq!(snap.dropped, 0, "{snap:?}");
    assert!(snap.replayed > 0, "{snap:?}");
    assert_eq!(counts(&ch).await, (4_000, 4_000), "{snap:?}");
}

#[tokio::test]
async fn a_spool_left_by_a_stopped_writer_is_replayed_by_the_next() {
    let mut ch = crate::common::start().await;
    let settings = ch.settings(DB);
    migrate(&settings).await.unwrap();
    let spool = tempfile::tempdir().unwrap();
    ch.kill();

    let writer = Writer::<InferenceRow>::start(&settings, config(spool.path())).unwrap();
    for k in 0..1_500 {
        writer.handle.write(row(k));
    }
    let handle = writer.handle.clone();
    writer.shutdown().await;
    let snap = handle.snapshot();
    assert_eq!(
        (snap.written, snap.spooled, snap.dropped),
        (0, 1_500, 0),
        "{snap:?}"
    );
    assert!(snap.spool_bytes > 0);
    assert!(!snap.healthy);
    assert!(snap.last_error.is_some());

    ch.restart().await.unwrap();
    let writer = Writer::<InferenceRow>::start(&settings, config(spool.path())).unwrap();
    wait_drained(&writer.handle).await;
    let handle = writer.handle.clone();
    writer.shutdown().await;
    assert_eq!(handle.snapshot().replayed, 1_500);
    assert_eq!(counts(&ch).await, (1_500, 1_500));
}

/// A process killed with rows in its writer's memory (an INSERT not yet committed)
/// loses none of them: the journal keeps them, and the next writer over the folder
/// spools and writes them.
#[tokio::test]
async fn rows_in_memory_when_the_process_dies_are_written_by_the_next_writer() {
    let ch = crate::common::start().await;
    let settings = ch.settings(DB);
    migrate(&settings).await.unwrap();
    let spool = tempfile::tempdir().unwrap();
    let dying = WriterConfig {
        // Nothing is committed before the "kill".
        period: Duration::from_secs(600),
        max_rows: 1_000_000,
        ..config(spool.path())
    };
    // A writer on a runtime of its own, dropped with its task unfinished: as with a
    // SIGKILL, none of the writer's stopping runs (its open INSERT is abandoned), and
    // its files close.
    let for_thread = settings.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let writer = rt.block_on(async {
            let writer = Writer::<InferenceRow>::start(&for_thread, dying).unwrap();
            for k in 0..700 {
                writer.handle.write(row(k));
            }
            // The task takes them into its open INSERT.
            tokio::time::sleep(Duration::from_millis(300)).await;
            writer
        });
        drop(rt);
        drop(writer);
    })
    .join()
    .unwrap();
    assert_eq!(counts(&ch).await, (0, 0), "nothing was committed");

    let writer = Writer::<InferenceRow>::start(&settings, config(spool.path())).unwrap();
    assert_eq!(writer.handle.snapshot().recovered, 700);
    wait_drained(&writer.handle).await;
    let handle = writer.handle.clone();
    writer.shutdown().await;
    assert_eq!(handle.snapshot().replayed, 700);
    assert_eq!(counts(&ch).await, (700, 700));
    // A writer that stopped cleanly leaves no journal behind.
    let journal = spool.path().join("inference_performance.journal");
    assert_eq!(std::fs::read_dir(journal).unwrap().count(), 0);
}

#[tokio::test]
async fn a_full_channel_sends_rows_to_the_spool_not_the_floor() {
    let ch = crate::common::start().await;
    let settings = ch.settings(DB);
    migrate(&settings).await.unwrap();
    let spool = tempfile::tempdir().unwrap();
    let writer = Writer::<InferenceRow>::start(
        &settings,
        WriterConfig {
            channel_capacity: 10,
            ..config(spool.path())
        },
    )
    .unwrap();
    // No yielding: the writer task cannot drain the channel meanwhile.
    for k in 0..5_000 {
        writer.handle.write(row(k));
    }
    // Overflowed batches are spooled off the caller's thread, so shortly after.
    let start = Instant::now();
    while writer.handle.snapshot().spooled < 4_000 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            writer.handle.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_drained(&writer.handle).await;
    let handle = writer.handle.clone();
    writer.shutdown().await;
    let snap = handle.snapshot();
    assert_eq!(snap.dropped, 0, "{snap:?}");
    assert_eq!(counts(&ch).await, (5_000, 5_000), "{snap:?}");
}
