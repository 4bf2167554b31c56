//! The daemon as a lab runs it: `dispatcher serve` as a real process with its SQLite
//! database, its HTTP API spoken over real sockets (and by the `dispatcher` CLI), jobs
//! scheduled onto `ssh-host` devices (sshd in network namespaces) and run on real
//! qemu; and a daemon killed mid-job that, restarted, has lost nothing submitted.
//!
//! One module a concern; the lab, the daemon, its API client and the jobs are the
//! harness's (`system_tests`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

/// Tokens, the API, the CLI, results, the web page and the metrics, on a whole job.
mod api;
/// The `dispatcher` client as people and scripts use it: tables, exit statuses, pipes.
mod cli;
/// A standalone coordinator restarted under a job, or refusing the daemon.
mod coordinator;
/// A VM killed, the SSH connection dropped, a test shell hung: the job fails, the
/// group is released, the device cleaned and back in the pool.
mod faults;
/// Health checks: a device's check decides its health; failures are blamed by class.
mod health;
/// Lab files under a running daemon: a broken one, reloads.
mod lab_files;
/// The limits of the daemon's configuration on submitted jobs.
mod limits;
/// Generated malformed jobs (proptest) get clear 4xx answers.
mod malformed_jobs;
/// A job's end told: callbacks, mail, resubmission and automatic retries.
mod notify;
/// Many jobs on a few devices: each runs once, one at a time per device.
mod queue;
/// A daemon killed or stopped mid-job, and started again.
mod restart;
/// The web page in headless Chromium: sign-in, a job's page, the job list, devices.
mod web;
/// Several workers sharing one PostgreSQL database.
mod workers;

/// What a job's log says once its client VM's test shell runs.
const CLIENT_TESTING: &str = "\"node\":\"client\",\"msg\":\"start: test\"";
