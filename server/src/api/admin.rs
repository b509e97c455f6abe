//! Operational routes: health probes, model list, info, launch arguments, live metrics,
//! abort and the Prometheus exposition.

use super::error::ApiError;
use super::extract::{parse_view, JsonBody};
use super::state::{AppState, Phase};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// 200 once the engine serves, 503 while loading, after a failed start or while draining.
#[utoipa::path(get, path = "/health", tag = "Operations", responses((status = 200), (status = 503)))]
pub async fn health(State(state): State<Arc<AppState>>) -> StatusCode {
    match state.phase() {
        Phase::Ready => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The process answers: for Kubernetes liveness probes (never fails while loading).
#[utoipa::path(get, path = "/liveness", tag = "Operations", responses((status = 200, body = Object, example = json!({"alive": "ok"}))))]
pub async fn liveness() -> Json<Value> {
    Json(json!({"alive": "ok"}))
}

/// `ok` once the model is loaded and warmed up; `ko` before that and while draining.
#[utoipa::path(get, path = "/readiness", tag = "Operations",
    responses((status = 200, body = Object, example = json!({"ready": "ok"})), (status = 503, body = Object, example = json!({"ready": "ko"}))))]
pub async fn readiness(State(state): State<Arc<AppState>>) -> Response {
    if state.phase() == Phase::Ready {
        Json(json!({"ready": "ok"})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": "ko"}))).into_response()
    }
}

#[utoipa::path(get, path = "/v1/models", tag = "OpenAI", responses((status = 200, body = Object)))]
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let root = state.args.model.model.as_ref().map(|p| p.display().to_string());
    let data: Vec<Value> = state
        .served_names
        .iter()
        .map(|name| json!({
            "id": name,
            "object": "model",
            "created": state.created(),
            "owned_by": "kandle",
            "root": root,
            "parent": null,
            "max_model_len": state.max_model_len(),
            "permission": [],
        }))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

#[utoipa::path(get, path = "/v1/info", tag = "happy_vllm", responses((status = 200, body = Object)))]
pub async fn info(State(state): State<Arc<AppState>>) -> Json<Value> {
    let loaded = state.loaded();
    Json(json!({
        "application": state.args.server.app_name,
        "version": env!("CARGO_PKG_VERSION"),
        "model_name": state.served_names[0],
        "truncation_side": loaded.map_or("right", |s| s.truncation_side.as_str()),
        "max_length": state.max_model_len(),
    }))
}

/// The effective configuration (secrets left out), only with `--with-launch-arguments`.
#[utoipa::path(get, path = "/v1/launch_arguments", tag = "happy_vllm", responses((status = 200, body = Object)))]
pub async fn launch_arguments(State(state): State<Arc<AppState>>) -> Json<Value> {
    if !state.args.server.with_launch_arguments {
        return Json(json!({}));
    }
    let a = &state.args;
    let mut out = serde_json::Map::new();
    for part in [serde_json::to_value(&a.model), serde_json::to_value(&a.engine), serde_json::to_value(&a.server)] {
        if let Ok(Value::Object(m)) = part {
            out.extend(m);
        }
    }
    out.insert("served_model_name".into(), json!(state.served_names));
    Json(Value::Object(out))
}

/// happy_vllm's shape; `gpu_cache_usage` is the KV cache wherever it lives (RAM on CPU),
/// `cpu_cache_usage` the swap space Kandle does not have.
#[utoipa::path(get, path = "/v1/live_metrics", tag = "happy_vllm", responses((status = 200, body = Object)))]
pub async fn live_metrics(State(state): State<Arc<AppState>>) -> Json<Value> {
    let s = state.stats();
    Json(json!({
        "requests_running": s.num_requests_running,
        "requests_swapped": 0,
        "requests_pending": s.num_requests_waiting,
        "gpu_cache_usage": s.kv_cache_usage_perc,
        "cpu_cache_usage": 0.0,
    }))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct AbortRequest {
    /// The request's `X-Request-Id`.
    pub request_id: String,
}

#[utoipa::path(post, path = "/v1/abort_request", tag = "happy_vllm", request_body = AbortRequest,
    responses((status = 200, body = Object), (status = 404)))]
pub async fn abort_request(State(state): State<Arc<AppState>>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let (req, _) = parse_view::<AbortRequest>(&body)?;
    let engine = &state.generative()?.engine;
    if !state.inflight.abort(&req.request_id, engine) {
        return Err(ApiError::NotFound(format!("No request with id {:?} is in flight.", req.request_id)));
    }
    Ok(Json(json!({"request_id": req.request_id, "aborted": true})))
}

#[utoipa::path(get, path = "/metrics", tag = "Operations", responses((status = 200, description = "Prometheus text exposition")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}
