//! Sentence-transformers embedding models (BERT family) loaded from the folder users have:
//! `config.json`, `model.safetensors`, `tokenizer.json`, `modules.json` (which says whether
//! a Pooling and a Normalize module follow the transformer), `1_Pooling/config.json` and
//! `sentence_bert_config.json` (the max sequence length). The encoder is `bert.rs` (ragged
//! batches, CPU); pooling and normalisation follow sentence-transformers.

use super::bert::{load_tensors, BertEncoder, BertShape};
use super::ModelError;
use candle_core::Device;
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
    bert: BertEncoder,
    pub tokenizer: Tokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Longest input in tokens, special tokens included (sentence-transformers' max_seq_length).
    pub max_len: usize,
    pub dim: usize,
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
        if !device.is_cpu() {
            return Err(ModelError::Device(format!("{device:?}"), "embedding models run on the CPU".into()));
        }
        let num = |k: &str| cfg_value[k].as_u64().map(|v| v as usize)
            .ok_or_else(|| ModelError::InvalidConfig(format!("config.json: `{k}` is missing")));
        let act = cfg_value["hidden_act"].as_str().unwrap_or("gelu");
        if act != "gelu" {
            return Err(ModelError::InvalidConfig(format!("config.json: hidden_act {act:?} is not supported (gelu is)")));
        }
        if cfg_value["position_embedding_type"].as_str().is_some_and(|p| p != "absolute") {
            return Err(ModelError::InvalidConfig("config.json: only absolute position embeddings are supported".into()));
        }
        let shape = BertShape {
            hidden: num("hidden_size")?,
            heads: num("num_attention_heads")?,
            layers: num("num_hidden_layers")?,
            eps: cfg_value["layer_norm_eps"].as_f64().unwrap_or(1e-12),
            max_positions: num("max_position_embeddings")?,
            vocab: num("vocab_size")?,
        };
        let (pooling, normalize) = read_modules(dir)?;
        let max_seq = read_json(&dir.join("sentence_bert_config.json")).ok().and_then(|v| v["max_seq_length"].as_u64());
        let max_len = max_seq.map_or(shape.max_positions, |m| (m as usize).min(shape.max_positions));
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(ModelError::MissingFile(tok_path));
        }
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        // The folder's tokenizer.json often pads/truncates to a fixed length: batching does
        // not pad at all, and over-long inputs are the API's decision.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let weights = ["model.safetensors", "pytorch_model.safetensors"].iter().map(|f| dir.join(f)).find(|p| p.exists())
            .ok_or_else(|| ModelError::MissingFile(dir.join("model.safetensors")))?;
        let tensors = load_tensors(&weights).map_err(ModelError::Load)?;
        let bert = BertEncoder::load(&tensors, &shape).map_err(ModelError::Load)?;
        Ok(Self { dim: shape.hidden, bert, tokenizer, pooling, normalize, max_len })
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

    /// One embedding per input, in order (inputs of any lengths share one forward pass).
    pub fn embed(&self, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        let h = self.dim;
        let hidden = self.bert.forward(inputs)?;
        let mut rows = hidden.chunks(h);
        Ok(inputs
            .iter()
            .map(|input| {
                let tokens: Vec<&[f32]> = rows.by_ref().take(input.len()).collect();
                let mut v = match self.pooling {
                    Pooling::Cls => tokens.first().map_or(vec![0.0; h], |t| t.to_vec()),
                    Pooling::Mean => {
                        let mut sum = vec![0f32; h];
                        for t in &tokens {
                            sum.iter_mut().zip(*t).for_each(|(s, x)| *s += x);
                        }
                        let n = tokens.len().max(1) as f32;
                        sum.iter_mut().for_each(|s| *s /= n);
                        sum
                    }
                    Pooling::Max => {
                        let mut max = vec![f32::NEG_INFINITY; h];
                        for t in &tokens {
                            max.iter_mut().zip(*t).for_each(|(m, x)| *m = m.max(*x));
                        }
                        max
                    }
                };
                if self.normalize {
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                v
            })
            .collect())
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
