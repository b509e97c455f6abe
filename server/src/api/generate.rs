//! happy_vllm's deprecated `/v1/generate` and `/v1/generate_stream`: a prompt plus any
//! vLLM sampling keyword, answered as `{responses, finish_reasons, usages, prompt?}`; the
//! stream sends that object again, cumulatively, one JSON line per update.

use super::error::ApiError;
use super::extract::{check_fields, parse_view, unknown_in_all, JsonBody, RequestId};
use super::generation::{ChoiceOutput, GenEvent, Generation};
use super::protocol::{SamplingFields, UsageInfo};
use super::state::AppState;
use super::structured::{self, StructuredFields};
use crate::engine::constraint::Constraint;
use crate::engine::FinishReason;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// vLLM's `SamplingParams` default.
const DEFAULT_MAX_TOKENS: usize = 16;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct GenerateFields {
    pub prompt: String,
    #[serde(default)]
    pub prompt_in_response: bool,
    /// The answer must be one of these strings (needs structured outputs).
    pub response_pool: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub json_format: Option<Value>,
    #[serde(default)]
    pub json_format_is_json_schema: bool,
    pub max_tokens: Option<i64>,
    pub logprobs: Option<i64>,
}

fn unprocessable(param: &str, message: &str) -> ApiError {
    ApiError::Unprocessable { message: message.to_string(), param: Some(param.to_string()) }
}

/// happy_vllm's rules (422).
fn check_rules(f: &GenerateFields, s: &SamplingFields, body: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    if body.contains_key("logits_processors") {
        return Err(unprocessable("logits_processors", "logits_processors cannot be passed to this route."));
    }
    if f.response_pool.is_some() && s.min_tokens.is_some_and(|m| m > 0) {
        return Err(unprocessable("response_pool", "response_pool and min_tokens cannot be used together."));
    }
    if f.response_pool.is_some() && f.json_format.is_some() {
        return Err(unprocessable("response_pool", "response_pool and json_format cannot be used together."));
    }
    if let (Some(max), Some(min)) = (f.max_tokens, s.min_tokens) {
        if max <= min {
            return Err(unprocessable("max_tokens", "max_tokens must be greater than min_tokens."));
        }
    }
    Ok(())
}

/// The route's constraint: `response_pool`, `json_format` or one of the OpenAI/vLLM
/// surfaces; more than one kind at once is a 422, as happy_vllm answers conflicts.
fn constraint(f: &GenerateFields, structured: &StructuredFields) -> Result<Option<(&'static str, Constraint)>, ApiError> {
    let other = structured.constraint()?;
    let own = match (&f.response_pool, &f.json_format) {
        (Some(pool), _) => {
            if pool.is_empty() {
                return Err(unprocessable("response_pool", "response_pool must contain at least one string."));
            }
            Some(("response_pool", Constraint::Choice(pool.clone())))
        }
        (None, Some(format)) if f.json_format_is_json_schema => Some(("json_format", Constraint::JsonSchema(format.clone()))),
        (None, Some(format)) => Some(("json_format", Constraint::JsonSchema(simple_json_schema(format)?))),
        (None, None) => None,
    };
    match (own, other) {
        (Some((a, _)), Some((b, _))) => Err(unprocessable(a, &format!("{a} and {b} cannot be used together."))),
        (own, other) => Ok(own.or(other)),
    }
}

/// happy_vllm's "simple json": `{"key": "string" | "integer" | "boolean" | "number" | [one
/// of those]}` becomes an object schema with every key required.
fn simple_json_schema(format: &Value) -> Result<Value, ApiError> {
    const TYPES: [&str; 4] = ["string", "integer", "boolean", "number"];
    let bad = |key: &str| unprocessable("json_format", &format!(
        "json_format[{key:?}] must be one of {TYPES:?} or a one-element list of one of them \
         (or set json_format_is_json_schema for a full JSON schema)."));
    let Some(fields) = format.as_object() else {
        return Err(unprocessable("json_format", "json_format must be an object mapping keys to value types."));
    };
    let mut properties = serde_json::Map::new();
    for (key, ty) in fields {
        let scalar = |v: &Value| v.as_str().filter(|t| TYPES.contains(t)).map(|t| json!({"type": t}));
        let schema = match ty {
            Value::Array(items) if items.len() == 1 => scalar(&items[0]).map(|item| json!({"type": "array", "items": item})),
            other => scalar(other),
        };
        properties.insert(key.clone(), schema.ok_or_else(|| bad(key))?);
    }
    Ok(json!({"type": "object", "properties": properties, "required": fields.keys().collect::<Vec<_>>(),
        "additionalProperties": false}))
}

#[utoipa::path(post, path = "/v1/generate", tag = "happy_vllm", request_body(content = inline(GenerateFields),
    description = "Plus any sampling keyword (SamplingFields)."),
    responses((status = 200, body = Object, example = json!({"responses": ["Paris."], "finish_reasons": ["stop"],
        "usages": [{"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}]}))))]
#[tracing::instrument(skip_all, fields(request_id = %rid.0.0))]
pub async fn generate(state: State<Arc<AppState>>, rid: Extension<RequestId>, body: JsonBody) -> Result<Response, ApiError> {
    run(state, rid, body, false).await
}

#[utoipa::path(post, path = "/v1/generate_stream", tag = "happy_vllm", request_body(content = inline(GenerateFields),
    description = "Plus any sampling keyword (SamplingFields)."),
    responses((status = 200, description = "One JSON object per line, cumulative, same shape as /v1/generate")))]
#[tracing::instrument(skip_all, fields(request_id = %rid.0.0))]
pub async fn generate_stream(state: State<Arc<AppState>>, rid: Extension<RequestId>, body: JsonBody) -> Result<Response, ApiError> {
    run(state, rid, body, true).await
}

async fn run(State(state): State<Arc<AppState>>, Extension(rid): Extension<RequestId>, JsonBody(body): JsonBody,
    stream: bool) -> Result<Response, ApiError> {
    let (fields, unknown_a) = parse_view::<GenerateFields>(&body)?;
    let (sampling, unknown_b) = parse_view::<SamplingFields>(&body)?;
    let (structured, unknown_c) = parse_view::<StructuredFields>(&body)?;
    check_rules(&fields, &sampling, &body)?;
    check_fields(&body, &unknown_in_all(&[unknown_a, unknown_b, unknown_c]), &["prompt_logprobs"])?;
    let constraint = constraint(&fields, &structured)?;
    let serving = state.admit()?;
    let max_tokens = match fields.max_tokens {
        Some(m) if m < 1 => return Err(ApiError::bad_request("max_tokens", format!("max_tokens must be at least 1, got {m}."))),
        Some(m) => m as usize,
        None => DEFAULT_MAX_TOKENS,
    };
    let logprobs = fields.logprobs.map(|k| k.max(0) as usize);
    let params = sampling.to_params(&serving.defaults, Some(max_tokens), logprobs)?;
    let tok = serving.engine.tokenizer().clone();
    let prompt = fields.prompt.clone();
    let mut ids = tokio::task::spawn_blocking(move || tok.encode(&prompt, true))
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizer task: {e}")))?
        .map_err(|e| ApiError::bad_request("prompt", e))?;
    sampling.truncate_prompt(&mut ids, serving.max_model_len)?;
    let processors = structured::processors(&serving, constraint, &params).await?;
    let gen = Generation::start(&state, &rid.0, vec![ids], params, processors)?;
    let prompt = fields.prompt_in_response.then_some(fields.prompt);
    let mut outputs = vec![ChoiceOutput::default(); gen.num_choices()];
    if stream {
        return Ok(gen.into_ndjson(move |ev| match ev {
            GenEvent::Delta { choice, delta } => {
                let changed = !delta.text.is_empty() || delta.finish_reason.is_some();
                outputs[choice].push(delta);
                if changed { vec![shape(&outputs, None, prompt.as_deref())] } else { vec![] }
            }
            GenEvent::Done(u) => vec![shape(&outputs, Some(u.prompt_tokens), prompt.as_deref())],
            GenEvent::Failed(_) => vec![],
        }));
    }
    let (outputs, usage) = gen.collect().await?;
    Ok(Json(shape(&outputs, Some(usage.prompt_tokens), prompt.as_deref())).into_response())
}

/// `{responses, finish_reasons, usages, prompt?}`; unfinished choices read "None" as in
/// happy_vllm's documentation. Usages come with the final object (prompt size known then).
fn shape(outputs: &[ChoiceOutput], prompt_tokens: Option<usize>, prompt: Option<&str>) -> Value {
    let reason = |r: Option<FinishReason>| match r {
        Some(FinishReason::Stop) => "stop",
        Some(FinishReason::Length) => "length",
        Some(FinishReason::Abort) => "abort",
        Some(FinishReason::ToolCalls) => "tool_calls",
        None => "None",
    };
    let mut v = json!({
        "responses": outputs.iter().map(|o| o.text.as_str()).collect::<Vec<_>>(),
        "finish_reasons": outputs.iter().map(|o| reason(o.finish_reason)).collect::<Vec<_>>(),
    });
    if let Some(p) = prompt_tokens {
        let usages: Vec<UsageInfo> = outputs
            .iter()
            .map(|o| UsageInfo { prompt_tokens: p, completion_tokens: o.token_ids.len(), total_tokens: p + o.token_ids.len() })
            .collect();
        v["usages"] = json!(usages);
    }
    if let Some(p) = prompt {
        v["prompt"] = json!(p);
    }
    v
}
