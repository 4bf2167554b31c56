//! `dispatcher serve` and `dispatcher token create`: the daemon's process side.

use std::path::Path;

use dispatcher::daemon::{Daemon, DaemonConfig};
use store::TokenScope;

use crate::out::{errln, errprint};
use crate::{exit, out};

/// Runs the daemon until SIGINT or SIGTERM, then shuts it down gracefully (running
/// jobs canceled and cleaned up, queued jobs kept).
pub fn serve(config: &Path) -> u8 {
    let config = match DaemonConfig::load(config) {
        Ok(config) => config,
        Err(err) => {
            errln!("error: {err}");
            return exit::UNREADABLE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            errln!("error: cannot start the runtime: {err}");
            return exit::UNREADABLE;
        }
    };
    runtime.block_on(async {
        let daemon = match Daemon::start(config).await {
            Ok(daemon) => daemon,
            Err(err) => {
                errln!("error: {err}");
                return exit::PROBLEMS;
            }
        };
        // Tests and scripts read the address from here (the port may be 0 in the file).
        out::line(format!("listening on http://{}", daemon.addr));
        // SIGHUP reads the lab files again, as `dispatcher devices reload` does.
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hangups) => Some(hangups),
                Err(err) => {
                    errln!("warning: SIGHUP will not reload the lab: {err}");
                    None
                }
            };
        let stop = crate::run::stop_signal();
        tokio::pin!(stop);
        let mut fenced = false;
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(hangups) => hangups.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut stop => break,
                () = daemon.shared.fenced.notified() => {
                    fenced = true;
                    break;
                }
                Some(()) = hangup => match daemon.shared.reload().await {
                    Ok(reloaded) => errln!(
                        "lab reloaded: {} device(s), {} refused",
                        reloaded.devices.len(),
                        reloaded.refused.len()
                    ),
                    Err(err) => errln!("error: reloading the lab: {err}"),
                },
            }
        }
        if fenced {
            errln!(
                "error: this worker was declared lost by the others (its jobs were ended \
                 meanwhile): stopping; started again, it rejoins"
            );
        } else {
            errln!("shutting down: canceling running jobs, keeping queued ones");
        }
        daemon.shutdown().await;
        if fenced { exit::PROBLEMS } else { exit::OK }
    })
}

/// `serve --check`: the configuration and the lab, checked as the daemon's start
/// checks them; the lab files' problems printed (a device whose file has errors stays
/// offline, the daemon starts all the same).
pub fn check(path: &Path) -> u8 {
    let config = match DaemonConfig::load(path) {
        Ok(config) => config,
        Err(err) => {
            errln!("error: {err}");
            return exit::PROBLEMS;
        }
    };
    match dispatcher::daemon::check(&config) {
        Ok((lab, report)) => {
            if !report.files.is_empty() {
                errprint!("{}", report.render());
            }
            out::line(format!(
                "ok: {} would start: {} device type(s), {} device(s) in use, {} device \
                 file(s) refused",
                path.display(),
                lab.device_types.len(),
                lab.devices.len(),
                report
                    .files
                    .iter()
                    .filter(|f| f.report.error_count() > 0)
                    .count()
            ));
            exit::OK
        }
        Err(err) => {
            errln!("error: {err}");
            exit::PROBLEMS
        }
    }
}

/// Makes an API token in the daemon's database and prints it (once).
pub fn token_create(config: &Path, name: &str, read_only: bool) -> u8 {
    let config = match DaemonConfig::load(config) {
        Ok(config) => config,
        Err(err) => {
            errln!("error: {err}");
            return exit::UNREADABLE;
        }
    };
    if let Err(err) = std::fs::create_dir_all(&config.state_dir) {
        errln!("error: cannot create {}: {err}", config.state_dir.display());
        return exit::UNREADABLE;
    }
    let scope = if read_only {
        TokenScope::ReadOnly
    } else {
        TokenScope::ReadWrite
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            errln!("error: cannot start the runtime: {err}");
            return exit::UNREADABLE;
        }
    };
    let created = runtime.block_on(async {
        let store = dispatcher::daemon::database::open(&config).await?;
        store.create_token(name, scope).await
    });
    match created {
        Ok(token) => {
            out::line(&token);
            exit::OK
        }
        Err(err) => {
            errln!("error: {err}");
            exit::PROBLEMS
        }
    }
}
