//! A BERT encoder forward pass over ragged batches, on the CPU in f32.
//!
//! Why not candle-transformers' `BertModel`: it needs a padded `(batch, longest)` tensor and
//! masks, so a batch of mixed-length sentences spends much of its time on padding, and on
//! this build its matmuls ran on one thread (measured: 0.57x sentence-transformers at batch
//! 32). Here every token of every input is one row of a `(tokens, hidden)` matrix: the dense
//! layers are single GEMMs over all rows (split across the rayon threads), attention runs
//! per (input, head) in parallel over exactly that input's tokens, and no work is padding.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;

struct Dense {
    /// Row-major `(out, in)`, as checkpoints store it.
    w: Vec<f32>,
    b: Vec<f32>,
    out: usize,
    inp: usize,
}

struct Norm {
    g: Vec<f32>,
    b: Vec<f32>,
}

struct Layer {
    /// Query, key and value projections stacked into one `(3·hidden, hidden)` matrix.
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    up: Dense,
    down: Dense,
    out_norm: Norm,
}

pub struct BertEncoder {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    pub hidden: usize,
    heads: usize,
    eps: f32,
    pub max_positions: usize,
    vocab: usize,
}

pub struct BertShape {
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub eps: f64,
    pub max_positions: usize,
    pub vocab: usize,
}

impl BertEncoder {
    /// From safetensors tensors named as Hugging Face BERT checkpoints name them (with or
    /// without a `bert.` prefix).
    pub fn load(tensors: &HashMap<String, Tensor>, shape: &BertShape) -> Result<Self, String> {
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let get = |name: &str, dims: &[usize]| -> Result<Vec<f32>, String> {
            let full = format!("{prefix}{name}");
            let t = tensors.get(&full).ok_or_else(|| format!("tensor {full} is missing"))?;
            if t.dims() != dims {
                return Err(format!("tensor {full} has shape {:?}, expected {dims:?}", t.dims()));
            }
            t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>()).map_err(|e| e.to_string())
        };
        let h = shape.hidden;
        let dense = |name: &str, out: usize, inp: usize| -> Result<Dense, String> {
            Ok(Dense { w: get(&format!("{name}.weight"), &[out, inp])?, b: get(&format!("{name}.bias"), &[out])?, out, inp })
        };
        let norm = |name: &str| -> Result<Norm, String> {
            Ok(Norm { g: get(&format!("{name}.weight"), &[h])?, b: get(&format!("{name}.bias"), &[h])? })
        };
        let mut layers = vec![];
        for i in 0..shape.layers {
            let p = format!("encoder.layer.{i}");
            let (q, k, v) = (dense(&format!("{p}.attention.self.query"), h, h)?, dense(&format!("{p}.attention.self.key"), h, h)?,
                dense(&format!("{p}.attention.self.value"), h, h)?);
            let qkv = Dense { w: [q.w, k.w, v.w].concat(), b: [q.b, k.b, v.b].concat(), out: 3 * h, inp: h };
            let up_out = tensors.get(&format!("{prefix}{p}.intermediate.dense.weight")).map(|t| t.dims()[0])
                .ok_or_else(|| format!("tensor {prefix}{p}.intermediate.dense.weight is missing"))?;
            layers.push(Layer {
                qkv,
                attn_out: dense(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                up: dense(&format!("{p}.intermediate.dense"), up_out, h)?,
                down: dense(&format!("{p}.output.dense"), h, up_out)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let type_rows = tensors.get(&format!("{prefix}embeddings.token_type_embeddings.weight")).map_or(1, |t| t.dims()[0]);
        Ok(Self {
            word: get("embeddings.word_embeddings.weight", &[shape.vocab, h])?,
            position: get("embeddings.position_embeddings.weight", &[shape.max_positions, h])?,
            token_type: get("embeddings.token_type_embeddings.weight", &[type_rows, h])?,
            emb_norm: norm("embeddings.LayerNorm")?,
            layers,
            hidden: h,
            heads: shape.heads,
            eps: shape.eps as f32,
            max_positions: shape.max_positions,
            vocab: shape.vocab,
        })
    }

    /// The last hidden states of every input: `inputs[i].len()` rows of `hidden` each,
    /// concatenated in input order.
    pub fn forward(&self, inputs: &[&[u32]]) -> Result<Vec<f32>, String> {
        let h = self.hidden;
        let offsets: Vec<usize> = std::iter::once(0).chain(inputs.iter().scan(0, |acc, i| { *acc += i.len(); Some(*acc) })).collect();
        let total = offsets[inputs.len()];
        let mut x = vec![0f32; total * h];
        for (input, rows) in inputs.iter().zip(offsets.windows(2)) {
            if input.len() > self.max_positions {
                return Err(format!("input of {} tokens exceeds the model's {} positions", input.len(), self.max_positions));
            }
            for (pos, &id) in input.iter().enumerate() {
                let id = id as usize;
                if id >= self.vocab {
                    return Err(format!("token id {id} is out of vocabulary"));
                }
                let row = &mut x[(rows[0] + pos) * h..][..h];
                let (w, p, t) = (&self.word[id * h..][..h], &self.position[pos * h..][..h], &self.token_type[..h]);
                for j in 0..h {
                    row[j] = w[j] + p[j] + t[j];
                }
            }
        }
        layer_norm_rows(&mut x, &self.emb_norm, h, self.eps);
        let spans: Vec<(usize, usize)> = offsets.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
        for layer in &self.layers {
            let qkv = linear(&x, total, &layer.qkv);
            let ctx = self.attention(&qkv, &spans);
            let mut attn = linear(&ctx, total, &layer.attn_out);
            add_in_place(&mut attn, &x);
            layer_norm_rows(&mut attn, &layer.attn_norm, h, self.eps);
            let mut up = linear(&attn, total, &layer.up);
            up.par_chunks_mut(4096).for_each(|c| c.iter_mut().for_each(|v| *v = gelu(*v)));
            let mut down = linear(&up, total, &layer.down);
            add_in_place(&mut down, &attn);
            layer_norm_rows(&mut down, &layer.out_norm, h, self.eps);
            x = down;
        }
        Ok(x)
    }

    /// Softmax(q·kᵀ/√d)·v for each input and head over that input's own rows.
    fn attention(&self, qkv: &[f32], spans: &[(usize, usize)]) -> Vec<f32> {
        let h = self.hidden;
        let d = h / self.heads;
        let scale = 1.0 / (d as f32).sqrt();
        let total: usize = spans.iter().map(|s| s.1).sum();
        let mut out = vec![0f32; total * h];
        // Each (input, head) owns disjoint output cells: rows of its span, columns of its head.
        let out_ptr = out.as_mut_ptr() as usize;
        let work: Vec<(usize, usize, usize)> =
            spans.iter().flat_map(|&(start, len)| (0..self.heads).map(move |head| (start, len, head))).collect();
        work.par_iter().for_each(|&(start, len, head)| {
            let mut scores = vec![0f32; len];
            let mut acc = vec![0f32; d];
            for i in 0..len {
                let q = &qkv[(start + i) * 3 * h + head * d..][..d];
                let mut max = f32::NEG_INFINITY;
                for (j, s) in scores.iter_mut().enumerate() {
                    let k = &qkv[(start + j) * 3 * h + h + head * d..][..d];
                    *s = dot(q, k) * scale;
                    max = max.max(*s);
                }
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                acc.fill(0.0);
                for (j, &p) in scores.iter().enumerate() {
                    let v = &qkv[(start + j) * 3 * h + 2 * h + head * d..][..d];
                    for (a, &vv) in acc.iter_mut().zip(v) {
                        *a += p * vv;
                    }
                }
                // SAFETY: (row start+i, columns head*d..head*d+d) is written by this task only,
                // and `out` outlives the parallel loop.
                let dst = unsafe { std::slice::from_raw_parts_mut((out_ptr as *mut f32).add((start + i) * h + head * d), d) };
                let inv = 1.0 / sum;
                for (o, a) in dst.iter_mut().zip(&acc) {
                    *o = a * inv;
                }
            }
        });
        out
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums so the compiler vectorises it.
    let mut s = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            s[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut total: f32 = s.iter().sum();
    for i in chunks * 8..a.len() {
        total += a[i] * b[i];
    }
    total
}

/// `x · Wᵀ + b` for `rows` rows; the rows are split into one block per rayon thread, each a
/// single-threaded GEMM.
fn linear(x: &[f32], rows: usize, d: &Dense) -> Vec<f32> {
    let mut out = vec![0f32; rows * d.out];
    let threads = rayon::current_num_threads().max(1);
    let per = rows.div_ceil(threads).max(1);
    out.par_chunks_mut(per * d.out).zip(x.par_chunks(per * d.inp)).for_each(|(dst, src)| {
        let m = src.len() / d.inp;
        // SAFETY: dst is m×out, src m×inp and w out×inp, all row-major and in bounds.
        unsafe {
            gemm::gemm(m, d.out, d.inp, dst.as_mut_ptr(), 1, d.out as isize, false, src.as_ptr(), 1, d.inp as isize,
                d.w.as_ptr(), d.inp as isize, 1, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
        }
        for row in dst.chunks_mut(d.out) {
            for (o, b) in row.iter_mut().zip(&d.b) {
                *o += b;
            }
        }
    });
    out
}

fn add_in_place(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(4096).zip(b.par_chunks(4096)).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(x, y)| *x += y));
}

fn layer_norm_rows(x: &mut [f32], n: &Norm, h: usize, eps: f32) {
    x.par_chunks_mut(h).for_each(|row| {
        let mean = row.iter().sum::<f32>() / h as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(&n.g).zip(&n.b) {
            *v = (*v - mean) * inv * g + b;
        }
    });
}

/// Exact GELU, x·Φ(x), with erf from Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
fn gelu(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let erf = 1.0 - poly * (-z * z).exp();
    0.5 * x * (1.0 + erf.copysign(z))
}

/// The safetensors file's tensors on the CPU.
pub fn load_tensors(path: &std::path::Path) -> Result<HashMap<String, Tensor>, String> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn gelu_matches_the_erf_definition() {
        for &(x, want) in &[(0.0f32, 0.0f32), (1.0, 0.841_344_7), (-1.0, -0.158_655_26), (3.0, 2.995_950_3), (-0.5, -0.154_268_5)] {
            assert!((super::gelu(x) - want).abs() < 1e-6, "gelu({x}) = {} vs {want}", super::gelu(x));
        }
    }
}
