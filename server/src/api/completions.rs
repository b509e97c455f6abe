//! `POST /v1/completions`.

use super::error::ApiError;
use super::extract::{check_fields, parse_view, unknown_in_all, JsonBody, RequestId};
use super::generation::{ChoiceOutput, GenEvent, Generation};
use super::protocol::*;
use super::state::AppState;
use super::structured::{self, StructuredFields};
use crate::engine::TokenLogprob;
use crate::tokenizer::TokenizerInfo;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use std::collections::HashMap;
use std::sync::Arc;

/// vLLM's and OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: usize = 16;

#[utoipa::path(post, path = "/v1/completions", tag = "OpenAI",
    request_body(content = inline(CompletionFields), description = "Plus the shared sampling fields (SamplingFields)."),
    responses((status = 200, description = "A text_completion object, or server-sent chunks when `stream` is true")))]
#[tracing::instrument(skip_all, fields(request_id = %rid.0))]
pub async fn completions(State(state): State<Arc<AppState>>, Extension(rid): Extension<RequestId>,
    JsonBody(body): JsonBody) -> Result<Response, ApiError> {
    let (fields, unknown_a) = parse_view::<CompletionFields>(&body)?;
    let (sampling, unknown_b) = parse_view::<SamplingFields>(&body)?;
    let (structured, unknown_c) = parse_view::<StructuredFields>(&body)?;
    check_fields(&body, &unknown_in_all(&[unknown_a, unknown_b, unknown_c]), UNSUPPORTED_COMPLETION_FIELDS)?;
    let constraint = structured.constraint()?;
    let serving = state.admit()?;
    let model = state.resolve_model(fields.model.as_deref())?;
    let logprobs = fields.logprobs.map(|k| if k < 0 {
        Err(ApiError::bad_request("logprobs", format!("logprobs must be non-negative, got {k}.")))
    } else { Ok(k as usize) }).transpose()?;
    let echo = fields.echo.unwrap_or(false);
    if echo && logprobs.is_some() {
        return Err(ApiError::bad_request("echo", "`echo` together with `logprobs` needs prompt logprobs, which this \
            server does not compute yet."));
    }
    let max_tokens = match fields.max_tokens {
        Some(m) if m < 1 => return Err(ApiError::bad_request("max_tokens", format!("max_tokens must be at least 1, got {m}."))),
        Some(m) => m as usize,
        None => DEFAULT_MAX_TOKENS,
    };
    let mut params = sampling.to_params(&serving.defaults, Some(max_tokens), logprobs)?;
    let n = params.n;
    let best_of = match sampling.best_of.filter(|_| params.beam.is_none()) {
        Some(b) if b < n as i64 => return Err(ApiError::bad_request("best_of",
            format!("best_of must be greater than or equal to n, got best_of={b} and n={n}."))),
        Some(b) if b as usize > n && sampling.stream() => return Err(ApiError::bad_request("best_of",
            "best_of greater than n is not supported when streaming.")),
        Some(b) => b as usize,
        None => n,
    };
    if best_of > n {
        // Generate best_of candidates with their logprobs; the n most likely are returned.
        params.n = best_of;
        params.logprobs.get_or_insert(0);
    }
    let tok = serving.engine.tokenizer().clone();
    let add_special = fields.add_special_tokens.unwrap_or(true);
    let prompt = fields.prompt;
    let mut prompts = tokio::task::spawn_blocking(move || tokenize_prompts(&tok, prompt, add_special))
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizer task: {e}")))??;
    for (ids, _) in &mut prompts {
        sampling.truncate_prompt(ids, serving.max_model_len)?;
    }
    let echo_texts: Vec<String> = if echo { prompts.iter().map(|p| p.1.clone()).collect() } else { vec![] };
    let processors = structured::processors(&serving, constraint, &params).await?;
    let gen = Generation::start(&state, &rid.0, prompts.into_iter().map(|p| p.0).collect(), params, processors)?;
    let id = format!("cmpl-{}", rid.0);
    let created = unix_now();
    let tok = serving.engine.tokenizer().clone();
    let as_ids = sampling.return_tokens_as_token_ids.unwrap_or(false);

    if sampling.stream() {
        let include_usage = sampling.include_usage();
        let chunk = {
            let (id, model) = (id.clone(), model.clone());
            move |choices: Vec<CompletionChoice>, usage: Option<UsageInfo>| serde_json::to_value(CompletionResponse {
                id: id.clone(), object: "text_completion", created, model: model.clone(), choices, usage,
            }).expect("serializable")
        };
        let first = echo_texts
            .iter()
            .enumerate()
            .flat_map(|(p, text)| (0..n).map(move |i| (p * n + i, text.clone())))
            .map(|(index, text)| chunk(vec![CompletionChoice { index, text, logprobs: None, finish: Finish::default() }], None))
            .collect();
        let mut offsets: HashMap<usize, usize> = HashMap::new();
        return Ok(gen.into_sse(first, move |ev| match ev {
            GenEvent::Delta { choice, delta } => {
                if delta.text.is_empty() && delta.finish_reason.is_none() && delta.logprobs.is_empty() {
                    return vec![];
                }
                let offset = offsets.entry(choice).or_default();
                let lp = logprobs.map(|_| completion_logprobs(&tok, &delta.logprobs, offset, as_ids));
                let finish = Finish { finish_reason: delta.finish_reason, stop_reason: delta.stop_reason };
                vec![chunk(vec![CompletionChoice { index: choice, text: delta.text, logprobs: lp, finish }], None)]
            }
            GenEvent::Done(usage) if include_usage => vec![chunk(vec![], Some(usage.into()))],
            _ => vec![],
        }));
    }

    let (outputs, usage) = gen.collect().await?;
    let choices = keep_best(outputs, best_of, n)
        .into_iter()
        .enumerate()
        .map(|(index, out): (usize, ChoiceOutput)| {
            let prefix = echo_texts.get(index / n).cloned().unwrap_or_default();
            let lp = logprobs.map(|_| completion_logprobs(&tok, &out.logprobs, &mut 0, as_ids));
            CompletionChoice { index, text: prefix + &out.text, logprobs: lp,
                finish: Finish { finish_reason: out.finish_reason, stop_reason: out.stop_reason } }
        })
        .collect();
    Ok(Json(CompletionResponse { id, object: "text_completion", created, model, choices, usage: Some(usage.into()) })
        .into_response())
}

/// Of each prompt's `best_of` candidates, the `n` with the highest cumulative logprob
/// (vLLM's `best_of`), best first; with best_of == n, everything in order.
fn keep_best(outputs: Vec<ChoiceOutput>, best_of: usize, n: usize) -> Vec<ChoiceOutput> {
    if best_of == n {
        return outputs;
    }
    let score = |o: &ChoiceOutput| o.logprobs.iter().map(|l| l.logprob as f64).sum::<f64>();
    let mut outputs = outputs.into_iter().peekable();
    let mut kept = vec![];
    while outputs.peek().is_some() {
        let mut group: Vec<ChoiceOutput> = outputs.by_ref().take(best_of).collect();
        group.sort_by(|a, b| score(b).total_cmp(&score(a)));
        kept.extend(group.into_iter().take(n));
    }
    kept
}

/// Each prompt's token ids and text (the text is what `echo` returns).
fn tokenize_prompts(tok: &TokenizerInfo, prompt: Prompt, add_special: bool) -> Result<Vec<(Vec<u32>, String)>, ApiError> {
    let from_text = |t: String| -> Result<(Vec<u32>, String), ApiError> {
        let ids = tok.encode(&t, add_special).map_err(|e| ApiError::bad_request("prompt", e))?;
        Ok((ids, t))
    };
    let from_ids = |ids: Vec<u32>| -> (Vec<u32>, String) {
        let text = tok.decode(&ids, false).unwrap_or_default();
        (ids, text)
    };
    let prompts = match prompt {
        Prompt::Text(t) => vec![from_text(t)?],
        Prompt::Texts(ts) => ts.into_iter().map(from_text).collect::<Result<_, _>>()?,
        Prompt::Tokens(ids) => vec![from_ids(ids)],
        Prompt::TokenLists(lists) => lists.into_iter().map(from_ids).collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::bad_request("prompt", "The prompt list must not be empty."));
    }
    Ok(prompts)
}

/// The legacy logprobs layout; `offset` carries `text_offset` across stream chunks.
fn completion_logprobs(tok: &TokenizerInfo, lps: &[TokenLogprob], offset: &mut usize, as_ids: bool) -> CompletionLogprobs {
    let name = |id: u32| if as_ids { format!("token_id:{id}") } else { token_text(tok, id) };
    let mut out = CompletionLogprobs::default();
    for lp in lps {
        let text = name(lp.token_id);
        let mut top: HashMap<String, f32> = lp.top.iter().map(|&(id, l)| (name(id), l)).collect();
        top.entry(text.clone()).or_insert(lp.logprob);
        out.text_offset.push(*offset);
        *offset += text.len();
        out.tokens.push(text);
        out.token_logprobs.push(Some(lp.logprob));
        out.top_logprobs.push(Some(top));
    }
    out
}
