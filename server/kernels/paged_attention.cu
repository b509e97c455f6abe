// Paged attention for kandle-server's CUDA engine (compiled to PTX by build.rs with the
// feature `cuda`). K/V live in blocks of `block_size` slots; a slot holds one token's
// [kv_heads, head_dim] row. One launch handles a whole flattened batch: prefill chunks and
// decodes alike, each query attending causally to its own sequence's first `ctx_len` keys.
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

// k, v: [tokens, row]; caches: [slots, row]; one block per token.
template <typename T>
__device__ void write_kv(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ k_cache,
                         T* __restrict__ v_cache, const int64_t* __restrict__ slots, int row) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  for (int i = threadIdx.x; i < row; i += blockDim.x) {
    k_cache[slot * row + i] = k[t * row + i];
    v_cache[slot * row + i] = v[t * row + i];
  }
}

// One thread block per (head, query token). Each warp walks every WARPS-th key with an
// online softmax (the score matrix is never stored); lanes split head_dim, so a warp reads
// one key row in a single coalesced access. Warps merge their partial results at the end.
template <typename T, int HD, int WARPS>
__device__ void attend(T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k_cache,
                       const T* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                       const uint32_t* __restrict__ table_offsets, const uint32_t* __restrict__ ctx_lens,
                       int num_heads, int num_kv_heads, int block_size, float scale) {
  constexpr int EPL = HD / 32;  // head_dim elements per lane
  const int h = blockIdx.x;
  const int64_t t = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kvh = h / (num_heads / num_kv_heads);
  const int ctx = ctx_lens[t];
  const uint32_t* table = block_tables + table_offsets[t];
  const int64_t row = (int64_t)num_kv_heads * HD;

  float qv[EPL];
  const T* qp = q + (t * num_heads + h) * HD + lane * EPL;
#pragma unroll
  for (int e = 0; e < EPL; e++) qv[e] = to_f(qp[e]) * scale;

  float m = -INFINITY, l = 0.f, acc[EPL];
#pragma unroll
  for (int e = 0; e < EPL; e++) acc[e] = 0.f;

  for (int j = warp; j < ctx; j += WARPS) {
    const int64_t slot = (int64_t)table[j / block_size] * block_size + j % block_size;
    const int64_t base = slot * row + kvh * HD + lane * EPL;
    float kv[EPL], vv[EPL];
#pragma unroll
    for (int e = 0; e < EPL; e++) { kv[e] = to_f(k_cache[base + e]); vv[e] = to_f(v_cache[base + e]); }
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < EPL; e++) s += qv[e] * kv[e];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    const float m_new = fmaxf(m, s);
    const float corr = __expf(m - m_new);
    const float p = __expf(s - m_new);
    l = l * corr + p;
#pragma unroll
    for (int e = 0; e < EPL; e++) acc[e] = acc[e] * corr + p * vv[e];
    m = m_new;
  }

  __shared__ float s_m[WARPS], s_l[WARPS];
  __shared__ float s_acc[WARPS][HD];
  if (lane == 0) { s_m[warp] = m; s_l[warp] = l; }
#pragma unroll
  for (int e = 0; e < EPL; e++) s_acc[warp][lane * EPL + e] = acc[e];
  __syncthreads();
  if (warp != 0) return;
  float mx = -INFINITY;
#pragma unroll
  for (int w = 0; w < WARPS; w++) mx = fmaxf(mx, s_m[w]);
  float total = 0.f, o[EPL];
#pragma unroll
  for (int e = 0; e < EPL; e++) o[e] = 0.f;
  for (int w = 0; w < WARPS; w++) {
    if (s_m[w] == -INFINITY) continue;  // a warp that saw no key
    const float c = __expf(s_m[w] - mx);
    total += s_l[w] * c;
#pragma unroll
    for (int e = 0; e < EPL; e++) o[e] += s_acc[w][lane * EPL + e] * c;
  }
  T* op = out + (t * num_heads + h) * HD + lane * EPL;
#pragma unroll
  for (int e = 0; e < EPL; e++) op[e] = from_f<T>(o[e] / total);
}

// Copies whole blocks (src, dst pairs) of one layer's cache: copy-on-write of shared blocks.
template <typename T>
__device__ void copy_blocks(T* __restrict__ cache, const uint32_t* __restrict__ pairs, int64_t block_elems) {
  const int64_t src = pairs[2 * blockIdx.x] * block_elems, dst = pairs[2 * blockIdx.x + 1] * block_elems;
  for (int64_t i = threadIdx.x; i < block_elems; i += blockDim.x) cache[dst + i] = cache[src + i];
}

#define ATTEND(T, NAME, HD)                                                                                    \
  extern "C" __global__ void __launch_bounds__(256) paged_attention_##NAME##_hd##HD(                          \
      T* out, const T* q, const T* k_cache, const T* v_cache, const uint32_t* block_tables,                   \
      const uint32_t* table_offsets, const uint32_t* ctx_lens, int num_heads, int num_kv_heads, int block_size, \
      float scale) {                                                                                           \
    attend<T, HD, 8>(out, q, k_cache, v_cache, block_tables, table_offsets, ctx_lens, num_heads, num_kv_heads,  \
                     block_size, scale);                                                                       \
  }

#define KERNELS(T, NAME)                                                                                     \
  extern "C" __global__ void write_kv_##NAME(const T* k, const T* v, T* k_cache, T* v_cache,                 \
                                             const int64_t* slots, int row) {                                \
    write_kv<T>(k, v, k_cache, v_cache, slots, row);                                                         \
  }                                                                                                          \
  extern "C" __global__ void copy_blocks_##NAME(T* cache, const uint32_t* pairs, int64_t block_elems) {      \
    copy_blocks<T>(cache, pairs, block_elems);                                                               \
  }                                                                                                          \
  ATTEND(T, NAME, 64)                                                                                        \
  ATTEND(T, NAME, 128)                                                                                       \
  ATTEND(T, NAME, 256)

KERNELS(float, f32)
KERNELS(__half, f16)
KERNELS(__nv_bfloat16, bf16)
