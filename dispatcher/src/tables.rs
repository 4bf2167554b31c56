//! The daemon's answers as a person reads them: tables and labelled fields instead of
//! JSON with epoch seconds (`--format json` prints the JSON itself, for scripts).
//! Everything here reads the API's JSON, so a field the daemon leaves out shows as
//! `-` rather than failing.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use crate::summary::Paint;

/// Columns padded to their widest cell (measured without colour codes); the last
/// column is not padded, so long errors do not push trailing spaces.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(console::measure_text_width(cell));
            }
        }
        let mut text = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate() {
                if index + 1 == columns {
                    line.push_str(cell);
                } else {
                    let pad = widths[index] - console::measure_text_width(cell);
                    let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Unix seconds as `2026-12-03 18:20:55Z`; `-` when absent.
pub fn time(value: &Value) -> String {
    // RFC 3339 has four-digit years: a time past 9999 (a daemon's bad answer) shows
    // as `-` rather than failing the formatter.
    const YEAR_10000: u64 = 253_402_300_800;
    match value.as_u64().filter(|secs| *secs < YEAR_10000) {
        Some(secs) => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
            .to_string()
            .replacen('T', " ", 1),
        None => "-".into(),
    }
}

/// The seconds between two unix times, as `2m 13s`.
fn span(from: &Value, to: &Value) -> Option<String> {
    let (from, to) = (from.as_u64()?, to.as_u64()?);
    Some(humantime::format_duration(Duration::from_secs(to.saturating_sub(from))).to_string())
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `finished: incomplete`, `running`, ... coloured by what it means.
pub fn job_state(state: &Value, paint: Paint) -> String {
    let name = state["state"].as_str().unwrap_or("?");
    match state["health"].as_str() {
        Some("complete") => paint.good(&format!("{name}: complete")),
        Some(health) => paint.bad(&format!("{name}: {health}")),
        None => name.to_string(),
    }
}

/// `GET /api/v1/jobs/ID` as labelled lines.
pub fn job(view: &Value, paint: Paint) -> String {
    let mut text = String::new();
    let name = view["name"].as_str().unwrap_or("(no name)");
    let _ = writeln!(text, "job {}  {name}", view["id"]);
    let mut field = |label: &str, value: String| {
        let _ = writeln!(text, "  {label:<10} {value}");
    };
    let state = &view["state"];
    field("state", job_state(state, paint));
    if let Some([class, message]) = state["error"].as_array().map(Vec::as_slice) {
        field(
            "error",
            format!("[{}] {}", text_of(class), text_of(message)),
        );
    }
    if let Some(reason) = view["waiting_for"].as_str() {
        field("waiting", paint.warn(reason));
    }
    field("priority", text_of(&view["priority"]));
    field("submitted", time(&view["submitted_at"]));
    if !view["started_at"].is_null() {
        let waited = span(&view["submitted_at"], &view["started_at"])
            .map(|s| format!(" (queued {s})"))
            .unwrap_or_default();
        field("started", format!("{}{waited}", time(&view["started_at"])));
    }
    if !view["ended_at"].is_null() {
        let ran = span(&view["started_at"], &view["ended_at"])
            .map(|s| format!(" (ran {s})"))
            .unwrap_or_default();
        field("ended", format!("{}{ran}", time(&view["ended_at"])));
    }
    if let Some(device) = view["health_check_of"].as_str() {
        field("checks", format!("the health of {device}"));
    }
    if let Some(from) = view["resubmitted_from"].as_u64() {
        field("resubmit", format!("of job {from}"));
    }
    if let Some(next) = view["resubmitted_as"].as_u64() {
        field("rerun as", format!("job {next}"));
    }
    let mut nodes = Table::new(&["NODE", "ROLE", "STATUS", "RESULTS"]);
    let reports = view["nodes"].as_array();
    for member in view["members"].as_array().into_iter().flatten() {
        let node = member["node"].as_str().unwrap_or("?");
        let report = reports
            .into_iter()
            .flatten()
            .find(|r| r["node"].as_str() == Some(node));
        let (status, results) = match report {
            None => ("-".to_string(), "-".to_string()),
            Some(report) => node_status(report, paint),
        };
        nodes.row(vec![
            node.to_string(),
            text_of(&member["role"]),
            status,
            results,
        ]);
    }
    text.push('\n');
    text.push_str(&nodes.render());
    text
}

/// A node's status (`done`, or `boot failed [infrastructure]: ...`) and its counts.
fn node_status(report: &Value, paint: Paint) -> (String, String) {
    let status = match report["status"].as_str() {
        Some("failed") => paint.bad(&format!(
            "{} failed [{}]: {}",
            text_of(&report["action"]),
            text_of(&report["class"]),
            text_of(&report["message"])
        )),
        Some(other) => other.to_string(),
        None => "-".to_string(),
    };
    let cases = report["results"].as_array();
    let count = |wanted: &str| {
        cases
            .into_iter()
            .flatten()
            .filter(|c| c["result"] == wanted)
            .count()
    };
    let (passed, failed) = (count("pass"), count("fail"));
    let results = if failed > 0 {
        paint.bad(&format!("{passed} passed, {failed} failed"))
    } else {
        format!("{passed} passed, {failed} failed")
    };
    (status, results)
}

/// `GET /api/v1/jobs`: one row a job, then where the page is in the whole listing.
pub fn jobs(page: &Value, paint: Paint) -> String {
    let mut table = Table::new(&[
        "ID",
        "STATE",
        "DEVICES",
        "SUBMITTER",
        "SUBMITTED",
        "TOOK",
        "NAME",
    ]);
    let jobs = page["jobs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for job in jobs {
        let names = |key: &str| -> Vec<String> {
            job[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        // The devices it got; before that, the types it waits for.
        let devices = match (names("devices"), names("device_types")) {
            (devices, _) if !devices.is_empty() => devices.join(","),
            (_, types) if !types.is_empty() => format!("({})", types.join(",")),
            _ => "-".into(),
        };
        let took = span(&job["started_at"], &job["ended_at"]).unwrap_or_else(|| "-".into());
        table.row(vec![
            text_of(&job["id"]),
            job_state(&job["state"], paint),
            devices,
            text_of(&job["submitter"]),
            time(&job["submitted_at"]),
            took,
            text_of(&job["name"]),
        ]);
    }
    let mut text = table.render();
    let (offset, total) = (
        page["offset"].as_u64().unwrap_or(0),
        page["total"].as_u64().unwrap_or(0),
    );
    let shown = jobs.len() as u64;
    if shown == 0 {
        text.push_str(&format!("no jobs here ({total} match)\n"));
    } else {
        let last = offset + shown;
        text.push_str(&format!("jobs {}-{last} of {total}", offset + 1));
        if last < total {
            text.push_str(&format!(" (next: --offset {last})"));
        }
        text.push('\n');
    }
    text
}

/// `state` of a device: `idle`, `running job 7`.
fn device_state(state: &Value) -> String {
    let name = state["state"].as_str().unwrap_or("?");
    match state["job"].as_u64() {
        Some(job) => format!("{name} job {job}"),
        None => name.to_string(),
    }
}

/// A device's health, coloured: good green, bad red, maintenance and unknown yellow.
fn health(value: &Value, paint: Paint) -> String {
    let name = value.as_str().unwrap_or("?");
    match name {
        "good" => paint.good(name),
        "bad" => paint.bad(name),
        "retired" => paint.dim(name),
        _ => paint.warn(name),
    }
}

/// `GET /api/v1/devices` as a table.
pub fn devices(list: &Value, paint: Paint) -> String {
    let mut table = Table::new(&["DEVICE", "TYPE", "STATE", "HEALTH", "TAGS", "PROBLEM"]);
    for device in list["devices"].as_array().into_iter().flatten() {
        let tags: Vec<&str> = device["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        table.row(vec![
            text_of(&device["hostname"]),
            text_of(&device["device_type"]),
            device_state(&device["state"]),
            health(&device["health"], paint),
            if tags.is_empty() {
                "-".into()
            } else {
                tags.join(",")
            },
            device["error"]
                .as_str()
                .map(|e| paint.bad(e.lines().next().unwrap_or(e)))
                .unwrap_or_default(),
        ]);
    }
    table.render()
}

/// `GET /api/v1/workers` as a table.
pub fn workers(list: &Value, paint: Paint) -> String {
    let mut table = Table::new(&["WORKER", "STATE", "VERSION", "LAST BEAT", "DEVICES", "API"]);
    for worker in list["workers"].as_array().into_iter().flatten() {
        let devices: Vec<&str> = worker["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let state = text_of(&worker["state"]);
        table.row(vec![
            text_of(&worker["name"]),
            if state == "alive" {
                paint.good(&state)
            } else {
                paint.bad(&state)
            },
            text_of(&worker["version"]),
            format!(
                "{:.0} s ago",
                worker["last_beat_secs"].as_f64().unwrap_or(0.0)
            ),
            if devices.is_empty() {
                "-".into()
            } else {
                devices.join(",")
            },
            text_of(&worker["api_url"]),
        ]);
    }
    table.render()
}

/// `GET /api/v1/devices/NAME`: fields, then the health history as a table.
pub fn device(detail: &Value, paint: Paint) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "{}", text_of(&detail["hostname"]));
    let mut field = |label: &str, value: String| {
        let _ = writeln!(text, "  {label:<12} {value}");
    };
    field("type", text_of(&detail["device_type"]));
    field("state", device_state(&detail["state"]));
    field("health", health(&detail["health"], paint));
    if let Some(error) = detail["error"].as_str() {
        field("problem", paint.bad(error));
    }
    let check = &detail["health_check"];
    if check.is_object() {
        let mut every = Vec::new();
        if let Some(hours) = check["every_hours"].as_u64() {
            every.push(format!("every {hours} h"));
        }
        if let Some(jobs) = check["every_jobs"].as_u64() {
            every.push(format!("every {jobs} jobs"));
        }
        let every = if every.is_empty() {
            String::new()
        } else {
            format!(" ({})", every.join(", "))
        };
        field("health check", format!("{}{every}", text_of(&check["job"])));
        field("last check", time(&detail["last_check_at"]));
        field("jobs since", text_of(&detail["jobs_since_check"]));
    }
    let mut history = Table::new(&["WHEN", "HEALTH", "JOB", "REASON"]);
    for event in detail["history"].as_array().into_iter().flatten() {
        history.row(vec![
            time(&event["at"]),
            health(&event["health"], paint),
            text_of(&event["job"]),
            text_of(&event["reason"]),
        ]);
    }
    text.push('\n');
    text.push_str(&history.render());
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const PLAIN: Paint = Paint { colour: false };

    #[test]
    fn columns_line_up_and_the_last_is_not_padded() {
        let mut table = Table::new(&["A", "LONG HEADER", "C"]);
        table.row(vec!["wide cell".into(), "x".into(), "last".into()]);
        assert_eq!(
            table.render(),
            "A          LONG HEADER  C\nwide cell  x            last\n"
        );
    }

    #[test]
    fn a_finished_job_shows_its_error_times_and_nodes() {
        let view = json!({
            "id": 7, "name": "seed", "priority": 50,
            "state": {"state": "finished", "health": "incomplete",
                      "error": ["infrastructure", "server (server): boot: no prompt"]},
            "submitted_at": 1_796_300_000u64, "started_at": 1_796_300_003u64,
            "ended_at": 1_796_300_044u64,
            "members": [{"node": "host", "role": "host"}, {"node": "server", "role": "server"}],
            "nodes": [
                {"node": "host", "role": "host", "status": "done",
                 "results": [{"suite": "s", "case": "a", "result": "pass"}]},
                {"node": "server", "role": "server", "status": "failed", "class": "infrastructure",
                 "action": "boot", "message": "no prompt", "results": []}
            ]
        });
        let text = job(&view, PLAIN);
        assert!(
            text.contains("  state      finished: incomplete\n"),
            "{text}"
        );
        assert!(
            text.contains("  error      [infrastructure] server (server): boot: no prompt"),
            "{text}"
        );
        assert!(
            text.contains("(queued 3s)") && text.contains("(ran 41s)"),
            "{text}"
        );
        assert!(
            text.contains("server  server  boot failed [infrastructure]: no prompt  0 passed"),
            "{text}"
        );
        assert!(!text.contains("1796300000"), "no epoch seconds: {text}");
    }

    #[test]
    fn a_page_of_jobs_says_where_it_is_in_the_listing() {
        let page = json!({"total": 3, "offset": 0, "jobs": [
            {"id": 3, "name": "boot", "state": {"state": "running"}, "device_types": ["kvm"],
             "devices": ["kvm-01"], "submitter": "ci", "submitted_at": 1_796_300_000u64,
             "started_at": 1_796_300_005u64},
            {"id": 2, "name": null, "state": {"state": "submitted"}, "device_types": ["kvm"],
             "devices": [], "submitted_at": 1_796_300_001u64}
        ]});
        let text = jobs(&page, PLAIN);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("3   running    kvm-01   ci "),
            "{text}"
        );
        assert!(
            lines[1].ends_with(" -     boot"),
            "not ended: no duration: {text}"
        );
        assert!(
            lines[2].starts_with("2   submitted  (kvm)    -  "),
            "{text}"
        );
        assert_eq!(lines[3], "jobs 1-2 of 3 (next: --offset 2)");
    }

    #[test]
    fn devices_show_state_health_and_file_errors() {
        let list = json!({"devices": [
            {"hostname": "kvm-01", "device_type": "kvm", "state": {"state": "running", "job": 7},
             "health": "good", "tags": ["fast"]},
            {"hostname": "broken", "device_type": "?", "state": {"state": "offline"},
             "health": "bad", "tags": [], "error": "devices/broken.toml:3: unknown key\nmore"}
        ]});
        let text = devices(&list, PLAIN);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1], "kvm-01  kvm   running job 7  good    fast",
            "{text}"
        );
        assert!(
            lines[2].ends_with("bad     -     devices/broken.toml:3: unknown key"),
            "{text}"
        );
    }
}
