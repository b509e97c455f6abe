//! Engine throughput on CPU: prefill, single-sequence decode, aggregate decode at several
//! concurrencies, and the memory-bandwidth limit for comparison.
//!
//!   cargo bench -p kandle-server --bench engine
//!   KANDLE_BENCH_MODEL=path/to/model.gguf cargo bench -p kandle-server --bench engine
//!   KANDLE_BENCH_DEQUANTIZE=1 ...   (f32 weights instead of quantized matmuls)
//!
//!   cargo bench -p kandle-server --bench engine -- 16          (only decode at 16 concurrent: for perf)
//!   cargo bench -p kandle-server --bench engine -- profile 1 16   (where a decode step goes, per op)
//!   cargo bench -p kandle-server --bench engine -- matmul [16]  (the quantized matmul alone, GMAC/s;
//!                                                                 `16`: 16 rows only)
//!   cargo bench -p kandle-server --bench engine -- attention [77]  (CPU paged attention alone: 16
//!                                                 sequences of that many keys, SmolLM2's shape)
//!
//! Drives the engine core directly (the same step loop the engine thread runs).

use kandle_server::engine::{EngineConfig, EngineCore, GenerateRequest, RequestEvent, SamplingParams};
use kandle_server::model::{DTypeArg, LoadedModel, ModelOptions};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;
use tokio::sync::mpsc::unbounded_channel;

fn model_path() -> PathBuf {
    std::env::var_os("KANDLE_BENCH_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
    })
}

/// The prompt every decode measurement starts from (13 tokens).
const DECODE_PROMPT: &str = "Write a long story about a lighthouse keeper and the sea.";

/// The number arguments (concurrencies, row counts, key counts), in order.
fn number_args() -> Vec<usize> {
    std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect()
}

/// Read bandwidth: sum a 1 GiB buffer (best of 3), in GB/s.
fn memory_bandwidth() -> f64 {
    let buf: Vec<u64> = (0..(1usize << 27)).map(|i| i as u64).collect();
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        let s: u64 = buf.iter().fold(0u64, |a, &x| a.wrapping_add(x));
        std::hint::black_box(s);
        best = best.max((buf.len() * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn core() -> EngineCore {
    let opts = ModelOptions { path: model_path(), dtype: DTypeArg::Auto, device: "cpu".into(),
        dequantize: std::env::var_os("KANDLE_BENCH_DEQUANTIZE").is_some(),
        max_model_len: Some(2048) };
    let loaded = LoadedModel::load(&opts).expect("bench model (run scripts/fetch-models.sh)");
    EngineCore::new(loaded, &EngineConfig { max_num_batched_tokens: 512, kv_cache_memory: 2 << 30, ..Default::default() })
        .expect("engine")
}

/// Runs `n` sequences of `gen` tokens on `prompt`; returns (seconds until every sequence
/// has its first token, seconds for the rest, tokens generated after the first).
fn run(core: &mut EngineCore, prompt: &[u32], n: usize, gen: usize) -> (f64, f64, usize) {
    let (first, rest, tokens, _) = run_steps(core, prompt, n, gen);
    (first, rest, tokens)
}

/// [`run`], plus the number of steps taken.
fn run_steps(core: &mut EngineCore, prompt: &[u32], n: usize, gen: usize) -> (f64, f64, usize, usize) {
    let mut rxs = vec![];
    for i in 0..n {
        let (tx, rx) = unbounded_channel();
        let params = SamplingParams { max_tokens: Some(gen), ignore_eos: true, ..SamplingParams::greedy() };
        core.add_request(GenerateRequest::new(format!("bench-{i}"), prompt.to_vec(), params), tx).unwrap();
        rxs.push(rx);
    }
    let t0 = Instant::now();
    let mut first_done = None;
    let mut tokens = 0;
    let mut started = vec![false; n];
    let mut steps = 0;
    while core.step() {
        steps += 1;
        for (i, rx) in rxs.iter_mut().enumerate() {
            while let Ok(ev) = rx.try_recv() {
                if let RequestEvent::Delta(d) = ev {
                    if started[i] {
                        tokens += d.token_ids.len();
                    }
                    started[i] = true;
                }
            }
        }
        if first_done.is_none() && started.iter().all(|s| *s) {
            first_done = Some(t0.elapsed().as_secs_f64());
        }
    }
    let total = t0.elapsed().as_secs_f64();
    let first = first_done.unwrap_or(total);
    (first, total - first, tokens, steps)
}

/// Decode at each concurrency given (default 1 and 16), 128 tokens per sequence, with the
/// forward pass's ops timed: milliseconds per step in each, side by side.
fn profile() {
    use kandle_server::model::profile::{enable, totals, Op};
    let mut levels = number_args();
    if levels.is_empty() {
        levels = vec![1, 16];
    }
    let mut core = core();
    let prompt = core.tokenizer().encode(DECODE_PROMPT, true).unwrap();
    run(&mut core, &prompt, 1, 8); // warm-up
    let mut columns = vec![];
    for &n in &levels {
        enable(true);
        let t = Instant::now();
        let (_, _, _, steps) = run_steps(&mut core, &prompt, n, 128);
        let per_step = |d: f64| d * 1e3 / steps as f64;
        let ops: Vec<f64> = totals().iter().map(|(_, d)| per_step(d.as_secs_f64())).collect();
        enable(false);
        columns.push((per_step(t.elapsed().as_secs_f64()), ops));
    }
    print!("{:<28}", "ms per decode step");
    levels.iter().for_each(|n| print!("{:>12}", format!("{n} seq")));
    println!();
    for (i, op) in Op::ALL.iter().enumerate() {
        print!("{:<28}", op.name());
        columns.iter().for_each(|(_, ops)| print!("{:>12.2}", ops[i]));
        println!();
    }
    print!("{:<28}", "other (sampling, batching)");
    columns.iter().for_each(|(step, ops)| print!("{:>12.2}", step - ops.iter().sum::<f64>()));
    println!();
    print!("{:<28}", "whole step");
    columns.iter().for_each(|(step, _)| print!("{:>12.2}", step));
    println!();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches asks for a listing
    }
    if std::env::args().any(|a| a == "matmul") {
        return matmul();
    }
    if std::env::args().any(|a| a == "profile") {
        return profile();
    }
    if std::env::args().any(|a| a == "attention") {
        return attention();
    }
    // A number argument runs only decode at that concurrency (for profiling).
    let only = number_args().first().copied();
    let bw = if only.is_some() { 0.0 } else { memory_bandwidth() };
    let model_bytes = std::fs::metadata(model_path()).map(|m| m.len()).unwrap_or(0) as f64;
    let mut core = core();
    let tok = core.tokenizer().clone();
    let short = tok.encode(DECODE_PROMPT, true).unwrap();
    let long_text = "The history of the lighthouse begins in antiquity. ".repeat(60);
    let long: Vec<u32> = tok.encode(&long_text, true).unwrap()[..512].to_vec();
    run(&mut core, &short, 1, 8); // warm-up
    if let Some(n) = only {
        let (_, secs, toks) = run(&mut core, &short, n, 128);
        println!("decode: {n:>2} concurrent x 128 tokens: {:.1} tok/s aggregate", toks as f64 / secs);
        return;
    }
    println!("machine: {} threads, read bandwidth {bw:.1} GB/s; model file {:.1} MB", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), model_bytes / 1e6);
    println!("bandwidth limit (weights read once per step): {:.0} tok/s single-sequence", bw * 1e9 / model_bytes);
    let (p, _, _) = run(&mut core, &long, 1, 1);
    println!("prefill: 512-token prompt in {p:.3}s = {:.0} tok/s", 512.0 / p);
    // The serving benchmark's request (bench/serve.py: 256 random tokens in, 128 out) on the
    // engine alone, to measure what the HTTP layer adds at concurrency 1.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let random: Vec<u32> = (0..256).map(|_| rng.random_range(1000..40000)).collect();
    let (ttft, secs, toks) = run(&mut core, &random, 1, 128);
    println!("engine alone, 256 in / 128 out, 1 sequence: TTFT {:.1} ms, TPOT {:.2} ms, {:.1} output tok/s",
        ttft * 1e3, secs * 1e3 / toks as f64, (toks + 1) as f64 / (ttft + secs));
    for n in [1, 4, 16, 32] {
        let (_, secs, toks) = run(&mut core, &short, n, 128);
        println!("decode: {n:>2} concurrent x 128 tokens: {:.1} tok/s aggregate ({:.1} ms/step)", toks as f64 / secs,
            secs * 1e3 / (toks as f64 / n as f64));
    }
    // The ratio with 1 and 16 run back to back, three times: a shared VM's speed drifts
    // by the minute, which moves the ratio of two runs far apart more than any change does.
    let mut ratios: Vec<f64> = (0..3).map(|_| {
        let (_, s1, t1) = run(&mut core, &short, 1, 128);
        let (_, s16, t16) = run(&mut core, &short, 16, 128);
        (t16 as f64 / s16) / (t1 as f64 / s1)
    }).collect();
    ratios.sort_by(f64::total_cmp);
    println!("decode: 16 concurrent / 1 sequence, back to back x3: {:.2}x median ({:.2}-{:.2})", ratios[1], ratios[0], ratios[2]);
}

/// The quantized matmul alone on layer 0's FFN weights and the output embedding: time per call and the rate in
/// multiply-adds, at the batch sizes decode runs.
fn matmul() {
    use candle_core::quantized::gguf_file;
    use kandle_server::model::quant_matmul::QuantMatrix;
    let only = number_args().first().copied();
    let path = model_path();
    let mut file = std::fs::File::open(&path).expect("bench model");
    let content = gguf_file::Content::read(&mut file).expect("gguf");
    for name in ["blk.0.ffn_gate.weight", "blk.0.ffn_down.weight", "token_embd.weight"] {
        let q = content.tensor(&mut file, name, &candle_core::Device::Cpu).expect(name);
        let Some(mat) = QuantMatrix::from_qtensor(&q).expect("matrix") else {
            println!("{name}: {:?}, not ours", q.dtype());
            continue;
        };
        let (n, k) = q.shape().dims2().unwrap();
        for rows in [1, 4, 16, 32] {
            if only.is_some_and(|o| o != rows) {
                continue;
            }
            let x = candle_core::Tensor::randn(0f32, 1.0, (rows, k), &candle_core::Device::Cpu).unwrap();
            let reps = (20_000_000_000 / (n * k * rows)).max(3);
            mat.forward(&x).unwrap();
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(mat.forward(&x).unwrap());
            }
            let secs = t.elapsed().as_secs_f64() / reps as f64;
            println!("{name} {:?} [{n} x {k}], {rows:>2} rows: {:8.1} us, {:5.1} GMAC/s", q.dtype(), secs * 1e6,
                (n * k * rows) as f64 / secs / 1e9);
        }
    }
}

/// CPU paged attention alone, as in a decode step of SmolLM2-135M (9 query heads over 3 KV
/// heads of 64) at 16 sequences of `keys` cached keys (default 77: the middle of the decode
/// runs above), each of the 30 layers on its own blocks so the cache is as cold as in a step.
fn attention() {
    use kandle_server::model::attention::{AttentionMetadata, CpuPagedAttention, KvCacheShape, PagedAttention, SeqAttention};
    let (seqs, layers, keys) = (16, 30, number_args().first().copied().unwrap_or(77).max(1));
    let block_size = 16;
    let blocks = keys.div_ceil(block_size);
    let shape = KvCacheShape { num_layers: layers, num_heads: 9, num_kv_heads: 3, head_dim: 64, block_size,
        num_blocks: seqs * blocks };
    let mut att = CpuPagedAttention::new(shape);
    let meta = AttentionMetadata {
        slot_mapping: (0..seqs).map(|s| s * blocks * block_size + keys - 1).collect(),
        seqs: (0..seqs).map(|s| SeqAttention { query_start: s, query_len: 1, context_len: keys,
            block_table: (0..blocks).map(|b| (s * blocks + b) as u32).collect() }).collect(),
    };
    let dev = candle_core::Device::Cpu;
    let qkv = |heads: usize| candle_core::Tensor::randn(0f32, 1.0, (seqs, heads * 64), &dev).unwrap();
    let (q, k, v) = (qkv(9), qkv(3), qkv(3));
    // Inside a pool, as the engine runs its steps.
    let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
    pool.install(|| {
        let step = |att: &mut CpuPagedAttention| {
            for layer in 0..layers {
                std::hint::black_box(att.forward(layer, &q, &k, &v, &meta).unwrap());
            }
        };
        step(&mut att); // touches the cache once
        let reps = 50;
        let t = Instant::now();
        for _ in 0..reps {
            step(&mut att);
        }
        println!("attention: {seqs} sequences x {keys} keys, {layers} layers: {:.3} ms per step",
            t.elapsed().as_secs_f64() * 1e3 / reps as f64);
    });
}
