//! Where browser profiles live: a folder of this agent's own under its cache folder
//! (`profiles/<pid>`), held with a lock on `profiles/<pid>.lock` for the agent's life.
//! Each launch gets a fresh profile in it, removed when the browser goes. An agent that
//! is killed (SIGKILL, the OOM killer) cannot remove them, and a profile is megabytes:
//! soaks with killed agents filled the disk with thousands of them in the system's
//! temporary folder. So each agent, as it starts, removes the folders of agents that are
//! gone (their lock is free), and never one whose agent lives, when agents share a cache
//! folder.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// This agent's profile folder, removed with it.
#[derive(Debug)]
pub struct Profiles {
    dir: PathBuf,
    lock_path: PathBuf,
    /// Held open and locked while the agent lives.
    _lock: File,
}

impl Profiles {
    /// Removes what dead agents left under `root`, then makes this agent's folder.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(root)?;
        sweep(root);
        let name = std::process::id().to_string();
        let lock_path = root.join(format!("{name}.lock"));
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        lock.try_lock().map_err(std::io::Error::other)?;
        let dir = root.join(name);
        fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            lock_path,
            _lock: lock,
        })
    }

    /// The folder new profiles go in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Profiles {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// Removes every `<name>/` under `root` whose `<name>.lock` no live agent holds.
fn sweep(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for lock_path in entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "lock"))
    {
        let Ok(lock) = File::options().write(true).open(&lock_path) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue;
        }
        let dir = lock_path.with_extension("");
        match fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(folder = %dir.display(), "removed the browser profiles a stopped agent left")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(folder = %dir.display(), error = %e, "removing a stopped agent's browser profiles failed");
                continue;
            }
        }
        let _ = fs::remove_file(&lock_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_agents_profiles_go_and_a_live_ones_stay() {
        let root = tempfile::tempdir().unwrap();
        // A dead agent's: its lock file is there, nobody holds it.
        fs::create_dir_all(root.path().join("111/webaccel-chromium-x")).unwrap();
        fs::write(root.path().join("111/webaccel-chromium-x/big"), [0u8; 1024]).unwrap();
        File::create(root.path().join("111.lock")).unwrap();
        // A live agent's: its lock is held (here, by this test).
        fs::create_dir_all(root.path().join("222/webaccel-firefox-y")).unwrap();
        let live = File::create(root.path().join("222.lock")).unwrap();
        live.try_lock().unwrap();

        let profiles = Profiles::open(root.path()).unwrap();
        assert!(
            !root.path().join("111").exists(),
            "the dead agent's profiles stay"
        );
        assert!(!root.path().join("111.lock").exists());
        assert!(root.path().join("222/webaccel-firefox-y").exists());
        assert!(profiles.dir().is_dir());
        let mine = profiles.dir().to_owned();
        drop(profiles);
        assert!(!mine.exists(), "removed with the agent");
    }
}
