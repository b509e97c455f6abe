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

/// `silu(gate) * up` from the output of the fused gate/up projection `[rows, 2 * inter]`.
pub struct SiluMul {
    func: CudaFunction,
    stream: Arc<CudaStream>,
    dev: CudaDevice,
    dtype: DType,
}

impl SiluMul {
    pub fn new(dev: &CudaDevice, dtype: DType) -> Result<Self> {
        let stream = dev.cuda_stream();
        let module = stream.context().load_module(Ptx::from_src(PTX)).w()?;
        let func = module.load_function(&format!("silu_mul_{}", suffix(dtype)?)).w()?;
        Ok(Self { func, stream, dev: dev.clone(), dtype })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, width) = x.dims2()?;
        if x.dtype() != self.dtype || width % 2 != 0 {
            candle_core::bail!("silu_mul: expected [rows, 2 * inter] of {:?}, got {:?} {:?}", self.dtype, x.dtype(), x.shape())
        }
        match self.dtype {
            DType::F32 => self.run::<f32>(x, rows, width / 2),
            DType::F16 => self.run::<half::f16>(x, rows, width / 2),
            _ => self.run::<half::bf16>(x, rows, width / 2),
        }
    }

    fn run<T: CudaDType + DeviceRepr>(&self, x: &Tensor, rows: usize, inter: usize) -> Result<Tensor> {
        let (xs, xl) = x.storage_and_layout();
        let xv = view::<T>(&xs, xl)?;
        let n = rows * inter;
        let mut out = unsafe { self.dev.alloc::<T>(n) }?;
        let (rows_i, inter_i) = (rows as i64, inter as i64);
        let mut b = self.stream.launch_builder(&self.func);
        b.arg(&xv).arg(&mut out).arg(&rows_i).arg(&inter_i);
        let blocks = n.div_ceil(256).min(65_535) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }.w()?;
        drop(xv);
        drop(xs);
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(out, self.dev.clone()));
        Ok(Tensor::from_storage(storage, (rows, inter), BackpropOp::none(), false))
    }
}
