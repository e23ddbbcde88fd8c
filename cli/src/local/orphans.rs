//! Rows that stopped agents left unwritten. An agent killed with rows in memory leaves
//! them in its writer's journal, and one stopped while ClickHouse was down leaves them
//! in its spool; on a pod the restarted container finds them in the same volume, but a
//! local browser that goes is replaced by a new one with a folder of its own. So `up`
//! takes the agent's metrics folder when the browser goes ([`hand_over`]) and writes
//! what it holds itself ([`run`]): nothing an agent recorded is lost with it. A folder
//! left by an earlier `up` is written the same way when the next one starts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use webaccel_analytics::rows::{BrowserConnectionRow, GenerationRow, InferenceRow, TableRow};
use webaccel_analytics::{ClickHouseSettings, Writer, WriterConfig};

/// How often the folder is looked at for new arrivals.
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// How long one folder's rows are given to reach ClickHouse before the next look (the
/// folder stays until they have).
const WRITE_LIMIT: Duration = Duration::from_secs(30);

/// Moves a stopped agent's metrics folder (`metrics` under its cache) into `orphans`,
/// under the browser's name. Nothing to move is not an error.
pub fn hand_over(metrics: &Path, orphans: &Path, browser: &str) {
    if !metrics.exists() {
        return;
    }
    let to = orphans.join(browser);
    let moved = std::fs::create_dir_all(orphans).and_then(|()| std::fs::rename(metrics, &to));
    if let Err(e) = moved {
        tracing::warn!(from = %metrics.display(), to = %to.display(), error = %e, "could not take over a stopped agent's unwritten rows");
    }
}

/// Writes the rows in every folder under `orphans` to ClickHouse, now and whenever a
/// folder arrives, until `stop`; a folder goes once all its rows are written.
pub async fn run(settings: ClickHouseSettings, orphans: PathBuf, stop: CancellationToken) {
    loop {
        for dir in folders(&orphans) {
            if stop.is_cancelled() {
                return;
            }
            match write_folder(&settings, &dir, &stop).await {
                Ok(true) => {
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(folder = %dir.display(), error = %e, "removing a written agent folder failed");
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(folder = %dir.display(), error = %e, "reading a stopped agent's rows failed");
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}

fn folders(orphans: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(orphans) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// One folder's tables, each through a writer of its own over it (which spools what
/// the journal holds and replays the spool). Returns whether every row is written.
async fn write_folder(
    settings: &ClickHouseSettings,
    dir: &Path,
    stop: &CancellationToken,
) -> std::io::Result<bool> {
    let (a, b, c) = tokio::join!(
        write_table::<InferenceRow>(settings, dir, stop),
        write_table::<GenerationRow>(settings, dir, stop),
        write_table::<BrowserConnectionRow>(settings, dir, stop),
    );
    Ok(a? & b? & c?)
}

async fn write_table<T: TableRow>(
    settings: &ClickHouseSettings,
    dir: &Path,
    stop: &CancellationToken,
) -> std::io::Result<bool> {
    let writer = Writer::<T>::start(settings, WriterConfig::new(dir.to_owned()))?;
    let handle = writer.handle.clone();
    let recovered = handle.snapshot().recovered;
    let started = Instant::now();
    let written = loop {
        let snap = handle.snapshot();
        if snap.spool_bytes == 0 {
            break true;
        }
        if started.elapsed() > WRITE_LIMIT || stop.is_cancelled() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    writer.shutdown().await;
    let snap = handle.snapshot();
    if snap.replayed > 0 || recovered > 0 {
        tracing::info!(table = T::TABLE, folder = %dir.display(), recovered, replayed = snap.replayed, "wrote a stopped agent's rows");
    }
    Ok(written)
}
