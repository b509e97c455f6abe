//! The CPU counterparts of the GPU's fused ops (`cuda_ops::FusedOps`), for f32: each is one
//! pass over contiguous memory where candle would run several ops, each with its own
//! allocation and strided walk. The arithmetic is candle's own, operation for operation
//! (`rms_norm`, `silu`, `rope`/`rope_i`), so the results are bit-identical to the unfused ops
//! and the exactness tests against candle-transformers' references keep holding.

use candle_core::{DType, Device, Result, Storage, Tensor};
use super::vector_exp::exp_in_place;
use rayon::prelude::*;

/// Borrows a contiguous f32 CPU tensor as a slice for the duration of `f`.
pub(super) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    if t.dtype() != DType::F32 || !t.is_contiguous() {
        candle_core::bail!("CPU kernel needs contiguous f32 tensors, got {:?}", t.dtype())
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("CPU kernel got a device tensor") };
    let all = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    f(&all[start..start + t.elem_count()])
}

/// Below this many output values a kernel stays on the calling thread: waking the pool costs
/// more than the work.
const PARALLEL_FROM: usize = 1 << 14;

/// Rows per parallel task for `rows` rows of `width` values: all of them (one task, run in
/// place on the calling pool thread) below [`PARALLEL_FROM`], else one.
fn min_rows_per_task(rows: usize, width: usize) -> usize {
    if rows * width < PARALLEL_FROM { rows.max(1) } else { 1 }
}

/// Rows per task step of [`add_rms_norm`] (see there).
const NORM_ROWS: usize = 8;

/// `(x + delta, rms_norm(x + delta) * weight)` for `[rows, hidden]`.
pub fn add_rms_norm(x: &Tensor, delta: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let (rows, hidden) = x.dims2()?;
    let (mut sum, mut normed) = (vec![0f32; rows * hidden], vec![0f32; rows * hidden]);
    with_f32(x, |x| with_f32(delta, |delta| with_f32(weight, |w| {
        if w.len() != hidden || delta.len() != x.len() {
            candle_core::bail!("add_rms_norm: shapes {:?}, {:?}, {:?}", x.len(), delta.len(), w.len())
        }
        // Up to NORM_ROWS rows at a time: each row's sum of squares is candle's serial f32 sum
        // (a chain of dependent adds), so a row alone waits on add latency; several rows'
        // chains side by side overlap, with every row's own order unchanged.
        let chunk = NORM_ROWS * hidden;
        let rows_of = |((s, n), (x, d)): ((&mut [f32], &mut [f32]), (&[f32], &[f32]))| {
            for ((s, x), d) in s.iter_mut().zip(x).zip(d) {
                *s = x + d;
            }
            let mut sum2 = [0f32; NORM_ROWS];
            if s.len() == chunk {
                // A fixed count of accumulators, so they stay in registers.
                let rows: [&[f32]; NORM_ROWS] = std::array::from_fn(|r| &s[r * hidden..(r + 1) * hidden]);
                for c in 0..hidden {
                    for r in 0..NORM_ROWS {
                        sum2[r] += rows[r][c] * rows[r][c];
                    }
                }
            } else {
                for (row, acc) in s.chunks_exact(hidden).zip(sum2.iter_mut()) {
                    *acc = row.iter().map(|v| v * v).sum::<f32>();
                }
            }
            // candle's rms_norm: s / sqrt(mean + eps) * alpha.
            for ((s, n), sum2) in s.chunks_exact(hidden).zip(n.chunks_exact_mut(hidden)).zip(sum2) {
                let m = (sum2 / hidden as f32 + eps).sqrt();
                for ((n, s), w) in n.iter_mut().zip(s).zip(w) {
                    *n = *s / m * *w;
                }
            }
        };
        sum.par_chunks_mut(chunk).zip(normed.par_chunks_mut(chunk))
            .zip(x.par_chunks(chunk).zip(delta.par_chunks(chunk)))
            .with_min_len(min_rows_per_task(rows, hidden).div_ceil(NORM_ROWS)).for_each(rows_of);
        Ok(())
    })))?;
    Ok((Tensor::from_vec(sum, (rows, hidden), &Device::Cpu)?, Tensor::from_vec(normed, (rows, hidden), &Device::Cpu)?))
}

/// `silu(gate) * up` from the fused projection's `[rows, 2 * inter]` output.
pub fn silu_mul(y: &Tensor, inter: usize) -> Result<Tensor> {
    let rows = y.dim(0)?;
    let mut out = vec![0f32; rows * inter];
    with_f32(y, |y| {
        if y.len() != rows * 2 * inter {
            candle_core::bail!("silu_mul: {} values for {rows} rows of 2 x {inter}", y.len())
        }
        let row = |(o, y): (&mut [f32], &[f32])| {
            let (gate, up) = y.split_at(inter);
            // candle's silu, g / (1 + e^-g), with the same exp bits (vector_exp), times up.
            for (o, g) in o.iter_mut().zip(gate) {
                *o = -g;
            }
            exp_in_place(o);
            for ((o, g), u) in o.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + *o) * u;
            }
        };
        out.par_chunks_exact_mut(inter).zip(y.par_chunks_exact(2 * inter))
            .with_min_len(min_rows_per_task(rows, inter)).for_each(row);
        Ok(())
    })?;
    Tensor::from_vec(out, (rows, inter), &Device::Cpu)
}

/// q, k (rotated) and v `[rows, heads, head_dim]` from the fused projection's output
/// `[rows, (heads + 2 * kv_heads) * head_dim]`; `cos`/`sin` hold each row's `head_dim / 2`
/// angles. `interleaved` rotates pairs (2i, 2i + 1) (candle's `rope_i`), otherwise
/// (i, i + head_dim / 2) (`rope`).
pub fn qkv_rope(qkv: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize, kv_heads: usize, hd: usize, interleaved: bool)
    -> Result<(Tensor, Tensor, Tensor)> {
    let rows = qkv.dim(0)?;
    let width = (heads + 2 * kv_heads) * hd;
    let (mut q, mut k, mut v) = (vec![0f32; rows * heads * hd], vec![0f32; rows * kv_heads * hd], vec![0f32; rows * kv_heads * hd]);
    with_f32(qkv, |x| with_f32(cos, |cos| with_f32(sin, |sin| {
        let half = hd / 2;
        if x.len() != rows * width || cos.len() != rows * half || sin.len() != rows * half {
            candle_core::bail!("qkv_rope: {} values for {rows} rows of {width}, {} angles", x.len(), cos.len())
        }
        let rotate = |src: &[f32], dst: &mut [f32], cos: &[f32], sin: &[f32]| {
            for (src, dst) in src.chunks_exact(hd).zip(dst.chunks_exact_mut(hd)) {
                for i in 0..half {
                    let (i1, i2) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                    dst[i1] = src[i1] * cos[i] - src[i2] * sin[i];
                    dst[i2] = src[i1] * sin[i] + src[i2] * cos[i];
                }
            }
        };
        for r in 0..rows {
            let src = &x[r * width..(r + 1) * width];
            let (cos, sin) = (&cos[r * half..(r + 1) * half], &sin[r * half..(r + 1) * half]);
            let (qs, rest) = src.split_at(heads * hd);
            let (ks, vs) = rest.split_at(kv_heads * hd);
            rotate(qs, &mut q[r * heads * hd..(r + 1) * heads * hd], cos, sin);
            rotate(ks, &mut k[r * kv_heads * hd..(r + 1) * kv_heads * hd], cos, sin);
            v[r * kv_heads * hd..(r + 1) * kv_heads * hd].copy_from_slice(vs);
        }
        Ok(())
    })))?;
    Ok((Tensor::from_vec(q, (rows, heads, hd), &Device::Cpu)?, Tensor::from_vec(k, (rows, kv_heads, hd), &Device::Cpu)?,
        Tensor::from_vec(v, (rows, kv_heads, hd), &Device::Cpu)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let v: Vec<f32> = (0..n).map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        }).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
    }

    /// Row counts on both sides of PARALLEL_FROM.
    const ROWS: [usize; 3] = [1, 5, 40];

    #[test]
    fn add_rms_norm_is_candles_bit_for_bit() {
        for rows in ROWS {
            let (x, d, w) = (random(&[rows, 576], 1), random(&[rows, 576], 2), random(&[576], 3));
            let (sum, normed) = add_rms_norm(&x, &d, &w, 1e-5).unwrap();
            let want = (&x + &d).unwrap();
            assert_eq!(bits(&sum), bits(&want));
            assert_eq!(bits(&normed), bits(&candle_nn::ops::rms_norm(&want, &w, 1e-5).unwrap()));
        }
    }

    #[test]
    fn silu_mul_is_candles_bit_for_bit() {
        for rows in ROWS {
            let y = random(&[rows, 2 * 1536], 4);
            let want = (candle_nn::ops::silu(&y.narrow(1, 0, 1536).unwrap()).unwrap() * y.narrow(1, 1536, 1536).unwrap()).unwrap();
            assert_eq!(bits(&silu_mul(&y, 1536).unwrap()), bits(&want));
        }
    }

    #[test]
    fn qkv_rope_is_candles_bit_for_bit() {
        let (nh, nkv, hd) = (9, 3, 64);
        for interleaved in [false, true] {
            for rows in ROWS {
                let qkv = random(&[rows, (nh + 2 * nkv) * hd], 5);
                let (cos, sin) = (random(&[rows, hd / 2], 6), random(&[rows, hd / 2], 7));
                let (q, k, v) = qkv_rope(&qkv, &cos, &sin, nh, nkv, hd, interleaved).unwrap();
                let part = |start: usize, heads: usize| {
                    qkv.narrow(1, start * hd, heads * hd).unwrap().contiguous().unwrap().reshape((rows, heads, 1, hd)).unwrap()
                };
                let (c3, s3) = (cos.unsqueeze(1).unwrap(), sin.unsqueeze(1).unwrap());
                let rope = |x: Tensor| if interleaved {
                    candle_nn::rotary_emb::rope_i(&x, &c3, &s3).unwrap()
                } else {
                    candle_nn::rotary_emb::rope(&x, &c3, &s3).unwrap()
                };
                assert_eq!(bits(&q), bits(&rope(part(0, nh))));
                assert_eq!(bits(&k), bits(&rope(part(nh, nkv))));
                assert_eq!(bits(&v), bits(&part(nh + nkv, nkv)));
            }
        }
    }
}
