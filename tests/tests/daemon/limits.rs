use serde_json::Value;
use system_tests::{SshLab, diagnostic_pointers};

/// The limits in the daemon's configuration apply to submitted jobs, each refusal
/// naming the limit and where the job crosses it.
#[test]
fn configured_limits_refuse_jobs_past_them() {
    let lab = SshLab::new();
    let mut config = std::fs::read_to_string(&lab.config).unwrap();
    config.push_str("max_group_size = 2\nmax_count = 1\n");
    std::fs::write(&lab.config, config).unwrap();
    let (_daemon, api) = lab.serve();
    // The seed job: a host and two VMs, three nodes.
    let (status, answer) = api
        .request("POST", "/api/v1/jobs", lab.seed_job().as_bytes())
        .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(
        diagnostic_pointers(&answer).contains(&"/vm_group/vms".to_string()),
        "{answer}"
    );
    assert!(answer.contains("at most 2 nodes in one job"), "{answer}");
    let mut job: Value = serde_json::from_str(&lab.seed_job()).unwrap();
    job["vm_group"]["vms"][0]["count"] = Value::from(2);
    let (status, answer) = api
        .request("POST", "/api/v1/jobs", job.to_string().as_bytes())
        .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(
        diagnostic_pointers(&answer)
            .iter()
            .any(|p| p == "/vm_group/vms/0/count"),
        "{answer}"
    );
}
