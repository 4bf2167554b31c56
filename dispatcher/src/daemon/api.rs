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
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::logs;
use super::service::{self, Access, Dispatcher, Results, ServiceError};
use super::sessions::{self, Sessions};
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
    /// People signed in on the web page.
    sessions: Sessions,
    /// Passes requests for a job's files on to the worker that ran it.
    forward: super::forward::Forwarder,
}

/// The API's routes over `service`, with at most `max_streams` long-lived answers at
/// once.
pub fn router(service: Dispatcher, max_streams: usize) -> Router {
    let limit = service.config().max_job_bytes;
    let api = Arc::new(Api {
        service,
        streams: Arc::new(tokio::sync::Semaphore::new(max_streams.max(1))),
        sessions: Sessions::default(),
        forward: super::forward::Forwarder::default(),
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
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/devices/{hostname}", get(device))
        .route("/api/v1/lab/reload", post(reload))
        .route("/api/v1/devices/{hostname}/health", put(set_health))
        .route("/api/v1/device-types", get(device_types))
        .route("/api/v1/openapi.json", get(openapi))
        .route(
            "/api/v1/session",
            get(session).post(sign_in).delete(sign_out),
        )
        .route("/", get(web_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(api)
}

/// An error answer's body: what is wrong, naming the key, flag or variable to fix;
/// for an invalid job, every problem found.
#[derive(Serialize, utoipa::ToSchema)]
struct ErrorBody {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    diagnostics: Option<Vec<job_schemas::Diagnostic>>,
    /// Problems found beyond those in `diagnostics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    omitted: Option<job_schemas::Omitted>,
    /// The problems, compiler style.
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<String>,
}

impl ErrorBody {
    fn saying(error: String) -> Self {
        Self {
            error,
            diagnostics: None,
            omitted: None,
            report: None,
        }
    }

    fn into_value(self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// An error answer: a status and an [`ErrorBody`].
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
            ServiceError::Unreachable(_) => StatusCode::BAD_GATEWAY,
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
        let mut body = ErrorBody::saying(err.to_string());
        if let ServiceError::InvalidJob(report) = &err {
            body.diagnostics = Some(report.diagnostics().to_vec());
            body.omitted = Some(report.omitted());
            body.report = Some(report.render("job"));
        }
        Self {
            status,
            body: body.into_value(),
        }
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

/// The request's web session id, if its cookies have exactly one: a second cookie of
/// that name (planted by a sibling site with a narrower path) makes neither trusted.
fn session_of(headers: &HeaderMap) -> Option<&str> {
    let mut ids = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(sessions::from_cookie_header);
    match (ids.next(), ids.next()) {
        (Some(id), None) => Some(id),
        _ => None,
    }
}

/// The header the web page puts on every write. A cookie goes with any request the
/// browser makes, even one another site's page asks for; a custom header cannot be
/// added to such a request without this daemon's consent (CORS), which it never gives.
const WEB_WRITE_HEADER: &str = "x-requested-with";

/// The token a request acts with: its `Authorization` header's, else its web
/// session's. A write made with a session must carry [`WEB_WRITE_HEADER`].
fn acting_token(
    api: &Api,
    headers: &HeaderMap,
    access: Access,
) -> Result<Option<String>, ApiError> {
    if let Some(token) = token_of(headers) {
        return Ok(Some(token.to_string()));
    }
    let Some(token) = session_of(headers).and_then(|id| api.sessions.token(id)) else {
        return Ok(None);
    };
    if access == Access::Write && !headers.contains_key(WEB_WRITE_HEADER) {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            body: ErrorBody::saying(format!(
                "a write signed in by a web session needs an `{WEB_WRITE_HEADER}` header \
                 (scripts: use `Authorization: Token <secret>`)"
            ))
            .into_value(),
        });
    }
    Ok(Some(token))
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
        let token = acting_token(api, &parts.headers, access)?;
        let name = api.service.authorize(token.as_deref(), access).await?;
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
        let body = within_body_deadline(api, Bytes::from_request(request, api))
            .await?
            .map_err(IntoResponse::into_response)?;
        Ok(Self(body, name))
    }
}

/// `read` (a request's body being read), given `http_body_timeout_secs`: a client
/// sending its body a byte at a time holds a connection, so it gets a deadline.
async fn within_body_deadline<T>(
    api: &Api,
    read: impl std::future::Future<Output = T>,
) -> Result<T, Response> {
    let seconds = api.service.config().http_body_timeout_secs;
    tokio::time::timeout(Duration::from_secs(seconds), read)
        .await
        .map_err(|_| ApiError::from(ServiceError::BodyTimeout(seconds)).into_response())
}

/// Who the web page is signed in as.
#[derive(Serialize, utoipa::ToSchema)]
struct SessionView {
    signed_in: bool,
    /// The token's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_only: Option<bool>,
    /// Whether reads need no token on this daemon.
    public_reads: bool,
}

impl SessionView {
    fn of(api: &Api, who: Option<(String, bool)>) -> Self {
        let public_reads = api.service.public_reads();
        match who {
            Some((name, read_only)) => Self {
                signed_in: true,
                name: Some(name),
                read_only: Some(read_only),
                public_reads,
            },
            None => Self {
                signed_in: false,
                name: None,
                read_only: None,
                public_reads,
            },
        }
    }
}

#[utoipa::path(get, path = "/api/v1/session", tag = "web",
    summary = "Who the browser's session cookie signs in as (no token needed)",
    responses((status = 200, body = SessionView)))]
async fn session(State(api): State<Arc<Api>>, headers: HeaderMap) -> ApiResult {
    let token = session_of(&headers).and_then(|id| api.sessions.token(id));
    let who = match token {
        Some(token) => api.service.token_info(&token).await.ok(),
        None => None,
    };
    ok(SessionView::of(&api, who))
}

/// The most a sign-in's body may be: a token and its JSON.
const SIGN_IN_BYTES: usize = 4096;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /api/v1/session` with `{"token": "..."}` as JSON: a session cookie for a
/// valid token. Only JSON: a plain form on another site cannot sign a browser in.
#[utoipa::path(post, path = "/api/v1/session", tag = "web",
    summary = "Sign in with a token: the answer sets an HTTP-only, same-site session cookie (12 h); \
               writes made with it need an `X-Requested-With` header",
    request_body = SignIn,
    responses((status = 200, body = SessionView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
async fn sign_in(State(api): State<Arc<Api>>, request: Request) -> Result<Response, Response> {
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::from(ServiceError::BadRequest(
            "sign in with a JSON body {\"token\": \"...\"} (Content-Type: application/json)".into(),
        ))
        .into_response());
    }
    let secure = request
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    // Signing in again ends the session the browser had.
    if let Some(id) = session_of(request.headers()) {
        api.sessions.close(id);
    }
    // Anyone may sign in, so the body is read with a small limit of its own, not the
    // job size limit writes get.
    let read = axum::body::to_bytes(request.into_body(), SIGN_IN_BYTES);
    let body = within_body_deadline(&api, read).await?.map_err(|_| {
        ApiError::from(ServiceError::BadRequest(format!(
            "a sign-in is at most {SIGN_IN_BYTES} bytes"
        )))
        .into_response()
    })?;
    let SignIn { token } = serde_json::from_slice(&body).map_err(|e| {
        ApiError::from(ServiceError::BadRequest(format!(
            "expected {{\"token\": \"...\"}}: {e}"
        )))
        .into_response()
    })?;
    let (name, read_only) = api
        .service
        .token_info(token.trim())
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    let id = api.sessions.open(token.trim());
    tracing::info!(token = %name, "signed in on the web page");
    Ok((
        [(header::SET_COOKIE, sessions::set_cookie(&id, secure))],
        axum::Json(SessionView::of(&api, Some((name, read_only)))),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/session", tag = "web",
    summary = "Sign out: the session ends and its cookie is cleared",
    responses((status = 200, body = SessionView)))]
async fn sign_out(State(api): State<Arc<Api>>, headers: HeaderMap) -> ApiResult {
    if let Some(id) = session_of(&headers) {
        api.sessions.close(id);
    }
    Ok((
        [(header::SET_COOKIE, sessions::clear_cookie())],
        axum::Json(SessionView::of(&api, None)),
    )
        .into_response())
}

/// A place for a long-lived answer, held until its body is dropped; 503 when every
/// place is taken (the client may try again), so readers cannot take every connection.
fn stream_place(api: &Api) -> Result<tokio::sync::OwnedSemaphorePermit, ServiceError> {
    api.streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ServiceError::Busy)
}

#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", summary = "Submit a job",
    request_body(content = String, content_type = "application/json",
        description = "A LAVA v1 job (JSON); at most `max_job_bytes`"),
    responses((status = 201, body = service::Submitted),
        (status = 400, description = "Not a valid job: every problem, with JSON pointer, line and column", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "A read-only token", body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 413, description = "Larger than `max_job_bytes`")))]
async fn submit(State(api): State<Arc<Api>>, TimedBody(body, submitter): TimedBody) -> ApiResult {
    // The token was checked before the body was read (`TimedBody`).
    let submitted = api.service.submit(Vec::from(body), submitter).await?;
    Ok((StatusCode::CREATED, axum::Json(submitted)).into_response())
}

/// `GET /api/v1/jobs?state=&health=&device_type=&q=&limit=&offset=`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `submitted`, `scheduled`, `running`, `canceling` or `finished`.
    state: Option<String>,
    /// `complete`, `incomplete` or `canceled`.
    health: Option<String>,
    /// Jobs that need a device of this type.
    device_type: Option<String>,
    /// Text in the job's name, or its id.
    q: Option<String>,
    /// Jobs a page, 1 to 1000 (100 when not given).
    limit: Option<u32>,
    /// Jobs skipped before the page.
    offset: Option<u64>,
}

/// A page of jobs, newest first.
#[derive(Serialize, utoipa::ToSchema)]
struct JobPageView {
    jobs: Vec<service::JobListed>,
    /// How many jobs the filter matches in all.
    total: u64,
    limit: u32,
    offset: u64,
}

/// Jobs a listing gives when it asks for no `limit`, and the most it may ask for.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    summary = "List jobs, newest first, filtered and a page at a time",
    params(ListQuery),
    responses((status = 200, body = JobPageView), (status = 400, body = ErrorBody)))]
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
    ok(JobPageView {
        jobs: page.jobs,
        total: page.total,
        limit: filter.limit,
        offset: filter.offset,
    })
}

/// `GET /api/v1/jobs/{id}/definition`: the job as it was submitted, byte for byte.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/definition", tag = "jobs",
    summary = "The job as it was submitted, byte for byte; a job with callback tokens is re-written with each token hidden",
    params(("id" = u64, Path, description = "The job's id")),
    responses((status = 200, content_type = "application/json", body = String),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn definition(State(api): State<Arc<Api>>, JobId(id): JobId, _: CanRead) -> ApiResult {
    let text = api.service.definition(id).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    summary = "A job: state, times, devices, submitter, its nodes (members), and once it ended each node's outcome, the failure that decided it and its timeline",
    params(("id" = u64, Path, description = "The job's id")),
    responses((status = 200, body = service::JobView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn job(State(api): State<Arc<Api>>, JobId(id): JobId, _: CanRead) -> ApiResult {
    ok(api.service.job_view(id).await?)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ResultsQuery {
    /// `json` (default), `junit` or `tap`.
    format: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/results", tag = "jobs",
    summary = "The job's results: JSON, JUnit XML or TAP",
    params(("id" = u64, Path, description = "The job's id"), ResultsQuery),
    responses((status = 200, body = service::JobResults, description = "JSON; JUnit (application/xml) and TAP (text/plain) once the job has results"),
        (status = 409, description = "JUnit or TAP asked of a job without results yet", body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
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

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    summary = "Cancel a job: a queued one ends at once, a running one is stopped and cleaned up",
    params(("id" = u64, Path, description = "The job's id")),
    responses((status = 200, body = service::Canceled), (status = 409, description = "It already ended", body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn cancel(State(api): State<Arc<Api>>, JobId(id): JobId, _: CanWrite) -> ApiResult {
    ok(api.service.cancel(id).await?)
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/resubmit", tag = "jobs",
    summary = "Submit the job again as it was written, validated against the lab as it is now; the new job has resubmitted_from, the old one resubmitted_as",
    params(("id" = u64, Path, description = "The job's id")),
    responses((status = 201, body = service::Submitted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn resubmit(
    State(api): State<Arc<Api>>,
    JobId(id): JobId,
    Authorized(submitter): CanWrite,
) -> ApiResult {
    let submitted = api.service.resubmit(id, false, submitter).await?;
    Ok((StatusCode::CREATED, axum::Json(submitted)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LogQuery {
    /// `1`: keep the response open and send lines as they are written, until the job ends.
    #[serde(default)]
    follow: Option<u8>,
    /// The first line to send (0-based).
    #[serde(default)]
    from: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/log", tag = "jobs",
    summary = "The job's log, one JSON line each; followed, the answer stays open until the job ends",
    params(("id" = u64, Path, description = "The job's id"), LogQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = runner::joblog::LogLine),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, description = "Too many logs and consoles are being read at once", body = ErrorBody)))]
async fn log(
    State(api): State<Arc<Api>>,
    JobId(id): JobId,
    Query(query): Query<LogQuery>,
    uri: axum::extract::OriginalUri,
    headers: HeaderMap,
    _: CanRead,
) -> ApiResult {
    if !super::forward::forwarded(&headers)
        && let Some(worker) = api.service.ran_elsewhere(id).await?
    {
        return Ok(api.forward.get(&worker, &uri, &headers).await?);
    }
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

/// The workers of the lab.
#[derive(Serialize, utoipa::ToSchema)]
struct WorkerList {
    workers: Vec<store::WorkerRecord>,
}

#[utoipa::path(get, path = "/api/v1/workers", tag = "devices",
    summary = "The workers sharing the lab's database (one, with SQLite): state (alive or lost), version, where each API answers, seconds since each last beat, and each one's devices",
    responses((status = 200, body = WorkerList)))]
async fn workers(State(api): State<Arc<Api>>, _: CanRead) -> ApiResult {
    let workers = api.service.workers().await?;
    ok(WorkerList { workers })
}

/// The lab's devices.
#[derive(Serialize, utoipa::ToSchema)]
struct DeviceList {
    devices: Vec<service::DeviceView>,
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices",
    summary = "Devices with state, health and tags; a device whose file has errors is listed offline with `error`",
    responses((status = 200, body = DeviceList)))]
async fn devices(State(api): State<Arc<Api>>, _: CanRead) -> ApiResult {
    let devices = api.service.devices().await?;
    ok(DeviceList { devices })
}

#[utoipa::path(post, path = "/api/v1/lab/reload", tag = "devices",
    summary = "Read the lab files again and put them in use without a restart (as SIGHUP does): new and fixed devices join, a device whose file has errors goes offline naming them, running jobs keep their devices (admins)",
    responses((status = 200, body = super::Reloaded)))]
async fn reload(State(api): State<Arc<Api>>, _: CanWrite) -> ApiResult {
    ok(api.service.reload().await?)
}

#[utoipa::path(get, path = "/api/v1/devices/{hostname}", tag = "devices",
    summary = "One device: state, health, tags, its type's health check, when it was last checked, jobs since, and its health history (newest first)",
    params(("hostname" = String, Path, description = "The device's name")),
    responses((status = 200, body = service::DeviceDetail), (status = 404, body = ErrorBody)))]
async fn device(
    State(api): State<Arc<Api>>,
    Path(hostname): Path<String>,
    _: CanRead,
) -> ApiResult {
    ok(api.service.device(&hostname).await?)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct HealthBody {
    health: DeviceHealth,
    /// Why, for the device's health history.
    #[serde(default)]
    reason: Option<String>,
}

#[utoipa::path(put, path = "/api/v1/devices/{hostname}/health", tag = "devices",
    summary = "Set a device's health, with the reason its history keeps (admins)",
    params(("hostname" = String, Path, description = "The device's name")),
    request_body = HealthBody,
    responses((status = 200, body = service::HealthSet), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 408, body = ErrorBody)))]
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

/// The lab's device types.
#[derive(Serialize, utoipa::ToSchema)]
struct DeviceTypeList {
    device_types: Vec<service::DeviceTypeView>,
}

#[utoipa::path(get, path = "/api/v1/device-types", tag = "devices",
    summary = "The lab's device types",
    responses((status = 200, body = DeviceTypeList)))]
async fn device_types(State(api): State<Arc<Api>>, _: CanRead) -> ApiResult {
    ok(DeviceTypeList {
        device_types: api.service.device_types(),
    })
}

/// `GET /healthz`: 200 when the database answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    summary = "Liveness: 200 when the database answers",
    responses((status = 200, content_type = "text/plain", body = String), (status = 503, body = ErrorBody)))]
async fn healthz(State(api): State<Arc<Api>>) -> ApiResult {
    api.service.check_store().await?;
    Ok("ok\n".into_response())
}

/// `GET /metrics`: Prometheus text format. Public, like `/healthz`: counts only.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    summary = "Prometheus metrics",
    responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(api): State<Arc<Api>>) -> ApiResult {
    let text = api.service.metrics_text().await?;
    Ok(([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response())
}

/// The web page: one self-contained file (no CDN, no build step) built into the binary.
/// It reads the same API with the token it was opened with (`/?token=...`, moved into
/// the tab's session storage and out of the address bar at once).
const WEB_PAGE: &str = include_str!("web/index.html");

#[utoipa::path(get, path = "/", tag = "web", security(()),
    summary = "The web page: jobs, a job's verdict, timeline, log, consoles and results, devices and their health",
    responses((status = 200, content_type = "text/html", body = String)))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ConsoleQuery {
    /// `1`: to be saved as a file (`job-ID-NODE-console.log`) rather than shown.
    #[serde(default)]
    download: Option<u8>,
}

/// `GET /api/v1/jobs/ID/console/NODE[?download=1]`: the node's raw console, every byte
/// as it came (escape sequences included; the web page renders their colours), as far
/// as it got when asked: streamed from the file in chunks, so a slow reader of a
/// large console holds one chunk, not the file. Text, so a browser shows it.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/console/{node}", tag = "jobs",
    summary = "One node's raw console, as far as it got",
    params(("id" = u64, Path, description = "The job's id"), ("node" = String, Path, description = "The node's name"), ConsoleQuery),
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn console(
    State(api): State<Arc<Api>>,
    JobId(id): JobId,
    Path((_, node)): Path<(String, String)>,
    Query(query): Query<ConsoleQuery>,
    uri: axum::extract::OriginalUri,
    headers: HeaderMap,
    _: CanRead,
) -> ApiResult {
    if !super::forward::forwarded(&headers)
        && let Some(worker) = api.service.ran_elsewhere(id).await?
    {
        return Ok(api.forward.get(&worker, &uri, &headers).await?);
    }
    let console = api.service.console(id, &node).await?;
    let download = (query.download == Some(1)).then(|| format!("job-{id}-{node}-console.log"));
    stream_file(
        &api,
        console,
        "text/plain; charset=utf-8",
        download.as_deref(),
    )
}

/// `GET /api/v1/jobs/ID/attachments/FILE`: a file a test shell attached, as its
/// results list it; served as bytes to download, whatever its MIME type says.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/attachments/{file}", tag = "jobs",
    summary = "A file a test shell attached (lava-test-run-attach, lava-test-case-attach), as the job's results list it under attachments/",
    params(("id" = u64, Path, description = "The job's id"), ("file" = String, Path, description = "The file's name in the results")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn attachment(
    State(api): State<Arc<Api>>,
    JobId(id): JobId,
    Path((_, file)): Path<(String, String)>,
    uri: axum::extract::OriginalUri,
    headers: HeaderMap,
    _: CanRead,
) -> ApiResult {
    if !super::forward::forwarded(&headers)
        && let Some(worker) = api.service.ran_elsewhere(id).await?
    {
        return Ok(api.forward.get(&worker, &uri, &headers).await?);
    }
    let attachment = api.service.attachment(id, &file).await?;
    stream_file(&api, attachment, "application/octet-stream", Some(&file))
}

/// A file streamed in chunks as far as it is now, so a slow reader holds one chunk,
/// not the file; `download`: its name, to be saved rather than shown.
fn stream_file(
    api: &Api,
    file: service::Console,
    content_type: &'static str,
    download: Option<&str>,
) -> ApiResult {
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
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
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

/// The API's OpenAPI description, generated from the handlers' annotations and the
/// types they answer with (a test keeps its paths equal to the routes).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "lava-vm-groups dispatcher API",
        version = "1",
        description = "Jobs (LAVA v1 JSON), their logs and results, and the lab's devices. \
            Every call under /api/v1 needs `Authorization: Token <secret>` (made with \
            `dispatcher token create`; scripts set `LAVA_DISPATCHER_TOKEN` for the CLI) or the \
            web page's session cookie, reads excepted when the daemon sets `public_reads`."
    ),
    paths(
        submit, list_jobs, job, definition, log, results, console, attachment, cancel,
        resubmit, devices, device, reload, set_health, device_types, workers, openapi, session,
        sign_in, sign_out, web_page, metrics, healthz
    ),
    modifiers(&Security),
    security(("token" = []), ("session" = []))
)]
struct ApiDoc;

/// The two ways to authenticate: a token in the `Authorization` header, or the web
/// page's session cookie.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Token <secret>`; a token made with `--read-only` may only read (403 on writes)",
            ))),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                sessions::COOKIE,
                "Set by POST /api/v1/session; writes with it need an `X-Requested-With` header",
            ))),
        );
    }
}

/// The description as JSON, made once.
fn openapi_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        use utoipa::OpenApi as _;
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations", security(()),
    summary = "This description (OpenAPI 3.1)",
    responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
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

    /// Every route the router serves is in the generated description with the same
    /// methods, and nothing else is: read from this file's own `.route(...)` calls.
    #[test]
    fn the_openapi_description_matches_the_routes() {
        // The code above the tests (whose own text names `.route(`).
        let whole = include_str!("api.rs");
        let source = whole.split("#[cfg(test)]").next().unwrap_or(whole);
        let mut served = BTreeSet::new();
        for (at, _) in source
            .match_indices(".route(\n")
            .chain(source.match_indices(".route(\""))
        {
            // The call's text, to its closing parenthesis.
            let rest = &source[at + ".route(".len()..];
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find_map(|(i, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    (depth == 0).then_some(i)
                })
                .unwrap_or(rest.len());
            let call = &rest[..end];
            let Some(path) = call.split('"').nth(1) else {
                continue;
            };
            for method in ["get", "post", "put", "delete"] {
                if call.contains(&format!("{method}(")) {
                    served.insert((path.to_string(), method.to_string()));
                }
            }
        }
        let doc: Value = serde_json::from_str(openapi_json()).unwrap_or_default();
        let mut described = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                described.insert((path.clone(), method.clone()));
            }
        }
        assert!(served.len() >= 22, "{served:?}");
        assert_eq!(served, described);
    }

    /// Every schema the description refers to is in it, and the answers' types are
    /// there with their fields.
    #[test]
    fn the_openapi_description_defines_every_schema_it_names() {
        let text = openapi_json();
        let doc: Value = serde_json::from_str(text).unwrap_or_default();
        let schemas = doc["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (at, _) in text.match_indices("\"#/components/schemas/") {
            let name = text[at + 22..].split('"').next().unwrap_or_default();
            assert!(
                schemas.contains_key(name),
                "{name} is named but not defined"
            );
        }
        for (schema, field) in [
            ("JobView", "timeline"),
            ("JobView", "members"),
            ("NodeReport", "results"),
            ("ActionSpan", "duration_secs"),
            ("DeviceDetail", "history"),
            ("ErrorBody", "diagnostics"),
            ("SessionView", "signed_in"),
        ] {
            let text = schemas
                .get(schema)
                .map(Value::to_string)
                .unwrap_or_default();
            assert!(
                text.contains(&format!("\"{field}\"")),
                "{schema}.{field}: {text}"
            );
        }
        assert!(doc["components"]["securitySchemes"]["session"].is_object());
    }
}
