//! happy_vllm's text utilities: `/v1/metadata_text` (token count and the part of a text
//! beyond the model's length) and `/v1/split_text` (chunks that end on a separator token).
//! Both use the "non-vanilla" token view, where tokens are exact slices of the text.

use super::error::ApiError;
use super::extract::{parse_view, JsonBody};
use super::state::AppState;
use crate::tokenizer::TokenizerInfo;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

fn loaded(state: &AppState) -> Result<&super::state::Serving, ApiError> {
    state.generative()
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct MetadataText {
    pub text: String,
    /// `right` (default: the model's) keeps the beginning, `left` keeps the end.
    pub truncation_side: Option<String>,
    /// Default: the model's context length.
    pub max_length: Option<usize>,
}

#[utoipa::path(post, path = "/v1/metadata_text", tag = "happy_vllm", request_body = MetadataText,
    responses((status = 200, body = Object, example = json!({"tokens_nb": 3, "truncated_text": ""}))))]
pub async fn metadata_text(State(state): State<Arc<AppState>>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let (req, _) = parse_view::<MetadataText>(&body)?;
    let serving = loaded(&state)?;
    let side = req.truncation_side.unwrap_or_else(|| serving.truncation_side.clone());
    if side != "left" && side != "right" {
        return Err(ApiError::bad_request("truncation_side", format!("truncation_side must be \"left\" or \"right\", got {side:?}.")));
    }
    let max_length = req.max_length.unwrap_or(serving.max_model_len);
    let tok = serving.engine.tokenizer().clone();
    tokio::task::spawn_blocking(move || {
        let (tokens_nb, truncated) = truncated_part(&tok, &req.text, max_length, side == "left")?;
        Ok(Json(json!({"tokens_nb": tokens_nb, "truncated_text": truncated})))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tokenizer task: {e}")))?
}

/// The token count and the text a truncation to `max_length` tokens would drop.
fn truncated_part(tok: &TokenizerInfo, text: &str, max_length: usize, left: bool) -> Result<(usize, String), ApiError> {
    let pieces = tok.token_pieces(text).map_err(|e| ApiError::bad_request("text", e))?;
    let n = pieces.len();
    if n <= max_length {
        return Ok((n, String::new()));
    }
    let dropped = if left { &pieces[..n - max_length] } else { &pieces[max_length..] };
    Ok((n, dropped.iter().map(|(_, s)| *s).collect()))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct SplitText {
    pub text: String,
    /// Minimum tokens per chunk (default 200).
    pub num_tokens_in_chunk: Option<usize>,
    /// Strings whose tokens may end a chunk (default `. ! ? |`, with and without a leading space).
    pub separators: Option<Vec<String>>,
}

const DEFAULT_SEPARATORS: &[&str] = &[".", "!", "?", "|", " .", " !", " ?", " |"];

#[utoipa::path(post, path = "/v1/split_text", tag = "happy_vllm", request_body = SplitText,
    responses((status = 200, body = Object, example = json!({"split_text": ["My split.", " text."]}))))]
pub async fn split_text(State(state): State<Arc<AppState>>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let (req, _) = parse_view::<SplitText>(&body)?;
    let min_tokens = req.num_tokens_in_chunk.unwrap_or(200);
    if min_tokens == 0 {
        return Err(ApiError::bad_request("num_tokens_in_chunk", "num_tokens_in_chunk must be at least 1."));
    }
    let separators: Vec<String> =
        req.separators.unwrap_or_else(|| DEFAULT_SEPARATORS.iter().map(|s| s.to_string()).collect());
    let tok = loaded(&state)?.engine.tokenizer().clone();
    tokio::task::spawn_blocking(move || {
        let chunks = split(&tok, &req.text, min_tokens, &separators)?;
        Ok(Json(json!({"split_text": chunks})))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tokenizer task: {e}")))?
}

/// Cuts after a separator token once a chunk has `min_tokens` tokens. As in happy_vllm the
/// separators are compared as tokens (a separator string that is not one token never cuts).
/// Chunks are slices of `text`, so they concatenate back to it exactly.
fn split(tok: &TokenizerInfo, text: &str, min_tokens: usize, separators: &[String]) -> Result<Vec<String>, ApiError> {
    let separator_ids: Vec<u32> = separators
        .iter()
        .filter_map(|s| match tok.encode(s, false) {
            Ok(ids) if ids.len() == 1 => Some(ids[0]),
            _ => None,
        })
        .collect();
    let pieces = tok.token_pieces(text).map_err(|e| ApiError::bad_request("text", e))?;
    let mut chunks = vec![];
    let (mut current, mut count) = (String::new(), 0);
    for (id, piece) in pieces {
        current.push_str(piece);
        count += 1;
        if count >= min_tokens && separator_ids.contains(&id) {
            chunks.push(std::mem::take(&mut current));
            count = 0;
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    Ok(chunks)
}
