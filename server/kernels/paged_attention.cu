// Paged attention for kandle-server's CUDA engine (compiled to PTX by build.rs with the
// feature `cuda`). K/V live in blocks of `block_size` slots; a slot holds one token's
// [kv_heads, head_dim] row. One launch handles a whole flattened batch: prefill chunks and
// decodes alike, each query attending causally to its own sequence's first `ctx_len` keys.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
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

// Decode kernel. One thread block per (head, query token in `tokens`). Each warp walks every WARPS-th key with an
// online softmax (the score matrix is never stored); lanes split head_dim, so a warp reads
// one key row in a single coalesced access. Warps merge their partial results at the end.
template <typename T, int HD, int WARPS>
__device__ void attend(T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k_cache,
                       const T* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                       const uint32_t* __restrict__ table_offsets, const uint32_t* __restrict__ ctx_lens,
                       const uint32_t* __restrict__ tokens, int num_heads, int num_kv_heads, int block_size,
                       float scale) {
  constexpr int EPL = HD / 32;  // head_dim elements per lane
  const int h = blockIdx.x;
  const int64_t t = tokens[blockIdx.y];
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

  // Four keys per iteration: their loads are all in flight before the first is used.
  constexpr int U = 4;
  for (int j0 = warp * U; j0 < ctx; j0 += WARPS * U) {
    float s[U], vv[U][EPL];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int j = min(j0 + u, ctx - 1);
      const int64_t slot = (int64_t)table[j / block_size] * block_size + j % block_size;
      const int64_t base = slot * row + kvh * HD + lane * EPL;
      s[u] = 0.f;
#pragma unroll
      for (int e = 0; e < EPL; e++) { s[u] += qv[e] * to_f(k_cache[base + e]); vv[u][e] = to_f(v_cache[base + e]); }
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
#pragma unroll
      for (int u = 0; u < U; u++) s[u] += __shfl_xor_sync(0xffffffffu, s[u], off);
    }
    float m_new = m;
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (j0 + u >= ctx) s[u] = -INFINITY;
      m_new = fmaxf(m_new, s[u]);
    }
    const float corr = __expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int e = 0; e < EPL; e++) acc[e] *= corr;
#pragma unroll
    for (int u = 0; u < U; u++) {
      const float p = __expf(s[u] - m_new);
      l += p;
#pragma unroll
      for (int e = 0; e < EPL; e++) acc[e] += p * vv[u][e];
    }
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

// Prefill kernel: one thread block per (kv head, tile of consecutive query tokens of one
// sequence). The block's rows are (token, head of the kv group) pairs, 8 per warp, so every
// K/V tile staged in shared memory serves up to 32 query rows (the query heads of a GQA
// group share their keys). Lane j scores key j of a 32-key tile against all 8 rows of its
// warp at once (one K read feeds 8 rows); P goes through shared memory so each lane then
// accumulates its own head_dim slice of P·V for 8 rows per V read. Online softmax, causal.
template <typename T, int HD>
__device__ void attend_tiled(T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k_cache,
                             const T* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                             const uint32_t* __restrict__ tiles, int num_heads, int num_kv_heads, int block_size,
                             float scale) {
  constexpr int WARPS = 4, ROWS = 8, TK = 32, EPL = HD / 32, KP = HD + 4;
  // Dynamic shared memory, sized by the host: 4 * (TK * KP + TK * HD + WARPS * ROWS * (HD + TK)) bytes.
  extern __shared__ float4 smem4[];
  float* s_k = reinterpret_cast<float*>(smem4);  // [TK][KP]: float4 rows, conflict-free per quarter warp
  float* s_v = s_k + TK * KP;                     // [TK][HD]
  float* s_q = s_v + TK * HD;                     // [WARPS * ROWS][HD], pre-scaled
  float* s_p = s_q + WARPS * ROWS * HD;           // [WARPS * ROWS][TK]
  const int kvh = blockIdx.x;
  const uint32_t* tile = tiles + 4 * blockIdx.y;  // first token, tokens, table offset, ctx of first
  const int64_t t0 = tile[0];
  const int n_tok = tile[1];
  const uint32_t* table = block_tables + tile[2];
  const int ctx0 = tile[3];
  const int group = num_heads / num_kv_heads;
  const int rows = n_tok * group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_stride = (int64_t)num_kv_heads * HD;

  for (int i = threadIdx.x; i < WARPS * ROWS * HD; i += blockDim.x) {
    const int r = i / HD, d = i % HD;
    const int h = kvh * group + r % group;
    s_q[i] = r < rows ? to_f(q[((t0 + r / group) * num_heads + h) * HD + d]) * scale : 0.f;
  }
  float m[ROWS], l[ROWS], acc[ROWS][EPL];
#pragma unroll
  for (int r = 0; r < ROWS; r++) {
    m[r] = -INFINITY; l[r] = 0.f;
#pragma unroll
    for (int e = 0; e < EPL; e++) acc[r][e] = 0.f;
  }
  const int ctx_max = ctx0 + n_tok - 1;  // keys the tile's last token sees
  const int last_row = min(rows, (warp + 1) * ROWS) - 1;
  const int warp_ctx = last_row >= warp * ROWS ? ctx0 + last_row / group : 0;  // keys this warp needs
  for (int k0 = 0; k0 < ctx_max; k0 += TK) {
    __syncthreads();  // the previous tile is consumed (and s_q is written, the first time)
    {
      // Staging: thread → (key, quarter of head_dim); one block-table lookup and
      // independent 16-byte loads, all in flight at once.
      constexpr int PER = HD / 4, VEC = 16 / sizeof(T), NV = PER / VEC;
      const int j = threadIdx.x / 4, d0 = (threadIdx.x % 4) * PER, key = k0 + j;
      uint4 kraw[NV], vraw[NV];
      if (key < ctx_max) {
        const int64_t slot = (int64_t)table[key / block_size] * block_size + key % block_size;
        const uint4* kp = reinterpret_cast<const uint4*>(k_cache + slot * row_stride + kvh * HD + d0);
        const uint4* vp = reinterpret_cast<const uint4*>(v_cache + slot * row_stride + kvh * HD + d0);
#pragma unroll
        for (int c = 0; c < NV; c++) { kraw[c] = kp[c]; vraw[c] = vp[c]; }
      } else {
#pragma unroll
        for (int c = 0; c < NV; c++) { kraw[c] = make_uint4(0, 0, 0, 0); vraw[c] = make_uint4(0, 0, 0, 0); }
      }
#pragma unroll
      for (int c = 0; c < NV; c++) {
        const T* ke = reinterpret_cast<const T*>(&kraw[c]);
        const T* ve = reinterpret_cast<const T*>(&vraw[c]);
#pragma unroll
        for (int x = 0; x < VEC; x++) {
          s_k[j * KP + d0 + c * VEC + x] = to_f(ke[x]);
          s_v[j * HD + d0 + c * VEC + x] = to_f(ve[x]);
        }
      }
    }
    __syncthreads();
    if (k0 >= warp_ctx) continue;  // causal: nothing in this tile for this warp's rows
    float s[ROWS];
#pragma unroll
    for (int rr = 0; rr < ROWS; rr++) s[rr] = 0.f;
    const float4* kr = reinterpret_cast<const float4*>(s_k + lane * KP);
    const float4* qr = reinterpret_cast<const float4*>(s_q + warp * ROWS * HD);
#pragma unroll 4
    for (int d4 = 0; d4 < HD / 4; d4++) {
      const float4 k = kr[d4];
#pragma unroll
      for (int rr = 0; rr < ROWS; rr++) {
        const float4 x = qr[rr * (HD / 4) + d4];
        s[rr] += x.x * k.x + x.y * k.y + x.z * k.z + x.w * k.w;
      }
    }
#pragma unroll
    for (int rr = 0; rr < ROWS; rr++) {
      const int r = warp * ROWS + rr;
      const int ctx = ctx0 + r / group;  // this row sees keys < ctx
      const float sc = (r < rows && k0 + lane < ctx) ? s[rr] : -INFINITY;
      float mx = sc;
#pragma unroll
      for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_new = fmaxf(m[rr], mx);
      const float corr = m_new == -INFINITY ? 1.f : __expf(m[rr] - m_new);
      const float p = sc == -INFINITY ? 0.f : __expf(sc - m_new);
      float psum = p;
#pragma unroll
      for (int off = 16; off > 0; off /= 2) psum += __shfl_xor_sync(0xffffffffu, psum, off);
      l[rr] = l[rr] * corr + psum;
      m[rr] = m_new;
#pragma unroll
      for (int e = 0; e < EPL; e++) acc[rr][e] *= corr;
      s_p[r * TK + lane] = p;
    }
    __syncwarp();
    const float4* pr4 = reinterpret_cast<const float4*>(s_p + warp * ROWS * TK);
#pragma unroll 2
    for (int j4 = 0; j4 < TK / 4; j4++) {
      float4 pr[ROWS];
#pragma unroll
      for (int rr = 0; rr < ROWS; rr++) pr[rr] = pr4[rr * (TK / 4) + j4];
#pragma unroll
      for (int jj = 0; jj < 4; jj++) {
        float v[EPL];
#pragma unroll
        for (int e = 0; e < EPL; e++) v[e] = s_v[(j4 * 4 + jj) * HD + lane + 32 * e];
#pragma unroll
        for (int rr = 0; rr < ROWS; rr++) {
          const float pj = jj == 0 ? pr[rr].x : jj == 1 ? pr[rr].y : jj == 2 ? pr[rr].z : pr[rr].w;
#pragma unroll
          for (int e = 0; e < EPL; e++) acc[rr][e] += pj * v[e];
        }
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < ROWS; rr++) {
    const int r = warp * ROWS + rr;
    if (r >= rows) break;
    const int h = kvh * group + r % group;
    T* op = out + ((t0 + r / group) * num_heads + h) * HD;
#pragma unroll
    for (int e = 0; e < EPL; e++) op[lane + 32 * e] = from_f<T>(acc[rr][e] / l[rr]);
  }
}

// Tensor-core prefill (f16/bf16): the same tiles as `attend_tiled`, 64 query rows per block
// (16 per warp), 64-key K/V tiles staged in shared memory as they are stored (no
// conversion). S = Q·Kᵀ and O += P·V run as 16×16×16 WMMA products with f32 accumulators;
// the online softmax works on S in shared memory (two lanes per row), and O lives in shared
// memory so each tile can rescale its rows before accumulating. No score matrix in memory.
template <typename T, int HD>
__device__ void attend_mma(T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k_cache,
                           const T* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                           const uint32_t* __restrict__ tiles, int num_heads, int num_kv_heads, int block_size,
                           float scale) {
  using namespace nvcuda;
  constexpr int WARPS = 4, R = 16, TK = 64, HP = HD + 8, SP = TK + 4, PP = TK + 8, OP = HD + 4, CH = HD / 8;
  // Dynamic shared memory (host: mma_prefill_smem): every region a multiple of 32 bytes.
  extern __shared__ float4 smem4[];
  T* s_q = reinterpret_cast<T*>(smem4);                          // [WARPS * R][HP]
  T* s_k = s_q + WARPS * R * HP;                                 // [TK][HP]
  T* s_v = s_k + TK * HP;                                        // [TK][HP]
  float* s_s = reinterpret_cast<float*>(s_v + TK * HP);          // [WARPS][R][SP] scores
  T* s_p = reinterpret_cast<T*>(s_s + WARPS * R * SP);           // [WARPS][R][PP] probabilities
  float* s_o = reinterpret_cast<float*>(s_p + WARPS * R * PP);   // [WARPS][R][OP] output accumulators
  const int kvh = blockIdx.x;
  const uint32_t* tile = tiles + 4 * blockIdx.y;  // first token, tokens, table offset, ctx of first
  const int64_t t0 = tile[0];
  const int n_tok = tile[1];
  const uint32_t* table = block_tables + tile[2];
  const int ctx0 = tile[3];
  const int group = num_heads / num_kv_heads;
  const int rows = n_tok * group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_stride = (int64_t)num_kv_heads * HD;
  const uint4 zero = make_uint4(0, 0, 0, 0);

  for (int i = threadIdx.x; i < WARPS * R * CH; i += blockDim.x) {
    const int r = i / CH, c = (i % CH) * 8;
    uint4 x = zero;
    if (r < rows) x = *reinterpret_cast<const uint4*>(q + ((t0 + r / group) * num_heads + kvh * group + r % group) * HD + c);
    *reinterpret_cast<uint4*>(s_q + r * HP + c) = x;
  }
  float* so = s_o + warp * R * OP;
  float* ss = s_s + warp * R * SP;
  T* sp = s_p + warp * R * PP;
  for (int i = lane; i < R * OP; i += 32) so[i] = 0.f;
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[HD / 16];
#pragma unroll
  for (int kk = 0; kk < HD / 16; kk++) wmma::load_matrix_sync(qf[kk], s_q + warp * R * HP + kk * 16, HP);

  const int my_r = lane >> 1, half = lane & 1;  // two lanes per row for the softmax
  const int grow = warp * R + my_r;
  const int row_ctx = grow < rows ? ctx0 + grow / group : 0;  // this row sees keys < row_ctx
  float m_r = -INFINITY, l_r = 0.f;
  const int ctx_max = ctx0 + n_tok - 1;
  const int last_row = min(rows, (warp + 1) * R) - 1;
  const int warp_ctx = last_row >= warp * R ? ctx0 + last_row / group : 0;
  for (int k0 = 0; k0 < ctx_max; k0 += TK) {
    __syncthreads();  // the previous tile is consumed
    for (int i = threadIdx.x; i < TK * CH; i += blockDim.x) {
      const int j = i / CH, c = (i % CH) * 8, key = k0 + j;
      uint4 kx = zero, vx = zero;
      if (key < ctx_max) {
        const int64_t slot = (int64_t)table[key / block_size] * block_size + key % block_size;
        kx = *reinterpret_cast<const uint4*>(k_cache + slot * row_stride + kvh * HD + c);
        vx = *reinterpret_cast<const uint4*>(v_cache + slot * row_stride + kvh * HD + c);
      }
      *reinterpret_cast<uint4*>(s_k + j * HP + c) = kx;
      *reinterpret_cast<uint4*>(s_v + j * HP + c) = vx;
    }
    __syncthreads();
    if (k0 >= warp_ctx) continue;  // causal: nothing in this tile for this warp's rows
#pragma unroll
    for (int n = 0; n < TK / 16; n++) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
      wmma::fill_fragment(sf, 0.f);
#pragma unroll
      for (int kk = 0; kk < HD / 16; kk++) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
        wmma::load_matrix_sync(kf, s_k + n * 16 * HP + kk * 16, HP);
        wmma::mma_sync(sf, qf[kk], kf, sf);
      }
      wmma::store_matrix_sync(ss + n * 16, sf, SP, wmma::mem_row_major);
    }
    __syncwarp();
    float mx = -INFINITY;
    float* srow = ss + my_r * SP + half * (TK / 2);
#pragma unroll 8
    for (int j = 0; j < TK / 2; j++) {
      const float x = k0 + half * (TK / 2) + j < row_ctx ? srow[j] * scale : -INFINITY;
      srow[j] = x;
      mx = fmaxf(mx, x);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m_r, mx);
    const float corr = m_new == -INFINITY ? 1.f : __expf(m_r - m_new);
    float psum = 0.f;
    T* prow = sp + my_r * PP + half * (TK / 2);
#pragma unroll 8
    for (int j = 0; j < TK / 2; j++) {
      const float p = srow[j] == -INFINITY ? 0.f : __expf(srow[j] - m_new);
      const T pt = from_f<T>(p);
      prow[j] = pt;
      psum += to_f(pt);  // the rounded weights are what P·V sums
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    l_r = l_r * corr + psum;
    m_r = m_new;
    float* orow = so + my_r * OP + half * (HD / 2);
#pragma unroll 8
    for (int d = 0; d < HD / 2; d++) orow[d] *= corr;
    __syncwarp();
#pragma unroll
    for (int n = 0; n < HD / 16; n++) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> of;
      wmma::load_matrix_sync(of, so + n * 16, OP, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < TK / 16; kk++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
        wmma::load_matrix_sync(pf, sp + kk * 16, PP);
        wmma::load_matrix_sync(vf, s_v + kk * 16 * HP + n * 16, HP);
        wmma::mma_sync(of, pf, vf, of);
      }
      wmma::store_matrix_sync(so + n * 16, of, OP, wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (grow < rows) {
    T* op = out + ((t0 + grow / group) * num_heads + kvh * group + grow % group) * HD + half * (HD / 2);
    const float* orow = so + my_r * OP + half * (HD / 2);
    const float inv = 1.f / l_r;
#pragma unroll 8
    for (int d = 0; d < HD / 2; d++) op[d] = from_f<T>(orow[d] * inv);
  }
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
      const uint32_t* table_offsets, const uint32_t* ctx_lens, const uint32_t* tokens, int num_heads,            \
      int num_kv_heads, int block_size, float scale) {                                                         \
    attend<T, HD, 8>(out, q, k_cache, v_cache, block_tables, table_offsets, ctx_lens, tokens, num_heads,        \
                     num_kv_heads, block_size, scale);                                                         \
  }

#define TILED(T, NAME, HD)                                                                                  \
  extern "C" __global__ void __launch_bounds__(128) paged_prefill_##NAME##_hd##HD(                           \
      T* out, const T* q, const T* k_cache, const T* v_cache, const uint32_t* block_tables, const uint32_t* tiles, \
      int num_heads, int num_kv_heads, int block_size, float scale) {                                         \
    attend_tiled<T, HD>(out, q, k_cache, v_cache, block_tables, tiles, num_heads, num_kv_heads, block_size, scale); \
  }

#define MMA_PREFILL(T, NAME, HD)                                                                             \
  extern "C" __global__ void __launch_bounds__(128) paged_prefill_mma_##NAME##_hd##HD(                       \
      T* out, const T* q, const T* k_cache, const T* v_cache, const uint32_t* block_tables, const uint32_t* tiles, \
      int num_heads, int num_kv_heads, int block_size, float scale) {                                         \
    attend_mma<T, HD>(out, q, k_cache, v_cache, block_tables, tiles, num_heads, num_kv_heads, block_size, scale); \
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
  ATTEND(T, NAME, 256)                                                                                       \
  TILED(T, NAME, 64)                                                                                         \
  TILED(T, NAME, 128)

KERNELS(float, f32)
KERNELS(__half, f16)
KERNELS(__nv_bfloat16, bf16)
MMA_PREFILL(__half, f16, 64)
MMA_PREFILL(__half, f16, 128)
MMA_PREFILL(__nv_bfloat16, bf16, 64)
MMA_PREFILL(__nv_bfloat16, bf16, 128)
