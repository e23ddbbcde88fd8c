//! The writer's journal: every row handed to a writer is appended to a journal segment
//! before it is queued in memory, and a segment is deleted once each of its rows is in
//! ClickHouse or in the [`Spool`](crate::spool::Spool). A process killed with rows still
//! in memory (SIGKILL, the OOM killer) leaves them in its segments; the next writer over
//! the same folder finds them ([`Journal::open`]), spools them and they are replayed like
//! any spooled batch. A row that had reached ClickHouse before the kill is then written
//! twice with its `row_id`, and the tables collapse it.
//!
//! A row is one `write(2)` to a file the process holds open, without an fsync: what
//! survives is the death of the process, which is the fault this guards against (a
//! machine that loses power loses its page cache too). A live writer holds a lock on each
//! of its segments, so a second process over the same folder never takes them.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A segment takes new rows for this long at most, so one whose rows are all settled is
/// deleted soon after.
const SEGMENT_AGE: Duration = Duration::from_secs(2);
/// ... and this many rows at most.
const SEGMENT_ROWS: u64 = 50_000;

/// Rows of each journal segment that have reached ClickHouse or the spool, to be
/// reported with [`Journal::settle`].
#[derive(Debug, Default)]
pub struct Settled(BTreeMap<u64, u64>);

impl Settled {
    /// Counts one row of `segment` (`None`: a row that was never journaled).
    pub fn add(&mut self, segment: Option<u64>) {
        if let Some(s) = segment {
            *self.0.entry(s).or_default() += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Held open (and locked) until the segment is deleted.
    file: File,
    appended: u64,
    settled: u64,
    opened: Instant,
}

#[derive(Debug)]
struct State {
    /// The segment taking new rows.
    current: Option<u64>,
    next_id: u64,
    segments: BTreeMap<u64, Segment>,
}

/// A folder of journal segments for rows of `T`.
#[derive(Debug)]
pub struct Journal<T> {
    dir: PathBuf,
    state: Mutex<State>,
    _rows: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens (creating) the journal in `dir`. The rows in segments a dead process left
    /// there are handed to `recover` (to be spooled), then those segments are deleted.
    /// Returns how many rows were recovered.
    pub fn open(
        dir: PathBuf,
        mut recover: impl FnMut(Vec<T>) -> std::io::Result<()>,
    ) -> std::io::Result<(Self, u64)> {
        fs::create_dir_all(&dir)?;
        let mut recovered = 0;
        let mut left: Vec<PathBuf> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "journal"))
            .collect();
        left.sort();
        for path in left {
            let file = File::open(&path)?;
            // A live process over the same folder holds its segments locked.
            if file.try_lock().is_err() {
                continue;
            }
            let rows = read_rows::<T>(&path)?;
            recovered += rows.len() as u64;
            if !rows.is_empty() {
                recover(rows)?;
            }
            fs::remove_file(&path)?;
        }
        let journal = Self {
            dir,
            state: Mutex::new(State {
                current: None,
                next_id: 1,
                segments: BTreeMap::new(),
            }),
            _rows: PhantomData,
        };
        Ok((journal, recovered))
    }

    /// Appends a row; returns its segment, to be settled once the row is safe elsewhere.
    pub fn append(&self, row: &T) -> std::io::Result<u64> {
        let mut line = serde_json::to_vec(row)?;
        line.push(b'\n');
        let mut st = self.state.lock();
        let id = match st.current {
            Some(id) if st.segments.get(&id).is_some_and(|s| !full(s)) => id,
            _ => self.start_segment(&mut st)?,
        };
        let Some(segment) = st.segments.get_mut(&id) else {
            return Err(std::io::Error::other("journal segment vanished"));
        };
        // One write of the whole line: a kill leaves the row whole or absent (a torn
        // last line is skipped on recovery).
        segment.file.write_all(&line)?;
        segment.appended += 1;
        Ok(id)
    }

    /// Notes rows as safe (in ClickHouse or the spool); segments that take no more rows
    /// and whose rows are all settled are deleted.
    pub fn settle(&self, settled: Settled) {
        if settled.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        for (id, n) in settled.0 {
            if let Some(s) = st.segments.get_mut(&id) {
                s.settled += n;
            }
        }
        Self::delete_done(&mut st);
    }

    /// Stops taking rows into a segment that is old enough, so that it can go once
    /// settled; call it now and then (the writer does, each tick).
    pub fn rotate(&self) {
        let mut st = self.state.lock();
        if let Some(id) = st.current
            && st.segments.get(&id).is_none_or(full)
        {
            st.current = None;
        }
        Self::delete_done(&mut st);
    }

    /// Takes no more rows into the current segment and deletes every settled one: a
    /// writer stopping cleanly leaves nothing behind.
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.current = None;
        Self::delete_done(&mut st);
    }

    /// Rows appended and not settled yet.
    pub fn unsettled(&self) -> u64 {
        let st = self.state.lock();
        st.segments
            .values()
            .map(|s| s.appended.saturating_sub(s.settled))
            .sum()
    }

    fn start_segment(&self, st: &mut State) -> std::io::Result<u64> {
        let id = st.next_id;
        st.next_id += 1;
        // The process id keeps two writers over one folder apart.
        let path = self
            .dir
            .join(format!("{}-{id:012}.journal", std::process::id()));
        let file = File::options().create(true).append(true).open(&path)?;
        file.try_lock().map_err(std::io::Error::other)?;
        st.segments.insert(
            id,
            Segment {
                path,
                file,
                appended: 0,
                settled: 0,
                opened: Instant::now(),
            },
        );
        st.current = Some(id);
        Ok(id)
    }

    fn delete_done(st: &mut State) {
        let current = st.current;
        let done: Vec<u64> = st
            .segments
            .iter()
            .filter(|(id, s)| Some(**id) != current && s.settled >= s.appended)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(s) = st.segments.remove(&id)
                && let Err(e) = fs::remove_file(&s.path)
            {
                tracing::warn!(path = %s.path.display(), error = %e, "removing a settled journal segment failed");
            }
        }
    }
}

fn full(s: &Segment) -> bool {
    s.appended >= SEGMENT_ROWS || s.opened.elapsed() >= SEGMENT_AGE
}

/// The whole rows of a segment; a line cut short by the kill is skipped.
fn read_rows<T: DeserializeOwned>(path: &Path) -> std::io::Result<Vec<T>> {
    let bytes = fs::read(path)?;
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(pairs: &[(u64, u64)]) -> Settled {
        Settled(pairs.iter().copied().collect())
    }

    #[test]
    fn rows_not_settled_when_the_process_dies_are_recovered_by_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (journal, recovered) = Journal::<u32>::open(path.clone(), |_| Ok(())).unwrap();
        assert_eq!(recovered, 0);
        let a = journal.append(&1).unwrap();
        journal.append(&2).unwrap();
        journal.append(&3).unwrap();
        // Rows 1 and 2 reached ClickHouse; 3 was still in memory.
        journal.settle(settled(&[(a, 2)]));
        assert_eq!(journal.unsettled(), 1);

        // While this writer lives, another one over the folder takes nothing of it.
        let (_, seen) = Journal::<u32>::open(path.clone(), |_| panic!("a live segment")).unwrap();
        assert_eq!(seen, 0);

        // The process dies: its lock goes with its open files; the rows stay.
        drop(journal);
        // A torn last line from a write cut short.
        let segment = fs::read_dir(&path).unwrap().next().unwrap().unwrap().path();
        fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap()
            .write_all(b"4{")
            .unwrap();
        let mut got = Vec::new();
        let (_, recovered) = Journal::<u32>::open(path.clone(), |rows| {
            got.extend(rows);
            Ok(())
        })
        .unwrap();
        // Every row of the segment comes back (the settled ones too: replaying a row
        // that is already in ClickHouse collapses on its row id); the torn line does not.
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(recovered, 3);
        assert_eq!(
            fs::read_dir(&path).unwrap().count(),
            0,
            "recovered: deleted"
        );
    }

    #[test]
    fn a_segment_goes_once_it_takes_no_more_rows_and_all_are_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (journal, _) = Journal::<u32>::open(path.clone(), |_| Ok(())).unwrap();
        let a = journal.append(&1).unwrap();
        journal.settle(settled(&[(a, 1)]));
        // Still the segment taking rows: kept.
        assert_eq!(fs::read_dir(&path).unwrap().count(), 1);
        journal.state.lock().segments.get_mut(&a).unwrap().opened -= SEGMENT_AGE;
        let b = journal.append(&2).unwrap();
        assert_ne!(a, b, "an old segment takes no more rows");
        journal.rotate();
        assert_eq!(
            fs::read_dir(&path).unwrap().count(),
            1,
            "the settled one went"
        );
        journal.settle(settled(&[(b, 1)]));
        journal.state.lock().segments.get_mut(&b).unwrap().opened -= SEGMENT_AGE;
        journal.rotate();
        assert_eq!(fs::read_dir(&path).unwrap().count(), 0);
        assert_eq!(journal.unsettled(), 0);
    }
}
