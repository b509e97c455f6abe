//! Q4_1 / Q8_0 matmul for CPU. candle 0.11 has no SIMD dot product for Q4_1 on x86 and
//! runs one dot per (row, column) for both; this kernel quantizes activations to 8 bits per
//! 32-value block (llama.cpp's Q8_1), tiles four batch rows per weight block, and multiplies
//! with AVX2 `maddubs` where available.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// f16 scale, f16 min, 16 bytes of nibbles: value = d * q + m, q in 0..15.
    Q4_1,
    /// f16 scale, 32 i8: value = d * q.
    Q8_0,
}

impl Kind {
    /// Weight bytes per block once the scales are split off.
    const fn quant_bytes(self) -> usize {
        match self {
            Self::Q4_1 => QK / 2,
            Self::Q8_0 => QK,
        }
    }
}

pub struct QuantMatrix {
    kind: Kind,
    n: usize,
    k: usize,
    /// Per block: (scale, min) as f32; min is 0 for Q8_0.
    scales: Vec<(f32, f32)>,
    /// Per block, `kind.quant_bytes()` bytes in ggml's layout: Q4_1 byte i holds value i in
    /// its low nibble and value i + 16 in its high nibble; Q8_0 is 32 i8.
    quants: Vec<u8>,
}

/// One 32-value block of activations: i8 values, scale, and scale * sum(values).
struct Q8Block {
    q: [i8; QK],
    d: f32,
    s: f32,
}

impl QuantMatrix {
    /// Takes a `[n, k]` Q4_1 or Q8_0 CPU tensor; None for anything else (candle keeps it).
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
        let kind = match t.dtype() {
            GgmlDType::Q4_1 => Kind::Q4_1,
            GgmlDType::Q8_0 => Kind::Q8_0,
            _ => return Ok(None),
        };
        if !t.device().is_cpu() {
            return Ok(None);
        }
        let (n, k) = t.shape().dims2()?;
        if k % QK != 0 {
            return Ok(None);
        }
        let data = t.data()?;
        let nb = n * k / QK;
        let mut scales = Vec::with_capacity(nb);
        let header = if kind == Kind::Q4_1 { 4 } else { 2 };
        let block_bytes = header + kind.quant_bytes();
        if data.len() != nb * block_bytes {
            candle_core::bail!("{kind:?} tensor has {} bytes, expected {}", data.len(), nb * block_bytes)
        }
        let mut quants = Vec::with_capacity(nb * kind.quant_bytes());
        for b in data.chunks_exact(block_bytes) {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            let m = if kind == Kind::Q4_1 { f16::from_le_bytes([b[2], b[3]]).to_f32() } else { 0.0 };
            scales.push((d, m));
            quants.extend_from_slice(&b[header..]);
        }
        Ok(Some(Self { kind, n, k, scales, quants }))
    }

    /// `x`: `[m, k]` f32 -> `[m, n]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let dims = x.dims().to_vec();
        let k = *dims.last().expect("rank >= 1");
        if k != self.k {
            candle_core::bail!("{:?} matmul: input has {k} columns, weight expects {}", self.kind, self.k)
        }
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let m = xs.len() / k;
        let kb = k / QK;
        let act: Vec<Q8Block> = xs.chunks_exact(QK).map(quantize_block).collect();
        let mut out_t = vec![0f32; self.n * m]; // column-major while computing: [n][m]
        // Enough columns per task to amortise scheduling, enough tasks to use every core.
        let cols_per_task = (self.n / (rayon::current_num_threads() * 8)).max(4);
        let kind = self.kind;
        let qb = kind.quant_bytes() * kb; // weight bytes per output column
        let tiled = m / 4 * 4;
        let row = |r: usize| &act[r * kb..(r + 1) * kb];
        out_t.par_chunks_mut(cols_per_task * m).enumerate().for_each(|(task, out)| {
            let j0 = task * cols_per_task;
            for (jj, col) in out.chunks_mut(m).enumerate() {
                let j = j0 + jj;
                let w = &self.quants[j * qb..(j + 1) * qb];
                let sc = &self.scales[j * kb..(j + 1) * kb];
                for r in (0..tiled).step_by(4) {
                    col[r..r + 4].copy_from_slice(&dot_rows4(kind, w, sc, [row(r), row(r + 1), row(r + 2), row(r + 3)]));
                }
                for r in tiled..m {
                    col[r] = dot_row(kind, w, sc, row(r));
                }
            }
        });
        let mut out = vec![0f32; m * self.n];
        for j in 0..self.n {
            for r in 0..m {
                out[r * self.n + j] = out_t[j * m + r];
            }
        }
        let mut shape = dims;
        *shape.last_mut().expect("rank >= 1") = self.n;
        Tensor::from_vec(out, shape, &Device::Cpu)
    }
}

fn quantize_block(x: &[f32]) -> Q8Block {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; QK];
    let mut sum = 0i32;
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = (v * inv).round() as i8;
        sum += *qi as i32;
    }
    Q8Block { q, d, s: d * sum as f32 }
}

/// sum over blocks of d_w * d_x * (q_w . q_x) + m_w * s_x.
#[inline]
fn dot_row(kind: Kind, w: &[u8], scales: &[(f32, f32)], act: &[Q8Block]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected; slices have kb blocks of QK values.
            return unsafe { dot_row_avx2(kind, w, scales, act) };
        }
    }
    let mut acc = 0f32;
    for ((wq, &(d, m)), a) in w.chunks_exact(kind.quant_bytes()).zip(scales).zip(act) {
        let isum: i32 = match kind {
            Kind::Q4_1 => {
                let (lo, hi) = a.q.split_at(QK / 2);
                wq.iter().zip(lo.iter().zip(hi))
                    .map(|(&x, (&l, &h))| (x & 0x0F) as i32 * l as i32 + (x >> 4) as i32 * h as i32).sum()
            }
            Kind::Q8_0 => wq.iter().zip(&a.q).map(|(&x, &y)| x as i8 as i32 * y as i32).sum(),
        };
        acc += d * a.d * isum as f32 + m * a.s;
    }
    acc
}

/// Four rows against one weight row; each row's arithmetic is exactly `dot_row`'s, so a
/// row's result does not depend on which tile it lands in.
#[inline]
fn dot_rows4(kind: Kind, w: &[u8], scales: &[(f32, f32)], acts: [&[Q8Block]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as in dot_row.
            return unsafe { dot_rows4_avx2(kind, w, scales, acts) };
        }
    }
    acts.map(|a| dot_row(kind, w, scales, a))
}

/// Integer products of one weight block with one activation block, as 8 i32 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block_dot(kind: Kind, w: *const u8, qa: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let (qw, qa) = match kind {
        Kind::Q4_1 => {
            // SAFETY (both arms): the caller points at a whole block of this kind.
            let packed = unsafe { _mm_loadu_si128(w as *const __m128i) };
            // Values 0..15 from the low nibbles, 16..31 from the high ones.
            let qw = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0F));
            (qw, qa)
        }
        Kind::Q8_0 => {
            // maddubs wants unsigned x signed: move the weight's sign onto the activation.
            let qw = unsafe { _mm256_loadu_si256(w as *const __m256i) };
            (_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qa, qw))
        }
    };
    // u8 x i8 pairs summed in i16 (at most 2 * 127 * 127), then pairs -> i32.
    _mm256_madd_epi16(_mm256_maddubs_epi16(qw, qa), ones)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(acc: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let hi = _mm256_extractf128_ps(acc, 1);
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows4_avx2(kind: Kind, w: &[u8], scales: &[(f32, f32)], acts: [&[Q8Block]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    for (b, &(d, m)) in scales.iter().enumerate() {
        // SAFETY: `w` holds one block of quant_bytes per scale; 32 i8 activations per block.
        let wb = unsafe { w.as_ptr().add(b * kind.quant_bytes()) };
        for r in 0..4 {
            let a = &acts[r][b];
            let qa = unsafe { _mm256_loadu_si256(a.q.as_ptr() as *const __m256i) };
            let p = unsafe { block_dot(kind, wb, qa) };
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(p), acc[r]);
            mins[r] += m * a.s;
        }
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = unsafe { hsum(acc[r]) } + mins[r];
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_row_avx2(kind: Kind, w: &[u8], scales: &[(f32, f32)], act: &[Q8Block]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (b, (&(d, m), a)) in scales.iter().zip(act).enumerate() {
        // SAFETY: as in dot_rows4_avx2.
        let wb = unsafe { w.as_ptr().add(b * kind.quant_bytes()) };
        let qa = unsafe { _mm256_loadu_si256(a.q.as_ptr() as *const __m256i) };
        let p = unsafe { block_dot(kind, wb, qa) };
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(p), acc);
        mins += m * a.s;
    }
    (unsafe { hsum(acc) }) + mins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_dequantized_matmul() {
        check(GgmlDType::Q4_1);
        check(GgmlDType::Q8_0);
    }

    fn check(dtype: GgmlDType) {
        let dev = Device::Cpu;
        // Deterministic pseudo-random values in [-1.7, 1.7] (the test must not flake).
        let vals = |n: usize, seed: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32 * 12.9898 + seed).sin() * 43758.547).fract() * 3.4).collect() };
        let w = Tensor::from_vec(vals(96 * 256, 1.0), (96, 256), &dev).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let mat = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
        let x = Tensor::from_vec(vals(5 * 256, 7.0), (5, 256), &dev).unwrap();
        let got = mat.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let dequantized = q.dequantize(&dev).unwrap();
        let want = x.matmul(&dequantized.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
        // Exact check: dequantized weights times the kernel's own 8-bit activations, in f64.
        let wd = dequantized.to_vec2::<f32>().unwrap();
        let xs = x.to_vec2::<f32>().unwrap();
        let mut err2 = 0f64;
        let mut norm2 = 0f64;
        for (r, xr) in xs.iter().enumerate() {
            let act: Vec<Q8Block> = xr.chunks_exact(QK).map(quantize_block).collect();
            for (j, wr) in wd.iter().enumerate() {
                let exact: f64 = wr.iter().enumerate()
                    .map(|(i, &wv)| wv as f64 * act[i / QK].q[i % QK] as f64 * act[i / QK].d as f64).sum();
                assert!((got[r][j] as f64 - exact).abs() < 1e-3 * (1.0 + exact.abs()), "{dtype:?} [{r},{j}] {} vs {exact}", got[r][j]);
                err2 += (got[r][j] - want[r][j]).powi(2) as f64;
                norm2 += (want[r][j] as f64).powi(2);
            }
        }
        // And close to the f32 product overall (8-bit activations cost well under 5%).
        assert!((err2 / norm2).sqrt() < 0.05, "{dtype:?}: relative error {}", (err2 / norm2).sqrt());
        for r in [2, 4] {
            let one = mat.forward(&x.narrow(0, r, 1).unwrap()).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(one[0], got[r], "row {r}");
        }
    }
}
