//! Turning one sequence's logits into its next token: penalties, bias, logits processors,
//! then greedy or temperature / top-k / top-p / min-p sampling from the sequence's own RNG
//! (one draw per step, so a seed gives the same text whatever else is in the batch).

use super::params::{LogitsProcessor, SamplingParams, TokenLogprob};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::HashMap;

pub struct SamplerState<'a> {
    pub params: &'a SamplingParams,
    pub prompt_tokens: &'a [u32],
    pub output_tokens: &'a [u32],
    /// Tokens masked until `min_tokens` outputs exist (EOS ids and stop_token_ids).
    pub end_tokens: &'a [u32],
    pub processors: &'a mut [Box<dyn LogitsProcessor>],
    pub rng: &'a mut StdRng,
}

/// Natural-log softmax of one value, from a row's max and log-sum-exp.
fn log_softmax_stats(logits: &[f32]) -> (f32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&x| (x - max).exp()).sum();
    (max, max + sum.ln())
}

/// Indices of the `k` largest values, best first.
fn top_indices(values: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(values.len());
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let by_desc = |a: &u32, b: &u32| values[*b as usize].total_cmp(&values[*a as usize]).then(a.cmp(b));
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, by_desc);
        idx.truncate(k);
    }
    idx.sort_by(by_desc);
    idx
}

/// The `k` most likely next tokens with their log-probabilities under the raw row, best
/// first (the candidates a beam expands into).
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let (_, lse) = log_softmax_stats(logits);
    top_indices(logits, k).into_iter().map(|i| (i, logits[i as usize] - lse)).collect()
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn apply_penalties(p: &SamplingParams, prompt: &[u32], output: &[u32], logits: &mut [f32]) {
    if p.repetition_penalty != 1.0 {
        // vLLM/HF: every token seen in prompt or output is discouraged, sign-aware.
        let mut seen = vec![false; logits.len()];
        for &t in prompt.iter().chain(output) {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for (l, _) in logits.iter_mut().zip(&seen).filter(|(_, s)| **s) {
            *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in output {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
            }
        }
    }
}

/// Picks from the filtered distribution; `logits` are already temperature-scaled.
fn sample_filtered(p: &SamplingParams, logits: &[f32], rng: &mut StdRng) -> u32 {
    let vocab = logits.len();
    let top_k = if p.top_k > 0 { (p.top_k as usize).min(vocab) } else { vocab };
    // Nucleus sampling needs candidates sorted by probability; sorting the whole vocabulary
    // every step is wasteful, so try the best 1024 first and widen only if they fall short.
    let mut width = if p.top_p < 1.0 { top_k.min(1024) } else { top_k };
    loop {
        let cand = top_indices(logits, width);
        let max = logits[cand[0] as usize];
        let mut probs: Vec<f32> = cand.iter().map(|&i| (logits[i as usize] - max).exp()).collect();
        // Normaliser over the top-k set (or the whole vocabulary), not just this window.
        let z: f32 = if width == top_k {
            probs.iter().sum()
        } else {
            top_indices(logits, top_k).iter().map(|&i| (logits[i as usize] - max).exp()).sum()
        };
        let mut keep = cand.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            keep = 0;
            while keep < cand.len() {
                acc += probs[keep] / z;
                keep += 1;
                if acc >= p.top_p {
                    break;
                }
            }
            if acc < p.top_p && width < top_k {
                width = top_k;
                continue;
            }
        }
        if p.min_p > 0.0 {
            // probs[0] is the most likely token (relative prob 1).
            let floor = p.min_p * probs[0];
            keep = probs[..keep].iter().take_while(|&&x| x >= floor).count().max(1);
        }
        probs.truncate(keep);
        let total: f32 = probs.iter().sum();
        let mut r = rng.random::<f32>() * total;
        for (i, &pr) in probs.iter().enumerate() {
            if r < pr {
                return cand[i];
            }
            r -= pr;
        }
        return cand[keep - 1];
    }
}

/// What the sampler gets for one sequence: its full logits row, or, where the next token is
/// simply the row's argmax, that token already picked on the device (only the id is copied
/// back, not a vocabulary-wide row).
pub enum Row {
    Logits(Vec<f32>),
    Argmax(u32),
}

/// Whether the next token is the raw row's argmax: greedy with nothing that changes or
/// reports the row (penalties, bias, min_tokens masking, processors, logprobs, beams).
pub fn is_plain_argmax(p: &SamplingParams, num_output: usize, has_processors: bool) -> bool {
    p.is_greedy() && p.logprobs.is_none() && p.repetition_penalty == 1.0 && p.presence_penalty == 0.0
        && p.frequency_penalty == 0.0 && p.logit_bias.is_empty() && num_output >= p.min_tokens && !has_processors
        && p.beam.is_none()
}

/// Samples the next token; `logits` is the raw model output row and is modified in place.
pub fn sample(state: SamplerState<'_>, logits: &mut [f32]) -> Result<(u32, Option<TokenLogprob>), String> {
    let p = state.params;
    // Logprobs describe the model's own distribution (vLLM's default raw_logprobs mode):
    // keep the raw row's log-sum-exp, its top alternatives and the row itself.
    let raw = p.logprobs.map(|k| {
        let (_, lse) = log_softmax_stats(logits);
        let top: Vec<(u32, f32)> = top_indices(logits, k).iter().map(|&i| (i, logits[i as usize] - lse)).collect();
        (lse, top, logits.to_vec())
    });
    apply_penalties(p, state.prompt_tokens, state.output_tokens, logits);
    for (&t, &b) in &p.logit_bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
    }
    if state.output_tokens.len() < p.min_tokens {
        for &t in state.end_tokens {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    for proc in state.processors.iter_mut() {
        proc.process(state.output_tokens, logits)?;
    }
    if logits.iter().all(|l| *l == f32::NEG_INFINITY) {
        return Err("every token was masked out by the logits processors".into());
    }
    let token = if p.is_greedy() {
        argmax(logits)
    } else {
        let inv_t = 1.0 / p.temperature;
        logits.iter_mut().for_each(|l| *l *= inv_t);
        sample_filtered(p, logits, state.rng)
    };
    let logprob = raw.map(|(lse, top, row)| TokenLogprob { token_id: token, logprob: row[token as usize] - lse, top });
    Ok((token, logprob))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn run(params: &SamplingParams, logits: &[f32], output: &[u32], seed: u64) -> (u32, Option<TokenLogprob>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut l = logits.to_vec();
        let state = SamplerState { params, prompt_tokens: &[], output_tokens: output, end_tokens: &[0],
            processors: &mut [], rng: &mut rng };
        sample(state, &mut l).unwrap()
    }

    #[test]
    fn greedy_penalties_and_bias() {
        let logits = [1.0, 3.0, 2.0, 0.5];
        assert_eq!(run(&SamplingParams::greedy(), &logits, &[], 0).0, 1);
        let p = SamplingParams { frequency_penalty: 1.5, ..SamplingParams::greedy() };
        assert_eq!(run(&p, &logits, &[1], 0).0, 2, "frequency penalty pushes token 1 below 2");
        let p = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() };
        assert_eq!(run(&p, &logits, &[1], 0).0, 2);
        let p = SamplingParams { logit_bias: [(3u32, 10.0)].into(), ..SamplingParams::greedy() };
        assert_eq!(run(&p, &logits, &[], 0).0, 3);
        let p = SamplingParams { min_tokens: 2, ..SamplingParams::greedy() };
        assert_ne!(run(&p, &[9.0, 1.0, 0.0, 0.0], &[5], 0).0, 0, "EOS masked before min_tokens");
    }

    #[test]
    fn filters_restrict_the_support() {
        let logits = [2.0, 1.9, 1.8, -5.0, -6.0];
        for seed in 0..200 {
            let p = SamplingParams { top_k: 2, ..Default::default() };
            assert!(run(&p, &logits, &[], seed).0 < 2);
            let p = SamplingParams { top_p: 0.3, ..Default::default() };
            assert_eq!(run(&p, &logits, &[], seed).0, 0, "top_p 0.3 keeps only the best token");
            let p = SamplingParams { min_p: 0.5, ..Default::default() };
            assert!(run(&p, &logits, &[], seed).0 < 3);
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_seed() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let p = SamplingParams::default();
        let ones = (0..4000).filter(|&s| run(&p, &logits, &[], s).0 == 1).count();
        assert!((2800..3200).contains(&ones), "{ones}");
        assert_eq!(run(&p, &logits, &[], 7), run(&p, &logits, &[], 7));
    }

    #[test]
    fn logprobs_are_raw_log_softmax() {
        let p = SamplingParams { logprobs: Some(2), temperature: 0.0, ..Default::default() };
        let (tok, lp) = run(&p, &[0.0, (3.0f32).ln(), -100.0], &[], 0);
        let lp = lp.unwrap();
        assert_eq!(tok, 1);
        assert!((lp.logprob - 0.75f32.ln()).abs() < 1e-5);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 0]);
        assert!((lp.top[1].1 - 0.25f32.ln()).abs() < 1e-5);
    }
}
