//! Engine behaviour on the quantized GGUF path: batch invariance, seeds, n>1, stop strings,
//! UTF-8-safe streaming, typed errors and abort.

mod common;

use common::*;
use kandle_server::engine::{BeamParams, EngineConfig, EngineError, EngineHandle, FinishReason, GenerateRequest, RequestEvent,
    SamplingParams, StopReason};

fn cfg() -> EngineConfig {
    EngineConfig { max_num_batched_tokens: 32, max_num_seqs: 16, kv_cache_memory: 256 << 20, ..EngineConfig::default() }
}

fn core() -> kandle_server::engine::EngineCore {
    let opts = kandle_server::model::ModelOptions { max_model_len: Some(2048), ..options(gguf_path()) };
    engine(load(&opts), cfg())
}

fn encode(text: &str) -> Vec<u32> {
    load(&options(gguf_path())).tokenizer.encode(text, true).unwrap()
}

#[test]
fn quantized_greedy_is_identical_alone_and_in_a_batch() {
    let prompts = ["The capital of France is", "def fibonacci(n):", "Photosynthesis is the process by which green plants use sunlight to", "Hi"];
    let greedy = |n| SamplingParams { max_tokens: Some(n), ignore_eos: true, ..SamplingParams::greedy() };
    let mut alone = vec![];
    for (i, p) in prompts.iter().enumerate() {
        let out = run_schedule(&mut core(), vec![(0, GenerateRequest::new(format!("a{i}"), encode(p), greedy(20)))]);
        alone.push(out[0].tokens(0));
    }
    let arrivals = prompts.iter().enumerate()
        .map(|(i, p)| (i * 3, GenerateRequest::new(format!("b{i}"), encode(p), greedy(20)))).collect();
    let together = run_schedule(&mut core(), arrivals);
    for i in 0..prompts.len() {
        assert_eq!(together[i].tokens(0), alone[i], "prompt {i} changed when batched");
    }
}

#[test]
fn same_seed_same_text_regardless_of_batch_company_and_n_gt_1() {
    let sampled = |seed, n| SamplingParams { temperature: 0.9, top_p: 0.95, top_k: 50, seed: Some(seed), n,
        max_tokens: Some(24), ignore_eos: true, ..SamplingParams::default() };
    let prompt = encode("Write a short poem about the sea:");
    let alone = run_schedule(&mut core(), vec![(0, GenerateRequest::new("s", prompt.clone(), sampled(42, 1)))]);
    let noise = encode("List three colours:");
    let busy = run_schedule(&mut core(), vec![
        (0, GenerateRequest::new("x", noise.clone(), sampled(7, 2))),
        (2, GenerateRequest::new("s", prompt.clone(), sampled(42, 1))),
        (3, GenerateRequest::new("y", noise, SamplingParams { temperature: 1.3, max_tokens: Some(30), ..SamplingParams::default() })),
    ]);
    assert_eq!(busy[1].tokens(0), alone[0].tokens(0));
    assert_eq!(busy[1].text(0), alone[0].text(0));
    // n = 3 with a seed: three sequences, the first equals the n = 1 run, siblings differ.
    let three = run_schedule(&mut core(), vec![(0, GenerateRequest::new("t", prompt, sampled(42, 3)))]);
    assert_eq!(three[0].seqs.len(), 3);
    assert_eq!(three[0].tokens(0), alone[0].tokens(0));
    assert_ne!(three[0].tokens(1), three[0].tokens(2));
    assert_eq!(three[0].usage.unwrap().completion_tokens, 72);
    assert_eq!(busy[0].seqs.len(), 2);
}

#[test]
fn stop_strings_match_across_token_boundaries_and_are_excluded() {
    let prompt = encode("1, 2, 3, 4,");
    let free = run_schedule(&mut core(), vec![(0, GenerateRequest::new("f", prompt.clone(),
        SamplingParams { max_tokens: Some(20), ignore_eos: true, ..SamplingParams::greedy() }))]);
    let full = free[0].text(0);
    // A stop string that spans the boundary between two generated tokens.
    let toks = free[0].tokens(0);
    let tk = load(&options(gguf_path())).tokenizer;
    let first = tk.decode(&toks[..3], true).unwrap();
    let split_at = first.len();
    let stop = full[split_at - 2..split_at + 2].to_string();
    let idx = full.find(&stop).unwrap();
    for include in [false, true] {
        let params = SamplingParams { max_tokens: Some(20), ignore_eos: true, stop: vec!["never appears".into(), stop.clone()],
            include_stop_str_in_output: include, ..SamplingParams::greedy() };
        let out = run_schedule(&mut core(), vec![(0, GenerateRequest::new("s", prompt.clone(), params))]);
        let want = if include { &full[..idx + stop.len()] } else { &full[..idx] };
        assert_eq!(out[0].text(0), want, "stop {stop:?} include={include}");
        assert_eq!(out[0].finish_reason(0), Some(FinishReason::Stop));
        assert_eq!(out[0].seqs[&0].last().unwrap().stop_reason, Some(StopReason::Text(stop.clone())));
        // Streamed deltas never contained text past the stop point.
        assert!(out[0].seqs[&0].iter().all(|d| !d.text.contains("never")));
    }
}

#[test]
fn emoji_and_cjk_round_trip_through_incremental_decoding() {
    let tk = load(&options(gguf_path())).tokenizer;
    let text = "Grüße 👋🏽 日本語のテキスト 🇫🇷 ok";
    let ids = tk.encode(text, false).unwrap();
    assert_eq!(tk.decode(&ids, false).unwrap(), text);
    // Feed the tokens one at a time as the engine does: every delta is valid UTF-8 (a
    // String), nothing contains a replacement char, and the pieces add up to the text.
    let prompt = tk.encode("Say:", false).unwrap();
    let mut all = prompt.clone();
    let mut dec = kandle_server::tokenizer::IncrementalDecoder::new(&prompt);
    let mut pieces = String::new();
    for &t in &ids {
        all.push(t);
        let d = dec.step(&tk, &all, true);
        assert!(!d.contains('\u{FFFD}'), "broken character in delta {d:?}");
        pieces.push_str(&d);
    }
    pieces.push_str(&dec.flush(&tk, &all, true));
    assert_eq!(pieces, text);
}

#[test]
fn bad_requests_get_typed_errors() {
    let h = EngineHandle::spawn(core());
    let max_len = h.limits().max_model_len;
    let err = h.submit(GenerateRequest::new("a", vec![1; max_len + 1], SamplingParams::default())).unwrap_err();
    assert!(matches!(err, EngineError::ContextLengthExceeded { .. }), "{err}");
    assert!(err.to_string().contains("maximum context length"));
    let err = h.submit(GenerateRequest::new("b", vec![1, 2], SamplingParams { max_tokens: Some(max_len), ..Default::default() })).unwrap_err();
    assert!(matches!(err, EngineError::ContextLengthExceeded { .. }), "{err}");
    let err = h.submit(GenerateRequest::new("c", vec![1], SamplingParams { max_tokens: Some(0), ..Default::default() })).unwrap_err();
    assert_eq!(err.param(), Some("max_tokens"));
    let err = h.submit(GenerateRequest::new("d", vec![], SamplingParams::default())).unwrap_err();
    assert_eq!(err, EngineError::EmptyPrompt);
    let err = h.submit(GenerateRequest::new("e", vec![10_000_000], SamplingParams::default())).unwrap_err();
    assert_eq!(err.param(), Some("prompt"));
    let err = h.submit(GenerateRequest::new("f", vec![1], SamplingParams { top_p: 1.5, ..Default::default() })).unwrap_err();
    assert_eq!(err.param(), Some("top_p"));
}

#[test]
fn abort_and_dropped_streams_free_everything() {
    let h = EngineHandle::spawn(core());
    let long = SamplingParams { max_tokens: Some(500), ignore_eos: true, ..SamplingParams::greedy() };
    let mut a = h.submit(GenerateRequest::new("abort-me", encode("Tell me a story."), long.clone())).unwrap();
    let b = h.submit(GenerateRequest::new("drop-me", encode("Tell me another story."), long)).unwrap();
    // Wait for the first token, then abort one request and drop the other's stream.
    assert!(matches!(a.blocking_recv(), Some(RequestEvent::Delta(_))));
    drop(b);
    h.abort("abort-me");
    let mut last = None;
    while let Some(ev) = a.blocking_recv() {
        last = Some(ev.clone());
        if let RequestEvent::Delta(d) = &ev {
            if d.finish_reason.is_some() {
                assert_eq!(d.finish_reason, Some(FinishReason::Abort));
            }
        }
    }
    assert!(matches!(last, Some(RequestEvent::Finished { .. })), "{last:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = h.stats();
        if s.num_requests_running == 0 && s.num_requests_waiting == 0 && s.kv_used_blocks == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "engine did not release the requests: {s:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn beam_search_is_the_same_alone_in_company_and_under_preemption() {
    let beam = SamplingParams { n: 2, max_tokens: Some(12), ignore_eos: true,
        beam: Some(BeamParams { width: 4, length_penalty: 1.0, early_stopping: false }), ..SamplingParams::greedy() };
    let prompt = encode("The best way to learn a language is");
    let req = || GenerateRequest::new("beam", prompt.clone(), beam.clone());
    let alone = run_schedule(&mut core(), vec![(0, req())]);
    assert_eq!(alone[0].seqs.len(), 2);
    assert_eq!(alone[0].usage.unwrap().completion_tokens, 4 * 12);
    let other = |id: &str| GenerateRequest::new(id, encode("Hello there"), SamplingParams { max_tokens: Some(20),
        ..SamplingParams::greedy() });
    let company = run_schedule(&mut core(), vec![(0, other("x")), (1, req()), (3, other("y"))]);
    // A KV budget too small for four unshared beams: the search survives preemption.
    let opts = kandle_server::model::ModelOptions { max_model_len: Some(40), ..options(gguf_path()) };
    let loaded = load(&opts);
    let per_token = loaded.model.config().kv_bytes_per_token(4);
    let cfg = EngineConfig { block_size: 4, kv_cache_memory: (10 * 4 * per_token) as u64, max_num_batched_tokens: 64,
        max_num_seqs: 8, ..EngineConfig::default() };
    let mut tight = engine(loaded, cfg);
    let long = GenerateRequest::new("z", encode("Hello there"), SamplingParams { max_tokens: Some(36), ignore_eos: true,
        ..SamplingParams::greedy() });
    let squeezed = run_schedule(&mut tight, vec![(0, long), (1, req())]);
    assert!(tight.stats.snapshot().num_preemptions_total > 0, "the budget was meant to force preemption: {:?} {:?}", tight.stats.snapshot(), squeezed[1].usage);
    assert_eq!(squeezed[1].error, None);
    assert_eq!(squeezed[1].seqs.len(), 2, "{:?}", squeezed[1].seqs);
    for i in 0..2 {
        assert_eq!(alone[0].tokens(i), company[1].tokens(i));
        assert_eq!(alone[0].tokens(i), squeezed[1].tokens(i));
        assert_eq!(alone[0].finish_reason(i), Some(FinishReason::Length));
    }
    assert_eq!(tight.stats.snapshot().kv_used_blocks, 0);
}
