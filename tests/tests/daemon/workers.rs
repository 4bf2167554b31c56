//! Several workers sharing one PostgreSQL database (a throwaway server): each a
//! `dispatcher serve` of its own, owning the devices of its own lab files, all
//! answering for the whole lab.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use system_tests::{
    ApiClient, Daemon, PgCluster, SshHost, create_token, daemon_config, shell_job, test_images,
};

/// Workers `worker-1` ... each owning one ssh-host (`ssh-host-0N`), on one database.
struct Workers {
    daemons: Vec<Daemon>,
    /// Each worker's directory: its configuration and state.
    dirs: Vec<tempfile::TempDir>,
    _hosts: Vec<SshHost>,
    _server: PgCluster,
    token: String,
}

impl Workers {
    /// `count` workers; the device of worker N has the tags `tags(N)`.
    fn start(count: usize, tags: impl Fn(usize) -> Vec<&'static str>) -> Self {
        let server = PgCluster::start();
        let url = server.create_database("lab");
        let images = test_images();
        let (mut hosts, mut dirs, mut configs) = (Vec::new(), Vec::new(), Vec::new());
        for n in 1..=count {
            let host = SshHost::start(Some((&images.lab_key, &images.lab_pubkey)));
            let dir = tempfile::tempdir().unwrap();
            let hostname = format!("ssh-host-{n:02}");
            let devices = host.device_file(dir.path(), &hostname, false);
            let file = devices.join(format!("{hostname}.toml"));
            let text = std::fs::read_to_string(&file).unwrap();
            let tags = tags(n)
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ");
            std::fs::write(
                &file,
                text.replacen(
                    "device_type = \"ssh-host\"\n",
                    &format!("device_type = \"ssh-host\"\ntags = [{tags}]\n"),
                    1,
                ),
            )
            .unwrap();
            let extra = format!("database_url = \"{url}\"\nworker_id = \"worker-{n}\"\n");
            configs.push(daemon_config(dir.path(), &devices, &host, &extra));
            hosts.push(host);
            dirs.push(dir);
        }
        // One token, made through one worker, for all: the database keeps it.
        let token = create_token(&configs[0], &["ci"]);
        let daemons = configs.iter().map(|c| Daemon::start(c)).collect();
        Self {
            daemons,
            dirs,
            _hosts: hosts,
            _server: server,
            token,
        }
    }

    fn api(&self, worker: usize) -> ApiClient {
        self.daemons[worker].api(&self.token)
    }

    /// Worker `worker`'s directory of job `id`.
    fn job_dir(&self, worker: usize, id: u64) -> PathBuf {
        self.dirs[worker]
            .path()
            .join("state")
            .join("jobs")
            .join(id.to_string())
    }
}

fn quick_job(name: &str, tags: &[&str]) -> String {
    let mut job = shell_job(name, "ssh-host", &["lava-test-case quick --result pass"]);
    if !tags.is_empty() {
        job["tags"] = serde_json::json!(tags);
    }
    job.to_string()
}

/// How many lines of `log` (a job.log of JSON lines) say the job started on a device.
fn starts_in(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.contains(" running on "))
        })
        .count()
}

/// Jobs submitted to every worker in turn, some for a tag only the third worker's
/// device has: each job runs exactly once, on the worker that owns the device it got;
/// a job for a tag no worker has is refused by any.
#[test]
fn jobs_submitted_to_any_worker_run_once_on_the_worker_that_owns_their_device() {
    let workers = Workers::start(3, |n| if n == 3 { vec!["blue"] } else { vec![] });
    let apis: Vec<ApiClient> = (0..3).map(|w| workers.api(w)).collect();
    // The devices of all three, through any of them.
    let devices = apis[0].devices().unwrap();
    let listed: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["hostname"].as_str())
        .collect();
    assert_eq!(listed, ["ssh-host-01", "ssh-host-02", "ssh-host-03"]);
    for api in &apis {
        let (status, body) = api
            .request(
                "POST",
                "/api/v1/jobs",
                quick_job("red", &["red"]).as_bytes(),
            )
            .unwrap();
        assert_eq!(status, 400, "no worker has a red device: {body}");
    }

    let jobs = 200;
    let mut submitted = Vec::new();
    for i in 0..jobs {
        let blue = i % 5 == 0;
        let tags: &[&str] = if blue { &["blue"] } else { &[] };
        let to = i % 3;
        let id = apis[to]
            .submit(&quick_job(&format!("job {i}"), tags))
            .unwrap_or_else(|e| panic!("job {i} through worker {}: {e}", to + 1));
        submitted.push((id, to, blue));
    }
    let mut ran_on = [0usize; 3];
    for &(id, to, blue) in &submitted {
        let end = apis[to]
            .wait_for_state(id, "finished", Duration::from_secs(600))
            .unwrap();
        assert_eq!(end["health"], "complete", "job {id}: {end}");
        let job = apis[(to + 1) % 3].job(id).unwrap();
        let given: Vec<&str> = job["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(given.len(), 1, "job {id}: {job}");
        let owner: usize = given[0]
            .strip_prefix("ssh-host-0")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap()
            - 1;
        if blue {
            assert_eq!(owner, 2, "a blue job runs on the blue device: {job}");
        }
        // Run by the owner of its device, and by no other worker; started once.
        for worker in 0..3 {
            let dir = workers.job_dir(worker, id);
            assert_eq!(
                dir.exists(),
                worker == owner,
                "job {id} on {}: directory of worker {} ",
                given[0],
                worker + 1
            );
        }
        assert_eq!(
            starts_in(&workers.job_dir(owner, id).join("job.log")),
            1,
            "job {id} started once"
        );
        ran_on[owner] += 1;
    }
    assert!(
        ran_on.iter().all(|&n| n > 0),
        "every worker ran jobs: {ran_on:?}"
    );
}
