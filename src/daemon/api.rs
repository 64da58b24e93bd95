//! The HTTP JSON API of `batchd serve` (axum). Errors are RFC 9457
//! `application/problem+json`; JSON names are snake_case and carry units.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{JobState, Service, ServiceError};
use crate::gpu::Inventory;
use crate::validation::FieldError;

/// An RFC 9457 problem: a status and its document.
pub struct Problem {
    status: StatusCode,
    body: ProblemDocument,
}

/// The body of every error: RFC 9457 `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDocument {
    /// Always `about:blank`: the status and title say what happened.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Validation errors, each naming its field (absent when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    fn new(status: StatusCode, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            body: ProblemDocument {
                kind: "about:blank".into(),
                title: title.into(),
                status: status.as_u16(),
                detail: detail.into(),
                errors: Vec::new(),
            },
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            serde_json::to_string(&self.body).unwrap_or_default(),
        )
            .into_response()
    }
}

/// `/healthz` and `/readyz` when the answer is yes.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (alive) or `ready` (the jobs folder was scanned).
    pub status: String,
}

/// One entry of `GET /v1/jobs`: the job and the headline of its advice.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobSummary {
    #[serde(flatten)]
    pub job: super::Job,
    /// The recommended per-device batch, once the job is done.
    pub batch_size: Option<u64>,
    /// The recommended learning rate (for the effective batch), once done.
    pub learning_rate: Option<f64>,
}

/// `GET /v1/jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
}

/// `GET /v1/jobs/{name}`: the job and the runs of its search.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: super::Job,
    /// The last runs of the job's search, oldest first.
    pub history: Vec<crate::state::RunRecord>,
}

/// `GET /v1/jobs/{name}/recommendation?batch_size=N`: the fitted rule's LR.
#[derive(Debug, Serialize, ToSchema)]
pub struct LrForBatch {
    pub job: String,
    /// The effective batch asked about.
    pub batch_size: u64,
    pub learning_rate: f64,
    pub lr_rule: Option<crate::search::lr::LrRule>,
}

/// What the recommendation endpoint answers: the recommendation, or with
/// `batch_size` the LR for that batch.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum RecommendationAnswer {
    Recommendation(Box<crate::search::Recommendation>),
    LrForBatch(LrForBatch),
}

/// The document's fixed parts; the paths and schemas come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "batchd",
        description = "Auto-tuning batch-size advisor. Errors are RFC 9457 application/problem+json (schema `Problem`); state-changing endpoints need `Authorization: Bearer` when the daemon has an api_token_file, and every request must name the daemon in its Host header."
    ),
    modifiers(&BearerSecurity),
    components(schemas(ProblemDocument, FieldError))
)]
struct ApiDoc;

struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route, each with its OpenAPI operation: a handler reaches the
/// router only through `routes!`, so none can be left out of the document.
fn documented_routes() -> OpenApiRouter<Arc<Service>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(list_jobs, post_job))
        .routes(routes!(get_job, delete_job))
        .routes(routes!(retune_job))
        .routes(routes!(get_recommendation))
        .routes(routes!(gpus))
        .routes(routes!(openapi))
        .routes(routes!(metrics))
        .routes(routes!(index_page))
        .routes(routes!(job_page))
}

/// The fields the daemon leaves out when they are empty, by schema. Every
/// other property of a documented object is always written (null when it
/// has no value), so the document marks it required.
const OMITTED_WHEN_EMPTY: [(&str, &str); 10] = [
    ("Job", "data_digest"),
    ("Job", "device_model"),
    ("Job", "lease_holder"),
    ("Job", "tuned_by"),
    ("RunRecord", "node"),
    ("BatchCap", "run"),
    ("Problem", "errors"),
    ("Confirmation", "loss_steps"),
    ("RaceRun", "loss_steps"),
    ("Race", "tie_noise"),
];

/// The OpenAPI 3.1 document of the API, generated from its routes and types.
pub fn openapi_document() -> serde_json::Value {
    let mut document = documented_routes().split_for_parts().1;
    document.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut document = serde_json::to_value(document).unwrap_or_default();
    // utoipa takes an `Option` field for one that may be missing; ours are
    // written as null instead.
    if let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    {
        for (name, schema) in schemas.iter_mut() {
            require_properties(schema, |field| {
                !OMITTED_WHEN_EMPTY.contains(&(name.as_str(), field))
            });
        }
    }
    document
}

/// Marks the properties `written` accepts required, in `schema` and in the
/// objects nested in it (variants of tagged enums, parts of an `allOf`).
fn require_properties(schema: &mut serde_json::Value, written: impl Fn(&str) -> bool + Copy) {
    match schema {
        serde_json::Value::Object(object) => {
            if let Some(properties) = object.get("properties").and_then(|p| p.as_object()) {
                let required: Vec<serde_json::Value> = properties
                    .keys()
                    .filter(|field| written(field))
                    .map(|field| serde_json::Value::String(field.clone()))
                    .collect();
                object.insert("required".into(), serde_json::Value::Array(required));
            }
            for key in ["oneOf", "allOf", "anyOf"] {
                if let Some(parts) = object.get_mut(key) {
                    require_properties(parts, written);
                }
            }
        }
        serde_json::Value::Array(parts) => {
            for part in parts {
                require_properties(part, written);
            }
        }
        _ => {}
    }
}

pub fn router(service: Arc<Service>) -> Router {
    let body_limit = service.settings().config.max_request_body.bytes() as usize;
    let (routes, _) = documented_routes().split_for_parts();
    routes
        .fallback(no_such_endpoint)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::map_response(
            problems_for_framework_errors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            check_request_headers,
        ))
        .with_state(service)
}

async fn no_such_endpoint() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "No such endpoint",
        "see /openapi.json for the endpoints",
    )
}

/// The errors axum itself answers (405, 413, a body it could not read) as
/// RFC 9457 problems like every other error; HTML pages stay HTML.
async fn problems_for_framework_errors(response: Response) -> Response {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ours = content_type.starts_with("application/problem+json")
        || content_type.starts_with("text/html")
        || content_type.starts_with("application/json");
    if !(status.is_client_error() || status.is_server_error()) || ours {
        return response;
    }
    let title = status.canonical_reason().unwrap_or("Error");
    let (parts, body) = response.into_parts();
    let detail = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let detail = if detail.is_empty() {
        title.to_string()
    } else {
        detail
    };
    let mut answer = Problem::new(status, title, detail).into_response();
    // Keep headers such as `Allow` on a 405.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// Whether `host` (a `Host` header's value) names this daemon: its listen
/// address, `localhost`, or a configured `allowed_hosts` entry. A web page
/// on a name an attacker rebinds to 127.0.0.1 (DNS rebinding) sends its
/// own name here, and its `Origin` matches that name, so this check, not
/// the Origin check, is what keeps such a page out. IP literals other than
/// the listen address are accepted only when the daemon listens on all
/// addresses (a rebinding attack needs a name, never an IP literal).
pub fn host_allowed(host: &str, listen: std::net::SocketAddr, allowed: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    // `name`, `name:port`, `[v6]`, `[v6]:port`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, tail)) if tail.is_empty() || is_port(tail) => inside.to_string(),
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(&format!(":{port}")) => name.to_string(),
            Some(_) => return false,
            None => host.clone(),
        }
    };
    let name = name.strip_suffix('.').unwrap_or(&name);
    if name.is_empty() {
        return false;
    }
    if name == "localhost" {
        return true;
    }
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        let bound = listen.ip();
        if ip == bound || bound.is_unspecified() || (bound.is_loopback() && ip.is_loopback()) {
            return true;
        }
    }
    allowed.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        let entry = entry.strip_suffix('.').unwrap_or(&entry);
        // An entry with a port must match the whole header.
        entry == name || entry == host
    })
}

/// `:digits`, a port suffix.
fn is_port(tail: &str) -> bool {
    tail.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The checks every request passes before any handler runs, and before
/// its body is read (so a refused request never gets `100 Continue`):
///
/// - HTTP/1.1 requires `Host`, and it must name this daemon
///   ([`host_allowed`]; 421 otherwise);
/// - a state-changing request a browser sends from another site carries an
///   `Origin` that is not this server, which is refused (403);
/// - a state-changing request needs the bearer token when one is
///   configured (401);
/// - a declared `Content-Length` over `max_request_body` is refused (413).
async fn check_request_headers(
    State(service): State<Arc<Service>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let settings = service.settings();
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match &host {
        None if request.version() == axum::http::Version::HTTP_11 => {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "Missing Host header",
                "HTTP/1.1 requests must carry a Host header",
            )
            .into_response();
        }
        Some(host)
            if !host_allowed(host, settings.config.listen, &settings.config.allowed_hosts) =>
        {
            let shown: String = host.chars().take(100).collect();
            return Problem::new(
                StatusCode::MISDIRECTED_REQUEST,
                "Unknown host",
                format!(
                    "this daemon answers to its listen address, localhost and its allowed_hosts, not `{shown}` (a page on another name may be a DNS-rebinding attack)"
                ),
            )
            .into_response();
        }
        _ => {}
    }
    let changes_state = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if changes_state {
        if let Some(origin) = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
        {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            if host.as_deref() != Some(origin_host) {
                return Problem::new(
                    StatusCode::FORBIDDEN,
                    "Cross-site request refused",
                    format!("a request from {origin} may not change this daemon's jobs"),
                )
                .into_response();
            }
        }
        if let Err(problem) = authorize(&settings, request.headers()) {
            return problem.into_response();
        }
    }
    let limit = settings.config.max_request_body.bytes();
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload Too Large",
            format!(
                "the body is {} bytes, over the limit of {limit} (max_request_body)",
                declared.unwrap_or(0)
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// The problem a refused request of the job table is.
fn problem_for(error: ServiceError) -> Problem {
    let status = match &error {
        ServiceError::NoSuchJob(_) => StatusCode::NOT_FOUND,
        ServiceError::InvalidSpec(_) | ServiceError::DataOutsideRoots(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ServiceError::CommandJobsRefused => StatusCode::FORBIDDEN,
        ServiceError::Exists(_)
        | ServiceError::FileChanged { .. }
        | ServiceError::InvalidJob(_)
        | ServiceError::NoRecommendation { .. } => StatusCode::CONFLICT,
        ServiceError::Store(_) | ServiceError::Remove { .. } | ServiceError::TaskLost(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    let title = match &error {
        ServiceError::NoSuchJob(_) => "No such job",
        ServiceError::InvalidSpec(_) | ServiceError::DataOutsideRoots(_) => "Invalid job spec",
        ServiceError::CommandJobsRefused => "Command jobs are not accepted over HTTP",
        ServiceError::Exists(_) => "Job exists",
        ServiceError::FileChanged { .. } => "The job's file changed",
        ServiceError::InvalidJob(_) => "Cannot retune",
        ServiceError::NoRecommendation { .. } => "No recommendation yet",
        ServiceError::Store(_) => "Cannot store the spec",
        ServiceError::Remove { .. } => "Cannot remove the spec",
        ServiceError::TaskLost(_) => "Internal error",
    };
    let mut problem = Problem::new(status, title, error.to_string());
    problem.body.errors = match error {
        ServiceError::InvalidSpec(errors) => errors.errors,
        ServiceError::DataOutsideRoots(errors) => errors,
        ServiceError::CommandJobsRefused => vec![FieldError::new(
            "runner",
            "\"command\" is not accepted over HTTP by this daemon",
        )],
        _ => Vec::new(),
    };
    problem
}

fn refused(error: ServiceError) -> Response {
    problem_for(error).into_response()
}

/// State-changing endpoints need the bearer token when one is configured.
fn authorize(settings: &super::Settings, headers: &HeaderMap) -> Result<(), Problem> {
    let Some(token) = &settings.api_token else {
        return Ok(());
    };
    // The scheme is case-insensitive (RFC 7235); the token is compared in
    // constant time, so its bytes cannot be guessed one by one from timing.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim());
    if given.is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes())) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "this endpoint needs `Authorization: Bearer <token>` (the daemon's api_token_file)",
        ))
    }
}

/// Equality whose time depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i % b.len().max(1)).copied().unwrap_or(0);
        difference |= usize::from(x ^ y);
    }
    difference == 0
}

/// The syntax of a posted spec, from its content type. Only the documented
/// types are accepted: a web page may send `text/plain` cross-site without
/// a preflight, so taking any body as TOML would let it submit jobs.
fn syntax_of(headers: &HeaderMap) -> Result<crate::validation::Syntax, Problem> {
    use crate::validation::Syntax;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Syntax::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" => Ok(Syntax::Yaml),
        "application/toml" => Ok(Syntax::Toml),
        _ => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported content type",
            format!(
                "a job spec is posted as application/toml, application/json or application/yaml, not `{content_type}`"
            ),
        )),
    }
}

/// Submit a job spec: written to the jobs folder and queued.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(description = "the spec: TOML, or JSON/YAML by Content-Type (max_request_body)",
        content((String = "application/toml"), (Object = "application/json"), (String = "application/yaml"))),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "the job, queued", body = super::Job),
        (status = 401, description = "no or wrong bearer token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "a cross-site request, or a command job while they are refused over HTTP", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "a job of that name exists", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "the body is over max_request_body", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "not a spec's content type", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 421, description = "the Host header does not name this daemon", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "the spec is invalid: `errors` names every field", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn post_job(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let syntax = match syntax_of(&headers) {
        Ok(syntax) => syntax,
        Err(problem) => return problem.into_response(),
    };
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "Invalid body",
            "the spec is not UTF-8 text",
        )
        .into_response();
    };
    match service.submit(text, syntax).await {
        Ok(job) => (StatusCode::CREATED, Json(job)).into_response(),
        Err(error) => refused(error),
    }
}

/// Remove the job's spec file and retire the job (its recommendation stays stored).
#[utoipa::path(delete, path = "/v1/jobs/{name}", tag = "jobs",
    params(("name" = String, Path, description = "the job's name")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "retired"),
        (status = 401, description = "no or wrong bearer token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "a cross-site request", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "no such job", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "the job's file changed since it was read", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 421, description = "the Host header does not name this daemon", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn delete_job(State(service): State<Arc<Service>>, Path(name): Path<String>) -> Response {
    match service.delete(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => refused(error),
    }
}

/// Forget the job's recommendation and tune it again.
#[utoipa::path(post, path = "/v1/jobs/{name}/retune", tag = "jobs",
    params(("name" = String, Path, description = "the job's name")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "queued again", body = super::Job),
        (status = 401, description = "no or wrong bearer token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "a cross-site request", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "no such job", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "an invalid job cannot be tuned", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 421, description = "the Host header does not name this daemon", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn retune_job(State(service): State<Arc<Service>>, Path(name): Path<String>) -> Response {
    match service.retune(&name) {
        Ok(job) => (StatusCode::ACCEPTED, Json(job)).into_response(),
        Err(error) => refused(error),
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
async fn openapi() -> Response {
    // Generated once: the routes and types do not change while serving.
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOCUMENT.get_or_init(|| openapi_document().to_string());
    ([(header::CONTENT_TYPE, "application/json")], text.clone()).into_response()
}

fn html(status: StatusCode, page: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

fn report_view<'a>(
    job: &'a crate::daemon::Job,
    history: &'a [crate::state::RunRecord],
) -> crate::report::JobView<'a> {
    crate::report::JobView {
        name: &job.name,
        state: job.state,
        phase: job.phase,
        trials_done: job.trials_done,
        device: job.device,
        error: job.error.as_deref(),
        errors: job
            .errors
            .iter()
            .map(|e| (e.field.clone(), e.message.clone()))
            .collect(),
        recommendation: job
            .recommendation
            .as_deref()
            .filter(|_| job.state == JobState::Done),
        history,
    }
}

/// The HTML index of all jobs.
#[utoipa::path(get, path = "/", tag = "pages",
    responses((status = 200, description = "the page", body = String, content_type = "text/html")))]
async fn index_page(State(service): State<Arc<Service>>) -> Response {
    let jobs = service.list();
    let views: Vec<crate::report::JobView> = jobs.iter().map(|j| report_view(j, &[])).collect();
    html(StatusCode::OK, crate::report::index_page(&views))
}

/// A job's HTML report with charts; it refreshes itself while the job runs.
#[utoipa::path(get, path = "/jobs/{name}", tag = "pages",
    params(("name" = String, Path, description = "the job's name")),
    responses(
        (status = 200, description = "the report", body = String, content_type = "text/html"),
        (status = 404, description = "no such job (an HTML page)", body = String, content_type = "text/html"),
    ))]
async fn job_page(State(service): State<Arc<Service>>, Path(name): Path<String>) -> Response {
    match service.get_with_history(&name).await {
        Ok((job, history)) => html(
            StatusCode::OK,
            crate::report::job_page(&report_view(&job, &history), true),
        ),
        Err(ServiceError::NoSuchJob(_)) => html(
            StatusCode::NOT_FOUND,
            format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>No such job</title></head><body><h1>No such job</h1><p>There is no job named <code>{}</code>. <a href=\"/\">All jobs</a></p></body></html>\n",
                crate::report::escape(&name)
            ),
        ),
        Err(error) => refused(error),
    }
}

/// The Prometheus scrape (text exposition format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses(
        (status = 200, description = "the metrics", body = String, content_type = "text/plain"),
        (status = 500, description = "the scrape failed", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn metrics(State(service): State<Arc<Service>>) -> Response {
    // Reading NVML blocks for a few milliseconds: off the async workers.
    match tokio::task::spawn_blocking(move || service.metrics_text()).await {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Metrics unavailable",
            "the scrape task failed",
        )
        .into_response(),
    }
}

/// Liveness: the daemon answers.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the jobs folder has been scanned.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses(
        (status = 200, description = "ready", body = Health),
        (status = 503, description = "not scanned yet", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn readyz(State(service): State<Arc<Service>>) -> Response {
    if service.is_ready() {
        Json(Health {
            status: "ready".into(),
        })
        .into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not ready",
            "the jobs folder has not been scanned yet",
        )
        .into_response()
    }
}

/// Every job, with the headline of its advice.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    responses((status = 200, description = "the jobs, by name", body = JobList)))]
async fn list_jobs(State(service): State<Arc<Service>>) -> Json<JobList> {
    let jobs = service
        .list()
        .into_iter()
        .map(|job| {
            let advice = job.recommendation.as_ref();
            JobSummary {
                batch_size: advice.map(|r| r.batch_size),
                learning_rate: advice.and_then(|r| r.lr.learning_rate),
                job,
            }
        })
        .collect();
    Json(JobList { jobs })
}

/// One job and the runs of its search.
#[utoipa::path(get, path = "/v1/jobs/{name}", tag = "jobs",
    params(("name" = String, Path, description = "the job's name")),
    responses(
        (status = 200, description = "the job", body = JobDetail),
        (status = 404, description = "no such job", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn get_job(State(service): State<Arc<Service>>, Path(name): Path<String>) -> Response {
    match service.get_with_history(&name).await {
        Ok((job, history)) => Json(JobDetail { job, history }).into_response(),
        Err(error) => refused(error),
    }
}

/// How much of the evidence the recommendation carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceDetail {
    /// Everything but the per-step training curves and the LR range
    /// tests' point series (the default: a few tens of KB).
    #[default]
    Summary,
    /// Everything the state folder keeps, curves included (each at most
    /// `MAX_CURVE_POINTS` points).
    Full,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RecommendationQuery {
    /// Answer with the LR the fitted rule gives this effective batch instead.
    #[param(value_type = Option<u64>, minimum = 1)]
    batch_size: Option<String>,
    /// `summary` (default) or `full`.
    #[param(value_type = Option<EvidenceDetail>)]
    evidence: Option<String>,
}

/// The job's recommendation, or with `batch_size` the LR for that batch.
#[utoipa::path(get, path = "/v1/jobs/{name}/recommendation", tag = "jobs",
    params(("name" = String, Path, description = "the job's name"), RecommendationQuery),
    responses(
        (status = 200, description = "the recommendation (docs/spec.md describes every field), or with batch_size the LR for that batch", body = RecommendationAnswer),
        (status = 400, description = "a malformed query parameter", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "no such job", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "no recommendation yet, or no LR rule to scale", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn get_recommendation(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    Query(query): Query<RecommendationQuery>,
) -> Response {
    let detail = match query.evidence.as_deref() {
        None | Some("summary") => EvidenceDetail::Summary,
        Some("full") => EvidenceDetail::Full,
        Some(other) => {
            let shown: String = other.chars().take(40).collect();
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "Invalid query parameter",
                format!("evidence: must be `summary` or `full`, got `{shown}`"),
            )
            .into_response();
        }
    };
    let recommendation = match service.recommendation(&name) {
        Ok(recommendation) => recommendation,
        Err(error) => return refused(error),
    };
    let Some(text) = query.batch_size else {
        return match detail {
            EvidenceDetail::Summary => {
                Json(std::sync::Arc::unwrap_or_clone(recommendation).summary()).into_response()
            }
            EvidenceDetail::Full => Json(recommendation.as_ref()).into_response(),
        };
    };
    let batch = match text.parse::<u64>() {
        Ok(batch) if batch > 0 => batch,
        _ => {
            let shown: String = text.chars().take(40).collect();
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "Invalid query parameter",
                format!("batch_size: must be a whole number > 0, got `{shown}`"),
            )
            .into_response();
        }
    };
    match recommendation.learning_rate_for(batch) {
        Some(learning_rate) => Json(LrForBatch {
            job: name,
            batch_size: batch,
            learning_rate,
            lr_rule: recommendation.lr.rule.clone(),
        })
        .into_response(),
        None => Problem::new(
            StatusCode::CONFLICT,
            "No learning-rate rule",
            format!("job `{name}` has no measured learning rate to scale"),
        )
        .into_response(),
    }
}

/// The GPU inventory (NVML), or the CPU's memory without a GPU.
#[utoipa::path(get, path = "/v1/gpus", tag = "meta",
    responses((status = 200, description = "the inventory", body = Inventory)))]
async fn gpus(State(service): State<Arc<Service>>) -> Json<Inventory> {
    let probe = service.gpu_probe();
    let inventory = tokio::task::spawn_blocking(move || match probe {
        Some(probe) => Inventory::take(Ok(probe.as_ref())),
        None => {
            let error =
                crate::gpu::GpuError::NvmlUnavailable("no NVIDIA GPU found, using CPU".into());
            Inventory::take(Err(&error))
        }
    })
    .await
    .unwrap_or_else(|_| {
        let error = crate::gpu::GpuError::Query("inventory task failed".into());
        Inventory::take(Err(&error))
    });
    Json(inventory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn keys(value: &serde_json::Value) -> BTreeSet<String> {
        value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn only_hosts_that_name_the_daemon_are_allowed() {
        let loopback: std::net::SocketAddr = "127.0.0.1:8477".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:8477".parse().unwrap();
        let allowed = vec!["gpu-box.lab".to_string(), "proxy.lab:443".to_string()];
        for host in [
            "localhost",
            "LOCALHOST:8477",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:8477",
            "[::1]:8477",
            "gpu-box.lab:9999",
            "proxy.lab:443",
        ] {
            assert!(host_allowed(host, loopback, &allowed), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:8477",
            "10.0.0.5:8477",
            "proxy.lab:80",
            "localhost.attacker.example",
            "localhost:8477:1",
            "[::1",
            "",
            ":8477",
        ] {
            assert!(!host_allowed(host, loopback, &allowed), "{host}");
        }
        // Listening on every address: any IP literal, still no strange names.
        assert!(host_allowed("10.0.0.5:8477", any, &[]));
        assert!(!host_allowed("attacker.example:8477", any, &[]));
    }

    /// The document's schema for the recommendation lists exactly the
    /// fields the type writes, section by section, and docs/spec.md
    /// documents each of them.
    #[test]
    fn the_generated_recommendation_schema_matches_the_type_and_the_docs() {
        let document = openapi_document();
        let schemas = &document["components"]["schemas"];
        let resolve = |schema: &serde_json::Value| -> serde_json::Value {
            let mut schema = schema.clone();
            // Option<Section> is written as oneOf [null, $ref].
            if let Some(one_of) = schema.get("oneOf").and_then(|v| v.as_array()) {
                if let Some(r) = one_of.iter().find(|s| s.get("$ref").is_some()) {
                    schema = r.clone();
                }
            }
            match schema.get("$ref").and_then(|r| r.as_str()) {
                Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
                None => schema,
            }
        };
        let schema = &schemas["Recommendation"];
        let example = serde_json::to_value(crate::search::Recommendation::example(64)).unwrap();
        assert_eq!(keys(&schema["properties"]), keys(&example));
        let spec = include_str!("../../docs/spec.md");
        let documented = &spec[spec.find("## The recommendation").unwrap()..];
        for (name, value) in example.as_object().unwrap() {
            assert!(
                documented.contains(&format!("`{name}`")),
                "docs/spec.md lacks `{name}`"
            );
            let section = resolve(&schema["properties"][name]);
            if value.is_object() {
                assert_eq!(
                    keys(&section["properties"]),
                    keys(value),
                    "section `{name}`"
                );
                for field in keys(value) {
                    assert!(
                        documented.contains(&format!("`{field}`")),
                        "docs/spec.md lacks `{name}.{field}`"
                    );
                }
            }
        }
    }

    #[test]
    fn every_handler_is_documented_with_its_problems() {
        let document = openapi_document();
        let paths = document["paths"].as_object().unwrap();
        for path in [
            "/healthz",
            "/readyz",
            "/v1/jobs",
            "/v1/jobs/{name}",
            "/v1/jobs/{name}/retune",
            "/v1/jobs/{name}/recommendation",
            "/v1/gpus",
            "/openapi.json",
            "/metrics",
            "/",
            "/jobs/{name}",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        for schema in [
            "Problem",
            "Job",
            "Recommendation",
            "JobList",
            "JobDetail",
            "Inventory",
        ] {
            assert!(
                document["components"]["schemas"].get(schema).is_some(),
                "schema {schema} missing"
            );
        }
        assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    }
}
