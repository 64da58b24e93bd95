//! The HTTP JSON API of `batchd serve` (axum). Errors are RFC 9457
//! `application/problem+json`; JSON names are snake_case and carry units.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::daemon::{JobState, Shared};
use crate::gpu::Inventory;

/// An RFC 9457 problem.
pub struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: String,
}

impl Problem {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            title,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{name}", get(get_job))
        .route("/v1/jobs/{name}/recommendation", get(get_recommendation))
        .route("/v1/gpus", get(gpus))
        .with_state(shared)
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
        .jobs
        .lock()
        .map(|jobs| {
            jobs.values()
                .map(|job| {
                    let mut value = serde_json::to_value(job).unwrap_or_default();
                    value["batch_size"] = json!(job.recommendation.as_ref().map(|r| r.batch_size));
                    value
                })
                .collect()
        })
        .unwrap_or_default();
    Json(json!({ "jobs": jobs })).into_response()
}

async fn get_job(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match shared.job(&name) {
        Some(job) => Json(job).into_response(),
        None => Problem::new(
            StatusCode::NOT_FOUND,
            "No such job",
            format!("no job named `{name}`"),
        )
        .into_response(),
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
    let Some(job) = shared.job(&name) else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "No such job",
            format!("no job named `{name}`"),
        )
        .into_response();
    };
    let Some(recommendation) = job.recommendation.filter(|_| job.state == JobState::Done) else {
        return Problem::new(
            StatusCode::CONFLICT,
            "No recommendation yet",
            format!("job `{name}` is {}", crate::policy::serde_plain(&job.state)),
        )
        .into_response();
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
                    "lr_rule": recommendation.lr_rule,
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
    let probe = shared.gpu_probe.clone();
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
