//! The x86 kernels. Both follow the canonical arithmetic of the parent module exactly.

use super::{Column, TileOut, Kind, Row, Tile, LANES, QK, TILE_ROWS};
use std::arch::x86_64::*;

/// Eight i32 lanes whose sum is one block's integer dot product.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_partial(kind: Kind, w: *const u8, a: *const i8) -> __m256i {
    // SAFETY (whole function): the caller points at one whole block of each.
    unsafe {
        let qa = _mm256_loadu_si256(a as *const __m256i);
        let (uw, qa) = match kind {
            Kind::Q4_1 => {
                let packed = _mm_loadu_si128(w as *const __m128i);
                // Values 0..15 from the low nibbles, 16..31 from the high ones.
                (_mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0F)), qa)
            }
            Kind::Q8_0 => {
                // maddubs wants unsigned x signed: move the weight's sign onto the activation.
                let q = _mm256_loadu_si256(w as *const __m256i);
                (_mm256_sign_epi8(q, q), _mm256_sign_epi8(qa, q))
            }
        };
        // u8 x i8 pairs summed in i16 (at most 2 * 128 * 127), then pairs -> i32.
        _mm256_madd_epi16(_mm256_maddubs_epi16(uw, qa), _mm256_set1_epi16(1))
    }
}

/// Eight f16 scales as f32 (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x8(p: *const half::f16) -> __m256 {
    // SAFETY: the caller points at 8 values.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
}

/// One f16 scale as f32 in every lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x8_splat(v: half::f16) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(v.to_bits() as i16))
}

/// Lane i = sum of v[i]'s lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose_sum(v: [__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    // (S0 S1 S2 S3 | same for the high halves), likewise for 4..7.
    let lo = _mm256_hadd_epi32(h01, h23);
    let hi = _mm256_hadd_epi32(h45, h67);
    _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)))
}

/// `reduce_lanes` on a register: (l0+l4, l1+l5, l2+l6, l3+l7), then (.0+.2, .1+.3), then .0+.1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_ps(acc: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// One row against one column, eight blocks (one lane each) per iteration.
#[inline(never)] // its own symbol in profiles
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn row_dot(kind: Kind, kb: usize, col: Column<'_>, row: Row<'_>) -> f32 {
    let qb = kind.quant_bytes();
    let (w, a) = (col.quants.as_ptr(), row.q.as_ptr());
    let mut acc = _mm256_setzero_ps();
    // SAFETY: blocks b < kb exist in both; the scale arrays are padded to whole lane groups.
    unsafe {
        for b0 in (0..kb).step_by(LANES) {
            let part = |b: usize| block_partial(kind, w.add(b * qb), a.add(b * QK));
            let isum = if b0 + LANES <= kb {
                transpose_sum(std::array::from_fn(|i| part(b0 + i)))
            } else {
                let mut s = [0i32; LANES];
                for (i, s) in s.iter_mut().enumerate().take(kb - b0) {
                    *s = hsum_epi32(part(b0 + i));
                }
                _mm256_loadu_si256(s.as_ptr() as *const __m256i)
            };
            let scale = _mm256_mul_ps(f16x8(col.d.as_ptr().add(b0)), _mm256_loadu_ps(row.d.as_ptr().add(b0)));
            acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum), acc);
            // Q8_0 has no min: fma(0, s, acc) == acc (acc is never -0), so it is skipped.
            if kind == Kind::Q4_1 {
                acc = _mm256_fmadd_ps(f16x8(col.m.as_ptr().add(b0)), _mm256_loadu_ps(row.s.as_ptr().add(b0)), acc);
            }
        }
        hsum_ps(acc)
    }
}

/// [`super::quantize_row_scalar`] on 32 values at a time: the same maximum (exact in any
/// order), the same product, rounding to nearest even (`cvtps2dq` under the default
/// rounding mode) and saturating packs (values are within -127..127 anyway).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    for (b, (x, q)) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).enumerate() {
        // SAFETY: 32 floats in, 32 bytes out.
        unsafe {
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
            let m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
                _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)));
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), m);
            d[b] = lanes.iter().fold(0f32, |a, &v| a.max(v)) / 127.0;
            let inv = _mm256_set1_ps(if d[b] > 0.0 { 1.0 / d[b] } else { 0.0 });
            let qi: [__m256i; 4] = std::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv)));
            let sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3])));
            s[b] = d[b] * sum as f32;
            // Packing works within 128-bit halves: dwords come out as (0a 1a 2a 3a 0b 1b 2b 3b)
            // for registers 0..3 and their halves a, b.
            let packed = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
            let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, ordered);
        }
    }
}

/// Unpacks Q4_1 columns to one byte per value (Q8_0 is already stored that way), so the tile
/// kernel broadcasts weights straight from memory.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn unpack_q4_1(quants: &[u8], out: &mut [u8]) {
    for (src, dst) in quants.chunks_exact(QK / 2).zip(out.chunks_exact_mut(QK)) {
        // SAFETY: 16 bytes in, 32 bytes out.
        unsafe {
            let packed = _mm_loadu_si128(src.as_ptr() as *const __m128i);
            let mask = _mm_set1_epi8(0x0F);
            let dst = dst.as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(dst, _mm_and_si128(packed, mask));
            _mm_storeu_si128(dst.add(1), _mm_and_si128(_mm_srli_epi16(packed, 4), mask));
        }
    }
}

/// `C` columns (weights as one i8 per value, `kb * 32` each) against a tile of 16 rows:
/// `vpdpbusd` of the 16 rows' unsigned activations (`a + 128`) with each 4-value weight
/// group broadcast from memory, so lane r is row r throughout and needs no horizontal sum;
/// `128 * sum(w)` per block is subtracted to leave the exact integer dot product.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn tile_dot<const C: usize>(kind: Kind, kb: usize, w: [&[u8]; C], cols: [Column<'_>; C], tile: &Tile, mut out: TileOut<'_, '_>) {
    let mut acc = [[_mm512_setzero_ps(); LANES]; C];
    // One block into accumulator lane `l` (a constant after unrolling, so a register).
    let block = |acc: &mut [[__m512; LANES]; C], b: usize, l: usize| {
        // SAFETY: blocks b < kb exist in the weights and the tile; scales are padded.
        unsafe {
            let aq = tile.q.as_ptr().add(b * QK * TILE_ROWS);
            let mut even = [_mm512_setzero_si512(); C];
            let mut odd = [_mm512_setzero_si512(); C];
            for g in (0..QK / 4).step_by(2) {
                let a0 = _mm512_loadu_si512(aq.add(g * 4 * TILE_ROWS) as *const __m512i);
                let a1 = _mm512_loadu_si512(aq.add((g + 1) * 4 * TILE_ROWS) as *const __m512i);
                for c in 0..C {
                    let wp = w[c].as_ptr().add(b * QK + g * 4) as *const i32;
                    even[c] = _mm512_dpbusd_epi32(even[c], a0, _mm512_set1_epi32(wp.read_unaligned()));
                    odd[c] = _mm512_dpbusd_epi32(odd[c], a1, _mm512_set1_epi32(wp.add(1).read_unaligned()));
                }
            }
            let da = _mm512_loadu_ps(tile.d.as_ptr().add(b * TILE_ROWS));
            let sa = _mm512_loadu_ps(tile.s.as_ptr().add(b * TILE_ROWS));
            for c in 0..C {
                let biased = _mm512_add_epi32(even[c], odd[c]);
                let isum = _mm512_sub_epi32(biased, _mm512_set1_epi32(*cols[c].wsum128.get_unchecked(b)));
                let scale = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_set1_epi16(cols[c].d.get_unchecked(b).to_bits() as i16)), da);
                acc[c][l] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum), acc[c][l]);
                // Q8_0 has no min: fma(0, s, acc) == acc (acc is never -0), so it is skipped.
                if kind == Kind::Q4_1 {
                    let m = _mm512_cvtph_ps(_mm256_set1_epi16(cols[c].m.get_unchecked(b).to_bits() as i16));
                    acc[c][l] = _mm512_fmadd_ps(m, sa, acc[c][l]);
                }
            }
        }
    };
    let whole = kb / LANES * LANES;
    for b0 in (0..whole).step_by(LANES) {
        block(&mut acc, b0, 0);
        block(&mut acc, b0 + 1, 1);
        block(&mut acc, b0 + 2, 2);
        block(&mut acc, b0 + 3, 3);
        block(&mut acc, b0 + 4, 4);
        block(&mut acc, b0 + 5, 5);
        block(&mut acc, b0 + 6, 6);
        block(&mut acc, b0 + 7, 7);
    }
    // The last partial group: constant lanes again, each behind a bound check.
    macro_rules! tail {
        ($($l:literal)*) => { $(if whole + $l < kb { block(&mut acc, whole + $l, $l); })* };
    }
    tail!(0 1 2 3 4 5 6);
    for (c, a) in acc.iter().enumerate() {
        let s = _mm512_add_ps(
            _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6])),
            _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7])),
        );
        let mut vals = [0f32; TILE_ROWS];
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(vals.as_mut_ptr(), s) };
        out.store(c, 0, &vals);
    }
}

/// The AVX2 tile kernel: as [`tile_dot`], with the 16 rows in two registers of 8 (lane = row)
/// and `vpmaddubsw` of each 4-value weight group broadcast as the unsigned operand against
/// the rows' signed activations. Q4_1 (weights 0..15) sums a block's 8 groups in i16 (at most
/// 8 * 2 * 15 * 127 = 30480) before widening; Q8_0 moves the weight's sign onto the
/// activations (as in [`row_dot`]) and widens every group.
/// A tile of at most 8 rows runs only its first register.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_dot_avx2<const C: usize>(kind: Kind, kb: usize, w: [&[u8]; C], cols: [Column<'_>; C], tile: &Tile, out: TileOut<'_, '_>) {
    // SAFETY: as the caller's.
    unsafe {
        if tile.rows <= 8 {
            tile_dot_avx2_regs::<C, 1>(kind, kb, w, cols, tile, out)
        } else {
            tile_dot_avx2_regs::<C, { TILE_ROWS / 8 }>(kind, kb, w, cols, tile, out)
        }
    }
}

/// [`tile_dot_avx2`] on the tile's first `T` registers of 8 rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_dot_avx2_regs<const C: usize, const T: usize>(kind: Kind, kb: usize, w: [&[u8]; C], cols: [Column<'_>; C], tile: &Tile, mut out: TileOut<'_, '_>) {
    let mut acc = [[[_mm256_setzero_ps(); LANES]; T]; C];
    let ones = _mm256_set1_epi16(1);
    // SAFETY (whole loop): blocks b < kb exist in the weights and the tile; scales are padded.
    unsafe {
        for b in 0..kb {
            let aq = tile.q.as_ptr().add(b * QK * TILE_ROWS);
            let acts = |g: usize| -> [__m256i; T] {
                std::array::from_fn(|t| _mm256_loadu_si256(aq.add((g * TILE_ROWS + t * 8) * 4) as *const __m256i))
            };
            let group = |c: usize, g: usize| _mm256_set1_epi32((w[c].as_ptr().add(b * QK + g * 4) as *const i32).read_unaligned());
            let mut isum = [[_mm256_setzero_si256(); T]; C];
            match kind {
                Kind::Q4_1 => {
                    let mut s16 = [[_mm256_setzero_si256(); T]; C];
                    for g in 0..QK / 4 {
                        let a = acts(g);
                        for c in 0..C {
                            let wg = group(c, g);
                            for t in 0..T {
                                s16[c][t] = _mm256_add_epi16(s16[c][t], _mm256_maddubs_epi16(wg, a[t]));
                            }
                        }
                    }
                    for c in 0..C {
                        for t in 0..T {
                            isum[c][t] = _mm256_madd_epi16(s16[c][t], ones);
                        }
                    }
                }
                Kind::Q8_0 => {
                    for g in 0..QK / 4 {
                        let a = acts(g);
                        for c in 0..C {
                            let wg = group(c, g);
                            let wabs = _mm256_sign_epi8(wg, wg);
                            for t in 0..T {
                                let p = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(a[t], wg));
                                isum[c][t] = _mm256_add_epi32(isum[c][t], _mm256_madd_epi16(p, ones));
                            }
                        }
                    }
                }
            }
            let l = b % LANES;
            for t in 0..T {
                let da = _mm256_loadu_ps(tile.d.as_ptr().add(b * TILE_ROWS + t * 8));
                let sa = _mm256_loadu_ps(tile.s.as_ptr().add(b * TILE_ROWS + t * 8));
                for c in 0..C {
                    let scale = _mm256_mul_ps(f16x8_splat(*cols[c].d.get_unchecked(b)), da);
                    let a = &mut acc[c][t][l];
                    *a = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum[c][t]), *a);
                    // Q8_0 has no min: fma(0, s, acc) == acc (acc is never -0), so it is skipped.
                    if kind == Kind::Q4_1 {
                        *a = _mm256_fmadd_ps(f16x8_splat(*cols[c].m.get_unchecked(b)), sa, *a);
                    }
                }
            }
        }
    }
    for (c, regs) in acc.iter().enumerate() {
        for (t, a) in regs.iter().enumerate() {
            let s = _mm256_add_ps(
                _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6])),
                _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7])),
            );
            let mut vals = [0f32; 8];
            // SAFETY: 8 floats.
            unsafe { _mm256_storeu_ps(vals.as_mut_ptr(), s) };
            out.store(c, t * 8, &vals);
        }
    }
}
