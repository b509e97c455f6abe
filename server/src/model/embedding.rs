//! Sentence-transformers embedding models (BERT family) loaded from the folder users have:
//! `config.json`, `model.safetensors`, `tokenizer.json`, `modules.json` (which says whether
//! a Pooling and a Normalize module follow the transformer), `1_Pooling/config.json` and
//! `sentence_bert_config.json` (the max sequence length). The encoder is candle-transformers'
//! BERT; pooling and normalisation follow sentence-transformers.

use super::ModelError;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde_json::Value;
use std::path::Path;
use tokenizers::{PostProcessor, Tokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
    Max,
}

pub struct EmbeddingModel {
    bert: BertModel,
    pub tokenizer: Tokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Longest input in tokens, special tokens included (sentence-transformers' max_seq_length).
    pub max_len: usize,
    pub dim: usize,
    pad_id: u32,
    device: Device,
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io(path.to_path_buf(), e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::InvalidConfig(format!("{}: {e}", path.display())))
}

/// Whether `dir` holds an encoder this module serves (a BERT-family config.json).
pub fn is_embedding_model(dir: &Path) -> bool {
    let Ok(cfg) = read_json(&dir.join("config.json")) else { return false };
    let arch_is_encoder = cfg["architectures"].as_array().into_iter().flatten().filter_map(Value::as_str)
        .any(|a| matches!(a, "BertModel" | "BertForMaskedLM" | "RobertaModel" | "XLMRobertaModel"));
    arch_is_encoder || cfg["model_type"] == "bert"
}

impl EmbeddingModel {
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::InvalidConfig(format!(
                "{} must be a sentence-transformers folder to serve embeddings", dir.display())));
        }
        let cfg_value = read_json(&dir.join("config.json"))?;
        if cfg_value["model_type"] != "bert" {
            return Err(ModelError::UnsupportedArchitecture {
                found: format!("{} (embeddings support the BERT family)", cfg_value["model_type"]),
            });
        }
        let cfg: BertConfig = serde_json::from_value(cfg_value.clone())
            .map_err(|e| ModelError::InvalidConfig(format!("config.json: {e}")))?;
        let (pooling, normalize) = read_modules(dir)?;
        let max_seq = read_json(&dir.join("sentence_bert_config.json")).ok().and_then(|v| v["max_seq_length"].as_u64());
        let max_len = max_seq.map_or(cfg.max_position_embeddings, |m| (m as usize).min(cfg.max_position_embeddings));
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(ModelError::MissingFile(tok_path));
        }
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        // The folder's tokenizer.json often pads/truncates to a fixed length: batching pads
        // here instead, and over-long inputs are the API's decision.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let weights = ["model.safetensors", "pytorch_model.safetensors"].iter().map(|f| dir.join(f)).find(|p| p.exists())
            .ok_or_else(|| ModelError::MissingFile(dir.join("model.safetensors")))?;
        // SAFETY: the file is memory-mapped read-only and not modified while the model lives.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device) }
            .map_err(|e| ModelError::Load(e.to_string()))?;
        let bert = BertModel::load(vb, &cfg).map_err(|e| ModelError::Load(e.to_string()))?;
        let pad_id = cfg_value["pad_token_id"].as_u64().unwrap_or(0) as u32;
        Ok(Self { bert, tokenizer, pooling, normalize, max_len, dim: cfg.hidden_size, pad_id, device: device.clone() })
    }

    /// Token ids of `text` with the model's special tokens; with `truncate` = k the text is
    /// cut on the right so the whole input is at most k tokens (as the HF tokenizer's
    /// `truncation=True, max_length=k`).
    pub fn encode(&self, text: &str, add_special_tokens: bool, truncate: Option<usize>) -> Result<Vec<u32>, String> {
        let mut enc = self.tokenizer.encode(text, false).map_err(|e| e.to_string())?;
        if let Some(k) = truncate {
            let specials = if add_special_tokens {
                self.tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false))
            } else {
                0
            };
            enc.truncate(k.saturating_sub(specials), 0, tokenizers::TruncationDirection::Right);
        }
        let enc = self.tokenizer.post_process(enc, None, add_special_tokens).map_err(|e| e.to_string())?;
        Ok(enc.get_ids().to_vec())
    }

    /// One embedding per input, in order. Inputs are padded to the longest of the batch;
    /// callers group inputs of similar length to keep padding small.
    pub fn embed(&self, inputs: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let len = inputs.iter().map(|i| i.len()).max().unwrap_or(0).max(1);
        let b = inputs.len();
        let mut ids = vec![self.pad_id; b * len];
        let mut mask = vec![0f32; b * len];
        for (row, input) in inputs.iter().enumerate() {
            ids[row * len..row * len + input.len()].copy_from_slice(input);
            mask[row * len..row * len + input.len()].fill(1.0);
        }
        let ids = Tensor::from_vec(ids, (b, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.bert.forward(&ids, &types, Some(&mask))?; // (b, len, dim)
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let m = mask.unsqueeze(2)?; // (b, len, 1)
                let sum = hidden.broadcast_mul(&m)?.sum(1)?;
                let count = m.sum(1)?.clamp(1e-9, f64::INFINITY)?;
                sum.broadcast_div(&count)?
            }
            Pooling::Max => {
                // Padding must never win the max: it is pushed far below any real value.
                let penalty = ((mask.unsqueeze(2)? - 1.0)? * 1e9)?;
                hidden.broadcast_add(&penalty)?.max(1)?
            }
        };
        let pooled = if self.normalize {
            let norm = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        pooled.to_vec2::<f32>()
    }
}

/// Pooling mode and whether a Normalize module follows, from modules.json (mean pooling
/// without normalisation when the folder is a bare transformer).
fn read_modules(dir: &Path) -> Result<(Pooling, bool), ModelError> {
    let Ok(modules) = read_json(&dir.join("modules.json")) else {
        tracing::warn!("no modules.json in {}: using mean pooling without normalisation", dir.display());
        return Ok((Pooling::Mean, false));
    };
    let mut pooling = Pooling::Mean;
    let mut normalize = false;
    for m in modules.as_array().into_iter().flatten() {
        let kind = m["type"].as_str().unwrap_or_default();
        if kind.ends_with(".Pooling") {
            let path = dir.join(m["path"].as_str().unwrap_or("1_Pooling")).join("config.json");
            let cfg = read_json(&path)?;
            let on = |k: &str| cfg[k].as_bool().unwrap_or(false);
            pooling = match (on("pooling_mode_cls_token"), on("pooling_mode_mean_tokens"), on("pooling_mode_max_tokens")) {
                (true, false, false) => Pooling::Cls,
                (false, true, false) => Pooling::Mean,
                (false, false, true) => Pooling::Max,
                _ => return Err(ModelError::InvalidConfig(format!(
                    "{}: exactly one of the cls / mean / max pooling modes is supported", path.display()))),
            };
            if on("pooling_mode_mean_sqrt_len_tokens") || on("pooling_mode_weightedmean_tokens") || on("pooling_mode_lasttoken") {
                return Err(ModelError::InvalidConfig(format!("{}: only cls, mean or max pooling is supported", path.display())));
            }
        } else if kind.ends_with(".Normalize") {
            normalize = true;
        } else if !kind.ends_with(".Transformer") {
            return Err(ModelError::InvalidConfig(format!("modules.json: module type {kind:?} is not supported")));
        }
    }
    Ok((pooling, normalize))
}
