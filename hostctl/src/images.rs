//! Images on the dispatcher's side, before they go to a host: `file://` used in place,
//! `http(s)://` downloaded once into the image store, `.gz` and `.xz` decompressed once;
//! and test definitions, read fresh for every job. Everything a job names goes through
//! the lab's [`FetchPolicy`]: which files and addresses it may reach, and how large a
//! download, an unpacked image and a test definition may be.
//! The upload to a host ([`crate::transfer`]) is cached separately, by content.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::fetch::{FetchError, FetchPolicy};
use lab::qemu_template::DiskFormat;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Refused(#[from] FetchError),
    #[error("{url}: {message}")]
    Download { url: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid {format} file: {message}")]
    Decompress {
        path: String,
        format: &'static str,
        message: String,
    },
    #[error("unsupported image URL {0} (expected file://, http:// or https://)")]
    Scheme(String),
    #[error(transparent)]
    Initramfs(#[from] crate::initramfs::InitramfsError),
    #[error("{path}: {why}")]
    UnsafeImage { path: String, why: String },
    #[error("{url}: not UTF-8 text: {message}")]
    NotText { url: String, message: String },
}

/// The format of the disk image at `path`, read from its first bytes (a name says
/// nothing): qcow2 by its magic, else raw. A qcow2 image that names another file (a
/// backing file, an external data file) is refused: qemu would open that file, on the
/// machine it runs on, for the guest.
pub async fn disk_format(path: &Path) -> Result<DiskFormat, ImageError> {
    let mut header = [0u8; 80];
    let mut file = tokio::fs::File::open(path).await.map_err(io_error(path))?;
    let mut read = 0;
    while read < header.len() {
        let n = tokio::io::AsyncReadExt::read(&mut file, &mut header[read..])
            .await
            .map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        read += n;
    }
    qcow2_header(&header[..read]).map_err(|why| ImageError::UnsafeImage {
        path: path.display().to_string(),
        why,
    })
}

/// What a disk image's first bytes say its format is (see [`disk_format`]).
fn qcow2_header(header: &[u8]) -> Result<DiskFormat, String> {
    if !header.starts_with(b"QFI\xfb") {
        return Ok(DiskFormat::Raw);
    }
    let be = |range: std::ops::Range<usize>| {
        header
            .get(range)
            .map(|b| b.iter().fold(0u64, |n, byte| n << 8 | u64::from(*byte)))
    };
    let (Some(version), Some(backing)) = (be(4..8), be(8..16)) else {
        return Err("a qcow2 header cut short".into());
    };
    if backing != 0 {
        return Err(
            "a qcow2 image with a backing file, which qemu would open on the machine it runs \
             on; give a standalone image (qemu-img convert -O qcow2)"
                .into(),
        );
    }
    // Version 3's incompatible features: bit 2 is an external data file.
    if version >= 3 && be(72..80).is_some_and(|features| features & 0b100 != 0) {
        return Err("a qcow2 image with an external data file; give a standalone image".into());
    }
    Ok(DiskFormat::Qcow2)
}

/// The dispatcher's image store: downloads and decompressed copies, by source.
pub struct ImageStore {
    dir: PathBuf,
    client: reqwest::Client,
    policy: Arc<FetchPolicy>,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A stable file name for a cache entry: a hash of what it comes from, plus the
/// source's own name so a person can tell what it is.
fn entry_name(key: &str, name: &str) -> String {
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}-{name}", &digest[..16])
}

impl ImageStore {
    pub fn new(dir: impl Into<PathBuf>, policy: Arc<FetchPolicy>) -> Result<Self, ImageError> {
        let client = policy.http_client().map_err(|e| ImageError::Download {
            url: String::new(),
            message: e.to_string(),
        })?;
        Ok(Self {
            dir: dir.into(),
            client,
            policy,
        })
    }

    /// A test definition's text, read fresh (a definition at a branch's head changes
    /// between jobs), at most the lab's `max_testdef_bytes`.
    pub async fn fetch_text(&self, url: &Url) -> Result<String, ImageError> {
        let limit = self.policy.limits.max_testdef_bytes;
        let too_large = || FetchError::TooLarge {
            what: format!("test definition {url}"),
            limit,
            key: "max_testdef_bytes",
        };
        let bytes = match url.scheme() {
            "file" => {
                let path = self.local_path(url).await?;
                let mut bytes = Vec::new();
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(io_error(&path))?;
                tokio::io::AsyncReadExt::read_to_end(
                    &mut tokio::io::AsyncReadExt::take(file, limit.saturating_add(1)),
                    &mut bytes,
                )
                .await
                .map_err(io_error(&path))?;
                bytes
            }
            "http" | "https" => {
                let mut bytes = Vec::new();
                let mut body = self
                    .get(url, limit, "max_testdef_bytes")
                    .await?
                    .bytes_stream();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| ImageError::Download {
                        url: url.to_string(),
                        message: e.to_string(),
                    })?;
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() as u64 > limit {
                        break;
                    }
                }
                bytes
            }
            _ => return Err(ImageError::Scheme(url.to_string())),
        };
        if bytes.len() as u64 > limit {
            return Err(too_large().into());
        }
        String::from_utf8(bytes).map_err(|e| ImageError::NotText {
            url: url.to_string(),
            message: e.to_string(),
        })
    }

    /// The file a `file://` URL names, as the policy lets it be read (on the blocking
    /// pool: resolving a path can wait on a slow file system).
    async fn local_path(&self, url: &Url) -> Result<PathBuf, ImageError> {
        let path = url
            .to_file_path()
            .map_err(|()| ImageError::Scheme(url.to_string()))?;
        let policy = self.policy.clone();
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || policy.local_file(&path))
            .await
            .map_err(|e| ImageError::Io {
                path: shown,
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(ImageError::from)
    }

    /// A GET the policy allows, with a body no larger than `limit` by its own account
    /// (the bytes are counted again as they arrive).
    async fn get(
        &self,
        url: &Url,
        limit: u64,
        key: &'static str,
    ) -> Result<reqwest::Response, ImageError> {
        self.policy.check_url(url)?;
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| ImageError::Download {
                url: url.to_string(),
                message: error_chain(&e),
            })?;
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(FetchError::TooLarge {
                what: url.to_string(),
                limit,
                key,
            }
            .into());
        }
        Ok(response)
    }

    /// The local, uncompressed file for an image URL. `progress` hears about downloads
    /// as `(bytes so far, total if known)`.
    pub async fn fetch(
        &self,
        url: &Url,
        progress: impl FnMut(u64, Option<u64>),
    ) -> Result<PathBuf, ImageError> {
        let local = match url.scheme() {
            "file" => self.local_path(url).await?,
            "http" | "https" => self.download(url, progress).await?,
            _ => return Err(ImageError::Scheme(url.to_string())),
        };
        self.decompressed(&local).await
    }

    async fn download(
        &self,
        url: &Url,
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> Result<PathBuf, ImageError> {
        let name = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or("image");
        let dir = self.dir.join("downloads");
        let path = dir.join(entry_name(url.as_str(), name));
        // The policy first, even for a copy already here: a download another policy
        // allowed (`dispatcher run` sharing the store) is not this job's to use.
        self.policy.check_url(url)?;
        if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
            tracing::info!(%url, path = %path.display(), "image already downloaded");
            return Ok(path);
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_error(&dir))?;
        let failed = |message: String| ImageError::Download {
            url: url.to_string(),
            message,
        };
        let limit = self.policy.limits.max_download_bytes;
        let response = self.get(url, limit, "max_download_bytes").await?;
        let total = response.content_length();
        let partial = path.with_extension(partial_suffix());
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(io_error(&partial))?;
        let mut body = response.bytes_stream();
        let mut received = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| failed(error_chain(&e)))?;
            received += chunk.len() as u64;
            if received > limit {
                drop(file);
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(FetchError::TooLarge {
                    what: url.to_string(),
                    limit,
                    key: "max_download_bytes",
                }
                .into());
            }
            file.write_all(&chunk).await.map_err(io_error(&partial))?;
            progress(received, total);
        }
        file.sync_all().await.map_err(io_error(&partial))?;
        if let Some(total) = total.filter(|t| *t != received) {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(failed(format!("got {received} of {total} bytes")));
        }
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(io_error(&path))?;
        tracing::info!(%url, bytes = received, "image downloaded");
        Ok(path)
    }

    /// One initramfs of `base` (an initramfs, copied as it is) followed by the tar
    /// archives `trees` in order, built once per set of inputs into the store
    /// ([`crate::initramfs`]), at most the lab's `max_unpacked_bytes`.
    pub async fn initramfs(
        &self,
        base: Option<&Path>,
        trees: &[PathBuf],
    ) -> Result<crate::initramfs::Initramfs, ImageError> {
        let dir = self.dir.join("initramfs");
        let base = base.map(Path::to_path_buf);
        let trees = trees.to_vec();
        let limit = self.policy.limits.max_unpacked_bytes;
        let what = dir.display().to_string();
        tokio::task::spawn_blocking(move || {
            crate::initramfs::build_cached(&dir, base.as_deref(), &trees, limit)
        })
        .await
        .map_err(|e| ImageError::Io {
            path: what,
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(ImageError::Initramfs)
    }

    /// `path` itself, or its decompressed copy for `.gz` and `.xz`.
    async fn decompressed(&self, path: &Path) -> Result<PathBuf, ImageError> {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("gz") => "gzip",
            Some("xz") => "xz",
            _ => return Ok(path.to_path_buf()),
        };
        let meta = tokio::fs::metadata(path).await.map_err(io_error(path))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
        let key = format!("{}|{}|{modified}", path.display(), meta.len());
        let dir = self.dir.join("unpacked");
        let out = dir.join(entry_name(&key, stem));
        if tokio::fs::metadata(&out).await.is_ok_and(|m| m.is_file()) {
            return Ok(out);
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_error(&dir))?;
        let (source, target) = (path.to_path_buf(), out.clone());
        let limit = self.policy.limits.max_unpacked_bytes;
        tokio::task::spawn_blocking(move || decompress(&source, &target, format, limit))
            .await
            .map_err(|e| ImageError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })??;
        Ok(out)
    }
}

/// An error with its causes: reqwest's own message ("error sending request") hides why,
/// e.g. that the address was refused by the lab's policy.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A name for a file being written, unique to this writer: concurrent fetches of the
/// same image (two nodes of one job, two jobs) each write their own and the last
/// rename wins with identical content.
pub(crate) fn partial_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "part-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Unpacks `source` into `target`, stopping past `limit` bytes: a few kilobytes of
/// compressed zeros can unpack to terabytes.
fn decompress(
    source: &Path,
    target: &Path,
    format: &'static str,
    limit: u64,
) -> Result<(), ImageError> {
    let input = std::fs::File::open(source).map_err(io_error(source))?;
    let reader: Box<dyn Read> = match format {
        "gzip" => Box::new(flate2::read::MultiGzDecoder::new(input)),
        _ => Box::new(xz2::read::XzDecoder::new_multi_decoder(input)),
    };
    let partial = target.with_extension(partial_suffix());
    let mut output = std::fs::File::create(&partial).map_err(io_error(&partial))?;
    let copied = std::io::copy(&mut reader.take(limit.saturating_add(1)), &mut output);
    let failure = match copied {
        Ok(n) if n > limit => Some(ImageError::Refused(FetchError::TooLarge {
            what: format!("{} unpacked", source.display()),
            limit,
            key: "max_unpacked_bytes",
        })),
        Ok(_) => None,
        Err(e) => Some(ImageError::Decompress {
            path: source.display().to_string(),
            format,
            message: e.to_string(),
        }),
    };
    if let Some(failure) = failure {
        drop(output);
        let _ = std::fs::remove_file(&partial);
        return Err(failure);
    }
    output
        .flush()
        .and_then(|()| output.sync_all())
        .map_err(io_error(&partial))?;
    std::fs::rename(&partial, target).map_err(io_error(target))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 header: version, backing file offset, incompatible features.
    fn qcow2(version: u32, backing: u64, features: u64) -> Vec<u8> {
        let mut h = b"QFI\xfb".to_vec();
        h.extend(version.to_be_bytes());
        h.extend(backing.to_be_bytes());
        h.resize(72, 0);
        h.extend(features.to_be_bytes());
        h
    }

    #[test]
    fn a_disk_format_is_read_from_the_file_and_qcow2_may_name_no_other_file() {
        assert_eq!(qcow2_header(b"\xebX\x90SYSLINUX"), Ok(DiskFormat::Raw));
        assert_eq!(qcow2_header(b""), Ok(DiskFormat::Raw));
        assert_eq!(qcow2_header(&qcow2(3, 0, 0)), Ok(DiskFormat::Qcow2));
        assert_eq!(qcow2_header(&qcow2(2, 0, 0)), Ok(DiskFormat::Qcow2));
        let backing = qcow2_header(&qcow2(3, 0x1000, 0)).unwrap_err();
        assert!(backing.contains("backing file"), "{backing}");
        let external = qcow2_header(&qcow2(3, 0, 0b100)).unwrap_err();
        assert!(external.contains("external data file"), "{external}");
        // Other incompatible features (dirty, corrupt) are qemu's to judge.
        assert_eq!(qcow2_header(&qcow2(3, 0, 0b11)), Ok(DiskFormat::Qcow2));
        assert!(qcow2_header(b"QFI\xfb\0\0").is_err(), "cut short");
    }
}
