//! `POST /v1/embeddings`: text or token-id inputs → vectors from the embedding worker, as
//! floats or base64 (little-endian f32, as OpenAI encodes them).

use super::error::ApiError;
use super::extract::{check_fields, parse_view, JsonBody, RequestId};
use super::protocol::{unix_now, Prompt};
use super::state::AppState;
use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingFields {
    pub model: Option<String>,
    /// A string, a list of strings, a list of token ids or a list of such lists.
    #[schema(value_type = Object)]
    pub input: Prompt,
    /// `float` (default) or `base64`.
    pub encoding_format: Option<String>,
    /// Only the model's own dimension: the models served here are not Matryoshka-trained.
    pub dimensions: Option<i64>,
    /// Cut each input to this many tokens (-1: the model's maximum) instead of refusing it.
    pub truncate_prompt_tokens: Option<i64>,
    /// Add the model's [CLS]/[SEP] (default true; token-id inputs are used as given).
    pub add_special_tokens: Option<bool>,
    pub user: Option<String>,
}

#[utoipa::path(post, path = "/v1/embeddings", tag = "OpenAI", request_body(content = inline(EmbeddingFields)),
    responses((status = 200, body = Object, example = json!({"object": "list", "model": "all-MiniLM-L6-v2",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.01, -0.02]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4}}))))]
#[tracing::instrument(skip_all, fields(request_id = %rid.0))]
pub async fn embeddings(State(state): State<Arc<AppState>>, Extension(rid): Extension<RequestId>,
    JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let (fields, unknown) = parse_view::<EmbeddingFields>(&body)?;
    check_fields(&body, &unknown, &[])?;
    let serving = state.admit_embedding()?;
    let _guard = state.inflight.register(&rid.0, vec![])?;
    let model = state.resolve_model(fields.model.as_deref())?;
    let embedder = serving.embedder.clone();
    let (dim, max_len) = (embedder.model.dim, embedder.model.max_len);
    let base64 = match fields.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(ApiError::bad_request("encoding_format",
            format!("encoding_format must be \"float\" or \"base64\", got {other:?}."))),
    };
    if let Some(d) = fields.dimensions.filter(|&d| d != dim as i64) {
        return Err(ApiError::bad_request("dimensions", format!("This model has {dim} dimensions and does not support \
            Matryoshka truncation to {d}; leave `dimensions` out.")));
    }
    let truncate = match fields.truncate_prompt_tokens {
        None => None,
        Some(-1) => Some(max_len),
        Some(k) if k >= 1 && k as usize <= max_len => Some(k as usize),
        Some(k) => return Err(ApiError::bad_request("truncate_prompt_tokens", format!(
            "truncate_prompt_tokens must be -1 or between 1 and the model's maximum of {max_len}, got {k}."))),
    };
    let add_special = fields.add_special_tokens.unwrap_or(true);
    let model_ref = embedder.model.clone();
    let inputs = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<u32>>, ApiError> {
        let vocab = model_ref.tokenizer.get_vocab_size(true);
        let check_ids = |ids: Vec<u32>| -> Result<Vec<u32>, ApiError> {
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::bad_request("input", format!("token id {bad} is out of vocabulary (size {vocab}).")));
            }
            Ok(match truncate {
                Some(k) => ids.into_iter().take(k).collect(),
                None => ids,
            })
        };
        let text = |t: &str| model_ref.encode(t, add_special, truncate).map_err(|e| ApiError::bad_request("input", e));
        match fields.input {
            Prompt::Text(t) => Ok(vec![text(&t)?]),
            Prompt::Texts(ts) => ts.iter().map(|t| text(t)).collect(),
            Prompt::Tokens(ids) => Ok(vec![check_ids(ids)?]),
            Prompt::TokenLists(lists) => lists.into_iter().map(check_ids).collect(),
        }
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tokenizer task: {e}")))??;
    if inputs.is_empty() {
        return Err(ApiError::bad_request("input", "`input` must not be empty."));
    }
    for (i, ids) in inputs.iter().enumerate() {
        if ids.len() > max_len {
            return Err(ApiError::bad_request("input", format!("Input {i} has {} tokens, more than this model's maximum \
                of {max_len}; shorten it or pass truncate_prompt_tokens.", ids.len())));
        }
        if ids.is_empty() {
            return Err(ApiError::bad_request("input", format!("Input {i} is empty (no tokens).")));
        }
    }
    let prompt_tokens: usize = inputs.iter().map(Vec::len).sum();
    let vectors = embedder.embed(inputs).await.map_err(ApiError::Internal)?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    state.metrics.observe_request(started.elapsed(), Duration::ZERO);
    state.metrics.count_finished(crate::engine::FinishReason::Stop);
    Ok(Json(json!({
        "id": format!("embd-{}", rid.0),
        "object": "list",
        "created": unix_now(),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })))
}
