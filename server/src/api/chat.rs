//! `POST /v1/chat/completions`: messages → chat template → generation.

use super::error::ApiError;
use super::extract::{check_fields, parse_view, unknown_in_all, JsonBody, RequestId};
use super::generation::{GenEvent, Generation};
use super::protocol::*;
use super::state::AppState;
use super::structured::{self, StructuredFields};
use crate::engine::TokenLogprob;
use crate::tokenizer::{render_chat_template, TokenizerInfo};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use std::sync::Arc;

#[utoipa::path(post, path = "/v1/chat/completions", tag = "OpenAI",
    request_body(content = inline(ChatFields), description = "Plus the shared sampling fields (SamplingFields)."),
    responses((status = 200, description = "A chat.completion object, or chat.completion.chunk events when `stream` is true")))]
#[tracing::instrument(skip_all, fields(request_id = %rid.0))]
pub async fn chat_completions(State(state): State<Arc<AppState>>, Extension(rid): Extension<RequestId>,
    JsonBody(body): JsonBody) -> Result<Response, ApiError> {
    let (fields, unknown_a) = parse_view::<ChatFields>(&body)?;
    let (sampling, unknown_b) = parse_view::<SamplingFields>(&body)?;
    let (structured, unknown_c) = parse_view::<StructuredFields>(&body)?;
    check_fields(&body, &unknown_in_all(&[unknown_a, unknown_b, unknown_c]), UNSUPPORTED_CHAT_FIELDS)?;
    let constraint = structured.constraint()?;
    let serving = state.admit()?;
    let model = state.resolve_model(fields.model.as_deref())?;
    let top_logprobs = match (fields.logprobs.unwrap_or(false), fields.top_logprobs) {
        (_, Some(k)) if k < 0 => return Err(ApiError::bad_request("top_logprobs", format!("top_logprobs must be non-negative, got {k}."))),
        (false, Some(k)) if k > 0 => return Err(ApiError::bad_request("top_logprobs",
            "when using `top_logprobs`, `logprobs` must be set to true.")),
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, _) => None,
    };
    let max_tokens = match fields.max_completion_tokens.or(fields.max_tokens) {
        Some(m) if m < 1 => return Err(ApiError::bad_request("max_tokens", format!("max_tokens must be at least 1, got {m}."))),
        Some(m) => Some(m as usize),
        None => None,
    };
    let params = sampling.to_params(&serving.defaults, max_tokens, top_logprobs)?;
    let tok = serving.engine.tokenizer().clone();
    let render = RenderRequest::new(&fields)?;
    let echo_text = if fields.echo.unwrap_or(false) { render.echo_text(&state.args.server.response_role) } else { String::new() };
    let mut prompt_ids = tokio::task::spawn_blocking(move || render.tokenize(&tok))
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizer task: {e}")))??;
    sampling.truncate_prompt(&mut prompt_ids, serving.max_model_len)?;
    let processors = structured::processors(&serving, constraint, &params).await?;
    let gen = Generation::start(&state, &rid.0, vec![prompt_ids], params, processors)?;
    let id = format!("chatcmpl-{}", rid.0);
    let created = unix_now();
    let role = state.args.server.response_role.clone();
    let tok = serving.engine.tokenizer().clone();
    let n = gen.num_choices();

    if sampling.stream() {
        let include_usage = sampling.include_usage();
        let chunk = {
            let (id, model) = (id.clone(), model.clone());
            move |choices: Vec<ChatChoice>, usage: Option<UsageInfo>| serde_json::to_value(ChatResponse {
                id: id.clone(), object: "chat.completion.chunk", created, model: model.clone(), choices, usage,
            }).expect("serializable")
        };
        let delta_choice = |index: usize, delta: ChatDelta, logprobs: Option<ChatLogprobs>, finish: Finish| ChatChoice {
            index, message: None, delta: Some(delta), logprobs, finish };
        // OpenAI sends the role first, with empty content, for every choice.
        let first = (0..n)
            .map(|i| {
                let d = ChatDelta { role: Some(role.clone()), content: Some(echo_text.clone()) };
                chunk(vec![delta_choice(i, d, None, Finish::default())], None)
            })
            .collect();
        return Ok(gen.into_sse(first, move |ev| match ev {
            GenEvent::Delta { choice, delta } => {
                if delta.text.is_empty() && delta.finish_reason.is_none() && delta.logprobs.is_empty() {
                    return vec![];
                }
                let lp = top_logprobs.map(|_| chat_logprobs(&tok, &delta.logprobs));
                let d = ChatDelta { role: None, content: Some(delta.text) };
                let finish = Finish { finish_reason: delta.finish_reason, stop_reason: delta.stop_reason };
                vec![chunk(vec![delta_choice(choice, d, lp, finish)], None)]
            }
            GenEvent::Done(usage) if include_usage => vec![chunk(vec![], Some(usage.into()))],
            _ => vec![],
        }));
    }

    let (outputs, usage) = gen.collect().await?;
    let choices = outputs
        .into_iter()
        .enumerate()
        .map(|(index, out)| ChatChoice {
            index,
            message: Some(ChatResponseMessage { role: role.clone(), content: echo_text.clone() + &out.text, tool_calls: vec![] }),
            delta: None,
            logprobs: top_logprobs.map(|_| chat_logprobs(&tok, &out.logprobs)),
            finish: Finish { finish_reason: out.finish_reason, stop_reason: out.stop_reason },
        })
        .collect();
    Ok(Json(ChatResponse { id, object: "chat.completion", created, model, choices, usage: Some(usage.into()) })
        .into_response())
}

/// A conversation ready to render: messages as the template sees them and the options.
pub(super) struct RenderRequest {
    messages: Vec<Value>,
    add_generation_prompt: bool,
    continue_final_message: bool,
    add_special_tokens: bool,
    template: Option<String>,
    kwargs: Value,
}

impl RenderRequest {
    pub(super) fn new(fields: &ChatFields) -> Result<Self, ApiError> {
        if fields.messages.is_empty() {
            return Err(ApiError::bad_request("messages", "`messages` must contain at least one message."));
        }
        let messages = fields.messages.iter().enumerate().map(|(i, m)| message_json(i, m)).collect::<Result<_, _>>()?;
        let continue_final_message = fields.continue_final_message.unwrap_or(false);
        let add_generation_prompt = fields.add_generation_prompt.unwrap_or(!continue_final_message);
        if continue_final_message && add_generation_prompt {
            return Err(ApiError::bad_request("continue_final_message",
                "continue_final_message and add_generation_prompt cannot both be true."));
        }
        if continue_final_message && fields.messages.last().map(|m| m.role.as_str()) != Some("assistant") {
            return Err(ApiError::bad_request("continue_final_message",
                "continue_final_message needs the last message to be from the assistant."));
        }
        Ok(Self {
            messages,
            add_generation_prompt,
            continue_final_message,
            add_special_tokens: fields.add_special_tokens.unwrap_or(false),
            template: fields.chat_template.clone(),
            kwargs: fields.chat_template_kwargs.clone().map(Value::Object).unwrap_or(Value::Null),
        })
    }

    /// With `echo`, the reply starts with the last message when it has the reply's role.
    fn echo_text(&self, role: &str) -> String {
        match self.messages.last() {
            Some(m) if m["role"] == role => m["content"].as_str().unwrap_or_default().to_string(),
            _ => String::new(),
        }
    }

    pub(super) fn tokenize(&self, tok: &TokenizerInfo) -> Result<Vec<u32>, ApiError> {
        let messages = Value::Array(self.messages.clone());
        let template = self.template.as_deref().or(tok.chat_template.as_deref()).ok_or_else(|| {
            ApiError::bad_request("messages", "The model has no chat template; start the server with --chat-template \
                or pass `chat_template` in the request.")
        })?;
        let mut text = render_chat_template(template, &messages, self.add_generation_prompt, tok.bos_token.as_deref(),
            tok.eos_token.as_deref(), &self.kwargs)
            .map_err(|e| ApiError::bad_request("messages", e))?;
        if self.continue_final_message {
            // Cut what the template appended after the final message (its end-of-turn).
            let last = self.messages.last().and_then(|m| m["content"].as_str()).unwrap_or_default();
            if let Some(pos) = text.rfind(last).filter(|_| !last.is_empty()) {
                text.truncate(pos + last.len());
            }
        }
        tok.encode(&text, self.add_special_tokens).map_err(|e| ApiError::bad_request("messages", e))
    }
}

/// A message as chat templates expect it: text content flattened to a string.
fn message_json(i: usize, m: &ChatMessage) -> Result<Value, ApiError> {
    let content = match &m.content {
        None => Value::Null,
        Some(Content::Text(t)) => Value::String(t.clone()),
        Some(Content::Parts(parts)) => {
            let mut texts = vec![];
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => texts.push(t),
                    (kind, _) => return Err(ApiError::bad_request(format!("messages[{i}].content"), format!(
                        "Only text content parts are supported, got type {:?}.", kind.unwrap_or("<missing>")))),
                }
            }
            Value::String(texts.join("\n"))
        }
    };
    let mut v = json!({"role": m.role, "content": content});
    if let Some(name) = &m.name {
        v["name"] = json!(name);
    }
    if let Some(calls) = &m.tool_calls {
        v["tool_calls"] = calls.clone();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    Ok(v)
}

fn chat_logprobs(tok: &TokenizerInfo, lps: &[TokenLogprob]) -> ChatLogprobs {
    let entry = |id: u32| {
        let token = token_text(tok, id);
        let bytes = token.as_bytes().to_vec();
        (token, bytes)
    };
    ChatLogprobs {
        content: lps
            .iter()
            .map(|lp| {
                let (token, bytes) = entry(lp.token_id);
                let top_logprobs = lp.top.iter().map(|&(id, logprob)| {
                    let (token, bytes) = entry(id);
                    TopLogprob { token, logprob, bytes }
                }).collect();
                ChatTokenLogprob { token, logprob: lp.logprob, bytes, top_logprobs }
            })
            .collect(),
    }
}
