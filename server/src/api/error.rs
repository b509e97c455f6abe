//! The one place HTTP errors are turned into responses, in OpenAI's shape
//! `{"error": {"message", "type", "param", "code"}}`.

use crate::engine::EngineError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; `param` names the offending field when known.
    #[error("{message}")]
    BadRequest { message: String, param: Option<String> },
    #[error("{0}")]
    Unauthorized(String),
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Well-formed but refused (incompatible options, happy_vllm's 422).
    #[error("{message}")]
    Unprocessable { message: String, param: Option<String> },
    #[error("{0}")]
    TooManyRequests(String),
    /// Loading, draining or overloaded: the client should retry later.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// Seconds a client should wait before retrying a 503 / 429.
const RETRY_AFTER_SECONDS: &str = "5";

impl ApiError {
    pub fn bad_request(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest { message: message.into(), param: Some(param.into()) }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::ModelNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's error `type` (the Python SDK's exception class names, as vLLM sends them).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "BadRequestError",
            Self::Unauthorized(_) => "AuthenticationError",
            Self::ModelNotFound(_) | Self::NotFound(_) => "NotFoundError",
            Self::PayloadTooLarge(_) => "RequestTooLargeError",
            Self::Unprocessable { .. } => "UnprocessableEntityError",
            Self::TooManyRequests(_) => "RateLimitError",
            Self::Unavailable(_) => "ServiceUnavailableError",
            Self::Internal(_) => "InternalServerError",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::BadRequest { param, .. } | Self::Unprocessable { param, .. } => param.as_deref(),
            Self::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    /// The error object; 500s say only "internal error" unless `explicit` (--explicit-errors).
    pub fn body(&self, explicit: bool) -> serde_json::Value {
        let message = match self {
            Self::Internal(_) if !explicit => "Internal server error (details are logged; start the server with \
                --explicit-errors to return them)".to_string(),
            other => other.to_string(),
        };
        json!({"error": {"message": message, "type": self.kind(), "param": self.param(), "code": self.status().as_u16()}})
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::EngineStopped => Self::Unavailable(e.to_string()),
            EngineError::Execution(_) | EngineError::Config(_) => Self::Internal(e.to_string()),
            _ => Self::BadRequest { message: e.to_string(), param: e.param().map(str::to_string) },
        }
    }
}

/// Whether 500s carry their details; set once at startup from `--explicit-errors`.
pub static EXPLICIT_ERRORS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn explicit_errors() -> bool {
    EXPLICIT_ERRORS.load(std::sync::atomic::Ordering::Relaxed)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request rejected");
        }
        let mut resp = (self.status(), axum::Json(self.body(explicit_errors()))).into_response();
        if matches!(self, Self::Unavailable(_) | Self::TooManyRequests(_)) {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_openai_shape() {
        let e: ApiError = EngineError::InvalidParam { param: "top_p", message: "top_p must be in (0, 1], got 2.".into() }.into();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let body = e.body(false);
        assert_eq!(body["error"]["param"], "top_p");
        assert_eq!(body["error"]["type"], "BadRequestError");
        assert_eq!(body["error"]["code"], 400);
        let e: ApiError = EngineError::Execution("cuda oom".into()).into();
        assert!(!e.body(false)["error"]["message"].as_str().unwrap().contains("cuda oom"));
        assert!(e.body(true)["error"]["message"].as_str().unwrap().contains("cuda oom"));
    }
}
