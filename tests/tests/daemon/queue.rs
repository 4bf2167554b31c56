use serde_json::Value;
use system_tests::{SshLab, e2e_job};

/// The job's id from a log line `job ID running on DEVICE`, and the device.
fn running_on(line: &Value) -> Option<(u64, String)> {
    let msg = line["msg"].as_str()?.strip_prefix("job ")?;
    let (id, device) = msg.split_once(" running on ")?;
    Some((id.parse().ok()?, device.to_string()))
}

/// 200 jobs submitted at once to a lab of 4 devices: every job runs exactly once and
/// completes, no device ever holds two jobs at a time, and 50 clients following the
/// last job's log (through its whole wait in the queue) each get all of it.
#[test]
fn two_hundred_jobs_on_four_devices_each_run_once() {
    let lab = SshLab::with_hosts(4);
    let (_daemon, api) = lab.serve();
    // The VM is a shell its launch_with starts on the host: the jobs are about the
    // queue, not about booting (its image is uploaded, and cached, all the same).
    let job = e2e_job("shell-vm.json", "ssh-host");
    let ids: Vec<u64> = (0..200).map(|_| api.submit(&job).unwrap()).collect();
    let last = ids[ids.len() - 1];
    let followers: Vec<_> = (0..50)
        .map(|_| {
            let api = api.clone();
            std::thread::spawn(move || api.follow_log(last).unwrap())
        })
        .collect();
    // Per device: (first log time, last log time, job) of every job it ran.
    let mut runs: std::collections::BTreeMap<String, Vec<(String, String, u64)>> =
        std::collections::BTreeMap::new();
    for &id in &ids {
        let log = api.follow_log(id).unwrap();
        let state = api.job_state(id).unwrap();
        assert_eq!(state["health"], "complete", "job {id}: {state}\n{log:#?}");
        let starts: Vec<(u64, String)> = log.iter().filter_map(running_on).collect();
        assert_eq!(starts.len(), 1, "job {id} ran once: {starts:?}");
        assert_eq!(starts[0].0, id);
        let time = |line: &Value| line["dt"].as_str().unwrap_or_default().to_string();
        runs.entry(starts[0].1.clone()).or_default().push((
            time(&log[0]),
            time(&log[log.len() - 1]),
            id,
        ));
    }
    assert_eq!(runs.len(), 4, "every device took jobs: {:?}", runs.keys());
    for (device, spans) in &mut runs {
        // RFC 3339 times of one format sort as they happened.
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{device} ran two jobs at once: {pair:?}"
            );
        }
    }
    let whole = api.follow_log(last).unwrap();
    for follower in followers {
        assert_eq!(follower.join().unwrap(), whole, "a follower missed lines");
    }
}
