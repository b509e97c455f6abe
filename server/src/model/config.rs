//! One description of a decoder-only model, filled from either a Hugging Face
//! `config.json` or GGUF metadata, so the forward pass never cares where weights came from.

use super::ModelError;
use candle_core::quantized::gguf_file;
use serde::Deserialize;

/// The architectures the batched forward pass implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "LlamaForCausalLM (Llama 2/3/3.1/3.2, SmolLM), \
        MistralForCausalLM, Qwen2ForCausalLM (Qwen2/2.5), Qwen3ForCausalLM";

    fn from_hf(architectures: &[String], model_type: Option<&str>) -> Result<Self, ModelError> {
        let names: Vec<&str> = architectures.iter().map(String::as_str).collect();
        for name in names.iter().copied().chain(model_type) {
            let arch = match name {
                "LlamaForCausalLM" | "llama" => Self::Llama,
                "MistralForCausalLM" | "mistral" => Self::Mistral,
                "Qwen2ForCausalLM" | "qwen2" => Self::Qwen2,
                "Qwen3ForCausalLM" | "qwen3" => Self::Qwen3,
                _ => continue,
            };
            return Ok(arch);
        }
        Err(ModelError::UnsupportedArchitecture {
            found: names.first().copied().or(model_type).unwrap_or("<none>").to_string(),
        })
    }

    fn from_gguf(name: &str) -> Result<Self, ModelError> {
        match name {
            "llama" => Ok(Self::Llama),
            "mistral" => Ok(Self::Mistral),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            other => Err(ModelError::UnsupportedArchitecture { found: format!("gguf:{other}") }),
        }
    }
}

/// Llama 3.1-style frequency-dependent RoPE scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: positions divided by `factor`.
    Linear(f32),
    Llama3(Llama3RopeScaling),
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    /// GGUF files converted by llama.cpp store Llama Q/K rows permuted for the
    /// interleaved ("NORM") rotary layout; Hugging Face weights use the half-split one.
    pub rope_interleaved: bool,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub qk_norm: bool,
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            Self::One(x) => vec![x],
            Self::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
struct HfRopeScaling {
    #[serde(alias = "type")]
    rope_type: Option<String>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
}

#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    vocab_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f32>,
    rope_scaling: Option<HfRopeScaling>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
}

fn parse_hf_rope_scaling(s: Option<HfRopeScaling>) -> Result<RopeScaling, ModelError> {
    let Some(s) = s else { return Ok(RopeScaling::None) };
    let kind = s.rope_type.as_deref().unwrap_or("default");
    let missing = |field: &str| ModelError::InvalidConfig(format!("rope_scaling.{field} missing for rope_type {kind}"));
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear(s.factor.ok_or_else(|| missing("factor"))?)),
        "llama3" => Ok(RopeScaling::Llama3(Llama3RopeScaling {
            factor: s.factor.ok_or_else(|| missing("factor"))?,
            low_freq_factor: s.low_freq_factor.ok_or_else(|| missing("low_freq_factor"))?,
            high_freq_factor: s.high_freq_factor.ok_or_else(|| missing("high_freq_factor"))?,
            original_max_position_embeddings: s
                .original_max_position_embeddings
                .ok_or_else(|| missing("original_max_position_embeddings"))?,
        })),
        other => Err(ModelError::InvalidConfig(format!(
            "rope_scaling type {other:?} is not supported (supported: default, linear, llama3)"
        ))),
    }
}

impl ModelConfig {
    pub fn from_hf_json(text: &str) -> Result<Self, ModelError> {
        let c: HfConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::InvalidConfig(format!("config.json: {e}")))?;
        let architecture = Architecture::from_hf(&c.architectures, c.model_type.as_deref())?;
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads);
        let sliding_window = match (architecture, c.use_sliding_window) {
            // Qwen2 configs carry a window that is only active with use_sliding_window.
            (Architecture::Qwen2 | Architecture::Qwen3, Some(false) | None) => None,
            _ => c.sliding_window,
        };
        let cfg = Self {
            architecture,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            vocab_size: c.vocab_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: c.rope_theta.unwrap_or(10_000.0),
            rope_scaling: parse_hf_rope_scaling(c.rope_scaling)?,
            rope_interleaved: false,
            max_position_embeddings: c.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            attention_bias: c.attention_bias.unwrap_or(architecture == Architecture::Qwen2),
            qk_norm: architecture == Architecture::Qwen3,
            sliding_window,
            bos_token_id: c.bos_token_id,
            eos_token_ids: c.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default(),
        };
        cfg.check()?;
        Ok(cfg)
    }

    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self, ModelError> {
        let md = &ct.metadata;
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| ModelError::InvalidConfig("GGUF has no general.architecture".into()))?;
        let architecture = Architecture::from_gguf(&arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get_u = |k: &str| -> Result<usize, ModelError> {
            md.get(&key(k))
                .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::InvalidConfig(format!("GGUF metadata {} missing", key(k))))
        };
        let opt_u = |k: &str| get_u(k).ok();
        let get_f = |k: &str| md.get(&key(k)).and_then(|v| v.to_f32().ok());
        let hidden_size = get_u("embedding_length")?;
        let num_heads = get_u("attention.head_count")?;
        let head_dim = opt_u("attention.key_length")
            .or_else(|| opt_u("rope.dimension_count"))
            .unwrap_or(hidden_size / num_heads);
        let vocab_size = match opt_u("vocab_size") {
            Some(v) => v,
            None => md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(Vec::len)
                .ok_or_else(|| ModelError::InvalidConfig("GGUF has no vocab size".into()))?,
        };
        let rope_scaling = match md.get(&key("rope.scaling.type")).and_then(|v| v.to_string().ok()) {
            Some(t) if t == "linear" => RopeScaling::Linear(get_f("rope.scaling.factor").unwrap_or(1.0)),
            // Llama 3.1 GGUFs ship the scaled frequencies as a `rope_freqs` tensor instead.
            _ => RopeScaling::None,
        };
        let u32_of = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let cfg = Self {
            architecture,
            hidden_size,
            intermediate_size: get_u("feed_forward_length")?,
            vocab_size,
            num_layers: get_u("block_count")?,
            num_heads,
            num_kv_heads: opt_u("attention.head_count_kv").unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f64,
            rope_theta: get_f("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            rope_interleaved: matches!(architecture, Architecture::Llama | Architecture::Mistral),
            max_position_embeddings: opt_u("context_length").unwrap_or(4096),
            tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
            attention_bias: ct.tensor_infos.contains_key("blk.0.attn_q.bias"),
            qk_norm: ct.tensor_infos.contains_key("blk.0.attn_q_norm.weight"),
            sliding_window: None,
            bos_token_id: u32_of("tokenizer.ggml.bos_token_id"),
            eos_token_ids: u32_of("tokenizer.ggml.eos_token_id").into_iter().collect(),
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ModelError> {
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 {
            return Err(ModelError::InvalidConfig(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(ModelError::InvalidConfig(format!("head_dim {} must be even for RoPE", self.head_dim)));
        }
        Ok(())
    }

    /// Bytes of K and V one token occupies across all layers at `elem_size` bytes per value.
    pub fn kv_bytes_per_token(&self, elem_size: usize) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * elem_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama31_rope_scaling_and_eos_list() {
        let cfg = ModelConfig::from_hf_json(
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
            "vocab_size":100,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "rms_norm_eps":1e-5,"rope_theta":500000.0,"max_position_embeddings":131072,
            "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},
            "eos_token_id":[128001,128008,128009],"tie_word_embeddings":true}"#,
        )
        .unwrap();
        assert_eq!(cfg.eos_token_ids, vec![128001, 128008, 128009]);
        assert!(matches!(cfg.rope_scaling, RopeScaling::Llama3(ref s) if s.factor == 8.0));
        assert!(cfg.tie_word_embeddings && !cfg.attention_bias && !cfg.qk_norm);
        assert_eq!(cfg.head_dim, 16);
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let err = ModelConfig::from_hf_json(
            r#"{"architectures":["GPT2LMHeadModel"],"hidden_size":64,"intermediate_size":128,
            "vocab_size":100,"num_hidden_layers":2,"num_attention_heads":4,"rms_norm_eps":1e-5}"#,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("GPT2LMHeadModel") && msg.contains("Qwen3ForCausalLM"), "{msg}");
    }

    #[test]
    fn qwen2_defaults_to_qkv_bias_and_yarn_is_rejected() {
        let base = r#""architectures":["Qwen2ForCausalLM"],"hidden_size":64,"intermediate_size":128,
            "vocab_size":100,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "rms_norm_eps":1e-6,"sliding_window":4096,"use_sliding_window":false"#;
        let cfg = ModelConfig::from_hf_json(&format!("{{{base}}}")).unwrap();
        assert!(cfg.attention_bias && cfg.sliding_window.is_none());
        let err = ModelConfig::from_hf_json(&format!(
            r#"{{{base},"rope_scaling":{{"type":"yarn","factor":4.0}}}}"#
        ))
        .unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
    }
}
