//! `dispatcher run`: one job, here and now, with the results printed.

use std::path::PathBuf;

use crate::out::{errln, errprint};
use crate::summary::{self, Paint};
use crate::{exit, out};
use lab::Lab;
use runner::formats::ResultsFormat;
use runner::oneshot::{OneShot, OneShotError, describe_files};
use runner::validation::JobPolicy;

/// What `dispatcher run` was asked.
pub struct RunRequest {
    pub job: PathBuf,
    pub devices: PathBuf,
    pub device_types: Option<PathBuf>,
    pub device: Option<String>,
    pub state_dir: PathBuf,
    pub lab_key: PathBuf,
    pub node_agent: Option<PathBuf>,
    pub host_dir: String,
    /// `None`: the terminal summary.
    pub format: Option<ResultsFormat>,
}

/// Ctrl-C, or SIGTERM where there are Unix signals: what stops `run` and `serve`.
pub(crate) async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Runs the job; exit 0 when it completed with no failed case, 1 when a case failed or
/// the job is invalid, 2 when an input is unreadable, 3 when the job is incomplete.
pub fn run(request: &RunRequest) -> u8 {
    let source = request.job.display().to_string();
    let text = match std::fs::read_to_string(&request.job) {
        Ok(text) => text,
        Err(err) => {
            errln!("error: cannot read {source}: {err}");
            return exit::UNREADABLE;
        }
    };
    let types = match &request.device_types {
        Some(dir) => Lab::load(dir, Some(&request.devices)),
        None => Lab::load_with_builtin_types(&request.devices),
    };
    let lab = match types {
        Ok((lab, _warnings)) => lab,
        Err(report) => {
            errprint!("{}", report.render());
            errln!("error: the lab configuration is not valid");
            return exit::UNREADABLE;
        }
    };
    let node_agent = request.node_agent.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("node-agent-static")))
            .unwrap_or_else(|| PathBuf::from("node-agent-static"))
    });
    if !node_agent.is_file() {
        errln!(
            "error: no static node agent at {} (build it with scripts/build-node-agent-static.sh, or pass --node-agent)",
            node_agent.display()
        );
        return exit::UNREADABLE;
    }
    let oneshot = OneShot {
        lab,
        device: request.device.clone(),
        jobs_dir: request.state_dir.join("jobs"),
        image_store: request.state_dir.join("images"),
        node_agent,
        lab_key: request.lab_key.clone(),
        known_hosts: request.state_dir.join("known_hosts"),
        host_dir: request.host_dir.clone(),
        policy: JobPolicy::default(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            errln!("error: cannot start the runtime: {err}");
            return exit::UNREADABLE;
        }
    };
    let outcome = runtime.block_on(async {
        // Ctrl-C or SIGTERM cancels the job, which stops what it started (qemu on
        // this machine, VMs on a host) before the process ends, as the daemon does.
        let (cancel, canceled) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop_signal().await;
            errln!("canceling the job: stopping its VMs and devices (again to quit now)");
            let _ = cancel.send(true);
            stop_signal().await;
            std::process::exit(i32::from(exit::INCOMPLETE));
        });
        oneshot.run(&source, &text, canceled).await
    });
    match outcome {
        Err(OneShotError::Invalid(report)) => {
            errprint!("{report}");
            exit::PROBLEMS
        }
        Err(err) => {
            errln!("error: {err}");
            exit::UNREADABLE
        }
        Ok(ran) => {
            if let Some(format) = request.format {
                out::line(format.render(&ran.report).trim_end());
            } else {
                out::text(summary::render(&ran.report, Paint::for_stdout()));
                out::line(describe_files(&ran.job_dir));
            }
            summary::exit_status(&ran.report)
        }
    }
}
