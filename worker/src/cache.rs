//! The worker's copy of the training set: downloaded once from the
//! coordinator, verified by SHA-256, and kept on disk under that hash so a
//! restarted worker does not download it again.

use std::path::{Path, PathBuf};

use lazyavg_common::dataset::{Dataset, sha256_hex};
use lazyavg_common::fsutil::write_bytes_atomic;
use lazyavg_proto::pb;
use tracing::{info, warn};

use crate::Client;
use crate::error::{Error, Result};

/// The largest training set a worker accepts (a guard against a bogus size).
const MAX_DATASET_BYTES: u64 = 8 << 30;

/// The cache file for a dataset hash; the hash must be 64 hex digits, so it
/// cannot name a path outside the cache.
fn cache_path(cache_dir: &Path, sha256: &str) -> Result<PathBuf> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Dataset(format!("the coordinator sent a malformed dataset hash {sha256:?}")));
    }
    Ok(cache_dir.join("datasets").join(format!("{sha256}.idx")))
}

/// The dataset `info` describes: from the cache if it holds a copy with the
/// right hash, otherwise downloaded, verified and cached.
pub async fn load_or_fetch(
    client: &mut Client,
    cache_dir: &Path,
    worker_id: u64,
    info: &pb::DatasetInfo,
) -> Result<Dataset> {
    let path = cache_path(cache_dir, &info.sha256)?;
    if let Some(data) = read_cached(&path, &info.sha256).await? {
        info!(path = %path.display(), images = data.len(), "dataset found in cache");
        return Ok(data);
    }
    let blob = download(client, worker_id, info).await?;
    let (name, expected) = (path.display().to_string(), info.sha256.clone());
    // Hashing up to MAX_DATASET_BYTES takes seconds: not on the worker's
    // one async thread, which answers the connection's keepalive.
    tokio::task::spawn_blocking(move || {
        check_sha256(&blob, &expected)?;
        let dir = path.parent().expect("cache path has a parent");
        std::fs::create_dir_all(dir).map_err(|source| Error::Cache { path: dir.to_owned(), source })?;
        write_bytes_atomic(&path, &blob)?;
        Ok(Dataset::from_blob(&name, blob)?)
    })
    .await
    .expect("caching does not panic")
}

/// The cached dataset if present and intact; a damaged copy is reported and ignored.
async fn read_cached(path: &Path, sha256: &str) -> Result<Option<Dataset>> {
    let (path, sha256) = (path.to_owned(), sha256.to_owned());
    tokio::task::spawn_blocking(move || {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Cache { path, source }),
        };
        if sha256_hex(&bytes) != sha256 {
            warn!(path = %path.display(), "cached dataset is damaged; downloading it again");
            return Ok(None);
        }
        Ok(Some(Dataset::from_blob(&path.display().to_string(), bytes)?))
    })
    .await
    .expect("reading the cache does not panic")
}

/// Streams the dataset from the coordinator and checks its length (its
/// hash is [`check_sha256`]'s, off the async thread).
async fn download(client: &mut Client, worker_id: u64, info: &pb::DatasetInfo) -> Result<Vec<u8>> {
    if info.bytes > MAX_DATASET_BYTES {
        return Err(Error::Dataset(format!(
            "{} bytes is more than the {MAX_DATASET_BYTES} a worker accepts",
            info.bytes
        )));
    }
    info!(bytes = info.bytes, sha256 = info.sha256, "downloading the training set");
    let request = pb::FetchDatasetRequest { worker_id, sha256: info.sha256.clone(), offset: 0 };
    let mut stream = client.fetch_dataset(request).await.map_err(Error::refused("FetchDataset"))?.into_inner();
    let mut blob = Vec::with_capacity(info.bytes as usize);
    while let Some(chunk) = stream.message().await.map_err(Error::refused("FetchDataset"))? {
        if chunk.offset != blob.len() as u64 || blob.len() as u64 + chunk.data.len() as u64 > info.bytes {
            return Err(Error::Dataset(format!(
                "chunk at offset {} of {} bytes does not continue the {} bytes received of {}",
                chunk.offset,
                chunk.data.len(),
                blob.len(),
                info.bytes
            )));
        }
        blob.extend_from_slice(&chunk.data);
    }
    if blob.len() as u64 != info.bytes {
        return Err(Error::Dataset(format!("stream ended after {} of {} bytes", blob.len(), info.bytes)));
    }
    Ok(blob)
}

/// Whether the downloaded `blob` is the dataset the coordinator announced.
fn check_sha256(blob: &[u8], expected: &str) -> Result<()> {
    let actual = sha256_hex(blob);
    if actual != expected {
        return Err(Error::Dataset(format!("SHA-256 of the download is {actual}, expected {expected}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_whose_hash_differs_is_refused_naming_both() {
        let blob = b"not the training set";
        assert!(check_sha256(blob, &sha256_hex(blob)).is_ok());
        let expected = "0".repeat(64);
        let message = check_sha256(blob, &expected).unwrap_err().to_string();
        assert!(message.contains(&sha256_hex(blob)) && message.contains(&expected), "{message}");
    }

    #[test]
    fn hashes_that_are_not_hex_cannot_escape_the_cache() {
        let dir = Path::new("/cache");
        assert!(cache_path(dir, "../../etc/passwd").is_err());
        assert!(cache_path(dir, &"g".repeat(64)).is_err());
        assert_eq!(
            cache_path(dir, &"a".repeat(64)).unwrap(),
            dir.join("datasets").join(format!("{}.idx", "a".repeat(64)))
        );
    }
}
