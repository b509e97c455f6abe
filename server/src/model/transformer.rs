//! The batched decoder forward pass shared by Llama, Mistral, Qwen2 and Qwen3: one flattened
//! batch of tokens from many sequences, per-token positions, K/V through paged attention.

use super::attention::{AttentionMetadata, PagedAttention};
use super::config::{ModelConfig, RopeScaling};
use super::profile::{timed, Op};
use super::weights::{Linear, WeightSource};
use super::ModelError;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::Embedding;

struct Norm {
    weight: Tensor,
    eps: f32,
}

impl Norm {
    fn load(src: &dyn WeightSource, name: &str, dim: usize, eps: f64) -> std::result::Result<Self, ModelError> {
        Ok(Self { weight: src.dense(name, &[dim])?, eps: eps as f32 })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

struct Layer {
    attn_norm: Norm,
    qkv: Qkv,
    o: Linear,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    mlp_norm: Norm,
    mlp: Mlp,
    down: Linear,
}

/// The q/k/v projections: separate, or (no q/k norm; dense weights on GPUs, our quantized
/// matrices on CPUs) one matmul whose output is split and rotated (one kernel on GPUs).
enum Qkv {
    Split { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

/// The gate and up projections: separate, or (dense weights on GPUs, quantized on CPUs) one
/// matmul against the concatenated matrix followed by silu·mul (one kernel on GPUs).
enum Mlp {
    Split { gate: Linear, up: Linear },
    Fused { gate_up: Linear, inter: usize },
}

/// cos/sin tables indexed by absolute position.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
}

impl Rope {
    fn new(cfg: &ModelConfig, freq_factors: Option<Vec<f32>>, max_len: usize, device: &Device) -> Result<Self> {
        let d = cfg.head_dim;
        let mut inv_freq: Vec<f32> =
            (0..d).step_by(2).map(|i| 1f32 / cfg.rope_theta.powf(i as f32 / d as f32)).collect();
        match &cfg.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear(f) => inv_freq.iter_mut().for_each(|x| *x /= f),
            RopeScaling::Llama3(s) => {
                let orig = s.original_max_position_embeddings as f32;
                let (low_wavelen, high_wavelen) = (orig / s.low_freq_factor, orig / s.high_freq_factor);
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= s.factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                        *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                    }
                }
            }
        }
        if let Some(factors) = freq_factors {
            inv_freq.iter_mut().zip(factors).for_each(|(f, k)| *f /= k);
        }
        // Same construction (f32 outer product, then cos/sin) as candle-transformers, so
        // positions get bit-identical rotations.
        let n = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, n), device)?;
        let pos = Tensor::arange(0, max_len as u32, device)?.to_dtype(DType::F32)?.reshape((max_len, 1))?;
        let angles = pos.matmul(&inv_freq)?;
        Ok(Self { cos: angles.cos()?, sin: angles.sin()?, interleaved: cfg.rope_interleaved })
    }

    /// `x`: `[tokens, heads, head_dim]`; each token rotated by its own position.
    fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (t, h, d) = x.dims3()?;
        // rope kernels take (batch, heads, seq, dim) with per-batch cos/sin: one token per "batch".
        let x = x.reshape((t, h, 1, d))?;
        let y = if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope(&x, cos, sin)?
        };
        y.reshape((t, h, d))
    }
}

/// One flattened step: the tokens of every scheduled sequence and where they go.
#[derive(Debug, Clone, Default)]
pub struct ForwardBatch {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub attention: AttentionMetadata,
    /// Rows of `tokens` whose next-token logits are wanted (usually each sequence's last).
    pub logits_rows: Vec<u32>,
}

pub struct CausalLm {
    cfg: ModelConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Linear,
    rope: Rope,
    device: Device,
    dtype: DType,
    #[cfg(feature = "cuda")]
    fused: Option<super::cuda_ops::FusedOps>,
}

impl CausalLm {
    pub fn load(cfg: &ModelConfig, src: &dyn WeightSource, max_len: usize, dtype: DType, device: &Device)
        -> std::result::Result<Self, ModelError> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let eps = cfg.rms_norm_eps;
        let embed_w = src.dense("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let bias = cfg.attention_bias;
            let qk_norm = |which: &str| -> std::result::Result<Option<Norm>, ModelError> {
                if cfg.qk_norm { Ok(Some(Norm::load(src, &format!("{p}.self_attn.{which}.weight"), hd, eps)?)) } else { Ok(None) }
            };
            layers.push(Layer {
                attn_norm: Norm::load(src, &format!("{p}.input_layernorm.weight"), h, eps)?,
                qkv: {
                    let q = src.linear(&format!("{p}.self_attn.q_proj"), q_dim, h, bias)?;
                    let k = src.linear(&format!("{p}.self_attn.k_proj"), kv_dim, h, bias)?;
                    let v = src.linear(&format!("{p}.self_attn.v_proj"), kv_dim, h, bias)?;
                    let fused = if cfg.qk_norm { None } else {
                        Linear::fuse(&[&q, &k, &v], !device.is_cpu()).map_err(|e| ModelError::Load(format!("fusing {p} q/k/v: {e}")))?
                    };
                    match fused {
                        Some(qkv) => Qkv::Fused(qkv),
                        None => Qkv::Split { q: q.settled(), k: k.settled(), v: v.settled() },
                    }
                },
                o: src.linear(&format!("{p}.self_attn.o_proj"), h, q_dim, false)?.settled(),
                q_norm: qk_norm("q_norm")?,
                k_norm: qk_norm("k_norm")?,
                mlp_norm: Norm::load(src, &format!("{p}.post_attention_layernorm.weight"), h, eps)?,
                mlp: {
                    let gate = src.linear(&format!("{p}.mlp.gate_proj"), cfg.intermediate_size, h, false)?;
                    let up = src.linear(&format!("{p}.mlp.up_proj"), cfg.intermediate_size, h, false)?;
                    let fused = Linear::fuse(&[&gate, &up], !device.is_cpu())
                        .map_err(|e| ModelError::Load(format!("fusing {p} gate/up: {e}")))?;
                    match fused {
                        Some(gate_up) => Mlp::Fused { gate_up, inter: cfg.intermediate_size },
                        None => Mlp::Split { gate: gate.settled(), up: up.settled() },
                    }
                },
                down: src.linear(&format!("{p}.mlp.down_proj"), h, cfg.intermediate_size, false)?.settled(),
            });
        }
        let head_name = if !cfg.tie_word_embeddings && src.contains("lm_head.weight") {
            "lm_head.weight"
        } else {
            "model.embed_tokens.weight"
        };
        let lm_head = src.linear(head_name.trim_end_matches(".weight"), cfg.vocab_size, h, false)?.settled();
        let freq_factors = if src.contains("rope_freqs.weight") {
            Some(src.dense("rope_freqs.weight", &[hd / 2])?.to_dtype(DType::F32).and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| ModelError::Load(format!("rope_freqs: {e}")))?)
        } else {
            None
        };
        let rope = Rope::new(cfg, freq_factors, max_len, device).map_err(|e| ModelError::Load(format!("rope tables: {e}")))?;
        Ok(Self {
            cfg: cfg.clone(),
            embed: Embedding::new(embed_w, h),
            layers,
            norm: Norm::load(src, "model.norm.weight", h, eps)?,
            lm_head,
            rope,
            device: device.clone(),
            dtype,
            #[cfg(feature = "cuda")]
            fused: match device {
                Device::Cuda(d) => Some(super::cuda_ops::FusedOps::new(d, dtype)
                    .map_err(|e| ModelError::Load(format!("loading the fused CUDA kernels: {e}")))?),
                _ => None,
            },
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether the fused ops have a CPU kernel (f32 only; other dtypes run candle's ops).
    fn cpu_f32(&self) -> bool {
        self.device.is_cpu() && self.dtype == DType::F32
    }

    /// `silu(gate) * up` from the fused projection's `[rows, 2 * inter]` output.
    fn silu_mul(&self, y: &Tensor, inter: usize) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(op) = &self.fused {
            return op.silu_mul(y);
        }
        if self.cpu_f32() {
            return super::cpu_ops::silu_mul(y, inter);
        }
        candle_nn::ops::silu(&y.narrow(1, 0, inter)?)? * y.narrow(1, inter, inter)?
    }

    /// q, k (rotated) and v `[n, heads, head_dim]` from the fused projection's output.
    fn qkv_rope(&self, qkv: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        #[cfg(feature = "cuda")]
        if let Some(op) = &self.fused {
            return op.qkv_rope(qkv, cos, sin, nh, nkv, hd, self.rope.interleaved);
        }
        if self.cpu_f32() {
            return super::cpu_ops::qkv_rope(qkv, cos, sin, nh, nkv, hd, self.rope.interleaved);
        }
        let n = qkv.dim(0)?;
        let part = |start: usize, heads: usize| qkv.narrow(1, start * hd, heads * hd)?.contiguous()?.reshape((n, heads, hd));
        let (q, k, v) = (part(0, nh)?, part(nh, nkv)?, part(nh + nkv, nkv)?);
        Ok((self.rope.apply(&q, cos, sin)?, self.rope.apply(&k, cos, sin)?, v))
    }

    /// The residual add and the following norm: `(x + delta, norm(x + delta))`, one kernel.
    fn add_norm(&self, x: &Tensor, delta: &Tensor, norm: &Norm) -> Result<(Tensor, Tensor)> {
        #[cfg(feature = "cuda")]
        if let Some(op) = &self.fused {
            return op.add_rms_norm(x, delta, &norm.weight, norm.eps);
        }
        if self.cpu_f32() {
            return super::cpu_ops::add_rms_norm(x, delta, &norm.weight, norm.eps);
        }
        let sum = (x + delta)?;
        let h = norm.forward(&sum)?;
        Ok((sum, h))
    }

    /// Runs one step and returns f32 logits `[logits_rows.len(), vocab]`.
    pub fn forward(&self, batch: &ForwardBatch, attn: &mut dyn PagedAttention) -> Result<Tensor> {
        let n = batch.tokens.len();
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let ids = Tensor::new(batch.tokens.as_slice(), &self.device)?;
        let pos = Tensor::new(batch.positions.as_slice(), &self.device)?;
        let cos = self.rope.cos.index_select(&pos, 0)?.to_dtype(self.dtype)?.unsqueeze(1)?;
        let sin = self.rope.sin.index_select(&pos, 0)?.to_dtype(self.dtype)?.unsqueeze(1)?;
        let mut x = self.embed.forward(&ids)?;
        let mut h = self.layers[0].attn_norm.forward(&x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = timed(Op::Qkv, || match &layer.qkv {
                Qkv::Fused(qkv) => self.qkv_rope(&qkv.forward(&h)?, &cos, &sin),
                Qkv::Split { q, k, v } => {
                    let mut q = q.forward(&h)?.reshape((n, nh, hd))?;
                    let mut k = k.forward(&h)?.reshape((n, nkv, hd))?;
                    let v = v.forward(&h)?.reshape((n, nkv, hd))?;
                    if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                        q = qn.forward(&q)?;
                        k = kn.forward(&k)?;
                    }
                    Ok((self.rope.apply(&q, &cos, &sin)?, self.rope.apply(&k, &cos, &sin)?, v))
                }
            })?;
            let y = timed(Op::Attention, || attn.forward(i, &q, &k, &v.contiguous()?, &batch.attention))?.to_dtype(self.dtype)?;
            let o = timed(Op::OProj, || layer.o.forward(&y))?;
            (x, h) = timed(Op::AddNorm, || self.add_norm(&x, &o, &layer.mlp_norm))?;
            let act = match &layer.mlp {
                Mlp::Split { gate, up } => {
                    let (g, u) = timed(Op::GateUp, || Ok::<_, candle_core::Error>((gate.forward(&h)?, up.forward(&h)?)))?;
                    timed(Op::SiluMul, || candle_nn::ops::silu(&g)? * u)?
                }
                Mlp::Fused { gate_up, inter } => {
                    let y = timed(Op::GateUp, || gate_up.forward(&h))?;
                    timed(Op::SiluMul, || self.silu_mul(&y, *inter))?
                }
            };
            let down = timed(Op::DownProj, || layer.down.forward(&act))?;
            match self.layers.get(i + 1) {
                Some(next) => (x, h) = timed(Op::AddNorm, || self.add_norm(&x, &down, &next.attn_norm))?,
                None => x = (x + down)?,
            }
        }
        let rows = Tensor::new(batch.logits_rows.as_slice(), &self.device)?;
        timed(Op::LmHead, || self.lm_head.forward(&self.norm.forward(&x.index_select(&rows, 0)?)?)?.to_dtype(DType::F32))
    }
}
