//! Batching is exact: greedy tokens from the batched, paged, chunked engine equal what
//! candle-transformers' reference `quantized_llama` produces for each prompt alone, on the
//! same GGUF weights.
//!
//! Both sides run the weights dequantized to f32. With quantized matmuls candle quantizes
//! activations to 8 bits, which makes any change of summation order (even the reference's
//! own prefill-at-once vs token-by-token paths) move logits by ~0.1-0.3, so token-exact
//! comparisons across implementations are only meaningful in f32. The quantized path's own
//! batch invariance is tested in `engine_batching.rs`.

mod common;

use common::*;
use kandle_server::engine::{EngineConfig, EngineCore, FinishReason, GenerateRequest, SamplingParams};
use kandle_server::model::ModelOptions;

pub const PROMPTS: [&str; 7] = [
    "The capital of France is",
    "Once upon a time, in a small village nestled between two mountains, there lived an old clockmaker who",
    "def fibonacci(n):",
    "1, 2, 3, 4,",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to synthesize foods from carbon dioxide and water. In plants, photosynthesis generally involves the green pigment chlorophyll and",
    "Hi",
    "Les chats sont des animaux qui",
];
const ARRIVAL_STEPS: [usize; 7] = [0, 0, 0, 3, 7, 8, 15];

fn max_tokens(i: usize) -> usize {
    10 + 4 * i // different lengths: requests finish at different steps
}

fn f32_options(max_model_len: Option<usize>) -> ModelOptions {
    ModelOptions { dequantize: true, max_model_len, ..options(gguf_path()) }
}

/// Reference continuations, computed once per test binary.
fn reference() -> &'static (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    static REF: std::sync::OnceLock<(Vec<Vec<u32>>, Vec<Vec<u32>>)> = std::sync::OnceLock::new();
    REF.get_or_init(|| {
        // quantized_llama reads this when it builds its layers (on this thread).
        std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
        let loaded = load(&f32_options(None));
        let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| loaded.tokenizer.encode(p, true).unwrap()).collect();
        let path = gguf_path();
        let outs = prompts.iter().enumerate().map(|(i, p)| reference_gguf_greedy(&path, p, max_tokens(i))).collect();
        (prompts, outs)
    })
}

fn run_and_compare(mut core: EngineCore) -> kandle_server::engine::StatsSnapshot {
    let (prompts, expected) = reference();
    // Three requests at once; the rest join while others are mid-prefill or decoding.
    let arrivals = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let params = SamplingParams { max_tokens: Some(max_tokens(i)), ignore_eos: true, ..SamplingParams::greedy() };
            (ARRIVAL_STEPS[i], GenerateRequest::new(format!("r{i}"), p.clone(), params))
        })
        .collect();
    let out = run_schedule(&mut core, arrivals);
    for (i, c) in out.iter().enumerate() {
        assert_eq!(c.error, None);
        assert_eq!(c.tokens(0), expected[i], "prompt {i} ({:?}) diverged from the reference", PROMPTS[i]);
        assert_eq!(c.finish_reason(0), Some(FinishReason::Length));
        assert_eq!(c.usage.unwrap().completion_tokens, max_tokens(i));
    }
    let stats = core.stats.snapshot();
    assert_eq!(stats.kv_used_blocks, 0, "all blocks are returned: {stats:?}");
    stats
}

#[test]
fn batched_chunked_generation_matches_reference_per_prompt() {
    // A 24-token step budget forces chunked prefill of the longer prompts.
    let cfg = EngineConfig { max_num_batched_tokens: 24, max_num_seqs: 8, ..EngineConfig::default() };
    let stats = run_and_compare(engine(load(&f32_options(None)), cfg));
    assert_eq!(stats.num_preemptions_total, 0);
}

#[test]
fn preemption_under_a_tiny_kv_budget_still_matches_reference() {
    // 14 blocks of 8 tokens for 7 sequences of up to ~80 tokens: preemption must happen.
    let loaded = load(&f32_options(Some(112)));
    let per_token = loaded.model.config().kv_bytes_per_token(4);
    let cfg = EngineConfig { block_size: 8, kv_cache_memory: (14 * 8 * per_token) as u64, max_num_batched_tokens: 64,
        max_num_seqs: 8, ..EngineConfig::default() };
    let stats = run_and_compare(engine(loaded, cfg));
    assert!(stats.num_preemptions_total > 0, "the KV budget was meant to force preemption: {stats:?}");
}
