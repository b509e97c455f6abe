//! One HTTP request's generation: its prompts submitted to the engine, their event streams
//! merged into one (choice index = prompt × n + sequence), latency metrics observed as
//! events pass, and the two ways out: an SSE stream or a collected result.

use super::error::ApiError;
use super::state::{AppState, InFlightGuard};
use crate::engine::{EngineError, FinishReason, GenerateRequest, LogitsProcessorFactory, RequestEvent, SamplingParams, SequenceDelta, StopReason,
    TokenLogprob, Usage};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream, SelectAll, Stream, StreamExt};
use serde_json::Value;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

pub enum GenEvent {
    Delta { choice: usize, delta: SequenceDelta },
    /// Every choice has finished.
    Done(Usage),
    Failed(EngineError),
}

pub struct Generation {
    events: SelectAll<BoxStream<'static, (usize, RequestEvent)>>,
    n: usize,
    prompts_left: usize,
    usage: Usage,
    state: Arc<AppState>,
    started: Instant,
    first_token_seen: bool,
    last_token_at: Vec<Option<Instant>>,
    done: bool,
    _guard: InFlightGuard,
}

impl Generation {
    /// Submits one engine request per prompt, all under the HTTP request id `id`.
    /// `processors` (structured outputs) run on every sequence of every prompt.
    pub fn start(state: &Arc<AppState>, id: &str, prompts: Vec<Vec<u32>>, params: SamplingParams,
        processors: Vec<LogitsProcessorFactory>) -> Result<Self, ApiError> {
        let serving = state.admit()?;
        if prompts.is_empty() {
            return Err(ApiError::bad_request("prompt", "The prompt must not be empty."));
        }
        let engine_ids: Vec<String> = if prompts.len() == 1 {
            vec![id.to_string()]
        } else {
            (0..prompts.len()).map(|i| format!("{id}-{i}")).collect()
        };
        let guard = state.inflight.register(id, engine_ids.clone())?;
        let n = params.n;
        let num_prompts = prompts.len();
        let mut events = SelectAll::new();
        for (i, (ids, engine_id)) in prompts.into_iter().zip(engine_ids).enumerate() {
            // Dropping `events` (client gone) closes every receiver: the engine aborts them.
            let mut req = GenerateRequest::new(engine_id, ids, params.clone());
            req.logits_processors = processors.clone();
            let rx = serving.engine.submit(req)?;
            events.push(UnboundedReceiverStream::new(rx).map(move |ev| (i, ev)).boxed());
        }
        Ok(Self {
            events,
            n,
            prompts_left: num_prompts,
            usage: Usage::default(),
            state: state.clone(),
            started: Instant::now(),
            first_token_seen: false,
            last_token_at: vec![None; n * num_prompts],
            done: false,
            _guard: guard,
        })
    }

    pub fn num_choices(&self) -> usize {
        self.last_token_at.len()
    }

    pub async fn next(&mut self) -> Option<GenEvent> {
        if self.done {
            return None;
        }
        loop {
            let Some((prompt, ev)) = self.events.next().await else {
                self.done = true;
                return Some(GenEvent::Failed(EngineError::EngineStopped));
            };
            match ev {
                RequestEvent::Delta(delta) => {
                    let choice = prompt * self.n + delta.index;
                    self.observe(choice, &delta);
                    return Some(GenEvent::Delta { choice, delta });
                }
                RequestEvent::Finished { usage, queue_time } => {
                    self.usage.prompt_tokens += usage.prompt_tokens;
                    self.usage.completion_tokens += usage.completion_tokens;
                    self.prompts_left -= 1;
                    self.state.metrics.observe_request(self.started.elapsed(), queue_time);
                    if self.prompts_left == 0 {
                        self.done = true;
                        return Some(GenEvent::Done(self.usage));
                    }
                }
                RequestEvent::Error(e) => {
                    self.done = true;
                    return Some(GenEvent::Failed(e));
                }
            }
        }
    }

    fn observe(&mut self, choice: usize, delta: &SequenceDelta) {
        let now = Instant::now();
        let metrics = &self.state.metrics;
        if !delta.token_ids.is_empty() {
            if !self.first_token_seen {
                self.first_token_seen = true;
                metrics.observe_first_token(now - self.started);
            }
            if let Some(prev) = self.last_token_at[choice] {
                metrics.observe_inter_token((now - prev) / delta.token_ids.len() as u32);
            }
            self.last_token_at[choice] = Some(now);
        }
        if let Some(reason) = delta.finish_reason {
            metrics.count_finished(reason);
        }
    }

    /// Runs to the end and returns every choice's output.
    pub async fn collect(mut self) -> Result<(Vec<ChoiceOutput>, Usage), ApiError> {
        let mut choices = vec![ChoiceOutput::default(); self.num_choices()];
        while let Some(ev) = self.next().await {
            match ev {
                GenEvent::Delta { choice, delta } => choices[choice].push(delta),
                GenEvent::Done(usage) => return Ok((choices, usage)),
                GenEvent::Failed(e) => return Err(e.into()),
            }
        }
        Err(EngineError::EngineStopped.into())
    }

    /// The JSON chunks of a streamed response: `first`, then what `on_event` makes of each
    /// event; a failure mid-stream becomes an OpenAI error object.
    fn chunks(self, first: Vec<Value>, on_event: impl FnMut(GenEvent) -> Vec<Value> + Send + 'static)
        -> impl Stream<Item = Value> + Send + 'static {
        let body = stream::unfold((self, on_event), |(mut gen, mut on_event)| async move {
            let chunks = match gen.next().await? {
                GenEvent::Failed(e) => {
                    let err = ApiError::from(e);
                    tracing::warn!(error = %err, "generation failed mid-stream");
                    vec![err.body(super::error::explicit_errors())]
                }
                other => on_event(other),
            };
            Some((stream::iter(chunks), (gen, on_event)))
        })
        .flatten();
        stream::iter(first).chain(body)
    }

    /// Server-sent events, ending with `data: [DONE]` (the OpenAI routes).
    pub fn into_sse(self, first: Vec<Value>, on_event: impl FnMut(GenEvent) -> Vec<Value> + Send + 'static) -> Response {
        let events = self.chunks(first, on_event).map(|v| Ok::<_, Infallible>(Event::default().data(v.to_string())));
        let done = stream::once(async { Ok(Event::default().data("[DONE]")) });
        Sse::new(events.chain(done)).into_response()
    }

    /// One JSON object per line (happy_vllm's and vLLM's older `/generate` streams).
    pub fn into_ndjson(self, on_event: impl FnMut(GenEvent) -> Vec<Value> + Send + 'static) -> Response {
        let lines = self.chunks(vec![], on_event).map(|v| Ok::<_, Infallible>(format!("{v}\n")));
        ([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(lines)).into_response()
    }
}

/// Everything one choice produced.
#[derive(Debug, Clone, Default)]
pub struct ChoiceOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
}

impl ChoiceOutput {
    pub fn push(&mut self, d: SequenceDelta) {
        self.text.push_str(&d.text);
        self.token_ids.extend(d.token_ids);
        self.logprobs.extend(d.logprobs);
        if d.finish_reason.is_some() {
            self.finish_reason = d.finish_reason;
            self.stop_reason = d.stop_reason;
        }
    }
}
