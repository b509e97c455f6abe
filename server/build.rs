//! With the `cuda` feature, compiles our CUDA kernels to PTX with the toolkit's nvcc
//! (`NVCC`, as exported by ../shared/gpu/build-cuda.sh) for `CUDA_COMPUTE_CAP` (default 90).
//! Without it nothing happens, so plain builds and CI never need a CUDA toolkit.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for kernel in ["paged_attention", "fused"] {
        let src = format!("kernels/{kernel}.cu");
        let ptx = out.join(format!("{kernel}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=sm_{cap}"), "-o"])
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("running {nvcc} (set NVCC, see ../shared/gpu/README.md): {e}"));
        assert!(status.success(), "{nvcc} failed on {src}");
    }
}
