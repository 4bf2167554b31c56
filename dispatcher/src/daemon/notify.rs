//! Telling the world a job ended: its `callbacks` (HTTP requests with the job's state
//! and, as asked, its results or log, signed with an HMAC of the body), its `notify`
//! and `notify_on_incomplete` mail (LAVA v1's keys, through the lab's SMTP relay), and
//! the automatic resubmission of a job that ended `infrastructure`
//! (`retry_infrastructure`).
//!
//! Deliveries run in tasks of their own after the job's end is recorded, so a slow or
//! failing receiver never holds up the scheduler or the next job; each callback is
//! retried with back-off while its receiver fails (5xx), cannot be reached or does not
//! answer in time, and stops at its first answer that is not a server error. (A
//! receiver that acts on a request but answers too late gets it again: each body
//! carries the job's id.) Redirects are not followed: they would carry the body and
//! the token to another host.

use std::sync::Arc;
use std::time::Duration;

use job_schemas::{Callback, CallbackMethod, Dataset, Job};
use ring::hmac;
use serde_json::{Value, json};
use states::{ErrorClass, Health, JobState};

use super::Shared;

/// The header with the body's signature: `sha256=` and the HMAC-SHA256 of the body,
/// keyed by the callback's token, in lowercase hex.
pub const SIGNATURE_HEADER: &str = "X-Lava-Signature";

/// The most of a job's log a callback carries: the newest lines within it.
const MAX_CALLBACK_LOG_BYTES: usize = 1024 * 1024;

/// The longest wait between two attempts of one callback.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Everything a job's end sets off: its callbacks and mail, in tasks of their own.
pub fn job_ended(shared: &Arc<Shared>, job_id: u64, job: &Job) {
    if job.callbacks.is_empty() && job.notify.is_empty() && job.notify_on_incomplete.is_empty() {
        return;
    }
    let (shared, job) = (shared.clone(), job.clone());
    tokio::spawn(async move {
        let record = match shared.store.job(job_id).await {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(err) => {
                tracing::error!(job = job_id, %err, "cannot read the ended job to notify");
                return;
            }
        };
        let state = summary_json(&record.summary);
        // Read once, off the async threads, for every callback that asks for it.
        let log = if job.callbacks.iter().any(|c| c.dataset == Dataset::Log) {
            let path = shared.config.job_dir(job_id).join("job.log");
            tokio::task::spawn_blocking(move || log_tail(&path))
                .await
                .unwrap_or_default()
        } else {
            String::new()
        };
        for callback in &job.callbacks {
            let body = callback_body(&state, &record, &log, callback.dataset);
            tokio::spawn(deliver(shared.clone(), job_id, callback.clone(), body));
        }
        let incomplete = matches!(&record.summary.state,
            JobState::Finished(o) if o.health == Health::Incomplete);
        let mut to: Vec<String> = job.notify.clone();
        if incomplete {
            to.extend(job.notify_on_incomplete.iter().cloned());
        }
        to.sort();
        to.dedup();
        if !to.is_empty() {
            mail(&shared, job_id, &record, &to).await;
        }
    });
}

/// The job's state as every callback carries it.
fn summary_json(summary: &store::JobSummary) -> Value {
    let (health, error) = match &summary.state {
        JobState::Finished(outcome) => (Some(outcome.health), outcome.error.clone()),
        _ => (None, None),
    };
    json!({
        "id": summary.id,
        "name": summary.name,
        "state": summary.state.name(),
        "health": health,
        "error_class": error.as_ref().map(|(class, _)| *class),
        "error": error.map(|(_, message)| message),
        "submitted_at": summary.submitted_at,
        "started_at": summary.started_at,
        "ended_at": summary.ended_at,
        "resubmitted_from": summary.resubmitted_from,
    })
}

/// A callback's body: the state, with the results or the log's newest lines if asked.
fn callback_body(state: &Value, record: &store::JobRecord, log: &str, dataset: Dataset) -> Vec<u8> {
    let mut body = state.clone();
    match dataset {
        Dataset::State => {}
        Dataset::Results => body["results"] = record.results.clone().unwrap_or(Value::Null),
        Dataset::Log => body["log"] = Value::String(log.to_string()),
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The newest whole lines of the log at `path`, at most [`MAX_CALLBACK_LOG_BYTES`]
/// (only they are read); empty when there is none.
fn log_tail(path: &std::path::Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = length.saturating_sub(MAX_CALLBACK_LOG_BYTES as u64);
    let mut tail = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut tail).is_err() {
        return String::new();
    }
    // From the first whole line, when the tail starts mid-line.
    let from = match (start, tail.iter().position(|b| *b == b'\n')) {
        (0, _) | (_, None) => 0,
        (_, Some(end)) => end + 1,
    };
    String::from_utf8_lossy(&tail[from..]).into_owned()
}

/// `sha256=HEX` of `body` keyed by `token`.
pub fn signature(token: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// Sends one callback until its receiver answers anything but a server error, at most
/// `callback_attempts` times, 1 s, 2 s, 4 s... apart.
async fn deliver(shared: Arc<Shared>, job_id: u64, callback: Callback, body: Vec<u8>) {
    let fetch = shared.lab().policy.fetch.clone();
    let client = match fetch.http_client_no_redirects() {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(job = job_id, %err, "no HTTP client for callbacks");
            return;
        }
    };
    let attempts = shared.config.callback_attempts.max(1);
    let mut backoff = Duration::from_secs(1);
    for attempt in 1..=attempts {
        let method = match callback.method {
            CallbackMethod::Post => reqwest::Method::POST,
            CallbackMethod::Put => reqwest::Method::PUT,
        };
        let mut request = client
            .request(method, &callback.url)
            .timeout(Duration::from_secs(30))
            .header("Content-Type", "application/json")
            .body(body.clone());
        if let Some(token) = &callback.token {
            request = request
                .header(callback.token_header.as_str(), token.as_str())
                .header(SIGNATURE_HEADER, signature(token, &body));
        }
        let outcome = match request.send().await {
            Ok(answer) if answer.status().is_server_error() => {
                Err(format!("HTTP {}", answer.status()))
            }
            Ok(answer) => Ok(answer.status()),
            // Worth another try: no connection, or no answer in time.
            Err(err) if err.is_connect() || err.is_timeout() => Err(err.to_string()),
            Err(err) => {
                tracing::error!(job = job_id, url = %callback.url, %err, "callback not sent");
                return;
            }
        };
        match outcome {
            Ok(status) => {
                if status.is_success() {
                    tracing::info!(job = job_id, url = %callback.url, attempt, "callback delivered");
                } else {
                    tracing::warn!(job = job_id, url = %callback.url, %status, "callback refused");
                }
                return;
            }
            Err(why) if attempt < attempts => {
                tracing::warn!(job = job_id, url = %callback.url, attempt, %why, "callback failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(why) => {
                tracing::error!(job = job_id, url = %callback.url, attempts, %why, "callback given up");
            }
        }
    }
}

/// The job's end mailed to `to` through the lab's relay, if it has one.
async fn mail(shared: &Shared, job_id: u64, record: &store::JobRecord, to: &[String]) {
    let Some(relay) = shared.config.smtp_relay.as_deref() else {
        // Submission warned the job's author that this lab sends no mail.
        return;
    };
    let (health, error) = match &record.summary.state {
        JobState::Finished(outcome) => (
            format!("{:?}", outcome.health).to_lowercase(),
            outcome
                .error
                .as_ref()
                .map(|(class, message)| format!("{class}: {message}")),
        ),
        other => (other.name().to_string(), None),
    };
    let name = record.summary.name.clone().unwrap_or_default();
    let subject = format!("job {job_id} {health}: {name}");
    let text = format!(
        "Job {job_id} ({name}) ended {health}.\n{}\nResults: {}\n",
        error.map(|e| format!("Error: {e}\n")).unwrap_or_default(),
        record
            .results
            .as_ref()
            .map(|r| serde_json::to_string_pretty(r).unwrap_or_default())
            .unwrap_or_else(|| "none".to_string()),
    );
    // One message per address: one the relay refuses does not keep the others' mail.
    for address in to {
        let sent = super::mail::send(
            relay,
            &shared.config.mail_from,
            std::slice::from_ref(address),
            &subject,
            &text,
        )
        .await;
        match sent {
            Ok(()) => tracing::info!(job = job_id, to = %address, "notify mail sent"),
            Err(err) => tracing::error!(job = job_id, to = %address, %err, "notify mail not sent"),
        }
    }
}

/// Whether a job that ended with `class` after `retries` automatic retries is tried
/// again under `retry_infrastructure = limit`.
pub fn retries(class: Option<ErrorClass>, retries: u32, limit: u32) -> bool {
    class == Some(ErrorClass::Infrastructure) && retries < limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body_keyed_by_the_token() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_infrastructure_failures_are_retried_and_only_as_often_as_allowed() {
        let infra = Some(ErrorClass::Infrastructure);
        assert!(retries(infra, 0, 1));
        assert!(!retries(infra, 1, 1));
        assert!(!retries(infra, 0, 0));
        assert!(!retries(Some(ErrorClass::Job), 0, 3));
        assert!(!retries(None, 0, 3));
    }
}
