//! The HTTP API (JSON, `/api/v1`): jobs submitted, listed, followed, canceled; devices
//! listed and their health set. Writes need `Authorization: Token <secret>` (tokens
//! made with `dispatcher token create`); reads too unless `public_reads` is set.
//!
//! Handlers only parse the request, check its token and call the service
//! ([`Dispatcher`]); [`ServiceError`]s become statuses in one place
//! ([`ApiError::from`]).

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

use super::logs;
use super::service::{self, Access, Dispatcher, Metrics, Results, ServiceError};
use runner::formats::ResultsFormat;
use states::DeviceHealth;
use store::StoreError;

/// What every handler has: the service, and what only HTTP needs.
struct Api {
    service: Dispatcher,
    /// Places for long-lived answers (followed logs, console downloads): a request
    /// in flight is never evicted, so without a bound a reader could hold every
    /// connection the daemon has.
    streams: Arc<tokio::sync::Semaphore>,
}

/// The API's routes over `service`, with at most `max_streams` long-lived answers at
/// once.
pub fn router(service: Dispatcher, max_streams: usize) -> Router {
    let limit = service.config().max_job_bytes;
    let api = Arc::new(Api {
        service,
        streams: Arc::new(tokio::sync::Semaphore::new(max_streams.max(1))),
    });
    Router::new()
        .route("/api/v1/jobs", post(submit).get(list_jobs))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/definition", get(definition))
        .route("/api/v1/jobs/{id}/log", get(log))
        .route("/api/v1/jobs/{id}/results", get(results))
        .route("/api/v1/jobs/{id}/console/{node}", get(console))
        .route("/api/v1/jobs/{id}/attachments/{file}", get(attachment))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/resubmit", post(resubmit))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/devices/{hostname}", get(device))
        .route("/api/v1/lab/reload", post(reload))
        .route("/api/v1/devices/{hostname}/health", put(set_health))
        .route("/api/v1/device-types", get(device_types))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/", get(web_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(api)
}

/// An error answer: a status and `{"error": message}` (plus details where there are).
struct ApiError {
    status: StatusCode,
    body: Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// The one place a service error becomes a status.
impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        let status = match &err {
            ServiceError::NoToken | ServiceError::UnknownToken => StatusCode::UNAUTHORIZED,
            ServiceError::ReadOnlyToken(_) => StatusCode::FORBIDDEN,
            ServiceError::BadRequest(_) | ServiceError::InvalidJob(_) => StatusCode::BAD_REQUEST,
            ServiceError::NoSuchJob(_)
            | ServiceError::NoConsole { .. }
            | ServiceError::NoAttachment { .. } => StatusCode::NOT_FOUND,
            ServiceError::NoResultsYet { .. } => StatusCode::CONFLICT,
            ServiceError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ServiceError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServiceError::Store(store) => match store {
                StoreError::NotFound(_) => StatusCode::NOT_FOUND,
                StoreError::Conflict(_) | StoreError::IllegalTransition { .. } => {
                    StatusCode::CONFLICT
                }
                StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
                StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                StoreError::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        let mut body = json!({ "error": err.to_string() });
        if let ServiceError::InvalidJob(report) = &err {
            body["diagnostics"] = json!(report.diagnostics());
            body["omitted"] = json!(report.omitted());
            body["report"] = json!(report.render("job"));
        }
        Self { status, body }
    }
}

type ApiResult = Result<Response, ApiError>;

/// A JSON answer.
fn ok(value: impl serde::Serialize) -> ApiResult {
    Ok(axum::Json(value).into_response())
}

/// The job id of a `/jobs/{id}` route. An id too large for the database (past
/// i64::MAX) names no job: 404 like any other missing job, not a database error.
struct JobId(u64);

impl<S: Send + Sync> FromRequestParts<S> for JobId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ServiceError::BadRequest(e.body_text()))?;
        let raw = params
            .iter()
            .find(|(name, _)| name == "id")
            .map(|(_, value)| value.as_str())
            .unwrap_or_default();
        Ok(JobId(parse_job_id(raw)?))
    }
}

fn parse_job_id(raw: &str) -> Result<u64, ServiceError> {
    match raw.parse::<u64>() {
        Ok(id) if i64::try_from(id).is_ok() => Ok(id),
        // A whole number all the same: a job that does not exist.
        Ok(_) => Err(ServiceError::NoSuchJob(raw.to_string())),
        Err(_) if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) => {
            Err(ServiceError::NoSuchJob(raw.to_string()))
        }
        Err(_) => Err(ServiceError::BadRequest(format!(
            "{raw:?} is not a job id (a whole number)"
        ))),
    }
}

/// The request's token, if it has one.
fn token_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
        .map(str::trim)
}

/// A request whose token may write (`WRITE`), or read (or that needs none: public
/// reads); with the token's name, if it has one.
struct Authorized<const WRITE: bool>(Option<String>);

type CanRead = Authorized<false>;
type CanWrite = Authorized<true>;

impl<const WRITE: bool> FromRequestParts<Arc<Api>> for Authorized<WRITE> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let access = if WRITE { Access::Write } else { Access::Read };
        let name = api
            .service
            .authorize(token_of(&parts.headers), access)
            .await?;
        Ok(Authorized(name))
    }
}

/// The body of a write request, read only once its token is known to be allowed to write (an
/// anonymous client must not make the daemon buffer `max_job_bytes` per request), and
/// within `http_body_timeout_secs`: a client sending its job a byte at a time holds a
/// connection and a request, so it gets a deadline. (Its size is bounded by
/// `max_job_bytes`, as the `Bytes` extractor applies it.) With the writing token's name.
struct TimedBody(Bytes, Option<String>);

impl FromRequest<Arc<Api>> for TimedBody {
    type Rejection = Response;

    async fn from_request(request: Request, api: &Arc<Api>) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let Authorized(name) = CanWrite::from_request_parts(&mut parts, api)
            .await
            .map_err(IntoResponse::into_response)?;
        let request = Request::from_parts(parts, body);
        let seconds = api.service.config().http_body_timeout_secs;
        match tokio::time::timeout(
            Duration::from_secs(seconds),
            Bytes::from_request(request, api),
        )
        .await
        {
            Ok(Ok(bytes)) => Ok(Self(bytes, name)),
            Ok(Err(rejection)) => Err(rejection.into_response()),
            Err(_) => Err(ApiError::from(ServiceError::BodyTimeout(seconds)).into_response()),
        }
    }
}

/// A place for a long-lived answer, held until its body is dropped; 503 when every
/// place is taken (the client may try again), so readers cannot take every connection.
fn stream_place(api: &Api) -> Result<tokio::sync::OwnedSemaphorePermit, ServiceError> {
    api.streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ServiceError::Busy)
}

async fn submit(State(api): State<Arc<Api>>, TimedBody(body, submitter): TimedBody) -> ApiResult {
    // The token was checked before the body was read (`TimedBody`).
    let submitted = api.service.submit(Vec::from(body), submitter).await?;
    Ok((StatusCode::CREATED, axum::Json(submitted)).into_response())
}

/// `GET /api/v1/jobs?state=&health=&device_type=&q=&limit=&offset=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    health: Option<String>,
    device_type: Option<String>,
    /// Text in the job's name, or its id.
    q: Option<String>,
    limit: Option<u32>,
    offset: Option<u64>,
}

/// Jobs a listing gives when it asks for no `limit`, and the most it may ask for.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

async fn list_jobs(
    State(api): State<Arc<Api>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    _: CanRead,
) -> ApiResult {
    let Query(query) = query.map_err(|e| ServiceError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ServiceError::BadRequest(format!(
            "limit={limit}: a page holds 1 to {MAX_PAGE} jobs"
        ))
        .into());
    }
    let blank = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let filter = store::JobFilter {
        state: blank(query.state),
        health: blank(query.health),
        device_type: blank(query.device_type),
        text: blank(query.q),
        limit,
        offset: query.offset.unwrap_or(0),
    };
    let page = api.service.jobs(&filter).await?;
    ok(json!({
        "jobs": page.jobs,
        "total": page.total,
        "limit": filter.limit,
        "offset": filter.offset,
    }))
}

/// `GET /api/v1/jobs/{id}/definition`: the job as it was submitted, byte for byte.
async fn definition(State(api): State<Arc<Api>>, JobId(id): JobId, _: CanRead) -> ApiResult {
    let text = api.service.definition(id).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

async fn job(State(api): State<Arc<Api>>, JobId(id): JobId, _: CanRead) -> ApiResult {
    ok(api.service.job_view(id).await?)
}

#[derive(Deserialize)]
struct ResultsQuery {
    /// `json` (default), `junit` or `tap`.
    format: Option<String>,
}

async fn results(
    State(api): State<Arc<Api>>,
    JobId(id): JobId,
    Query(query): Query<ResultsQuery>,
    _: CanRead,
) -> ApiResult {
    let format = match query.format.as_deref() {
        None => ResultsFormat::Json,
        Some(name) => ResultsFormat::parse(name).ok_or_else(|| {
            ServiceError::BadRequest(format!(
                "unknown results format {name:?}: expected json, junit or tap"
            ))
        })?,
    };
    match api.service.results(id, format).await? {
        Results::Json(results) => ok(results),
        Results::Rendered { content_type, text } => {
            Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
        }
    }
}

async fn cancel(State(api): State<Arc<Api>>, JobId(id): JobId, _: CanWrite) -> ApiResult {
    ok(api.service.cancel(id).await?)
}

async fn resubmit(
    State(api): State<Arc<Api>>,
    JobId(id): JobId,
    Authorized(submitter): CanWrite,
) -> ApiResult {
    let submitted = api.service.resubmit(id, false, submitter).await?;
    Ok((StatusCode::CREATED, axum::Json(submitted)).into_response())
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
    State(api): State<Arc<Api>>,
    JobId(id): JobId,
    Query(query): Query<LogQuery>,
    _: CanRead,
) -> ApiResult {
    let path = api.service.log_path(id).await?;
    let follow = query.follow == Some(1);
    let place = stream_place(&api)?;
    let stream = logs::lines(
        api.service.clone(),
        id,
        path,
        query.from.unwrap_or(0),
        follow,
    )
    .await
    .map(move |chunk| {
        let _held = &place;
        chunk
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .map_err(|e| ServiceError::Internal(e.to_string()).into())
}

async fn devices(State(api): State<Arc<Api>>, _: CanRead) -> ApiResult {
    let devices = api.service.devices().await?;
    ok(json!({ "devices": devices }))
}

async fn reload(State(api): State<Arc<Api>>, _: CanWrite) -> ApiResult {
    ok(api.service.reload().await?)
}

async fn device(
    State(api): State<Arc<Api>>,
    Path(hostname): Path<String>,
    _: CanRead,
) -> ApiResult {
    ok(api.service.device(&hostname).await?)
}

#[derive(Deserialize)]
struct HealthBody {
    health: DeviceHealth,
    /// Why, for the device's health history.
    #[serde(default)]
    reason: Option<String>,
}

async fn set_health(
    State(api): State<Arc<Api>>,
    Path(hostname): Path<String>,
    // The token was checked before the body was read.
    TimedBody(body, _): TimedBody,
) -> ApiResult {
    let wanted: HealthBody = serde_json::from_slice(&body).map_err(|e| {
        ServiceError::BadRequest(format!(
            "expected {{\"health\": \"good|unknown|bad|maintenance|retired\", \"reason\": \"...\"}}: {e}"
        ))
    })?;
    ok(api
        .service
        .set_health(hostname, wanted.health, wanted.reason)
        .await?)
}

async fn device_types(State(api): State<Arc<Api>>, _: CanRead) -> ApiResult {
    ok(json!({ "device_types": api.service.device_types() }))
}

/// `GET /healthz`: 200 when the database answers.
async fn healthz(State(api): State<Arc<Api>>) -> ApiResult {
    api.service.check_store().await?;
    Ok("ok\n".into_response())
}

/// `GET /metrics`: Prometheus text format. Public, like `/healthz`: counts only.
async fn metrics(State(api): State<Arc<Api>>) -> ApiResult {
    let text = prometheus_text(&api.service.metrics().await?);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The numbers in Prometheus text format.
fn prometheus_text(metrics: &Metrics) -> String {
    let mut text = String::new();
    family(
        &mut text,
        "dispatcher_jobs gauge",
        "Jobs in the database by state.",
        metrics
            .jobs_by_state
            .iter()
            .map(|(state, n)| (format!("state=\"{state}\""), *n)),
    );
    family(
        &mut text,
        "dispatcher_jobs_finished gauge",
        "Finished jobs by health.",
        metrics
            .finished_by_health
            .iter()
            .map(|(health, n)| (format!("health=\"{health}\""), *n)),
    );
    family(
        &mut text,
        "dispatcher_queue_length gauge",
        "Jobs waiting for devices.",
        [(String::new(), metrics.queued)],
    );
    family(
        &mut text,
        "dispatcher_devices gauge",
        "Devices by state and health.",
        metrics
            .devices
            .iter()
            .map(|((state, health), n)| (format!("state=\"{state}\",health=\"{health}\""), *n)),
    );
    if let Some((groups, waiters)) = metrics.coordinator {
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
        [(String::new(), metrics.transfer_bytes)],
    );
    text
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
    State(api): State<Arc<Api>>,
    JobId(id): JobId,
    Path((_, node)): Path<(String, String)>,
    _: CanRead,
) -> ApiResult {
    let console = api.service.console(id, &node).await?;
    stream_file(&api, console, None)
}

/// `GET /api/v1/jobs/ID/attachments/FILE`: a file a test shell attached, as its
/// results list it; served as bytes to download, whatever its MIME type says.
async fn attachment(
    State(api): State<Arc<Api>>,
    JobId(id): JobId,
    Path((_, file)): Path<(String, String)>,
    _: CanRead,
) -> ApiResult {
    let attachment = api.service.attachment(id, &file).await?;
    stream_file(&api, attachment, Some(&file))
}

/// A file streamed in chunks as far as it is now, so a slow reader holds one chunk,
/// not the file; `download`: its name, to be saved rather than shown.
fn stream_file(api: &Api, file: service::Console, download: Option<&str>) -> ApiResult {
    let place = stream_place(api)?;
    use tokio::io::AsyncReadExt as _;
    let body = Body::from_stream(
        tokio_util::io::ReaderStream::with_capacity(file.file.take(file.length), 64 * 1024).map(
            move |chunk| {
                let _held = &place;
                chunk
            },
        ),
    );
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(file.length)),
        ],
        body,
    )
        .into_response();
    if let Some(name) = download
        && let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
    {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// The API's OpenAPI description (kept equal to the routes above by a test).
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use store::{Conflict, Invalid, Missing};

    /// What each kind of failure answers: the store's kinds whatever the backend.
    #[test]
    fn service_errors_become_statuses_and_keep_their_messages() {
        let illegal = states::JobState::Submitted
            .apply(states::JobEvent::Started)
            .unwrap_err();
        for (err, status, message) in [
            (ServiceError::NoToken, 401, "this needs an `Authorization"),
            (ServiceError::UnknownToken, 401, "unknown token"),
            (
                ServiceError::ReadOnlyToken("ro".into()),
                403,
                "token ro is read-only",
            ),
            (
                ServiceError::NoSuchJob("99".into()),
                404,
                "there is no job 99",
            ),
            (ServiceError::BodyTimeout(3), 408, "within 3 s"),
            (ServiceError::Busy, 503, "too many logs"),
            (
                StoreError::NotFound(Missing::Job(7)).into(),
                404,
                "there is no job 7",
            ),
            (
                StoreError::NotFound(Missing::Device("kvm-9".into())).into(),
                404,
                "there is no device kvm-9",
            ),
            (
                StoreError::IllegalTransition {
                    job: 7,
                    source: illegal,
                }
                .into(),
                409,
                "job 7: a submitted job cannot go through Started",
            ),
            (
                StoreError::Conflict(Conflict::DuplicateToken("ci".into())).into(),
                409,
                "a token named ci already exists",
            ),
            (
                StoreError::Invalid(Invalid::JobState("done".into())).into(),
                400,
                "unknown job state \"done\"",
            ),
            (
                StoreError::Backend("disk".into()).into(),
                500,
                "database error: disk",
            ),
            (
                StoreError::Unavailable("locked".into()).into(),
                503,
                "locked",
            ),
        ] {
            let answer = ApiError::from(err);
            assert_eq!(answer.status.as_u16(), status, "{}", answer.body);
            let text = answer.body["error"].as_str().unwrap_or_default();
            assert!(text.contains(message), "{text}");
        }
    }

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
