//! Test definition trees on the dispatcher's side: git repositories, Bazaar branches and
//! tar archives turned into one gzip-compressed tar of the tree a test runs in, plus the
//! text of the definition inside it. The archive is the unit that goes to a node.
//!
//! Git goes through the `git` command (see ARCHITECTURE.md, "Dependencies and why"):
//! one bare mirror per URL in the cache, updated by `git fetch` (only new objects come
//! down), and one archive per commit (`git archive`), never made twice. Every URL goes
//! through the lab's [`FetchPolicy`] first: `file://` only for a directory under the
//! lab's roots; a network host only when every address it resolves to is allowed, and
//! then git connects to the address that was checked (the IP in a `git://` URL, curl's
//! resolve pinned for `http(s)://`, redirects off), so a name cannot resolve to
//! loopback between the check and the connection. Git runs with no system or user
//! configuration, no terminal prompt, only the URL's own protocol allowed, and a
//! deadline.
//!
//! Caching: a full commit id already in the mirror is used without asking the
//! repository again. A branch, a tag or no revision (the repository's HEAD) is resolved
//! against the repository each time it is asked for: LAVA users expect a branch to mean
//! its newest commit. The runner asks once per job, so every node of a job runs the same
//! commit.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use url::Url;

use crate::fetch::{FetchError, FetchPolicy, NetworkAccess};

/// Longest a `git` or `brz` command may take (a fetch of a large repository included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Refused(#[from] FetchError),
    #[error("{url}: cannot resolve {host}: {message}")]
    Resolve {
        url: String,
        host: String,
        message: String,
    },
    #[error("{what} needs `{tool}` on the dispatcher, which is not installed")]
    MissingTool { tool: &'static str, what: String },
    #[error("{url}: `{command}` failed: {message}")]
    Command {
        url: String,
        command: String,
        message: String,
    },
    #[error("{url}: revision \"{revision}\" not found")]
    Revision { url: String, revision: String },
    #[error("{url}: no test definition at \"{path}\"{at}")]
    NoDefinition {
        url: String,
        path: String,
        at: String,
    },
    #[error("{what}: not UTF-8 text")]
    NotText { what: String },
    #[error("tar-repo: {0}")]
    Archive(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A tree ready to go to a node.
#[derive(Debug, Clone)]
pub struct Tree {
    /// The whole tree, gzip-compressed tar.
    pub archive: Arc<Vec<u8>>,
    /// The definition's YAML text.
    pub definition: String,
    /// What and which version, for the log: `URL @ commit`.
    pub label: String,
}

/// A git repository's tree at one commit, in the cache.
#[derive(Debug, Clone)]
pub struct GitTree {
    /// The commit id the revision resolved to.
    pub commit: String,
    /// The tree as a gzip-compressed tar in the cache.
    pub archive: PathBuf,
    mirror: PathBuf,
}

/// The dispatcher's cache of repositories and their trees.
pub struct RepoCache {
    dir: PathBuf,
    policy: Arc<FetchPolicy>,
}

/// One lock per mirror for the whole process: two jobs fetching the same URL at once
/// would otherwise race in one repository.
static MIRROR_LOCKS: LazyLock<parking_lot::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl RepoCache {
    pub fn new(dir: impl Into<PathBuf>, policy: Arc<FetchPolicy>) -> Self {
        Self {
            dir: dir.into(),
            policy,
        }
    }

    /// The tree of a git repository at `revision` (`None`: its HEAD) and the
    /// definition at `testdef` in it.
    pub async fn git(
        &self,
        url: &Url,
        revision: Option<&str>,
        testdef: &str,
    ) -> Result<Tree, RepoError> {
        let tree = self.git_tree(url, revision).await?;
        let definition = self.git_file(url, &tree, testdef).await?;
        let archive = self.read_archive(&tree.archive).await?;
        Ok(Tree {
            archive: Arc::new(archive),
            definition,
            label: format!("{url} @ {}", tree.commit),
        })
    }

    /// A git repository's tree at `revision` (`None`: its HEAD), fetched through the
    /// policy into the cache. Also what a definition's `install: git-repos` needs.
    pub async fn git_tree(&self, url: &Url, revision: Option<&str>) -> Result<GitTree, RepoError> {
        let key = hex::encode(Sha256::digest(url.as_str().as_bytes()));
        let mirror = self.dir.join("git").join(format!("{}.git", &key[..24]));
        let lock = MIRROR_LOCKS
            .lock()
            .entry(mirror.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        let is_commit_id = |r: &str| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit());
        // A commit already here is the same tree whatever the repository says now, so
        // it is used without asking the repository (which the job's validation checked
        // against the policy).
        let cached = match revision {
            Some(rev) if is_commit_id(rev) && mirror.join("HEAD").exists() => {
                commit_of(url, &mirror, rev).await
            }
            _ => None,
        };
        let commit = match cached {
            Some(commit) => commit,
            None => {
                let remote = self.git_remote(url).await?;
                if !mirror.join("HEAD").exists() {
                    tokio::fs::create_dir_all(&mirror)
                        .await
                        .map_err(io_error(&mirror))?;
                    git(url, &mirror, &remote, &["init", "--bare", "--quiet"]).await?;
                }
                let source = remote.url.clone();
                git(
                    url,
                    &mirror,
                    &remote,
                    &[
                        "fetch",
                        "--quiet",
                        "--force",
                        "--no-write-fetch-head",
                        "--end-of-options",
                        &source,
                        "+HEAD:refs/lava/HEAD",
                        "+refs/heads/*:refs/heads/*",
                        "+refs/tags/*:refs/tags/*",
                    ],
                )
                .await?;
                let wanted = revision.unwrap_or("refs/lava/HEAD");
                match commit_of(url, &mirror, wanted).await {
                    Some(commit) => commit,
                    // A commit no branch or tag reaches: servers that allow it send it
                    // when asked by id.
                    None if revision.is_some_and(is_commit_id) => {
                        let _ = git(
                            url,
                            &mirror,
                            &remote,
                            &["fetch", "--quiet", "--end-of-options", &source, wanted],
                        )
                        .await;
                        commit_of(url, &mirror, wanted).await.ok_or_else(|| {
                            RepoError::Revision {
                                url: url.to_string(),
                                revision: wanted.to_string(),
                            }
                        })?
                    }
                    None => {
                        return Err(RepoError::Revision {
                            url: url.to_string(),
                            revision: revision.unwrap_or("HEAD").to_string(),
                        });
                    }
                }
            }
        };
        let archive = mirror.with_extension(format!("{commit}.tar.gz"));
        if !archive.exists() {
            let partial = archive.with_extension("partial");
            let out = partial.display().to_string();
            git(
                url,
                &mirror,
                &Remote::local(),
                &["archive", "--format=tar.gz", "-o", &out, &commit],
            )
            .await?;
            tokio::fs::rename(&partial, &archive)
                .await
                .map_err(io_error(&archive))?;
        }
        Ok(GitTree {
            commit,
            archive,
            mirror,
        })
    }

    /// A file of a fetched tree, at most the lab's `max_testdef_bytes`.
    pub async fn git_file(
        &self,
        url: &Url,
        tree: &GitTree,
        path: &str,
    ) -> Result<String, RepoError> {
        let path = path.trim_start_matches("./");
        let object = format!("{}:{path}", tree.commit);
        let missing = || RepoError::NoDefinition {
            url: url.to_string(),
            path: path.to_string(),
            at: format!(" at {}", tree.commit),
        };
        let remote = Remote::local();
        let kind = git(url, &tree.mirror, &remote, &["cat-file", "-t", &object])
            .await
            .map_err(|_| missing())?;
        if String::from_utf8_lossy(&kind).trim() != "blob" {
            return Err(missing());
        }
        let size = git(url, &tree.mirror, &remote, &["cat-file", "-s", &object]).await?;
        let size: u64 = String::from_utf8_lossy(&size)
            .trim()
            .parse()
            .unwrap_or(u64::MAX);
        let limit = self.policy.limits.max_testdef_bytes;
        if size > limit {
            return Err(FetchError::TooLarge {
                what: format!("test definition {path} in {url}"),
                limit,
                key: "max_testdef_bytes",
            }
            .into());
        }
        let bytes = git(url, &tree.mirror, &remote, &["cat-file", "blob", &object]).await?;
        String::from_utf8(bytes).map_err(|_| RepoError::NotText {
            what: format!("{path} in {url}"),
        })
    }

    /// A Bazaar branch at `revision` (`None`: its last revision), through `brz`. Not
    /// cached: Bazaar has no content id to key a tree by short of fetching it.
    pub async fn bzr(
        &self,
        url: &str,
        revision: Option<&str>,
        testdef: &str,
    ) -> Result<Tree, RepoError> {
        self.bzr_with(find_tool("brz"), url, revision, Some(testdef))
            .await
    }

    /// A Bazaar branch at `revision` as a `.tar.gz` of its tree (no definition read):
    /// a test definition's `install.bzr-repos`.
    pub async fn bzr_tree(&self, url: &str, revision: Option<&str>) -> Result<Tree, RepoError> {
        self.bzr_with(find_tool("brz"), url, revision, None).await
    }

    /// `testdef`: the definition read from the branch (`None`: none, the tree's
    /// `definition` is empty).
    async fn bzr_with(
        &self,
        brz: Option<PathBuf>,
        url: &str,
        revision: Option<&str>,
        testdef: Option<&str>,
    ) -> Result<Tree, RepoError> {
        let Some(brz) = brz else {
            return Err(RepoError::MissingTool {
                tool: "brz",
                what: format!("bzr-repo {url}"),
            });
        };
        // brz takes a path as well as a URL: only URLs of kinds the policy can check
        // reach it, so a job cannot branch a directory of this machine by its path, or
        // use this machine's SSH credentials (`bzr+ssh://`).
        let parsed = Url::parse(url).map_err(|_| FetchError::Scheme(url.to_string()))?;
        match parsed.scheme() {
            "file" => {
                let path = parsed
                    .to_file_path()
                    .map_err(|()| FetchError::Scheme(url.to_string()))?;
                let policy = self.policy.clone();
                tokio::task::spawn_blocking(move || policy.local_dir(&path))
                    .await
                    .map_err(|e| RepoError::Io {
                        path: url.to_string(),
                        source: std::io::Error::other(e.to_string()),
                    })??;
            }
            // Checked, but brz resolves the name again itself: it cannot be pinned to
            // the checked address as git can.
            "http" | "https" | "bzr" => {
                resolve_checked(&self.policy, &parsed).await?;
            }
            // Launchpad's short form: brz asks Launchpad's API, then branches from
            // its Bazaar hosting.
            "lp" => {
                for host in LAUNCHPAD_HOSTS {
                    let via = Url::parse(&format!("https://{host}/"))
                        .map_err(|_| FetchError::Scheme(url.to_string()))?;
                    resolve_checked(&self.policy, &via).await?;
                }
            }
            _ => return Err(FetchError::Scheme(url.to_string()).into()),
        }
        let work = tempdir_in(&self.dir.join("bzr")).await?;
        let branch = work.join("branch");
        let rev = revision.unwrap_or("-1");
        let branch_arg = branch.display().to_string();
        run_tool(
            url,
            &brz,
            &["branch", "--quiet", "-r", rev, url, &branch_arg],
            &work,
        )
        .await?;
        let definition = match testdef {
            Some(testdef) => {
                read_text_bounded(
                    &branch.join(testdef.trim_start_matches("./")),
                    self.policy.limits.max_testdef_bytes,
                    url,
                    testdef,
                )
                .await
            }
            None => Ok(String::new()),
        };
        let archive = work.join("tree.tar.gz");
        let archive_arg = archive.display().to_string();
        let exported = run_tool(
            url,
            &brz,
            // No top directory in the archive: the tree's top is the test's.
            &[
                "export",
                "--quiet",
                "--root=",
                "--format=tgz",
                &archive_arg,
                &branch_arg,
            ],
            &work,
        )
        .await;
        let result = match (definition, exported) {
            (Ok(definition), Ok(_)) => {
                let archive = self.read_archive(&archive).await?;
                Ok(Tree {
                    archive: Arc::new(archive),
                    definition,
                    label: format!("{url} -r {rev}"),
                })
            }
            (Err(err), _) | (_, Err(err)) => Err(err),
        };
        let _ = tokio::fs::remove_dir_all(&work).await;
        result
    }

    /// A `tar-repo` archive (plain or gzip-compressed tar) and the definition in it.
    pub fn tar(&self, archive: &[u8], testdef: &str) -> Result<Tree, RepoError> {
        let limit = self.policy.limits.max_download_bytes;
        let plain = if archive.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(archive)
                .take(limit.saturating_add(1))
                .read_to_end(&mut plain)
                .map_err(|e| RepoError::Archive(format!("not a gzip file: {e}")))?;
            plain
        } else {
            archive.to_vec()
        };
        if plain.len() as u64 > limit {
            return Err(FetchError::TooLarge {
                what: "tar-repo".to_string(),
                limit,
                key: "max_download_bytes",
            }
            .into());
        }
        let wanted = testdef.trim_start_matches("./");
        let bytes = tar_member(&plain, wanted)?.ok_or_else(|| RepoError::NoDefinition {
            url: "tar-repo".to_string(),
            path: wanted.to_string(),
            at: String::new(),
        })?;
        if bytes.len() as u64 > self.policy.limits.max_testdef_bytes {
            return Err(FetchError::TooLarge {
                what: format!("test definition {wanted} in tar-repo"),
                limit: self.policy.limits.max_testdef_bytes,
                key: "max_testdef_bytes",
            }
            .into());
        }
        let definition = String::from_utf8(bytes.to_vec()).map_err(|_| RepoError::NotText {
            what: format!("{wanted} in tar-repo"),
        })?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain)
            .and_then(|()| gz.finish())
            .map(|compressed| Tree {
                archive: Arc::new(compressed),
                definition,
                label: "tar-repo".to_string(),
            })
            .map_err(|e| RepoError::Archive(e.to_string()))
    }

    /// A cached archive's bytes, within the policy's download limit.
    pub async fn read_archive(&self, path: &Path) -> Result<Vec<u8>, RepoError> {
        let limit = self.policy.limits.max_download_bytes;
        let size = tokio::fs::metadata(path)
            .await
            .map_err(io_error(path))?
            .len();
        if size > limit {
            return Err(FetchError::TooLarge {
                what: format!("the tree of {}", path.display()),
                limit,
                key: "max_download_bytes",
            }
            .into());
        }
        tokio::fs::read(path).await.map_err(io_error(path))
    }

    /// Where git fetches `url` from, as the policy allows it.
    async fn git_remote(&self, url: &Url) -> Result<Remote, RepoError> {
        match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| FetchError::Scheme(url.to_string()))?;
                let policy = self.policy.clone();
                let shown = path.display().to_string();
                let dir = tokio::task::spawn_blocking(move || policy.local_dir(&path))
                    .await
                    .map_err(|e| RepoError::Io {
                        path: shown,
                        source: std::io::Error::other(e.to_string()),
                    })??;
                Ok(Remote {
                    url: format!("file://{}", dir.display()),
                    protocol: "file",
                    config: Vec::new(),
                })
            }
            "git" | "http" | "https" => {
                let protocol = match url.scheme() {
                    "git" => "git",
                    "http" => "http",
                    _ => "https",
                };
                if matches!(self.policy.networks, NetworkAccess::Any) {
                    return Ok(Remote {
                        url: url.to_string(),
                        protocol,
                        config: Vec::new(),
                    });
                }
                let address = resolve_checked(&self.policy, url).await?;
                let mut pinned = url.clone();
                let mut config = vec!["http.followRedirects=false".to_string()];
                if protocol == "git" {
                    // git:// carries no name that matters (no TLS, no virtual hosts in
                    // practice): connect to the checked address itself.
                    let _ = pinned.set_ip_host(address.ip());
                } else {
                    let host = url.host_str().unwrap_or_default();
                    let ip = match address.ip() {
                        IpAddr::V6(v6) => format!("[{v6}]"),
                        IpAddr::V4(v4) => v4.to_string(),
                    };
                    config.push(format!(
                        "http.curloptResolve={host}:{}:{ip}",
                        address.port()
                    ));
                    config.push("http.proxy=".to_string());
                }
                Ok(Remote {
                    url: pinned.to_string(),
                    protocol,
                    config,
                })
            }
            _ => Err(FetchError::Scheme(url.to_string()).into()),
        }
    }
}

/// How git reaches a repository.
struct Remote {
    url: String,
    /// The one protocol git may use for it.
    protocol: &'static str,
    /// `-c` settings.
    config: Vec<String>,
}

impl Remote {
    /// For commands on the mirror alone.
    fn local() -> Self {
        Self {
            url: String::new(),
            protocol: "file",
            config: Vec::new(),
        }
    }
}

/// The first address of `url`'s host, after checking every address it resolves to.
/// What an `lp:` branch reaches: Launchpad's API and its Bazaar hosting.
const LAUNCHPAD_HOSTS: [&str; 2] = ["api.launchpad.net", "bazaar.launchpad.net"];

async fn resolve_checked(policy: &FetchPolicy, url: &Url) -> Result<SocketAddr, RepoError> {
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(match url.scheme() {
        "git" => 9418,
        "bzr" => 4155,
        _ => 80,
    });
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((bare.as_str(), port))
        .await
        .map_err(|e| RepoError::Resolve {
            url: url.to_string(),
            host: host.clone(),
            message: e.to_string(),
        })?
        .collect();
    for address in &resolved {
        policy.check_address(&host, address.ip())?;
    }
    resolved.first().copied().ok_or_else(|| RepoError::Resolve {
        url: url.to_string(),
        host,
        message: "no address".to_string(),
    })
}

/// The commit `revision` names in the mirror, if any.
async fn commit_of(url: &Url, mirror: &Path, revision: &str) -> Option<String> {
    let spec = format!("{revision}^{{commit}}");
    let out = git(
        url,
        mirror,
        &Remote::local(),
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ],
    )
    .await
    .ok()?;
    let commit = String::from_utf8_lossy(&out).trim().to_string();
    (commit.len() == 40).then_some(commit)
}

/// Runs git on `mirror` with no configuration but ours; its standard output.
async fn git(
    url: &Url,
    mirror: &Path,
    remote: &Remote,
    args: &[&str],
) -> Result<Vec<u8>, RepoError> {
    let mut command = tokio::process::Command::new("git");
    command
        .arg("-C")
        .arg(mirror)
        .args(["-c", "protocol.allow=never"])
        .arg("-c")
        .arg(format!("protocol.{}.allow=always", remote.protocol))
        .args(["-c", "core.hooksPath=/dev/null"])
        .args([
            "-c",
            "http.lowSpeedLimit=1000",
            "-c",
            "http.lowSpeedTime=120",
        ]);
    for setting in &remote.config {
        command.arg("-c").arg(setting);
    }
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", mirror)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_PROTOCOL_FROM_USER", "0")
        .env("LC_ALL", "C");
    output(url.as_str(), "git", command, args).await
}

/// Runs `tool` with `args` in `dir`, bounded by [`COMMAND_TIMEOUT`].
async fn run_tool(url: &str, tool: &Path, args: &[&str], dir: &Path) -> Result<Vec<u8>, RepoError> {
    let mut command = tokio::process::Command::new(tool);
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        // Breezy reads no user's identity, keys or log location.
        .env("BRZ_HOME", dir)
        .env("BZR_HOME", dir)
        .env("BRZ_LOG", "/dev/null")
        .env("BZR_LOG", "/dev/null")
        .env("LC_ALL", "C");
    output(url, &tool.display().to_string(), command, args).await
}

async fn output(
    url: &str,
    name: &str,
    mut command: tokio::process::Command,
    args: &[&str],
) -> Result<Vec<u8>, RepoError> {
    let shown = format!("{name} {}", args.first().copied().unwrap_or_default());
    let failed = |message: String| RepoError::Command {
        url: url.to_string(),
        command: shown.clone(),
        message,
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| failed(e.to_string()))?;
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| failed(format!("no answer within {} s", COMMAND_TIMEOUT.as_secs())))?
        .map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(3).collect();
        Err(failed(
            last.into_iter().rev().collect::<Vec<_>>().join("; "),
        ))
    }
}

/// `tool` on PATH, if installed.
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

async fn tempdir_in(parent: &Path) -> Result<PathBuf, RepoError> {
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(io_error(parent))?;
    let dir = parent.join(uuid_like());
    tokio::fs::create_dir(&dir).await.map_err(io_error(&dir))?;
    Ok(dir)
}

/// A name no other fetch in this process or another uses at the same time.
fn uuid_like() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

async fn read_text_bounded(
    path: &Path,
    limit: u64,
    url: &str,
    testdef: &str,
) -> Result<String, RepoError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|_| RepoError::NoDefinition {
            url: url.to_string(),
            path: testdef.to_string(),
            at: String::new(),
        })?;
    if meta.len() > limit {
        return Err(FetchError::TooLarge {
            what: format!("test definition {testdef} in {url}"),
            limit,
            key: "max_testdef_bytes",
        }
        .into());
    }
    let bytes = tokio::fs::read(path).await.map_err(io_error(path))?;
    String::from_utf8(bytes).map_err(|_| RepoError::NotText {
        what: format!("{testdef} in {url}"),
    })
}

/// The contents of the regular file `wanted` in a plain tar, if there.
fn tar_member<'a>(tar: &'a [u8], wanted: &str) -> Result<Option<&'a [u8]>, RepoError> {
    let mut offset = 0usize;
    let mut long_name: Option<String> = None;
    while offset + 512 <= tar.len() {
        let header = &tar[offset..offset + 512];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let field = |range: std::ops::Range<usize>| {
            let bytes = &header[range];
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        };
        let size_text = field(124..136);
        let size = u64::from_str_radix(size_text.trim(), 8)
            .map_err(|_| RepoError::Archive(format!("bad size field at byte {offset}")))?;
        let size = usize::try_from(size)
            .map_err(|_| RepoError::Archive("member too large".to_string()))?;
        let start = offset + 512;
        let end = start
            .checked_add(size)
            .filter(|end| *end <= tar.len())
            .ok_or_else(|| RepoError::Archive("archive cut short".to_string()))?;
        let kind = header[156];
        let name = match long_name.take() {
            Some(name) => name,
            None => {
                let prefix = field(345..500);
                let name = field(0..100);
                if &header[257..262] == b"ustar" && !prefix.is_empty() {
                    format!("{prefix}/{name}")
                } else {
                    name
                }
            }
        };
        match kind {
            // GNU long name: the next member's name is this member's data.
            b'L' => {
                let data = &tar[start..end];
                let len = data.iter().position(|b| *b == 0).unwrap_or(data.len());
                long_name = Some(String::from_utf8_lossy(&data[..len]).into_owned());
            }
            b'0' | 0 if name.trim_start_matches("./") == wanted => {
                return Ok(Some(&tar[start..end]));
            }
            _ => {}
        }
        offset = start + size.div_ceil(512) * 512;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::FetchLimits;

    fn sh(dir: &Path, script: &str) {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .unwrap();
        assert!(status.success(), "{script}");
    }

    /// A repository with two commits on `main` and a tag at the first.
    fn repository(dir: &Path) -> PathBuf {
        let repo = dir.join("tests.git");
        std::fs::create_dir_all(&repo).unwrap();
        sh(
            &repo,
            "git init -q -b main . && git config user.email t@t && git config user.name t \
             && mkdir -p defs scripts && printf 'metadata: {name: one}\\nrun: {steps: [./scripts/a.sh]}\\n' > defs/one.yaml \
             && printf 'echo first\\n' > scripts/a.sh && git add -A && git commit -q -m one && git tag v1 \
             && printf 'echo second\\n' > scripts/a.sh && git commit -q -am two",
        );
        repo
    }

    fn list(archive: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.tar.gz"), archive).unwrap();
        let out = std::process::Command::new("tar")
            .args(["-xzf", "t.tar.gz", "-O", "--wildcards", "*scripts/a.sh"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn policy(roots: &[PathBuf]) -> Arc<FetchPolicy> {
        Arc::new(FetchPolicy::restricted(
            roots,
            &[],
            Vec::new(),
            FetchLimits::default(),
        ))
    }

    /// A cache in `dir/cache` whose lab's file root is `dir`.
    fn cache_in(dir: &Path) -> RepoCache {
        RepoCache::new(dir.join("cache"), policy(&[dir.to_path_buf()]))
    }

    #[tokio::test]
    async fn a_git_tree_at_a_branch_a_tag_and_a_commit_with_its_definition() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let url = Url::from_directory_path(&repo).unwrap();
        let cache = cache_in(dir.path());
        let head = cache.git(&url, None, "defs/one.yaml").await.unwrap();
        assert!(head.definition.contains("name: one"), "{}", head.definition);
        assert_eq!(list(&head.archive), "echo second\n");
        let tagged = cache.git(&url, Some("v1"), "defs/one.yaml").await.unwrap();
        assert_eq!(list(&tagged.archive), "echo first\n");
        let main = cache.git_tree(&url, Some("main")).await.unwrap();
        let v1 = cache.git_tree(&url, Some("v1")).await.unwrap();
        assert_ne!(main.commit, v1.commit);
        // A commit id in the mirror is served without the repository: remove it.
        std::fs::remove_dir_all(&repo).unwrap();
        let again = cache.git_tree(&url, Some(&v1.commit)).await.unwrap();
        assert_eq!(again.archive, v1.archive);
        // A branch is asked of the repository again, which is gone now.
        assert!(matches!(
            cache.git_tree(&url, Some("main")).await,
            Err(RepoError::Refused(FetchError::Missing { .. }))
        ));
    }

    #[tokio::test]
    async fn missing_revisions_definitions_and_refused_places_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let url = Url::from_directory_path(&repo).unwrap();
        let cache = cache_in(dir.path());
        let err = cache
            .git(&url, Some("no-such-branch"), "defs/one.yaml")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("revision \"no-such-branch\" not found"),
            "{err}"
        );
        let err = cache.git(&url, None, "lavatest.yaml").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("no test definition at \"lavatest.yaml\""),
            "{err}"
        );
        // A directory, not a file, is no definition either.
        assert!(cache.git(&url, None, "defs").await.is_err());
        // Outside the lab's roots.
        let elsewhere = RepoCache::new(dir.path().join("cache2"), policy(&[dir.path().join("x")]));
        assert!(matches!(
            elsewhere.git(&url, None, "defs/one.yaml").await,
            Err(RepoError::Refused(FetchError::OutsideRoots { .. }))
        ));
        // Loopback under a daemon's policy, before any connection.
        let local = Url::parse("git://127.0.0.1:1/x.git").unwrap();
        assert!(matches!(
            cache.git(&local, None, "lavatest.yaml").await,
            Err(RepoError::Refused(FetchError::Address { .. }))
        ));
        let named = Url::parse("http://localhost:1/x.git").unwrap();
        assert!(matches!(
            cache.git(&named, None, "lavatest.yaml").await,
            Err(RepoError::Refused(FetchError::Address { .. }))
        ));
    }

    /// A static HTTP server of `dir` on loopback (git's "dumb" HTTP protocol needs
    /// nothing more): GET only, one thread per connection, until the test ends.
    fn serve_files(dir: PathBuf) -> u16 {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(&stream);
                    let mut request = String::new();
                    reader.read_line(&mut request).unwrap_or_default();
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let path = request.split(' ').nth(1).unwrap_or("/");
                    let path = path.split('?').next().unwrap_or("/");
                    let body = if path.contains("..") {
                        None
                    } else {
                        std::fs::read(dir.join(path.trim_start_matches('/'))).ok()
                    };
                    let mut out = &stream;
                    let _ = match body {
                        Some(body) => out
                            .write_all(
                                format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                    body.len()
                                )
                                .as_bytes(),
                            )
                            .and_then(|()| out.write_all(&body)),
                        None => out.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        ),
                    };
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn http_fetches_connect_to_the_checked_address_only() {
        let dir = tempfile::tempdir().unwrap();
        repository(dir.path());
        let served = dir.path().join("served");
        std::fs::create_dir_all(&served).unwrap();
        sh(
            dir.path(),
            "git clone -q --bare tests.git served/tests.git && git -C served/tests.git update-server-info",
        );
        let port = serve_files(served);
        let url = Url::parse(&format!("http://127.0.0.1:{port}/tests.git")).unwrap();
        // A lab that allows its loopback mirror: the pinned path (checked address,
        // curl's resolve, no redirects, no proxy) fetches.
        let lab = Arc::new(FetchPolicy::restricted(
            &[],
            &[],
            vec!["127.0.0.0/8".parse().unwrap()],
            FetchLimits::default(),
        ));
        let cache = RepoCache::new(dir.path().join("cache"), lab);
        let tree = cache
            .git(&url, Some("main"), "defs/one.yaml")
            .await
            .unwrap();
        assert_eq!(list(&tree.archive), "echo second\n");
        // The same URL under a lab that does not allow loopback.
        let strict = RepoCache::new(dir.path().join("cache2"), policy(&[]));
        assert!(matches!(
            strict.git(&url, Some("main"), "defs/one.yaml").await,
            Err(RepoError::Refused(FetchError::Address { .. }))
        ));
    }

    #[test]
    fn a_tar_repo_gives_its_definition_and_the_whole_tree() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        sh(
            &repo,
            "tar -cf ../plain.tar defs scripts && tar -czf ../packed.tar.gz ./defs ./scripts",
        );
        let cache = RepoCache::new(dir.path().join("cache"), policy(&[]));
        for name in ["plain.tar", "packed.tar.gz"] {
            let bytes = std::fs::read(dir.path().join(name)).unwrap();
            let tree = cache.tar(&bytes, "defs/one.yaml").unwrap();
            assert!(tree.definition.contains("name: one"), "{name}");
            assert_eq!(list(&tree.archive), "echo second\n", "{name}");
            assert!(matches!(
                cache.tar(&bytes, "lavatest.yaml"),
                Err(RepoError::NoDefinition { .. })
            ));
        }
        assert!(matches!(
            cache.tar(b"\x1f\x8bnot gzip", "x"),
            Err(RepoError::Archive(_))
        ));
    }

    #[tokio::test]
    async fn a_bazaar_branch_at_a_revision_through_breezy() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().display().to_string();
        sh(
            dir.path(),
            &format!(
                "export HOME='{home}' BRZ_LOG=/dev/null && brz init -q src && cd src \
                 && mkdir -p defs scripts \
                 && printf 'metadata: {{name: one}}\\nrun: {{steps: [./scripts/a.sh]}}\\n' > defs/one.yaml \
                 && printf 'echo first\\n' > scripts/a.sh && brz whoami 't <t@t>' && brz add -q \
                 && brz commit -q -m one && printf 'echo second\\n' > scripts/a.sh \
                 && brz commit -q -m two"
            ),
        );
        let url = Url::from_directory_path(dir.path().join("src")).unwrap();
        let cache = cache_in(dir.path());
        let first = cache
            .bzr(url.as_str(), Some("1"), "defs/one.yaml")
            .await
            .unwrap();
        assert!(
            first.definition.contains("name: one"),
            "{}",
            first.definition
        );
        assert_eq!(list(&first.archive), "echo first\n");
        let last = cache
            .bzr(url.as_str(), None, "defs/one.yaml")
            .await
            .unwrap();
        assert_eq!(list(&last.archive), "echo second\n");
        assert!(matches!(
            cache.bzr(url.as_str(), None, "lavatest.yaml").await,
            Err(RepoError::NoDefinition { .. })
        ));
        // Outside the lab's roots.
        let elsewhere = RepoCache::new(dir.path().join("c2"), policy(&[dir.path().join("x")]));
        assert!(matches!(
            elsewhere.bzr(url.as_str(), None, "defs/one.yaml").await,
            Err(RepoError::Refused(FetchError::OutsideRoots { .. }))
        ));
    }

    #[tokio::test]
    async fn bzr_takes_only_urls_the_policy_can_check() {
        let cache = RepoCache::new(std::env::temp_dir(), policy(&[]));
        // A path of this machine, a URL that would use its SSH keys, an option.
        for url in [
            "/var/lib/secret-branch",
            "bzr+ssh://example.org/b",
            "-Oexec=x",
        ] {
            let err = cache
                .bzr_with(Some(PathBuf::from("/nonexistent/brz")), url, None, None)
                .await
                .unwrap_err();
            assert!(
                matches!(err, RepoError::Refused(FetchError::Scheme(_))),
                "{url}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn bzr_without_breezy_names_the_missing_tool() {
        let cache = RepoCache::new(std::env::temp_dir(), policy(&[]));
        let err = cache
            .bzr_with(None, "lp:foo", None, Some("lavatest.yaml"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("needs `brz`"), "{err}");
    }
}
