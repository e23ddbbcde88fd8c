//! Model files: fetched from `file://` or `http(s)://`, checked against an optional
//! sha256 while streaming, and kept on local disk under their digest so a reload (after
//! a browser restart) reads no network.
//!
//! A cached file is reused without fetching only for a URI it was fetched from: a
//! digest pasted by mistake next to another model's URI must fail its check, not
//! silently serve whichever cached model has that digest.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Why a model file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache's own directory failed (full disk, permissions).
    #[error("cache: {0}")]
    Io(#[from] std::io::Error),
    #[error("cache: {0}")]
    Persist(#[from] tempfile::PersistError),
    #[error("reading {} failed: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("fetching {uri} failed: {source}")]
    Fetch { uri: String, source: reqwest::Error },
    #[error("fetching {uri} failed: HTTP {status}")]
    Status {
        uri: String,
        status: reqwest::StatusCode,
    },
    #[error("fetching {uri} failed mid-way: {source}")]
    Body { uri: String, source: reqwest::Error },
    #[error("sha256 mismatch for {uri}: expected {expected}, the file has {actual}")]
    Mismatch {
        uri: String,
        expected: String,
        actual: String,
    },
}

impl CacheError {
    /// Whether the file is simply not there (an optional file beside a model may not
    /// be).
    pub fn is_missing(&self) -> bool {
        match self {
            Self::Read { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            Self::Status { status, .. } => *status == reqwest::StatusCode::NOT_FOUND,
            _ => false,
        }
    }
}

/// The URI of the file `name` in the folder of `uri` (query strings dropped), as a
/// model's external data, tokenizer configuration and `config.json` sit beside it.
/// `name` may climb one folder (`../config.json`).
pub fn sibling(uri: &str, name: &str) -> String {
    let path = uri.split(['?', '#']).next().unwrap_or(uri);
    let (mut folder, _) = path.rsplit_once('/').unwrap_or((path, ""));
    let mut name = name;
    while let Some(rest) = name.strip_prefix("../") {
        // Never above the scheme's root (`file:///`, `https://host/`).
        match folder.rsplit_once('/') {
            Some((up, _)) if !up.ends_with(':') && !up.ends_with(":/") && !up.ends_with("//") => {
                folder = up
            }
            _ => {}
        }
        name = rest;
    }
    format!("{folder}/{name}")
}

#[derive(Debug, Clone)]
pub struct ModelCache {
    dir: PathBuf,
    http: reqwest::Client,
}

/// A model file in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedModel {
    pub sha256: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// Whether the file was already cached (nothing was fetched).
    pub hit: bool,
}

impl ModelCache {
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            http: reqwest::Client::new(),
        })
    }

    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.onnx"))
    }

    /// The URIs a cached file was fetched from, one per line.
    fn sources_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.sources"))
    }

    async fn fetched_from(&self, sha256: &str, uri: &str) -> bool {
        tokio::fs::read_to_string(self.sources_path(sha256))
            .await
            .is_ok_and(|s| s.lines().any(|l| l == uri))
    }

    async fn remember_source(&self, sha256: &str, uri: &str) -> Result<(), CacheError> {
        if self.fetched_from(sha256, uri).await {
            return Ok(());
        }
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.sources_path(sha256))
            .await?;
        f.write_all(format!("{uri}\n").as_bytes()).await?;
        // tokio's File hands writes to a blocking task: without a flush the line may not
        // be written yet when the next `get` reads it (seen in CI as a cache miss for a
        // file fetched a moment before).
        Ok(f.flush().await?)
    }

    /// Returns the cached file for `uri`, fetching it if needed. With `expected` set, a
    /// cached copy is used without fetching, and a fetched file must match it.
    pub async fn get(&self, uri: &str, expected: Option<&str>) -> Result<CachedModel, CacheError> {
        if let Some(sha) = expected
            && self.fetched_from(sha, uri).await
        {
            let path = self.path_for(sha);
            // Re-hash the cached copy: cheap next to compiling the model, and it catches
            // a corrupted disk.
            if let Ok((actual, bytes)) = hash_file(&path).await {
                if actual == sha {
                    return Ok(CachedModel {
                        sha256: actual,
                        path,
                        bytes,
                        hit: true,
                    });
                }
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let (sha256, bytes) = if let Some(path) = uri.strip_prefix("file://") {
            copy_hashing(Path::new(path), tmp.path()).await?
        } else {
            self.download_hashing(uri, tmp.path()).await?
        };
        if let Some(want) = expected
            && want != sha256
        {
            return Err(CacheError::Mismatch {
                uri: uri.to_owned(),
                expected: want.to_owned(),
                actual: sha256,
            });
        }
        let path = self.path_for(&sha256);
        tmp.persist(&path)?;
        self.remember_source(&sha256, uri).await?;
        Ok(CachedModel {
            sha256,
            path,
            bytes,
            hit: false,
        })
    }

    async fn download_hashing(&self, uri: &str, to: &Path) -> Result<(String, u64), CacheError> {
        let resp = self
            .http
            .get(uri)
            .send()
            .await
            .map_err(|source| CacheError::Fetch {
                uri: uri.to_owned(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(CacheError::Status {
                uri: uri.to_owned(),
                status: resp.status(),
            });
        }
        let mut file = tokio::fs::File::create(to).await?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| CacheError::Body {
                uri: uri.to_owned(),
                source,
            })?;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok((hex::encode(hasher.finalize()), bytes))
    }
}

async fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let data = tokio::fs::read(path).await?;
    Ok((hex::encode(Sha256::digest(&data)), data.len() as u64))
}

async fn copy_hashing(from: &Path, to: &Path) -> Result<(String, u64), CacheError> {
    let data = tokio::fs::read(from)
        .await
        .map_err(|source| CacheError::Read {
            path: from.to_owned(),
            source,
        })?;
    tokio::fs::write(to, &data).await?;
    Ok((hex::encode(Sha256::digest(&data)), data.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_sit_in_the_models_folder() {
        assert_eq!(
            sibling("file:///m/llm/model.onnx", "model.onnx.data"),
            "file:///m/llm/model.onnx.data"
        );
        assert_eq!(
            sibling("https://h/repo/onnx/model.onnx?sig=1", "../config.json"),
            "https://h/repo/config.json"
        );
        assert_eq!(
            sibling("https://h/model.onnx", "../config.json"),
            "https://h/config.json"
        );
        assert_eq!(
            sibling("file:///model.onnx", "../config.json"),
            "file:///config.json"
        );
    }

    #[tokio::test]
    async fn file_uri_is_cached_by_digest_and_checked() {
        let src = tempfile::tempdir().unwrap();
        let model = src.path().join("m.onnx");
        std::fs::write(&model, b"abc").unwrap();
        let cache = ModelCache::new(src.path().join("cache")).unwrap();
        let uri = format!("file://{}", model.display());
        let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

        let first = cache.get(&uri, None).await.unwrap();
        assert_eq!(
            (first.sha256.as_str(), first.bytes, first.hit),
            (sha, 3, false)
        );
        assert_eq!(std::fs::read(cache.path_for(sha)).unwrap(), b"abc");

        // With the digest given, the cached copy is used even if the source is gone.
        std::fs::remove_file(&model).unwrap();
        assert!(cache.get(&uri, Some(sha)).await.unwrap().hit);

        // ...but not for another URI claiming that digest: that one is fetched and fails.
        let other = src.path().join("other.onnx");
        std::fs::write(&other, b"xyz").unwrap();
        let err = cache
            .get(&format!("file://{}", other.display()), Some(sha))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
    }

    #[tokio::test]
    async fn digest_mismatch_and_missing_file_are_refused() {
        let src = tempfile::tempdir().unwrap();
        let model = src.path().join("m.onnx");
        std::fs::write(&model, b"abc").unwrap();
        let cache = ModelCache::new(src.path().join("cache")).unwrap();
        let err = cache
            .get(
                &format!("file://{}", model.display()),
                Some(&"0".repeat(64)),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
        let err = cache
            .get("file:///does/not/exist.onnx", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("reading /does/not/exist.onnx failed"), "{err}");
    }
}
