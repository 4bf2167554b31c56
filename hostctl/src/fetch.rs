//! What a job may make the dispatcher read: the one policy every fetch of a job's
//! images and test definitions goes through.
//!
//! A job is written by someone who does not own the dispatcher machine, so its URLs are
//! untrusted: `file://` reaches only files under the lab's configured roots (symlinks
//! resolved first, regular files only, the dispatcher's own secrets never), `http(s)://`
//! reaches only public addresses unless the lab allows a network (checked on the
//! addresses a name resolves to, so DNS cannot smuggle in `127.0.0.1`, and again on every
//! redirect), and every body is bounded: downloads, decompressed images and test
//! definitions each have a size limit, counted as the bytes arrive, never trusted from a
//! header.
//!
//! `dispatcher run` is a local user's own command, so it gets [`FetchPolicy::local`]:
//! any file the user can read, any network.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use url::Url;

/// Where `file://` URLs may point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileAccess {
    /// Any file the dispatcher can read (`dispatcher run`).
    Anywhere,
    /// Only regular files under `roots` (canonical), never under `denied`. No roots:
    /// no `file://` at all.
    Under {
        roots: Vec<PathBuf>,
        denied: Vec<PathBuf>,
        /// The roots as configured, for the check before any I/O (a job names
        /// `/srv/lava/images/a.img` even when `/srv` is a symlink).
        named: Vec<PathBuf>,
    },
}

/// Which addresses `http(s)://` URLs may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkAccess {
    /// Any address (`dispatcher run`).
    Any,
    /// Public addresses, and those in `allowed` (a lab's own mirrors).
    Public { allowed: Vec<IpNet> },
}

/// Size limits of fetched content, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// One downloaded file (image or compressed image).
    pub max_download_bytes: u64,
    /// One decompressed image.
    pub max_unpacked_bytes: u64,
    /// One test definition (YAML).
    pub max_testdef_bytes: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            max_download_bytes: 32 << 30,
            max_unpacked_bytes: 64 << 30,
            max_testdef_bytes: 1 << 20,
        }
    }
}

/// The whole policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    pub files: FileAccess,
    pub networks: NetworkAccess,
    pub limits: FetchLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{path}: {message}")]
    Missing { path: String, message: String },
    #[error("file:// URLs are not allowed in this lab (it has no file_roots)")]
    NoFileRoots,
    #[error("{path} is outside the lab's file roots ({roots})")]
    OutsideRoots { path: String, roots: String },
    #[error("{path} is one of the dispatcher's own files")]
    Denied { path: String },
    #[error("{path} is not a regular file")]
    NotAFile { path: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    #[error("{what} is larger than the lab's limit of {limit} bytes ({key})")]
    TooLarge {
        what: String,
        limit: u64,
        key: &'static str,
    },
    #[error("{host} is not reachable from this lab: {address} is a {kind} address")]
    Address {
        host: String,
        address: IpAddr,
        kind: &'static str,
    },
    #[error("unsupported URL {0} (expected file://, http:// or https://)")]
    Scheme(String),
}

impl FetchPolicy {
    /// A local user's own command: anything the user could read anyway.
    pub fn local() -> Self {
        Self {
            files: FileAccess::Anywhere,
            networks: NetworkAccess::Any,
            limits: FetchLimits::default(),
        }
    }

    /// A shared daemon's: `file://` only under `roots` (none: no `file://`), never
    /// under `denied`; public networks and `allowed` ones. Paths are made canonical here
    /// so a symlinked root compares equal to what a file resolves to.
    pub fn restricted(
        roots: &[PathBuf],
        denied: &[PathBuf],
        allowed: Vec<IpNet>,
        limits: FetchLimits,
    ) -> Self {
        let canonical = |paths: &[PathBuf]| -> Vec<PathBuf> {
            paths
                .iter()
                .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
                .collect()
        };
        Self {
            files: FileAccess::Under {
                roots: canonical(roots),
                denied: canonical(denied),
                named: roots.to_vec(),
            },
            networks: NetworkAccess::Public { allowed },
            limits,
        }
    }

    /// The roots job validation checks `file://` paths against, before any I/O.
    pub fn lexical_roots(&self) -> Vec<PathBuf> {
        match &self.files {
            FileAccess::Anywhere => vec![PathBuf::from("/")],
            FileAccess::Under { roots, named, .. } => {
                let mut all = named.clone();
                all.extend(roots.iter().filter(|r| !named.contains(r)).cloned());
                all
            }
        }
    }

    /// The file a `file://` path may be read as: symlinks resolved, under a root, not
    /// denied, a regular file. Callers use the returned path, not the one they had.
    pub fn local_file(&self, path: &Path) -> Result<PathBuf, FetchError> {
        self.local_entry(path, false)
    }

    /// The directory a `file://` repository may be read from: as [`Self::local_file`],
    /// but a directory (a git repository, a Bazaar branch).
    pub fn local_dir(&self, path: &Path) -> Result<PathBuf, FetchError> {
        self.local_entry(path, true)
    }

    fn local_entry(&self, path: &Path, directory: bool) -> Result<PathBuf, FetchError> {
        let shown = path.display().to_string();
        let canonical = self.under_roots(path)?;
        let meta = std::fs::metadata(&canonical).map_err(|e| FetchError::Missing {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        match (directory, meta.is_dir(), meta.is_file()) {
            (true, true, _) | (false, _, true) => Ok(canonical),
            (true, ..) => Err(FetchError::NotADirectory { path: shown }),
            (false, ..) => Err(FetchError::NotAFile { path: shown }),
        }
    }

    /// `path` with symlinks resolved, under a root and not denied.
    fn under_roots(&self, path: &Path) -> Result<PathBuf, FetchError> {
        let shown = path.display().to_string();
        if let FileAccess::Under { roots, .. } = &self.files
            && roots.is_empty()
        {
            return Err(FetchError::NoFileRoots);
        }
        let canonical = std::fs::canonicalize(path).map_err(|e| FetchError::Missing {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        if let FileAccess::Under { roots, denied, .. } = &self.files {
            if !roots.iter().any(|root| canonical.starts_with(root)) {
                return Err(FetchError::OutsideRoots {
                    path: shown,
                    roots: roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            if denied.iter().any(|d| canonical.starts_with(d)) {
                return Err(FetchError::Denied { path: shown });
            }
        }
        Ok(canonical)
    }

    /// Whether `address` may be connected to, and if not, what kind of address it is.
    pub fn check_address(&self, host: &str, address: IpAddr) -> Result<(), FetchError> {
        let NetworkAccess::Public { allowed } = &self.networks else {
            return Ok(());
        };
        if allowed.iter().any(|net| net.contains(&address)) {
            return Ok(());
        }
        match non_public_kind(address) {
            None => Ok(()),
            Some(kind) => Err(FetchError::Address {
                host: host.to_string(),
                address,
                kind,
            }),
        }
    }

    /// Checks a URL's scheme, and its host when the host is an address or `localhost`
    /// (other names are checked on what they resolve to when fetched, by
    /// [`GuardedResolver`]: no DNS at submission).
    pub fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        match url.scheme() {
            "http" | "https" => {}
            _ => return Err(FetchError::Scheme(url.to_string())),
        }
        let address = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            // RFC 6761: `localhost` and its subdomains are loopback, whatever a
            // resolver says; refused without asking one.
            Some(url::Host::Domain(name))
                if name.eq_ignore_ascii_case("localhost")
                    || name.to_ascii_lowercase().ends_with(".localhost") =>
            {
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            _ => return Ok(()),
        };
        self.check_address(url.host_str().unwrap_or_default(), address)
    }

    /// An HTTP client that connects only where this policy allows: names resolved
    /// through [`GuardedResolver`], every redirect re-checked, no proxy from the
    /// environment under a restricted policy, and bounded waits for a connection and
    /// for each read.
    pub fn http_client(self: &Arc<Self>) -> Result<reqwest::Client, reqwest::Error> {
        self.client(true)
    }

    /// [`FetchPolicy::http_client`] that follows no redirect: for requests made on a
    /// job's behalf with a body and headers of its own (callbacks), which a redirect
    /// would carry to another host.
    pub fn http_client_no_redirects(self: &Arc<Self>) -> Result<reqwest::Client, reqwest::Error> {
        self.client(false)
    }

    fn client(self: &Arc<Self>, follow: bool) -> Result<reqwest::Client, reqwest::Error> {
        // reqwest is built without a default TLS provider; ring is the one the rest of
        // the dispatcher uses. Installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = self.clone();
        let restricted = matches!(self.networks, NetworkAccess::Public { .. });
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if !follow {
                return attempt.stop();
            }
            if attempt.previous().len() >= 10 {
                return attempt.error("more than 10 redirects");
            }
            match policy.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(err) => attempt.error(err),
            }
        });
        let builder = reqwest::Client::builder()
            .user_agent(concat!("lava-dispatcher/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver {
                policy: self.clone(),
            }))
            .redirect(redirects)
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(std::time::Duration::from_secs(120));
        // A proxy fetches on the job's behalf from wherever it sits, past the address
        // checks: a restricted policy uses none; a local user's command keeps the
        // environment's (HTTP_PROXY and friends).
        let builder = if restricted {
            builder.no_proxy()
        } else {
            builder
        };
        builder.build()
    }
}

/// `None` for a public address; otherwise what kind of address it is, for the error.
fn non_public_kind(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if v4.is_broadcast() || v4.is_multicast() {
                Some("broadcast or multicast")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (carrier-grade NAT)")
            } else if a >= 240 {
                Some("reserved")
            } else if (a, b, c) == (192, 0, 0) || (a == 198 && (b & 0xfe) == 18) {
                Some("special-purpose")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            // IPv4 carried inside IPv6 (mapped, NAT64 64:ff9b::/96, 6to4 2002::/16)
            // reaches that IPv4 address: judge it.
            let embedded = if let Some(v4) = v6.to_ipv4_mapped() {
                Some(v4)
            } else if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                Some(std::net::Ipv4Addr::from(
                    (u32::from(segments[6]) << 16) | u32::from(segments[7]),
                ))
            } else if segments[0] == 0x2002 {
                Some(std::net::Ipv4Addr::from(
                    (u32::from(segments[1]) << 16) | u32::from(segments[2]),
                ))
            } else {
                None
            };
            if let Some(v4) = embedded {
                non_public_kind(IpAddr::V4(v4))
            } else if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_unique_local() {
                Some("private")
            } else if v6.is_unicast_link_local() {
                Some("link-local")
            } else if segments[0] & 0xffc0 == 0xfec0 {
                Some("site-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

/// Name resolution that drops the addresses the policy refuses, so a name that resolves
/// to `127.0.0.1` (or is made to, between a check and the connection) is never
/// connected to: reqwest connects only to the addresses this returns.
struct GuardedResolver {
    policy: Arc<FetchPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.check_address(&host, addr.ip()) {
                    Ok(()) => true,
                    Err(err) => {
                        refused = Some(err);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(err)) => Err(Box::new(err) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(roots: &[PathBuf], denied: &[PathBuf]) -> FetchPolicy {
        FetchPolicy::restricted(roots, denied, Vec::new(), FetchLimits::default())
    }

    #[test]
    fn files_only_under_roots_after_symlinks_and_never_the_denied_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        let secret = dir.path().join("state");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(root.join("disk.img"), b"x").unwrap();
        std::fs::write(secret.join("key"), b"k").unwrap();
        std::os::unix::fs::symlink(secret.join("key"), root.join("link.img")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero.img")).unwrap();
        std::fs::create_dir(root.join("dir.img")).unwrap();

        let policy = daemon(std::slice::from_ref(&root), &[]);
        assert!(policy.local_file(&root.join("disk.img")).is_ok());
        assert!(matches!(
            policy.local_file(&root.join("link.img")),
            Err(FetchError::OutsideRoots { .. })
        ));
        assert!(matches!(
            policy.local_file(Path::new("/etc/shadow")),
            Err(FetchError::OutsideRoots { .. })
        ));
        assert!(matches!(
            policy.local_file(&root.join("missing.img")),
            Err(FetchError::Missing { .. })
        ));
        assert!(matches!(
            policy.local_file(&root.join("dir.img")),
            Err(FetchError::NotAFile { .. })
        ));
        // A root that holds the dispatcher's own files still hides them.
        let wide = daemon(&[dir.path().to_path_buf()], std::slice::from_ref(&secret));
        assert!(matches!(
            wide.local_file(&secret.join("key")),
            Err(FetchError::Denied { .. })
        ));
        assert!(matches!(
            wide.local_file(&root.join("link.img")),
            Err(FetchError::Denied { .. })
        ));
        // /dev/zero is not a regular file, even where everything is allowed.
        assert!(matches!(
            FetchPolicy::local().local_file(Path::new("/dev/zero")),
            Err(FetchError::NotAFile { .. })
        ));
        assert_eq!(
            daemon(&[], &[]).local_file(&root.join("disk.img")),
            Err(FetchError::NoFileRoots)
        );
        // A root configured through a symlink: jobs may name it as configured, and
        // the check after resolving still passes.
        let linked_root = dir.path().join("lab-images");
        std::os::unix::fs::symlink(&root, &linked_root).unwrap();
        let linked = daemon(std::slice::from_ref(&linked_root), &[]);
        let lexical = linked.lexical_roots();
        assert!(lexical.contains(&linked_root), "{lexical:?}");
        assert!(
            lexical.contains(&std::fs::canonicalize(&root).unwrap()),
            "{lexical:?}"
        );
        assert!(linked.local_file(&linked_root.join("disk.img")).is_ok());
    }

    #[test]
    fn only_public_addresses_unless_the_lab_allows_a_network() {
        let policy = daemon(&[], &[]);
        for (address, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.0.2.2", "private"),
            ("192.168.1.5", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fd00::1", "private"),
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:a00:1::1", "private"),
            ("198.18.0.1", "special-purpose"),
            ("240.0.0.1", "reserved"),
        ] {
            let ip: IpAddr = address.parse().unwrap();
            match policy.check_address("h", ip) {
                Err(FetchError::Address { kind: found, .. }) => assert_eq!(found, kind),
                other => panic!("{address}: {other:?}"),
            }
        }
        assert!(
            policy
                .check_address("h", "93.184.216.34".parse().unwrap())
                .is_ok()
        );
        assert!(
            policy
                .check_address("h", "2606:4700::1".parse().unwrap())
                .is_ok()
        );
        let lab = FetchPolicy::restricted(
            &[],
            &[],
            vec!["127.0.0.0/8".parse().unwrap()],
            FetchLimits::default(),
        );
        assert!(lab.check_address("h", "127.0.0.1".parse().unwrap()).is_ok());
        assert!(lab.check_address("h", "10.0.0.1".parse().unwrap()).is_err());
        assert!(
            FetchPolicy::local()
                .check_address("h", "127.0.0.1".parse().unwrap())
                .is_ok()
        );
        let url = Url::parse("http://127.0.0.1:8079/metrics").unwrap();
        assert!(policy.check_url(&url).is_err());
        let url = Url::parse("http://[::1]/x").unwrap();
        assert!(policy.check_url(&url).is_err());
        let url = Url::parse("ftp://example.org/x").unwrap();
        assert!(matches!(policy.check_url(&url), Err(FetchError::Scheme(_))));
    }
}
