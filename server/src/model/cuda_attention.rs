//! [`PagedAttention`] on NVIDIA GPUs: K/V blocks live in device memory in the model's dtype
//! and are written and read by our own kernels (`server/kernels/paged_attention.cu`,
//! compiled to PTX by build.rs). Per layer: one launch writes the step's K/V into their
//! slots, one attends the decode tokens (a block per token and head), one attends prefill
//! chunks in tiles that share each staged K/V tile across query rows (on tensor cores for
//! f16/bf16). No score matrix is
//! ever materialised.

use super::attention::{AttentionMetadata, KvCacheShape, PagedAttention};
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig,
    PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use std::sync::Arc;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Result, Storage, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx"));
const THREADS: u32 = 256;

/// Query rows one prefill block serves: 4 warps × 8 rows in the CUDA-core kernel (f32),
/// 4 warps × 16 rows in the tensor-core one (f16, bf16).
const PREFILL_ROWS: usize = 32;
const MMA_PREFILL_ROWS: usize = 64;

/// Dynamic shared memory of `attend_tiled` (its layout comment).
fn tiled_prefill_smem(hd: usize) -> usize {
    4 * (32 * (hd + 4) + 32 * hd + PREFILL_ROWS * (hd + 32))
}

/// A prefill kernel, allowed the dynamic shared memory it needs.
fn prefill_kernel(f: CudaFunction, smem: usize) -> Result<(CudaFunction, u32)> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum as Attr;
    f.set_attribute(Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32).w()?;
    Ok((f, smem as u32))
}

/// Dynamic shared memory of `attend_mma` (its layout comment): Q, K and V tiles in the model's
/// 16-bit type with 8 elements of row padding, f32 scores and outputs, 16-bit probabilities.
fn mma_prefill_smem(hd: usize) -> usize {
    let (rows, tk) = (MMA_PREFILL_ROWS, 64);
    rows * (hd + 8) * 2 + 2 * tk * (hd + 8) * 2 + rows * (tk + 4) * 4 + rows * (tk + 8) * 2 + rows * (hd + 4) * 4
}

/// This step's metadata on the device: uploaded by layer 0, reused by the others.
struct StepMeta {
    slots: CudaSlice<i64>,
    block_tables: CudaSlice<u32>,
    table_offsets: CudaSlice<u32>,
    ctx_lens: CudaSlice<u32>,
    /// Tokens the per-token (decode) kernel handles.
    decode_tokens: CudaSlice<u32>,
    num_decode: usize,
    /// Prefill tiles: (first token, tokens, block-table offset, context of the first token).
    tiles: CudaSlice<u32>,
    num_tiles: usize,
    /// The same prefill in the CUDA-core kernel's tiles (only with `KANDLE_PREFILL_CHECK`).
    check_tiles: CudaSlice<u32>,
    num_check_tiles: usize,
}

pub struct CudaPagedAttention {
    shape: KvCacheShape,
    dtype: DType,
    dev: CudaDevice,
    stream: Arc<CudaStream>,
    write_kv: CudaFunction,
    attend: CudaFunction,
    /// The tiled prefill kernel, where head_dim has one (64, 128) and a tile of query rows
    /// holds whole GQA groups: (kernel, shared memory bytes, query rows per tile).
    prefill: Option<(CudaFunction, u32, usize)>,
    copy: CudaFunction,
    /// Per layer `[num_blocks * block_size, kv_heads, head_dim]` of `dtype`, as raw bytes.
    k: Vec<CudaSlice<u8>>,
    v: Vec<CudaSlice<u8>>,
    meta: Option<StepMeta>,
    /// `KANDLE_PREFILL_CHECK=1`: the CUDA-core prefill kernel, run beside the tensor-core one
    /// on every prefill-only step to print how far their outputs are apart (a diagnostic).
    check: Option<(CudaFunction, u32)>,
}

pub(crate) fn suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => candle_core::bail!("paged attention (cuda) does not support {other:?}"),
    })
}

impl CudaPagedAttention {
    /// Allocates the whole cache up front (like vLLM), so running out of memory happens at
    /// startup, not under load.
    pub fn new(shape: KvCacheShape, dtype: DType, dev: &CudaDevice) -> Result<Self> {
        suffix(dtype)?;
        if ![64, 128, 256].contains(&shape.head_dim) {
            candle_core::bail!("paged attention (cuda) supports head_dim 64, 128 and 256, not {}", shape.head_dim)
        }
        let bytes = shape.num_blocks * shape.block_size * shape.num_kv_heads * shape.head_dim * dtype.size_in_bytes();
        let alloc = || (0..shape.num_layers).map(|_| dev.alloc_zeros::<u8>(bytes)).collect::<Result<Vec<_>>>();
        let (k, v) = (alloc()?, alloc()?);
        let stream = dev.cuda_stream();
        let module = stream.context().load_module(Ptx::from_src(PTX)).w()?;
        let sfx = suffix(dtype)?;
        let func = |name: String| module.load_function(&name).w();
        let group = shape.num_heads / shape.num_kv_heads;
        let hd = shape.head_dim;
        // Tensor cores for 16-bit models; `KANDLE_PREFILL_KERNEL=tiled` keeps the CUDA-core
        // kernel (for comparisons).
        let mma = dtype != DType::F32 && std::env::var("KANDLE_PREFILL_KERNEL").map_or(true, |k| k != "tiled");
        let rows = if mma { MMA_PREFILL_ROWS } else { PREFILL_ROWS };
        let prefill = if ![64, 128].contains(&hd) || group > rows {
            None
        } else {
            let (f, smem) = if mma {
                prefill_kernel(func(format!("paged_prefill_mma_{sfx}_hd{hd}"))?, mma_prefill_smem(hd))?
            } else {
                prefill_kernel(func(format!("paged_prefill_{sfx}_hd{hd}"))?, tiled_prefill_smem(hd))?
            };
            Some((f, smem, rows))
        };
        let check = match (&prefill, std::env::var_os("KANDLE_PREFILL_CHECK")) {
            (Some(_), Some(_)) if mma && group <= PREFILL_ROWS => {
                Some(prefill_kernel(func(format!("paged_prefill_{sfx}_hd{hd}"))?, tiled_prefill_smem(hd))?)
            }
            _ => None,
        };
        Ok(Self {
            prefill,
            write_kv: func(format!("write_kv_{sfx}"))?,
            attend: func(format!("paged_attention_{sfx}_hd{}", shape.head_dim))?,
            copy: func(format!("copy_blocks_{sfx}"))?,
            shape, dtype, dev: dev.clone(), stream, k, v, meta: None, check,
        })
    }

    fn upload(&self, meta: &AttentionMetadata) -> Result<StepMeta> {
        let mut block_tables = vec![];
        let (mut table_offsets, mut ctx_lens) = (vec![], vec![]);
        let (mut decode_tokens, mut tiles, mut check_tiles) = (vec![], vec![], vec![]);
        let group = self.shape.num_heads / self.shape.num_kv_heads;
        let per_tile = self.prefill.as_ref().map_or(1, |(_, _, rows)| (rows / group).max(1));
        for seq in &meta.seqs {
            let offset = block_tables.len() as u32;
            block_tables.extend_from_slice(&seq.block_table);
            // Causal: query i of this chunk sees the keys up to and including itself.
            let first_ctx = seq.context_len - seq.query_len + 1;
            for i in 0..seq.query_len {
                table_offsets.push(offset);
                ctx_lens.push((first_ctx + i) as u32);
            }
            if seq.query_len > 1 && self.prefill.is_some() {
                for i in (0..seq.query_len).step_by(per_tile) {
                    let n = per_tile.min(seq.query_len - i);
                    tiles.extend([(seq.query_start + i) as u32, n as u32, offset, (first_ctx + i) as u32]);
                }
                if self.check.is_some() {
                    let per = (PREFILL_ROWS / group).max(1);
                    for i in (0..seq.query_len).step_by(per) {
                        let n = per.min(seq.query_len - i);
                        check_tiles.extend([(seq.query_start + i) as u32, n as u32, offset, (first_ctx + i) as u32]);
                    }
                }
            } else {
                decode_tokens.extend((seq.query_start..seq.query_start + seq.query_len).map(|t| t as u32));
            }
        }
        let (num_decode, num_tiles, num_check_tiles) = (decode_tokens.len(), tiles.len() / 4, check_tiles.len() / 4);
        // Zero-length uploads are not allowed: pad the lists that are empty.
        for v in [&mut block_tables, &mut decode_tokens, &mut tiles, &mut check_tiles] {
            if v.is_empty() {
                v.push(0);
            }
        }
        let slots: Vec<i64> = meta.slot_mapping.iter().map(|&s| s as i64).collect();
        let stream = &self.stream;
        Ok(StepMeta {
            slots: stream.clone_htod(&slots).w()?,
            block_tables: stream.clone_htod(&block_tables).w()?,
            table_offsets: stream.clone_htod(&table_offsets).w()?,
            ctx_lens: stream.clone_htod(&ctx_lens).w()?,
            decode_tokens: stream.clone_htod(&decode_tokens).w()?,
            num_decode,
            tiles: stream.clone_htod(&tiles).w()?,
            num_tiles,
            check_tiles: stream.clone_htod(&check_tiles).w()?,
            num_check_tiles,
        })
    }

    fn forward_t<T: CudaDType + DeviceRepr>(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor, n_tokens: usize)
        -> Result<Tensor> {
        let KvCacheShape { num_heads, num_kv_heads, head_dim, block_size, .. } = self.shape;
        let meta = self.meta.as_ref().expect("uploaded at layer 0");
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (qd, kd, vd) = (view::<T>(&qs, ql)?, view::<T>(&ks, kl)?, view::<T>(&vs, vl)?);
        let row = (num_kv_heads * head_dim) as i32;

        let mut b = self.stream.launch_builder(&self.write_kv);
        b.arg(&kd).arg(&vd).arg(&mut self.k[layer]).arg(&mut self.v[layer]).arg(&meta.slots).arg(&row);
        let cfg = LaunchConfig { grid_dim: (n_tokens as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }.w()?;

        let mut out = unsafe { self.dev.alloc::<T>(n_tokens * num_heads * head_dim) }?;
        let (nh, nkv, bs) = (num_heads as i32, num_kv_heads as i32, block_size as i32);
        let scale = 1.0f32 / (head_dim as f32).sqrt();
        if meta.num_decode > 0 {
            let mut b = self.stream.launch_builder(&self.attend);
            b.arg(&mut out).arg(&qd).arg(&self.k[layer]).arg(&self.v[layer]).arg(&meta.block_tables)
                .arg(&meta.table_offsets).arg(&meta.ctx_lens).arg(&meta.decode_tokens).arg(&nh).arg(&nkv).arg(&bs)
                .arg(&scale);
            let cfg = LaunchConfig { grid_dim: (num_heads as u32, meta.num_decode as u32, 1),
                block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
            unsafe { b.launch(cfg) }.w()?;
        }
        // A prefill kernel (128 threads, a block per kv head and tile) over one list of tiles.
        let launch_prefill = |f: &CudaFunction, smem: u32, out: &mut CudaSlice<T>, tiles: &CudaSlice<u32>, num_tiles: usize| {
            let mut b = self.stream.launch_builder(f);
            b.arg(out).arg(&qd).arg(&self.k[layer]).arg(&self.v[layer]).arg(&meta.block_tables)
                .arg(tiles).arg(&nh).arg(&nkv).arg(&bs).arg(&scale);
            let cfg = LaunchConfig { grid_dim: (num_kv_heads as u32, num_tiles as u32, 1),
                block_dim: (128, 1, 1), shared_mem_bytes: smem };
            unsafe { b.launch(cfg) }.w().map(|_| ())
        };
        if let (Some((prefill, smem, _)), true) = (&self.prefill, meta.num_tiles > 0) {
            launch_prefill(prefill, *smem, &mut out, &meta.tiles, meta.num_tiles)?;
        }
        let reference = match (&self.check, meta.num_decode == 0 && meta.num_check_tiles > 0) {
            (Some((f, smem)), true) => {
                // Every row is written: a prefill-only step has every token in a tile.
                let mut other = unsafe { self.dev.alloc::<T>(n_tokens * num_heads * head_dim) }?;
                launch_prefill(f, *smem, &mut other, &meta.check_tiles, meta.num_check_tiles)?;
                Some(other)
            }
            _ => None,
        };
        drop((qd, kd, vd));
        drop((qs, ks, vs));
        let wrap = |s: CudaSlice<T>| {
            let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(s, self.dev.clone()));
            Tensor::from_storage(storage, (n_tokens, num_heads * head_dim), BackpropOp::none(), false)
        };
        let out = wrap(out);
        if let Some(other) = reference {
            let diff = (&out - wrap(other))?.abs()?.to_dtype(DType::F32)?;
            let (max_diff, mean_diff) = (diff.max_all()?.to_scalar::<f32>()?, diff.mean_all()?.to_scalar::<f32>()?);
            let max_out = out.abs()?.to_dtype(DType::F32)?.max_all()?.to_scalar::<f32>()?;
            eprintln!("prefill check layer {layer}: {n_tokens} tokens, |tensor-core - CUDA-core| max {max_diff:.5} mean {mean_diff:.6}, max |out| {max_out:.4}");
        }
        Ok(out)
    }
}

/// A contiguous CUDA tensor's elements as a typed view (no copy).
pub(crate) fn view<'a, T: CudaDType>(s: &'a Storage, l: &candle_core::Layout) -> Result<CudaView<'a, T>> {
    let Storage::Cuda(cs) = s else { candle_core::bail!("a CUDA kernel got a host tensor") };
    if !l.is_contiguous() {
        candle_core::bail!("a CUDA kernel needs contiguous inputs")
    }
    Ok(cs.as_cuda_slice::<T>()?.slice(l.start_offset()..))
}

impl PagedAttention for CudaPagedAttention {
    fn forward(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor, meta: &AttentionMetadata)
        -> Result<Tensor> {
        let n_tokens = meta.slot_mapping.len();
        if layer == 0 || self.meta.is_none() {
            self.meta = Some(self.upload(meta)?);
        }
        for (name, t) in [("q", q), ("k", k), ("v", v)] {
            if t.dtype() != self.dtype || t.dim(0)? != n_tokens {
                candle_core::bail!("paged attention (cuda): {name} is {:?} {:?}, expected {:?} with {n_tokens} rows",
                    t.dtype(), t.shape(), self.dtype)
            }
        }
        match self.dtype {
            DType::F32 => self.forward_t::<f32>(layer, q, k, v, n_tokens),
            DType::F16 => self.forward_t::<half::f16>(layer, q, k, v, n_tokens),
            _ => self.forward_t::<half::bf16>(layer, q, k, v, n_tokens),
        }
    }

    fn copy_blocks(&mut self, copies: &[(u32, u32)]) -> Result<()> {
        if copies.is_empty() {
            return Ok(());
        }
        let KvCacheShape { num_kv_heads, head_dim, block_size, .. } = self.shape;
        let pairs: Vec<u32> = copies.iter().flat_map(|&(s, d)| [s, d]).collect();
        let pairs = self.stream.clone_htod(&pairs).w()?;
        let block_elems = (block_size * num_kv_heads * head_dim) as i64;
        let cfg = LaunchConfig { grid_dim: (copies.len() as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        for cache in self.k.iter_mut().chain(self.v.iter_mut()) {
            let mut b = self.stream.launch_builder(&self.copy);
            b.arg(cache).arg(&pairs).arg(&block_elems);
            unsafe { b.launch(cfg) }.w()?;
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
