//! Dispatcher overhead: from `POST /api/v1/jobs` to every VM of a host + 2 VMs group at
//! its shell prompt, against the same qemu commands started by hand (over `ssh -tt`, both
//! at once) reaching their prompts on the same host in the same run.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use regex::Regex;
use serde_json::Value;

use crate::lab::{Lab, seed_job};
use crate::report::Table;
use crate::stats::Sample;

const RUNS: usize = 3;

/// Seconds since the epoch of a job log time (RFC 3339 UTC with milliseconds).
fn epoch_seconds(dt: &str) -> Option<f64> {
    let at = humantime::parse_rfc3339(dt).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_secs_f64())
}

/// What one dispatcher run showed: time from POST to the last VM prompt, and the
/// commands it launched the VMs with (directory, command).
struct DispatcherRun {
    to_prompts: Duration,
    launches: Vec<(String, String)>,
}

fn dispatcher_run(lab: &Lab, job: &str) -> Result<DispatcherRun, String> {
    let posted = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    let id = lab.api.submit(job)?;
    // The log's lines that carry a message.
    let lines: Vec<Value> = lab
        .api
        .follow_log(id)?
        .into_iter()
        .filter(|v| v.get("msg").is_some())
        .collect();
    let health = lab.api.job(id)?["state"]["health"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if health != "complete" {
        return Err(format!("job {id} ended {health}"));
    }
    let launch = Regex::new(r"^launching \(in (.*?)\): (.*)$").map_err(|e| e.to_string())?;
    let msg = |l: &Value| l["msg"].as_str().unwrap_or_default().to_string();
    let prompts: Vec<f64> = lines
        .iter()
        .filter(|l| msg(l) == "at the shell prompt")
        .filter_map(|l| epoch_seconds(l["dt"].as_str()?))
        .collect();
    if prompts.len() != 2 {
        return Err(format!(
            "job {id}: {} VM prompts in the log, expected 2",
            prompts.len()
        ));
    }
    let launches = lines
        .iter()
        .filter_map(|l| {
            let text = msg(l);
            let c = launch.captures(&text)?;
            Some((c[1].to_string(), c[2].to_string()))
        })
        .collect();
    let last = prompts.iter().copied().fold(f64::MIN, f64::max);
    Ok(DispatcherRun {
        to_prompts: Duration::from_secs_f64((last - posted.as_secs_f64()).max(0.0)),
        launches,
    })
}

/// Starts `command` in `dir` on the host by hand over OpenSSH; returns the ssh process
/// and a channel that gets a message when `prompt` shows on its console.
fn by_hand(
    lab: &Lab,
    dir: &str,
    command: &str,
    prompt: &Regex,
) -> Result<(Child, mpsc::Receiver<()>), String> {
    let mut child = Command::new("ssh")
        .args([
            "-tt",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(&system_tests::test_images().lab_key)
        .arg(format!("root@{}", lab.ssh.host.address))
        .arg(format!("mkdir -p {dir} && cd {dir} && exec {command}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("ssh: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    let prompt = prompt.clone();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                return;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if prompt.is_match(&seen) {
                let _ = tx.send(());
                // Keep reading so qemu never blocks on a full console.
                while matches!(stdout.read(&mut buf), Ok(n) if n > 0) {}
                return;
            }
        }
    });
    Ok((child, rx))
}

fn hand_run(lab: &Lab, launches: &[(String, String)], prompt: &Regex) -> Result<Duration, String> {
    let started = Instant::now();
    let mut children = Vec::new();
    for (dir, command) in launches {
        children.push(by_hand(lab, dir, command, prompt)?);
    }
    let mut result = Ok(());
    for (_, ready) in &children {
        if ready.recv_timeout(Duration::from_secs(300)).is_err() {
            result = Err("a VM started by hand never showed its prompt".to_string());
        }
    }
    let took = started.elapsed();
    // Closing the ssh sessions hangs up the consoles, and qemu with them.
    for (mut child, _) in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    if !lab.ssh.host.until_no_qemu(Duration::from_secs(30)) {
        return Err("qemu started by hand did not stop".into());
    }
    result.map(|()| took)
}

pub fn run(lab: &Lab) -> Result<Table, String> {
    let job = seed_job()?;
    let prompt_text = job["vm_group"]["vms"][0]["shell_prompt"]
        .as_str()
        .unwrap_or("# $");
    // The console stream goes on after the prompt; match it anywhere.
    let prompt = Regex::new(prompt_text.trim_end_matches('$')).map_err(|e| e.to_string())?;
    let job = job.to_string();
    // A first job puts the images into the host's cache, as in a lab after its first
    // job of the day; it is not counted.
    eprintln!("bench: overhead, warm-up job");
    dispatcher_run(lab, &job)?;
    let (mut ours, mut hand, mut overhead) = (vec![], vec![], vec![]);
    for run in 0..RUNS {
        eprintln!("bench: overhead, run {}", run + 1);
        let d = dispatcher_run(lab, &job)?;
        if d.launches.len() != 2 {
            return Err(format!(
                "{} VM launches in the log, expected 2",
                d.launches.len()
            ));
        }
        let h = hand_run(lab, &d.launches, &prompt)?;
        overhead.push(d.to_prompts.saturating_sub(h));
        ours.push(d.to_prompts);
        hand.push(h);
    }
    let (ours, hand, overhead) = (Sample::new(ours), Sample::new(hand), Sample::new(overhead));
    let mut table = Table::new(
        "Dispatcher overhead: a host and 2 VMs, POST to every VM prompt",
        "bash scripts/bench.sh overhead",
        &["what", "runs", "median", "max"],
    );
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    for (what, s) in [
        ("POST /api/v1/jobs to both VM prompts (dispatcher)", &ours),
        (
            "the same qemu commands by hand over ssh, to both prompts",
            &hand,
        ),
        ("overhead (dispatcher minus by hand, per run)", &overhead),
    ] {
        table.row(vec![
            what.into(),
            s.len().to_string(),
            secs(s.median()),
            secs(s.quantile(1.0)),
        ]);
    }
    table.notes.push(
        "The host is an `ssh-host` device (sshd in a network namespace) and the guests boot \
         under TCG; the dispatcher's time includes validation, queueing, scheduling, the \
         SSH connection, the image cache check, and launching both VMs. The commands by \
         hand are the ones the dispatcher logged (`launching (in DIR): ...`). A warm-up job \
         fills the host's image cache first."
            .into(),
    );
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_parse_to_epoch_seconds() {
        assert_eq!(epoch_seconds("1970-01-01T00:00:01.500Z"), Some(1.5));
        assert_eq!(
            epoch_seconds("2000-03-01T00:00:00.000Z"),
            Some(951_868_800.0)
        );
        assert_eq!(epoch_seconds("not a time"), None);
    }
}
