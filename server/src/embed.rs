//! The embedding worker: one thread owns the encoder and batches the inputs of every request
//! waiting at that moment (across clients), grouped by length so little is spent on padding.

use crate::engine::EngineStats;
use crate::model::embedding::EmbeddingModel;
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, String>>;

struct Job {
    inputs: Vec<Vec<u32>>,
    reply: Reply,
}

/// Largest padded batch (sequences × longest length) one forward pass takes.
const MAX_BATCH_TOKENS: usize = 8192;
/// Most sequences in one forward pass.
const MAX_BATCH_SEQS: usize = 64;

#[derive(Clone)]
pub struct EmbedHandle {
    tx: Sender<Job>,
    pub model: Arc<EmbeddingModel>,
    stats: Arc<EngineStats>,
}

impl EmbedHandle {
    pub fn spawn(model: EmbeddingModel) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let model = Arc::new(model);
        let stats = Arc::new(EngineStats::default());
        let (m, s) = (model.clone(), stats.clone());
        std::thread::Builder::new()
            .name("kandle-embed".into())
            .spawn(move || run(&m, &s, rx))
            .expect("spawning the embedding thread");
        Self { tx, model, stats }
    }

    /// Embeddings of token-id inputs, in order.
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { inputs, reply }).map_err(|_| "the embedding worker stopped".to_string())?;
        rx.await.map_err(|_| "the embedding worker stopped".to_string())?
    }

    pub fn stats(&self) -> crate::engine::StatsSnapshot {
        self.stats.snapshot()
    }
}

fn run(model: &EmbeddingModel, stats: &EngineStats, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        stats.set_queue(jobs.len(), rx.len(), 0);
        // Every input of every job, shortest first, as (job, position, tokens).
        let mut items: Vec<(usize, usize, &[u32])> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| job.inputs.iter().enumerate().map(move |(i, t)| (j, i, t.as_slice())))
            .collect();
        items.sort_by_key(|&(_, _, t)| t.len());
        let mut outputs: Vec<Vec<Option<Vec<f32>>>> = jobs.iter().map(|j| vec![None; j.inputs.len()]).collect();
        let mut failed: Option<String> = None;
        let mut start = 0;
        while start < items.len() && failed.is_none() {
            // The batch grows while its padded size (count × the longest, which is the
            // last since items are sorted) stays under the budget.
            let mut end = start + 1;
            while end < items.len() && end - start < MAX_BATCH_SEQS && (end + 1 - start) * items[end].2.len().max(1) <= MAX_BATCH_TOKENS {
                end += 1;
            }
            let batch: Vec<&[u32]> = items[start..end].iter().map(|&(_, _, t)| t).collect();
            match model.embed(&batch) {
                Ok(vectors) => {
                    for (&(j, i, _), v) in items[start..end].iter().zip(vectors) {
                        outputs[j][i] = Some(v);
                    }
                }
                Err(e) => failed = Some(format!("embedding forward pass: {e}")),
            }
            start = end;
        }
        let tokens: usize = items.iter().map(|&(_, _, t)| t.len()).sum();
        stats.add_tokens(tokens, 0);
        for (job, out) in jobs.into_iter().zip(outputs) {
            let result = match &failed {
                Some(e) => Err(e.clone()),
                None => Ok(out.into_iter().map(|v| v.expect("every input embedded")).collect()),
            };
            let _ = job.reply.send(result);
        }
        stats.set_queue(0, rx.len(), 0);
    }
}
