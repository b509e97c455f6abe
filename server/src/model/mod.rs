//! Model loading (a Hugging Face folder or a GGUF file) and the batched forward pass.

pub mod attention;
pub mod bert;
pub mod config;
mod cpu_ops;
pub mod embedding;
#[cfg(feature = "cuda")]
pub mod cuda_attention;
#[cfg(feature = "cuda")]
pub mod cuda_ops;
mod huge_pages;
pub mod profile;
pub mod quant_matmul;
pub mod transformer;
mod vector_exp;
pub mod weights;

use crate::tokenizer::TokenizerInfo;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use config::ModelConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use transformer::CausalLm;
use weights::{GgufSource, SafetensorsSource, WeightSource};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model path {0} does not exist")]
    NotFound(PathBuf),
    #[error("missing file {0}")]
    MissingFile(PathBuf),
    #[error("reading {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("unsupported architecture {found:?}; supported: {}", config::Architecture::SUPPORTED)]
    UnsupportedArchitecture { found: String },
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    #[error("tensor {0} is missing from the checkpoint")]
    MissingTensor(String),
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    TensorShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("dtype {dtype} is not supported on {device}: {hint}")]
    UnsupportedDType { dtype: String, device: String, hint: &'static str },
    #[error("device {0} is not available: {1}")]
    Device(String, String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("loading weights: {0}")]
    Load(String),
}

impl ModelError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::NotFound(_) | Self::MissingFile(_) | Self::Io(..) => "model_not_found",
            Self::UnsupportedArchitecture { .. } | Self::UnsupportedDType { .. } => "unsupported",
            _ => "model_load_error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeArg {
    /// f32 on CPU, bf16 on CUDA.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

/// candle allocates every tensor from the device's stream-ordered memory pool, which by
/// default hands freed memory back to the driver at each synchronisation (once per step):
/// each step would then map its activations anew. Keeping freed memory in the pool makes
/// it a caching allocator, as PyTorch's; the KV sizing reserves the workspace it keeps.
#[cfg(feature = "cuda")]
fn keep_freed_memory(d: &candle_core::CudaDevice) -> Result<(), String> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let pool = default_pool(d)?;
    let mut threshold = u64::MAX;
    // SAFETY: a valid pool handle and a pointer to a u64, as the attribute requires.
    unsafe {
        sys::cuMemPoolSetAttribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast()).result().map_err(|e| e.to_string())
    }
}

/// Hands the pool's unused memory back to the driver (after loading, before the KV cache
/// is sized from what the driver reports free).
#[cfg(feature = "cuda")]
pub fn trim_memory_pool(d: &candle_core::CudaDevice) -> Result<(), String> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let pool = default_pool(d)?;
    d.cuda_stream().synchronize().map_err(|e| e.to_string())?;
    // SAFETY: a valid pool handle; nothing in flight uses the freed memory after the sync.
    unsafe { sys::cuMemPoolTrimTo(pool, 0).result().map_err(|e| e.to_string()) }
}

#[cfg(feature = "cuda")]
fn default_pool(d: &candle_core::CudaDevice) -> Result<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool, String> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let ctx = d.cuda_stream().context().clone();
    ctx.bind_to_thread().map_err(|e| e.to_string())?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: plain driver call on this context's device with a valid out-pointer.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result().map_err(|e| e.to_string())? };
    Ok(pool)
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device, ModelError> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s.strip_prefix("cuda:").map(str::parse::<usize>).transpose()
                .map_err(|_| ModelError::Device(s.into(), "expected cuda:N".into()))?.unwrap_or(0);
            if !candle_core::utils::cuda_is_available() {
                return Err(ModelError::Device(s.into(), "this build has no CUDA support (build with --features cuda)".into()));
            }
            // A dedicated stream: the model is loaded on one thread and run on the engine's.
            let device = Device::new_cuda_with_stream(ordinal).map_err(|e| ModelError::Device(s.into(), e.to_string()))?;
            #[cfg(feature = "cuda")]
            if let Device::Cuda(d) = &device {
                // SAFETY: every tensor lives and is used on this one stream, so cudarc's
                // cross-stream event tracking (an event record per kernel argument) only
                // costs launch time.
                unsafe { d.disable_event_tracking() };
                keep_freed_memory(d).map_err(|e| ModelError::Device(s.into(), format!("configuring the memory pool: {e}")))?;
            }
            Ok(device)
        }
        other => Err(ModelError::Device(other.into(), "expected cpu, cuda or cuda:N".into())),
    }
}

fn resolve_dtype(arg: DTypeArg, device: &Device) -> Result<DType, ModelError> {
    let dtype = match (arg, device.is_cpu()) {
        (DTypeArg::Auto, true) | (DTypeArg::F32, _) => DType::F32,
        (DTypeArg::Auto, false) | (DTypeArg::Bf16, _) => DType::BF16,
        (DTypeArg::F16, _) => DType::F16,
    };
    if device.is_cpu() && dtype != DType::F32 {
        return Err(ModelError::UnsupportedDType {
            dtype: format!("{dtype:?}").to_lowercase(),
            device: "cpu".into(),
            hint: "candle's CPU half-precision kernels are scalar; use --dtype f32 (or auto) or a quantized GGUF",
        });
    }
    Ok(dtype)
}

#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub path: PathBuf,
    pub dtype: DTypeArg,
    pub device: String,
    /// Dequantize GGUF weights at load instead of running quantized matmuls.
    pub dequantize: bool,
    /// Context limit; defaults to the model's own.
    pub max_model_len: Option<usize>,
}

/// Sampling defaults from `generation_config.json` (vLLM's `--generation-config auto`).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
}

pub struct LoadedModel {
    pub model: CausalLm,
    pub tokenizer: TokenizerInfo,
    pub generation_defaults: GenerationDefaults,
    pub max_model_len: usize,
    /// Directory or file name, the default served model name.
    pub name: String,
}

impl LoadedModel {
    pub fn load(opts: &ModelOptions) -> Result<Self, ModelError> {
        let path = &opts.path;
        if !path.exists() {
            return Err(ModelError::NotFound(path.clone()));
        }
        let device = parse_device(&opts.device)?;
        let dtype = resolve_dtype(opts.dtype, &device)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let gguf = if path.is_dir() { None } else { Some(path.clone()) };
        let (cfg, tokenizer, defaults, source): (_, _, _, Box<dyn WeightSource>) = match gguf {
            Some(file_path) => {
                let mut file = std::fs::File::open(&file_path).map_err(|e| ModelError::Io(file_path.clone(), e))?;
                let content = gguf_file::Content::read(&mut file)
                    .map_err(|e| ModelError::Load(format!("{} is not a readable GGUF file: {e}", file_path.display())))?;
                let cfg = ModelConfig::from_gguf(&content)?;
                let tok = TokenizerInfo::from_gguf(&content)?;
                let src = GgufSource::new(content, file, &device, dtype, opts.dequantize);
                (cfg, tok, GenerationDefaults::default(), Box::new(src))
            }
            None => {
                let cfg_path = path.join("config.json");
                let text = std::fs::read_to_string(&cfg_path).map_err(|_| ModelError::MissingFile(cfg_path.clone()))?;
                let cfg = ModelConfig::from_hf_json(&text)?;
                let mut tok = TokenizerInfo::from_hf_dir(path)?;
                let gen_path = path.join("generation_config.json");
                let (defaults, gen_eos) = read_generation_config(&gen_path)?;
                for id in cfg.eos_token_ids.iter().chain(&gen_eos) {
                    if !tok.eos_token_ids.contains(id) {
                        tok.eos_token_ids.push(*id);
                    }
                }
                let files = weights::safetensors_files(path)?;
                let src = SafetensorsSource::open(&files, dtype, &device)?;
                (cfg, tok, defaults, Box::new(src))
            }
        };
        let mut max_model_len = opts.max_model_len.unwrap_or(cfg.max_position_embeddings);
        if let Some(window) = cfg.sliding_window {
            // The paged kernel has no sliding window: stay inside it so results are exact.
            max_model_len = max_model_len.min(window);
        }
        if max_model_len == 0 {
            return Err(ModelError::InvalidConfig("max_model_len must be positive".into()));
        }
        let model = CausalLm::load(&cfg, source.as_ref(), max_model_len, dtype, &device)?;
        Ok(Self { model, tokenizer, generation_defaults: defaults, max_model_len, name })
    }
}

fn read_generation_config(path: &Path) -> Result<(GenerationDefaults, Vec<u32>), ModelError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Default::default()) };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::InvalidConfig(format!("{}: {e}", path.display())))?;
    let eos = match &v["eos_token_id"] {
        serde_json::Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => vec![],
    };
    let defaults = serde_json::from_value(v).unwrap_or_default();
    Ok((defaults, eos))
}
