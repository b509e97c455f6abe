//! `POST /v1/chat/completions`: messages → chat template → generation.

use super::error::ApiError;
use super::extract::{check_fields, parse_view, unknown_in_all, JsonBody, RequestId};
use super::generation::{GenEvent, Generation};
use super::protocol::*;
use super::state::AppState;
use super::tools::{ToolFields, ToolStream};
use super::structured::{self, StructuredFields};
use crate::engine::{FinishReason, TokenLogprob};
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
    let (tool_fields, unknown_d) = parse_view::<ToolFields>(&body)?;
    check_fields(&body, &unknown_in_all(&[unknown_a, unknown_b, unknown_c, unknown_d]), UNSUPPORTED_CHAT_FIELDS)?;
    let tools = tool_fields.plan(&state.args.server)?;
    let constraint = match (structured.constraint()?, &tools.constraint) {
        (Some((param, _)), Some(_)) => return Err(ApiError::bad_request(param,
            "Structured outputs cannot be combined with tool_choice \"required\" or a named function.")),
        (c, None) => c,
        (None, Some(c)) => Some(("tool_choice", c.clone())),
    };
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
    let mut params = sampling.to_params(&serving.defaults, max_tokens, top_logprobs)?;
    if tools.needs_special_tokens() {
        params.skip_special_tokens = false;
    }
    let tok = serving.engine.tokenizer().clone();
    let render = RenderRequest::new(&fields)?.with_tools(tools.template_tools.clone());
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
                let d = ChatDelta { role: Some(role.clone()), content: Some(echo_text.clone()), tool_calls: None };
                chunk(vec![delta_choice(i, d, None, Finish::default())], None)
            })
            .collect();
        let mut streams: Vec<ToolStream> = (0..n).map(|_| tools.streamer()).collect();
        return Ok(gen.into_sse(first, move |ev| match ev {
            GenEvent::Delta { choice, delta } => {
                if delta.text.is_empty() && delta.finish_reason.is_none() && delta.logprobs.is_empty() {
                    return vec![];
                }
                let lp = top_logprobs.map(|_| chat_logprobs(&tok, &delta.logprobs));
                let stream = &mut streams[choice];
                let mut out = stream.push(&delta.text);
                let mut finish_reason = delta.finish_reason;
                if finish_reason.is_some() {
                    let end = stream.finish();
                    out.content = [out.content, end.content].into_iter().flatten().reduce(|a, b| a + &b);
                    out.tool_calls.extend(end.tool_calls);
                    if stream.has_calls() && finish_reason == Some(FinishReason::Stop) {
                        finish_reason = Some(FinishReason::ToolCalls);
                    }
                }
                if out.content.is_none() && out.tool_calls.is_empty() && finish_reason.is_none() && lp.is_none() {
                    return vec![];
                }
                let tool_calls = (!out.tool_calls.is_empty()).then_some(out.tool_calls);
                let d = ChatDelta { role: None, content: out.content, tool_calls };
                let finish = Finish { finish_reason, stop_reason: delta.stop_reason };
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
        .map(|(index, out)| {
            let (content, calls) = tools.extract(&out.text);
            let finish_reason = match out.finish_reason {
                Some(FinishReason::Stop) if !calls.is_empty() => Some(FinishReason::ToolCalls),
                r => r,
            };
            let content = match content {
                Some(c) => Some(echo_text.clone() + &c),
                None => Some(echo_text.clone()).filter(|e| !e.is_empty()),
            };
            ChatChoice {
                index,
                message: Some(ChatResponseMessage { role: role.clone(), content,
                    tool_calls: calls.iter().map(|c| c.to_json(None)).collect() }),
                delta: None,
                logprobs: top_logprobs.map(|_| chat_logprobs(&tok, &out.logprobs)),
                finish: Finish { finish_reason, stop_reason: out.stop_reason },
            }
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

    /// The `tools` template variable.
    pub(super) fn with_tools(mut self, tools: Option<Value>) -> Self {
        if let Some(tools) = tools {
            if !self.kwargs.is_object() {
                self.kwargs = json!({});
            }
            self.kwargs["tools"] = tools;
        }
        self
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
        // An assistant turn of only tool calls has no content; simple templates concatenate
        // `message['content']` unconditionally, so it is rendered as empty text.
        None => Value::String(String::new()),
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
        // OpenAI sends arguments as a JSON string; templates index into them as objects
        // (`tool_call.arguments | tojson`), so they are parsed back, as vLLM does.
        let mut calls = calls.clone();
        for call in calls.as_array_mut().into_iter().flatten() {
            if let Some(args) = call.pointer_mut("/function/arguments") {
                if let Some(parsed) = args.as_str().and_then(|a| serde_json::from_str::<Value>(a).ok()) {
                    *args = parsed;
                }
            }
        }
        v["tool_calls"] = calls;
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
