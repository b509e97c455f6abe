//! Counters the engine thread publishes and the HTTP side reads (metrics, live_metrics,
//! readiness) without locking: plain atomics, written once per step.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct EngineStats {
    running: AtomicUsize,
    waiting: AtomicUsize,
    preemptions: AtomicU64,
    kv_used_blocks: AtomicUsize,
    kv_total_blocks: AtomicUsize,
    block_size: AtomicUsize,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    steps: AtomicU64,
}

/// A consistent-enough copy of the counters for one reader.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StatsSnapshot {
    pub num_requests_running: usize,
    pub num_requests_waiting: usize,
    pub num_preemptions_total: u64,
    pub kv_cache_usage_perc: f64,
    pub kv_used_blocks: usize,
    pub kv_total_blocks: usize,
    pub block_size: usize,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    pub num_steps_total: u64,
}

impl EngineStats {
    pub fn set_queue(&self, running: usize, waiting: usize, preemptions: u64) {
        self.running.store(running, Relaxed);
        self.waiting.store(waiting, Relaxed);
        self.preemptions.store(preemptions, Relaxed);
    }

    pub fn set_block_size(&self, tokens: usize) {
        self.block_size.store(tokens, Relaxed);
    }

    pub fn set_kv_blocks(&self, used: usize, total: usize) {
        self.kv_used_blocks.store(used, Relaxed);
        self.kv_total_blocks.store(total, Relaxed);
    }

    /// Tokens a step processed: prompt tokens prefetched and tokens it generated.
    pub fn add_tokens(&self, prompt: usize, generated: usize) {
        self.prompt_tokens.fetch_add(prompt as u64, Relaxed);
        self.generation_tokens.fetch_add(generated as u64, Relaxed);
        self.steps.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let used = self.kv_used_blocks.load(Relaxed);
        let total = self.kv_total_blocks.load(Relaxed);
        StatsSnapshot {
            num_requests_running: self.running.load(Relaxed),
            num_requests_waiting: self.waiting.load(Relaxed),
            num_preemptions_total: self.preemptions.load(Relaxed),
            kv_cache_usage_perc: if total == 0 { 0.0 } else { used as f64 / total as f64 },
            kv_used_blocks: used,
            kv_total_blocks: total,
            block_size: self.block_size.load(Relaxed),
            prompt_tokens_total: self.prompt_tokens.load(Relaxed),
            generation_tokens_total: self.generation_tokens.load(Relaxed),
            num_steps_total: self.steps.load(Relaxed),
        }
    }
}
