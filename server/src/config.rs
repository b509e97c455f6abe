//! Command-line configuration. Every flag is also an environment variable (its UPPER_SNAKE
//! name, as happy_vllm does) and a `.env` entry; priority CLI > environment > `.env` >
//! default (`main` loads `.env` without overriding the environment, clap does the rest).

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
    pub model: Option<PathBuf>,
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
    /// generate (a causal LM), embed (a sentence-transformers encoder, served on
    /// /v1/embeddings) or auto (embed for BERT-family folders, else generate).
    #[arg(long, env = "TASK", value_enum, default_value_t = Task::Auto)]
    pub task: Task,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Auto,
    Generate,
    #[value(alias = "embedding")]
    Embed,
}

impl ModelArgs {
    /// Whether this server embeds (decided from --task, else from the model's config.json).
    pub fn embeds(&self) -> bool {
        match self.task {
            Task::Embed => true,
            Task::Generate => false,
            Task::Auto => self.model.as_deref().is_some_and(crate::model::embedding::is_embedding_model),
        }
    }
}

impl ModelArgs {
    pub fn options(&self) -> Result<ModelOptions, String> {
        let path = self.model.clone().ok_or(
            "no model given: pass --model <folder or .gguf>, set the MODEL environment variable, or add MODEL=... to .env")?;
        Ok(ModelOptions {
            path,
            dtype: self.dtype,
            device: self.device.clone(),
            dequantize: self.dequantize,
            max_model_len: self.max_model_len,
        })
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// How `tool_choice: "auto"` finds tool calls in the model's text (vLLM's parser names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolCallParser {
    Hermes,
    #[value(name = "llama3_json")]
    Llama3Json,
    Mistral,
}

/// The HTTP server's own flags (names as vLLM and happy_vllm spell them).
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct ServerArgs {
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// Names clients may use in `model`; the first is reported. Default: the model's name.
    #[arg(long = "served-model-name", visible_alias = "model-name", alias = "model_name", env = "MODEL_NAME",
        num_args = 1.., value_delimiter = ',')]
    pub served_model_name: Vec<String>,
    /// Require `Authorization: Bearer <key>` on the API routes.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub api_key: Option<String>,
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',', default_value = "*")]
    pub allowed_origins: Vec<String>,
    #[arg(long, env = "ALLOWED_METHODS", value_delimiter = ',', default_value = "*")]
    pub allowed_methods: Vec<String>,
    #[arg(long, env = "ALLOWED_HEADERS", value_delimiter = ',', default_value = "*")]
    pub allowed_headers: Vec<String>,
    #[arg(long, env = "ALLOW_CREDENTIALS")]
    pub allow_credentials: bool,
    /// Return the details of internal errors (500) to clients.
    #[arg(long, env = "EXPLICIT_ERRORS")]
    pub explicit_errors: bool,
    /// `application` in /v1/info.
    #[arg(long, env = "APP_NAME", default_value = "kandle-server")]
    pub app_name: String,
    /// A Hugging Face folder (or tokenizer.json) whose tokenizer replaces the model's.
    #[arg(long, env = "TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// A Jinja chat template: a file path or the template itself.
    #[arg(long, env = "CHAT_TEMPLATE")]
    pub chat_template: Option<String>,
    /// Role of the generated message in chat responses.
    #[arg(long, env = "RESPONSE_ROLE", default_value = "assistant")]
    pub response_role: String,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Let `tool_choice: "auto"` parse tool calls out of the model's text (needs --tool-call-parser).
    #[arg(long, env = "ENABLE_AUTO_TOOL_CHOICE")]
    pub enable_auto_tool_choice: bool,
    /// How the model writes tool calls: `hermes` (<tool_call>{…}</tool_call>), `llama3_json`
    /// ({"name", "parameters"}) or `mistral` ([TOOL_CALLS][…]).
    #[arg(long, env = "TOOL_CALL_PARSER", value_enum)]
    pub tool_call_parser: Option<ToolCallParser>,
    /// Serve the effective configuration at /v1/launch_arguments.
    #[arg(long, env = "WITH_LAUNCH_ARGUMENTS")]
    pub with_launch_arguments: bool,
    /// Prefix for every route except /metrics (e.g. /llm).
    #[arg(long, env = "API_ENDPOINT_PREFIX", default_value = "")]
    pub api_endpoint_prefix: String,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    pub shutdown_timeout: f64,
    /// Beyond this many queued requests new ones get 503 + Retry-After (default: unbounded).
    #[arg(long, env = "MAX_WAITING_REQUESTS")]
    pub max_waiting_requests: Option<usize>,
    /// Largest accepted request body.
    #[arg(long, env = "MAX_REQUEST_BODY", default_value = "32MiB", value_parser = parse_bytes)]
    pub max_request_body: u64,
}

/// Everything `kandle-server serve` takes.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub server: ServerArgs,
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
