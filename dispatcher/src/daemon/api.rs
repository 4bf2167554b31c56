//! The HTTP API (JSON, `/api/v1`): jobs submitted, listed, followed, canceled; devices
//! listed and their health set. Writes need `Authorization: Token <secret>` (tokens
//! made with `dispatcher token create`); reads too unless `public_reads` is set.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Shared, logs};
use runner::formats::ResultsFormat;
use runner::report::JobReport;
use runner::validation;
use states::{DeviceHealth, Health, JobEvent, JobState};
use store::{Member, StoreError, TokenScope};

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
        .layer(axum::middleware::map_response(security_headers))
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

    fn no_job(id: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("there is no job {id}"))
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

/// The job id of a `/jobs/{id}` route. An id too large for the database (past
/// i64::MAX) names no job: 404 like any other missing job, not a database error.
struct JobId(u64);

impl<S: Send + Sync> FromRequestParts<S> for JobId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
        let raw = params
            .iter()
            .find(|(name, _)| name == "id")
            .map(|(_, value)| value.as_str())
            .unwrap_or_default();
        parse_job_id(raw).map(JobId)
    }
}

fn parse_job_id(raw: &str) -> Result<u64, ApiError> {
    match raw.parse::<u64>() {
        Ok(id) if i64::try_from(id).is_ok() => Ok(id),
        // A whole number all the same: a job that does not exist.
        Ok(_) => Err(ApiError::no_job(raw)),
        Err(_) if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) => {
            Err(ApiError::no_job(raw))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{raw:?} is not a job id (a whole number)"),
        )),
    }
}

/// The body of a write request, read only once its token is known to be allowed to write (an
/// anonymous client must not make the daemon buffer `max_job_bytes` per request), and
/// within `http_body_timeout_secs`: a client sending its job a byte at a time holds a
/// connection and a request, so it gets a deadline. (Its size is bounded by
/// `max_job_bytes`, as the `Bytes` extractor applies it.)
struct TimedBody(Bytes);

impl FromRequest<Arc<Shared>> for TimedBody {
    type Rejection = Response;

    async fn from_request(request: Request, shared: &Arc<Shared>) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        authorize(shared, &parts.headers, true)
            .await
            .map_err(IntoResponse::into_response)?;
        let request = Request::from_parts(parts, body);
        let seconds = shared.config.http_body_timeout_secs;
        match tokio::time::timeout(
            Duration::from_secs(seconds),
            Bytes::from_request(request, shared),
        )
        .await
        {
            Ok(Ok(bytes)) => Ok(Self(bytes)),
            Ok(Err(rejection)) => Err(rejection.into_response()),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {seconds} s"),
            )
            .into_response()),
        }
    }
}

/// A place for a long-lived answer, held until its body is dropped; 503 when every
/// place is taken (the client may try again), so readers cannot take every connection.
fn stream_place(shared: &Shared) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    shared.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many logs and consoles are being read at once; try again later",
        )
    })
}

/// Checks the request's token; reads pass without one when reads are public.
async fn authorize(shared: &Arc<Shared>, headers: &HeaderMap, write: bool) -> Result<(), ApiError> {
    if !write && shared.config.public_reads {
        return Ok(());
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
        .map(|t| t.trim().to_string());
    let Some(token) = token else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this needs an `Authorization: Token <secret>` header (dispatcher token create)",
        ));
    };
    let scope = shared
        .blocking(move |shared| shared.store.token_scope(&token))
        .await?;
    match scope {
        Some((name, TokenScope::ReadOnly)) if write => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("token {name} is read-only (dispatcher token create NAME without --read-only)"),
        )),
        Some(_) => Ok(()),
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown token")),
    }
}

async fn submit(State(shared): State<Arc<Shared>>, TimedBody(body): TimedBody) -> ApiResult {
    // The token was checked before the body was read (`TimedBody`).
    // Validation costs time in proportion to the job (and its diagnostics): on the
    // blocking pool, so other requests are answered meanwhile.
    let (id, members, warnings, omitted_warnings) = shared
        .blocking(move |shared| {
            let text = std::str::from_utf8(&body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("the job is not UTF-8: {e}"),
                )
            })?;
            let validated = validation::validate_for_run(text, &shared.lab, &shared.policy)
                .map_err(|report| ApiError {
                    status: StatusCode::BAD_REQUEST,
                    body: json!({
                        "error": format!("the job is not valid: {} problem(s)", report.error_count()),
                        "diagnostics": report.diagnostics(),
                        "omitted": report.omitted(),
                        "report": report.render("job"),
                    }),
                })?;
            let job = validated.job;
            let members = members_of(&job);
            let id = shared.store.submit_with_members(
                job.name.as_deref(),
                text,
                job.priority.value(),
                &members,
            )?;
            shared.remember_validated(id, job);
            let warnings = serde_json::to_value(&validated.warnings).unwrap_or_default();
            Ok::<_, ApiError>((id, members, warnings, validated.omitted_warnings))
        })
        .await?;
    shared.wake.notify_one();
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "id": id, "nodes": members, "warnings": warnings,
            "omitted_warnings": omitted_warnings,
        })),
    )
        .into_response())
}

/// Every node the job will have, with its role.
fn members_of(job: &job_schemas::Job) -> Vec<Member> {
    job.members()
        .into_iter()
        .map(|m| Member {
            node: m.node,
            role: m.role,
        })
        .collect()
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
    authorize(&shared, &headers, false).await?;
    let jobs = shared
        .blocking(move |shared| shared.store.jobs(query.state.as_deref()))
        .await?;
    let jobs: Vec<Value> = jobs
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

async fn job_record(shared: &Arc<Shared>, id: u64) -> Result<store::JobRecord, ApiError> {
    shared
        .blocking(move |shared| shared.store.job(id))
        .await?
        .ok_or_else(|| ApiError::no_job(id))
}

/// That job `id` exists (its state read alone, not its definition).
async fn job_exists(shared: &Arc<Shared>, id: u64) -> Result<(), ApiError> {
    shared
        .blocking(move |shared| shared.store.job_state(id))
        .await?
        .map(drop)
        .ok_or_else(|| ApiError::no_job(id))
}

async fn job(State(shared): State<Arc<Shared>>, headers: HeaderMap, JobId(id): JobId) -> ApiResult {
    authorize(&shared, &headers, false).await?;
    // The nodes the job has (or will have), for the web page's group diagram: kept
    // from its validation at submission, never validated again here. A job submitted
    // before the store kept them is validated once, and the answer kept.
    let record = shared
        .blocking(move |shared| {
            let Some(mut record) = shared.store.job(id)? else {
                return Err(ApiError::no_job(id));
            };
            if record.members.is_none() {
                let members =
                    validation::validate_job(&record.definition, &shared.lab, &shared.policy)
                        .map(|v| members_of(&v.job))
                        .unwrap_or_default();
                shared.store.set_members(id, &members)?;
                record.members = Some(members);
            }
            Ok(record)
        })
        .await?;
    let nodes = record
        .results
        .as_ref()
        .and_then(|r| r.get("nodes"))
        .cloned()
        .unwrap_or(Value::Null);
    Ok(axum::Json(json!({
        "id": record.id,
        "name": record.name,
        "priority": record.priority,
        "state": record.state,
        "submitted_at": record.submitted_at,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "nodes": nodes,
        "members": record.members.unwrap_or_default(),
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
    JobId(id): JobId,
    Query(query): Query<ResultsQuery>,
) -> ApiResult {
    authorize(&shared, &headers, false).await?;
    let record = job_record(&shared, id).await?;
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
    JobId(id): JobId,
) -> ApiResult {
    authorize(&shared, &headers, true).await?;
    let state = shared
        .blocking(move |shared| shared.store.apply(id, JobEvent::CancelRequested))
        .await?;
    if matches!(state, JobState::Canceling) {
        shared.cancel_running(id);
    }
    if state.is_finished() {
        // A queued job ends here, not in a job task: its followers are told now.
        shared.job_ended.notify_waiters();
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

async fn log(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    JobId(id): JobId,
    Query(query): Query<LogQuery>,
) -> ApiResult {
    authorize(&shared, &headers, false).await?;
    job_exists(&shared, id).await?;
    let path = shared.config.job_dir(id).join("job.log");
    let follow = query.follow == Some(1);
    let place = stream_place(&shared)?;
    let stream = logs::lines(shared, id, path, query.from.unwrap_or(0), follow)
        .await
        .map(move |chunk| {
            let _held = &place;
            chunk
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn devices(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    authorize(&shared, &headers, false).await?;
    let devices = shared.blocking(|shared| shared.store.devices()).await?;
    let devices: Vec<Value> = devices
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
    Path(hostname): Path<String>,
    // The token was checked before the body was read.
    TimedBody(body): TimedBody,
) -> ApiResult {
    let wanted: HealthBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"health\": \"good|unknown|bad|maintenance|retired\"}}: {e}"),
        )
    })?;
    let health = wanted.health;
    let device = hostname.clone();
    shared
        .blocking(move |shared| shared.store.set_device_health(&device, health))
        .await?;
    shared.wake.notify_one();
    Ok(axum::Json(json!({ "hostname": hostname, "health": wanted.health })).into_response())
}

async fn device_types(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    authorize(&shared, &headers, false).await?;
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
    shared.blocking(|shared| shared.store.job_state(0)).await?;
    Ok("ok\n".into_response())
}

/// `GET /metrics`: Prometheus text format. Public, like `/healthz`: counts only.
async fn metrics(State(shared): State<Arc<Shared>>) -> ApiResult {
    let (jobs, device_records) = shared
        .blocking(|shared| Ok::<_, StoreError>((shared.store.jobs(None)?, shared.store.devices()?)))
        .await?;
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
    for device in device_records {
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
            hostctl::transfer::BYTES_SENT.load(std::sync::atomic::Ordering::Relaxed),
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
/// It reads the same API with the token it was opened with (`/?token=...`, moved into
/// the tab's session storage and out of the address bar at once).
const WEB_PAGE: &str = include_str!("web/index.html");

async fn web_page() -> Response {
    (
        [(header::CONTENT_SECURITY_POLICY, web_page_policy().clone())],
        axum::response::Html(WEB_PAGE),
    )
        .into_response()
}

/// The web page's Content-Security-Policy: its own inline script and style, by their
/// SHA-256 (computed from the page as built, so the policy cannot go stale), fetches
/// to this daemon only, and nothing else: injected markup runs no script.
fn web_page_policy() -> &'static HeaderValue {
    static POLICY: OnceLock<HeaderValue> = OnceLock::new();
    POLICY.get_or_init(|| {
        let hash = |tag: &str| {
            let open = format!("<{tag}>");
            let inline = WEB_PAGE
                .split_once(&open)
                .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
                .map_or("", |(inline, _)| inline);
            use base64::Engine as _;
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(inline.as_bytes());
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        };
        let policy = format!(
            "default-src 'self'; script-src {}; style-src {}; img-src 'self'; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            hash("script"),
            hash("style")
        );
        HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'self'"))
    })
}

/// Every answer says what it is (`nosniff`: a console log or a job's text is never
/// taken for a page or a script), and anything but the web page may not be rendered
/// as a page with active content.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; sandbox"),
        );
    }
    response
}

/// `GET /api/v1/jobs/ID/console/NODE`: the node's raw console, every byte as it came
/// (escape sequences included), as far as it got when asked: streamed from the file
/// in chunks, so a slow reader of a large console holds one chunk, not the file.
async fn console(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    JobId(id): JobId,
    Path((_, node)): Path<(String, String)>,
) -> ApiResult {
    authorize(&shared, &headers, false).await?;
    job_exists(&shared, id).await?;
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
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {id} has no console log for {node}"),
        )
    };
    let file = tokio::fs::File::open(&path).await.map_err(|_| missing())?;
    let length = file.metadata().await.map_err(|_| missing())?.len();
    let place = stream_place(&shared)?;
    // What is there now: a console still being written keeps growing past it.
    use tokio::io::AsyncReadExt as _;
    let body = Body::from_stream(
        tokio_util::io::ReaderStream::with_capacity(file.take(length), 64 * 1024).map(
            move |chunk| {
                let _held = &place;
                chunk
            },
        ),
    );
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(length)),
        ],
        body,
    )
        .into_response())
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
