//! `webaccel-analytics-bench`: the writer against a real (local) ClickHouse server.
//! Prints figures and writes JSON; asserts nothing.
//!
//! Measured: batched insert throughput, the request path's cost of handing a row over
//! (p50/p99), spool write and replay rates, and rows lost across an outage while
//! rows keep arriving at a fixed rate.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use webaccel_analytics::local::LocalClickHouse;
use webaccel_analytics::rows::{InferenceRow, new_row_id, now_ms};
use webaccel_analytics::schema::migrate;
use webaccel_analytics::spool::Spool;
use webaccel_analytics::{Writer, WriterConfig, WriterHandle};
use webaccel_bench::pct;

#[derive(Debug, Parser)]
#[command(
    name = "webaccel-analytics-bench",
    about = "Benchmarks the ClickHouse writer against a local server"
)]
struct Args {
    /// Rows for the throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Seconds the server is down in the outage run.
    #[arg(long, default_value_t = 60)]
    outage_secs: u64,
    /// Rows per second during the outage run.
    #[arg(long, default_value_t = 1_000)]
    outage_rate: u64,
    #[arg(long, default_value = "webaccel-analytics-bench.json")]
    json: PathBuf,
}

fn row(k: u64) -> InferenceRow {
    InferenceRow {
        pod: format!("pod-{}", k % 8),
        ..InferenceRow::synthetic(
            &format!("model-{}", k % 16),
            "chromium",
            ["wasm", "webgpu"][(k % 2) as usize],
            now_ms(),
            (k % 100) as f64 / 8.0,
        )
    }
}
async fn count(ch: &LocalClickHouse, db: &str) -> anyhow::Result<u64> {
    Ok(ch
        .query(&format!(
            "SELECT count() FROM {db}.inference_performance FINAL"
        ))
        .await
        .map_err(anyhow::Error::msg)?
        .parse()?)
}

async fn wait_delivered(
    h: &WriterHandle<InferenceRow>,
    n: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let s = h.snapshot();
        if s.written + s.replayed >= n && s.spool_bytes == 0 {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < limit, "not delivered in {limit:?}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(dir: &std::path::Path) -> WriterConfig {
    WriterConfig {
        max_rows: 100_000,
        channel_capacity: 200_000,
        retry_interval: Duration::from_millis(500),
        ..WriterConfig::new(dir.to_owned())
    }
}

#[tokio::main]
#[allow(clippy::print_stdout, clippy::cast_precision_loss)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut ch = LocalClickHouse::start()
        .await
        .context("starting a local ClickHouse")?;
    let version = ch
        .query("SELECT version()")
        .await
        .map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;

    // Throughput: hand rows over as fast as the channel takes them, with the journal
    // (the default) and without, one after the other.
    let journaled = throughput(&ch, &dir.path().join("t"), args.rows, true).await?;
    let plain = throughput(&ch, &dir.path().join("u"), args.rows, false).await?;

    // Spool write and replay rates.
    let spool_rows = 200_000u64;
    let spool = Spool::<InferenceRow>::open(dir.path().join("s/inference_performance"), 1 << 34)?;
    let batch: Vec<InferenceRow> = (0..10_000).map(row).collect();
    let t = Instant::now();
    for _ in 0..spool_rows / 10_000 {
        let fresh: Vec<InferenceRow> = batch
            .iter()
            .map(|r| InferenceRow {
                row_id: new_row_id(),
                ..r.clone()
            })
            .collect();
        spool.append(&fresh)?;
    }
    let spool_write = spool_rows as f64 / t.elapsed().as_secs_f64();
    drop(spool);
    let settings = ch.settings("bench_replay");
    migrate(&settings).await?;
    let t = Instant::now();
    let writer = Writer::<InferenceRow>::start(&settings, config(&dir.path().join("s")))?;
    wait_delivered(&writer.handle, spool_rows, Duration::from_secs(300)).await?;
    let replay = spool_rows as f64 / t.elapsed().as_secs_f64();
    writer.shutdown().await;

    // An outage at a steady rate.
    let settings = ch.settings("bench_outage");
    migrate(&settings).await?;
    let writer = Writer::<InferenceRow>::start(&settings, config(&dir.path().join("o")))?;
    let total_secs = args.outage_secs + 20;
    let produced = args.outage_rate * total_secs;
    let producer = {
        let h = writer.handle.clone();
        let rate = args.outage_rate;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for k in 0..total_secs * 100 {
                tick.tick().await;
                for j in 0..rate / 100 {
                    h.write(row(k * 1_000 + j));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    ch.kill();
    tokio::time::sleep(Duration::from_secs(args.outage_secs)).await;
    ch.restart().await?;
    producer.await?;
    wait_delivered(&writer.handle, produced, Duration::from_secs(300)).await?;
    let outage_snap = writer.handle.snapshot();
    writer.shutdown().await;
    let outage_stored = count(&ch, "bench_outage").await?;

    println!("webaccel-analytics writer benchmark against ClickHouse {version} (local, loopback)");
    for (label, t) in [("journaled", &journaled), ("no journal", &plain)] {
        println!(
            "{label}: sustained throughput {} rows in {:.2} s = {:.0} rows/s batched ({} stored; {} spooled on the way); handing one row over: p50 {:.2} us, p99 {:.2} us, max {:.0} us",
            args.rows, t.seconds, t.rows_per_s, t.stored, t.spooled, t.p50, t.p99, t.max
        );
    }
    println!("spool: write {spool_write:.0} rows/s, replay into ClickHouse {replay:.0} rows/s");
    println!(
        "outage of {} s at {} rows/s: produced {produced}, stored {outage_stored}, lost {}, spooled {}, replayed {}, dropped {}",
        args.outage_secs,
        args.outage_rate,
        produced.saturating_sub(outage_stored),
        outage_snap.spooled,
        outage_snap.replayed,
        outage_snap.dropped
    );
    let report = json!({
        "clickhouse_version": version,
        "throughput_rows_per_s": journaled.rows_per_s,
        "throughput_rows": args.rows,
        "handoff_us": {"p50": journaled.p50, "p99": journaled.p99, "max": journaled.max},
        "without_journal": {"throughput_rows_per_s": plain.rows_per_s,
                            "handoff_us": {"p50": plain.p50, "p99": plain.p99, "max": plain.max}},
        "spool_write_rows_per_s": spool_write,
        "spool_replay_rows_per_s": replay,
        "outage": {"seconds": args.outage_secs, "rate": args.outage_rate, "produced": produced, "stored": outage_stored,
                   "lost": produced.saturating_sub(outage_stored), "spooled": outage_snap.spooled,
                   "replayed": outage_snap.replayed, "dropped": outage_snap.dropped},
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("JSON written to {}", args.json.display());
    Ok(())
}

/// What one throughput run measured.
struct Throughput {
    seconds: f64,
    rows_per_s: f64,
    stored: u64,
    spooled: u64,
    /// Microseconds to hand one row over (the request path's cost).
    p50: f64,
    p99: f64,
    max: f64,
}

#[allow(clippy::cast_precision_loss)]
async fn throughput(
    ch: &LocalClickHouse,
    dir: &std::path::Path,
    n: u64,
    journal: bool,
) -> anyhow::Result<Throughput> {
    let db = if journal {
        "bench_throughput"
    } else {
        "bench_throughput_plain"
    };
    let settings = ch.settings(db);
    migrate(&settings).await?;
    let writer = Writer::<InferenceRow>::start(
        &settings,
        WriterConfig {
            journal,
            ..config(dir)
        },
    )?;
    let rows: Vec<InferenceRow> = (0..n).map(row).collect();
    let mut handoff_us = Vec::with_capacity(rows.len());
    let start = Instant::now();
    for (k, r) in rows.into_iter().enumerate() {
        let t = Instant::now();
        writer.handle.write(r);
        handoff_us.push(t.elapsed().as_secs_f64() * 1e6);
        // Paced by the channel: this measures what the writer sustains, not how fast
        // the overflow path spools.
        if k % 1_000 == 0 {
            while writer.handle.room() < 2_000 {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    }
    wait_delivered(&writer.handle, n, Duration::from_secs(300)).await?;
    let elapsed = start.elapsed();
    let snap = writer.handle.snapshot();
    writer.shutdown().await;
    handoff_us.sort_by(f64::total_cmp);
    Ok(Throughput {
        seconds: elapsed.as_secs_f64(),
        rows_per_s: n as f64 / elapsed.as_secs_f64(),
        stored: count(ch, db).await?,
        spooled: snap.spooled,
        p50: pct(&handoff_us, 0.5),
        p99: pct(&handoff_us, 0.99),
        max: pct(&handoff_us, 1.0),
    })
}
