//! `e^x` for eight f32 at once, bit-identical to the platform's `expf` (what `f32::exp` calls,
//! and what candle's `silu` uses), so fused ops built on it keep their bit-for-bit equality
//! with candle.
//!
//! glibc (2.27 and later) computes `expf` in double precision: `x * 32 / ln 2 = k + r` with
//! `k` rounded to an integer by adding `1.5 * 2^52`, `2^(k / 32)` from a 32-entry table with
//! `k / 32`'s integer part added to the exponent bits, and `2^(r / 32)` as a cubic polynomial;
//! the product is rounded once to f32. On x86-64 with FMA it runs the fused-multiply-add build
//! of that code; the same operations on four f64 lanes give the same bits. Inputs with
//! `|x| >= 88` (overflow, underflow, infinities, NaN) take glibc's own scalar path.
//!
//! Whether the platform's `expf` really is that one (another libc, a machine without FMA) is
//! checked once at run time on a spread of inputs: any difference and every value goes
//! through `f32::exp` instead.

/// `x * 32 / ln 2` multiplier.
const INV_LN2_N: f64 = f64::from_bits(0x4047_1547_652b_82fe);
/// `1.5 * 2^52`: adding it rounds to an integer, which then sits in the low mantissa bits.
const SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000);
/// Cubic coefficients of `2^(r / 32) - 1` in `r` (highest first).
const C0: f64 = f64::from_bits(0x3ebc_6af8_4b91_2394);
const C1: f64 = f64::from_bits(0x3f2e_bfce_50fa_c4f3);
const C2: f64 = f64::from_bits(0x3f96_2e42_ff0c_52d6);
/// Bits of `2^(i / 32)` less `i << 47`, so adding `k << 47` yields `2^(k / 32)`'s bits.
const TABLE: [u64; 32] = {
    const POW: [u64; 32] = [
        0x3ff0000000000000, 0x3ff059b0d3158574, 0x3ff0b5586cf9890f, 0x3ff11301d0125b51,
        0x3ff172b83c7d517b, 0x3ff1d4873168b9aa, 0x3ff2387a6e756238, 0x3ff29e9df51fdee1,
        0x3ff306fe0a31b715, 0x3ff371a7373aa9cb, 0x3ff3dea64c123422, 0x3ff44e086061892d,
        0x3ff4bfdad5362a27, 0x3ff5342b569d4f82, 0x3ff5ab07dd485429, 0x3ff6247eb03a5585,
        0x3ff6a09e667f3bcd, 0x3ff71f75e8ec5f74, 0x3ff7a11473eb0187, 0x3ff82589994cce13,
        0x3ff8ace5422aa0db, 0x3ff93737b0cdc5e5, 0x3ff9c49182a3f090, 0x3ffa5503b23e255d,
        0x3ffae89f995ad3ad, 0x3ffb7f76f2fb5e47, 0x3ffc199bdd85529c, 0x3ffcb720dcef9069,
        0x3ffd5818dcfba487, 0x3ffdfc97337b9b5f, 0x3ffea4afa2a490da, 0x3fff50765b6e4540,
    ];
    let mut t = [0u64; 32];
    let mut i = 0;
    while i < 32 {
        t[i] = POW[i].wrapping_sub((i as u64) << 47);
        i += 1;
    }
    t
};

/// `e^x` for each of `xs`, in place.
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches_platform() {
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `matches_platform` found AVX2 and FMA; eight values.
            unsafe { x86::exp8(c) };
        }
        chunks.into_remainder().iter_mut().for_each(|x| *x = x.exp());
        return;
    }
    xs.iter_mut().for_each(|x| *x = x.exp());
}

/// Whether the vector path gives `f32::exp`'s bits here (checked once).
#[cfg(target_arch = "x86_64")]
fn matches_platform() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return false;
        }
        // Every exponent from 2^-30 to 2^6 with varied mantissas, both signs, up to |x| = 88.
        let mut xs: Vec<f32> = (0..1 << 14).map(|i: u32| f32::from_bits(0x3080_0000 + i * 18_617)).collect();
        xs.extend(xs.clone().iter().map(|x| -x));
        let mut got = xs.clone();
        for c in got.chunks_exact_mut(8) {
            // SAFETY: AVX2 and FMA were detected; eight values.
            unsafe { x86::exp8(c) };
        }
        xs.iter().zip(&got).all(|(x, g)| x.exp().to_bits() == g.to_bits())
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{C0, C1, C2, INV_LN2_N, SHIFT, TABLE};
    use std::arch::x86_64::*;

    /// Eight values in place; a chunk holding any `|x| >= 88` or NaN goes through `f32::exp`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp8(xs: &mut [f32]) {
        debug_assert_eq!(xs.len(), 8);
        // SAFETY: eight floats in and out.
        unsafe {
            let x = _mm256_loadu_ps(xs.as_ptr());
            // glibc's test: the top 12 bits of |x| at or above 88.0f's.
            let abs = _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7fff_ffff));
            let big = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x42af_ffff));
            if _mm256_movemask_epi8(big) != 0 {
                xs.iter_mut().for_each(|x| *x = x.exp());
                return;
            }
            let lo = half(_mm256_castps256_ps128(x));
            let hi = half(_mm256_extractf128_ps(x, 1));
            _mm256_storeu_ps(xs.as_mut_ptr(), _mm256_set_m128(hi, lo));
        }
    }

    /// Four lanes of glibc's `expf`, operation for operation (its FMA build).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn half(x: __m128) -> __m128 {
        let xd = _mm256_cvtps_pd(x);
        let inv = _mm256_set1_pd(INV_LN2_N);
        let shift = _mm256_set1_pd(SHIFT);
        // k = round(x * 32 / ln 2), in the low bits of kd; r = x * 32 / ln 2 - k.
        let kd = _mm256_fmadd_pd(inv, xd, shift);
        let ki = _mm256_castpd_si256(kd);
        let kd = _mm256_sub_pd(kd, shift);
        let r = _mm256_fmsub_pd(inv, xd, kd);
        // s = 2^(k / 32): table entry k % 32, k / 32 added to the exponent.
        let idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
        // SAFETY: indices are 0..32, inside the table.
        let t = unsafe { _mm256_i64gather_epi64::<8>(TABLE.as_ptr() as *const i64, idx) };
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        // 2^(r / 32) = (C0 r + C1) r^2 + (C2 r + 1), then times s, rounded once to f32.
        let z = _mm256_fmadd_pd(r, _mm256_set1_pd(C0), _mm256_set1_pd(C1));
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(r, _mm256_set1_pd(C2), _mm256_set1_pd(1.0));
        let y = _mm256_fmadd_pd(z, r2, y);
        _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constants are the values glibc's `expf` uses (written as hex floats there).
    #[test]
    fn constants() {
        assert_eq!(INV_LN2_N, 32.0 * std::f64::consts::LOG2_E);
        assert_eq!(SHIFT, 1.5 * (1u64 << 52) as f64);
        for (i, t) in TABLE.iter().enumerate() {
            let pow = f64::from_bits(t.wrapping_add((i as u64) << 47));
            assert!((pow - (i as f64 / 32.0).exp2()).abs() <= f64::EPSILON * 2.0, "entry {i}");
        }
    }

    /// Bit-identical to `f32::exp` on a dense sweep of every binade that can occur (one float
    /// in 257 from 2^-40 up to the overflow range, both signs), specials included.
    #[test]
    fn same_bits_as_f32_exp() {
        let mut xs: Vec<f32> = (0x2b80_0000u32..0x42d0_0000).step_by(257).map(f32::from_bits).collect();
        xs.extend(xs.clone().iter().map(|x| -x));
        xs.extend([0.0, -0.0, 88.0, -88.0, 88.8, -104.0, -110.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-45]);
        let mut got = xs.clone();
        exp_in_place(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = x.exp();
            assert!(want.to_bits() == g.to_bits() || (want.is_nan() && g.is_nan()), "exp({x:e}) = {g:e}, f32::exp {want:e}");
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && cfg!(target_env = "gnu") {
            assert!(matches_platform(), "glibc with FMA: the vector path should be on");
        }
    }

    /// Every float with |x| < 88, both signs (~2.2 billion values; run in release:
    /// `cargo test --release -p kandle-server vector_exp -- --ignored`).
    #[test]
    #[ignore]
    fn exhaustive() {
        let mut buf = vec![0f32; 1 << 20];
        for sign in [0u32, 0x8000_0000] {
            for start in (0u32..0x42b0_0000).step_by(1 << 20) {
                buf.iter_mut().enumerate().for_each(|(i, x)| *x = f32::from_bits(sign | (start + i as u32)));
                let xs = buf.clone();
                exp_in_place(&mut buf);
                for (x, g) in xs.iter().zip(&buf) {
                    assert_eq!(x.exp().to_bits(), g.to_bits(), "exp({x:e})");
                }
            }
        }
    }
}
