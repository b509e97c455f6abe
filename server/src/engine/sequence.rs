//! One generated sequence: its tokens, KV blocks, sampling state and the text it has
//! streamed so far, with stop conditions applied as each token arrives.

use super::params::{FinishReason, LogitsProcessor, SamplingParams, SequenceDelta, StopReason, TokenLogprob};
use crate::tokenizer::{IncrementalDecoder, TokenizerInfo};
use rand::rngs::StdRng;
use std::sync::Arc;

/// What all sequences of one request share.
pub struct RequestShared {
    pub params: SamplingParams,
    /// Output budget after defaulting (`max_tokens` or what the context leaves).
    pub max_tokens: usize,
    /// EOS ids (unless `ignore_eos`) and `stop_token_ids`: masked before `min_tokens`.
    pub end_tokens: Vec<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Bytes held back while streaming so a stop string is never half-sent.
    pub holdback: usize,
}

impl RequestShared {
    pub fn new(params: SamplingParams, max_tokens: usize, eos: &[u32]) -> Self {
        let eos_token_ids = if params.ignore_eos { vec![] } else { eos.to_vec() };
        let mut end_tokens = eos_token_ids.clone();
        end_tokens.extend(&params.stop_token_ids);
        let holdback = if params.include_stop_str_in_output {
            0
        } else {
            params.stop.iter().map(String::len).max().unwrap_or(1).saturating_sub(1)
        };
        Self { params, max_tokens, end_tokens, eos_token_ids, holdback }
    }
}

pub struct Sequence {
    pub request: u64,
    pub index: usize,
    pub shared: Arc<RequestShared>,
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    pub num_computed: usize,
    pub block_table: Vec<u32>,
    pub rng: StdRng,
    pub processors: Vec<Box<dyn LogitsProcessor>>,
    detok: IncrementalDecoder,
    text: String,
    sent: usize,
    pub finished: bool,
    /// Siblings still to be forked from this sequence once its prompt is computed (n > 1).
    pub pending_forks: usize,
    /// A beam that has proposed this round's continuations and waits for its siblings'
    /// (beam search): nothing to compute, so it is neither scheduled nor admitted.
    pub awaiting_round: bool,
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Sequence {
    pub fn new(request: u64, index: usize, shared: Arc<RequestShared>, prompt: Vec<u32>, rng: StdRng,
        processors: Vec<Box<dyn LogitsProcessor>>) -> Self {
        Self {
            request,
            index,
            shared,
            detok: IncrementalDecoder::new(&prompt),
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            block_table: vec![],
            rng,
            processors,
            text: String::new(),
            sent: 0,
            finished: false,
            pending_forks: 0,
            awaiting_round: false,
        }
    }

    /// A sibling sharing everything computed so far (blocks are shared by the caller).
    pub fn fork(&self, index: usize, rng: StdRng, processors: Vec<Box<dyn LogitsProcessor>>) -> Self {
        Self {
            request: self.request,
            index,
            shared: self.shared.clone(),
            tokens: self.tokens.clone(),
            prompt_len: self.prompt_len,
            num_computed: self.num_computed,
            block_table: self.block_table.clone(),
            rng,
            processors,
            detok: self.detok.clone(),
            text: self.text.clone(),
            sent: self.sent,
            finished: false,
            pending_forks: 0,
            awaiting_round: false,
        }
    }

    pub fn output_tokens(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Appends a sampled token, applies stop conditions and returns what to stream.
    pub fn append_token(&mut self, token: u32, logprob: Option<TokenLogprob>, tok: &TokenizerInfo,
        max_model_len: usize) -> SequenceDelta {
        let shared = self.shared.clone();
        let p = &shared.params;
        self.tokens.push(token);
        let n_out = self.tokens.len() - self.prompt_len;
        let skip = p.skip_special_tokens;
        let mut finish = None;
        if shared.eos_token_ids.contains(&token) {
            finish = Some((FinishReason::Stop, None));
        } else if p.stop_token_ids.contains(&token) {
            finish = Some((FinishReason::Stop, Some(StopReason::TokenId(token))));
        }
        // An EOS / stop token ends the text; it is reported in token_ids, not decoded.
        let decoded = if finish.is_none() { self.tokens.len() } else { self.tokens.len() - 1 };
        if finish.is_none() {
            let before = self.text.len();
            self.text.push_str(&self.detok.step(tok, &self.tokens, skip));
            // Like vLLM, stop strings only count once min_tokens are out.
            if n_out >= p.min_tokens {
                if let Some((pos, stop)) = self.find_stop(before) {
                    let end = if p.include_stop_str_in_output { pos + stop.len() } else { pos };
                    self.text.truncate(end);
                    finish = Some((FinishReason::Stop, Some(StopReason::Text(stop))));
                }
            }
        }
        if finish.is_none() && (n_out >= shared.max_tokens || self.tokens.len() >= max_model_len) {
            finish = Some((FinishReason::Length, None));
        }
        if finish.as_ref().is_some_and(|(_, r)| !matches!(r, Some(StopReason::Text(_)))) {
            self.text.push_str(&self.detok.flush(tok, &self.tokens[..decoded], skip));
        }
        let emit_to = if finish.is_some() {
            self.text.len()
        } else {
            floor_char_boundary(&self.text, self.text.len().saturating_sub(shared.holdback))
        };
        let text = if emit_to > self.sent { self.text[self.sent..emit_to].to_string() } else { String::new() };
        self.sent = self.sent.max(emit_to);
        self.finished = finish.is_some();
        let (finish_reason, stop_reason) = match finish {
            Some((f, r)) => (Some(f), r),
            None => (None, None),
        };
        SequenceDelta { index: self.index, text, token_ids: vec![token], logprobs: logprob.into_iter().collect(),
            finish_reason, stop_reason }
    }

    /// Earliest stop string that ends in text added since byte `before`.
    fn find_stop(&self, before: usize) -> Option<(usize, String)> {
        let stops = &self.shared.params.stop;
        let longest = stops.iter().map(String::len).max()?;
        let start = floor_char_boundary(&self.text, before.saturating_sub(longest - 1));
        stops
            .iter()
            .filter_map(|s| self.text[start..].find(s.as_str()).map(|i| (start + i, s.clone())))
            .min_by_key(|(i, _)| *i)
    }

    /// The finished delta of a sequence stopped from outside (abort).
    pub fn abort_delta(&mut self) -> SequenceDelta {
        self.finished = true;
        let text = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        SequenceDelta { index: self.index, text, token_ids: vec![], logprobs: vec![],
            finish_reason: Some(FinishReason::Abort), stop_reason: None }
    }
}
