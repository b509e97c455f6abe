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
