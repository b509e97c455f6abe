//! Continuous batching (vLLM's vocabulary): sequences wait, run, and are preempted by
//! recompute when KV blocks run out. Each step gets a token budget; decodes are served
//! first, then prefill chunks, then new arrivals in FCFS order.

use super::block_manager::BlockAllocator;
use super::sequence::Sequence;
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
}

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub seq: u64,
    pub num_tokens: usize,
    /// The step computes this sequence's last pending token, so it samples a new one.
    pub samples: bool,
}

#[derive(Debug, Default)]
pub struct StepPlan {
    pub scheduled: Vec<Scheduled>,
    /// Block copies (src, dst) to run before the forward pass (copy-on-write).
    pub copies: Vec<(u32, u32)>,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    pub allocator: BlockAllocator,
    pub seqs: HashMap<u64, Sequence>,
    waiting: VecDeque<u64>,
    /// In admission order: preemption takes from the back.
    running: Vec<u64>,
    next_seq: u64,
    pub num_preemptions: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, allocator: BlockAllocator) -> Self {
        Self { cfg, allocator, seqs: HashMap::new(), waiting: VecDeque::new(), running: vec![], next_seq: 0, num_preemptions: 0 }
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn add_waiting(&mut self, seq: Sequence) -> u64 {
        let id = self.insert(seq);
        self.waiting.push_back(id);
        id
    }

    fn insert(&mut self, seq: Sequence) -> u64 {
        let id = self.next_seq;
        self.next_seq += 1;
        self.seqs.insert(id, seq);
        id
    }

    /// Adds a forked sibling right after `parent`, in the running list or, for a parent
    /// that was preempted (a beam), in the waiting queue.
    pub fn add_fork(&mut self, parent: u64, seq: Sequence) -> u64 {
        self.allocator.share(&seq.block_table);
        let id = self.insert(seq);
        if let Some(p) = self.running.iter().position(|&s| s == parent) {
            self.running.insert(p + 1, id);
        } else {
            let at = self.waiting.iter().position(|&s| s == parent).map_or(self.waiting.len(), |p| p + 1);
            self.waiting.insert(at, id);
        }
        id
    }

    /// Removes a sequence wherever it is and frees its blocks.
    pub fn remove(&mut self, id: u64) -> Option<Sequence> {
        self.running.retain(|&s| s != id);
        self.waiting.retain(|&s| s != id);
        let mut seq = self.seqs.remove(&id)?;
        self.allocator.free_table(&mut seq.block_table);
        Some(seq)
    }

    fn preempt(&mut self, id: u64) {
        self.running.retain(|&s| s != id);
        let seq = self.seqs.get_mut(&id).expect("running sequence exists");
        self.allocator.free_table(&mut seq.block_table);
        seq.num_computed = 0;
        // A beam that already proposed keeps its proposal and has nothing to compute
        // until its round is decided: it queues at the back, not ahead of real work.
        if seq.awaiting_round {
            self.waiting.push_back(id);
        } else {
            self.waiting.push_front(id);
        }
        self.num_preemptions += 1;
    }

    /// Tries to give `id` room for `n` tokens, preempting the most recently admitted
    /// sequences until it fits. False when `id` itself had to be preempted.
    fn make_room(&mut self, id: u64, n: usize, copies: &mut Vec<(u32, u32)>) -> bool {
        loop {
            let seq = &self.seqs[&id];
            if self.allocator.can_append(&seq.block_table, seq.num_computed, n) {
                let seq = self.seqs.get_mut(&id).expect("exists");
                copies.extend(self.allocator.append(&mut seq.block_table, seq.num_computed, n));
                return true;
            }
            let victim = *self.running.last().expect("id is running");
            self.preempt(victim);
            if victim == id {
                return false;
            }
        }
    }

    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut preempted = false;
        // Decodes first so a long prompt being prefilled in chunks never starves them.
        for decode_pass in [true, false] {
            let candidates: Vec<u64> = self.running.clone();
            for id in candidates {
                if budget == 0 {
                    break;
                }
                let Some(seq) = self.seqs.get(&id) else { continue };
                if !self.running.contains(&id) || (seq.num_uncomputed() == 1) != decode_pass {
                    continue;
                }
                if seq.awaiting_round {
                    continue;
                }
                let need = seq.num_uncomputed();
                let n = need.min(budget);
                let before = self.num_preemptions;
                let ok = self.make_room(id, n, &mut plan.copies);
                preempted |= self.num_preemptions != before;
                // A sequence preempted to make room may already be in this step's plan.
                plan.scheduled.retain(|s| self.running.contains(&s.seq));
                if ok {
                    plan.scheduled.push(Scheduled { seq: id, num_tokens: n, samples: n == need });
                }
                budget = self.cfg.max_num_batched_tokens - plan.scheduled.iter().map(|s| s.num_tokens).sum::<usize>();
            }
        }
        // New admissions only when nothing had to be preempted (memory is tight).
        if !preempted {
            self.admit(&mut plan, budget);
        }
        // Beams parked for their siblings' proposals can hold every block while a sibling
        // waits for room: release them (their proposals survive) until the queue moves.
        while plan.scheduled.is_empty() && self.waiting.iter().any(|id| !self.seqs[id].awaiting_round) {
            let Some(&victim) = self.running.iter().rev().find(|id| self.seqs[*id].awaiting_round) else { break };
            self.preempt(victim);
            self.admit(&mut plan, budget);
        }
        plan
    }

    /// Admits waiting sequences in FCFS order while slots, blocks and budget allow.
    fn admit(&mut self, plan: &mut StepPlan, mut budget: usize) {
        let mut i = 0;
        while budget > 0 && i < self.waiting.len() {
            let id = self.waiting[i];
            let seq = &self.seqs[&id];
            if seq.awaiting_round {
                i += 1;
                continue;
            }
            if self.running.len() + 1 + seq.pending_forks > self.cfg.max_num_seqs {
                break;
            }
            let need = seq.num_uncomputed();
            let n = need.min(budget);
            if !self.allocator.can_append(&seq.block_table, seq.num_computed, n) {
                break; // FCFS: nobody overtakes the head of the queue
            }
            let seq = self.seqs.get_mut(&id).expect("exists");
            plan.copies.extend(self.allocator.append(&mut seq.block_table, seq.num_computed, n));
            self.waiting.remove(i);
            self.running.push(id);
            plan.scheduled.push(Scheduled { seq: id, num_tokens: n, samples: n == need });
            budget -= n;
        }
    }
}
