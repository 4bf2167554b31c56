//! Putting images on a host device: SFTP upload with many writes in flight, SHA-256
//! verified on the far side, into a content-addressed cache so the same image is never
//! sent twice.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ssh::{SshError, SshSession, shell_quote};

/// Where a host device keeps uploaded images, by SHA-256.
pub const DEFAULT_REMOTE_CACHE: &str = "/var/lib/lava-dispatcher/cache";

/// Bytes sent to hosts by every upload of this process (for metrics).
pub static BYTES_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub sha256: String,
    /// The image's path on the host (in the cache).
    pub remote_path: String,
    pub size: u64,
    /// Bytes that crossed the link: 0 when the cache already had the image.
    pub bytes_sent: u64,
    /// The cache had an entry by this name whose content no longer matched it (a job
    /// altered it): it was replaced.
    pub replaced_poisoned: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("cannot read {path}: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("SFTP upload of {path}: {message}")]
    Sftp { path: String, message: String },
    #[error("{path} arrived corrupted: SHA-256 {found} on the host, {expected} here")]
    Corrupted {
        path: String,
        expected: String,
        found: String,
    },
}

/// Digests of local files already hashed, by path, size and modification time: a daemon
/// uploads the same images job after job, and hashing 512 MiB takes half a second.
type DigestKey = (std::path::PathBuf, u64, std::time::SystemTime);
static DIGESTS: parking_lot::Mutex<std::collections::BTreeMap<DigestKey, String>> =
    parking_lot::Mutex::new(std::collections::BTreeMap::new());

/// SHA-256 of a local file, hex, and its size; remembered until the file changes.
pub async fn sha256_file(path: &Path) -> Result<(String, u64), TransferError> {
    let local = |source| TransferError::Local {
        path: path.display().to_string(),
        source,
    };
    let meta = tokio::fs::metadata(path).await.map_err(local)?;
    let key = meta
        .modified()
        .ok()
        .map(|modified| (path.to_path_buf(), meta.len(), modified));
    if let Some(key) = &key
        && let Some(digest) = DIGESTS.lock().get(key).cloned()
    {
        return Ok((digest, meta.len()));
    }
    let mut file = tokio::fs::File::open(path).await.map_err(local)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(local)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let digest = hex::encode(hasher.finalize());
    // Only what was read whole is remembered: a file that grew while being read is
    // hashed again next time.
    if let Some(key) = key.filter(|(_, len, _)| *len == size) {
        DIGESTS.lock().insert(key, digest.clone());
    }
    Ok((digest, size))
}

/// Uploads `local` into `cache_dir` on the host unless an image with the same SHA-256
/// is already there. `progress` is told the bytes sent so far and the total.
pub async fn upload_cached(
    session: &SshSession,
    local: &Path,
    cache_dir: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<Uploaded, TransferError> {
    let (sha256, size) = sha256_file(local).await?;
    let remote_path = format!("{cache_dir}/{sha256}");
    let mut poisoned = false;
    let sftp_error = |message: String| TransferError::Sftp {
        path: local.display().to_string(),
        message,
    };
    let sftp = session.sftp().await?;
    // A job's test shell runs on the host, often as root, so a cached image may have
    // been rewritten since it was verified: a hit counts only when its content still
    // has the name's SHA-256. A poisoned entry is replaced and said so.
    if let Ok(meta) = sftp.metadata(remote_path.clone()).await {
        let found = match meta.size {
            Some(cached) if cached == size => remote_sha256(session, &remote_path).await?,
            _ => format!("{} bytes", meta.size.unwrap_or(0)),
        };
        if found == sha256 {
            tracing::info!(image = %local.display(), %remote_path, "image already on the host");
            progress(size, size);
            return Ok(Uploaded {
                sha256,
                remote_path,
                size,
                bytes_sent: 0,
                replaced_poisoned: false,
            });
        }
        tracing::warn!(
            image = %local.display(),
            %remote_path,
            %found,
            "the host's cached copy was altered; replacing it"
        );
        poisoned = true;
    }
    session
        .run(
            &format!("mkdir -p {}", shell_quote(cache_dir)),
            Duration::from_secs(30),
        )
        .await?;
    // A partial name of our own, renamed only once verified: a crash mid-upload never
    // leaves a wrong file under the cache name.
    let partial = format!("{remote_path}.{}", crate::images::partial_suffix());
    let mut remote = sftp
        .create(partial.clone())
        .await
        .map_err(|e| sftp_error(e.to_string()))?;
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(|source| TransferError::Local {
            path: local.display().to_string(),
            source,
        })?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|source| TransferError::Local {
                path: local.display().to_string(),
                source,
            })?;
        if n == 0 {
            break;
        }
        remote
            .write_all(&buf[..n])
            .await
            .map_err(|e| sftp_error(e.to_string()))?;
        sent += n as u64;
        BYTES_SENT.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        progress(sent, size);
    }
    remote
        .shutdown()
        .await
        .map_err(|e| sftp_error(e.to_string()))?;
    drop(remote);
    let found = remote_sha256(session, &partial).await?;
    if found != sha256 {
        let _ = session
            .exec(
                &format!("rm -f {}", shell_quote(&partial)),
                Duration::from_secs(30),
            )
            .await;
        return Err(TransferError::Corrupted {
            path: local.display().to_string(),
            expected: sha256,
            found,
        });
    }
    session
        .run(
            &format!(
                "mv -f {} {}",
                shell_quote(&partial),
                shell_quote(&remote_path)
            ),
            Duration::from_secs(30),
        )
        .await?;
    tracing::info!(image = %local.display(), %remote_path, bytes = sent, "image uploaded");
    Ok(Uploaded {
        sha256,
        remote_path,
        size,
        bytes_sent: sent,
        replaced_poisoned: poisoned,
    })
}

/// SHA-256 (hex) of a file on the host. OpenSSL's uses the CPU's SHA instructions where
/// coreutils' does not (7x faster here); `sha256sum` is the fallback every host has.
async fn remote_sha256(session: &SshSession, path: &str) -> Result<String, TransferError> {
    let quoted = shell_quote(path);
    let digest = session
        .run(
            &format!(
                "if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r {quoted}; \
                 else sha256sum {quoted}; fi"
            ),
            Duration::from_secs(600),
        )
        .await?;
    Ok(digest
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::sha256_file;

    #[tokio::test]
    async fn a_digest_is_remembered_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        std::fs::write(&path, b"abc").unwrap();
        let (first, size) = sha256_file(&path).await.unwrap();
        assert_eq!(
            (first.as_str(), size),
            (
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                3
            )
        );
        assert_eq!(sha256_file(&path).await.unwrap().0, first);
        // Other content (and size): a new digest, not the remembered one.
        std::fs::write(&path, b"abcd").unwrap();
        let (changed, size) = sha256_file(&path).await.unwrap();
        assert_eq!(size, 4);
        assert_eq!(
            changed,
            "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"
        );
    }
}
