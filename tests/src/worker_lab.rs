//! A lab of several workers, as the daemon tests and the benchmarks run it: each a
//! `dispatcher serve` of its own with one `ssh-host` device (`ssh-host-0N`, sshd in a
//! network namespace), all sharing one database: a throwaway PostgreSQL server
//! ([`PgCluster`]), or for one worker its own SQLite file.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{ApiClient, Daemon, PgCluster, SshHost, daemon_config, test_images, try_create_token};

/// Where the workers keep their state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// One worker's own file (only for a lab of one).
    Sqlite,
    /// One PostgreSQL database shared by all.
    Postgres,
}

/// Workers `worker-1` ... each owning `ssh-host-0N`.
pub struct WorkerLab {
    pub daemons: Vec<Daemon>,
    /// Each worker's configuration file.
    pub configs: Vec<PathBuf>,
    /// Each worker's directory: its configuration and state.
    pub dirs: Vec<tempfile::TempDir>,
    _hosts: Vec<SshHost>,
    /// The database's server; `None` with SQLite.
    pub server: Option<PgCluster>,
    /// A read-write token every worker knows.
    pub token: String,
    /// What starts the `dispatcher` (another build of it, quiet...).
    dispatcher: Box<dyn Fn() -> Command>,
}

impl WorkerLab {
    /// `count` workers on `database` started by `dispatcher`; the device of worker N
    /// has the tags `tags(N)`, and every configuration has the `extra` lines.
    pub fn start(
        count: usize,
        database: Database,
        tags: impl Fn(usize) -> Vec<&'static str>,
        extra: &str,
        dispatcher: Box<dyn Fn() -> Command>,
    ) -> Result<Self, String> {
        if database == Database::Sqlite && count != 1 {
            return Err("a SQLite file serves one worker".into());
        }
        let server = (database == Database::Postgres).then(PgCluster::start);
        let url = server.as_ref().map(|s| s.create_database("lab"));
        let images = test_images();
        let (mut hosts, mut dirs, mut configs) = (Vec::new(), Vec::new(), Vec::new());
        for n in 1..=count {
            let host = SshHost::start(Some((&images.lab_key, &images.lab_pubkey)));
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let hostname = format!("ssh-host-{n:02}");
            let devices = host.device_file(dir.path(), &hostname, false);
            tag(&devices.join(format!("{hostname}.toml")), &tags(n))?;
            let mut lines = format!("worker_id = \"worker-{n}\"\n{extra}");
            if let Some(url) = &url {
                lines.push_str(&format!("database_url = \"{url}\"\n"));
            }
            configs.push(daemon_config(dir.path(), &devices, &host, &lines));
            hosts.push(host);
            dirs.push(dir);
        }
        // One token, made through one worker, for all: the database keeps it.
        let token = try_create_token(Path::new(dispatcher().get_program()), &configs[0], &["ci"])?;
        let daemons = configs
            .iter()
            .map(|c| Daemon::try_start(dispatcher(), c))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            daemons,
            configs,
            dirs,
            _hosts: hosts,
            server,
            token,
            dispatcher,
        })
    }

    /// A client of worker `worker`'s API (0-based).
    pub fn api(&self, worker: usize) -> ApiClient {
        self.daemons[worker].api(&self.token)
    }

    /// Worker `worker`'s directory of job `id`.
    pub fn job_dir(&self, worker: usize, id: u64) -> PathBuf {
        self.dirs[worker]
            .path()
            .join("state")
            .join("jobs")
            .join(id.to_string())
    }

    /// Starts worker `worker` (0-based) again, after it was killed.
    pub fn restart(&mut self, worker: usize) -> Result<(), String> {
        let daemon = Daemon::try_start((self.dispatcher)(), &self.configs[worker])?;
        self.daemons.insert(worker, daemon);
        Ok(())
    }
}

/// Gives the device file at `file` the tags `tags`.
fn tag(file: &Path, tags: &[&str]) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let tags = tags
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let tagged = text.replacen(
        "device_type = \"ssh-host\"\n",
        &format!("device_type = \"ssh-host\"\ntags = [{tags}]\n"),
        1,
    );
    std::fs::write(file, tagged).map_err(|e| format!("{}: {e}", file.display()))
}
