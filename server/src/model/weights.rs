//! Where weights come from: a GGUF file (quantized or dequantized at load) or memory-mapped
//! safetensors. Tensors are requested by their Hugging Face name; the GGUF source translates.

use super::ModelError;
use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::cell::RefCell;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// A linear layer's weight: candle's `QMatMul` (dense, or quantized types candle runs
/// well) or our own kernel for Q4_1 / Q8_0 on CPU. The forward pass only sees `Linear`.
pub enum Weight {
    /// Dense or any quantized type candle handles well.
    Candle(QMatMul),
    /// Q4_1 / Q8_0 through our own kernel (candle has no x86 SIMD Q4_1 and no row tiling).
    Quant(super::quant_matmul::QuantMatrix),
}

pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            Weight::Candle(w) => candle_core::Module::forward(w, x)?,
            Weight::Quant(w) => w.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

impl Linear {
    /// The layer as the model keeps it: our quantized matrices move into huge pages (see
    /// `huge_pages`). Called once a layer is final (after fusing), not on fused parts.
    pub fn settled(self) -> Self {
        match self.weight {
            Weight::Quant(q) => Linear { weight: Weight::Quant(q.into_huge_pages()), bias: self.bias },
            weight => Linear { weight, bias: self.bias },
        }
    }

    /// One layer computing all of `parts` (outputs concatenated along the last dim): one
    /// matmul instead of several. Our quantized CPU matrices always fuse (each output column
    /// is computed on its own, so results are bit-identical to the separate layers); dense
    /// matrices only with `dense` (one GEMM may block its columns differently, so the GPU,
    /// where that is accepted, asks for it, without biases). Biases of quantized parts fuse
    /// when every part has one.
    pub fn fuse(parts: &[&Linear], dense: bool) -> candle_core::Result<Option<Linear>> {
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|p| p.bias.as_ref()).collect();
        let no_bias = parts.iter().all(|p| p.bias.is_none());
        if biases.is_none() && !no_bias {
            return Ok(None); // some parts have a bias, some not
        }
        let quant: Option<Vec<_>> = parts.iter().map(|p| match &p.weight {
            Weight::Quant(q) => Some(q),
            _ => None,
        }).collect();
        let dense_mats: Option<Vec<_>> = parts.iter().map(|p| match &p.weight {
            Weight::Candle(QMatMul::Tensor(t)) => Some(t),
            _ => None,
        }).collect();
        let weight = match (quant, dense_mats) {
            (Some(quant), _) => match super::quant_matmul::QuantMatrix::concat(&quant) {
                Some(q) => Weight::Quant(q),
                None => return Ok(None),
            },
            (None, Some(mats)) if dense && no_bias => Weight::Candle(QMatMul::Tensor(Tensor::cat(&mats, 0)?)),
            _ => return Ok(None),
        };
        let bias = biases.map(|b| Tensor::cat(&b, 0)).transpose()?;
        Ok(Some(Linear { weight, bias }.settled()))
    }
}

pub trait WeightSource {
    fn contains(&self, hf_name: &str) -> bool;
    /// A dense tensor (norm weights, biases, embeddings), converted to the compute dtype.
    fn dense(&self, hf_name: &str, shape: &[usize]) -> Result<Tensor, ModelError>;
    /// A `[out, in]` matrix used by a linear layer, kept quantized where it was.
    fn matrix(&self, hf_name: &str, out_dim: usize, in_dim: usize) -> Result<Weight, ModelError>;

    fn linear(&self, prefix: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear, ModelError> {
        let weight = self.matrix(&format!("{prefix}.weight"), out_dim, in_dim)?;
        let bias = if bias { Some(self.dense(&format!("{prefix}.bias"), &[out_dim])?) } else { None };
        Ok(Linear { weight, bias })
    }
}

fn check_shape(name: &str, expected: &[usize], found: &[usize]) -> Result<(), ModelError> {
    if expected != found {
        return Err(ModelError::TensorShape {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    Ok(())
}

pub struct SafetensorsSource {
    vb: VarBuilder<'static>,
    dtype: DType,
}

impl SafetensorsSource {
    pub fn open(files: &[std::path::PathBuf], dtype: DType, device: &Device) -> Result<Self, ModelError> {
        // SAFETY: the files are memory-mapped read-only; like every mmap-based loader
        // (transformers, vLLM) we rely on them not being truncated while the server runs.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }
            .map_err(|e| ModelError::Load(format!("reading safetensors: {e}")))?;
        Ok(Self { vb, dtype })
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        if !self.vb.contains_tensor(name) {
            return Err(ModelError::MissingTensor(name.to_string()));
        }
        // Read with the stored shape first so a mismatch names both shapes.
        let t = self
            .vb
            .get_unchecked_dtype(name, self.dtype)
            .map_err(|e| ModelError::Load(format!("tensor {name}: {e}")))?;
        check_shape(name, shape, t.dims())?;
        Ok(t)
    }
}

impl WeightSource for SafetensorsSource {
    fn contains(&self, hf_name: &str) -> bool {
        self.vb.contains_tensor(hf_name)
    }
    fn dense(&self, hf_name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        self.get(hf_name, shape)
    }
    fn matrix(&self, hf_name: &str, out_dim: usize, in_dim: usize) -> Result<Weight, ModelError> {
        Ok(Weight::Candle(QMatMul::Tensor(self.get(hf_name, &[out_dim, in_dim])?)))
    }
}

pub struct GgufSource {
    content: gguf_file::Content,
    file: RefCell<File>,
    device: Device,
    dtype: DType,
    dequantize: bool,
}

impl GgufSource {
    pub fn new(content: gguf_file::Content, file: File, device: &Device, dtype: DType, dequantize: bool) -> Self {
        Self { content, file: RefCell::new(file), device: device.clone(), dtype, dequantize }
    }

    /// llama.cpp's tensor names for the Hugging Face names the model asks for.
    fn gguf_name(hf_name: &str) -> String {
        let global = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            ("rope_freqs.weight", "rope_freqs.weight"),
        ];
        if let Some((_, g)) = global.iter().find(|(h, _)| *h == hf_name) {
            return g.to_string();
        }
        let Some(rest) = hf_name.strip_prefix("model.layers.") else { return hf_name.to_string() };
        let (idx, rest) = rest.split_once('.').unwrap_or((rest, ""));
        let mapped = [
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("self_attn.q_norm", "attn_q_norm"),
            ("self_attn.k_norm", "attn_k_norm"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm"),
        ];
        for (h, g) in mapped {
            if let Some(suffix) = rest.strip_prefix(h) {
                return format!("blk.{idx}.{g}{suffix}");
            }
        }
        hf_name.to_string()
    }

    fn qtensor(&self, hf_name: &str, shape: &[usize]) -> Result<QTensor, ModelError> {
        let name = Self::gguf_name(hf_name);
        if !self.content.tensor_infos.contains_key(&name) {
            return Err(ModelError::MissingTensor(name));
        }
        let q = self
            .content
            .tensor(&mut *self.file.borrow_mut(), &name, &self.device)
            .map_err(|e| ModelError::Load(format!("tensor {name}: {e}")))?;
        check_shape(&name, shape, q.shape().dims())?;
        Ok(q)
    }
}

impl WeightSource for GgufSource {
    fn contains(&self, hf_name: &str) -> bool {
        self.content.tensor_infos.contains_key(&Self::gguf_name(hf_name))
    }
    fn dense(&self, hf_name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let q = self.qtensor(hf_name, shape)?;
        q.dequantize(&self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(|e| ModelError::Load(format!("dequantizing {hf_name}: {e}")))
    }
    fn matrix(&self, hf_name: &str, out_dim: usize, in_dim: usize) -> Result<Weight, ModelError> {
        let q = self.qtensor(hf_name, &[out_dim, in_dim])?;
        let err = |e: candle_core::Error| ModelError::Load(format!("tensor {hf_name}: {e}"));
        if self.dequantize {
            let t = q.dequantize(&self.device).and_then(|t| t.to_dtype(self.dtype)).map_err(err)?;
            Ok(Weight::Candle(QMatMul::Tensor(t)))
        } else if let Some(m) = self.device.is_cpu().then(|| super::quant_matmul::QuantMatrix::from_qtensor(&q))
            .transpose().map_err(err)?.flatten() {
            Ok(Weight::Quant(m))
        } else {
            QMatMul::from_arc(Arc::new(q)).map(Weight::Candle).map_err(err)
        }
    }
}

/// Safetensors shards of a folder: the index's files when sharded, else every `*.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io(index.clone(), e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::InvalidConfig(format!("{}: {e}", index.display())))?;
        let map = json["weight_map"]
            .as_object()
            .ok_or_else(|| ModelError::InvalidConfig(format!("{} has no weight_map", index.display())))?;
        let mut files: Vec<_> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        for f in &files {
            if !f.exists() {
                return Err(ModelError::MissingFile(f.clone()));
            }
        }
        return Ok(files);
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::Io(dir.to_path_buf(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::MissingFile(dir.join("model.safetensors")));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::GgufSource;

    #[test]
    fn hf_names_map_to_llama_cpp_names() {
        assert_eq!(GgufSource::gguf_name("model.layers.12.self_attn.q_proj.bias"), "blk.12.attn_q.bias");
        assert_eq!(GgufSource::gguf_name("model.layers.0.mlp.down_proj.weight"), "blk.0.ffn_down.weight");
        assert_eq!(GgufSource::gguf_name("model.layers.3.self_attn.k_norm.weight"), "blk.3.attn_k_norm.weight");
        assert_eq!(GgufSource::gguf_name("model.embed_tokens.weight"), "token_embd.weight");
    }
}
