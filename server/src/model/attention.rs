//! Paged attention: K/V live in fixed-size blocks addressed through per-sequence block
//! tables. The forward pass only sees the [`PagedAttention`] trait, so the CPU kernel here
//! and a CUDA kernel can be swapped without touching the model code.

use candle_core::{DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

/// Where each sequence of a flattened batch sits and which KV blocks it owns.
#[derive(Debug, Clone, Default)]
pub struct AttentionMetadata {
    /// Physical KV slot (`block * block_size + offset`) of every token in the batch.
    pub slot_mapping: Vec<usize>,
    pub seqs: Vec<SeqAttention>,
}

#[derive(Debug, Clone)]
pub struct SeqAttention {
    /// First row of this sequence's queries in the flattened batch.
    pub query_start: usize,
    pub query_len: usize,
    /// Number of keys visible to the last query (tokens cached after this step's writes).
    pub context_len: usize,
    pub block_table: Vec<u32>,
}

pub trait PagedAttention: Send {
    /// Writes `k`/`v` (`[tokens, kv_heads, head_dim]`) into their slots, then attends each
    /// query (`[tokens, heads, head_dim]`) causally over its sequence's cached keys.
    /// Returns `[tokens, heads * head_dim]`.
    fn forward(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor, meta: &AttentionMetadata)
        -> Result<Tensor>;
    /// Copies whole blocks `(src, dst)` in every layer (copy-on-write of shared blocks).
    fn copy_blocks(&mut self, copies: &[(u32, u32)]) -> Result<()>;
    fn num_blocks(&self) -> usize;
    fn block_size(&self) -> usize;
}

/// Shape of one model's KV cache.
#[derive(Debug, Clone, Copy)]
pub struct KvCacheShape {
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub num_blocks: usize,
}

/// f32 KV cache in host memory with a scalar-friendly attention loop that LLVM vectorises.
pub struct CpuPagedAttention {
    shape: KvCacheShape,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    scale: f32,
}

impl CpuPagedAttention {
    pub fn new(shape: KvCacheShape) -> Self {
        let per_layer = shape.num_blocks * shape.block_size * shape.num_kv_heads * shape.head_dim;
        // vec![0.0; n] maps zero pages lazily, so an unused budget costs no resident memory.
        let alloc = || (0..shape.num_layers).map(|_| vec![0f32; per_layer]).collect();
        Self { shape, k: alloc(), v: alloc(), scale: 1.0 / (shape.head_dim as f32).sqrt() }
    }
}

/// Borrows a contiguous f32 CPU tensor as a slice for the duration of `f`.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    if t.dtype() != DType::F32 || !t.is_contiguous() {
        candle_core::bail!("paged attention (cpu) needs contiguous f32 tensors, got {:?}", t.dtype())
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("paged attention (cpu) got a device tensor") };
    let all = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    f(&all[start..start + t.elem_count()])
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl PagedAttention for CpuPagedAttention {
    fn forward(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor, meta: &AttentionMetadata)
        -> Result<Tensor> {
        let KvCacheShape { num_heads, num_kv_heads, head_dim: d, block_size, .. } = self.shape;
        let n_tokens = meta.slot_mapping.len();
        let row = num_kv_heads * d;
        let (kc, vc) = (&mut self.k[layer], &mut self.v[layer]);
        for (cache, new) in [(&mut *kc, k), (&mut *vc, v)] {
            with_f32(new, |src| {
                if src.len() != n_tokens * row {
                    candle_core::bail!("k/v has {} values, expected {}", src.len(), n_tokens * row)
                }
                for (t, &slot) in meta.slot_mapping.iter().enumerate() {
                    cache[slot * row..(slot + 1) * row].copy_from_slice(&src[t * row..(t + 1) * row]);
                }
                Ok(())
            })?;
        }
        let (kc, vc) = (&self.k[layer], &self.v[layer]);
        let group = num_heads / num_kv_heads;
        let scale = self.scale;
        // (sequence, query row within it) for every token, so each output chunk knows its keys.
        let mut owner = Vec::with_capacity(n_tokens);
        for (s, seq) in meta.seqs.iter().enumerate() {
            for i in 0..seq.query_len {
                owner.push((s, i));
            }
        }
        let mut out = vec![0f32; n_tokens * num_heads * d];
        with_f32(q, |q| {
            // One work item = one token x one KV head (its `group` query heads share the keys).
            out.par_chunks_mut(group * d).enumerate().for_each(|(item, out)| {
                let (t, kvh) = (item / num_kv_heads, item % num_kv_heads);
                let (s, i) = owner[t];
                let seq = &meta.seqs[s];
                // Causal: query i of this step sits at position context_len - query_len + i.
                let n_keys = seq.context_len - seq.query_len + i + 1;
                let qs = &q[(t * num_heads + kvh * group) * d..(t * num_heads + (kvh + 1) * group) * d];
                let mut scores = vec![0f32; group * n_keys];
                for j in 0..n_keys {
                    let slot = seq.block_table[j / block_size] as usize * block_size + j % block_size;
                    let key = &kc[(slot * num_kv_heads + kvh) * d..][..d];
                    for g in 0..group {
                        scores[g * n_keys + j] = dot(&qs[g * d..(g + 1) * d], key) * scale;
                    }
                }
                for g in 0..group {
                    let sc = &mut scores[g * n_keys..(g + 1) * n_keys];
                    let max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for x in sc.iter_mut() {
                        *x = (*x - max).exp();
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    sc.iter_mut().for_each(|x| *x *= inv);
                }
                for j in 0..n_keys {
                    let slot = seq.block_table[j / block_size] as usize * block_size + j % block_size;
                    let val = &vc[(slot * num_kv_heads + kvh) * d..][..d];
                    for g in 0..group {
                        let p = scores[g * n_keys + j];
                        for (o, x) in out[g * d..(g + 1) * d].iter_mut().zip(val) {
                            *o += p * x;
                        }
                    }
                }
            });
            Ok(())
        })?;
        Tensor::from_vec(out, (n_tokens, num_heads * d), &Device::Cpu)
    }

    fn copy_blocks(&mut self, copies: &[(u32, u32)]) -> Result<()> {
        let n = self.shape.block_size * self.shape.num_kv_heads * self.shape.head_dim;
        for cache in self.k.iter_mut().chain(self.v.iter_mut()) {
            for &(src, dst) in copies {
                let (src, dst) = (src as usize * n, dst as usize * n);
                cache.copy_within(src..src + n, dst);
            }
        }
        Ok(())
    }

    fn num_blocks(&self) -> usize {
        self.shape.num_blocks
    }

    fn block_size(&self) -> usize {
        self.shape.block_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paged attention over scattered blocks equals dense causal softmax attention.
    #[test]
    fn matches_dense_attention_with_scattered_blocks() {
        let (h, kvh, d, bs) = (4, 2, 8, 4);
        let shape = KvCacheShape { num_layers: 1, num_heads: h, num_kv_heads: kvh, head_dim: d, block_size: bs, num_blocks: 8 };
        let mut attn = CpuPagedAttention::new(shape);
        let t = 6;
        let q = Tensor::randn(0f32, 1.0, (t, h, d), &Device::Cpu).unwrap();
        let k = Tensor::randn(0f32, 1.0, (t, kvh, d), &Device::Cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (t, kvh, d), &Device::Cpu).unwrap();
        let table = vec![5u32, 2];
        let slots = (0..t).map(|i| table[i / bs] as usize * bs + i % bs).collect();
        let meta = AttentionMetadata {
            slot_mapping: slots,
            seqs: vec![SeqAttention { query_start: 0, query_len: t, context_len: t, block_table: table }],
        };
        let out = attn.forward(0, &q, &k, &v, &meta).unwrap().reshape((t, h, d)).unwrap();
        let (q, k, v) = (q.to_vec3::<f32>().unwrap(), k.to_vec3::<f32>().unwrap(), v.to_vec3::<f32>().unwrap());
        let out = out.to_vec3::<f32>().unwrap();
        for i in 0..t {
            for head in 0..h {
                let kv = head / (h / kvh);
                let s: Vec<f32> = (0..=i).map(|j| dot(&q[i][head], &k[j][kv]) / (d as f32).sqrt()).collect();
                let m = s.iter().copied().fold(f32::MIN, f32::max);
                let z: f32 = s.iter().map(|x| (x - m).exp()).sum();
                for c in 0..d {
                    let want: f32 = (0..=i).map(|j| (s[j] - m).exp() / z * v[j][kv][c]).sum();
                    assert!((want - out[i][head][c]).abs() < 1e-5, "token {i} head {head}");
                }
            }
        }
    }
}
