//! Paged attention: K/V live in fixed-size blocks addressed through per-sequence block
//! tables. The forward pass only sees the [`PagedAttention`] trait, so the CPU kernel here
//! and a CUDA kernel can be swapped without touching the model code.

use super::cpu_ops::with_f32;
use candle_core::{Device, Result, Tensor};
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

/// f32 KV cache in host memory. Per layer, block and KV head one tile: keys transposed
/// (`[head_dim][block_size]`), so a query's scores for 16 keys are 16-lane FMAs with no
/// horizontal sums, then values (`[block_size][head_dim]`).
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

/// Keys per softmax chunk and per vector of scores (one AVX-512 register). Chunks are
/// logical (keys 0..16, 16..32, ...), so the arithmetic never depends on the block size.
const W: usize = 16;

/// One layer's K and V caches, shared by the parallel work items of a forward. Items build
/// slices of single (block, KV head) tiles only, and no tile is written by one item while
/// another reads it (see [`CpuPagedAttention::forward`]).
#[derive(Clone, Copy)]
struct LayerCache {
    k: *mut f32,
    v: *mut f32,
    len: usize,
}

// SAFETY: items touch disjoint tiles (see above); the cache outlives the forward.
unsafe impl Send for LayerCache {}
unsafe impl Sync for LayerCache {}

impl LayerCache {
    fn new(k: &mut [f32], v: &mut [f32]) -> Self {
        assert_eq!(k.len(), v.len(), "K and V caches differ in size");
        Self { k: k.as_mut_ptr(), v: v.as_mut_ptr(), len: k.len() }
    }

    /// Keys (`[head_dim][block_size]`) and values (`[block_size][head_dim]`) of the tile at `at`.
    /// SAFETY: no other thread may write this tile while the slices live.
    unsafe fn tile(&self, at: usize, len: usize) -> (&[f32], &[f32]) {
        assert!(at + len <= self.len, "KV tile out of range");
        // SAFETY: in bounds; exclusive use per the caller.
        unsafe { (std::slice::from_raw_parts(self.k.add(at), len), std::slice::from_raw_parts(self.v.add(at), len)) }
    }

    /// Writes one token's key and value for KV head `h` into `slot`.
    /// SAFETY: no other thread may read or write that tile meanwhile.
    unsafe fn write(&self, shape: &KvCacheShape, slot: usize, h: usize, k: &[f32], v: &[f32]) {
        let KvCacheShape { head_dim: d, block_size: bs, num_kv_heads: nkv, .. } = *shape;
        let (block, o) = (slot / bs, slot % bs);
        let at = (block * nkv + h) * d * bs;
        assert!(at + d * bs <= self.len && k.len() == d && v.len() == d, "KV write out of range");
        // SAFETY: in bounds; exclusive per the caller.
        unsafe {
            for (c, &x) in k.iter().enumerate() {
                *self.k.add(at + c * bs + o) = x;
            }
            std::ptr::copy_nonoverlapping(v.as_ptr(), self.v.add(at + o * d), d);
        }
    }
}

/// Where one KV head's cached keys live: the layer's cache, the sequence's blocks.
struct KvView<'a> {
    cache: LayerCache,
    table: &'a [u32],
    shape: &'a KvCacheShape,
    kvh: usize,
}

impl KvView<'_> {
    /// Start of key `j`'s (block, head) tile and its offset in the block.
    fn tile(&self, j: usize) -> (usize, usize) {
        let KvCacheShape { head_dim: d, block_size: bs, num_kv_heads: nkv, .. } = *self.shape;
        ((self.table[j / bs] as usize * nkv + self.kvh) * d * bs, j % bs)
    }

    /// Key `j`'s tile as slices (keys, values) and its offset in the block.
    fn tile_slices(&self, j: usize) -> (&[f32], &[f32], usize) {
        let (at, off) = self.tile(j);
        // SAFETY: this sequence's tiles of this head are written by no other item (forward).
        let (k, v) = unsafe { self.cache.tile(at, self.shape.head_dim * self.shape.block_size) };
        (k, v, off)
    }

    /// Hints the CPU to load the block holding key `j` (its key and value tiles): each tile
    /// is its own 4 KiB stretch of the cache, where the hardware prefetcher starts cold.
    /// Measured at 16 sequences, fetching the next block while this one computes: attention
    /// 8.3 -> 7.0 ms per step; two blocks ahead gained less.
    fn prefetch_block(&self, j: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let (k, v, _) = self.tile_slices(j);
            for cache in [k, v] {
                let p = cache.as_ptr() as *const i8;
                for off in (0..std::mem::size_of_val(cache)).step_by(64) {
                    // SAFETY: a hint on an address inside the slice; SSE is x86_64 baseline.
                    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(off)) };
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = j;
    }

    /// Scores of keys `j0..j0 + s.len()` (one chunk): each is the sum of four interleaved
    /// partial dot products `((p0 + p1) + (p2 + p3))`, whichever path computes it.
    fn scores(&self, q: &[f32], j0: usize, s: &mut [f32]) {
        let (d, bs) = (q.len(), self.shape.block_size);
        let (keys, _, off) = self.tile_slices(j0);
        if bs % W == 0 && d % 4 == 0 {
            // The chunk is 16 consecutive columns of one transposed tile: 16-lane arithmetic
            // (keys past the chunk's end are computed and ignored).
            let kt = &keys[off..(d - 1) * bs + off + W];
            // Row c of the tile, checked once by the slicing above (per-row checks were ~10% of
            // attention). SAFETY: c < d, so c * bs + W <= (d - 1) * bs + W = kt.len().
            let row = |c: usize| -> &[f32; W] { unsafe { &*(kt.as_ptr().add(c * bs) as *const [f32; W]) } };
            // Four named accumulators: constant indices keep them in registers.
            let mut acc = [[0f32; W]; 4];
            let [a0, a1, a2, a3] = &mut acc;
            for c in (0..d).step_by(4) {
                axpy(a0, q[c], row(c));
                axpy(a1, q[c + 1], row(c + 1));
                axpy(a2, q[c + 2], row(c + 2));
                axpy(a3, q[c + 3], row(c + 3));
            }
            // All W lanes (a fixed-size loop, so vector adds), then the chunk's keys.
            let mut sum = [0f32; W];
            for (i, sum) in sum.iter_mut().enumerate() {
                *sum = (acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i]);
            }
            s.copy_from_slice(&sum[..s.len()]);
            return;
        }
        for (i, s) in s.iter_mut().enumerate() {
            let (keys, _, off) = self.tile_slices(j0 + i);
            let mut acc = [0f32; 4];
            for c in 0..d {
                acc[c % 4] += q[c] * keys[c * bs + off];
            }
            *s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
    }

    /// `out += sum_i p[i] * value(j0 + i)`, keys in order for every output value.
    fn accumulate_values(&self, p: &[f32], j0: usize, out: &mut [f32]) {
        let (d, bs) = (out.len(), self.shape.block_size);
        let (_, values, off) = self.tile_slices(j0);
        if off + p.len() <= bs {
            accumulate_rows(p, &values[off * d..(off + p.len()) * d], out);
            return;
        }
        for (i, &p) in p.iter().enumerate() {
            let (_, values, off) = self.tile_slices(j0 + i);
            accumulate_rows(&[p], &values[off * d..(off + 1) * d], out);
        }
    }
}

/// `acc += a * x` on fixed-size arrays (one or a few vector registers; separate multiply and
/// add, as everywhere in this file, so every path rounds alike).
#[inline(always)]
fn axpy<const N: usize>(acc: &mut [f32; N], a: f32, x: &[f32; N]) {
    for i in 0..N {
        acc[i] += a * x[i];
    }
}

/// `out += sum_o p[o] * rows[o]` (`rows`: `[p.len()][d]`): 64 (or 16) output values per
/// pass, held in registers across the rows.
fn accumulate_rows(p: &[f32], rows: &[f32], out: &mut [f32]) {
    /// SAFETY: `rows` holds `p.len()` rows of `out.len()` values.
    unsafe fn pass<const N: usize>(p: &[f32], rows: &[f32], out: &mut [f32], c0: usize) {
        let d = out.len();
        let mut acc = [0f32; N];
        acc.copy_from_slice(&out[c0..c0 + N]);
        for (o, &p) in p.iter().enumerate() {
            // SAFETY: c0 + N <= d (the slice above) and `rows` holds p.len() rows of d (the
            // caller's contract), so row o's values c0..c0 + N are in it.
            axpy(&mut acc, p, unsafe { &*(rows.as_ptr().add(o * d + c0) as *const [f32; N]) });
        }
        out[c0..c0 + N].copy_from_slice(&acc);
    }
    let d = out.len();
    assert!(rows.len() >= p.len() * d, "value rows of the wrong size");
    let mut c0 = 0;
    while c0 + 4 * W <= d {
        // SAFETY: checked above.
        unsafe { pass::<{ 4 * W }>(p, rows, out, c0) };
        c0 += 4 * W;
    }
    while c0 + W <= d {
        // SAFETY: checked above.
        unsafe { pass::<W>(p, rows, out, c0) };
        c0 += W;
    }
    for c in c0..d {
        for (o, &p) in p.iter().enumerate() {
            out[c] += p * rows[o * d + c];
        }
    }
}

/// `e^x` for x <= 0 in straight-line arithmetic the compiler vectorises (libm's `expf` is a
/// call per value): x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 in two parts, so r is exact
/// enough), e^r by its degree-6 Taylor polynomial, 2^n through the exponent bits; within a
/// few ulp of libm. Below -87 the result is 0.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.max(-87.0);
    let n = (xc * std::f32::consts::LOG2_E + 0.5).floor();
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { p * scale }
}

/// Softmax numerators in place: `s[o] = e^(s[o] - max)`; returns their sum.
fn exp_shifted(s: &mut [f32], max: f32) -> f32 {
    for x in s.iter_mut() {
        *x = exp_nonpositive(*x - max);
    }
    s.iter().sum()
}

/// One token's `group` query heads over one KV head's first `n_keys` cached keys, with an
/// online softmax one chunk at a time (rescaling what came before when the max grows).
/// `write_last` runs before the chunk holding the last key is read (it may write that key).
fn attend(q: &[f32], scale: f32, kv: &KvView<'_>, n_keys: usize, out: &mut [f32], write_last: impl FnOnce()) {
    let mut write_last = Some(write_last);
    let d = kv.shape.head_dim;
    let group = q.len() / d;
    let q: Vec<f32> = q.iter().map(|x| x * scale).collect();
    let mut max = vec![f32::NEG_INFINITY; group];
    let mut denom = vec![0f32; group];
    let mut s = [0f32; W];
    out.fill(0.0);
    for j0 in (0..n_keys).step_by(W) {
        let s = &mut s[..W.min(n_keys - j0)];
        if j0 + s.len() == n_keys {
            if let Some(w) = write_last.take() {
                w();
            }
        }
        // The next chunk's block, when it starts one.
        if j0 + W < n_keys && (j0 + W) % kv.shape.block_size < W {
            kv.prefetch_block(j0 + W);
        }
        for g in 0..group {
            kv.scores(&q[g * d..(g + 1) * d], j0, s);
            let new_max = s.iter().fold(max[g], |m, &x| if x > m { x } else { m });
            let rescale = exp_nonpositive(max[g] - new_max);
            let sum = exp_shifted(s, new_max);
            denom[g] = denom[g] * rescale + sum;
            max[g] = new_max;
            let out = &mut out[g * d..(g + 1) * d];
            if rescale != 1.0 {
                out.iter_mut().for_each(|x| *x *= rescale);
            }
            kv.accumulate_values(s, j0, out);
        }
    }
    for (g, out) in out.chunks_mut(d).enumerate() {
        let inv = 1.0 / denom[g];
        out.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Whether each token's K/V can be written inside its own attention work item: every sequence
/// has one query (decode), so no item reads another's new key, and each written block belongs
/// to one sequence's table only (never a shared prefix block), so no item reads a tile another
/// writes. Measured at 16 sequences, alternating step by step: attention 7.8 -> 6.9 ms per
/// step (the serial write misses cache on every key; written in the item, the tile is then hot).
fn writes_in_items(meta: &AttentionMetadata, block_size: usize) -> bool {
    if meta.seqs.iter().any(|s| s.query_len != 1) || meta.slot_mapping.len() != meta.seqs.len() {
        return false;
    }
    // Occurrences of each written block across all tables, in one pass over them (this runs
    // once per layer, so not once per sequence).
    let mut counts: std::collections::HashMap<u32, usize> =
        meta.seqs.iter().map(|seq| ((meta.slot_mapping[seq.query_start] / block_size) as u32, 0)).collect();
    if counts.len() != meta.seqs.len() {
        return false; // two sequences write into one block
    }
    for block in meta.seqs.iter().flat_map(|seq| &seq.block_table) {
        if let Some(n) = counts.get_mut(block) {
            *n += 1;
        }
    }
    counts.values().all(|&n| n == 1)
}

impl PagedAttention for CpuPagedAttention {
    fn forward(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor, meta: &AttentionMetadata)
        -> Result<Tensor> {
        let shape = self.shape;
        let KvCacheShape { num_heads, num_kv_heads, head_dim: d, block_size: bs, .. } = shape;
        let n_tokens = meta.slot_mapping.len();
        let row = num_kv_heads * d;
        let cache = LayerCache::new(&mut self.k[layer], &mut self.v[layer]);
        let group = num_heads / num_kv_heads;
        let scale = self.scale;
        let in_item = writes_in_items(meta, bs);
        // (sequence, query row within it) for every token, so each output chunk knows its keys.
        let mut owner = Vec::with_capacity(n_tokens);
        for (s, seq) in meta.seqs.iter().enumerate() {
            for i in 0..seq.query_len {
                owner.push((s, i));
            }
        }
        let mut out = vec![0f32; n_tokens * num_heads * d];
        with_f32(k, |k| with_f32(v, |v| with_f32(q, |q| {
            if k.len() != n_tokens * row || v.len() != n_tokens * row {
                candle_core::bail!("k/v have {}/{} values, expected {}", k.len(), v.len(), n_tokens * row)
            }
            let kv_of = |t: usize, h: usize| (&k[(t * num_kv_heads + h) * d..][..d], &v[(t * num_kv_heads + h) * d..][..d]);
            if !in_item {
                for (t, &slot) in meta.slot_mapping.iter().enumerate() {
                    for h in 0..num_kv_heads {
                        let (kt, vt) = kv_of(t, h);
                        // SAFETY: no items run yet; this thread alone touches the cache.
                        unsafe { cache.write(&shape, slot, h, kt, vt) };
                    }
                }
            }
            // One work item = one token x one KV head (its `group` query heads share the keys).
            out.par_chunks_mut(group * d).enumerate().for_each(|(item, out)| {
                let (t, kvh) = (item / num_kv_heads, item % num_kv_heads);
                let (s, i) = owner[t];
                let seq = &meta.seqs[s];
                // Its own token's K/V, when written in the item (see writes_in_items): in the
                // last block, which only this sequence reads. Fetched now and written just
                // before the chunk that reads it, so the keys before it hide the fetch (written
                // first, its scattered K stores stalled on the cold tile: ~5% of attention).
                let write = || {
                    if in_item {
                        let (kt, vt) = kv_of(t, kvh);
                        // SAFETY: see above: no other item reads or writes this tile.
                        unsafe { cache.write(&shape, meta.slot_mapping[t], kvh, kt, vt) };
                    }
                };
                // Causal: query i of this step sits at position context_len - query_len + i.
                let n_keys = seq.context_len - seq.query_len + i + 1;
                let qs = &q[(t * num_heads + kvh * group) * d..(t * num_heads + (kvh + 1) * group) * d];
                let kv = KvView { cache, table: &seq.block_table, shape: &shape, kvh };
                if in_item {
                    kv.prefetch_block(n_keys - 1);
                }
                attend(qs, scale, &kv, n_keys, out, write);
            });
            Ok(())
        })))?;
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

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn exp_matches_libm() {
        for i in 0..=20000 {
            let x = -(i as f32) * 0.005; // 0 .. -100
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!((got - want).abs() <= 5e-7 * want + 1e-37, "exp({x}) = {got}, libm {want}");
        }
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    }

    /// Paged attention over scattered blocks equals dense causal softmax attention: the
    /// generic path (block 4, head 8) and the vectorised one (block 16, head 64, keys
    /// spanning several blocks and ending mid-block).
    #[test]
    fn matches_dense_attention_with_scattered_blocks() {
        check_dense(4, 2, 8, 4, 6, vec![5, 2]);
        check_dense(6, 2, 64, 16, 37, vec![3, 7, 1]);
    }

    /// The physical block size changes where keys live, never the arithmetic: bit-identical
    /// outputs for blocks of 4, 16 and 32 (beam search notices the last ulp).
    #[test]
    fn same_bits_whatever_the_block_size() {
        let (h, kvh, d, t) = (6, 2, 64, 37);
        let q = Tensor::randn(0f32, 1.0, (t, h, d), &Device::Cpu).unwrap();
        let k = Tensor::randn(0f32, 1.0, (t, kvh, d), &Device::Cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (t, kvh, d), &Device::Cpu).unwrap();
        let run = |bs: usize| {
            let shape = KvCacheShape { num_layers: 1, num_heads: h, num_kv_heads: kvh, head_dim: d, block_size: bs, num_blocks: 16 };
            let mut attn = CpuPagedAttention::new(shape);
            // Blocks in reverse order, so the table is not the identity.
            let table: Vec<u32> = (0..t.div_ceil(bs) as u32).rev().collect();
            let slots = (0..t).map(|i| table[i / bs] as usize * bs + i % bs).collect();
            let meta = AttentionMetadata {
                slot_mapping: slots,
                seqs: vec![SeqAttention { query_start: 0, query_len: t, context_len: t, block_table: table }],
            };
            attn.forward(0, &q, &k, &v, &meta).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let base = run(16);
        assert_eq!(run(4), base);
        assert_eq!(run(32), base);
    }

    /// A decode step of several sequences (each token's K/V written inside its own work item)
    /// equals dense attention over each sequence; a block shared between tables turns that
    /// off.
    #[test]
    fn decode_batch_writes_in_items_and_matches_dense() {
        let (h, kvh, d, bs) = (6, 2, 64, 16);
        let shape = KvCacheShape { num_layers: 1, num_heads: h, num_kv_heads: kvh, head_dim: d, block_size: bs, num_blocks: 8 };
        let mut attn = CpuPagedAttention::new(shape);
        let lens = [20usize, 7];
        let tables = [vec![5u32, 2], vec![7u32]];
        let rand = |t: usize, heads: usize| Tensor::randn(0f32, 1.0, (t, heads, d), &Device::Cpu).unwrap();
        let qs: Vec<Tensor> = lens.iter().map(|&t| rand(t, h)).collect();
        let ks: Vec<Tensor> = lens.iter().map(|&t| rand(t, kvh)).collect();
        let vs: Vec<Tensor> = lens.iter().map(|&t| rand(t, kvh)).collect();
        let slot = |s: usize, i: usize| tables[s][i / bs] as usize * bs + i % bs;
        // Prefill all but the last token of each, one sequence at a time.
        for s in 0..2 {
            let n = lens[s] - 1;
            let meta = AttentionMetadata {
                slot_mapping: (0..n).map(|i| slot(s, i)).collect(),
                seqs: vec![SeqAttention { query_start: 0, query_len: n, context_len: n, block_table: tables[s].clone() }],
            };
            let part = |x: &Tensor| x.narrow(0, 0, n).unwrap();
            attn.forward(0, &part(&qs[s]), &part(&ks[s]), &part(&vs[s]), &meta).unwrap();
        }
        // Then both last tokens in one step.
        let last = |x: &[Tensor]| Tensor::cat(&[x[0].narrow(0, lens[0] - 1, 1).unwrap(), x[1].narrow(0, lens[1] - 1, 1).unwrap()], 0).unwrap();
        let meta = AttentionMetadata {
            slot_mapping: vec![slot(0, lens[0] - 1), slot(1, lens[1] - 1)],
            seqs: (0..2).map(|s| SeqAttention { query_start: s, query_len: 1, context_len: lens[s], block_table: tables[s].clone() }).collect(),
        };
        assert!(writes_in_items(&meta, bs));
        let out = attn.forward(0, &last(&qs), &last(&ks), &last(&vs), &meta).unwrap().reshape((2, h, d)).unwrap().to_vec3::<f32>().unwrap();
        for s in 0..2 {
            let (q, k, v) = (qs[s].to_vec3::<f32>().unwrap(), ks[s].to_vec3::<f32>().unwrap(), vs[s].to_vec3::<f32>().unwrap());
            let i = lens[s] - 1;
            for head in 0..h {
                let want = dense_attention(&q, &k, &v, i, head, h / kvh);
                for (c, want) in want.iter().enumerate() {
                    assert!((want - out[s][head][c]).abs() < 1e-5, "sequence {s} head {head}");
                }
            }
        }
        // Sequence 1 writing into a block sequence 0 also reads: written up front instead.
        let mut shared = meta.clone();
        shared.seqs[1].block_table = vec![2];
        shared.slot_mapping[1] = 2 * bs + 3;
        assert!(!writes_in_items(&shared, bs));
    }

    fn check_dense(h: usize, kvh: usize, d: usize, bs: usize, t: usize, table: Vec<u32>) {
        let shape = KvCacheShape { num_layers: 1, num_heads: h, num_kv_heads: kvh, head_dim: d, block_size: bs, num_blocks: 8 };
        let mut attn = CpuPagedAttention::new(shape);
        let q = Tensor::randn(0f32, 1.0, (t, h, d), &Device::Cpu).unwrap();
        let k = Tensor::randn(0f32, 1.0, (t, kvh, d), &Device::Cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (t, kvh, d), &Device::Cpu).unwrap();
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
                let want = dense_attention(&q, &k, &v, i, head, h / kvh);
                for (c, want) in want.iter().enumerate() {
                    assert!((want - out[i][head][c]).abs() < 1e-5, "token {i} head {head}");
                }
            }
        }
    }

    /// Causal softmax attention of query token `i`, head `head`, over keys 0..=i (`group`
    /// query heads per KV head), computed densely: the reference for the paged kernel.
    fn dense_attention(q: &[Vec<Vec<f32>>], k: &[Vec<Vec<f32>>], v: &[Vec<Vec<f32>>], i: usize, head: usize, group: usize) -> Vec<f32> {
        let (kv, d) = (head / group, q[i][head].len());
        let s: Vec<f32> = (0..=i).map(|j| dot(&q[i][head], &k[j][kv]) / (d as f32).sqrt()).collect();
        let m = s.iter().copied().fold(f32::MIN, f32::max);
        let z: f32 = s.iter().map(|x| (x - m).exp()).sum();
        (0..d).map(|c| (0..=i).map(|j| (s[j] - m).exp() / z * v[j][kv][c]).sum()).collect()
    }
}
