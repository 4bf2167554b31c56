//! The harness of the system tests in `tests/tests/` and of the benchmarks in `bench/`:
//! where the shipped corpora live, the project's binaries, and real processes (a
//! standalone coordinator, test shells running the node agent, sshd as an `ssh-host`
//! device, `dispatcher serve`) that are always cleaned up.
//!
//! - [`Daemon`]: the one way to start `dispatcher serve` (and [`create_token`] for it);
//! - [`ApiClient`]: the one client of its HTTP API (on `reqwest`, with a token);
//!   [`http`] is the raw HTTP/1.1 request for probes below what a client would send;
//! - [`SshLab`]: a lab of `ssh-host` devices and the daemon's configuration for it;
//! - [`chromium`]: the daemon's web page in headless Chromium;
//! - [`run_in_terminal`]: a command in a tmux pane, as a person runs the CLI;
//! - [`e2e_job`]: the jobs of `tests/jobs/e2e/` (the seed job, [`SEED_JOB`]) with this
//!   machine's test images filled in.
//!
//! Nothing here fakes a component: tests use the real binaries over real sockets.

mod api;
mod browser;
mod git_daemon;
mod postgres;
mod ssh_lab;
mod terminal;
mod worker_lab;

pub use api::ApiClient;
pub use browser::Browser;
pub use git_daemon::GitDaemon;
pub use postgres::PgCluster;
pub use ssh_lab::{SshLab, TEST_MAX_JOB_BYTES};
pub use terminal::{TerminalRun, run_in_terminal, strip_escapes};
pub use worker_lab::{Database, WorkerLab};

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

/// The seed job of `tests/jobs/e2e/`: a host and two VMs ([`e2e_job`] fills it in).
pub const SEED_JOB: &str = "seed-vm-group.json";

/// Where the steps of the seed job's host test shell are (a JSON pointer).
pub const SEED_HOST_STEPS: &str = "/actions/2/parameters/testdef_repos/0/inline/run/steps";

/// A single-device job on `device_type` whose one inline test shell runs `steps`.
pub fn shell_job(name: &str, device_type: &str, steps: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "job_name": name,
        "device_type": device_type,
        "timeout": 300,
        "actions": [{
            "command": "lava_test_shell",
            "parameters": {"testdef_repos": [{"inline": {
                "metadata": {"name": "health", "format": "Lava-Test Test Definition 1.0"},
                "run": {"steps": steps}
            }}]}
        }]
    })
}

/// The job `name` of `tests/jobs/e2e/` with this machine's test images filled in
/// (`@GUEST_KERNEL@`, `@GUEST_INITRD@`, `@GUEST_DISK@`) and its host a device of
/// `host_type` (`@HOST_TYPE@`, in the jobs that have one).
pub fn e2e_job(name: &str, host_type: &str) -> String {
    let images = test_images();
    let path = jobs_dir().join("e2e").join(name);
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for arch in ["arm64", "armhf"] {
        let tag = format!("@{}_", arch.to_uppercase());
        if text.contains(&tag) {
            let arm = arm_images(arch);
            text = text
                .replace(&format!("{tag}KERNEL@"), &arm.kernel.display().to_string())
                .replace(
                    &format!("{tag}INITRD@"),
                    &arm.initramfs.display().to_string(),
                )
                .replace(&format!("{tag}PASSWORD@"), &arm.password);
        }
    }
    if text.contains("@DEBIAN_") {
        let debian = debian_image();
        text = text
            .replace("@DEBIAN_DISK@", &debian.disk.display().to_string())
            .replace("@DEBIAN_PASSWORD@", &debian.password);
    }
    text.replace("@GUEST_KERNEL@", &images.guest_kernel.display().to_string())
        .replace(
            "@GUEST_INITRD@",
            &images.guest_initramfs.display().to_string(),
        )
        .replace(
            "@GUEST_LOGIN_INITRD@",
            &images.guest_login_initramfs.display().to_string(),
        )
        .replace("@GUEST_PASSWORD@", &images.guest_password)
        .replace("@GUEST_DISK@", &images.guest_disk.display().to_string())
        .replace(
            "@GUEST_ROOTFS_TAR@",
            &images.guest_rootfs_tar.display().to_string(),
        )
        .replace(
            "@HOSTDEV_KERNEL@",
            &images.hostdev_kernel.display().to_string(),
        )
        .replace(
            "@HOSTDEV_ROOTFS_TAR@",
            &images.hostdev_rootfs_tar.display().to_string(),
        )
        .replace("@HOST_TYPE@", host_type)
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

/// The static node agent (`scripts/build-node-agent-static.sh`), built once per test
/// binary; what the dispatcher installs on hosts and the guest image carries.
pub fn static_node_agent() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let out = Command::new("bash")
                .arg(repo_root().join("scripts/build-node-agent-static.sh"))
                .output()
                .unwrap_or_else(|e| panic!("build-node-agent-static.sh: {e}"));
            assert!(
                out.status.success(),
                "build-node-agent-static.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
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
    /// The file holding `admin_token`, for a dispatcher configured to use this
    /// coordinator.
    pub token_file: PathBuf,
    /// Its `--state-dir`, when it keeps groups on disk.
    pub state_dir: Option<PathBuf>,
    /// More arguments it runs with.
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl CoordinatorProcess {
    /// A coordinator that keeps groups in memory.
    pub fn start() -> Self {
        Self::start_with(false, &[])
    }

    /// A coordinator that keeps groups in a state directory, so it can be restarted.
    pub fn start_keeping_state() -> Self {
        Self::start_with(true, &[])
    }

    /// A coordinator (keeping its groups on disk or not) run with more arguments.
    pub fn start_with(keep_state: bool, args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let admin_token = "system-test-admin-token-0123456789".to_string();
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, &admin_token).unwrap_or_else(|e| panic!("write token: {e}"));
        let state_dir = keep_state.then(|| dir.path().join("state"));
        let (child, grpc, legacy) = Self::spawn(
            &token_file,
            state_dir.as_deref(),
            &args,
            "127.0.0.1:0",
            "127.0.0.1:0",
        );
        let legacy_port = legacy
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad legacy address {legacy:?}"));
        Self {
            child,
            grpc: format!("http://{grpc}"),
            legacy_port,
            admin_token,
            token_file,
            state_dir,
            args,
            _dir: dir,
        }
    }

    /// Starts the binary; returns it with its gRPC and legacy addresses from its banner.
    fn spawn(
        token_file: &Path,
        state_dir: Option<&Path>,
        args: &[String],
        grpc: &str,
        legacy: &str,
    ) -> (Child, String, String) {
        let mut command = Command::new(binary("coordinator"));
        command
            .args([
                "--listen",
                grpc,
                "--legacy-listen",
                legacy,
                "--admin-token-file",
            ])
            .arg(token_file)
            .args(args)
            .env("COORDINATOR_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(dir) = state_dir {
            command.arg("--state-dir").arg(dir);
        }
        let mut child = command
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
        (child, field("grpc="), field("legacy="))
    }

    /// Kills the coordinator with SIGKILL (no chance to save anything) and starts it
    /// again on the same addresses and state directory; returns once it serves.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    /// Kills the coordinator with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the (killed) coordinator again on the same addresses and state
    /// directory; returns once it serves.
    pub fn restart(&mut self) {
        let grpc = self.grpc.trim_start_matches("http://").to_string();
        let legacy = format!("127.0.0.1:{}", self.legacy_port);
        let (child, _, _) = Self::spawn(
            &self.token_file,
            self.state_dir.as_deref(),
            &self.args,
            &grpc,
            &legacy,
        );
        self.child = child;
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

/// Runs `command` to its end and fails the test unless it succeeded (its stderr in the
/// message); its output.
pub fn succeeded(command: &mut Command) -> std::process::Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert_success(out, format_args!("{command:?}"))
}

/// Fails the test unless `out` is a success, saying `what` and its stderr; `out`.
fn assert_success(out: std::process::Output, what: std::fmt::Arguments) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Makes an ed25519 key pair with no passphrase at `path` (and `path.pub`), with the
/// real `ssh-keygen`.
pub fn ssh_keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap_or_else(|e| panic!("ssh-keygen: {e}"));
    assert!(status.success(), "ssh-keygen -f {} failed", path.display());
}

/// A real OpenSSH server in a network namespace of its own: an `ssh-host` device as a
/// lab would have one, with its own address and host key. Everything it started (VMs
/// included) is killed, and the namespace removed, when dropped.
pub struct SshHost {
    pub address: String,
    pub port: u16,
    /// The host key's fingerprint, `SHA256:...`.
    pub fingerprint: String,
    /// The client key that may log in as root.
    pub identity: PathBuf,
    pub netns: String,
    veth: String,
    sshd: Child,
    _dir: tempfile::TempDir,
}

impl SshHost {
    /// How the dispatcher reaches this host as root, checking its key by `host_key`.
    pub fn target(
        &self,
        host_key: lab::device::HostKeyPolicy,
        known_hosts: PathBuf,
    ) -> hostctl::ssh::SshTarget {
        hostctl::ssh::SshTarget {
            host: self.address.clone(),
            port: self.port,
            user: "root".into(),
            identity: self.identity.clone(),
            host_key,
            known_hosts,
        }
    }

    /// [`SshHost::target`] with the host's key pinned by its fingerprint.
    pub fn pinned_target(&self, known_hosts: PathBuf) -> hostctl::ssh::SshTarget {
        self.target(
            lab::device::HostKeyPolicy::Fingerprint(self.fingerprint.clone()),
            known_hosts,
        )
    }

    /// Starts sshd accepting `authorized_key` (a public key file), or a fresh key made
    /// here when `None` (then [`SshHost::identity`] is its private half).
    pub fn start(authorized_key: Option<(&Path, &Path)>) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // A /24 of its own per host, from the pid and a counter: tests may run at once.
        // One this machine has already (a host a killed test process left) is passed
        // over: its routes would lead to that host's sshd.
        let taken = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        let first = pid.wrapping_mul(7).wrapping_add(n * 13);
        let subnet = (0..250)
            .map(|step| (first.wrapping_add(step * 97)) % 250 + 1)
            .find(|s| !taken.contains(&format!(" 10.213.{s}.")))
            .unwrap_or_else(|| panic!("every 10.213.N.0/24 is in use on this machine"));
        let netns = format!("lava-t{pid}-{n}");
        let veth = format!("lvt{}x{n}", pid % 100_000);
        let (host_ip, device_ip) = (format!("10.213.{subnet}.1"), format!("10.213.{subnet}.2"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = |name: &str| dir.path().join(name);
        let run = |program: &str, args: &[&str]| {
            let out = succeeded(Command::new(program).args(args));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let hostkey = path("hostkey");
        ssh_keygen(&hostkey);
        let (identity, public) = match authorized_key {
            Some((private, public)) => (private.to_path_buf(), public.to_path_buf()),
            None => {
                let client = path("client");
                ssh_keygen(&client);
                (client.clone(), client.with_extension("pub"))
            }
        };
        std::fs::copy(&public, path("authorized_keys"))
            .unwrap_or_else(|e| panic!("authorized_keys: {e}"));
        let fingerprint = run(
            "ssh-keygen",
            &["-lf", &format!("{}.pub", hostkey.display())],
        )
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
        std::fs::write(
            path("sshd_config"),
            format!(
                "Port 22\nListenAddress {device_ip}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nMaxSessions 100\nAllowStreamLocalForwarding yes\n\
                 Subsystem sftp /usr/lib/openssh/sftp-server\n",
                hostkey.display(),
                path("sshd.pid").display(),
                path("authorized_keys").display()
            ),
        )
        .unwrap_or_else(|e| panic!("sshd_config: {e}"));
        std::fs::create_dir_all("/run/sshd").unwrap_or_else(|e| panic!("/run/sshd: {e}"));
        run("ip", &["netns", "add", &netns]);
        let peer = format!("{veth}p");
        run(
            "ip",
            &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
        );
        run("ip", &["link", "set", &peer, "netns", &netns]);
        run(
            "ip",
            &["addr", "add", &format!("{host_ip}/24"), "dev", &veth],
        );
        run("ip", &["link", "set", &veth, "up"]);
        run(
            "ip",
            &[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{device_ip}/24"),
                "dev",
                &peer,
            ],
        );
        run("ip", &["-n", &netns, "link", "set", &peer, "up"]);
        run("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        // The sessions' shell must not run this machine's ~/.bashrc: bash sources it for
        // ssh commands, and a user's startup files (pyenv's rehash lock, left behind when
        // a test cuts a session mid-rehash, makes every later shell wait a minute) are no
        // part of the device under test. The bind mount stays inside the namespace's own
        // mount namespace (`ip netns exec` makes one, slave to the host's).
        std::fs::write(path("bashrc"), "").unwrap_or_else(|e| panic!("bashrc: {e}"));
        let mut sshd = Command::new("ip")
            .args(["netns", "exec", &netns, "sh", "-c"])
            .arg(
                "rc=\"$HOME/.bashrc\"; if [ -f \"$rc\" ]; then mount --bind \"$1\" \"$rc\" || exit 1; fi; \
                 exec /usr/sbin/sshd -D -e -f \"$2\"",
            )
            .arg("sh")
            .arg(path("bashrc"))
            .arg(path("sshd_config"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("sshd: {e}"));
        // Ready when it says it listens (it logs to stderr with -e).
        let stderr = sshd.stderr.take().unwrap_or_else(|| panic!("sshd stderr"));
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Server listening") => break,
                Some(Ok(_)) => {}
                _ => panic!("sshd in {netns} exited before listening"),
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Self {
            address: device_ip,
            port: 22,
            fingerprint,
            identity,
            netns,
            veth,
            sshd,
            _dir: dir,
        }
    }

    /// A directory on the host for this test's caches and VM directories; removed with
    /// the host, so a test leaves no files behind even when it fails.
    pub fn scratch(&self) -> String {
        self._dir.path().join("scratch").display().to_string()
    }

    /// Process ids in the host's namespace whose command name starts with `comm`.
    pub fn pids_of(&self, comm: &str) -> Vec<i32> {
        self.pids_and_names()
            .into_iter()
            .filter(|(_, name)| name.starts_with(comm))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Every process in the host's namespace: id and command name.
    fn pids_and_names(&self) -> Vec<(i32, String)> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output();
        let pids = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        pids.split_whitespace()
            .filter_map(|pid| pid.parse::<i32>().ok())
            .filter_map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                Some((pid, comm.trim().to_string()))
            })
            .collect()
    }

    /// Cuts every SSH connection to the host (kills each session's sshd; the listener
    /// stays, so new connections work): what a network drop looks like to the client.
    pub fn drop_connections(&self) -> usize {
        let listener = i32::try_from(self.sshd.id()).unwrap_or(0);
        let sessions: Vec<i32> = self
            .pids_of("sshd")
            .into_iter()
            .filter(|pid| *pid != listener)
            .collect();
        for pid in &sessions {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        sessions.len()
    }

    /// Commands of the processes running in the host's namespace (sshd, VMs ...).
    pub fn processes(&self) -> Vec<String> {
        self.pids_and_names()
            .into_iter()
            .map(|(_, name)| name)
            .collect()
    }
}

impl SshHost {
    /// The lab's device file for this host (`ssh-host-01`, its host key pinned) in
    /// `dir/devices`; returns that directory. `with_identity`: the file names the key to
    /// log in with, else the dispatcher's lab key is used.
    pub fn device_files(&self, dir: &Path, with_identity: bool) -> PathBuf {
        self.device_file(dir, "ssh-host-01", with_identity)
    }

    /// Like [`SshHost::device_files`], for a device named `hostname` (a lab of several
    /// hosts writes one file each into the same directory).
    pub fn device_file(&self, dir: &Path, hostname: &str, with_identity: bool) -> PathBuf {
        let devices = dir.join("devices");
        std::fs::create_dir_all(&devices).unwrap_or_else(|e| panic!("{}: {e}", devices.display()));
        let identity = if with_identity {
            format!("identity_file = \"{}\"\n", self.identity.display())
        } else {
            String::new()
        };
        std::fs::write(
            devices.join(format!("{hostname}.toml")),
            format!(
                "hostname = \"{hostname}\"\ndevice_type = \"ssh-host\"\n\n[ssh]\naddress = \"{}\"\n\
                 port = {}\n{identity}host_key = \"{}\"\n",
                self.address, self.port, self.fingerprint
            ),
        )
        .unwrap_or_else(|e| panic!("{hostname}.toml: {e}"));
        devices
    }

    /// Fails the test if a qemu process runs in the host's namespace.
    pub fn assert_no_qemu(&self) {
        let left: Vec<String> = self
            .processes()
            .into_iter()
            .filter(|p| p.starts_with("qemu"))
            .collect();
        assert!(left.is_empty(), "qemu left behind: {left:?}");
    }

    /// Waits, at most `within`, until no qemu runs in the host's namespace (a VM whose
    /// console was hung up stops on its own, and nothing announces it); whether none
    /// is left.
    pub fn until_no_qemu(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.pids_of("qemu").is_empty() {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output();
        if let Ok(out) = out {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// `dispatcher token create NAME [ARGS] --config CONFIG`: the new token's secret.
pub fn create_token(config: &Path, args: &[&str]) -> String {
    try_create_token(&binary("dispatcher"), config, args).unwrap_or_else(|e| panic!("{e}"))
}

/// [`create_token`] with the `dispatcher` binary at `dispatcher` (a benchmark runs
/// its release build).
pub fn try_create_token(dispatcher: &Path, config: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(dispatcher)
        .args(["token", "create"])
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .map_err(|e| format!("dispatcher token create: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The daemon configuration line that lets jobs name the test images with `file://`
/// (the lab key beside them stays out of reach: the daemon denies it by name).
pub fn image_file_roots() -> String {
    let images = test_images();
    let dir = images.lab_key.parent().unwrap_or(Path::new("/nonexistent"));
    format!("file_roots = [\"{}\"]\n", dir.display())
}

/// Writes `dir/dispatcher.toml` for a daemon whose lab is two `kvm` devices
/// (`kvm-01`, `kvm-02`, VMs on this machine) that may boot the test images, with
/// `extra` TOML lines appended; returns its path.
pub fn kvm_daemon_config(dir: &Path, extra: &str) -> PathBuf {
    let images = test_images();
    let devices = kvm_devices(dir, &["kvm-01", "kvm-02"]);
    let config = dir.join("dispatcher.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ndevices = \"{}\"\nlab_key = \"{}\"\n\
             node_agent = \"{}\"\n{}{extra}",
            dir.join("state").display(),
            devices.display(),
            images.lab_key.display(),
            static_node_agent().display(),
            image_file_roots(),
        ),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    config
}

/// Writes `dir/dispatcher.toml` for a daemon whose lab is the device files in
/// `devices`, on hosts that share `host`'s scratch directory, with `extra` TOML lines
/// appended; returns its path.
pub fn daemon_config(dir: &Path, devices: &Path, host: &SshHost, extra: &str) -> PathBuf {
    let config = dir.join("dispatcher.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ndevices = \"{}\"\nlab_key = \"{}\"\n\
             node_agent = \"{}\"\nhost_dir = \"{}\"\n{}{extra}",
            dir.join("state").display(),
            devices.display(),
            test_images().lab_key.display(),
            static_node_agent().display(),
            host.scratch(),
            image_file_roots(),
        ),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    config
}

/// One HTTP/1.1 request on a fresh connection (`Authorization: Token` when `token` is
/// given), written by hand: the status and the body as sent, chunk-size lines and all
/// (JSON answers read with [`json_of`]). For what the API must answer to requests no
/// client would send (bodies that are not JSON or too large, no token, a wrong one);
/// everything else goes through [`ApiClient`].
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<(u16, String), String> {
    raw_http(addr, method, path, token, body).map_err(|e| format!("{method} {path} to {addr}: {e}"))
}

fn raw_http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    let auth = token
        .map(|t| format!("Authorization: Token {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    // The server may close the connection before reading a body it refuses.
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The JSON object in an answer's body (between the chunk-size lines of a chunked one);
/// `null` when there is none.
pub fn json_of(body: &str) -> serde_json::Value {
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    serde_json::from_str(&body[start..end]).unwrap_or(serde_json::Value::Null)
}

/// The JSON pointers of the diagnostics in a 400 answer to a submitted job.
pub fn diagnostic_pointers(answer: &str) -> Vec<String> {
    json_of(answer)["diagnostics"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d["pointer"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The images the project builds for its tests (`scripts/build-images.sh`).
#[derive(Debug, Clone)]
pub struct TestImages {
    pub guest_kernel: PathBuf,
    pub guest_initramfs: PathBuf,
    /// The same guest with a `login:` prompt on its console (root, `guest_password`).
    pub guest_login_initramfs: PathBuf,
    pub guest_password: String,
    /// The guest as a bootable raw disk (SYSLINUX), for image-only boots.
    pub guest_disk: PathBuf,
    /// The guest's tree as a root file system tarball (`nfsrootfs`).
    pub guest_rootfs_tar: PathBuf,
    /// Regular expression for the guest's shell prompt.
    pub guest_prompt: String,
    pub hostdev_kernel: PathBuf,
    pub hostdev_initramfs: PathBuf,
    pub hostdev_rootfs: PathBuf,
    /// The host device's tree as a root file system tarball, with an `/init`.
    pub hostdev_rootfs_tar: PathBuf,
    pub hostdev_fingerprint: String,
    pub hostdev_prompt: String,
    /// The lab's SSH key, authorized in both images.
    pub lab_key: PathBuf,
    pub lab_pubkey: PathBuf,
}

/// Runs `scripts/SCRIPT` (an image build, cached by its inputs) and reads the
/// `name=value` manifest whose path it prints as `KEY=path`: a lookup that fails the
/// test naming a missing value.
fn built_manifest(script: &str, key: &str) -> impl Fn(&str) -> String {
    manifest(script, &run_build(script), key)
}

/// Runs `scripts/SCRIPT` (an image build) and returns what it printed.
fn run_build(script: &str) -> String {
    let built = Command::new("bash")
        .arg(repo_root().join("scripts").join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(built.status.success(), "scripts/{script} failed");
    String::from_utf8_lossy(&built.stdout).into_owned()
}

/// The lookup in the manifest whose path `script` printed (`printed`) as `KEY=path`.
fn manifest(script: &str, printed: &str, key: &str) -> impl Fn(&str) -> String + use<> {
    let manifest = printed
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{script} printed no {key}"));
    let text = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    move |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing from {}", manifest.display()))
            .to_string()
    }
}

/// An ARM guest (`scripts/build-arm-image.sh`): Debian's kernel and busybox of one
/// architecture, a getty login on `ttyAMA0`.
#[derive(Debug, Clone)]
pub struct ArmImages {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub password: String,
}

/// Builds the ARM guests (cached by input hash) and reads the manifest of `arch`
/// (`arm64` or `armhf`).
pub fn arm_images(arch: &str) -> ArmImages {
    static IMAGES: OnceLock<std::collections::HashMap<String, ArmImages>> = OnceLock::new();
    IMAGES
        .get_or_init(|| {
            // One build makes both guests and prints both manifests.
            let printed = run_build("build-arm-image.sh");
            ["arm64", "armhf"]
                .into_iter()
                .map(|arch| {
                    let get = manifest("build-arm-image.sh", &printed, &format!("{arch}_manifest"));
                    let images = ArmImages {
                        kernel: get(&format!("{arch}_kernel")).into(),
                        initramfs: get(&format!("{arch}_initramfs")).into(),
                        password: get(&format!("{arch}_password")),
                    };
                    (arch.to_string(), images)
                })
                .collect()
        })
        .get(arch)
        .unwrap_or_else(|| panic!("no ARM guest for {arch}"))
        .clone()
}

/// The Debian guest that boots by itself (`scripts/build-debian-image.sh`): a qcow2
/// disk with systemd-boot on its EFI partition, systemd, a getty login on `ttyS0`.
#[derive(Debug, Clone)]
pub struct DebianImage {
    pub disk: PathBuf,
    pub password: String,
}

/// Builds the Debian guest (cached by input hash) and reads its manifest.
pub fn debian_image() -> DebianImage {
    static IMAGE: OnceLock<DebianImage> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let get = built_manifest("build-debian-image.sh", "debian_manifest");
            DebianImage {
                disk: get("debian_disk").into(),
                password: get("debian_password"),
            }
        })
        .clone()
}

/// Builds the test images (cached: a second build with the same inputs does nothing)
/// and reads their manifest.
pub fn test_images() -> TestImages {
    static IMAGES: OnceLock<TestImages> = OnceLock::new();
    IMAGES
        .get_or_init(|| {
            let get = built_manifest("build-images.sh", "manifest");
            TestImages {
                guest_kernel: get("guest_kernel").into(),
                guest_initramfs: get("guest_initramfs").into(),
                guest_login_initramfs: get("guest_login_initramfs").into(),
                guest_password: get("guest_password"),
                guest_disk: get("guest_disk").into(),
                guest_rootfs_tar: get("guest_rootfs_tar").into(),
                guest_prompt: get("guest_prompt"),
                hostdev_kernel: get("hostdev_kernel").into(),
                hostdev_initramfs: get("hostdev_initramfs").into(),
                hostdev_rootfs: get("hostdev_rootfs").into(),
                hostdev_rootfs_tar: get("hostdev_rootfs_tar").into(),
                hostdev_fingerprint: get("hostdev_fingerprint"),
                hostdev_prompt: get("hostdev_prompt"),
                lab_key: get("lab_key").into(),
                lab_pubkey: get("lab_pubkey").into(),
            }
        })
        .clone()
}

/// Reads JUnit XML with Python's own XML parser: `(testcase name, outcome)` of every
/// case, outcome `pass`, `failure`, `error` or `skipped`.
pub fn parse_junit(xml: &str) -> Vec<(String, String)> {
    let script = r#"
import sys, xml.etree.ElementTree as ET
root = ET.fromstring(sys.stdin.read())
assert root.tag == "testsuites", root.tag
for suite in root.findall("testsuite"):
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases), suite.get("name")
    for case in cases:
        kinds = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        print(case.get("classname") + "." + case.get("name"), kinds[0] if kinds else "pass")
"#;
    let lines = run_with_stdin("python3", &["-c", script], xml);
    lines
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(name, outcome)| (name.to_string(), outcome.to_string()))
        .collect()
}

/// Reads TAP with Perl's TAP::Parser: `(passed, failed, skipped, plan is good)`.
pub fn parse_tap(tap: &str) -> (usize, usize, usize, bool) {
    let script = r#"
use TAP::Parser;
my $tap = do { local $/; <STDIN> };
my $p = TAP::Parser->new({ tap => $tap });
while (my $r = $p->next) {}
printf "%d %d %d %d\n", scalar($p->passed), scalar($p->failed), scalar($p->skipped),
    ($p->is_good_plan && !$p->parse_errors) ? 1 : 0;
"#;
    let out = run_with_stdin("perl", &["-e", script], tap);
    let n: Vec<usize> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(n.len(), 4, "TAP::Parser said: {out}");
    (n[0], n[1], n[2], n[3] == 1)
}

fn run_with_stdin(program: &str, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let out = assert_success(out, format_args!("{program} rejected the input\n{input}\n"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A lab's device files for stand-alone `kvm` devices named `names`, in `dir/devices`.
pub fn kvm_devices(dir: &Path, names: &[&str]) -> PathBuf {
    let devices = dir.join("devices");
    std::fs::create_dir_all(&devices).unwrap_or_else(|e| panic!("{}: {e}", devices.display()));
    for name in names {
        std::fs::write(
            devices.join(format!("{name}.toml")),
            format!("hostname = \"{name}\"\ndevice_type = \"kvm\"\n"),
        )
        .unwrap_or_else(|e| panic!("{name}.toml: {e}"));
    }
    devices
}

/// A `dispatcher serve` process, killed when dropped.
pub struct Daemon {
    pub child: Child,
    /// `http://ADDR`, as the daemon printed it.
    pub url: String,
    /// Kept open: the daemon must never write into a closed pipe.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Daemon {
    /// `dispatcher serve --config CONFIG`; returns once it listens.
    pub fn start(config: &Path) -> Self {
        Self::try_start(Command::new(binary("dispatcher")), config)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The daemon with an open-file limit (soft and hard) of `limit`, set by
    /// util-linux's `prlimit` before it starts.
    pub fn start_with_fd_limit(config: &Path, limit: u64) -> Self {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={limit}:{limit}"))
            .arg(binary("dispatcher"));
        Self::try_start(command, config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `COMMAND serve --config CONFIG`, where `command` runs the dispatcher (another
    /// build of it, under a wrapper, with its own environment or stderr); returns once
    /// it listens.
    pub fn try_start(mut command: Command, config: &Path) -> Result<Self, String> {
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("dispatcher serve: {e}"))?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut first = String::new();
        let read = stdout.read_line(&mut first);
        let Some(url) = first.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the daemon did not start: {first:?} ({read:?})"));
        };
        Ok(Self {
            url: url.to_string(),
            child,
            _stdout: stdout,
        })
    }

    /// `ADDR` (host:port).
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// A client of this daemon's API with `token`.
    pub fn api(&self, token: &str) -> ApiClient {
        ApiClient::new(&self.url, token).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `dispatcher` CLI (`args`) against this daemon with `token`, run in the
    /// repository's root.
    pub fn cli(&self, token: &str, args: &[&str]) -> std::process::Output {
        Command::new(binary("dispatcher"))
            .args(args)
            .env("LAVA_DISPATCHER_URL", &self.url)
            .env("LAVA_DISPATCHER_TOKEN", token)
            .current_dir(repo_root())
            .output()
            .unwrap_or_else(|e| panic!("dispatcher {args:?}: {e}"))
    }

    /// A field of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`).
    pub fn status_kb(&self, field: &str) -> u64 {
        self.try_status_kb(field).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Daemon::status_kb`], an error when the daemon is gone.
    pub fn try_status_kb(&self, field: &str) -> Result<u64, String> {
        let path = format!("/proc/{}/status", self.pid());
        std::fs::read_to_string(&path)
            .map_err(|e| format!("{path}: {e}"))?
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {field} in {path}"))
    }

    /// Open file descriptors of the daemon now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// SIGKILL: the daemon gets no chance to clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and waits for the graceful shutdown to finish.
    pub fn stop(mut self) {
        let _ = self.terminate();
    }

    /// SIGTERM, and waits for the graceful shutdown to finish: how the daemon exited.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus, String> {
        let pid =
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).map_err(|e| e.to_string())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| format!("SIGTERM to the daemon: {e}"))?;
        self.child
            .wait()
            .map_err(|e| format!("waiting for the daemon: {e}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet) within
/// `timeout`: for processes the test did not start and so cannot wait for. Checked
/// every 20 ms; a process still running at the deadline is the failure the caller
/// reports.
pub fn wait_until_gone(pid: u32, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the command name, which is in parentheses.
                let (_, after) = stat.rsplit_once(')')?;
                after.split_whitespace().next().map(str::to_string)
            });
        match state.as_deref() {
            None | Some("Z" | "X") => return true,
            Some(_) if std::time::Instant::now() >= deadline => return false,
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}
