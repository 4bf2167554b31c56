//! A root file system given as tar archives, turned into one initramfs a VM boots from.
//!
//! Why: LAVA v1's `deploy_linaro_kernel` names a root file system as a tar archive
//! (`nfsrootfs`) and `overlays` (more tar archives, e.g. a kernel's `modules.tar.xz`)
//! unpacked over it before boot; or an existing initramfs (`ramdisk`) that overlays go
//! on top of. LAVA served the tree over NFS; here qemu boots the kernel with one
//! `-initrd` file instead, which needs no NFS server, no root on the dispatcher (a tar
//! is never unpacked to disk, so device nodes and owners need no privileges) and no
//! network from the VM. The kernel unpacks concatenated cpio archives into its root
//! file system in order, a later file replacing an earlier one, and skips zero padding
//! between them: so the output is the `ramdisk` byte for byte (compressed or not, never
//! parsed), then one uncompressed newc archive per tar, each 4-byte aligned.
//!
//! What the kernel's unpacker needs and a naive conversion gets wrong:
//! * hard links: the kernel links an entry to an earlier one only when both carry the
//!   same inode number and nlink >= 2, so a first pass over each tar finds the files that
//!   are link targets; they and their links share one inode number, the data goes with
//!   the first occurrence and the links are empty;
//! * a directory entry replaces whatever is at its name, so a directory entry over an
//!   earlier tree's symlink (a merged-/usr `lib -> usr/lib` under a modules overlay's
//!   `lib/`) is dropped and the symlink kept, as `tar --keep-directory-symlink` would;
//! * a file whose parent directory no archive created is not created at all, so a
//!   missing parent gets a `0755` directory entry when the whole tree is known (no
//!   `ramdisk`; with one we cannot know what it holds, and a made-up directory could
//!   replace its symlink).
//!
//! The result is cached in the store directory under a key made of every input's path,
//! size and modification time, written under a temporary name and renamed, so a crash
//! never leaves a half file that a later job would boot. Whether a tree has a top-level
//! `init` (the caller adds `rdinit=/sbin/init` when not) is part of the cached file's
//! name, so it survives a cache hit.
//!
//! Blocking: callers run [`build_cached`] on a blocking thread.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use cpio::NewcBuilder;
use sha2::{Digest, Sha256};

/// An initramfs ready for qemu's `-initrd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initramfs {
    pub path: PathBuf,
    /// Whether a tree has a top-level `init` (file, symlink or hard link); without one
    /// the kernel needs `rdinit=/sbin/init`.
    pub has_init: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{archive}: {message}")]
    NotTar { archive: String, message: String },
    #[error("{archive}: {message}")]
    Archive { archive: String, message: String },
    #[error("{archive}: entry {entry}: {message}")]
    Entry {
        archive: String,
        entry: String,
        message: String,
    },
    #[error(
        "the initramfs would be larger than the lab's limit of {limit} bytes (max_unpacked_bytes)"
    )]
    TooLarge { limit: u64 },
}

/// Bumped when the output for the same inputs changes, so old cache entries are not used.
const FORMAT: &str = "initramfs-v1";

/// Builds (or finds in `store_dir`) the initramfs made of `base` (an existing initramfs,
/// copied verbatim) followed by `trees` (tar archives, plain, gzip or xz, in order).
/// `max_bytes` bounds the output; a cached file over it is refused too.
pub fn build_cached(
    store_dir: &Path,
    base: Option<&Path>,
    trees: &[PathBuf],
    max_bytes: u64,
) -> Result<Initramfs, InitramfsError> {
    let key = cache_key(base, trees)?;
    for has_init in [true, false] {
        let path = store_dir.join(file_name(&key, has_init));
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.is_file()
        {
            if meta.len() > max_bytes {
                return Err(InitramfsError::TooLarge { limit: max_bytes });
            }
            tracing::debug!(path = %path.display(), "initramfs cache hit");
            return Ok(Initramfs { path, has_init });
        }
    }
    std::fs::create_dir_all(store_dir).map_err(io_error(store_dir))?;
    let mut partial = Partial {
        path: store_dir.join(format!(".{key}.{}", crate::images::partial_suffix())),
        kept: false,
    };
    let has_init = build(&partial.path, base, trees, max_bytes)?;
    let path = store_dir.join(file_name(&key, has_init));
    std::fs::rename(&partial.path, &path).map_err(io_error(&path))?;
    partial.kept = true;
    tracing::info!(path = %path.display(), trees = trees.len(), has_init, "initramfs built");
    Ok(Initramfs { path, has_init })
}

/// A file being written, under a name unique to this writer (concurrent builds of the
/// same inputs each write their own; the last rename wins with identical content):
/// removed on any error unless it was renamed into place.
struct Partial {
    path: PathBuf,
    kept: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> InitramfsError + '_ {
    move |source| InitramfsError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn file_name(key: &str, has_init: bool) -> String {
    let init = if has_init { "init" } else { "noinit" };
    format!("{key}.{init}.cpio")
}

fn cache_key(base: Option<&Path>, trees: &[PathBuf]) -> Result<String, InitramfsError> {
    let mut text = format!("{FORMAT}\n");
    let inputs = base
        .map(|b| ("base", b))
        .into_iter()
        .chain(trees.iter().map(|t| ("tree", t.as_path())));
    for (role, path) in inputs {
        let meta = std::fs::metadata(path).map_err(io_error(path))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        text.push_str(&format!(
            "{role}|{}|{}|{modified}\n",
            path.display(),
            meta.len()
        ));
    }
    Ok(hex::encode(&Sha256::digest(text.as_bytes())[..16]))
}

/// Why writing the output stopped: told apart from read errors of the archive, which
/// `io::copy` hands back through the same `io::Error`.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("output size limit reached")]
    OutputLimit,
    #[error("decompressed archive size limit reached")]
    InputLimit,
    #[error("{0}")]
    Write(io::Error),
}

fn stop_of(err: &io::Error) -> Option<&Stop> {
    err.get_ref().and_then(|e| e.downcast_ref::<Stop>())
}

/// The output file, counting bytes against the limit before they are written.
struct Output {
    path: PathBuf,
    inner: BufWriter<File>,
    written: u64,
    limit: u64,
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.limit {
            return Err(io::Error::other(Stop::OutputLimit));
        }
        let n = self
            .inner
            .write(buf)
            .map_err(|e| io::Error::other(Stop::Write(e)))?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner
            .flush()
            .map_err(|e| io::Error::other(Stop::Write(e)))
    }
}

impl Output {
    /// Zeros up to the next 4-byte boundary, where the kernel looks for the next archive.
    fn align(&mut self) -> io::Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.write_all(&[0u8; 3][..pad as usize])
    }
}

/// Decompressed tar data, bounded: a small compressed archive of zeros or of skipped
/// entries would otherwise cost unbounded time while writing nothing.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte more than allowed decides between "exactly at the limit" and over.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(Stop::InputLimit)),
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn build(
    out_path: &Path,
    base: Option<&Path>,
    trees: &[PathBuf],
    max_bytes: u64,
) -> Result<bool, InitramfsError> {
    let file = File::create(out_path).map_err(io_error(out_path))?;
    let mut out = Output {
        path: out_path.to_path_buf(),
        inner: BufWriter::new(file),
        written: 0,
        limit: max_bytes,
    };
    let output_error = |err: io::Error| match stop_of(&err) {
        Some(Stop::OutputLimit) => InitramfsError::TooLarge { limit: max_bytes },
        _ => InitramfsError::Io {
            path: out_path.display().to_string(),
            source: err,
        },
    };
    if let Some(base) = base {
        let mut input = File::open(base).map_err(io_error(base))?;
        io::copy(&mut input, &mut out).map_err(|err| match stop_of(&err) {
            Some(_) => output_error(err),
            None => io_error(base)(err),
        })?;
    }
    let mut state = Written {
        kinds: HashMap::new(),
        make_parents: base.is_none(),
        next_ino: 1,
        has_init: false,
    };
    for tree in trees {
        out.align().map_err(output_error)?;
        let links = scan_links(tree, max_bytes)?;
        convert(tree, &links, &mut state, &mut out, max_bytes)?;
        cpio::newc::trailer(&mut out).map_err(output_error)?;
    }
    out.flush().map_err(output_error)?;
    let Output { inner, .. } = out;
    let file = inner
        .into_inner()
        .map_err(|e| output_error(e.into_error()))?;
    file.sync_all().map_err(io_error(out_path))?;
    Ok(state.has_init)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Xz,
}

/// Opens a tree archive: compression from its first bytes (never its name), and the
/// first tar header checked, so a file that is not a tar is refused by name.
fn open_tree(path: &Path, max_bytes: u64) -> Result<Box<dyn Read>, InitramfsError> {
    let archive = path.display().to_string();
    let not_tar = |message: String| InitramfsError::NotTar {
        archive: archive.clone(),
        message,
    };
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut magic = Vec::with_capacity(6);
    (&mut file)
        .take(6)
        .read_to_end(&mut magic)
        .map_err(io_error(path))?;
    let compression = if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else if magic.starts_with(b"BZh") {
        return Err(not_tar(
            "bzip2-compressed, which is not supported: give a plain, gzip or xz tar archive".into(),
        ));
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(not_tar(
            "zstd-compressed, which is not supported: give a plain, gzip or xz tar archive".into(),
        ));
    } else {
        Compression::None
    };
    drop(file);
    let file = File::open(path).map_err(io_error(path))?;
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(file)),
    };
    let mut reader = Bounded {
        inner: reader,
        left: max_bytes.saturating_mul(2),
    };
    let mut first = Vec::with_capacity(512);
    (&mut reader)
        .take(512)
        .read_to_end(&mut first)
        .map_err(|e| InitramfsError::Archive {
            archive: archive.clone(),
            message: format!("cannot decompress ({compression:?}): {e}"),
        })?;
    if first.len() < 512 {
        return Err(not_tar(format!(
            "not a tar archive ({} bytes, shorter than one tar header)",
            first.len()
        )));
    }
    // An all-zero block is a tar's end marker: an empty archive, valid.
    if first.iter().any(|&b| b != 0) && !checksum_ok(&first) {
        return Err(not_tar(
            "not a tar archive (its first header's checksum does not match); \
             plain, gzip or xz tar archives are supported"
                .into(),
        ));
    }
    Ok(Box::new(io::Cursor::new(first).chain(reader)))
}

/// The tar header checksum: the sum of the header's bytes with the checksum field
/// itself counted as spaces, stored as octal.
fn checksum_ok(header: &[u8]) -> bool {
    let sum: u32 = header[..148]
        .iter()
        .chain(&header[156..512])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    let field = String::from_utf8_lossy(&header[148..156]);
    let field = field.trim_matches(|c: char| c == '\0' || c == ' ');
    u32::from_str_radix(field, 8).is_ok_and(|stored| stored == sum)
}

/// Hard links of one archive: each link's final target (chains followed) and how many
/// names each target has in all.
#[derive(Debug, Default)]
struct Links {
    target_of: HashMap<String, String>,
    nlink: HashMap<String, u32>,
}

/// The first pass: which entries are hard-link targets. Only headers are read; data is
/// skipped by the tar reader.
fn scan_links(path: &Path, max_bytes: u64) -> Result<Links, InitramfsError> {
    let archive_name = path.display().to_string();
    let mut archive = tar::Archive::new(open_tree(path, max_bytes)?);
    let mut direct = HashMap::new();
    let entries = archive
        .entries()
        .map_err(|e| read_error(&archive_name, None, &e, max_bytes))?;
    for entry in entries {
        let entry = entry.map_err(|e| read_error(&archive_name, None, &e, max_bytes))?;
        if entry.header().entry_type() != tar::EntryType::Link {
            continue;
        }
        let raw_name = entry.path_bytes();
        let entry_name = String::from_utf8_lossy(&raw_name).into_owned();
        let Some(name) = normalize(&raw_name, &archive_name, &entry_name)? else {
            continue;
        };
        let target = link_target(&entry, &archive_name, &entry_name)?;
        direct.insert(name, target);
    }
    let mut links = Links::default();
    for name in direct.keys() {
        // GNU tar points every link at the first name, but another tar may chain them.
        let mut target = &direct[name];
        let mut steps = 0;
        while let Some(next) = direct.get(target) {
            steps += 1;
            if steps > direct.len() {
                return Err(InitramfsError::Entry {
                    archive: archive_name,
                    entry: name.clone(),
                    message: "hard links form a cycle".into(),
                });
            }
            target = next;
        }
        links.target_of.insert(name.clone(), target.clone());
        *links.nlink.entry(target.clone()).or_insert(1) += 1;
    }
    Ok(links)
}

fn link_target(
    entry: &tar::Entry<'_, impl Read>,
    archive: &str,
    entry_name: &str,
) -> Result<String, InitramfsError> {
    let raw = entry.link_name_bytes().unwrap_or_default();
    normalize(&raw, archive, entry_name)?.ok_or_else(|| InitramfsError::Entry {
        archive: archive.into(),
        entry: entry_name.into(),
        message: "hard link without a target".into(),
    })
}

/// A tar reader's error: the limit on decompressed data, or a damaged archive.
fn read_error(
    archive: &str,
    entry: Option<&str>,
    err: &io::Error,
    max_bytes: u64,
) -> InitramfsError {
    let message = match stop_of(err) {
        Some(Stop::InputLimit) => format!(
            "more than {} bytes of tar data (twice max_unpacked_bytes)",
            max_bytes.saturating_mul(2)
        ),
        _ => format!("cannot read the archive: {err}"),
    };
    match entry {
        Some(entry) => InitramfsError::Entry {
            archive: archive.into(),
            entry: entry.into(),
            message,
        },
        None => InitramfsError::Archive {
            archive: archive.into(),
            message,
        },
    }
}

/// A tar name as the kernel wants it: relative, no `.` components, no trailing `/`.
/// `None` for the archive's root (`.` or `/`). A `..` component is refused: the kernel
/// would follow it out of the tree being unpacked.
fn normalize(raw: &[u8], archive: &str, entry: &str) -> Result<Option<String>, InitramfsError> {
    let error = |message: &str| InitramfsError::Entry {
        archive: archive.into(),
        entry: entry.into(),
        message: message.into(),
    };
    let text = std::str::from_utf8(raw).map_err(|_| error("name is not UTF-8"))?;
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(error("name has a `..` component")),
            part => parts.push(part),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// What a name is after the entries so far, as far as later entries care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Symlink,
    /// A regular file (or a hard link to one).
    File,
    /// A device or FIFO.
    Other,
}

/// State carried across the trees of one initramfs.
struct Written {
    kinds: HashMap<String, Kind>,
    make_parents: bool,
    next_ino: u32,
    has_init: bool,
}

impl Written {
    /// Records what `name` is now; a top-level `init` file or symlink means the kernel
    /// finds its init without `rdinit=`.
    fn note(&mut self, name: &str, kind: Kind) {
        if name == "init" {
            self.has_init = matches!(kind, Kind::File | Kind::Symlink);
        }
        self.kinds.insert(name.to_string(), kind);
    }

    fn ino(&mut self) -> u32 {
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1).max(1);
        ino
    }
}

/// The metadata of an entry, from its tar header.
#[derive(Debug, Clone, Copy)]
struct Meta {
    /// Permission bits, setuid/setgid/sticky included.
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: u32,
}

/// A hard link target already written, for its links.
#[derive(Debug, Clone)]
struct Target {
    ino: u32,
    nlink: u32,
    meta: Meta,
    body: TargetBody,
}

#[derive(Debug, Clone)]
enum TargetBody {
    Regular,
    /// Not a regular file: the kernel links only regular files, so a link to anything
    /// else is written as a copy of it.
    Copy {
        mode: u32,
        data: Vec<u8>,
        rdev: (u32, u32),
    },
}

const S_IFMT: u32 = 0o170000;
const S_IFIFO: u32 = 0o010000;
const S_IFCHR: u32 = 0o020000;
const S_IFDIR: u32 = 0o040000;
const S_IFBLK: u32 = 0o060000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// The second pass: every entry of one tar written as one newc archive (without its
/// trailer).
fn convert(
    path: &Path,
    links: &Links,
    state: &mut Written,
    out: &mut Output,
    max_bytes: u64,
) -> Result<(), InitramfsError> {
    let archive_name = path.display().to_string();
    let mut archive = tar::Archive::new(open_tree(path, max_bytes)?);
    let mut targets: HashMap<String, Target> = HashMap::new();
    let out_path = out.path.clone();
    let entries = archive
        .entries()
        .map_err(|e| read_error(&archive_name, None, &e, max_bytes))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(&archive_name, None, &e, max_bytes))?;
        let raw_name = entry.path_bytes().into_owned();
        let entry_name = String::from_utf8_lossy(&raw_name).into_owned();
        let entry_error = |message: String| InitramfsError::Entry {
            archive: archive_name.clone(),
            entry: entry_name.clone(),
            message,
        };
        let write_error = |err: io::Error| match stop_of(&err) {
            Some(Stop::OutputLimit) => InitramfsError::TooLarge { limit: max_bytes },
            Some(Stop::Write(_)) => InitramfsError::Io {
                path: out_path.display().to_string(),
                source: err,
            },
            _ => read_error(&archive_name, Some(&entry_name), &err, max_bytes),
        };
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Global PAX records (e.g. a creation comment) describe no file.
            continue;
        }
        let Some(name) = normalize(&raw_name, &archive_name, &entry_name)? else {
            continue;
        };
        let meta = meta_of(entry.header()).map_err(&entry_error)?;
        let nlink = links.nlink.get(&name).copied().unwrap_or(1);

        // What this entry becomes: its file type, data and rdev, and what its name is
        // afterwards.
        enum Body {
            /// The entry's own data, streamed.
            Data(u64),
            Bytes(Vec<u8>),
        }
        let no_data = || Body::Bytes(Vec::new());
        let (file_type, body, rdev, new_kind) = match kind {
            tar::EntryType::Directory => {
                if state.kinds.get(&name) == Some(&Kind::Symlink) {
                    tracing::debug!(archive = %archive_name, entry = %name,
                        "directory entry over an earlier symlink dropped; the symlink is kept");
                    continue;
                }
                (S_IFDIR, no_data(), (0, 0), Kind::Dir)
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                (S_IFREG, Body::Data(entry.size()), (0, 0), Kind::File)
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                if target.is_empty() {
                    return Err(entry_error("symlink without a target".into()));
                }
                (S_IFLNK, Body::Bytes(target), (0, 0), Kind::Symlink)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let device = |value: io::Result<Option<u32>>, what: &str| {
                    value
                        .map_err(|e| entry_error(format!("bad device {what} number: {e}")))
                        .map(Option::unwrap_or_default)
                };
                let major = device(entry.header().device_major(), "major")?;
                let minor = device(entry.header().device_minor(), "minor")?;
                let file_type = if kind == tar::EntryType::Char {
                    S_IFCHR
                } else {
                    S_IFBLK
                };
                (file_type, no_data(), (major, minor), Kind::Other)
            }
            tar::EntryType::Fifo => (S_IFIFO, no_data(), (0, 0), Kind::Other),
            tar::EntryType::Link => {
                let target_name = links.target_of.get(&name).cloned().unwrap_or_default();
                let Some(target) = targets.get(&target_name) else {
                    return Err(entry_error(format!(
                        "hard link to {target_name}, which is not earlier in the archive"
                    )));
                };
                write_parents(state, &name, meta, out).map_err(write_error)?;
                let kind = match &target.body {
                    // The kernel links it to the target: same inode, no data.
                    TargetBody::Regular => {
                        let mode = S_IFREG | target.meta.perm;
                        let header = newc(&name, mode, target.meta, target.ino, target.nlink);
                        write_entry(out, header, &[]).map_err(write_error)?;
                        Kind::File
                    }
                    TargetBody::Copy { mode, data, rdev } => {
                        let ino = state.ino();
                        let header = newc(&name, *mode, target.meta, ino, 1)
                            .rdev_major(rdev.0)
                            .rdev_minor(rdev.1);
                        write_entry(out, header, data).map_err(write_error)?;
                        if mode & S_IFMT == S_IFLNK {
                            Kind::Symlink
                        } else {
                            Kind::Other
                        }
                    }
                };
                state.note(&name, kind);
                continue;
            }
            other => {
                return Err(entry_error(format!(
                    "tar entry type {other:?} cannot go into an initramfs"
                )));
            }
        };
        write_parents(state, &name, meta, out).map_err(write_error)?;
        let ino = state.ino();
        let mode = file_type | meta.perm;
        let nlink = if new_kind == Kind::Dir { 1 } else { nlink };
        let header = newc(&name, mode, meta, ino, nlink)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1);
        match body {
            Body::Bytes(data) => {
                write_entry(out, header, &data).map_err(write_error)?;
                if nlink > 1 {
                    let body = TargetBody::Copy { mode, data, rdev };
                    let target = Target {
                        ino,
                        nlink,
                        meta,
                        body,
                    };
                    targets.insert(name.clone(), target);
                }
            }
            Body::Data(size) => {
                let size32 = u32::try_from(size).map_err(|_| {
                    entry_error(format!(
                        "{size} bytes, more than a newc archive can hold (4 GiB)"
                    ))
                })?;
                let mut writer = header.write(&mut *out, size32);
                let copied = io::copy(&mut entry, &mut writer).map_err(write_error)?;
                if copied != size {
                    return Err(entry_error(format!("truncated: {copied} of {size} bytes")));
                }
                writer.finish().map_err(write_error)?;
                if nlink > 1 {
                    let body = TargetBody::Regular;
                    targets.insert(
                        name.clone(),
                        Target {
                            ino,
                            nlink,
                            meta,
                            body,
                        },
                    );
                }
            }
        }
        state.note(&name, new_kind);
    }
    Ok(())
}

fn meta_of(header: &tar::Header) -> Result<Meta, String> {
    let field = |value: io::Result<u64>, what: &str| -> Result<u32, String> {
        let value = value.map_err(|e| format!("bad {what}: {e}"))?;
        u32::try_from(value).map_err(|_| format!("{what} {value} does not fit in 32 bits"))
    };
    let perm = header.mode().map_err(|e| format!("bad mode: {e}"))? & 0o7777;
    let uid = field(header.uid(), "uid")?;
    let gid = field(header.gid(), "gid")?;
    // newc holds 32-bit times; past 2106 is clamped rather than refused.
    let mtime = header.mtime().map_err(|e| format!("bad mtime: {e}"))?;
    let mtime = u32::try_from(mtime).unwrap_or(u32::MAX);
    Ok(Meta {
        perm,
        uid,
        gid,
        mtime,
    })
}

fn newc(name: &str, mode: u32, meta: Meta, ino: u32, nlink: u32) -> NewcBuilder {
    NewcBuilder::new(name)
        .ino(ino)
        .mode(mode)
        .uid(meta.uid)
        .gid(meta.gid)
        .mtime(meta.mtime)
        .nlink(nlink)
}

fn write_entry(out: &mut Output, header: NewcBuilder, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len()).map_err(io::Error::other)?;
    let mut writer = header.write(out, len);
    writer.write_all(data)?;
    writer.finish().map(|_| ())
}

/// Directory entries for `name`'s parents that no archive created yet (see the header
/// comment: only when the whole tree is known).
fn write_parents(state: &mut Written, name: &str, meta: Meta, out: &mut Output) -> io::Result<()> {
    if !state.make_parents {
        return Ok(());
    }
    let mut end = 0;
    while let Some(slash) = name[end..].find('/') {
        let parent = &name[..end + slash];
        end += slash + 1;
        if state.kinds.contains_key(parent) {
            continue;
        }
        let dir_meta = Meta {
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: meta.mtime,
        };
        let ino = state.ino();
        write_entry(out, newc(parent, S_IFDIR | 0o755, dir_meta, ino, 1), &[])?;
        state.kinds.insert(parent.to_string(), Kind::Dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::os::unix::fs::MetadataExt;

    const MTIME: u64 = 1_700_000_000;

    /// One newc entry as read back.
    #[derive(Debug, Clone)]
    struct Item {
        name: String,
        mode: u32,
        uid: u32,
        gid: u32,
        ino: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// Reads concatenated newc archives the way the kernel does: zero padding skipped in
    /// 4-byte steps, each archive starting 4-byte aligned and ending with its trailer.
    fn read_archives(bytes: &[u8]) -> Vec<Vec<Item>> {
        let mut rest = bytes;
        let mut archives = Vec::new();
        loop {
            while rest.len() >= 4 && rest[..4] == [0; 4] {
                rest = &rest[4..];
            }
            if rest.is_empty() {
                return archives;
            }
            assert_eq!(
                (bytes.len() - rest.len()) % 4,
                0,
                "archive not 4-byte aligned"
            );
            let mut items = Vec::new();
            loop {
                let mut reader = cpio::NewcReader::new(rest).unwrap();
                let entry = reader.entry().clone();
                if entry.is_trailer() {
                    rest = reader.finish().unwrap();
                    break;
                }
                let mut data = Vec::new();
                reader.read_to_end(&mut data).unwrap();
                items.push(Item {
                    name: entry.name().to_string(),
                    mode: entry.mode(),
                    uid: entry.uid(),
                    gid: entry.gid(),
                    ino: entry.ino(),
                    nlink: entry.nlink(),
                    mtime: entry.mtime(),
                    rdev: (entry.rdev_major(), entry.rdev_minor()),
                    data,
                });
                rest = reader.finish().unwrap();
            }
            archives.push(items);
        }
    }

    fn find<'a>(items: &'a [Item], name: &str) -> &'a Item {
        items
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", names(items)))
    }

    fn names(items: &[Item]) -> Vec<&str> {
        items.iter().map(|i| i.name.as_str()).collect()
    }

    /// Builds tar archives entry by entry, names written raw so tests can give `./`,
    /// `/` and `..` names that `tar::Header::set_path` would clean or refuse.
    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }

        fn entry(
            &mut self,
            kind: tar::EntryType,
            name: &str,
            mode: u32,
            data: &[u8],
            set: impl FnOnce(&mut tar::Header),
        ) -> &mut Self {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            let slot = &mut header.as_old_mut().name;
            slot.fill(0);
            slot[..name.len()].copy_from_slice(name.as_bytes());
            header.set_mode(mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(MTIME);
            header.set_size(data.len() as u64);
            set(&mut header);
            header.set_cksum();
            self.0.append(&header, data).unwrap();
            self
        }

        fn dir(&mut self, name: &str) -> &mut Self {
            self.entry(tar::EntryType::Directory, name, 0o755, &[], |_| {})
        }

        fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
            self.entry(tar::EntryType::Regular, name, mode, data, |_| {})
        }

        fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.entry(tar::EntryType::Symlink, name, 0o777, &[], |h| {
                h.set_link_name(target).unwrap();
            })
        }

        fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.entry(tar::EntryType::Link, name, 0o755, &[], |h| {
                h.set_link_name(target).unwrap();
            })
        }

        fn device(
            &mut self,
            kind: tar::EntryType,
            name: &str,
            major: u32,
            minor: u32,
        ) -> &mut Self {
            self.entry(kind, name, 0o600, &[], |h| {
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
            })
        }

        fn finish(&mut self) -> Vec<u8> {
            let builder = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
            builder.into_inner().unwrap()
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut encoder = xz2::write::XzEncoder::new(Vec::new(), 1);
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn store_files(store: &Path) -> Vec<String> {
        match std::fs::read_dir(store) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    const LIMIT: u64 = 1 << 20;

    #[test]
    fn every_rootfs_entry_type_keeps_its_mode_owner_links_and_device_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("usr/share/{}/file", "d".repeat(120));
        let mut tar = Tar::new();
        tar.dir("./")
            .dir("./bin/")
            .file("./bin/busybox", 0o755, b"BUSYBOX")
            .symlink("./bin/sh", "/bin/busybox")
            .hardlink("./bin/ln", "./bin/busybox")
            .hardlink("bin/cp", "bin/busybox")
            // No `usr/` or `usr/bin/` entry: the kernel would drop the file without them.
            .file("/usr/bin/su", 0o4755, b"su")
            .dir("home/")
            .entry(tar::EntryType::Directory, "home/user/", 0o700, &[], |h| {
                h.set_uid(1000);
                h.set_gid(1000);
            })
            .entry(
                tar::EntryType::Regular,
                "home/user/notes",
                0o640,
                b"hi",
                |h| {
                    h.set_uid(1000);
                    h.set_gid(100);
                },
            )
            .dir("tmp/")
            .entry(tar::EntryType::Directory, "tmp/", 0o1777, &[], |_| {})
            .dir("dev/")
            .device(tar::EntryType::Char, "./dev/console", 5, 1)
            .device(tar::EntryType::Block, "./dev/sda", 8, 0)
            .entry(tar::EntryType::Fifo, "dev/initctl", 0o600, &[], |_| {});
        let mut bytes = tar.finish();
        // A GNU long name, through the tar crate's own long-name writer.
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(4);
        builder
            .append_data(&mut header, &long, &b"long"[..])
            .unwrap();
        let long_tar = builder.into_inner().unwrap();
        // Both archives end in two zero blocks; strip the first one's so they are one.
        bytes.truncate(bytes.len() - 1024);
        bytes.extend_from_slice(&long_tar);
        let tree = write(dir.path(), "rootfs.tar", &bytes);

        let built = build_cached(&dir.path().join("store"), None, &[tree], LIMIT).unwrap();
        assert!(!built.has_init);
        let archives = read_archives(&std::fs::read(&built.path).unwrap());
        assert_eq!(archives.len(), 1);
        let items = &archives[0];
        let long_parents = ["usr/share", &format!("usr/share/{}", "d".repeat(120))];
        let mut expected = vec![
            "bin",
            "bin/busybox",
            "bin/sh",
            "bin/ln",
            "bin/cp",
            "usr",
            "usr/bin",
            "usr/bin/su",
            "home",
            "home/user",
            "home/user/notes",
            "tmp",
            "tmp",
            "dev",
            "dev/console",
            "dev/sda",
            "dev/initctl",
        ];
        expected.extend(long_parents);
        expected.push(&long);
        assert_eq!(names(items), expected);

        let busybox = find(items, "bin/busybox");
        assert_eq!(busybox.mode, 0o100755);
        assert_eq!(busybox.data, b"BUSYBOX");
        assert_eq!(busybox.mtime, MTIME as u32);
        assert_eq!(busybox.nlink, 3, "two links and the file itself");
        for link in ["bin/ln", "bin/cp"] {
            let link = find(items, link);
            assert_eq!(link.ino, busybox.ino, "a link shares its target's inode");
            assert_eq!(link.nlink, 3);
            assert_eq!(link.mode, 0o100755);
            assert!(
                link.data.is_empty(),
                "the data goes with the first name only"
            );
        }
        let inos: std::collections::HashSet<u32> = items.iter().map(|i| i.ino).collect();
        assert_eq!(inos.len(), items.len() - 2, "only links share an inode");

        let sh = find(items, "bin/sh");
        assert_eq!(sh.mode, 0o120777);
        assert_eq!(
            sh.data, b"/bin/busybox",
            "absolute symlink targets are kept"
        );

        assert_eq!(find(items, "usr").mode, 0o040755);
        assert_eq!(find(items, "usr/bin").mode, 0o040755);
        let su = find(items, "usr/bin/su");
        assert_eq!(su.mode, 0o104755, "setuid kept");
        assert_eq!(find(items, &long).data, b"long");

        let user = find(items, "home/user");
        assert_eq!((user.mode, user.uid, user.gid), (0o040700, 1000, 1000));
        let notes = find(items, "home/user/notes");
        assert_eq!((notes.mode, notes.uid, notes.gid), (0o100640, 1000, 100));
        assert_eq!(items[12].mode, 0o041777, "sticky kept");

        let console = find(items, "dev/console");
        assert_eq!((console.mode, console.rdev), (0o020600, (5, 1)));
        let sda = find(items, "dev/sda");
        assert_eq!((sda.mode, sda.rdev), (0o060600, (8, 0)));
        assert_eq!(find(items, "dev/initctl").mode, 0o010600);
    }

    #[test]
    fn base_comes_first_verbatim_then_each_tree_in_order_compression_sniffed() {
        let dir = tempfile::tempdir().unwrap();
        // Not a cpio and not a multiple of 4 bytes long: copied as is, never parsed.
        let base = write(dir.path(), "ramdisk.img", b"\x1f\x8bRAMDISK");
        let first = Tar::new()
            .dir("etc/")
            .file("etc/issue", 0o644, b"one")
            .finish();
        // Names say nothing of the compression: the magic bytes do.
        let first = write(dir.path(), "rootfs.tar", &gzip(&first));
        let second = Tar::new()
            .dir("etc/")
            .file("etc/issue", 0o644, b"two")
            .symlink("init", "/sbin/init")
            .finish();
        let second = write(dir.path(), "modules.bin", &xz(&second));

        let built = build_cached(
            &dir.path().join("store"),
            Some(&base),
            &[first, second],
            LIMIT,
        )
        .unwrap();
        assert!(built.has_init);
        let bytes = std::fs::read(&built.path).unwrap();
        assert_eq!(&bytes[..9], b"\x1f\x8bRAMDISK");
        assert_eq!(
            &bytes[9..12],
            &[0, 0, 0],
            "zero padding to a 4-byte boundary"
        );
        assert_eq!(&bytes[12..18], b"070701");
        let archives = read_archives(&bytes[12..]);
        assert_eq!(archives.len(), 2);
        assert_eq!(names(&archives[0]), ["etc", "etc/issue"]);
        assert_eq!(find(&archives[0], "etc/issue").data, b"one");
        assert_eq!(names(&archives[1]), ["etc", "etc/issue", "init"]);
        assert_eq!(find(&archives[1], "etc/issue").data, b"two");
    }

    #[test]
    fn an_overlay_directory_does_not_replace_an_earlier_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = Tar::new()
            .dir("usr/")
            .dir("usr/lib/")
            .symlink("lib", "usr/lib")
            .finish();
        let rootfs = write(dir.path(), "rootfs.tar", &rootfs);
        let modules = Tar::new()
            .dir("lib/")
            .file("lib/modules/6.1/e1000.ko", 0o644, b"ko")
            .finish();
        let modules = write(dir.path(), "modules.tar", &modules);
        let built =
            build_cached(&dir.path().join("store"), None, &[rootfs, modules], LIMIT).unwrap();
        let archives = read_archives(&std::fs::read(&built.path).unwrap());
        assert_eq!(
            names(&archives[1]),
            ["lib/modules", "lib/modules/6.1", "lib/modules/6.1/e1000.ko"],
            "`lib` stays the symlink; the missing directories under it are made"
        );
    }

    #[test]
    fn with_a_base_no_parent_directories_are_made_up() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "ramdisk.cpio", b"");
        let modules = Tar::new().file("lib/modules/x.ko", 0o644, b"ko").finish();
        let modules = write(dir.path(), "modules.tar", &modules);
        let built =
            build_cached(&dir.path().join("store"), Some(&base), &[modules], LIMIT).unwrap();
        let archives = read_archives(&std::fs::read(&built.path).unwrap());
        assert_eq!(names(&archives[0]), ["lib/modules/x.ko"]);
    }

    #[test]
    fn a_cache_hit_is_the_same_file_and_a_changed_input_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let tree = Tar::new().file("init", 0o755, b"#!/bin/sh").finish();
        let tree = write(dir.path(), "rootfs.tar", &tree);
        let trees = [tree.clone()];

        let first = build_cached(&store, None, &trees, LIMIT).unwrap();
        let meta = std::fs::metadata(&first.path).unwrap();
        let again = build_cached(&store, None, &trees, LIMIT).unwrap();
        assert_eq!(again, first, "same path, has_init kept");
        assert!(again.has_init);
        let meta_again = std::fs::metadata(&again.path).unwrap();
        assert_eq!(meta_again.ino(), meta.ino(), "not rebuilt");
        assert_eq!(meta_again.modified().unwrap(), meta.modified().unwrap());

        let changed = Tar::new()
            .file("init", 0o755, b"#!/bin/busybox sh")
            .finish();
        std::fs::write(&tree, changed).unwrap();
        let rebuilt = build_cached(&store, None, &trees, LIMIT).unwrap();
        assert_ne!(rebuilt.path, first.path);
        let archives = read_archives(&std::fs::read(&rebuilt.path).unwrap());
        assert_eq!(find(&archives[0], "init").data, b"#!/bin/busybox sh");
        assert!(
            store_files(&store).iter().all(|f| f.ends_with(".cpio")),
            "no partial files left: {:?}",
            store_files(&store)
        );
    }

    #[test]
    fn a_name_with_dotdot_is_refused_naming_entry_and_archive() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let tree = Tar::new()
            .file("etc/passwd", 0o644, b"root")
            .file("etc/../../escape", 0o644, b"x")
            .finish();
        let tree = write(dir.path(), "evil.tar", &tree);
        let err = build_cached(&store, None, std::slice::from_ref(&tree), LIMIT).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, InitramfsError::Entry { .. }), "{err:?}");
        assert!(text.contains("evil.tar"), "{text}");
        assert!(text.contains("etc/../../escape"), "{text}");
        assert!(text.contains("`..`"), "{text}");
        assert!(store_files(&store).is_empty(), "{:?}", store_files(&store));
    }

    #[test]
    fn bzip2_and_non_tar_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        // Named like a gzip archive: the content decides.
        let bz = write(dir.path(), "rootfs.tar.gz", b"BZh91AY&SY\x00\x01\x02");
        let err = build_cached(&store, None, &[bz], LIMIT).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, InitramfsError::NotTar { .. }), "{err:?}");
        assert!(
            text.contains("rootfs.tar.gz") && text.contains("bzip2"),
            "{text}"
        );

        let text_file = write(dir.path(), "notes.tar", &[b'x'; 2048]);
        let err = build_cached(&store, None, &[text_file], LIMIT).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("notes.tar") && text.contains("not a tar archive"),
            "{text}"
        );

        let gz_text = write(dir.path(), "readme.gz", &gzip(&[b'x'; 2048]));
        let err = build_cached(&store, None, &[gz_text], LIMIT).unwrap_err();
        assert!(err.to_string().contains("not a tar archive"), "{err}");
        assert!(store_files(&store).is_empty(), "{:?}", store_files(&store));
    }

    #[test]
    fn output_past_max_bytes_is_refused_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let tree = Tar::new().file("big", 0o644, &[7u8; 10_000]).finish();
        // Compressed to a few bytes: the bound is on what is written, not on the input.
        let tree = write(dir.path(), "rootfs.tar.xz", &xz(&tree));
        let err = build_cached(&store, None, std::slice::from_ref(&tree), 9000).unwrap_err();
        assert!(
            matches!(err, InitramfsError::TooLarge { limit: 9000 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("9000"), "{err}");
        assert!(store_files(&store).is_empty(), "{:?}", store_files(&store));

        let base = write(dir.path(), "ramdisk", &[1u8; 5000]);
        let err = build_cached(&store, Some(&base), &[], 4096).unwrap_err();
        assert!(matches!(err, InitramfsError::TooLarge { .. }), "{err:?}");
        assert!(store_files(&store).is_empty(), "{:?}", store_files(&store));

        // Within the limit the same tree builds.
        build_cached(&store, None, &[tree], 20_000).unwrap();

        // Tar data that writes nothing (a global PAX header here) is bounded too: twice
        // the limit, which leaves room for tar's own overhead.
        let store = dir.path().join("store2");
        let junk = Tar::new()
            .entry(
                tar::EntryType::XGlobalHeader,
                "pax",
                0o644,
                &[b'x'; 30_000],
                |_| {},
            )
            .finish();
        let junk = write(dir.path(), "junk.tar.gz", &gzip(&junk));
        let err = build_cached(&store, None, &[junk], 9000).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("junk.tar.gz") && text.contains("18000"),
            "{text}"
        );
        assert!(store_files(&store).is_empty(), "{:?}", store_files(&store));
    }

    /// One PAX extended header record: its length counts itself.
    fn pax_record(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        format!("{len}{body}").into_bytes()
    }

    #[test]
    fn pax_names_and_owners_and_chained_hard_links_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("usr/lib/{}.so", "l".repeat(150));
        let mut records = pax_record("path", &long);
        records.extend(pax_record("uid", "3000000"));
        let tree = Tar::new()
            .dir("usr/")
            .dir("usr/lib/")
            .entry(
                tar::EntryType::XHeader,
                "PaxHeader/x",
                0o644,
                &records,
                |_| {},
            )
            .file("usr/lib/truncated-name", 0o644, b"so")
            .file("a", 0o600, b"data")
            .hardlink("b", "a")
            // Not GNU tar's habit (every link names the first file), but valid.
            .hardlink("c", "b")
            .finish();
        let tree = write(dir.path(), "rootfs.tar", &tree);
        let built = build_cached(&dir.path().join("store"), None, &[tree], LIMIT).unwrap();
        let archives = read_archives(&std::fs::read(&built.path).unwrap());
        let items = &archives[0];
        assert_eq!(
            names(items),
            ["usr", "usr/lib", long.as_str(), "a", "b", "c"]
        );
        let so = find(items, &long);
        assert_eq!((so.uid, so.data.as_slice()), (3_000_000, &b"so"[..]));
        let a = find(items, "a");
        assert_eq!(a.nlink, 3);
        for link in ["b", "c"] {
            let link = find(items, link);
            assert_eq!((link.ino, link.nlink, link.mode), (a.ino, 3, 0o100600));
        }
    }

    #[test]
    fn a_hard_link_to_a_missing_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tar::new().hardlink("bin/ln", "bin/nowhere").finish();
        let tree = write(dir.path(), "rootfs.tar", &tree);
        let err = build_cached(&dir.path().join("store"), None, &[tree], LIMIT).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("bin/ln") && text.contains("bin/nowhere"),
            "{text}"
        );
    }
}
