//! The HTTP API (JSON, `/api/v1`): jobs submitted, listed, followed, canceled; devices
//! listed and their health set. Writes need `Authorization: Token <secret>` (tokens
//! made with `dispatcher token create`); reads too unless `public_reads` is set.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use crate::joblog;
use crate::runner::formats::ResultsFormat;
use crate::runner::report::JobReport;
use crate::states::{DeviceHealth, Health, JobEvent, JobState};
use crate::store::{StoreError, TokenScope};
use crate::validation;

pub fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.config.max_job_bytes;
    Router::new()
        .route("/api/v1/jobs", post(submit).get(list_jobs))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/log", get(log))
        .route("/api/v1/jobs/{id}/results", get(results))
        .route("/api/v1/jobs/{id}/console/{node}", get(console))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/devices/{hostname}/health", put(set_health))
        .route("/api/v1/device-types", get(device_types))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/", get(web_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// An error answer: a status and `{"error": message}` (plus details where there are).
struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let status = match err {
            StoreError::NoSuchJob(_) | StoreError::NoSuchDevice(_) => StatusCode::NOT_FOUND,
            StoreError::Illegal { .. } => StatusCode::CONFLICT,
            StoreError::UnknownState(_) | StoreError::BadPriority(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, err.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// Checks the request's token; reads pass without one when reads are public.
fn authorize(shared: &Shared, headers: &HeaderMap, write: bool) -> Result<(), ApiError> {
    if !write && shared.config.public_reads {
        return Ok(());
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
        .map(str::trim);
    let Some(token) = token else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this needs an `Authorization: Token <secret>` header (dispatcher token create)",
        ));
    };
    match shared.store.token_scope(token)? {
        Some((name, TokenScope::ReadOnly)) if write => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("token {name} is read-only (dispatcher token create NAME without --read-only)"),
        )),
        Some(_) => Ok(()),
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown token")),
    }
}

async fn submit(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    authorize(&shared, &headers, true)?;
    let text = std::str::from_utf8(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the job is not UTF-8: {e}"),
        )
    })?;
    let validated = match validation::validate_for_run(text, &shared.lab, &shared.policy) {
        Ok(validated) => validated,
        Err(report) => {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                body: json!({
                    "error": format!("the job is not valid: {} problem(s)", report.error_count()),
                    "diagnostics": report.diagnostics(),
                    "report": report.render("job"),
                }),
            });
        }
    };
    let job = validated.job;
    let id = shared
        .store
        .submit(job.name.as_deref(), text, job.priority.value())?;
    let nodes: Vec<Value> = node_ids(&job)
        .into_iter()
        .map(|(node, role)| json!({ "node": node, "role": role }))
        .collect();
    shared.remember_validated(id, job);
    shared.wake.notify_one();
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": id, "nodes": nodes, "warnings": validated.warnings })),
    )
        .into_response())
}

/// `(node id, role)` of every node the job will have.
fn node_ids(job: &job_schemas::Job) -> Vec<(String, String)> {
    if let job_schemas::Topology::VmGroup(group) = &job.topology
        && let Ok(plan) = crate::runner::nodes::GroupPlan::new(job, group)
    {
        return plan.members();
    }
    crate::runner::nodes::role_members(job)
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
}

async fn list_jobs(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> ApiResult {
    authorize(&shared, &headers, false)?;
    let jobs: Vec<Value> = shared
        .store
        .jobs(query.state.as_deref())?
        .iter()
        .map(|j| {
            json!({
                "id": j.id, "name": j.name, "priority": j.priority, "state": j.state,
                "submitted_at": j.submitted_at, "started_at": j.started_at, "ended_at": j.ended_at,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "jobs": jobs })).into_response())
}

fn job_record(shared: &Shared, id: u64) -> Result<crate::store::JobRecord, ApiError> {
    shared
        .store
        .job(id)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("there is no job {id}")))
}

async fn job(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> ApiResult {
    authorize(&shared, &headers, false)?;
    let record = job_record(&shared, id)?;
    let nodes = record
        .results
        .as_ref()
        .and_then(|r| r.get("nodes"))
        .cloned()
        .unwrap_or(Value::Null);
    // The nodes the job has (or will have), for the web page's group diagram.
    let members: Vec<Value> =
        validation::validate_job(&record.definition, &shared.lab, &shared.policy)
            .map(|v| node_ids(&v.job))
            .unwrap_or_default()
            .into_iter()
            .map(|(node, role)| json!({ "node": node, "role": role }))
            .collect();
    Ok(axum::Json(json!({
        "id": record.id,
        "name": record.name,
        "priority": record.priority,
        "state": record.state,
        "submitted_at": record.submitted_at,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "nodes": nodes,
        "members": members,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct ResultsQuery {
    /// `json` (default), `junit` or `tap`.
    format: Option<String>,
}

async fn results(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(query): Query<ResultsQuery>,
) -> ApiResult {
    authorize(&shared, &headers, false)?;
    let record = job_record(&shared, id)?;
    let format = match query.format.as_deref() {
        None | Some("json") => None,
        Some(name) => Some(ResultsFormat::parse(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown results format {name:?}: expected json, junit or tap"),
            )
        })?),
    };
    let Some(format) = format else {
        return Ok(axum::Json(
            json!({ "id": id, "state": record.state, "results": record.results }),
        )
        .into_response());
    };
    let report: JobReport = record
        .results
        .and_then(|r| serde_json::from_value(r).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("job {id} has no results yet (it is {})", record.state),
            )
        })?;
    Ok((
        [(header::CONTENT_TYPE, format.content_type())],
        format.render(&report),
    )
        .into_response())
}

async fn cancel(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> ApiResult {
    authorize(&shared, &headers, true)?;
    let state = shared.store.apply(id, JobEvent::CancelRequested)?;
    if matches!(state, JobState::Canceling) {
        shared.cancel_running(id);
    }
    shared.wake.notify_one();
    Ok(axum::Json(json!({ "id": id, "state": state })).into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    /// `1`: keep the response open and send lines as they are written, until the job ends.
    #[serde(default)]
    follow: Option<u8>,
    /// The first line to send (0-based).
    #[serde(default)]
    from: Option<usize>,
}

/// How often a followed log is looked at for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

async fn log(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(query): Query<LogQuery>,
) -> ApiResult {
    authorize(&shared, &headers, false)?;
    job_record(&shared, id)?;
    let path = shared.config.job_dir(id).join("job.log");
    let from = query.from.unwrap_or(0);
    let follow = query.follow == Some(1);
    let stream = futures::stream::unfold(
        (shared, path, from, false),
        move |(shared, path, next, done)| async move {
            if done {
                return None;
            }
            loop {
                // Finished first, then read: a line written just before the end is not lost.
                let finished = shared
                    .store
                    .job(id)
                    .ok()
                    .flatten()
                    .is_none_or(|j| j.state.is_finished());
                let lines = joblog::read(&path, next).unwrap_or_default();
                if !lines.is_empty() {
                    let count = lines.len();
                    let text: String = lines
                        .iter()
                        .filter_map(|l| serde_json::to_string(l).ok())
                        .map(|l| l + "\n")
                        .collect();
                    return Some((
                        Ok::<Bytes, std::io::Error>(Bytes::from(text)),
                        (shared, path, next + count, !follow),
                    ));
                }
                if !follow || finished {
                    return None;
                }
                tokio::time::sleep(FOLLOW_INTERVAL).await;
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn devices(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    authorize(&shared, &headers, false)?;
    let devices: Vec<Value> = shared
        .store
        .devices()?
        .into_iter()
        .map(|d| {
            let tags = shared.tags_of(&d.hostname);
            json!({
                "hostname": d.hostname, "device_type": d.device_type,
                "state": d.state, "health": d.health, "tags": tags,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "devices": devices })).into_response())
}

#[derive(Deserialize)]
struct HealthBody {
    health: DeviceHealth,
}

async fn set_health(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(hostname): Path<String>,
    body: Bytes,
) -> ApiResult {
    authorize(&shared, &headers, true)?;
    let wanted: HealthBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"health\": \"good|unknown|bad|maintenance|retired\"}}: {e}"),
        )
    })?;
    shared.store.set_device_health(&hostname, wanted.health)?;
    shared.wake.notify_one();
    Ok(axum::Json(json!({ "hostname": hostname, "health": wanted.health })).into_response())
}

async fn device_types(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    authorize(&shared, &headers, false)?;
    let types: Vec<Value> = shared
        .lab
        .device_types
        .values()
        .map(|t| {
            json!({
                "name": t.name, "kind": t.kind.as_str(), "description": t.description,
                "arch": t.arch, "virtualization": t.virtualization,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "device_types": types })).into_response())
}

/// `GET /healthz`: 200 when the database answers.
async fn healthz(State(shared): State<Arc<Shared>>) -> ApiResult {
    shared.store.jobs(Some("running"))?;
    Ok("ok\n".into_response())
}

/// `GET /metrics`: Prometheus text format. Public, like `/healthz`: counts only.
async fn metrics(State(shared): State<Arc<Shared>>) -> ApiResult {
    let jobs = shared.store.jobs(None)?;
    let mut text = String::new();
    family(
        &mut text,
        "dispatcher_jobs gauge",
        "Jobs in the database by state.",
        ["submitted", "scheduled", "running", "canceling", "finished"].map(|state| {
            let n = jobs.iter().filter(|j| j.state.name() == state).count();
            (format!("state=\"{state}\""), n as u64)
        }),
    );
    family(
        &mut text,
        "dispatcher_jobs_finished gauge",
        "Finished jobs by health.",
        [
            ("complete", Health::Complete),
            ("incomplete", Health::Incomplete),
            ("canceled", Health::Canceled),
        ]
        .map(|(name, health)| {
            let n = jobs
                .iter()
                .filter(|j| matches!(&j.state, JobState::Finished(o) if o.health == health))
                .count();
            (format!("health=\"{name}\""), n as u64)
        }),
    );
    let queued = jobs
        .iter()
        .filter(|j| j.state == JobState::Submitted)
        .count();
    family(
        &mut text,
        "dispatcher_queue_length gauge",
        "Jobs waiting for devices.",
        [(String::new(), queued as u64)],
    );
    let mut devices: std::collections::BTreeMap<String, u64> = Default::default();
    for device in shared.store.devices()? {
        // The names the API shows: the serde names of the state and health.
        let state = serde_json::to_value(device.state).unwrap_or_default();
        let health = serde_json::to_value(device.health).unwrap_or_default();
        let labels = format!(
            "state=\"{}\",health=\"{}\"",
            state["state"].as_str().unwrap_or_default(),
            health.as_str().unwrap_or_default()
        );
        *devices.entry(labels).or_default() += 1;
    }
    family(
        &mut text,
        "dispatcher_devices gauge",
        "Devices by state and health.",
        devices,
    );
    // A standalone coordinator serves its own numbers.
    if let Some((groups, waiters)) = shared.coordination.gauges() {
        family(
            &mut text,
            "dispatcher_coordinator_groups gauge",
            "MultiNode groups alive.",
            [(String::new(), groups as u64)],
        );
        family(
            &mut text,
            "dispatcher_coordinator_waiters gauge",
            "MultiNode calls blocked now.",
            [(String::new(), waiters as u64)],
        );
    }
    family(
        &mut text,
        "dispatcher_transfer_bytes_total counter",
        "Image and agent bytes sent to hosts.",
        [(
            String::new(),
            crate::transfer::BYTES_SENT.load(std::sync::atomic::Ordering::Relaxed),
        )],
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// One metric family in Prometheus text format: `name_and_type` is "name gauge", each
/// sample is its labels (`a="b",c="d"`, or empty) and value.
fn family(
    text: &mut String,
    name_and_type: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, u64)>,
) {
    use std::fmt::Write as _;
    let name = name_and_type.split(' ').next().unwrap_or_default();
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name_and_type}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(text, "{name} {value}");
        } else {
            let _ = writeln!(text, "{name}{{{labels}}} {value}");
        }
    }
}

/// The web page: one self-contained file (no CDN, no build step) built into the binary.
/// It reads the same API with the token it was opened with (`/?token=...`).
async fn web_page() -> Response {
    axum::response::Html(include_str!("web/index.html")).into_response()
}

/// `GET /api/v1/jobs/ID/console/NODE`: the node's raw console, every byte as it came
/// (escape sequences included), as far as it got.
async fn console(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, node)): Path<(u64, String)>,
) -> ApiResult {
    authorize(&shared, &headers, false)?;
    job_record(&shared, id)?;
    // Node ids are role names with an optional `-N`: nothing that could leave the
    // job's directory.
    if node.is_empty()
        || !node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{node:?} is not a node name"),
        ));
    }
    let path = shared
        .config
        .job_dir(id)
        .join(format!("console-{node}.log"));
    let bytes = tokio::fs::read(&path).await.map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {id} has no console log for {node}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// The API's OpenAPI description (kept equal to the routes above by a test).
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every route the router serves is described in openapi.json with the same
    /// methods, and nothing else is: read from this file's own `.route(...)` lines.
    #[test]
    fn the_openapi_description_matches_the_routes() {
        let source = include_str!("api.rs");
        let mut served = BTreeSet::new();
        for line in source
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(".route(\""))
        {
            let path = line.split('"').nth(1).unwrap_or_default().to_string();
            for method in ["get", "post", "put", "delete"] {
                if line.contains(&format!("{method}(")) {
                    served.insert((path.clone(), method.to_string()));
                }
            }
        }
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap_or_default();
        let mut described = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                described.insert((path.clone(), method.clone()));
            }
        }
        assert!(served.len() >= 14, "{served:?}");
        assert_eq!(served, described);
    }
}
