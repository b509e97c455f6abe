//! Turning request bodies into typed requests with errors that name the field, and the
//! request id every response carries.

use super::error::ApiError;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeSet;

/// A JSON object body. The Content-Type is not checked (curl's `-d` sends form encoding),
/// an over-limit body is a 413 and anything that is not a JSON object a 400.
pub struct JsonBody(pub serde_json::Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("The request body is larger than the server accepts (--max-request-body).".into())
            } else {
                ApiError::BadRequest { message: format!("could not read the request body: {e}"), param: None }
            }
        })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::BadRequest { message: "The request body must be a JSON object.".into(), param: None }),
            Err(e) => Err(ApiError::BadRequest { message: format!("Malformed JSON in the request body: {e}"), param: None }),
        }
    }
}

/// Reads a typed view of the body. Errors name the field (`max_tokens`, `messages[0].role`).
/// Keys the type does not know are returned so the caller can tell which keys no view used.
pub fn parse_view<T: DeserializeOwned>(body: &serde_json::Map<String, Value>) -> Result<(T, BTreeSet<String>), ApiError> {
    let mut ignored = BTreeSet::new();
    let value = Value::Object(body.clone());
    let mut on_ignored = |path: serde_ignored::Path| {
        // Only top-level keys matter here: nested unknowns belong to their parent field.
        if let serde_ignored::Path::Map { parent: serde_ignored::Path::Root, key } = path {
            ignored.insert(key.clone());
        }
    };
    let de = serde_ignored::Deserializer::new(value, &mut on_ignored);
    let parsed = serde_path_to_error::deserialize(de).map_err(|e| {
        let message = e.inner().to_string();
        let path = e.path().to_string();
        if path == "." {
            // A root-level error is a missing field: serde names it as "missing field `x`".
            let param = message.strip_prefix("missing field `").and_then(|m| m.split('`').next()).map(str::to_string);
            ApiError::BadRequest { message, param }
        } else {
            ApiError::BadRequest { message: format!("{path}: {message}"), param: Some(path) }
        }
    })?;
    Ok((parsed, ignored))
}

/// Rejects fields the OpenAI/vLLM contract defines but this server does not implement yet,
/// instead of silently ignoring what the client asked for; logs keys nobody knows.
/// The keys no view of the body reads.
pub fn unknown_in_all(views: &[BTreeSet<String>]) -> BTreeSet<String> {
    let Some((first, rest)) = views.split_first() else { return BTreeSet::new() };
    first.iter().filter(|k| rest.iter().all(|v| v.contains(*k))).cloned().collect()
}

pub fn check_fields(body: &serde_json::Map<String, Value>, unknown: &BTreeSet<String>, unsupported: &[&str])
    -> Result<(), ApiError> {
    // `false` asks for nothing (clients send e.g. `echo: false` by default).
    for &key in unsupported {
        if body.get(key).is_some_and(|v| !(v.is_null() || v == &Value::Bool(false))) {
            return Err(ApiError::bad_request(key, format!("`{key}` is not supported by this server.")));
        }
    }
    let unknown: Vec<&String> = unknown.iter().filter(|k| !unsupported.contains(&k.as_str())).collect();
    if !unknown.is_empty() {
        tracing::debug!(?unknown, "ignoring unknown request fields");
    }
    Ok(())
}

pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being handled: the client's `X-Request-Id` or a fresh random one.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Accepts or assigns `X-Request-Id` and echoes it on the response.
pub async fn request_id_layer(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_string)
        .unwrap_or_else(random_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER.clone(), v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::protocol::{CompletionFields, SamplingFields};
    use serde_json::json;

    fn body(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse_view::<CompletionFields>(&body(json!({"prompt": "x", "max_tokens": "a"}))).err().unwrap();
        assert!(matches!(err, ApiError::BadRequest { param: Some(ref p), .. } if p == "max_tokens"), "{err:?}");
        let err = parse_view::<CompletionFields>(&body(json!({"max_tokens": 3}))).err().unwrap();
        assert!(matches!(err, ApiError::BadRequest { param: Some(ref p), .. } if p == "prompt"), "{err:?}");
    }

    #[test]
    fn keys_no_view_knows_are_reported() {
        let b = body(json!({"prompt": "x", "temperature": 0.5, "mystery": 1}));
        let (_, a) = parse_view::<CompletionFields>(&b).unwrap();
        let (_, s) = parse_view::<SamplingFields>(&b).unwrap();
        let unknown: BTreeSet<String> = a.intersection(&s).cloned().collect();
        assert_eq!(unknown.into_iter().collect::<Vec<_>>(), vec!["mystery".to_string()]);
        assert!(check_fields(&b, &BTreeSet::new(), &["mystery"]).is_err());
        assert!(check_fields(&body(json!({"mystery": null})), &BTreeSet::new(), &["mystery"]).is_ok());
    }
}
