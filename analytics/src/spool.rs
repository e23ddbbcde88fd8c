//! The writer's on-disk spool: batches that could not be written to ClickHouse, kept
//! as numbered JSON-lines files (one batch per file, written atomically) and replayed
//! oldest first. It survives a process restart and is bounded in bytes; past the bound
//! new batches are dropped, counted and logged, never silently.

use std::fs;
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug)]
struct State {
    next_seq: u64,
    bytes: u64,
}

/// A bounded spool of batches of `T`.
#[derive(Debug)]
pub struct Spool<T> {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    _rows: PhantomData<fn() -> T>,
}

/// A batch read back from the spool.
#[derive(Debug)]
pub struct SpooledBatch<T> {
    pub seq: u64,
    pub rows: Vec<T>,
}

fn seq_of(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

impl<T: Serialize + DeserializeOwned> Spool<T> {
    /// Opens (creating) the spool in `dir`, picking up batches a previous process left.
    pub fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let mut next_seq = 1;
        let mut bytes = 0;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            match seq_of(&path) {
                Some(seq) => {
                    next_seq = next_seq.max(seq + 1);
                    bytes += entry.metadata()?.len();
                }
                // A batch whose write was cut short never got its final name.
                None if path.extension().is_some_and(|e| e == "tmp") => fs::remove_file(&path)?,
                None => {}
            }
        }
        Ok(Self {
            dir,
            max_bytes,
            state: Mutex::new(State { next_seq, bytes }),
            _rows: PhantomData,
        })
    }

    /// Stores a batch. Returns `Ok(false)` when the spool is full and the batch was
    /// dropped.
    pub fn append(&self, rows: &[T]) -> std::io::Result<bool> {
        if rows.is_empty() {
            return Ok(true);
        }
        let mut buf = Vec::with_capacity(rows.len() * 256);
        for r in rows {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        let mut st = self.state.lock();
        if st.bytes + buf.len() as u64 > self.max_bytes {
            return Ok(false);
        }
        let seq = st.next_seq;
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        fs::rename(&tmp, self.dir.join(format!("{seq:020}.jsonl")))?;
        st.next_seq += 1;
        st.bytes += buf.len() as u64;
        Ok(true)
    }

    /// The oldest batch, if any.
    pub fn oldest(&self) -> std::io::Result<Option<SpooledBatch<T>>> {
        let mut seqs: Vec<u64> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().and_then(|e| seq_of(&e.path())))
            .collect();
        seqs.sort_unstable();
        let Some(&seq) = seqs.first() else {
            return Ok(None);
        };
        let text = fs::read_to_string(self.dir.join(format!("{seq:020}.jsonl")))?;
        let rows = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(serde_json::from_str)
            .collect::<Result<Vec<T>, _>>()?;
        Ok(Some(SpooledBatch { seq, rows }))
    }

    /// Deletes a batch once it is safely in ClickHouse.
    pub fn remove(&self, seq: u64) -> std::io::Result<()> {
        let path = self.dir.join(format!("{seq:020}.jsonl"));
        let len = fs::metadata(&path)?.len();
        fs::remove_file(path)?;
        let mut st = self.state.lock();
        st.bytes = st.bytes.saturating_sub(len);
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_back_in_order_across_reopen_and_the_bound_holds() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::<u32>::open(dir.path().join("s"), 40).unwrap();
        assert!(spool.append(&[1, 2]).unwrap());
        assert!(spool.append(&[3]).unwrap());
        // A leftover partial write is cleaned up on open.
        fs::write(dir.path().join("s/00000000000000000099.tmp"), "junk").unwrap();
        drop(spool);

        let spool = Spool::<u32>::open(dir.path().join("s"), 10).unwrap();
        assert_eq!(spool.bytes(), 6);
        assert!(
            !spool.append(&[123_456, 789_012]).unwrap(),
            "over the bound: dropped"
        );
        let first = spool.oldest().unwrap().unwrap();
        assert_eq!(first.rows, [1, 2]);
        spool.remove(first.seq).unwrap();
        assert_eq!(spool.oldest().unwrap().unwrap().rows, [3]);
        assert!(spool.append(&[4]).unwrap());
        let second = spool.oldest().unwrap().unwrap();
        spool.remove(second.seq).unwrap();
        assert_eq!(
            spool.oldest().unwrap().unwrap().rows,
            [4],
            "new batches go after old ones"
        );
        assert!(!dir.path().join("s/00000000000000000099.tmp").exists());
    }
}
