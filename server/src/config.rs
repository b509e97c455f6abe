//! Command-line configuration. Every flag is also an environment variable (its UPPER_SNAKE
//! name, as happy_vllm does); the command line wins over the environment.

use crate::engine::EngineConfig;
use crate::model::{DTypeArg, ModelOptions};
use clap::Args;
use std::path::PathBuf;

/// Parses `4GiB`, `512MiB`, `1.5G`, `300000` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?} (examples: 4GiB, 512MiB, 1000000)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    Ok((n * mult as f64) as u64)
}

#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct ModelArgs {
    /// A Hugging Face model folder (config.json, tokenizer.json, *.safetensors) or a .gguf file.
    #[arg(long, env = "MODEL")]
    pub model: PathBuf,
    /// Weight/activation dtype: auto = f32 on CPU, bf16 on CUDA.
    #[arg(long, env = "DTYPE", value_enum, default_value_t = DTypeArg::Auto)]
    pub dtype: DTypeArg,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "DEVICE", default_value = "cpu")]
    pub device: String,
    /// Dequantize GGUF weights at load time instead of using quantized matmuls.
    #[arg(long, env = "DEQUANTIZE", default_value_t = false)]
    pub dequantize: bool,
    /// Context length (prompt + output); defaults to the model's.
    #[arg(long, env = "MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,
}

impl ModelArgs {
    pub fn options(&self) -> ModelOptions {
        ModelOptions {
            path: self.model.clone(),
            dtype: self.dtype,
            device: self.device.clone(),
            dequantize: self.dequantize,
            max_model_len: self.max_model_len,
        }
    }
}

#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct EngineArgs {
    /// Tokens per KV cache block.
    #[arg(long, env = "BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// KV cache budget on CPU (e.g. 4GiB).
    #[arg(long, env = "KV_CACHE_MEMORY", default_value = "4GiB", value_parser = parse_bytes)]
    pub kv_cache_memory: u64,
    /// Fraction of GPU memory for weights and KV cache (CUDA).
    #[arg(long, env = "GPU_MEMORY_UTILIZATION", default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Most sequences in one batch.
    #[arg(long, env = "MAX_NUM_SEQS", default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Most tokens in one step (prefill chunks + decodes).
    #[arg(long, env = "MAX_NUM_BATCHED_TOKENS", default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
}

impl EngineArgs {
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            block_size: self.block_size,
            kv_cache_memory: self.kv_cache_memory,
            gpu_memory_utilization: self.gpu_memory_utilization,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_bytes("4GiB").unwrap(), 4 << 30);
        assert_eq!(super::parse_bytes("512 MiB").unwrap(), 512 << 20);
        assert_eq!(super::parse_bytes("1000").unwrap(), 1000);
        assert!(super::parse_bytes("12 parsecs").is_err());
    }
}
