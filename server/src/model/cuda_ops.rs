//! Fused elementwise ops on the GPU (`server/kernels/fused.cu`): one launch where candle
//! would run several and allocate the intermediates.

use super::cuda_attention::{suffix, view};
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Result, Storage, Tensor};
use std::sync::Arc;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));

/// The fused kernels, loaded for the model's dtype.
pub struct FusedOps {
    silu_mul: CudaFunction,
    add_rms_norm: CudaFunction,
    qkv_rope: CudaFunction,
    stream: Arc<CudaStream>,
    dev: CudaDevice,
    dtype: DType,
}

impl FusedOps {
    pub fn new(dev: &CudaDevice, dtype: DType) -> Result<Self> {
        let stream = dev.cuda_stream();
        let module = stream.context().load_module(Ptx::from_src(PTX)).w()?;
        let sfx = suffix(dtype)?;
        Ok(Self {
            silu_mul: module.load_function(&format!("silu_mul_{sfx}")).w()?,
            add_rms_norm: module.load_function(&format!("add_rms_norm_{sfx}")).w()?,
            qkv_rope: module.load_function(&format!("qkv_rope_{sfx}")).w()?,
            stream,
            dev: dev.clone(),
            dtype,
        })
    }

    fn check(&self, name: &str, t: &Tensor) -> Result<(usize, usize)> {
        if t.dtype() != self.dtype || !t.is_contiguous() {
            candle_core::bail!("{name}: expected a contiguous {:?} tensor, got {:?} {:?}", self.dtype, t.dtype(), t.shape())
        }
        t.dims2()
    }

    /// `silu(gate) * up` from the fused gate/up projection's `[rows, 2 * inter]` output.
    pub fn silu_mul(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, width) = self.check("silu_mul", x)?;
        match self.dtype {
            DType::F32 => self.silu_mul_t::<f32>(x, rows, width / 2),
            DType::F16 => self.silu_mul_t::<half::f16>(x, rows, width / 2),
            _ => self.silu_mul_t::<half::bf16>(x, rows, width / 2),
        }
    }

    /// `(x + delta, rms_norm(x + delta) * weight)`: the residual add and the next norm.
    pub fn add_rms_norm(&self, x: &Tensor, delta: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
        let (rows, dim) = self.check("add_rms_norm", x)?;
        if self.check("add_rms_norm", delta)? != (rows, dim) || weight.dims1()? != dim {
            candle_core::bail!("add_rms_norm: shapes {:?} {:?} {:?} do not match", x.shape(), delta.shape(), weight.shape())
        }
        match self.dtype {
            DType::F32 => self.add_rms_norm_t::<f32>(x, delta, weight, eps, rows, dim),
            DType::F16 => self.add_rms_norm_t::<half::f16>(x, delta, weight, eps, rows, dim),
            _ => self.add_rms_norm_t::<half::bf16>(x, delta, weight, eps, rows, dim),
        }
    }

    /// Splits the fused QKV projection into contiguous q `[n, heads, hd]`, k and v
    /// `[n, kv_heads, hd]`, rotating q and k by `cos`/`sin` (`[n, 1, hd / 2]`).
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope(&self, qkv: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize, kv_heads: usize, hd: usize,
        interleaved: bool) -> Result<(Tensor, Tensor, Tensor)> {
        let (n, width) = self.check("qkv_rope", qkv)?;
        for t in [cos, sin] {
            if t.dtype() != self.dtype || !t.is_contiguous() || t.elem_count() != n * hd / 2 {
                candle_core::bail!("qkv_rope: cos/sin {:?} {:?} do not fit {n} tokens of head_dim {hd}", t.dtype(), t.shape())
            }
        }
        if width != (heads + 2 * kv_heads) * hd {
            candle_core::bail!("qkv_rope: width {width} is not ({heads} + 2 * {kv_heads}) * {hd}")
        }
        match self.dtype {
            DType::F32 => self.qkv_rope_t::<f32>(qkv, cos, sin, n, [heads, kv_heads, hd], interleaved),
            DType::F16 => self.qkv_rope_t::<half::f16>(qkv, cos, sin, n, [heads, kv_heads, hd], interleaved),
            _ => self.qkv_rope_t::<half::bf16>(qkv, cos, sin, n, [heads, kv_heads, hd], interleaved),
        }
    }

    fn qkv_rope_t<T: CudaDType + DeviceRepr>(&self, qkv: &Tensor, cos: &Tensor, sin: &Tensor, n: usize,
        [heads, kv_heads, hd]: [usize; 3], interleaved: bool) -> Result<(Tensor, Tensor, Tensor)> {
        let (xs, xl) = qkv.storage_and_layout();
        let (cs, cl) = cos.storage_and_layout();
        let (ss, sl) = sin.storage_and_layout();
        let (xv, cv, sv) = (view::<T>(&xs, xl)?, view::<T>(&cs, cl)?, view::<T>(&ss, sl)?);
        let mut q = unsafe { self.dev.alloc::<T>(n * heads * hd) }?;
        let mut k = unsafe { self.dev.alloc::<T>(n * kv_heads * hd) }?;
        let mut v = unsafe { self.dev.alloc::<T>(n * kv_heads * hd) }?;
        let (h, kvh, d, il) = (heads as i32, kv_heads as i32, hd as i32, interleaved as i32);
        let mut b = self.stream.launch_builder(&self.qkv_rope);
        b.arg(&xv).arg(&cv).arg(&sv).arg(&mut q).arg(&mut k).arg(&mut v).arg(&h).arg(&kvh).arg(&d).arg(&il);
        let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }.w()?;
        drop((xv, cv, sv));
        drop((xs, cs, ss));
        let wrap = |s, heads: usize| self.wrap(s, (n, heads * hd)).reshape((n, heads, hd));
        Ok((wrap(q, heads)?, wrap(k, kv_heads)?, wrap(v, kv_heads)?))
    }

    fn wrap<T: CudaDType>(&self, slice: candle_core::cuda_backend::cudarc::driver::CudaSlice<T>, shape: (usize, usize)) -> Tensor {
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, self.dev.clone()));
        Tensor::from_storage(storage, shape, BackpropOp::none(), false)
    }

    fn silu_mul_t<T: CudaDType + DeviceRepr>(&self, x: &Tensor, rows: usize, inter: usize) -> Result<Tensor> {
        let (xs, xl) = x.storage_and_layout();
        let xv = view::<T>(&xs, xl)?;
        let n = rows * inter;
        let mut out = unsafe { self.dev.alloc::<T>(n) }?;
        let (rows_i, inter_i) = (rows as i64, inter as i64);
        let mut b = self.stream.launch_builder(&self.silu_mul);
        b.arg(&xv).arg(&mut out).arg(&rows_i).arg(&inter_i);
        let blocks = n.div_ceil(256).min(65_535) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }.w()?;
        drop(xv);
        drop(xs);
        Ok(self.wrap(out, (rows, inter)))
    }

    fn add_rms_norm_t<T: CudaDType + DeviceRepr>(&self, x: &Tensor, delta: &Tensor, weight: &Tensor, eps: f32,
        rows: usize, dim: usize) -> Result<(Tensor, Tensor)> {
        let (xs, xl) = x.storage_and_layout();
        let (ds, dl) = delta.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (xv, dv, wv) = (view::<T>(&xs, xl)?, view::<T>(&ds, dl)?, view::<T>(&ws, wl)?);
        let mut sum = unsafe { self.dev.alloc::<T>(rows * dim) }?;
        let mut norm = unsafe { self.dev.alloc::<T>(rows * dim) }?;
        let dim_i = dim as i32;
        let mut b = self.stream.launch_builder(&self.add_rms_norm);
        b.arg(&xv).arg(&dv).arg(&wv).arg(&mut sum).arg(&mut norm).arg(&dim_i).arg(&eps);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }.w()?;
        drop((xv, dv, wv));
        drop((xs, ds, ws));
        Ok((self.wrap(sum, (rows, dim)), self.wrap(norm, (rows, dim))))
    }
}
