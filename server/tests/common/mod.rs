//! Shared helpers for tests that run real inference: the test model, reference generations
//! from candle-transformers' own model implementations, and an engine driver.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use kandle_server::engine::{EngineConfig, EngineCore, GenerateRequest, RequestEvent, SequenceDelta, Usage};
use kandle_server::model::{DTypeArg, LoadedModel, ModelOptions};
use std::collections::HashMap;
use std::path::PathBuf;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// SmolLM2-135M-Instruct Q4_1 (`scripts/fetch-models.sh` puts it in models/).
pub fn gguf_path() -> PathBuf {
    let p = std::env::var_os("KANDLE_TEST_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(p.exists(), "test model {} missing: run scripts/fetch-models.sh", p.display());
    p
}

pub fn options(path: PathBuf) -> ModelOptions {
    ModelOptions { path, dtype: DTypeArg::Auto, device: "cpu".into(), dequantize: false, max_model_len: None }
}

pub fn load(opts: &ModelOptions) -> LoadedModel {
    LoadedModel::load(opts).unwrap_or_else(|e| panic!("loading {}: {e}", opts.path.display()))
}

/// Greedy continuation of `prompt` by candle-transformers' quantized_llama, one prompt alone.
pub fn reference_gguf_greedy(path: &PathBuf, prompt: &[u32], n: usize) -> Vec<u32> {
    use candle_transformers::models::quantized_llama::ModelWeights;
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    greedy_loop(prompt, n, |ids, pos| model.forward(ids, pos))
}

/// Runs a reference model's (input, index_pos) -> logits forward greedily.
pub fn greedy_loop(prompt: &[u32], n: usize, mut forward: impl FnMut(&Tensor, usize) -> candle_core::Result<Tensor>) -> Vec<u32> {
    let mut out = vec![];
    let mut input = prompt.to_vec();
    let mut pos = 0;
    for _ in 0..n {
        let ids = Tensor::new(input.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = forward(&ids, pos).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let next = kandle_server::engine::sampler::argmax(&logits);
        pos += input.len();
        out.push(next);
        input = vec![next];
    }
    out
}

pub struct Collected {
    pub seqs: HashMap<usize, Vec<SequenceDelta>>,
    pub usage: Option<Usage>,
    pub error: Option<String>,
}

impl Collected {
    pub fn tokens(&self, index: usize) -> Vec<u32> {
        self.seqs[&index].iter().flat_map(|d| d.token_ids.clone()).collect()
    }
    pub fn text(&self, index: usize) -> String {
        self.seqs[&index].iter().map(|d| d.text.as_str()).collect()
    }
    pub fn finish_reason(&self, index: usize) -> Option<kandle_server::engine::FinishReason> {
        self.seqs[&index].last().and_then(|d| d.finish_reason)
    }
}

pub fn drain(rx: &mut UnboundedReceiver<RequestEvent>) -> Collected {
    let mut c = Collected { seqs: HashMap::new(), usage: None, error: None };
    while let Ok(ev) = rx.try_recv() {
        match ev {
            RequestEvent::Delta(d) => c.seqs.entry(d.index).or_default().push(d),
            RequestEvent::Finished { usage, .. } => c.usage = Some(usage),
            RequestEvent::Error(e) => c.error = Some(e.to_string()),
        }
    }
    c
}

/// Drives a synchronous engine: `arrivals[i]` = (step at which request i is added, request).
/// Returns each request's events once everything finished.
pub fn run_schedule(core: &mut EngineCore, arrivals: Vec<(usize, GenerateRequest)>) -> Vec<Collected> {
    let mut rxs: Vec<Option<UnboundedReceiver<RequestEvent>>> = (0..arrivals.len()).map(|_| None).collect();
    let mut pending: Vec<(usize, usize, GenerateRequest)> =
        arrivals.into_iter().enumerate().map(|(i, (s, r))| (i, s, r)).collect();
    let mut step = 0;
    let mut guard = 0;
    loop {
        let (now, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(_, s, _)| *s <= step);
        pending = later;
        for (i, _, req) in now {
            let (tx, rx) = unbounded_channel();
            core.add_request(req, tx).expect("valid request");
            rxs[i] = Some(rx);
        }
        let worked = core.step();
        step += 1;
        if !worked && pending.is_empty() {
            break;
        }
        guard += 1;
        assert!(guard < 100_000, "engine did not finish");
    }
    rxs.into_iter().map(|rx| drain(&mut rx.expect("every request was added"))).collect()
}

pub fn engine(loaded: LoadedModel, cfg: EngineConfig) -> EngineCore {
    EngineCore::new(loaded, &cfg).expect("engine config")
}
