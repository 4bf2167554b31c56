//! The CLI's side of the HTTP API: `submit`, `status`, `logs`, `cancel`, `results`,
//! `devices`, each one request (or one followed stream) to a daemon.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use runner::formats::ResultsFormat;
use serde_json::Value;

use crate::exit;

/// Where the daemon is and how to prove who we are.
pub struct Server {
    pub url: String,
    pub token: Option<String>,
}

enum Failure {
    /// The daemon answered with an error status.
    Refused(u16, Value),
    Unreachable(String),
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

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Unreachable(format!("{}: {e}", self.url)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::Unreachable(format!("unreadable answer: {e}")))?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Unreachable(format!("unreadable answer: {e}")))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(Failure::Refused(status.as_u16(), body))
        }
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

    /// Prints the job log's lines from `from`, following it until the job ends when
    /// asked; returns how many lines were printed.
    async fn print_log(&self, id: u64, follow: bool, node: Option<&str>) -> Result<usize, Failure> {
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
        let mut printed = 0;
        let mut painter = Painter::for_stdout();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Failure::Unreachable(e.to_string()))?;
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let Ok(line) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if node.is_some_and(|wanted| line["node"].as_str() != Some(wanted)) {
                    continue;
                }
                println!("{}", painter.render(&line));
                printed += 1;
            }
        }
        Ok(printed)
    }
}

/// Renders log lines as `12:00:01.234 [server] info: start: boot`, each node in a colour
/// of its own when the output is a terminal, so interleaved nodes stay apart.
struct Painter {
    colour: bool,
    nodes: Vec<String>,
}

/// ANSI colours for nodes, in the order nodes first appear.
const NODE_COLOURS: [u8; 6] = [36, 32, 33, 35, 34, 31];

impl Painter {
    fn for_stdout() -> Self {
        use std::io::IsTerminal;
        Self {
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            nodes: Vec::new(),
        }
    }

    fn render(&mut self, line: &Value) -> String {
        let time = line["dt"].as_str().unwrap_or("").get(11..23).unwrap_or("");
        let node = match line["node"].as_str() {
            None => String::new(),
            Some(name) if self.colour => {
                let index = match self.nodes.iter().position(|n| n == name) {
                    Some(index) => index,
                    None => {
                        self.nodes.push(name.to_string());
                        self.nodes.len() - 1
                    }
                };
                let code = NODE_COLOURS[index % NODE_COLOURS.len()];
                format!(" \x1b[1;{code}m[{name}]\x1b[0m")
            }
            Some(name) => format!(" [{name}]"),
        };
        format!(
            "{time}{node} {}: {}",
            line["lvl"].as_str().unwrap_or("?"),
            line["msg"].as_str().unwrap_or("")
        )
    }
}

fn report(failure: Failure) -> u8 {
    match failure {
        Failure::Unreachable(message) => {
            eprintln!("error: cannot reach the dispatcher: {message}");
            exit::SERVER
        }
        Failure::Refused(400, body) => {
            if let Some(report) = body["report"].as_str() {
                eprint!("{report}");
            }
            eprintln!("error: {}", body["error"].as_str().unwrap_or("refused"));
            exit::PROBLEMS
        }
        Failure::Refused(status, body) => {
            eprintln!(
                "error: the dispatcher answered {status}: {}",
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
        .map_err(|e| eprintln!("error: cannot start the runtime: {e}"))
        .ok()
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `dispatcher submit JOB [--follow]`.
pub fn submit(server: &Server, job: &Path, follow: bool) -> u8 {
    let text = match std::fs::read(job) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("error: cannot read {}: {err}", job.display());
            return exit::UNREADABLE;
        }
    };
    let Some(runtime) = runtime() else {
        return exit::SERVER;
    };
    runtime.block_on(async {
        let created = match server.post("jobs", text).await {
            Ok(created) => created,
            Err(failure) => return report(failure),
        };
        let id = created["id"].as_u64().unwrap_or(0);
        println!("job {id} submitted");
        if !follow {
            return exit::OK;
        }
        if let Err(failure) = server.print_log(id, true, None).await {
            return report(failure);
        }
        match server.get(&format!("jobs/{id}/results")).await {
            Ok(results) => print_results(&results),
            Err(failure) => report(failure),
        }
    })
}

/// Prints a finished job's summary; the exit status says how it went (as `run`'s).
fn print_results(results: &Value) -> u8 {
    let state = &results["state"];
    let Some(report) = results["results"].as_object() else {
        println!(
            "job {}: {}",
            results["id"],
            state["state"].as_str().unwrap_or("?")
        );
        return if state["health"] == "complete" {
            exit::OK
        } else {
            3
        };
    };
    let mut failed = false;
    for node in report
        .get("nodes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for case in node["results"].as_array().into_iter().flatten() {
            let result = case["result"].as_str().unwrap_or("unknown");
            failed |= result == "fail";
            println!(
                "{}.{}.{} -- {}",
                node["node"].as_str().unwrap_or("?"),
                case["suite"].as_str().unwrap_or("?"),
                case["case"].as_str().unwrap_or("?"),
                result.to_uppercase()
            );
        }
    }
    let health = report.get("health").and_then(Value::as_str).unwrap_or("?");
    println!("job {}: {health}", results["id"]);
    if let Some(error) = report.get("error").and_then(Value::as_str) {
        println!(
            "  [{}] {error}",
            report
                .get("error_class")
                .and_then(Value::as_str)
                .unwrap_or("?")
        );
    }
    match (health, failed) {
        ("complete", false) => exit::OK,
        ("complete", true) => exit::PROBLEMS,
        _ => 3,
    }
}

/// `status ID`, `results ID`, `devices`, `cancel ID`: one request, its answer printed.
pub fn simple(server: &Server, what: Simple) -> u8 {
    let Some(runtime) = runtime() else {
        return exit::SERVER;
    };
    runtime.block_on(async {
        let answer = match what {
            Simple::Status(id) => server.get(&format!("jobs/{id}")).await,
            Simple::Results(id) => server.get(&format!("jobs/{id}/results")).await,
            Simple::Devices => server.get("devices").await,
            Simple::Reload => server.post("lab/reload", Vec::new()).await,
            Simple::Device(name) => server.get(&format!("devices/{}", segment(&name))).await,
            Simple::SetHealth {
                device,
                health,
                reason,
            } => {
                let body = serde_json::json!({ "health": health, "reason": reason });
                server
                    .put(
                        &format!("devices/{}/health", segment(&device)),
                        body.to_string().into_bytes(),
                    )
                    .await
            }
            Simple::Cancel(id) => server.post(&format!("jobs/{id}/cancel"), Vec::new()).await,
            Simple::Resubmit(id) => {
                server
                    .post(&format!("jobs/{id}/resubmit"), Vec::new())
                    .await
            }
        };
        match answer {
            Ok(value) => {
                print_json(&value);
                exit::OK
            }
            Err(failure) => report(failure),
        }
    })
}

pub enum Simple {
    Status(u64),
    Results(u64),
    Devices,
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

/// `name` as one path segment of a URL (a hostname could hold anything).
fn segment(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes()).collect()
}

/// `results ID --format junit|tap`: the text as the daemon renders it.
pub fn results_as(server: &Server, id: u64, format: ResultsFormat) -> u8 {
    let Some(runtime) = runtime() else {
        return exit::SERVER;
    };
    let name = match format {
        ResultsFormat::Junit => "junit",
        ResultsFormat::Tap => "tap",
        ResultsFormat::Json => "json",
    };
    runtime.block_on(async {
        let request = match server.request(
            reqwest::Method::GET,
            &format!("jobs/{id}/results?format={name}"),
        ) {
            Ok(request) => request,
            Err(failure) => return report(failure),
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return report(Failure::Unreachable(format!("{}: {e}", server.url))),
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            print!("{text}");
            exit::OK
        } else {
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            report(Failure::Refused(status.as_u16(), body))
        }
    })
}

/// `logs ID [--follow]`.
pub fn logs(server: &Server, id: u64, follow: bool, node: Option<&str>) -> u8 {
    let Some(runtime) = runtime() else {
        return exit::SERVER;
    };
    runtime.block_on(async {
        match server.print_log(id, follow, node).await {
            Ok(_) => exit::OK,
            Err(failure) => report(failure),
        }
    })
}
