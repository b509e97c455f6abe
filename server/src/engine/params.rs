//! What a caller asks the engine for: sampling parameters under vLLM's names, their
//! validation, the per-request event stream and the engine's typed errors.

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EngineError {
    /// A parameter is out of range; `param` names it as the API does.
    #[error("{message}")]
    InvalidParam { param: &'static str, message: String },
    #[error(
        "This model's maximum context length is {max_model_len} tokens. However, you requested \
         {} tokens ({prompt_tokens} in the prompt, {max_tokens} in the completion). Please reduce \
         the length of the prompt or completion.", prompt_tokens + max_tokens
    )]
    ContextLengthExceeded { max_model_len: usize, prompt_tokens: usize, max_tokens: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("request id {0:?} is already in use")]
    DuplicateRequestId(String),
    #[error("the engine has stopped")]
    EngineStopped,
    #[error("model execution failed: {0}")]
    Execution(String),
    #[error("invalid engine configuration: {0}")]
    Config(String),
}

impl EngineError {
    /// Fixed category for metric labels and the OpenAI error `type`.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidParam { .. } | Self::ContextLengthExceeded { .. } | Self::EmptyPrompt | Self::DuplicateRequestId(_) => {
                "BadRequestError"
            }
            Self::EngineStopped | Self::Execution(_) | Self::Config(_) => "InternalServerError",
        }
    }

    pub fn param(&self) -> Option<&'static str> {
        match self {
            Self::InvalidParam { param, .. } => Some(param),
            Self::ContextLengthExceeded { .. } | Self::EmptyPrompt => Some("prompt"),
            _ => None,
        }
    }
}

/// A hook into sampling (penalties of other kinds, structured-output masks, ...): it sees the
/// tokens generated so far and edits the logits of the next one in place.
pub trait LogitsProcessor: Send {
    fn process(&mut self, output_tokens: &[u32], logits: &mut [f32]) -> Result<(), String>;
}

/// Makes one processor per sequence (each of the `n` choices keeps its own state).
pub type LogitsProcessorFactory = Arc<dyn Fn() -> Box<dyn LogitsProcessor> + Send + Sync>;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub n: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// 0 or -1 disables.
    pub top_k: i64,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: HashMap<u32, f32>,
    pub seed: Option<u64>,
    /// Number of top alternatives to return with each sampled token's logprob.
    pub logprobs: Option<usize>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub include_stop_str_in_output: bool,
    pub ignore_eos: bool,
    pub min_tokens: usize,
    /// None: up to the context limit.
    pub max_tokens: Option<usize>,
    pub skip_special_tokens: bool,
    /// Beam search instead of sampling; `n` of the `width` beams are returned.
    pub beam: Option<BeamParams>,
}

/// vLLM's beam search settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeamParams {
    pub width: usize,
    /// Scores are cumulative logprob / length^length_penalty.
    pub length_penalty: f32,
    /// Stop as soon as `width` hypotheses have finished (else: once no live beam can beat them).
    pub early_stopping: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            n: 1,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: HashMap::new(),
            seed: None,
            logprobs: None,
            stop: vec![],
            stop_token_ids: vec![],
            include_stop_str_in_output: false,
            ignore_eos: false,
            min_tokens: 0,
            max_tokens: Some(16),
            skip_special_tokens: true,
            beam: None,
        }
    }
}

/// vLLM's `max_logprobs` default.
pub const MAX_LOGPROBS: usize = 20;

fn invalid(param: &'static str, message: String) -> EngineError {
    EngineError::InvalidParam { param, message }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5 || self.top_k == 1
    }

    /// Range checks with vLLM's messages; `vocab_size` bounds token ids.
    pub fn validate(&self, vocab_size: usize) -> Result<(), EngineError> {
        if self.n < 1 {
            return Err(invalid("n", format!("n must be at least 1, got {}.", self.n)));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(invalid("temperature", format!("temperature must be non-negative, got {}.", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid("top_p", format!("top_p must be in (0, 1], got {}.", self.top_p)));
        }
        if self.top_k < -1 {
            return Err(invalid("top_k", format!("top_k must be -1 (disable), or at least 1, got {}.", self.top_k)));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(invalid("min_p", format!("min_p must be in [0, 1], got {}.", self.min_p)));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(invalid("repetition_penalty", format!("repetition_penalty must be greater than zero, got {}.", self.repetition_penalty)));
        }
        for (param, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(invalid(param, format!("{param} must be in [-2, 2], got {v}.")));
            }
        }
        if let Some(max) = self.max_tokens {
            if max < 1 {
                return Err(invalid("max_tokens", format!("max_tokens must be at least 1, got {max}.")));
            }
            if self.min_tokens > max {
                return Err(invalid("min_tokens", format!("min_tokens must be less than or equal to max_tokens={max}, got {}.", self.min_tokens)));
            }
        }
        if let Some(k) = self.logprobs {
            if k > MAX_LOGPROBS {
                return Err(invalid("logprobs", format!("Requested sample logprobs of {k}, which is greater than max allowed: {MAX_LOGPROBS}")));
            }
        }
        for (&id, &bias) in &self.logit_bias {
            if id as usize >= vocab_size {
                return Err(invalid("logit_bias", format!("token_id {id} in logit_bias contains out-of-vocab token id (vocabulary size {vocab_size})")));
            }
            if !bias.is_finite() {
                return Err(invalid("logit_bias", format!("logit_bias for token {id} must be finite")));
            }
        }
        if let Some(&id) = self.stop_token_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(invalid("stop_token_ids", format!("stop_token_ids contains out-of-vocab token id {id}")));
        }
        if let Some(b) = &self.beam {
            if b.width < self.n.max(2) {
                return Err(invalid("best_of", format!(
                    "beam search needs a width (best_of / num_beams) of at least 2 and at least n={}, got {}.", self.n, b.width)));
            }
            if !b.length_penalty.is_finite() {
                return Err(invalid("length_penalty", "length_penalty must be finite.".into()));
            }
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "stop cannot contain an empty string.".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    Abort,
    /// Set by the chat API when a choice's text turned out to be tool calls; the engine
    /// itself ends sequences with the other three.
    ToolCalls,
}

/// What stopped a sequence with `FinishReason::Stop` (vLLM's `stop_reason`): None for EOS.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum StopReason {
    Text(String),
    TokenId(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    /// The most likely alternatives, best first.
    pub top: Vec<(u32, f32)>,
}

/// New output of one of the `n` sequences of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceDelta {
    pub index: usize,
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    /// Set on the sequence's last delta.
    pub finish_reason: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RequestEvent {
    Delta(SequenceDelta),
    /// Terminal: every sequence has finished. `queue_time` is how long the request waited
    /// before its first step (vLLM's `request_queue_time_seconds`).
    Finished { usage: Usage, queue_time: std::time::Duration },
    /// Terminal: the request failed inside the engine.
    Error(EngineError),
}

pub struct GenerateRequest {
    pub request_id: String,
    pub prompt_token_ids: Vec<u32>,
    pub params: SamplingParams,
    pub logits_processors: Vec<LogitsProcessorFactory>,
}

impl GenerateRequest {
    pub fn new(request_id: impl Into<String>, prompt_token_ids: Vec<u32>, params: SamplingParams) -> Self {
        Self { request_id: request_id.into(), prompt_token_ids, params, logits_processors: vec![] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_parameters_name_the_parameter() {
        let cases: Vec<(SamplingParams, &str)> = vec![
            (SamplingParams { temperature: -0.5, ..Default::default() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
            (SamplingParams { top_k: -2, ..Default::default() }, "top_k"),
            (SamplingParams { min_p: 1.5, ..Default::default() }, "min_p"),
            (SamplingParams { repetition_penalty: 0.0, ..Default::default() }, "repetition_penalty"),
            (SamplingParams { presence_penalty: 2.5, ..Default::default() }, "presence_penalty"),
            (SamplingParams { max_tokens: Some(0), ..Default::default() }, "max_tokens"),
            (SamplingParams { min_tokens: 20, max_tokens: Some(10), ..Default::default() }, "min_tokens"),
            (SamplingParams { logprobs: Some(21), ..Default::default() }, "logprobs"),
            (SamplingParams { n: 0, ..Default::default() }, "n"),
            (SamplingParams { logit_bias: [(1000u32, 1.0)].into(), ..Default::default() }, "logit_bias"),
            (SamplingParams { stop_token_ids: vec![5000], ..Default::default() }, "stop_token_ids"),
        ];
        for (p, name) in cases {
            let err = p.validate(1000).unwrap_err();
            assert_eq!(err.param(), Some(name), "{err}");
            assert_eq!(err.category(), "BadRequestError");
        }
        SamplingParams::default().validate(1000).unwrap();
    }
}
