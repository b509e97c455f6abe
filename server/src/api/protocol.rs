//! Request and response bodies of the OpenAI routes, under OpenAI / vLLM field names.
//! A request body is read through two views: the route's own fields and the sampling
//! fields both routes share (see `extract::parse_view`).

use super::error::ApiError;
use crate::engine::{BeamParams, FinishReason, SamplingParams, StopReason, Usage};
use crate::model::GenerationDefaults;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by /v1/completions and /v1/chat/completions.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct SamplingFields {
    pub n: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string) → bias added to its logit.
    pub logit_bias: Option<HashMap<String, f32>>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub include_stop_str_in_output: Option<bool>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<i64>,
    pub skip_special_tokens: Option<bool>,
    /// vLLM's detokenizer option. It only changes text for slow (Python) tokenizers; the
    /// tokenizers.json models served here are fast ones, for which vLLM ignores it too, so
    /// it is checked and accepted and the text is the same either way.
    pub spaces_between_special_tokens: Option<bool>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Candidates generated per prompt: the `n` most likely are returned (beam width with
    /// beam search).
    pub best_of: Option<i64>,
    pub use_beam_search: Option<bool>,
    /// Beam width (alias of best_of with beam search; > 1 turns beam search on).
    pub num_beams: Option<i64>,
    pub length_penalty: Option<f32>,
    pub early_stopping: Option<bool>,
    /// vLLM: logprob tokens are written `token_id:<id>` instead of as text.
    pub return_tokens_as_token_ids: Option<bool>,
    /// Keep only the last k prompt tokens (-1: the model's context length), as vLLM.
    pub truncate_prompt_tokens: Option<i64>,
    /// Accepted for OpenAI compatibility; only logged.
    pub user: Option<String>,
}

fn count(param: &'static str, v: Option<i64>, min: i64) -> Result<Option<usize>, ApiError> {
    match v {
        Some(x) if x < min => Err(ApiError::bad_request(param, format!("{param} must be at least {min}, got {x}."))),
        Some(x) => Ok(Some(x as usize)),
        None => Ok(None),
    }
}

impl SamplingFields {
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }
    /// Applies `truncate_prompt_tokens` to tokenized prompts.
    pub fn truncate_prompt(&self, ids: &mut Vec<u32>, max_model_len: usize) -> Result<(), ApiError> {
        let keep = match self.truncate_prompt_tokens {
            None => return Ok(()),
            Some(-1) => max_model_len,
            Some(k) if k >= 1 => k as usize,
            Some(k) => return Err(ApiError::bad_request("truncate_prompt_tokens",
                format!("truncate_prompt_tokens must be -1 or at least 1, got {k}."))),
        };
        if ids.len() > keep {
            ids.drain(..ids.len() - keep);
        }
        Ok(())
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }

    /// The engine's parameters: request values, else the model's generation_config
    /// defaults (as vLLM does), else OpenAI's defaults. Range checks happen in the engine.
    pub fn to_params(&self, defaults: &GenerationDefaults, max_tokens: Option<usize>, logprobs: Option<usize>)
        -> Result<SamplingParams, ApiError> {
        let base = SamplingParams::default();
        let logit_bias = self
            .logit_bias
            .iter()
            .flatten()
            .map(|(k, &v)| {
                k.trim().parse::<u32>().map(|id| (id, v)).map_err(|_| {
                    ApiError::bad_request("logit_bias", format!("logit_bias keys must be token ids, got {k:?}."))
                })
            })
            .collect::<Result<_, _>>()?;
        let n = count("n", self.n, 1)?.unwrap_or(1);
        let beam = (self.use_beam_search == Some(true) || self.num_beams.is_some_and(|b| b > 1)).then(|| BeamParams {
            width: self.num_beams.filter(|&b| b > 1).or(self.best_of).map_or(n, |b| b.max(0) as usize),
            length_penalty: self.length_penalty.unwrap_or(1.0),
            early_stopping: self.early_stopping.unwrap_or(false),
        });
        Ok(SamplingParams {
            n,
            temperature: self.temperature.or(defaults.temperature).unwrap_or(base.temperature),
            top_p: self.top_p.or(defaults.top_p).unwrap_or(base.top_p),
            top_k: self.top_k.or(defaults.top_k).unwrap_or(base.top_k),
            min_p: self.min_p.or(defaults.min_p).unwrap_or(base.min_p),
            repetition_penalty: self.repetition_penalty.or(defaults.repetition_penalty).unwrap_or(base.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logit_bias,
            seed: self.seed,
            logprobs,
            stop: match &self.stop {
                None => vec![],
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(v)) => v.clone(),
            },
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            include_stop_str_in_output: self.include_stop_str_in_output.unwrap_or(false),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            min_tokens: count("min_tokens", self.min_tokens, 0)?.unwrap_or(0),
            max_tokens,
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
            beam,
        })
    }
}

/// `prompt` of /v1/completions: text, texts, token ids or lists of token ids.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// The fields of /v1/completions besides the shared sampling fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompletionFields {
    pub model: Option<String>,
    pub prompt: Prompt,
    /// Default 16, as OpenAI and vLLM.
    pub max_tokens: Option<i64>,
    /// Number of top alternatives per token (0–20).
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub add_special_tokens: Option<bool>,
}

/// Message content: a string or a list of parts (only text parts are accepted).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    #[schema(value_type = Vec<Object>)]
    Parts(Vec<Value>),
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ChatMessage {
    pub role: String,
    /// `message` is accepted too, as the Chinese-LLaMA-Alpaca demo API sends it.
    #[serde(alias = "message")]
    pub content: Option<Content>,
    pub name: Option<String>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Value>,
    pub tool_call_id: Option<String>,
}

/// The fields of /v1/chat/completions besides the shared sampling fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatFields {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// Default: up to the context length.
    pub max_tokens: Option<i64>,
    /// Newer name of `max_tokens`; wins when both are given.
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub add_generation_prompt: Option<bool>,
    pub continue_final_message: Option<bool>,
    pub add_special_tokens: Option<bool>,
    /// A per-request template (overrides the server's).
    pub chat_template: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
}

/// Fields of the OpenAI / vLLM contract this server refuses rather than ignores.
pub const UNSUPPORTED_COMPLETION_FIELDS: &[&str] = &["suffix", "prompt_logprobs", "prompt_embeds"];
pub const UNSUPPORTED_CHAT_FIELDS: &[&str] = &["functions", "prompt_logprobs", "audio", "prediction"];

#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct UsageInfo {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl From<Usage> for UsageInfo {
    fn from(u: Usage) -> Self {
        Self { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens }
    }
}

/// One choice's terminal fields, shared by both routes' choices.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Finish {
    pub finish_reason: Option<FinishReason>,
    /// vLLM's extra: the stop string or token id that ended the choice (null for EOS).
    pub stop_reason: Option<StopReason>,
}

/// /v1/completions logprobs (the legacy OpenAI layout).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<HashMap<String, f32>>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    #[serde(flatten)]
    pub finish: Finish,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageInfo>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatResponseMessage {
    pub role: String,
    /// null when the reply is only tool calls.
    pub content: Option<String>,
    pub tool_calls: Vec<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<ChatResponseMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<ChatDelta>,
    pub logprobs: Option<ChatLogprobs>,
    #[serde(flatten)]
    pub finish: Finish,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageInfo>,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// How one token reads on its own (logprobs show tokens this way, as vLLM does).
pub fn token_text(tok: &crate::tokenizer::TokenizerInfo, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_values_then_generation_config_then_openai_defaults() {
        let defaults = GenerationDefaults { temperature: Some(0.6), top_p: Some(0.9), ..Default::default() };
        let fields = SamplingFields { top_p: Some(0.5), stop: Some(Stop::One("\n".into())), ..Default::default() };
        let p = fields.to_params(&defaults, Some(7), None).unwrap();
        assert_eq!((p.temperature, p.top_p, p.top_k, p.max_tokens), (0.6, 0.5, 0, Some(7)));
        assert_eq!(p.stop, vec!["\n".to_string()]);
        let bad = SamplingFields { n: Some(0), ..Default::default() };
        assert!(bad.to_params(&defaults, None, None).is_err());
        let bias = SamplingFields { logit_bias: Some([("42".to_string(), -100.0)].into()), ..Default::default() };
        assert_eq!(bias.to_params(&defaults, None, None).unwrap().logit_bias[&42], -100.0);
    }
}
