//! Shared helpers for the system tests in `tests/tests/`: where the shipped corpora
//! live, the project's binaries, and real processes (a standalone coordinator, test
//! shells running the node agent) that are always cleaned up.
//!
//! Nothing here fakes a component: tests use the real binaries over real sockets.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// `tests/jobs/`, the corpus of valid and invalid jobs.
pub fn jobs_dir() -> PathBuf {
    repo_root().join("tests").join("jobs")
}

/// `device-types/`, the device types and example devices shipped with the product.
pub fn device_types_dir() -> PathBuf {
    repo_root().join("device-types")
}

/// The path of one of the workspace's binaries (`coordinator`, `node-agent`,
/// `dispatcher`). `cargo test --workspace` builds them, with the same features as the
/// tests, because each of those packages has integration tests of its own.
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| repo_root().join("target"), PathBuf::from);
    let path = target.join("debug").join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo test --workspace` (or `cargo build --bins`) first",
        path.display()
    );
    path
}

/// A directory with the node agent installed as `lava-*` links, to put first in PATH.
pub fn lava_bin_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let status = Command::new(binary("node-agent"))
            .arg("install")
            .arg(dir.path())
            .status()
            .unwrap_or_else(|e| panic!("node-agent install: {e}"));
        assert!(status.success(), "node-agent install failed");
        dir
    })
    .path()
}

/// PATH with the `lava-*` commands first.
pub fn path_with_lava() -> String {
    format!(
        "{}:{}",
        lava_bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The standalone coordinator binary, running on loopback ports it picked itself.
/// Killed when dropped.
pub struct CoordinatorProcess {
    child: Child,
    pub grpc: String,
    pub legacy_port: u16,
    pub admin_token: String,
    _dir: tempfile::TempDir,
}

impl CoordinatorProcess {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let admin_token = "system-test-admin-token-0123456789".to_string();
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, &admin_token).unwrap_or_else(|e| panic!("write token: {e}"));
        let mut child = Command::new(binary("coordinator"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--legacy-listen",
                "127.0.0.1:0",
                "--admin-token-file",
            ])
            .arg(&token_file)
            .env("COORDINATOR_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start coordinator: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("read coordinator banner: {e}"));
        // "listening grpc=127.0.0.1:PORT legacy=127.0.0.1:PORT"
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in banner {line:?}"))
                .to_string()
        };
        let grpc = format!("http://{}", field("grpc="));
        let legacy_port = field("legacy=")
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad banner {line:?}"));
        Self {
            child,
            grpc,
            legacy_port,
            admin_token,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything a test shell of one node needs in its environment.
#[derive(Debug, Clone)]
pub struct NodeEnv {
    pub coordinator: String,
    pub group_id: String,
    pub node_id: String,
    pub role: String,
    pub token: String,
    pub cache: PathBuf,
}

impl NodeEnv {
    /// `sh -c script` as this node (gRPC transport), in its own process group so a test
    /// can kill it and all its children.
    pub fn shell(&self, script: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .env("PATH", path_with_lava())
            .env("LAVA_COORDINATOR", &self.coordinator)
            .env("LAVA_GROUP_ID", &self.group_id)
            .env("LAVA_NODE_ID", &self.node_id)
            .env("LAVA_NODE_ROLE", &self.role)
            .env("LAVA_NODE_TOKEN", &self.token)
            .env("LAVA_MULTI_NODE_CACHE", &self.cache)
            .env("LAVA_MULTINODE_TIMEOUT", "300")
            .stdin(Stdio::null())
            .process_group(0);
        command
    }
}

/// Kills a process group (a node and everything it started) and reaps its leader.
pub fn kill_group(child: &mut Child) {
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}
