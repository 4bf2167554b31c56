//! A throwaway PostgreSQL server, as the harness starts sshd: Debian's `postgresql`
//! binaries, a new cluster in a temporary directory, listening on a Unix socket there
//! only, stopped (and the directory removed) when dropped.
//!
//! As root the server runs as the `postgres` user (it refuses to run as root), and it
//! gets SIGQUIT (immediate shutdown) if the thread that started it ends, so a test
//! that dies some other way than by unwinding leaves no server behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a new server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    server: Option<Child>,
}

impl PgCluster {
    /// A new cluster (`initdb`), started; returns once it accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let bin = postgres_bin();
        if as_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", dir.path().display()));
        }
        let data = dir.path().join("data");
        let out = run_as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .arg("--locale=C")
            .output()
            .unwrap_or_else(|e| panic!("initdb: {e}"));
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cluster = PgCluster {
            dir,
            bin,
            server: None,
        };
        cluster.start_server();
        cluster
    }

    /// Starts the server on the cluster and waits until it says it is ready.
    fn start_server(&mut self) {
        // setpriv's own option (as root): the server's parent is this thread.
        let mut child =
            run_as_postgres_with(&self.bin.join("postgres"), &["--pdeathsig", "SIGQUIT"])
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .arg("-k")
                .arg(self.dir.path())
                // Unix socket only; no disk syncs (a test's data need not survive a power
                // cut); room for several workers' pools.
                .args(["-c", "listen_addresses=", "-c", "fsync=off"])
                .args(["-c", "max_connections=200"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("postgres: {e}"));
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        let (ready, said_ready) = mpsc::channel();
        // Reads the server's log for as long as it runs (a full pipe would stop it),
        // and says when the server is ready or gone.
        std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready to accept connections") {
                    let _ = ready.send(Ok(()));
                }
                log.push_str(&line);
                log.push('\n');
            }
            let _ = ready.send(Err(log));
        });
        match said_ready.recv_timeout(READY_WITHIN) {
            Ok(Ok(())) => self.server = Some(child),
            Ok(Err(log)) => {
                let _ = child.wait();
                panic!("postgres stopped before it was ready:\n{log}");
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("postgres was not ready within {READY_WITHIN:?}: {e}");
            }
        }
    }

    /// The URL of database `db` on this server (see [`PgCluster::create_database`]).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost/{db}?host={}",
            self.dir.path().display()
        )
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let out = Command::new("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
            ])
            .arg(format!("CREATE DATABASE \"{name}\""))
            .output()
            .unwrap_or_else(|e| panic!("psql: {e}"));
        assert!(
            out.status.success(),
            "CREATE DATABASE {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// Stops the server at once (SIGQUIT, immediate shutdown: clients see their
    /// connections break) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
            }
            let _ = child.wait();
        }
    }

    /// Stops the server and starts it again on the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }

    /// The cluster's directory (its socket lives here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `program`, run as the `postgres` user when this is root.
fn run_as_postgres(program: &Path) -> Command {
    run_as_postgres_with(program, &[])
}

fn run_as_postgres_with(program: &Path, setpriv_args: &[&str]) -> Command {
    if !as_root() {
        return Command::new(program);
    }
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .args(setpriv_args)
        .arg(program);
    command
}

fn postgres_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no postgres user: install Debian's postgresql"));
    (user.uid.as_raw(), user.gid.as_raw())
}

/// Debian's server binaries: `/usr/lib/postgresql/VERSION/bin`, the newest version.
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| panic!("/usr/lib/postgresql: {e} (install Debian's postgresql)"))
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| panic!("no PostgreSQL server under /usr/lib/postgresql"))
}
