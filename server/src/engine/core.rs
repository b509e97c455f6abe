//! The synchronous engine: owns the model, the KV cache and the scheduler, and advances all
//! requests by one batched step at a time. The engine thread drives it; tests can drive it
//! directly to control exactly when requests arrive.

use super::beam::{BeamState, Hypothesis};
use super::block_manager::BlockAllocator;
use super::params::{EngineError, FinishReason, GenerateRequest, LogitsProcessorFactory, RequestEvent, SequenceDelta, Usage};
use super::sampler::{is_plain_argmax, sample, top_logprobs, Row, SamplerState};
use super::scheduler::{Scheduler, SchedulerConfig, StepPlan};
use super::sequence::{RequestShared, Sequence};
use super::stats::EngineStats;
use crate::model::attention::{CpuPagedAttention, KvCacheShape, PagedAttention, SeqAttention};
use crate::model::transformer::{CausalLm, ForwardBatch};
use crate::model::LoadedModel;
use crate::tokenizer::TokenizerInfo;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use std::collections::HashMap;
use candle_core::Tensor;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineConfig {
    pub block_size: usize,
    /// KV cache budget in bytes on CPU.
    pub kv_cache_memory: u64,
    /// Fraction of device memory for weights + KV cache on CUDA.
    pub gpu_memory_utilization: f64,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { block_size: 16, kv_cache_memory: 4 << 30, gpu_memory_utilization: 0.9, max_num_seqs: 256, max_num_batched_tokens: 2048 }
    }
}

/// What a submission is checked against before it reaches the engine thread.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub max_num_seqs: usize,
}

impl Limits {
    /// Validates a request and returns its output budget (`max_tokens` after defaulting).
    pub fn check(&self, req: &GenerateRequest) -> Result<usize, EngineError> {
        let prompt = req.prompt_token_ids.len();
        if prompt == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        req.params.validate(self.vocab_size)?;
        if req.params.n.max(req.params.beam.map_or(0, |b| b.width)) > self.max_num_seqs {
            return Err(EngineError::InvalidParam { param: "n", message: format!(
                "n={} exceeds max_num_seqs={}", req.params.n, self.max_num_seqs) });
        }
        if let Some(&bad) = req.prompt_token_ids.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(EngineError::InvalidParam { param: "prompt", message: format!(
                "token id {bad} is out of vocabulary (vocab_size={})", self.vocab_size) });
        }
        let max_tokens = req.params.max_tokens.unwrap_or(self.max_model_len.saturating_sub(prompt));
        if max_tokens == 0 || prompt + max_tokens > self.max_model_len {
            return Err(EngineError::ContextLengthExceeded {
                max_model_len: self.max_model_len, prompt_tokens: prompt, max_tokens: max_tokens.max(1) });
        }
        Ok(max_tokens)
    }
}

struct RequestState {
    request_id: String,
    sink: UnboundedSender<RequestEvent>,
    processors: Vec<LogitsProcessorFactory>,
    unfinished: usize,
    prompt_len: usize,
    completion_tokens: usize,
    arrival: Instant,
    first_scheduled: Option<Instant>,
    beam: Option<BeamState>,
}

pub struct EngineCore {
    model: CausalLm,
    attention: Box<dyn PagedAttention>,
    tokenizer: Arc<TokenizerInfo>,
    sched: Scheduler,
    requests: HashMap<u64, RequestState>,
    ids: HashMap<String, u64>,
    next_request: u64,
    limits: Limits,
    pub stats: Arc<EngineStats>,
    /// The step's data-parallel kernels run here, and so does the step itself: its thread
    /// is one of the pool's workers instead of a third thread competing for the cores.
    pool: Arc<rayon::ThreadPool>,
}

/// Sizes the KV block pool and builds the attention backend for the model's device: on CPU
/// from `--kv-cache-memory`; on CUDA, like vLLM, from `--gpu-memory-utilization` of the
/// device's memory minus what the weights took and a workspace for the largest step.
fn kv_cache(model: &CausalLm, cfg: &EngineConfig, max_model_len: usize)
    -> Result<(Box<dyn PagedAttention>, usize), EngineError> {
    let mc = model.config();
    let elem = if model.device().is_cpu() { 4 } else { model.dtype().size_in_bytes() };
    let block_bytes = (cfg.block_size * mc.kv_bytes_per_token(elem)) as u64;
    let (budget, knob) = match model.device() {
        candle_core::Device::Cpu => (cfg.kv_cache_memory, "raise --kv-cache-memory"),
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(dev) => {
            crate::model::trim_memory_pool(dev).map_err(|e| EngineError::Config(format!("trimming GPU memory: {e}")))?;
            let (free, total) = dev.cuda_stream().context().mem_get_info()
                .map_err(|e| EngineError::Config(format!("querying GPU memory: {e}")))?;
            // Activations of one full step plus f32 logits rows, twice over for the
            // allocator's slack, and a fixed reserve for cuBLAS workspaces and the context.
            let per_token = (6 * mc.hidden_size + 3 * mc.intermediate_size + 2 * (mc.num_heads + 2 * mc.num_kv_heads) * mc.head_dim) * elem;
            let workspace = 2 * (cfg.max_num_batched_tokens * per_token + cfg.max_num_seqs.min(cfg.max_num_batched_tokens) * mc.vocab_size * 4 * 2)
                + (1 << 30);
            let allowed = (total as f64 * cfg.gpu_memory_utilization) as u64;
            let used = (total - free) as u64;
            tracing::info!(total_gib = total as f64 / 1073741824.0, used_gib = used as f64 / 1073741824.0,
                workspace_gib = workspace as f64 / 1073741824.0, "GPU memory before the KV cache");
            (allowed.saturating_sub(used + workspace as u64), "raise --gpu-memory-utilization")
        }
        #[allow(unreachable_patterns)]
        other => return Err(EngineError::Config(format!("no attention backend for {other:?} in this build"))),
    };
    let num_blocks = (budget / block_bytes) as usize;
    if num_blocks * cfg.block_size < max_model_len {
        return Err(EngineError::Config(format!(
            "the KV cache budget ({budget} bytes = {num_blocks} blocks of {} tokens) cannot hold one sequence of \
             max_model_len={max_model_len} tokens (needs {} bytes); {knob} or lower --max-model-len",
            cfg.block_size, max_model_len.div_ceil(cfg.block_size) as u64 * block_bytes)));
    }
    let shape = KvCacheShape { num_layers: mc.num_layers, num_heads: mc.num_heads, num_kv_heads: mc.num_kv_heads,
        head_dim: mc.head_dim, block_size: cfg.block_size, num_blocks };
    let attention: Box<dyn PagedAttention> = match model.device() {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(dev) => Box::new(crate::model::cuda_attention::CudaPagedAttention::new(shape, model.dtype(), dev)
            .map_err(|e| EngineError::Config(format!("allocating the KV cache on the GPU: {e}")))?),
        _ => Box::new(CpuPagedAttention::new(shape)),
    };
    tracing::info!(num_blocks, block_size = cfg.block_size, kv_cache_gib = (num_blocks as u64 * block_bytes) as f64 / 1073741824.0,
        "KV cache");
    Ok((attention, num_blocks))
}

impl EngineCore {
    pub fn new(loaded: LoadedModel, cfg: &EngineConfig) -> Result<Self, EngineError> {
        let LoadedModel { model, tokenizer, max_model_len, .. } = loaded;
        if cfg.block_size == 0 || cfg.max_num_seqs == 0 || cfg.max_num_batched_tokens == 0 {
            return Err(EngineError::Config("block_size, max_num_seqs and max_num_batched_tokens must be positive".into()));
        }
        let (attention, num_blocks) = kv_cache(&model, cfg, max_model_len)?;
        let mc = model.config();
        let limits = Limits { max_model_len, vocab_size: mc.vocab_size, max_num_seqs: cfg.max_num_seqs };
        let stats = Arc::new(EngineStats::default());
        stats.set_kv_blocks(0, num_blocks);
        stats.set_block_size(cfg.block_size);
        Ok(Self {
            model,
            attention,
            tokenizer: Arc::new(tokenizer),
            sched: Scheduler::new(
                SchedulerConfig { max_num_seqs: cfg.max_num_seqs, max_num_batched_tokens: cfg.max_num_batched_tokens },
                BlockAllocator::new(num_blocks, cfg.block_size),
            ),
            requests: HashMap::new(),
            ids: HashMap::new(),
            next_request: 0,
            limits,
            stats,
            pool: Arc::new(rayon::ThreadPoolBuilder::new().thread_name(|i| format!("kandle-step-{i}")).build()
                .map_err(|e| EngineError::Config(format!("starting the compute threads: {e}")))?),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }
    pub fn tokenizer(&self) -> &Arc<TokenizerInfo> {
        &self.tokenizer
    }
    pub fn has_work(&self) -> bool {
        self.sched.has_work()
    }

    pub fn add_request(&mut self, req: GenerateRequest, sink: UnboundedSender<RequestEvent>) -> Result<(), EngineError> {
        let max_tokens = self.limits.check(&req)?;
        if self.ids.contains_key(&req.request_id) {
            return Err(EngineError::DuplicateRequestId(req.request_id));
        }
        let key = self.next_request;
        self.next_request += 1;
        let n = req.params.n;
        let seed = req.params.seed;
        let beam_params = req.params.beam;
        let shared = Arc::new(RequestShared::new(req.params, max_tokens, &self.tokenizer.eos_token_ids));
        let processors = req.logits_processors.iter().map(|f| f()).collect();
        let mut seq = Sequence::new(key, 0, shared, req.prompt_token_ids.clone(), rng_for(seed, 0), processors);
        // Beams are forked by the search itself, not up front.
        seq.pending_forks = if beam_params.is_some() { 0 } else { n - 1 };
        let first = self.sched.add_waiting(seq);
        self.ids.insert(req.request_id.clone(), key);
        self.requests.insert(key, RequestState {
            request_id: req.request_id,
            sink,
            processors: req.logits_processors,
            unfinished: n,
            prompt_len: req.prompt_token_ids.len(),
            completion_tokens: 0,
            arrival: Instant::now(),
            first_scheduled: None,
            beam: beam_params.map(|b| BeamState::new(b, first)),
        });
        self.publish_stats();
        Ok(())
    }

    /// Stops a request: its sequences finish with `abort` and free their blocks.
    pub fn abort(&mut self, request_id: &str) -> bool {
        let Some(&key) = self.ids.get(request_id) else { return false };
        let seqs: Vec<u64> = self.sched.seqs.iter().filter(|(_, s)| s.request == key).map(|(&id, _)| id).collect();
        for id in seqs {
            if let Some(mut seq) = self.sched.remove(id) {
                let delta = seq.abort_delta();
                self.deliver(key, delta);
            }
        }
        // Siblings never forked count as aborted too.
        if let Some(state) = self.requests.get_mut(&key) {
            state.unfinished = 0;
        }
        self.finish_request_if_done(key);
        self.publish_stats();
        true
    }

    /// Runs one scheduling + forward + sampling step. Returns false when idle.
    pub fn step(&mut self) -> bool {
        let pool = Arc::clone(&self.pool);
        pool.install(|| self.step_in_pool())
    }

    fn step_in_pool(&mut self) -> bool {
        self.abort_disconnected();
        let plan = self.sched.schedule();
        if plan.scheduled.is_empty() {
            self.publish_stats();
            return false;
        }
        if let Err(e) = self.execute(&plan) {
            tracing::error!(error = %e, "model step failed; failing the requests of the batch");
            let keys: Vec<u64> = plan.scheduled.iter().filter_map(|s| self.sched.seqs.get(&s.seq)).map(|s| s.request).collect();
            for key in keys {
                self.fail_request(key, EngineError::Execution(e.to_string()));
            }
        }
        self.publish_stats();
        true
    }

    fn execute(&mut self, plan: &StepPlan) -> candle_core::Result<()> {
        if !plan.copies.is_empty() {
            self.attention.copy_blocks(&plan.copies)?;
        }
        let bs = self.sched.allocator.block_size();
        let mut batch = ForwardBatch::default();
        let mut samplers = vec![];
        let now = Instant::now();
        for s in &plan.scheduled {
            let seq = &self.sched.seqs[&s.seq];
            if let Some(state) = self.requests.get_mut(&seq.request) {
                state.first_scheduled.get_or_insert(now);
            }
            let start = seq.num_computed;
            let query_start = batch.tokens.len();
            for pos in start..start + s.num_tokens {
                batch.tokens.push(seq.tokens[pos]);
                batch.positions.push(pos as u32);
                batch.attention.slot_mapping.push(seq.block_table[pos / bs] as usize * bs + pos % bs);
            }
            batch.attention.seqs.push(SeqAttention { query_start, query_len: s.num_tokens,
                context_len: start + s.num_tokens, block_table: seq.block_table.clone() });
            if s.samples {
                batch.logits_rows.push((batch.tokens.len() - 1) as u32);
                samplers.push(s.seq);
            }
        }
        let logits = self.model.forward(&batch, self.attention.as_mut())?;
        let rows = self.fetch_rows(&logits, &samplers)?;
        for s in &plan.scheduled {
            if let Some(seq) = self.sched.seqs.get_mut(&s.seq) {
                seq.num_computed += s.num_tokens;
            }
        }
        self.stats.add_tokens(batch.tokens.len() - samplers.len(), samplers.len());
        self.sample_and_emit(samplers, rows);
        Ok(())
    }

    /// Brings the sampling rows to the host. On a GPU, rows whose next token is a plain
    /// argmax are reduced there and only their ids are copied: a full f32 row is 0.5 MB
    /// for a 128k vocabulary, hundreds of them per step at high concurrency.
    fn fetch_rows(&self, logits: &Tensor, samplers: &[u64]) -> candle_core::Result<Vec<Row>> {
        if samplers.is_empty() {
            return Ok(vec![]);
        }
        if logits.device().is_cpu() {
            return Ok(logits.to_vec2::<f32>()?.into_iter().map(Row::Logits).collect());
        }
        let plain: Vec<bool> = samplers.iter().map(|id| {
            let seq = &self.sched.seqs[id];
            seq.pending_forks == 0 && is_plain_argmax(&seq.shared.params, seq.output_tokens().len(), !seq.processors.is_empty())
        }).collect();
        let full: Vec<u32> = (0..samplers.len() as u32).filter(|&i| !plain[i as usize]).collect();
        let mut full_rows = if full.is_empty() {
            vec![]
        } else {
            let idx = Tensor::new(full.as_slice(), logits.device())?;
            logits.index_select(&idx, 0)?.to_vec2::<f32>()?
        }
        .into_iter();
        let ids = if full.len() < samplers.len() { logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()? } else { vec![] };
        Ok(plain.iter().enumerate().map(|(i, &p)| if p { Row::Argmax(ids[i]) } else {
            Row::Logits(full_rows.next().expect("one row per non-plain sampler"))
        }).collect())
    }

    fn sample_and_emit(&mut self, samplers: Vec<u64>, rows: Vec<Row>) {
        let (samplers, rows) = self.propose_beams(samplers, rows);
        // Fork the siblings of n>1 requests now that the shared prompt is cached: they
        // sample their first token from the same logits row.
        let mut work: Vec<(u64, Row)> = vec![];
        for (id, row) in samplers.into_iter().zip(rows) {
            let forks = self.sched.seqs.get(&id).map_or(0, |s| s.pending_forks);
            if forks > 0 {
                let parent = self.sched.seqs.get_mut(&id).expect("scheduled");
                parent.pending_forks = 0;
                let (key, seed) = (parent.request, parent.shared.params.seed);
                let factories = self.requests[&key].processors.clone();
                let mut prev = id;
                for index in 1..=forks {
                    let procs = factories.iter().map(|f| f()).collect();
                    let child = self.sched.seqs[&id].fork(index, rng_for(seed, index), procs);
                    prev = self.sched.add_fork(prev, child);
                    let Row::Logits(row) = &row else { unreachable!("forking rows are fetched whole") };
                    work.push((prev, Row::Logits(row.clone())));
                }
            }
            work.push((id, row));
        }
        let mut rows: HashMap<u64, Row> = work.into_iter().collect();
        let tokenizer = &*self.tokenizer;
        let max_model_len = self.limits.max_model_len;
        // Disjoint &mut borrows of the sampling sequences, so they sample in parallel.
        let targets: Vec<(u64, &mut Sequence, Row)> = self
            .sched
            .seqs
            .iter_mut()
            .filter_map(|(&id, seq)| rows.remove(&id).map(|row| (id, seq, row)))
            .collect();
        let results: Vec<(u64, u64, Result<SequenceDelta, String>)> = targets
            .into_par_iter()
            .map(|(id, seq, row)| {
                let shared = seq.shared.clone();
                let state = SamplerState {
                    params: &shared.params,
                    prompt_tokens: &seq.tokens[..seq.prompt_len],
                    output_tokens: &seq.tokens[seq.prompt_len..],
                    end_tokens: &shared.end_tokens,
                    processors: &mut seq.processors,
                    rng: &mut seq.rng,
                };
                let sampled = match row {
                    Row::Logits(mut row) => sample(state, &mut row),
                    Row::Argmax(token) => Ok((token, None)),
                };
                let out = sampled.map(|(tok, lp)| seq.append_token(tok, lp, tokenizer, max_model_len));
                (id, seq.request, out)
            })
            .collect();
        for (id, key, out) in results {
            match out {
                Ok(delta) => {
                    let done = delta.finish_reason.is_some();
                    if let Some(state) = self.requests.get_mut(&key) {
                        state.completion_tokens += 1;
                    }
                    self.deliver(key, delta);
                    if done {
                        self.sched.remove(id);
                        self.finish_request_if_done(key);
                    }
                }
                Err(e) => self.fail_request(key, EngineError::Execution(format!("sampling: {e}"))),
            }
        }
    }

    /// Rows of beam-search sequences become proposals; the rest are returned for sampling.
    fn propose_beams(&mut self, samplers: Vec<u64>, rows: Vec<Row>) -> (Vec<u64>, Vec<Row>) {
        let mut rest = (vec![], vec![]);
        let mut rounds = vec![];
        for (id, row) in samplers.into_iter().zip(rows) {
            let key = self.sched.seqs.get(&id).map(|s| s.request);
            match key.and_then(|k| self.requests.get_mut(&k)).and_then(|r| r.beam.as_mut()) {
                Some(beam) => {
                    let Row::Logits(row) = &row else { unreachable!("beam rows are fetched whole") };
                    beam.proposals.insert(id, top_logprobs(row, 2 * beam.params.width));
                    self.sched.seqs.get_mut(&id).expect("sampled sequence").awaiting_round = true;
                    rounds.extend(key);
                }
                None => {
                    rest.0.push(id);
                    rest.1.push(row);
                }
            }
        }
        rounds.sort_unstable();
        rounds.dedup();
        for key in rounds {
            self.beam_round(key);
        }
        rest
    }

    /// Decides a beam-search round once every live beam has proposed: surviving
    /// continuations fork their parent (blocks shared copy-on-write), dropped beams free
    /// theirs; when the search is over the `n` best hypotheses are delivered.
    fn beam_round(&mut self, key: u64) {
        let Some(state) = self.requests.get_mut(&key) else { return };
        let beam = state.beam.as_mut().expect("a beam request");
        if beam.cumulative.is_empty() || !beam.round_complete() {
            return;
        }
        let first = *beam.cumulative.keys().next().expect("live beams");
        let (shared, prompt_len) = (self.sched.seqs[&first].shared.clone(), self.sched.seqs[&first].prompt_len);
        let is_end = |t: u32| !shared.params.ignore_eos && shared.end_tokens.contains(&t);
        let round = beam.decide(is_end);
        for &(parent, _, cum) in &round.ended {
            let seq = &self.sched.seqs[&parent];
            beam.finished.push(Hypothesis { output: seq.output_tokens().to_vec(), cumulative_logprob: cum,
                length: seq.tokens.len(), finish: FinishReason::Stop });
        }
        let mut children: HashMap<u64, Vec<(u32, f64)>> = HashMap::new();
        for &(parent, token, cum) in &round.continue_with {
            children.entry(parent).or_default().push((token, cum));
        }
        let live: Vec<u64> = beam.cumulative.keys().copied().collect();
        beam.cumulative.clear();
        state.completion_tokens += round.continue_with.len();
        let mut next = HashMap::new();
        for parent in live {
            let Some(list) = children.remove(&parent) else {
                self.sched.remove(parent);
                continue;
            };
            for &(token, cum) in &list[1..] {
                let mut child = self.sched.seqs[&parent].fork(0, rng_for(None, 0), vec![]);
                child.tokens.push(token);
                next.insert(self.sched.add_fork(parent, child), cum);
            }
            let seq = self.sched.seqs.get_mut(&parent).expect("live beam");
            seq.tokens.push(list[0].0);
            seq.awaiting_round = false;
            next.insert(parent, list[0].1);
        }
        let live: Vec<(f64, usize)> = next.iter().map(|(id, &c)| (c, self.sched.seqs[id].tokens.len())).collect();
        let out_len = live.first().map_or(0, |&(_, len)| len - prompt_len);
        let max_model_len = self.limits.max_model_len;
        let state = self.requests.get_mut(&key).expect("present");
        let beam = state.beam.as_mut().expect("a beam request");
        beam.cumulative = next;
        let at_limit = live.first().is_some_and(|&(_, len)| out_len >= shared.max_tokens || len >= max_model_len);
        if !(at_limit || beam.done(&live)) {
            return;
        }
        // Search over: live beams count as hypotheses cut by length, the n best are returned.
        let live_ids: Vec<u64> = beam.cumulative.keys().copied().collect();
        for id in &live_ids {
            let seq = &self.sched.seqs[id];
            beam.finished.push(Hypothesis { output: seq.output_tokens().to_vec(), cumulative_logprob: beam.cumulative[id],
                length: seq.tokens.len(), finish: FinishReason::Length });
        }
        let lp = beam.params.length_penalty;
        let mut best = std::mem::take(&mut beam.finished);
        best.sort_by(|a, b| b.score(lp).total_cmp(&a.score(lp)));
        best.truncate(shared.params.n);
        for id in live_ids {
            self.sched.remove(id);
        }
        for (index, h) in best.into_iter().enumerate() {
            let text = self.tokenizer.decode(&h.output, shared.params.skip_special_tokens).unwrap_or_default();
            let delta = SequenceDelta { index, text, token_ids: h.output, logprobs: vec![], finish_reason: Some(h.finish),
                stop_reason: None };
            self.deliver(key, delta);
        }
        self.finish_request_if_done(key);
    }

    fn deliver(&mut self, key: u64, delta: SequenceDelta) {
        let Some(state) = self.requests.get_mut(&key) else { return };
        if delta.finish_reason.is_some() {
            state.unfinished = state.unfinished.saturating_sub(1);
        }
        // A closed stream is noticed by abort_disconnected at the next step.
        let _ = state.sink.send(RequestEvent::Delta(delta));
    }

    fn finish_request_if_done(&mut self, key: u64) {
        let Some(state) = self.requests.get(&key) else { return };
        if state.unfinished > 0 {
            return;
        }
        let state = self.requests.remove(&key).expect("present");
        self.ids.remove(&state.request_id);
        let usage = Usage { prompt_tokens: state.prompt_len, completion_tokens: state.completion_tokens };
        let queue_time = state.first_scheduled.unwrap_or_else(Instant::now) - state.arrival;
        let _ = state.sink.send(RequestEvent::Finished { usage, queue_time });
    }

    fn fail_request(&mut self, key: u64, err: EngineError) {
        let seqs: Vec<u64> = self.sched.seqs.iter().filter(|(_, s)| s.request == key).map(|(&id, _)| id).collect();
        for id in seqs {
            self.sched.remove(id);
        }
        if let Some(state) = self.requests.remove(&key) {
            self.ids.remove(&state.request_id);
            let _ = state.sink.send(RequestEvent::Error(err));
        }
    }

    /// Requests whose caller dropped the event stream are aborted (client went away).
    fn abort_disconnected(&mut self) {
        let gone: Vec<String> =
            self.requests.values().filter(|r| r.sink.is_closed()).map(|r| r.request_id.clone()).collect();
        for id in gone {
            tracing::debug!(request_id = %id, "client disconnected, aborting");
            self.abort(&id);
        }
    }

    fn publish_stats(&self) {
        let a = &self.sched.allocator;
        self.stats.set_queue(self.sched.num_running(), self.sched.num_waiting(), self.sched.num_preemptions);
        self.stats.set_kv_blocks(a.num_total() - a.num_free(), a.num_total());
    }
}

/// Each sequence draws from its own generator: seeded ones are reproducible whatever else
/// shares the batch (sibling `i` of a seeded request uses `seed + i`).
fn rng_for(seed: Option<u64>, index: usize) -> StdRng {
    match seed {
        Some(s) => StdRng::seed_from_u64(s.wrapping_add(index as u64)),
        None => StdRng::from_os_rng(),
    }
}
