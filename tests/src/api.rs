//! The one client of the daemon's HTTP API that the tests and the benchmarks use.

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A client of `dispatcher serve`'s API with a token, on `reqwest`: every request is
/// a fresh HTTP/1.1 connection (no connection is kept for the next one), as a script
/// or a CI job submitting with `curl` would make it. Errors are messages, so a
/// benchmark can report them; a test unwraps them.
#[derive(Clone)]
pub struct ApiClient {
    /// `http://ADDR`.
    url: String,
    token: String,
    client: reqwest::blocking::Client,
}

impl ApiClient {
    /// A client of the daemon at `url` (`http://ADDR`) sending `token`.
    pub fn new(url: &str, token: &str) -> Result<Self, String> {
        // The workspace's reqwest brings rustls without a crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .http1_only()
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(30))
            // A followed log is answered until its job ends.
            .timeout(None)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            client,
        })
    }

    /// `http://ADDR`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<reqwest::blocking::Response, String> {
        let method =
            reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| format!("{method}: {e}"))?;
        self.client
            .request(method.clone(), format!("{}{path}", self.url))
            .header("Authorization", format!("Token {}", self.token))
            .header("Content-Type", "application/json")
            .body(body.to_vec())
            .send()
            .map_err(|e| format!("{method} {path}: {e}"))
    }

    /// One request with the token: the status and the body.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, String), String> {
        let response = self.send(method, path, body)?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .map_err(|e| format!("{method} {path}: the answer: {e}"))?;
        Ok((status, text))
    }

    /// `GET path`, which must answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> Result<Value, String> {
        let (status, body) = self.request("GET", path, b"")?;
        if status != 200 {
            return Err(format!("GET {path}: HTTP {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}: {body}"))
    }

    /// Submits a job (JSON text): the daemon's answer (`id`, `nodes`, `warnings` ...),
    /// an error unless it is 201.
    pub fn submit_answer(&self, job: &str) -> Result<Value, String> {
        let (status, body) = self.request("POST", "/api/v1/jobs", job.as_bytes())?;
        if status != 201 {
            return Err(format!("submit: HTTP {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("submit: {e}: {body}"))
    }

    /// Submits a job (JSON text): its id.
    pub fn submit(&self, job: &str) -> Result<u64, String> {
        let answer = self.submit_answer(job)?;
        answer["id"]
            .as_u64()
            .ok_or_else(|| format!("no id in {answer}"))
    }

    /// `GET /api/v1/jobs/ID`.
    pub fn job(&self, id: u64) -> Result<Value, String> {
        self.get_json(&format!("/api/v1/jobs/{id}"))
    }

    /// The job's `state` object (`state`, `health`, `error` ...).
    pub fn job_state(&self, id: u64) -> Result<Value, String> {
        Ok(self.job(id)?["state"].clone())
    }

    /// Polls the job until its state is `state` (`running`, `finished` ...), at most
    /// `within`; returns its `state` object.
    pub fn wait_for_state(&self, id: u64, state: &str, within: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + within;
        loop {
            let now = self.job_state(id)?;
            if now["state"] == state {
                return Ok(now);
            }
            if Instant::now() > deadline {
                return Err(format!("job {id} is not {state} after {within:?}: {now}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET /api/v1/devices`.
    pub fn devices(&self) -> Result<Value, String> {
        self.get_json("/api/v1/devices")
    }

    /// Sets a device's health (`good`, `bad`, `maintenance` ...), as an admin.
    pub fn set_health(&self, device: &str, health: &str) -> Result<(), String> {
        let body = serde_json::json!({ "health": health }).to_string();
        let path = format!("/api/v1/devices/{device}/health");
        let (status, answer) = self.request("PUT", &path, body.as_bytes())?;
        if status != 200 {
            return Err(format!("PUT {path}: HTTP {status}: {answer}"));
        }
        Ok(())
    }

    /// The whole log of a job, followed until the job ends (the daemon closes the
    /// stream then): its lines, in order.
    pub fn follow_log(&self, id: u64) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/jobs/{id}/log?follow=1");
        let (status, body) = self.request("GET", &path, b"")?;
        if status != 200 {
            return Err(format!("GET {path}: HTTP {status}: {body}"));
        }
        body.lines()
            .map(|l| serde_json::from_str(l).map_err(|e| format!("job {id}: log line {l:?}: {e}")))
            .collect()
    }

    /// Follows the job's log until a line contains `needle`; an error when the log
    /// ends first.
    pub fn follow_until(&self, id: u64, needle: &str) -> Result<(), String> {
        let path = format!("/api/v1/jobs/{id}/log?follow=1");
        let mut response = self.send("GET", &path, b"")?;
        if response.status() != 200 {
            return Err(format!("GET {path}: HTTP {}", response.status()));
        }
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            let n = response
                .read(&mut buf)
                .map_err(|e| format!("GET {path}: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "the log of job {id} ended before {needle:?}: {seen}"
                ));
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Ok(())
    }
}
