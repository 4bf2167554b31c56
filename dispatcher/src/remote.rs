//! The CLI's side of the HTTP API: `submit`, `status`, `wait`, `logs`, `cancel`,
//! `results`, `devices`, each one request (or one followed stream) to a daemon, its
//! answer printed for a person (`--format json`: as the daemon sent it).
//!
//! Exit statuses follow the job where there is one to follow: `submit --follow`,
//! `wait`, `logs` and `status` of a finished job exit 0 when it completed with no
//! failed case, 1 when a case failed, 3 when it ended incomplete or canceled.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use runner::formats::ResultsFormat;
use runner::report::JobReport;
use serde_json::Value;

use crate::follow::Follower;
use crate::out::{errln, errprint};
use crate::summary::{self, Paint};
use crate::{exit, out, tables};

/// Where the daemon is and how to prove who we are.
pub struct Server {
    pub url: String,
    pub token: Option<String>,
}

/// How to print an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// For a person: tables, labelled fields, colour on a terminal.
    Text,
    /// The daemon's JSON, pretty-printed, for scripts.
    Json,
}

enum Failure {
    /// The daemon answered with an error status.
    Refused(u16, Value),
    Unreachable(String),
    /// The command line asks for something that cannot be (a node the job lacks).
    Usage(String),
}

impl Server {
    fn client() -> Result<reqwest::Client, Failure> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Failure::Unreachable(e.to_string()))
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, Failure> {
        let url = format!("{}/api/v1/{path}", self.url.trim_end_matches('/'));
        let mut request = Self::client()?.request(method, url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Token {token}"));
        }
        Ok(request)
    }

    /// The answer to `request` as text; an error status is [`Failure::Refused`] with
    /// its body (JSON where the daemon sent JSON).
    async fn send_text(&self, request: reqwest::RequestBuilder) -> Result<String, Failure> {
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Unreachable(format!("{}: {e}", self.url)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| Failure::Unreachable(format!("unreadable answer: {e}")))?;
        if !status.is_success() {
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(Failure::Refused(status.as_u16(), body));
        }
        Ok(text)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let text = self.send_text(request).await?;
        serde_json::from_str(&text)
            .map_err(|e| Failure::Unreachable(format!("unreadable answer: {e}")))
    }

    /// An answer that is text, not JSON (JUnit, TAP, a job's definition).
    async fn get_text(&self, path: &str) -> Result<String, Failure> {
        self.send_text(self.request(reqwest::Method::GET, path)?)
            .await
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.request(reqwest::Method::GET, path)?).await
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> Result<Value, Failure> {
        self.send(self.request(reqwest::Method::POST, path)?.body(body))
            .await
    }

    async fn put(&self, path: &str, body: Vec<u8>) -> Result<Value, Failure> {
        self.send(self.request(reqwest::Method::PUT, path)?.body(body))
            .await
    }

    /// Hands every line of job `id`'s log to `follower`, following it until the job
    /// ends when asked. Once stdout's reader has gone (`| head`) the lines are dropped
    /// but the job is still followed to its end, so the exit status is still its
    /// result.
    async fn read_log(
        &self,
        id: u64,
        follow: bool,
        follower: &mut Follower,
    ) -> Result<(), Failure> {
        let path = format!("jobs/{id}/log?follow={}", u8::from(follow));
        let response = self
            .request(reqwest::Method::GET, &path)?
            .send()
            .await
            .map_err(|e| Failure::Unreachable(format!("{}: {e}", self.url)))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap_or_default();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(Failure::Refused(status, body));
        }
        let mut stream = response.bytes_stream();
        let mut pending = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Failure::Unreachable(e.to_string()))?;
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(line) = serde_json::from_slice::<Value>(&line) {
                    follower.line(&line);
                }
            }
        }
        follower.finish();
        Ok(())
    }

    /// Job `id`'s results, read as a report (`None`: it has none, e.g. canceled while
    /// queued), with the job's state.
    async fn report(&self, id: u64) -> Result<(Value, Option<JobReport>), Failure> {
        let results = self.get(&format!("jobs/{id}/results")).await?;
        let report = serde_json::from_value(results["results"].clone()).ok();
        Ok((results["state"].clone(), report))
    }

    /// The nodes job `id` has, to check a `--node` against.
    async fn nodes(&self, id: u64) -> Result<Vec<String>, Failure> {
        let view = self.get(&format!("jobs/{id}")).await?;
        Ok(view["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["node"].as_str().map(str::to_string))
            .collect())
    }
}

fn report(failure: Failure) -> u8 {
    let paint = Paint::for_stderr();
    let error = paint.bad("error");
    match failure {
        Failure::Unreachable(message) => {
            errln!(
                "{error}: cannot reach the dispatcher: {message} (its address: --server or \
                 LAVA_DISPATCHER_URL)"
            );
            exit::SERVER
        }
        Failure::Usage(message) => {
            errln!("{error}: {message}");
            exit::USAGE
        }
        Failure::Refused(400, body) => {
            if let Some(report) = body["report"].as_str() {
                errprint!("{report}");
            }
            errln!("{error}: {}", body["error"].as_str().unwrap_or("refused"));
            exit::PROBLEMS
        }
        Failure::Refused(401, body) => {
            errln!(
                "{error}: the dispatcher wants an API token ({}): set LAVA_DISPATCHER_TOKEN or \
                 pass --token; an admin makes one with `dispatcher token create NAME --config \
                 FILE`",
                body["error"].as_str().unwrap_or("unauthorized")
            );
            exit::SERVER
        }
        Failure::Refused(status, body) => {
            errln!(
                "{error}: the dispatcher answered {status}: {}",
                body["error"].as_str().unwrap_or("")
            );
            exit::SERVER
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| errln!("error: cannot start the runtime: {e}"))
        .ok()
}

/// Runs `body` on a fresh runtime; a failure is reported and becomes the exit status.
fn block_on(body: impl std::future::Future<Output = Result<u8, Failure>>) -> u8 {
    let Some(runtime) = runtime() else {
        return exit::SERVER;
    };
    runtime.block_on(body).unwrap_or_else(report)
}

fn print_json(value: &Value) {
    out::line(serde_json::to_string_pretty(value).unwrap_or_default());
}

/// The exit status a job's state means, where no report says more: 0 complete (or not
/// finished yet), 3 incomplete or canceled.
fn state_status(state: &Value) -> u8 {
    match state["health"].as_str() {
        None | Some("complete") => exit::OK,
        Some(_) => exit::INCOMPLETE,
    }
}

/// A followed job's summary and the exit status it means; a job that is not over
/// when its followed log ended (the daemon stopped, or ended the stream) is an error,
/// not a result.
async fn finish(server: &Server, id: u64) -> Result<u8, Failure> {
    let (state, report) = server.report(id).await?;
    if state["state"].as_str() != Some("finished") {
        return Err(Failure::Unreachable(format!(
            "the log of job {id} ended before the job did (it is {}); follow it again \
             with `dispatcher wait {id}`",
            state["state"].as_str().unwrap_or("?")
        )));
    }
    let paint = Paint::for_stdout();
    match report {
        Some(report) => {
            out::text(summary::render(&report, paint));
            Ok(summary::exit_status(&report))
        }
        None => {
            out::line(format!("job {id}: {}", tables::job_state(&state, paint)));
            if let Some([class, message]) = state["error"].as_array().map(Vec::as_slice) {
                out::line(format!(
                    "  [{}] {}",
                    class.as_str().unwrap_or("?"),
                    message.as_str().unwrap_or("")
                ));
            }
            Ok(state_status(&state))
        }
    }
}

/// `dispatcher submit JOB [--follow]`.
pub fn submit(server: &Server, job: &Path, follow: bool) -> u8 {
    let text = match std::fs::read(job) {
        Ok(text) => text,
        Err(err) => {
            errln!("error: cannot read {}: {err}", job.display());
            return exit::UNREADABLE;
        }
    };
    block_on(async {
        let created = server.post("jobs", text).await?;
        let id = created["id"].as_u64().unwrap_or(0);
        out::line(format!("job {id} submitted"));
        if !follow {
            return Ok(exit::OK);
        }
        let mut follower = Follower::new(true, None, true);
        server.read_log(id, true, &mut follower).await?;
        finish(server, id).await
    })
}

/// `dispatcher wait ID`: until the job ends (progress on a terminal), then its summary.
pub fn wait(server: &Server, id: u64) -> u8 {
    block_on(async {
        let mut follower = Follower::new(false, None, true);
        server.read_log(id, true, &mut follower).await?;
        finish(server, id).await
    })
}

/// `dispatcher logs ID [--follow] [--node NODE]`.
pub fn logs(server: &Server, id: u64, follow: bool, node: Option<&str>) -> u8 {
    block_on(async {
        if let Some(node) = node {
            let nodes = server.nodes(id).await?;
            if !nodes.iter().any(|n| n == node) {
                return Err(Failure::Usage(format!(
                    "job {id} has no node {node:?}; its nodes: {}",
                    nodes.join(", ")
                )));
            }
        }
        let mut follower = Follower::new(true, node, follow);
        server.read_log(id, follow, &mut follower).await?;
        let state = server.get(&format!("jobs/{id}")).await?["state"].clone();
        if follow && state["state"].as_str() != Some("finished") {
            return Err(Failure::Unreachable(format!(
                "the log of job {id} ended before the job did (it is {})",
                state["state"].as_str().unwrap_or("?")
            )));
        }
        if state["health"].as_str() == Some("complete") {
            // A complete job whose case failed exits 1, as `submit --follow` does.
            let (_, report) = server.report(id).await?;
            return Ok(report.as_ref().map_or(exit::OK, summary::exit_status));
        }
        Ok(state_status(&state))
    })
}

/// `dispatcher status ID`.
pub fn status(server: &Server, id: u64, format: Format) -> u8 {
    block_on(async {
        let view = server.get(&format!("jobs/{id}")).await?;
        match format {
            Format::Json => print_json(&view),
            Format::Text => out::text(tables::job(&view, Paint::for_stdout())),
        }
        if view["state"]["health"].as_str() == Some("complete") {
            let failed = view["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|n| n["results"].as_array().into_iter().flatten())
                .any(|case| case["result"] == "fail");
            return Ok(if failed { exit::PROBLEMS } else { exit::OK });
        }
        Ok(state_status(&view["state"]))
    })
}

/// `dispatcher results ID [--format text|json|junit|tap]`.
pub fn results(server: &Server, id: u64, format: Option<ResultsFormat>) -> u8 {
    let name = match format {
        None => return block_on(results_text(server, id)),
        Some(ResultsFormat::Json) => "json",
        Some(ResultsFormat::Junit) => "junit",
        Some(ResultsFormat::Tap) => "tap",
    };
    block_on(async {
        let text = server
            .get_text(&format!("jobs/{id}/results?format={name}"))
            .await?;
        if name == "json" {
            match serde_json::from_str::<Value>(&text) {
                Ok(value) => print_json(&value),
                Err(_) => out::text(&text),
            }
        } else {
            out::text(&text);
        }
        Ok(exit::OK)
    })
}

async fn results_text(server: &Server, id: u64) -> Result<u8, Failure> {
    let (state, report) = server.report(id).await?;
    match report {
        Some(report) => {
            out::text(summary::render(&report, Paint::for_stdout()));
            Ok(exit::OK)
        }
        None => {
            out::line(format!(
                "job {id} has no results ({})",
                tables::job_state(&state, Paint::for_stdout())
            ));
            Ok(exit::OK)
        }
    }
}

/// `dispatcher jobs list`: one page of jobs, as a table and where it is in the whole.
pub fn jobs(server: &Server, query: &[(&str, String)], format: Format) -> u8 {
    block_on(async {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        let page = server.get(&format!("jobs?{query}")).await?;
        match format {
            Format::Json => print_json(&page),
            Format::Text => out::text(tables::jobs(&page, Paint::for_stdout())),
        }
        Ok(exit::OK)
    })
}

/// `dispatcher jobs definition ID`: the job's JSON as it was submitted.
pub fn definition(server: &Server, id: u64) -> u8 {
    block_on(async {
        let text = server.get_text(&format!("jobs/{id}/definition")).await?;
        out::text(&text);
        if !text.ends_with('\n') {
            out::line("");
        }
        Ok(exit::OK)
    })
}

/// The other requests: one call, its answer printed.
pub enum Simple {
    Devices,
    Workers,
    /// One device with its health history.
    Device(String),
    /// The lab files read again by the daemon.
    Reload,
    /// An admin's word on a device's health.
    SetHealth {
        device: String,
        health: String,
        reason: Option<String>,
    },
    Cancel(u64),
    /// The job submitted again, linked to the old one.
    Resubmit(u64),
}

pub fn simple(server: &Server, what: Simple, format: Format) -> u8 {
    block_on(async {
        let answer = match &what {
            Simple::Devices => server.get("devices").await?,
            Simple::Workers => server.get("workers").await?,
            Simple::Reload => server.post("lab/reload", Vec::new()).await?,
            Simple::Device(name) => server.get(&format!("devices/{}", segment(name))).await?,
            Simple::SetHealth {
                device,
                health,
                reason,
            } => {
                let body = serde_json::json!({ "health": health, "reason": reason });
                server
                    .put(
                        &format!("devices/{}/health", segment(device)),
                        body.to_string().into_bytes(),
                    )
                    .await?
            }
            Simple::Cancel(id) => {
                server
                    .post(&format!("jobs/{id}/cancel"), Vec::new())
                    .await?
            }
            Simple::Resubmit(id) => {
                server
                    .post(&format!("jobs/{id}/resubmit"), Vec::new())
                    .await?
            }
        };
        if format == Format::Json {
            print_json(&answer);
            return Ok(exit::OK);
        }
        let paint = Paint::for_stdout();
        let text = match what {
            Simple::Devices => tables::devices(&answer, paint),
            Simple::Workers => tables::workers(&answer, paint),
            Simple::Device(_) => tables::device(&answer, paint),
            Simple::Reload => {
                let refused = answer["refused"].as_array().map_or(0, Vec::len);
                let mut text = answer["problems"].as_str().unwrap_or("").to_string();
                text.push_str(&format!(
                    "lab reloaded: {} device(s) in use, {refused} device file(s) refused\n",
                    answer["devices"].as_array().map_or(0, Vec::len)
                ));
                text
            }
            Simple::SetHealth { .. } => {
                let reason = answer["reason"].as_str().unwrap_or("");
                format!(
                    "{}: health {}{}\n",
                    answer["hostname"].as_str().unwrap_or("?"),
                    answer["health"].as_str().unwrap_or("?"),
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({reason})")
                    }
                )
            }
            Simple::Cancel(id) => {
                format!("job {id}: {}\n", tables::job_state(&answer["state"], paint))
            }
            Simple::Resubmit(id) => format!(
                "job {} submitted (resubmitted from job {id})\n",
                answer["id"]
            ),
        };
        out::text(text);
        Ok(exit::OK)
    })
}

/// `name` as one path segment of a URL (a hostname could hold anything).
fn segment(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes()).collect()
}
