//! Tokenizer routes: vLLM's `/tokenize` and `/detokenize`, happy_vllm's `/v2/tokenizer` and
//! `/v2/decode` (same shapes), and happy_vllm's deprecated `/v1/tokenizer` and `/v1/decode`
//! with their "vanilla" switch.

use super::chat::RenderRequest;
use super::error::ApiError;
use super::extract::{parse_view, JsonBody};
use super::protocol::ChatFields;
use super::state::AppState;
use crate::tokenizer::TokenizerInfo;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

fn tokenizer(state: &AppState) -> Result<Arc<TokenizerInfo>, ApiError> {
    let serving = state.generative()?;
    Ok(serving.engine.tokenizer().clone())
}

/// Tokenizing can take a while for long texts: off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(format!("tokenizer task: {e}")))?
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct TokenizeCompletion {
    pub model: Option<String>,
    pub prompt: String,
    pub add_special_tokens: Option<bool>,
    /// vLLM: also return each token as a string.
    pub return_token_strs: Option<bool>,
}

/// `{prompt}` (completions form) or `{messages}` (chat form, rendered with the template).
#[utoipa::path(post, path = "/tokenize", tag = "Tokenizer", request_body = TokenizeCompletion,
    responses((status = 200, body = Object, example = json!({"count": 3, "max_model_len": 2048, "tokens": [1, 2, 3]}))))]
pub async fn tokenize(State(state): State<Arc<AppState>>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let tok = tokenizer(&state)?;
    let max_model_len = state.loaded().map(|s| s.max_model_len);
    let (model, want_strs, ids) = if body.contains_key("messages") {
        let (fields, _) = parse_view::<ChatFields>(&body)?;
        let render = RenderRequest::new(&fields)?;
        let strs = body.get("return_token_strs").and_then(Value::as_bool).unwrap_or(false);
        let t = tok.clone();
        (fields.model, strs, blocking(move || render.tokenize(&t)).await?)
    } else {
        let (req, _) = parse_view::<TokenizeCompletion>(&body)?;
        let add_special = req.add_special_tokens.unwrap_or(true);
        let (t, prompt) = (tok.clone(), req.prompt);
        let ids = blocking(move || t.encode(&prompt, add_special).map_err(|e| ApiError::bad_request("prompt", e))).await?;
        (req.model, req.return_token_strs.unwrap_or(false), ids)
    };
    state.resolve_model(model.as_deref())?;
    let mut out = json!({"count": ids.len(), "max_model_len": max_model_len, "tokens": ids});
    if want_strs {
        out["token_strs"] = json!(ids.iter().map(|&id| tok.tokenizer.id_to_token(id).unwrap_or_default()).collect::<Vec<_>>());
    }
    Ok(Json(out))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Detokenize {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[utoipa::path(post, path = "/detokenize", tag = "Tokenizer", request_body = Detokenize,
    responses((status = 200, body = Object, example = json!({"prompt": "Hello"}))))]
pub async fn detokenize(State(state): State<Arc<AppState>>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let (req, _) = parse_view::<Detokenize>(&body)?;
    state.resolve_model(req.model.as_deref())?;
    let tok = tokenizer(&state)?;
    check_ids(&tok, &req.tokens, "tokens")?;
    let prompt = tok.decode(&req.tokens, false).map_err(|e| ApiError::bad_request("tokens", e))?;
    Ok(Json(json!({"prompt": prompt})))
}

fn check_ids(tok: &TokenizerInfo, ids: &[u32], param: &str) -> Result<(), ApiError> {
    let vocab = tok.tokenizer.get_vocab_size(true);
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(bad) => Err(ApiError::bad_request(param, format!("token id {bad} is out of vocabulary (size {vocab})."))),
        None => Ok(()),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct LegacyTokenize {
    pub text: String,
    #[serde(default)]
    pub with_tokens_str: bool,
    /// false: no special tokens added and each token shown as the exact text it covers.
    #[serde(default = "yes")]
    pub vanilla: bool,
}

fn yes() -> bool {
    true
}

/// Deprecated happy_vllm route.
#[utoipa::path(post, path = "/v1/tokenizer", tag = "Tokenizer", request_body = LegacyTokenize,
    responses((status = 200, body = Object, example = json!({"tokens_ids": [1, 2], "tokens_nb": 2, "tokens_str": ["H", "ey"]}))))]
pub async fn legacy_tokenizer(State(state): State<Arc<AppState>>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let (req, _) = parse_view::<LegacyTokenize>(&body)?;
    let tok = tokenizer(&state)?;
    blocking(move || {
        let (ids, strs): (Vec<u32>, Vec<String>) = if req.vanilla {
            let ids = tok.encode(&req.text, true).map_err(|e| ApiError::bad_request("text", e))?;
            let strs = ids.iter().map(|&id| tok.tokenizer.id_to_token(id).unwrap_or_default()).collect();
            (ids, strs)
        } else {
            let pieces = tok.token_pieces(&req.text).map_err(|e| ApiError::bad_request("text", e))?;
            pieces.into_iter().map(|(id, s)| (id, s.to_string())).unzip()
        };
        let mut out = json!({"tokens_ids": ids, "tokens_nb": ids.len()});
        if req.with_tokens_str {
            out["tokens_str"] = json!(strs);
        }
        Ok(Json(out))
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct LegacyDecode {
    pub token_ids: Vec<u32>,
    #[serde(default)]
    pub with_tokens_str: bool,
    #[serde(default = "yes")]
    pub vanilla: bool,
}

/// Deprecated happy_vllm route.
#[utoipa::path(post, path = "/v1/decode", tag = "Tokenizer", request_body = LegacyDecode,
    responses((status = 200, body = Object, example = json!({"decoded_string": "Hey", "tokens_nb": 2, "tokens_str": ["H", "ey"]}))))]
pub async fn legacy_decode(State(state): State<Arc<AppState>>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let (req, _) = parse_view::<LegacyDecode>(&body)?;
    let tok = tokenizer(&state)?;
    check_ids(&tok, &req.token_ids, "token_ids")?;
    let decoded = tok.decode(&req.token_ids, true).map_err(|e| ApiError::bad_request("token_ids", e))?;
    let mut out = json!({"decoded_string": decoded, "tokens_nb": req.token_ids.len()});
    if req.with_tokens_str {
        let strs: Vec<String> = if req.vanilla {
            req.token_ids.iter().map(|&id| tok.tokenizer.id_to_token(id).unwrap_or_default()).collect()
        } else {
            // The text each token adds to the decoded string so far.
            let mut prev = String::new();
            (1..=req.token_ids.len())
                .map(|i| {
                    let cur = tok.decode(&req.token_ids[..i], true).unwrap_or_default();
                    let piece = cur.strip_prefix(prev.as_str()).unwrap_or(&cur).to_string();
                    prev = cur;
                    piece
                })
                .collect()
        };
        out["tokens_str"] = json!(strs);
    }
    Ok(Json(out))
}
