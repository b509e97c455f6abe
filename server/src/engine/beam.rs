//! Beam search bookkeeping (vLLM's semantics). Beams are ordinary sequences of one request
//! that share their KV blocks copy-on-write; each round every live beam proposes its
//! 2 × width most likely next tokens and the best `width` continuations survive.

use super::params::{BeamParams, FinishReason};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct Hypothesis {
    pub output: Vec<u32>,
    pub cumulative_logprob: f64,
    /// Prompt + output length the score is normalised by (the end token not counted).
    pub length: usize,
    pub finish: FinishReason,
}

impl Hypothesis {
    pub fn score(&self, length_penalty: f32) -> f64 {
        score(self.cumulative_logprob, self.length, length_penalty)
    }
}

pub fn score(cumulative_logprob: f64, length: usize, length_penalty: f32) -> f64 {
    cumulative_logprob / (length.max(1) as f64).powf(length_penalty as f64)
}

#[derive(Debug)]
pub struct BeamState {
    pub params: BeamParams,
    /// Live beam (sequence id) → cumulative logprob of its output.
    pub cumulative: HashMap<u64, f64>,
    /// This round's proposals of the beams that have been computed so far.
    pub proposals: HashMap<u64, Vec<(u32, f32)>>,
    pub finished: Vec<Hypothesis>,
}

/// One round's outcome: surviving continuations and hypotheses that ended with an end token,
/// each as (parent beam, token, cumulative logprob).
#[derive(Debug, Default, PartialEq)]
pub struct Round {
    pub continue_with: Vec<(u64, u32, f64)>,
    pub ended: Vec<(u64, u32, f64)>,
}

impl BeamState {
    pub fn new(params: BeamParams, first: u64) -> Self {
        Self { params, cumulative: [(first, 0.0)].into(), proposals: HashMap::new(), finished: vec![] }
    }

    /// Every live beam has proposed: the round can be decided.
    pub fn round_complete(&self) -> bool {
        self.cumulative.keys().all(|id| self.proposals.contains_key(id))
    }

    /// Ranks all proposals by cumulative logprob; the first `width` continuations survive,
    /// end tokens among the first `width` candidates become finished hypotheses.
    pub fn decide(&mut self, is_end: impl Fn(u32) -> bool) -> Round {
        let mut candidates: Vec<(u64, u32, f64)> = self
            .proposals
            .drain()
            .flat_map(|(beam, props)| {
                let base = self.cumulative[&beam];
                props.into_iter().map(move |(t, lp)| (beam, t, base + lp as f64))
            })
            .collect();
        candidates.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        let width = self.params.width;
        let mut round = Round::default();
        for (rank, c) in candidates.into_iter().enumerate() {
            if is_end(c.1) {
                if rank < width {
                    round.ended.push(c);
                }
            } else {
                round.continue_with.push(c);
                if round.continue_with.len() == width {
                    break;
                }
            }
        }
        round
    }

    /// Whether search is over, given the live beams' current (cumulative, length).
    pub fn done(&self, live: &[(f64, usize)]) -> bool {
        let width = self.params.width;
        if live.is_empty() {
            return true;
        }
        if self.finished.len() < width {
            return false;
        }
        if self.params.early_stopping {
            return true;
        }
        // No live beam can still enter the top `width` finished hypotheses.
        let lp = self.params.length_penalty;
        let mut scores: Vec<f64> = self.finished.iter().map(|h| h.score(lp)).collect();
        scores.sort_by(|a, b| b.total_cmp(a));
        let worst_kept = scores[width - 1];
        live.iter().all(|&(c, len)| score(c, len, lp) <= worst_kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_keep_the_best_continuations_and_collect_endings() {
        let params = BeamParams { width: 2, length_penalty: 1.0, early_stopping: false };
        let mut s = BeamState::new(params, 1);
        s.cumulative.insert(2, -1.0);
        s.proposals.insert(1, vec![(10, -0.125), (99, -0.25), (11, -3.0)]);
        s.proposals.insert(2, vec![(12, -0.0625), (13, -0.5)]);
        assert!(s.round_complete());
        let r = s.decide(|t| t == 99);
        assert_eq!(r.ended, vec![(1, 99, -0.25)]);
        assert_eq!(r.continue_with, vec![(1, 10, -0.125), (2, 12, -1.0625)]);
        // Not done while fewer than `width` hypotheses finished; then once live beams can't win.
        s.finished.push(Hypothesis { output: vec![], cumulative_logprob: -0.25, length: 4, finish: FinishReason::Stop });
        assert!(!s.done(&[(-0.125, 4)]));
        s.finished.push(Hypothesis { output: vec![], cumulative_logprob: -0.5, length: 4, finish: FinishReason::Stop });
        assert!(!s.done(&[(-0.125, 4)]));
        assert!(s.done(&[(-4.0, 4)]));
        assert!(s.done(&[]));
    }
}
