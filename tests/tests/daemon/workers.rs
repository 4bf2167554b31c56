//! Several workers sharing one PostgreSQL database (a throwaway server): each a
//! `dispatcher serve` of its own, owning the devices of its own lab files, all
//! answering for the whole lab.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use std::process::Command;

use system_tests::{ApiClient, Database, WorkerLab, binary, shell_job};

/// `count` workers on one PostgreSQL database; the device of worker N has the tags
/// `tags(N)`, and every configuration has the `extra` lines.
fn shared_lab(count: usize, tags: impl Fn(usize) -> Vec<&'static str>, extra: &str) -> WorkerLab {
    WorkerLab::start(
        count,
        Database::Postgres,
        tags,
        extra,
        Box::new(|| Command::new(binary("dispatcher"))),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

trait Ran {
    fn assert_ran_once_on_its_owner(&self, api: &ApiClient, id: u64) -> usize;
}

impl Ran for WorkerLab {
    /// Checks that job `id` ran once, on the worker owning the one device it got, and
    /// on no other; returns that worker.
    fn assert_ran_once_on_its_owner(&self, api: &ApiClient, id: u64) -> usize {
        let job = api.job(id).unwrap();
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
        for worker in 0..self.dirs.len() {
            assert_eq!(
                self.job_dir(worker, id).exists(),
                worker == owner,
                "job {id} on {}: directory of worker {}",
                given[0],
                worker + 1
            );
        }
        assert_eq!(
            starts_in(&self.job_dir(owner, id).join("job.log")),
            1,
            "job {id} started once"
        );
        owner
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
    let workers = shared_lab(3, |n| if n == 3 { vec!["blue"] } else { vec![] }, "");
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
        let owner = workers.assert_ran_once_on_its_owner(&apis[(to + 1) % 3], id);
        if blue {
            assert_eq!(owner, 2, "a blue job runs on the blue device");
        }
        ran_on[owner] += 1;
    }
    assert!(
        ran_on.iter().all(|&n| n > 0),
        "every worker ran jobs: {ran_on:?}"
    );
    // A job's log through every worker, whichever ran it, is the log its worker has.
    for &(id, _, _) in submitted.iter().take(6) {
        let owner = workers.assert_ran_once_on_its_owner(&apis[0], id);
        let log = apis[owner].follow_log(id).unwrap();
        assert!(!log.is_empty(), "job {id} has a log");
        for api in &apis {
            assert_eq!(api.follow_log(id).unwrap(), log, "job {id}'s log");
        }
    }
}

/// A worker SIGKILLed mid-job: the others declare it lost (it beats every second and
/// is judged after three silent ones), its job ends incomplete naming it, its device
/// goes offline, and another worker's job runs on untouched. Started again, it rejoins
/// and runs jobs.
#[test]
fn a_killed_worker_is_declared_lost_and_rejoins_when_started_again() {
    let mut workers = shared_lab(
        3,
        |n| match n {
            1 => vec!["one"],
            2 => vec!["two"],
            _ => vec![],
        },
        "heartbeat_secs = 1\n",
    );
    let api = workers.api(0);
    let gate = workers.dirs[0].path().join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut on_two = shell_job("on two", "ssh-host", &["sleep 600"]);
    on_two["tags"] = serde_json::json!(["two"]);
    let on_two = api.submit(&on_two.to_string()).unwrap();
    let gated = format!("read line < {}", gate.display());
    let mut on_one = shell_job(
        "on one",
        "ssh-host",
        &[&gated, "lava-test-case after --result pass"],
    );
    on_one["tags"] = serde_json::json!(["one"]);
    let on_one = api.submit(&on_one.to_string()).unwrap();
    for id in [on_two, on_one] {
        api.wait_for_state(id, "running", Duration::from_secs(120))
            .unwrap();
    }
    workers.daemons.remove(1).kill();

    let end = api
        .wait_for_state(on_two, "finished", Duration::from_secs(120))
        .unwrap();
    assert_eq!(end["health"], "incomplete", "{end}");
    assert_eq!(
        end["error"],
        serde_json::json!(["infrastructure", "worker worker-2 lost"]),
        "the job names the lost worker"
    );
    let devices = api.devices().unwrap();
    let two = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["hostname"] == "ssh-host-02")
        .unwrap();
    assert_eq!(two["state"]["state"], "offline", "{two}");
    let listed = workers.daemons[0].cli(&workers.token, &["workers", "list"]);
    let table = String::from_utf8_lossy(&listed.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("worker-2"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("lost") && row.contains("ssh-host-02"),
        "{table}"
    );
    // Worker 1's job ran on through all of it.
    assert_eq!(api.job_state(on_one).unwrap()["state"], "running");
    api.follow_until(on_one, "LAVA_SIGNAL_STARTRUN").unwrap();
    std::fs::write(&gate, b"go\n").unwrap();
    let end = api
        .wait_for_state(on_one, "finished", Duration::from_secs(120))
        .unwrap();
    assert_eq!(end["health"], "complete", "{end}");

    // Worker 2 again: it rejoins, its device is back, and it runs jobs.
    workers.restart(1).unwrap();
    let again = api
        .submit(&quick_job("after the restart", &["two"]))
        .unwrap();
    let end = api
        .wait_for_state(again, "finished", Duration::from_secs(120))
        .unwrap();
    assert_eq!(end["health"], "complete", "{end}");
    assert!(workers.job_dir(1, again).exists());
    let listed = workers.api(1).get_json("/api/v1/workers").unwrap();
    let two = listed["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "worker-2")
        .unwrap();
    assert_eq!(
        (two["state"].as_str(), two["epoch"].as_u64()),
        (Some("alive"), Some(2))
    );
}

/// PostgreSQL restarted while three workers run jobs: each worker gets through the
/// outage (its calls tried again, its notices' connection made again, no worker
/// declared lost for the silence all of them shared), and every job, submitted before
/// or after, runs exactly once and completes.
#[test]
fn a_database_restart_under_load_loses_no_job_and_runs_none_twice() {
    let mut workers = shared_lab(3, |_| vec![], "heartbeat_secs = 1\n");
    let apis: Vec<ApiClient> = (0..3).map(|w| workers.api(w)).collect();
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push((
            apis[i % 3].submit(&quick_job("before", &[])).unwrap(),
            i % 3,
        ));
    }
    apis[0]
        .wait_for_state(ids[0].0, "running", Duration::from_secs(120))
        .unwrap();
    workers.server.as_mut().unwrap().restart();
    for i in 0..30 {
        ids.push((apis[i % 3].submit(&quick_job("after", &[])).unwrap(), i % 3));
    }
    for &(id, to) in &ids {
        let end = apis[to]
            .wait_for_state(id, "finished", Duration::from_secs(600))
            .unwrap();
        assert_eq!(end["health"], "complete", "job {id}: {end}");
        workers.assert_ran_once_on_its_owner(&apis[(to + 1) % 3], id);
    }
    let listed = apis[0].get_json("/api/v1/workers").unwrap();
    for worker in listed["workers"].as_array().unwrap() {
        assert_eq!(
            (worker["state"].as_str(), worker["epoch"].as_u64()),
            (Some("alive"), Some(1)),
            "no worker was declared lost: {worker}"
        );
    }
}

/// A cancel asked of one worker stops a job another worker runs (it hears of it).
#[test]
fn a_job_canceled_through_another_worker_stops() {
    let workers = shared_lab(2, |n| if n == 2 { vec!["two"] } else { vec![] }, "");
    let api = workers.api(0);
    let mut job = shell_job("long", "ssh-host", &["sleep 600"]);
    job["tags"] = serde_json::json!(["two"]);
    let id = api.submit(&job.to_string()).unwrap();
    api.wait_for_state(id, "running", Duration::from_secs(120))
        .unwrap();
    let (status, body) = api
        .request("POST", &format!("/api/v1/jobs/{id}/cancel"), b"")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let end = api
        .wait_for_state(id, "finished", Duration::from_secs(120))
        .unwrap();
    assert_eq!(end["health"], "canceled", "{end}");
    assert!(workers.job_dir(1, id).exists(), "worker 2 ran it");
}

/// A `device_group` job across workers: `role` nodes, each on a device tagged like
/// its role (only worker N's device has tag `role`), each running `steps`.
fn across_workers_job(name: &str, roles: &[(&str, &[&str])]) -> String {
    let group: Vec<Value> = roles
        .iter()
        .map(|(role, _)| {
            serde_json::json!({"role": role, "count": 1, "device_type": "ssh-host", "tags": [role]})
        })
        .collect();
    let actions: Vec<Value> = roles
        .iter()
        .map(|(role, steps)| {
            serde_json::json!({
                "command": "lava_test_shell",
                "parameters": {"role": role, "testdef_repos": [{"inline": {
                    "metadata": {"name": "across", "format": "Lava-Test Test Definition 1.0"},
                    "run": {"steps": steps}
                }}]}
            })
        })
        .collect();
    serde_json::json!({
        "job_name": name,
        // Far more than the job needs: a job that ends by its timeout fails the test.
        "timeout": 120,
        "device_group": group,
        "actions": actions,
    })
    .to_string()
}

/// The test cases of job `id` as `node.case result` lines, sorted (the MultiNode
/// calls' own cases left out).
fn cases_of(api: &ApiClient, id: u64) -> Vec<String> {
    let results = api.get_json(&format!("/api/v1/jobs/{id}/results")).unwrap();
    let mut cases: Vec<String> = results["results"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{results}"))
        .iter()
        .flat_map(|node| {
            node["results"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|case| {
                    !case["case"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("multinode-"))
                })
                .map(move |case| {
                    format!(
                        "{}.{} {}",
                        node["node"].as_str().unwrap_or("?"),
                        case["case"].as_str().unwrap_or("?"),
                        case["result"].as_str().unwrap_or("?")
                    )
                })
        })
        .collect();
    cases.sort();
    cases
}

/// A `device_group` whose two nodes are on the devices of two workers, submitted to a
/// third that owns neither: each worker drives its own node and both meet in one group
/// of the standalone coordinator they share (`lava-send`, `lava-sync`, `lava-wait`);
/// the job's results hold both nodes. Then a second such job whose node on worker 2
/// is still running when worker 2 is killed: the node on worker 1, blocked in
/// `lava-sync`, is released at once with the reason naming the lost worker, and the job
/// ends incomplete, "worker worker-2 lost"; the devices page shows worker 2 lost.
#[test]
fn a_device_group_across_two_workers_meets_in_one_group_and_a_lost_worker_releases_it() {
    let coordinator = system_tests::CoordinatorProcess::start();
    let extra = format!(
        "heartbeat_secs = 1\ncoordinator_url = \"{}\"\ncoordinator_token_file = \"{}\"\n",
        coordinator.grpc,
        coordinator.token_file.display()
    );
    let mut workers = shared_lab(
        3,
        |n| match n {
            1 => vec!["a"],
            2 => vec!["b"],
            _ => vec![],
        },
        &extra,
    );
    let api = workers.api(2);
    let cache = "\"${LAVA_MULTI_NODE_CACHE:-/tmp/lava_multi_node_cache.txt}\"";
    let a_reads = format!("lava-test-case read-b --shell grep -qx 'b:value=2' {cache}");
    let b_reads = format!("lava-test-case read-a --shell grep -qx 'a:value=1' {cache}");
    let met = api
        .submit(&across_workers_job(
            "across workers",
            &[
                (
                    "a",
                    &[
                        "lava-send from-a value=1",
                        "lava-sync met",
                        "lava-wait from-b",
                        &a_reads,
                    ],
                ),
                (
                    "b",
                    &[
                        "lava-send from-b value=2",
                        "lava-sync met",
                        "lava-wait from-a",
                        &b_reads,
                    ],
                ),
            ],
        ))
        .unwrap();
    let end = api
        .wait_for_state(met, "finished", Duration::from_secs(300))
        .unwrap();
    assert_eq!(end["health"], "complete", "{end}");
    let job = workers.api(0).job(met).unwrap();
    assert_eq!(
        job["devices"],
        serde_json::json!(["ssh-host-01", "ssh-host-02"]),
        "{job}"
    );
    assert_eq!(cases_of(&api, met), ["a.read-b pass", "b.read-a pass"]);
    for (worker, ran) in [(0, true), (1, true), (2, false)] {
        assert_eq!(
            workers.job_dir(worker, met).exists(),
            ran,
            "job {met}: directory of worker {}",
            worker + 1
        );
    }

    // Worker 2 lost while its node runs and worker 1's waits for it.
    let gate = workers.dirs[1].path().join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let b_blocks = format!("read line < {}", gate.display());
    let lost = api
        .submit(&across_workers_job(
            "across workers, one lost",
            &[
                (
                    "a",
                    &["lava-sync lost", "lava-test-case released --result pass"],
                ),
                ("b", &[&b_blocks]),
            ],
        ))
        .unwrap();
    // Followed once it runs: through worker 3, a queued job's log shows only its wait.
    api.wait_for_state(lost, "running", Duration::from_secs(120))
        .unwrap();
    api.follow_until(lost, "lava-sync 'lost' waits for 1: b")
        .unwrap();
    workers.daemons.remove(1).kill();
    let end = api
        .wait_for_state(lost, "finished", Duration::from_secs(300))
        .unwrap();
    assert_eq!(end["health"], "incomplete", "{end}");
    assert_eq!(
        end["error"],
        serde_json::json!(["infrastructure", "worker worker-2 lost"]),
        "the job names the lost worker"
    );
    assert_eq!(cases_of(&api, lost), ["a.released pass"]);
    // Node a's log says why its lava-sync returned.
    api.follow_until(lost, "worker worker-2 lost").unwrap();

    // The devices page, through any worker, shows every worker: worker 2 lost, with its
    // device.
    let mut browser = system_tests::Browser::start();
    let third = &workers.daemons[1].url;
    browser.sign_in(third, api.token());
    browser.show(
        &format!("{third}/#/devices"),
        "#workers tr[data-worker=\"worker-2\"]",
        "lost",
        "web-workers.png",
    );
    let mut row = |worker: &str| {
        browser.eval(&format!(
            "document.querySelector('#workers tr[data-worker=\"{worker}\"]').textContent"
        ))
    };
    let two = row("worker-2");
    assert!(
        two.as_str()
            .is_some_and(|t| t.contains("lost") && t.contains("ssh-host-02")),
        "{two}"
    );
    let one = row("worker-1");
    assert!(
        one.as_str()
            .is_some_and(|t| t.contains("alive") && t.contains("ssh-host-01")),
        "{one}"
    );
}
