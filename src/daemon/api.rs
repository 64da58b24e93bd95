//! The HTTP JSON API of `batchd serve` (axum). Errors are RFC 9457
//! `application/problem+json`; JSON names are snake_case and carry units.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{JobState, ServiceError, Shared};
use crate::gpu::Inventory;
use crate::validation::FieldError;

/// An RFC 9457 problem.
pub struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: String,
    /// Validation errors, each naming its field.
    errors: Vec<crate::validation::FieldError>,
}

impl Problem {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            title,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    let body_limit = shared.settings().config.max_request_body.bytes() as usize;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/jobs", get(list_jobs).post(post_job))
        .route("/v1/jobs/{name}", get(get_job).delete(delete_job))
        .route("/v1/jobs/{name}/retune", post(retune_job))
        .route("/v1/jobs/{name}/recommendation", get(get_recommendation))
        .route("/v1/gpus", get(gpus))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/", get(index_page))
        .route("/jobs/{name}", get(job_page))
        .fallback(no_such_endpoint)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::map_response(
            problems_for_framework_errors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            check_request_headers,
        ))
        .with_state(shared)
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
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let settings = shared.settings();
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
        ServiceError::Store(_)
        | ServiceError::Remove { .. }
        | ServiceError::TaskLost(_)
        | ServiceError::Unavailable => StatusCode::INTERNAL_SERVER_ERROR,
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
        ServiceError::TaskLost(_) | ServiceError::Unavailable => "Internal error",
    };
    let mut problem = Problem::new(status, title, error.to_string());
    problem.errors = match error {
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

async fn post_job(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
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
    match shared.submit(text, syntax).await {
        Ok(job) => (StatusCode::CREATED, Json(job)).into_response(),
        Err(error) => refused(error),
    }
}

async fn delete_job(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match shared.delete(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => refused(error),
    }
}

async fn retune_job(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match shared.retune(&name) {
        Ok(job) => (StatusCode::ACCEPTED, Json(job)).into_response(),
        Err(error) => refused(error),
    }
}

async fn openapi() -> Json<serde_json::Value> {
    let problem = json!({"description": "error", "content": {"application/problem+json": {}}});
    let job = json!({"description": "a job", "content": {"application/json": {}}});
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "batchd", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Auto-tuning batch-size advisor. Errors are RFC 9457 problem+json."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Recommendation": recommendation_schema()}
        },
        "paths": {
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "readiness (the jobs folder was scanned)", "responses": {"200": {"description": "ready"}, "503": problem}}},
            "/v1/jobs": {
                "get": {"summary": "all jobs", "responses": {"200": {"description": "jobs"}}},
                "post": {"summary": "submit a job spec (TOML, or JSON/YAML by Content-Type)", "security": [{"bearer": []}],
                         "requestBody": {"content": {"application/toml": {}, "application/json": {}, "application/yaml": {}}},
                         "responses": {"201": job, "401": problem, "403": problem, "409": problem, "413": problem, "421": problem, "422": problem}}
            },
            "/v1/jobs/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": {"summary": "one job", "responses": {"200": job, "404": problem}},
                "delete": {"summary": "remove the job's spec and retire it", "security": [{"bearer": []}], "responses": {"204": {"description": "retired"}, "401": problem, "404": problem}}
            },
            "/v1/jobs/{name}/retune": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "post": {"summary": "forget the recommendation and tune again", "security": [{"bearer": []}], "responses": {"202": job, "401": problem, "404": problem, "409": problem}}
            },
            "/v1/jobs/{name}/recommendation": {
                "parameters": [
                    {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "batch_size", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1},
                     "description": "return the LR for this effective batch from the fitted rule"}
                ],
                "get": {"summary": "the recommendation", "responses": {"200": {"description": "recommendation (or, with batch_size, the LR for that batch)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Recommendation"}}}}, "400": problem, "404": problem, "409": problem}}
            },
            "/v1/gpus": {"get": {"summary": "GPU inventory", "responses": {"200": {"description": "inventory"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text exposition format 0.0.4)", "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}}}},
            "/": {"get": {"summary": "HTML index of all jobs", "responses": {"200": {"description": "page", "content": {"text/html": {}}}}}},
            "/jobs/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": {"summary": "a job's HTML report with charts; refreshes itself while the job runs", "responses": {"200": {"description": "page", "content": {"text/html": {}}}, "404": {"description": "no such job"}}}
            },
            "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        }
    }))
}

/// The recommendation's fields, to the depth of its sections; docs/spec.md
/// describes the objects inside them. A test holds this to the type.
fn recommendation_schema() -> serde_json::Value {
    let integer = json!({"type": "integer", "minimum": 0});
    let nullable = |kind: &str| json!({"type": [kind, "null"]});
    let object = |description: &str| json!({"type": "object", "description": description});
    let array = |description: &str| json!({"type": "array", "description": description});
    let section = |description: &str, properties: serde_json::Value| {
        let required: Vec<&String> = properties
            .as_object()
            .map_or(Vec::new(), |p| p.keys().collect());
        json!({"type": "object", "description": description, "properties": properties, "required": required})
    };
    let properties = json!({
        "schema_version": {"type": "integer", "const": crate::search::SCHEMA_VERSION},
        "job": {"type": "string"},
        "policy": {"type": "string"},
        "objective": {"type": "string", "enum": ["goodput", "throughput", "generalization"]},
        "device": {"type": "string", "description": "cpu or cuda:N"},
        "batchd_version": {"type": "string"},
        "batch_size": integer,
        "world_size": integer,
        "global_batch_size": integer,
        "gradient_accumulation_steps": integer,
        "effective_batch_size": integer,
        "lr": section("the learning rate for the effective batch and the rule that scales it", json!({
            "learning_rate": nullable("number"),
            "interval": {"type": ["array", "null"], "description": "[low, high] within seed noise of the best"},
            "rule": {"type": ["object", "null"], "description": "lr = reference_lr x (B / reference_batch)^alpha"},
        })),
        "schedule": section("the run at the recommended batch and the LR's schedule", json!({
            "dataset_size": nullable("integer"),
            "updates_per_epoch": nullable("integer"),
            "total_updates": nullable("integer"),
            "warmup_steps": nullable("integer"),
            "decay": {"type": "string"},
            "final_lr_fraction": {"type": "number"},
        })),
        "memory": section("what memory allowed", json!({
            "limit_bytes": integer,
            "limit_source": object("where the limit came from, tagged by kind"),
            "headroom_fraction": {"type": "number"},
            "max_fit": object("the largest batch that fits under max_fit.budget_bytes"),
            "expected_peak_bytes": nullable("integer"),
        })),
        "throughput": section("speed over batch size", json!({
            "expected_samples_per_second": nullable("number"),
            "curve": array("measured samples/s per batch"),
            "plateau_batch_size": nullable("integer"),
            "step_time_model": {"type": ["object", "null"], "description": "t(B) = fixed_seconds + B / samples_per_second_limit"},
            "goodput_curve": array("throughput x statistical efficiency per batch"),
        })),
        "precision": section("precision advice", json!({
            "measured": {"type": "string"},
            "recommended": {"type": "string"},
            "reason": {"type": "string"},
        })),
        "evidence": section("the measurements the answer rests on", json!({
            "gradient_noise": {"type": ["object", "null"], "description": "the gradient noise scale B_simple (value, stderr, ...)"},
            "lr_range_tests": array("LR range tests"),
            "lr_confirmations": array("confirmation runs at fixed LRs"),
            "best_lrs": array("the best LR per batch measured"),
            "race": {"type": ["object", "null"], "description": "the batches raced, with their losses"},
            "batch_cap": {"type": ["object", "null"], "description": "the largest batch the data allows"},
            "budget_plan": object("the time budget per phase"),
            "trials": array("every trial, in order"),
        })),
        "rationale": {"type": "array", "items": {"type": "string"}},
        "partial": {"type": "boolean"},
        "partial_reason": nullable("string"),
        "phases_cut": {"type": "array", "items": {"type": "string"}},
        "seconds": {"type": "number"},
    });
    let required: Vec<&String> = properties
        .as_object()
        .map_or(Vec::new(), |p| p.keys().collect());
    json!({
        "type": "object",
        "description": "docs/spec.md, 'The recommendation', describes every field",
        "properties": properties,
        "required": required,
    })
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
            .as_ref()
            .filter(|_| job.state == JobState::Done),
        history,
    }
}

/// The HTML index of all jobs.
async fn index_page(State(shared): State<Arc<Shared>>) -> Response {
    let jobs = shared.list();
    let views: Vec<crate::report::JobView> = jobs.iter().map(|j| report_view(j, &[])).collect();
    html(StatusCode::OK, crate::report::index_page(&views))
}

/// A job's HTML report (live while it runs).
async fn job_page(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match shared.get_with_history(&name).await {
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
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    // Reading NVML blocks for a few milliseconds: off the async workers.
    match tokio::task::spawn_blocking(move || shared.metrics_text()).await {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Metrics unavailable",
            "the scrape task failed",
        )
        .into_response(),
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready.load(std::sync::atomic::Ordering::SeqCst) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not ready",
            "the jobs folder has not been scanned yet",
        )
        .into_response()
    }
}

async fn list_jobs(State(shared): State<Arc<Shared>>) -> Response {
    let jobs: Vec<serde_json::Value> = shared
        .list()
        .iter()
        .map(|job| {
            let mut value = serde_json::to_value(job).unwrap_or_default();
            value["batch_size"] = json!(job.recommendation.as_ref().map(|r| r.batch_size));
            value
        })
        .collect();
    Json(json!({ "jobs": jobs })).into_response()
}

async fn get_job(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match shared.get_with_history(&name).await {
        Ok((job, history)) => {
            let mut value = serde_json::to_value(&job).unwrap_or_default();
            value["history"] = json!(history);
            Json(value).into_response()
        }
        Err(error) => refused(error),
    }
}

#[derive(Deserialize)]
struct RecommendationQuery {
    batch_size: Option<String>,
}

async fn get_recommendation(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(query): Query<RecommendationQuery>,
) -> Response {
    let recommendation = match shared.recommendation(&name) {
        Ok(recommendation) => recommendation,
        Err(error) => return refused(error),
    };
    match query.batch_size {
        None => Json(recommendation).into_response(),
        Some(text) => {
            let batch = match text.parse::<u64>() {
                Ok(batch) if batch > 0 => batch,
                _ => {
                    return Problem::new(
                        StatusCode::BAD_REQUEST,
                        "Invalid query parameter",
                        format!("batch_size: must be a whole number > 0, got `{text}`"),
                    )
                    .into_response()
                }
            };
            match recommendation.learning_rate_for(batch) {
                Some(lr) => Json(json!({
                    "job": name,
                    "batch_size": batch,
                    "learning_rate": lr,
                    "lr_rule": recommendation.lr.rule,
                }))
                .into_response(),
                None => Problem::new(
                    StatusCode::CONFLICT,
                    "No learning-rate rule",
                    format!("job `{name}` has no measured learning rate to scale"),
                )
                .into_response(),
            }
        }
    }
}

async fn gpus(State(shared): State<Arc<Shared>>) -> Json<Inventory> {
    let probe = shared.machine.gpu_probe.clone();
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

    #[test]
    fn the_openapi_schema_names_every_field_of_the_recommendation_and_no_other() {
        let schema = recommendation_schema();
        let document = serde_json::to_value(crate::search::Recommendation::example(64)).unwrap();
        assert_eq!(keys(&schema["properties"]), keys(&document));
        for (name, value) in document.as_object().unwrap() {
            if let Some(section) = schema["properties"][name].get("properties") {
                assert_eq!(keys(section), keys(value), "section `{name}`");
            }
        }
        // docs/spec.md documents the same fields.
        let spec = include_str!("../../docs/spec.md");
        let documented = &spec[spec.find("## The recommendation").unwrap()..];
        for (name, section) in schema["properties"].as_object().unwrap() {
            assert!(
                documented.contains(&format!("`{name}`")),
                "docs/spec.md lacks `{name}`"
            );
            for field in keys(&section["properties"]) {
                assert!(
                    documented.contains(&format!("`{field}`")),
                    "docs/spec.md lacks `{name}.{field}`"
                );
            }
        }
    }
}
