//! Q4_1 / Q8_0 matmul for CPU. candle 0.11 has no SIMD dot product for Q4_1 on x86 and runs
//! one dot per (row, column) for both. Here activations are quantized to 8 bits per 32-value
//! block (llama.cpp's Q8_1) and multiplied in integers: one row at a time with AVX2 (decode);
//! for batches and prefill, tiles of 16 rows with one row per vector lane, so weights are
//! broadcast once for all rows and no horizontal sums are needed: 16 rows per AVX-512 VNNI
//! register (`vpdpbusd`; activations are its unsigned operand, `a + 128`, and
//! `128 * sum(w)` per block is subtracted back), or two registers of 8 rows with AVX2
//! (`vpmaddubsw`, weights as the unsigned operand).
//!
//! Batch invariance: every kernel computes the same float operations in the same order for
//! each (row, column) — exact integer block sums, then block `b` accumulated into lane
//! `b % 8` with `fma(dw * da, isum, acc)` and `fma(mw, sa, acc)`, then a fixed reduction tree
//! ([`reduce_lanes`]). So a row's logits do not depend on how many rows share the step or
//! which kernel ran it, and greedy decoding stays exact under batching.

use super::huge_pages::Storage;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod x86;

const QK: usize = 32;
/// Block `b` of a dot product accumulates into lane `b % LANES` (see the module docs).
const LANES: usize = 8;
/// Rows per tile of the many-row kernel: one AVX-512 register of i32/f32 lanes.
const TILE_ROWS: usize = 16;
/// Fewer rows than this left over after whole tiles run one row at a time.
const MIN_TILE_ROWS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Nibbles `u` in 0..15: value = d * u + m.
    Q4_1,
    /// i8 `q`: value = d * q (m = 0).
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
    /// Blocks per column, and that rounded up to whole lane groups.
    kb: usize,
    kbp: usize,
    /// Per column, `kbp` scales and mins (zero in the padding), as stored in the file: f16
    /// (exact in f32; half the bytes to stream per step).
    d: Storage<f16>,
    m: Storage<f16>,
    /// Per column and block, `128 * sum(weight values)`: the VNNI tile kernel's correction,
    /// so empty on CPUs without AVX-512 VNNI (it would add a fifth to a Q4_1 model).
    wsum128: Storage<i32>,
    /// Per column, `kb` blocks of `kind.quant_bytes()`: Q4_1 byte i holds value i in its low
    /// nibble and value i + 16 in its high one (ggml's layout); Q8_0 is 32 i8.
    quants: Storage<u8>,
}

/// One column's weights.
#[derive(Clone, Copy)]
struct Column<'a> {
    quants: &'a [u8],
    d: &'a [f16],
    m: &'a [f16],
    wsum128: &'a [i32],
}

/// Activations quantized per 32-value block: `q` (`[rows, k]`), and per block (padded to
/// `kbp`, zero in the padding) the scale `d` and `s = d * sum(q)`.
struct Acts {
    kb: usize,
    kbp: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// One row into 8-bit blocks: per 32 values `d = max|x| / 127`, `q = round_ties_even(x / d)`
/// (through `1 / d`), `s = d * sum(q)`. The AVX2 version computes the same bits.
fn quantize_row_scalar(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (b, (x, q)) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).enumerate() {
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        d[b] = max / 127.0;
        let inv = if d[b] > 0.0 { 1.0 / d[b] } else { 0.0 };
        for (qi, &v) in q.iter_mut().zip(x) {
            *qi = (v * inv).round_ties_even() as i8;
        }
        s[b] = d[b] * q.iter().map(|&v| v as i32).sum::<i32>() as f32;
    }
}

/// One row of [`Acts`].
#[derive(Clone, Copy)]
struct Row<'a> {
    q: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
}

impl Acts {
    fn quantize(xs: &[f32], k: usize) -> Self {
        let (kb, rows) = (k / QK, xs.len() / k);
        let kbp = kb.div_ceil(LANES) * LANES;
        let mut a = Self { kb, kbp, q: vec![0; xs.len()], d: vec![0.0; rows * kbp], s: vec![0.0; rows * kbp] };
        let isa = Isa::detect();
        for (r, x) in xs.chunks_exact(k).enumerate() {
            let (q, d, s) = (&mut a.q[r * k..(r + 1) * k], &mut a.d[r * kbp..][..kb], &mut a.s[r * kbp..][..kb]);
            #[cfg(target_arch = "x86_64")]
            if isa.avx2 {
                // SAFETY: AVX2 was detected.
                unsafe { x86::quantize_row(x, q, d, s) };
                continue;
            }
            let _ = isa;
            quantize_row_scalar(x, q, d, s);
        }
        a
    }

    fn rows(&self) -> usize {
        self.q.len() / (self.kb * QK)
    }

    fn row(&self, r: usize) -> Row<'_> {
        let (k, p) = (self.kb * QK, self.kbp);
        Row { q: &self.q[r * k..(r + 1) * k], d: &self.d[r * p..(r + 1) * p], s: &self.s[r * p..(r + 1) * p] }
    }
}

/// Rows `start..start + 16` of [`Acts`] interleaved for the tile kernels: per block, 8 groups
/// of (16 rows × 4 consecutive values), then per block the 16 rows' `d` and `s`. Values are
/// stored as `q ^ bias`: `q + 128` as u8 for `vpdpbusd` (bias 0x80), `q` as i8 for AVX2
/// (bias 0). Missing rows are zeros (their lanes compute 0 and are not stored).
struct Tile {
    rows: usize,
    q: Vec<u8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl Tile {
    fn new(a: &Acts, start: usize, rows: usize, bias: u8) -> Self {
        let kb = a.kb;
        let mut t = Self { rows, q: vec![bias; kb * QK * TILE_ROWS], d: vec![0.0; kb * TILE_ROWS], s: vec![0.0; kb * TILE_ROWS] };
        for r in 0..rows {
            let row = a.row(start + r);
            // Groups of 4 values move as one u32 each (0x80 flips the top bit: + 128): group
            // g of the row lands at (g * TILE_ROWS + r) * 4.
            let bias = u32::from_ne_bytes([bias; 4]);
            for (g, src) in row.q.chunks_exact(4).enumerate() {
                let v = u32::from_ne_bytes([src[0] as u8, src[1] as u8, src[2] as u8, src[3] as u8]) ^ bias;
                let dst = (g * TILE_ROWS + r) * 4;
                t.q[dst..dst + 4].copy_from_slice(&v.to_ne_bytes());
            }
            for b in 0..kb {
                t.d[b * TILE_ROWS + r] = row.d[b];
                t.s[b * TILE_ROWS + r] = row.s[b];
            }
        }
        t
    }
}

/// The canonical lane reduction; the SIMD kernels' horizontal sums follow the same tree.
#[inline]
fn reduce_lanes(a: [f32; LANES]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Which kernels this CPU runs.
#[derive(Clone, Copy)]
struct Isa {
    /// AVX2 with FMA and F16C (the f16 scales; every AVX2 CPU has it).
    avx2: bool,
    avx512_vnni: bool,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            return Self { avx2, avx512_vnni: avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vnni") };
        }
        #[allow(unreachable_code)]
        Self { avx2: false, avx512_vnni: false }
    }
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
        let kb = k / QK;
        let kbp = kb.div_ceil(LANES) * LANES;
        let header = if kind == Kind::Q4_1 { 4 } else { 2 };
        let block_bytes = header + kind.quant_bytes();
        if data.len() != n * kb * block_bytes {
            candle_core::bail!("{kind:?} tensor has {} bytes, expected {}", data.len(), n * kb * block_bytes)
        }
        let (mut d, mut m) = (vec![f16::ZERO; n * kbp], vec![f16::ZERO; n * kbp]);
        let mut quants = Vec::with_capacity(n * kb * kind.quant_bytes());
        for (i, b) in data.chunks_exact(block_bytes).enumerate() {
            let at = i / kb * kbp + i % kb;
            d[at] = f16::from_le_bytes([b[0], b[1]]);
            match kind {
                Kind::Q4_1 => {
                    m[at] = f16::from_le_bytes([b[2], b[3]]);
                    quants.extend_from_slice(&b[header..]);
                }
                Kind::Q8_0 => quants.extend_from_slice(&b[header..]),
            }
        }
        let qb = kind.quant_bytes();
        let wsum128: Vec<i32> = if Isa::detect().avx512_vnni {
            quants.chunks_exact(qb).map(|w| 128 * (0..QK).map(|i| weight_value(kind, w, i)).sum::<i32>()).collect()
        } else {
            vec![]
        };
        Ok(Some(Self { kind, n, k, kb, kbp, d: Storage::Heap(d), m: Storage::Heap(m), wsum128: Storage::Heap(wsum128),
            quants: Storage::Heap(quants) }))
    }

    /// The matrices' columns one after the other (same kind and input size), or None.
    pub fn concat(parts: &[&QuantMatrix]) -> Option<Self> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.kind != first.kind || p.k != first.k) {
            return None;
        }
        Some(Self {
            kind: first.kind,
            n: parts.iter().map(|p| p.n).sum(),
            k: first.k,
            kb: first.kb,
            kbp: first.kbp,
            d: Storage::Heap(parts.iter().flat_map(|p| p.d.iter().copied()).collect()),
            m: Storage::Heap(parts.iter().flat_map(|p| p.m.iter().copied()).collect()),
            wsum128: Storage::Heap(parts.iter().flat_map(|p| p.wsum128.iter().copied()).collect()),
            quants: Storage::Heap(parts.iter().flat_map(|p| p.quants.iter().copied()).collect()),
        })
    }

    /// Moves the values into huge pages (see [`super::huge_pages`]): for a final matrix.
    pub fn into_huge_pages(self) -> Self {
        Self { d: self.d.into_huge_pages(), m: self.m.into_huge_pages(), wsum128: self.wsum128.into_huge_pages(),
            quants: self.quants.into_huge_pages(), ..self }
    }

    #[inline(always)]
    fn column(&self, j: usize) -> Column<'_> {
        let qb = self.kb * self.kind.quant_bytes();
        Column {
            quants: &self.quants[j * qb..(j + 1) * qb],
            d: &self.d[j * self.kbp..(j + 1) * self.kbp],
            m: &self.m[j * self.kbp..(j + 1) * self.kbp],
            wsum128: self.wsum128.get(j * self.kb..(j + 1) * self.kb).unwrap_or(&[]),
        }
    }

    /// Hints the CPU to load columns `a..b` into cache.
    #[inline]
    fn prefetch_columns(&self, a: usize, b: usize) {
        #[cfg(target_arch = "x86_64")]
        if a < b {
            let qb = self.kb * self.kind.quant_bytes();
            let lines = |bytes: &[u8]| {
                for line in bytes.chunks(64) {
                    // SAFETY: a hint on an address inside the slice; SSE is x86_64 baseline.
                    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr() as *const i8) };
                }
            };
            lines(&self.quants[a * qb..b * qb]);
            lines(as_bytes(&self.d[a * self.kbp..b * self.kbp]));
            if self.kind == Kind::Q4_1 {
                lines(as_bytes(&self.m[a * self.kbp..b * self.kbp]));
            }
        }
    }

    /// `x`: `[m, k]` f32 -> `[m, n]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let dims = x.dims().to_vec();
        let k = *dims.last().expect("rank >= 1");
        if k != self.k {
            candle_core::bail!("{:?} matmul: input has {k} columns, weight expects {}", self.kind, self.k)
        }
        // Borrowed, not copied out (the copy was ~1% of a 16-sequence step).
        let out = super::cpu_ops::with_f32(&x, |xs| Ok(self.matmul(&Acts::quantize(xs, k), Isa::detect())))?;
        let mut shape = dims;
        *shape.last_mut().expect("rank >= 1") = self.n;
        Tensor::from_vec(out, shape, &Device::Cpu)
    }

    /// Row-major `[rows, n]` result, columns split across the thread pool.
    fn matmul(&self, acts: &Acts, isa: Isa) -> Vec<f32> {
        let rows = acts.rows();
        if rows == 0 {
            return vec![];
        }
        // Whole tiles of 16 rows (and a last partial one of at least MIN_TILE_ROWS) go to a
        // tile kernel; the rest run row by row.
        let mut tiles = vec![];
        let mut single_from = 0;
        if isa.avx2 {
            let bias = if isa.avx512_vnni { 0x80 } else { 0 };
            while rows - single_from >= MIN_TILE_ROWS {
                let len = (rows - single_from).min(TILE_ROWS);
                tiles.push((single_from, Tile::new(acts, single_from, len, bias)));
                single_from += len;
            }
        }
        // Each task computes a range of columns for every row, straight into the result.
        let cols_per_task = ((self.n / (rayon::current_num_threads() * 8)).max(4) + 1) & !1;
        // Not zeroed first: every value is written below (zeroing a 16-row lm head's 3 MB
        // result cost a memset per step).
        let mut result = Vec::with_capacity(rows * self.n);
        let shared = Output::new(&mut result.spare_capacity_mut()[..rows * self.n], rows, self.n);
        (0..self.n.div_ceil(cols_per_task)).into_par_iter().for_each(|task| {
            let j0 = task * cols_per_task;
            let ncols = cols_per_task.min(self.n - j0);
            // SAFETY: each task takes its own columns.
            let mut out = unsafe { shared.columns(j0, ncols) };
            if !tiles.is_empty() {
                self.tile_columns(j0, ncols, &tiles, isa, &mut out);
            }
            for jj in 0..ncols {
                if single_from < rows {
                    // As for tiles, a memory latency ahead (a column's dot is quick).
                    self.prefetch_columns(j0 + (jj + 8).min(ncols), j0 + (jj + 9).min(ncols));
                }
                let col = self.column(j0 + jj);
                for r in single_from..rows {
                    out.set(r, jj, self.dot(col, acts.row(r), isa));
                }
            }
        });
        // SAFETY: the tasks cover columns 0..n; in each, the tiles wrote rows 0..single_from
        // and the loop above rows single_from..rows.
        unsafe { result.set_len(rows * self.n) };
        result
    }

    /// One row against one column.
    fn dot(&self, col: Column<'_>, row: Row<'_>, isa: Isa) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if isa.avx2 {
            // SAFETY: AVX2, FMA and F16C were detected; slices are whole blocks.
            return unsafe { x86::row_dot(self.kind, self.kb, col, row) };
        }
        let _ = isa;
        dot_scalar(self.kind, self.kb, col, row)
    }

    /// Columns `j0..j0 + ncols` against every tile, into `out` (those columns).
    #[allow(unused_variables)]
    fn tile_columns(&self, j0: usize, ncols: usize, tiles: &[(usize, Tile)], isa: Isa, out: &mut ColumnsOut<'_>) {
        // SAFETY: tiles are only built when AVX2 was detected, and hold `q + 128` for the
        // VNNI kernel only where AVX-512 VNNI was detected.
        // Columns per pass: AVX2 keeps 3 columns x 2 row registers of i16 sums plus the
        // activations in its 16 registers (measured on Zen 3 at 16 rows: Q4_1 ~75 -> ~90
        // GMAC/s from 2 columns; 4 spill and are slower).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            if isa.avx512_vnni {
                assert_eq!(self.wsum128.len(), self.n * self.kb, "VNNI kernel without its weight sums");
                self.tile_columns_with::<2>(j0, ncols, tiles, out, x86::tile_dot::<2>);
            } else {
                self.tile_columns_with::<3>(j0, ncols, tiles, out, x86::tile_dot_avx2::<3>);
            }
        }
    }

    /// [`Self::tile_columns`] `C` columns at a time (as many as the kernel keeps in
    /// registers), each group's weights unpacked once for all tiles. A last short group
    /// repeats its last column; the kernel stores only the real ones.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    unsafe fn tile_columns_with<const C: usize>(&self, j0: usize, ncols: usize, tiles: &[(usize, Tile)], out: &mut ColumnsOut<'_>,
        kernel: unsafe fn(Kind, usize, [&[u8]; C], [Column<'_>; C], &Tile, TileOut<'_, '_>)) {
        let kq = self.kb * QK;
        // Q4_1 columns are unpacked into this thread's buffer (Q8_0 is read in place). Taken,
        // not borrowed, so a nested use (none today) would just get a new buffer.
        let mut unpacked = UNPACKED.take();
        if self.kind == Kind::Q4_1 && unpacked.len() < C * kq {
            unpacked.resize(C * kq, 0);
        }
        for jj in (0..ncols).step_by(C) {
            // Weights stream from memory once per step: ask for the group after next while
            // this one computes (about one kernel call covers a memory latency).
            self.prefetch_columns(j0 + (jj + 2 * C).min(ncols), j0 + (jj + 3 * C).min(ncols));
            let cols: [Column<'_>; C] = std::array::from_fn(|i| self.column(j0 + (jj + i).min(ncols - 1)));
            let w: [&[u8]; C] = match self.kind {
                Kind::Q8_0 => cols.map(|c| c.quants),
                Kind::Q4_1 => {
                    for (c, buf) in cols.iter().zip(unpacked.chunks_exact_mut(kq)) {
                        // SAFETY: AVX2 was detected (see the caller).
                        unsafe { x86::unpack_q4_1(c.quants, buf) };
                    }
                    let mut parts = unpacked.chunks_exact(kq);
                    std::array::from_fn(|_| parts.next().expect("C buffers"))
                }
            };
            for (start, tile) in tiles {
                let dst = TileOut { out: &mut *out, row0: *start, rows: tile.rows, col0: jj, cols: (ncols - jj).min(C) };
                // SAFETY: see the caller.
                unsafe { kernel(self.kind, self.kb, w, cols, tile, dst) };
            }
        }
        UNPACKED.set(unpacked);
    }
}

thread_local! {
    /// A pool thread's buffer for Q4_1 columns unpacked to a byte per value, kept from task
    /// to task: allocating and zeroing one per task cost 3-5% of a 16-sequence decode step
    /// (measured in-process, alternating step by step: 30.1 -> 29.2 ms, 31.0 -> 29.4 with the
    /// order reversed), and a reused one is already in cache.
    static UNPACKED: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The row-major `[rows, n]` result, written by all column tasks at once: each owns its own
/// columns (interleaved in memory with the others', hence a pointer, not slices).
#[derive(Clone, Copy)]
struct Output<'a> {
    ptr: *mut f32,
    rows: usize,
    n: usize,
    _result: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: tasks write disjoint columns (see `columns`).
unsafe impl Send for Output<'_> {}
unsafe impl Sync for Output<'_> {}

impl<'a> Output<'a> {
    /// Over memory that may be uninitialised: it is only written.
    fn new(result: &'a mut [std::mem::MaybeUninit<f32>], rows: usize, n: usize) -> Self {
        assert_eq!(result.len(), rows * n, "result is not rows x n");
        Self { ptr: result.as_mut_ptr() as *mut f32, rows, n, _result: std::marker::PhantomData }
    }

    /// Columns `j0..j0 + cols`, bounds-checked.
    /// SAFETY: no two live `ColumnsOut` of one `Output` may share a column.
    unsafe fn columns(self, j0: usize, cols: usize) -> ColumnsOut<'a> {
        assert!(j0 + cols <= self.n, "columns out of range");
        ColumnsOut { out: self, j0, cols }
    }
}

/// One task's columns of the [`Output`].
struct ColumnsOut<'a> {
    out: Output<'a>,
    j0: usize,
    cols: usize,
}

impl ColumnsOut<'_> {
    #[inline]
    fn set(&mut self, r: usize, c: usize, v: f32) {
        assert!(r < self.out.rows && c < self.cols, "output index out of range");
        // SAFETY: in bounds (checked above) and this task's own column.
        unsafe { *self.out.ptr.add(r * self.out.n + self.j0 + c) = v };
    }
}

/// Where a tile kernel stores its results: tile rows `0..rows` are result rows `row0..`, and
/// kernel column `c < cols` is task column `col0 + c` (the kernel's other columns are
/// repeats, dropped).
struct TileOut<'o, 'a> {
    out: &'o mut ColumnsOut<'a>,
    row0: usize,
    rows: usize,
    col0: usize,
    cols: usize,
}

impl TileOut<'_, '_> {
    /// Tile rows `r0..r0 + vals.len()` of kernel column `c` (those that exist).
    #[inline]
    fn store(&mut self, c: usize, r0: usize, vals: &[f32]) {
        if c >= self.cols {
            return;
        }
        // One bound check and strided stores: per-value checks were ~6% of a 16-row matmul.
        let rows = vals.len().min(self.rows.saturating_sub(r0));
        let (row, col) = (self.row0 + r0, self.col0 + c);
        let out = &mut *self.out;
        assert!(row + rows <= out.out.rows && col < out.cols, "output index out of range");
        // SAFETY: in bounds (checked above) and this task's own column.
        unsafe {
            let at = out.out.ptr.add(row * out.out.n + out.j0 + col);
            for (r, &v) in vals[..rows].iter().enumerate() {
                *at.add(r * out.out.n) = v;
            }
        }
    }
}

/// The bytes of `v` (for prefetching).
fn as_bytes(v: &[f16]) -> &[u8] {
    // SAFETY: any f16 memory is valid as bytes; same lifetime and extent.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// Integer value `i` of one weight block: a Q4_1 nibble (0..15) or a Q8_0 i8.
fn weight_value(kind: Kind, w: &[u8], i: usize) -> i32 {
    match kind {
        Kind::Q4_1 => ((w[i % 16] >> (4 * (i / 16))) & 0x0F) as i32,
        Kind::Q8_0 => w[i] as i8 as i32,
    }
}

/// Exact integer dot product of one weight block with 32 activations.
fn block_isum(kind: Kind, w: &[u8], a: &[i8]) -> i32 {
    (0..QK).map(|i| weight_value(kind, w, i) * a[i] as i32).sum()
}

/// The canonical arithmetic in plain Rust (CPUs without AVX2, and the tests' reference).
fn dot_scalar(kind: Kind, kb: usize, col: Column<'_>, row: Row<'_>) -> f32 {
    let qb = kind.quant_bytes();
    let mut acc = [0f32; LANES];
    for b in 0..kb {
        let isum = block_isum(kind, &col.quants[b * qb..(b + 1) * qb], &row.q[b * QK..(b + 1) * QK]);
        let l = b % LANES;
        acc[l] = (col.d[b].to_f32() * row.d[b]).mul_add(isum as f32, acc[l]);
        acc[l] = col.m[b].to_f32().mul_add(row.s[b], acc[l]);
    }
    reduce_lanes(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1.7, 1.7] (the tests must not flake).
    fn vals(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 * 12.9898 + seed).sin() * 43758.547).fract() * 3.4).collect()
    }

    fn matrix(dtype: GgmlDType, n: usize, k: usize) -> (QTensor, QuantMatrix) {
        let w = Tensor::from_vec(vals(n * k, 1.0), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let mat = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
        (q, mat)
    }

    #[test]
    fn matches_dequantized_matmul() {
        check(GgmlDType::Q4_1);
        check(GgmlDType::Q8_0);
    }

    fn check(dtype: GgmlDType) {
        let dev = Device::Cpu;
        let (q, mat) = matrix(dtype, 96, 256);
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
            let act = Acts::quantize(xr, 256);
            for (j, wr) in wd.iter().enumerate() {
                let exact: f64 = wr.iter().enumerate()
                    .map(|(i, &wv)| wv as f64 * act.q[i] as f64 * act.d[i / QK] as f64).sum();
                assert!((got[r][j] as f64 - exact).abs() < 1e-3 * (1.0 + exact.abs()), "{dtype:?} [{r},{j}] {} vs {exact}", got[r][j]);
                err2 += (got[r][j] - want[r][j]).powi(2) as f64;
                norm2 += (want[r][j] as f64).powi(2);
            }
        }
        // And close to the f32 product overall (8-bit activations cost well under 5%).
        assert!((err2 / norm2).sqrt() < 0.05, "{dtype:?}: relative error {}", (err2 / norm2).sqrt());
    }

    /// A batch of no rows is an empty result, not a panic.
    #[test]
    fn empty_batch() {
        let (_, mat) = matrix(GgmlDType::Q4_1, 96, 256);
        let out = mat.forward(&Tensor::zeros((0, 256), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(out.dims(), &[0, 96]);
    }

    /// The AVX2 activation quantizer computes the scalar one's bits, ties and zero blocks
    /// included.
    #[test]
    fn quantizers_agree() {
        let mut x = vals(4 * 576, 5.0);
        x[..QK].fill(0.0);
        // Ties: with max 127 the scale is 1, so these round to even.
        x[QK..2 * QK].iter_mut().enumerate().for_each(|(i, v)| *v = if i == 0 { 127.0 } else { i as f32 - 15.5 });
        let run = |f: &dyn Fn(&[f32], &mut [i8], &mut [f32], &mut [f32])| {
            let (mut q, mut d, mut s) = (vec![0i8; x.len()], vec![0f32; x.len() / QK], vec![0f32; x.len() / QK]);
            f(&x, &mut q, &mut d, &mut s);
            (q, d, s)
        };
        let want = run(&quantize_row_scalar);
        assert_eq!(want.0[QK + 1..QK + 4], [-14, -14, -12]);
        #[cfg(target_arch = "x86_64")]
        if Isa::detect().avx2 {
            // SAFETY: AVX2 was detected.
            assert_eq!(run(&|x, q, d, s| unsafe { x86::quantize_row(x, q, d, s) }), want);
        }
    }

    /// Every kernel and every batch size gives each row bit-identical results (k = 576: a
    /// partial last lane group, as in SmolLM2; n odd: a single-column tile).
    #[test]
    fn kernels_agree_bit_for_bit_whatever_the_batch() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (_, mat) = matrix(dtype, 37, 576);
            let rows = 40;
            let xs = vals(rows * 576, 3.0);
            let acts = Acts::quantize(&xs, 576);
            let reference: Vec<f32> = (0..rows).flat_map(|r| (0..37).map(move |j| (r, j)))
                .map(|(r, j)| dot_scalar(mat.kind, mat.kb, mat.column(j), acts.row(r))).collect();
            let native = Isa::detect();
            for isa in [Isa { avx2: false, avx512_vnni: false }, Isa { avx2: native.avx2, avx512_vnni: false }, native] {
                assert_eq!(mat.matmul(&acts, isa), reference, "{dtype:?}, all {rows} rows");
                assert!(mat.matmul(&Acts::quantize(&[], 576), isa).is_empty(), "{dtype:?}, no rows");
                for take in [1, 3, 5, 16, 17, 21] {
                    let part = Acts::quantize(&xs[..take * 576], 576);
                    assert_eq!(mat.matmul(&part, isa), reference[..take * 37], "{dtype:?}, {take} rows");
                }
            }
        }
    }
}
