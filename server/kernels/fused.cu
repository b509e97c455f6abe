// Fused elementwise kernels for kandle-server's CUDA engine (compiled to PTX by build.rs).
// Each replaces several candle launches (and their intermediate tensors) by one.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

// x: [rows, 2 * inter] = [gate | up] (one GEMM against the concatenated weights);
// out: [rows, inter] = silu(gate) * up. Both products rounded as candle's separate silu and
// mul kernels round them, so f32 results are the same as the unfused ops.
template <typename T>
__device__ void silu_mul(const T* __restrict__ x, T* __restrict__ out, int64_t rows, int64_t inter) {
  const int64_t n = rows * inter;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / inter, c = i % inter;
    const float g = to_f(x[r * 2 * inter + c]);
    const T act = from_f<T>(g / (1.0f + expf(-g)));
    out[i] = from_f<T>(to_f(act) * to_f(x[r * 2 * inter + inter + c]));
  }
}

// Residual add + RMSNorm, one block per row: sum = x + delta (rounded to T, as candle's add),
// norm = sum * rsqrt(mean(sum²) + eps) * weight (candle's rmsnorm arithmetic).
template <typename T>
__device__ void add_rms_norm(const T* __restrict__ x, const T* __restrict__ delta, const T* __restrict__ weight,
                             T* __restrict__ sum, T* __restrict__ norm, int dim, float eps) {
  const int64_t base = (int64_t)blockIdx.x * dim;
  float sq = 0.f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    const T s = from_f<T>(to_f(x[base + c]) + to_f(delta[base + c]));
    sum[base + c] = s;
    const float f = to_f(s);
    sq += f * f;
  }
  __shared__ float partial[32];
#pragma unroll
  for (int off = 16; off > 0; off /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, off);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sq;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.f;
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (threadIdx.x == 0) partial[0] = v;
  }
  __syncthreads();
  const float scale = rsqrtf(partial[0] / dim + eps);
  // Each thread reads back the sums it wrote itself: no barrier needed for `sum`.
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    norm[base + c] = from_f<T>(scale * to_f(sum[base + c]) * to_f(weight[c]));
  }
}

// Splits the fused QKV projection `[tokens, (heads + 2 * kv_heads) * hd]` into contiguous
// q `[tokens, heads, hd]`, k and v `[tokens, kv_heads, hd]`, rotating q and k by each token's
// cos/sin `[tokens, hd / 2]` (pairs (i, i + hd/2), or (2i, 2i + 1) when interleaved). One
// block per token.
template <typename T>
__device__ void qkv_rope(const T* __restrict__ qkv, const T* __restrict__ cos, const T* __restrict__ sin,
                         T* __restrict__ q, T* __restrict__ k, T* __restrict__ v, int heads, int kv_heads, int hd,
                         int interleaved) {
  const int64_t t = blockIdx.x;
  const int half = hd / 2, width = (heads + 2 * kv_heads) * hd;
  const T* row = qkv + t * width;
  const int pairs = (heads + kv_heads) * half;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int head = p / half, i = p % half;
    const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    const float x1 = to_f(row[head * hd + a]), x2 = to_f(row[head * hd + b]);
    const float c = to_f(cos[t * half + i]), s = to_f(sin[t * half + i]);
    T* dst = head < heads ? q + (t * heads + head) * hd : k + (t * kv_heads + head - heads) * hd;
    dst[a] = from_f<T>(x1 * c - x2 * s);
    dst[b] = from_f<T>(x1 * s + x2 * c);
  }
  const int vw = kv_heads * hd;
  for (int i = threadIdx.x; i < vw; i += blockDim.x) v[t * vw + i] = row[(heads + kv_heads) * hd + i];
}

#define FUSED(T, NAME)                                                                          \
  extern "C" __global__ void silu_mul_##NAME(const T* x, T* out, int64_t rows, int64_t inter) { \
    silu_mul<T>(x, out, rows, inter);                                                           \
  }                                                                                             \
  extern "C" __global__ void add_rms_norm_##NAME(const T* x, const T* delta, const T* weight, T* sum, T* norm, \
                                                 int dim, float eps) {                          \
    add_rms_norm<T>(x, delta, weight, sum, norm, dim, eps);                                     \
  }                                                                                             \
  extern "C" __global__ void qkv_rope_##NAME(const T* qkv, const T* cos, const T* sin, T* q, T* k, T* v, \
                                             int heads, int kv_heads, int hd, int interleaved) { \
    qkv_rope<T>(qkv, cos, sin, q, k, v, heads, kv_heads, hd, interleaved);                      \
  }

FUSED(float, f32)
FUSED(__half, f16)
FUSED(__nv_bfloat16, bf16)
