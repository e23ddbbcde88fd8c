//! The digests of model files on this machine, for deployments that give none: local
//! mode can read a `file://` model itself, so a file changed under the same name gets a
//! new digest, its copies on the agents no longer match, and the engine reloads them (on
//! Kubernetes, `spec.model.sha256` says the same). A file is hashed again only when its
//! size or modification time moves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

#[derive(Debug, Default)]
pub struct FileDigests {
    known: HashMap<PathBuf, (SystemTime, u64, String)>,
}

impl FileDigests {
    /// The hex SHA-256 of the local file `uri` names (`file:///...`), or `None` for
    /// another scheme or a file that cannot be read (the agent then says why).
    pub async fn of(&mut self, uri: &str) -> Option<String> {
        let path = PathBuf::from(uri.strip_prefix("file://")?);
        let meta = tokio::fs::metadata(&path).await.ok()?;
        let stamp = (meta.modified().ok()?, meta.len());
        if let Some((modified, len, digest)) = self.known.get(&path)
            && (*modified, *len) == stamp
        {
            return Some(digest.clone());
        }
        let digest = tokio::task::spawn_blocking({
            let path = path.clone();
            move || hash_file(&path)
        })
        .await
        .ok()??;
        self.known.insert(path, (stamp.0, stamp.1, digest.clone()));
        Some(digest)
    }
}

fn hash_file(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_changed_file_gets_a_new_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, b"one").unwrap();
        let uri = format!("file://{}", path.display());
        let mut digests = FileDigests::default();
        let first = digests.of(&uri).await.unwrap();
        assert_eq!(first, hex::encode(Sha256::digest(b"one")));
        assert_eq!(digests.of(&uri).await.unwrap(), first);
        std::fs::write(&path, b"two!").unwrap();
        assert_ne!(digests.of(&uri).await.unwrap(), first, "size moved");
        assert_eq!(digests.of("https://h/m.onnx").await, None);
        assert_eq!(digests.of("file:///nonexistent/m.onnx").await, None);
    }
}
