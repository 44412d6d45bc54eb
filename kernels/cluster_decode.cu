// Whole-model batch-1 decode step in one launch of one thread-block cluster (sm 9.0+). See decode_cluster.py.
//
// Each of the cluster's NC CTAs (one per SM) owns a slice of every stage's output rows. Its weights arrive as
// one packed stream, in the order it uses them, through a shared-memory ring filled by bulk copies
// (cp.async.bulk, completing on an mbarrier per slot); the copy engine runs ahead across stages and layers as
// far as the ring allows. Activations are replicated in every CTA's shared memory: a CTA writes each value it
// computes into all NC replicas (distributed shared memory), and a cluster barrier ends each stage. Per layer:
//   A  RMSNorm(x) @ [qkv; gate_down; beta; out_gate]^T, conv step + SiLU on q/k/v rows, beta's bias -> proj
//   B  mixer on this CTA's state columns: gate_up -> g, recurrent_step in place, o = read-out + skip * v -> o
//   C  per-head RMSNorm(o) * SiLU(out_gate) @ out_proj^T, x += -> x
//   D  RMSNorm(x) @ [gate; up]^T, silu(gate) * up -> hid
//   E  hid @ down^T, x += -> x
// then RMSNorm(x) @ head^T -> logits (global). Float32 everywhere except the bf16 weights.

#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace cg = cooperative_groups;

#define NT 512
#define NWARP (NT / 32)
#define MAXR 16          // state rows per thread in the mixer, at most
#define MAXL 64          // layers, at most

struct DecodeParams {
  const unsigned char* stream;   // every CTA's packed weights and parameters
  const long long* chunk_off;    // [nc, stride] byte offset of each chunk in stream (zero bytes: none)
  const int* chunk_bytes;        // [nc, stride]
  const long long* tokens;       // [1]
  const unsigned short* embed;   // [V, D] bf16
  float* logits;                 // [V]
  float* tails[MAXL];            // per layer: conv tail [C, KW-1]
  float* states[MAXL];           // per layer: state [H, DK, DV]
  int chunk_stride;
  int D, NP, C, R, H, DK, DV, F, V, KW, L, delta, nc;
  int slot, slots;
  // shared-memory layout (byte offsets)
  int o_ring, o_xs, o_xn, o_proj, o_o, o_a, o_hid, o_prm, o_tail, o_g, o_red, o_col, o_hs, o_coff, o_cbytes,
      smem_bytes;
  float eps, g_min, scale;
  int debug;                     // timing experiments only (results wrong): 1 no row math, 2 no cluster barrier,
                                 // 4 no broadcast, 8 no state read or write
};

__device__ __forceinline__ uint32_t sa(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint64_t* b, int n) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(sa(b)), "r"(n) : "memory");
}
__device__ __forceinline__ void mbar_expect(uint64_t* b, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(sa(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* b) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(sa(dst)), "l"(src), "r"(bytes), "r"(sa(b)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, uint32_t phase) {
  uint32_t done = 0;
  while (!done) {
    // with a suspend-time hint the thread sleeps until the phase completes instead of spinning: 512 spinning
    // threads crowd the shared-memory pipe the copies and the arithmetic need
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2, %3; selp.u32 %0, 1, 0, p; }"
                 : "=r"(done) : "r"(sa(b)), "r"(phase), "r"(0x989680) : "memory");
  }
}

__device__ __forceinline__ float bf_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }
__device__ __forceinline__ float bf16f(unsigned short h) { return __uint_as_float(((uint32_t)h) << 16); }
__device__ __forceinline__ float sigm(float z) { return 1.f / (1.f + expf(-z)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Sum over the block, returned to every thread; red holds NWARP floats.
__device__ __forceinline__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float s = 0.f;
#pragma unroll
  for (int w = 0; w < NWARP; ++w) s += red[w];
  __syncthreads();
  return s;
}

// The weight ring: chunk j of this CTA's stream lands in slot j % slots.
struct Ring {
  unsigned char* base;
  uint64_t* bars;
  const unsigned char* stream;
  const long long* off;
  const int* bytes;
  int slot, slots;

  __device__ __forceinline__ void issue(int j) const {
    const int nb = bytes[j];
    if (nb <= 0) return;
    const int s = j % slots;
    mbar_expect(&bars[s], (uint32_t)nb);
    bulk_load(base + (size_t)s * slot, stream + off[j], (uint32_t)nb, &bars[s]);
  }
  __device__ __forceinline__ const unsigned char* wait(int j) const {
    const int s = j % slots;
    mbar_wait(&bars[s], (uint32_t)((j / slots) & 1));
    return base + (size_t)s * slot;
  }
  // every thread is done with chunk j: its slot takes chunk j + slots
  __device__ __forceinline__ void release(int j) const {
    __syncthreads();
    if (threadIdx.x == 0) issue(j + slots);
  }
};

template <int NI>
__device__ __forceinline__ float dot_row(const uint4* w, const float (&xr)[NI * 8], int K8, int lane) {
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < NI; ++i) {
    const int idx = lane + 32 * i;
    if (idx < K8) {
      const uint4 u = w[idx];
      const float* x = &xr[8 * i];
      acc = fmaf(bf_lo(u.x), x[0], acc); acc = fmaf(bf_hi(u.x), x[1], acc);
      acc = fmaf(bf_lo(u.y), x[2], acc); acc = fmaf(bf_hi(u.y), x[3], acc);
      acc = fmaf(bf_lo(u.z), x[4], acc); acc = fmaf(bf_hi(u.z), x[5], acc);
      acc = fmaf(bf_lo(u.w), x[6], acc); acc = fmaf(bf_hi(u.w), x[7], acc);
    }
  }
  return acc;
}

// Rows [0, nrows) of this CTA's slice of one stage, each a bf16 row of K (DUAL: two rows of K, gate then up)
// dotted with x (shared memory, K floats); epi(row, dot, dot2) runs on every lane of the row's warp.
// Returns the next chunk index.
template <int NI, bool DUAL, class Epi>
__device__ __forceinline__ int gemv(const Ring& ring, int ci, int nrows, int K, const float* x, Epi epi, int dbg) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int K8 = K >> 3, rb = (DUAL ? 4 : 2) * K;
  float xr[NI * 8];
#pragma unroll
  for (int i = 0; i < NI; ++i) {
    const int idx = lane + 32 * i;
#pragma unroll
    for (int e = 0; e < 8; ++e) xr[8 * i + e] = idx < K8 ? x[8 * idx + e] : 0.f;
  }
  int row = 0;
  while (row < nrows) {
    const unsigned char* buf = ring.wait(ci);
    const int rows_c = ring.bytes[ci] / rb;
    for (int rr = warp; rr < rows_c; rr += NWARP) {
      if (dbg & 1) continue;
      const uint4* w = (const uint4*)(buf + (size_t)rr * rb);
      float a1 = warp_sum(dot_row<NI>(w, xr, K8, lane));
      float a2 = 0.f;
      if (DUAL) a2 = warp_sum(dot_row<NI>(w + K8, xr, K8, lane));
      epi(row + rr, a1, a2);
    }
    ring.release(ci);
    ++ci;
    row += rows_c;
  }
  return ci;
}

template <bool DUAL, class Epi>
__device__ __forceinline__ int gemv_k(const Ring& ring, int ci, int nrows, int K, const float* x, Epi epi,
                                      int dbg) {
  switch ((K + 255) / 256) {
    case 1: return gemv<1, DUAL>(ring, ci, nrows, K, x, epi, dbg);
    case 2: return gemv<2, DUAL>(ring, ci, nrows, K, x, epi, dbg);
    case 3: return gemv<3, DUAL>(ring, ci, nrows, K, x, epi, dbg);
    case 4: return gemv<4, DUAL>(ring, ci, nrows, K, x, epi, dbg);
    case 5: case 6: return gemv<6, DUAL>(ring, ci, nrows, K, x, epi, dbg);
    default: return gemv<8, DUAL>(ring, ci, nrows, K, x, epi, dbg);   // K <= 2048, checked on the host
  }
}

// With the model's widths compiled in (CD_NI_D, CD_NI_HDV, CD_NI_F: register tiles per lane for inputs of width
// D, H * DV and F), each call site has one GEMV body instead of six: a much smaller kernel.
#ifdef CD_NI_D
#define GEMV_D(DUAL, ...) gemv<CD_NI_D, DUAL>(__VA_ARGS__)
#define GEMV_HDV(DUAL, ...) gemv<CD_NI_HDV, DUAL>(__VA_ARGS__)
#define GEMV_F(DUAL, ...) gemv<CD_NI_F, DUAL>(__VA_ARGS__)
#else
#define GEMV_D(DUAL, ...) gemv_k<DUAL>(__VA_ARGS__)
#define GEMV_HDV(DUAL, ...) gemv_k<DUAL>(__VA_ARGS__)
#define GEMV_F(DUAL, ...) gemv_k<DUAL>(__VA_ARGS__)
#endif

// xn = RMSNorm(xs) * w over D values (every CTA computes its own copy).
__device__ __forceinline__ void rms_norm(const float* xs, const float* w, float* xn, int D, float eps, float* red) {
  float ss = 0.f;
  for (int i = threadIdx.x; i < D; i += NT) ss += xs[i] * xs[i];
  const float rstd = rsqrtf(block_sum(ss, red) / D + eps);
  for (int i = threadIdx.x; i < D; i += NT) xn[i] = xs[i] * rstd * w[i];
  __syncthreads();
}

// hs[h] = sum of v[i]^2 over each group of G consecutive values (G a multiple of 32, n <= 32 * NT), in a fixed
// order (bit-identical replays); red holds n / 32 floats.
__device__ __forceinline__ void group_sq_sums(const float* v, int n, int G, float* hs, float* red) {
  for (int base = 0; base < n; base += NT) {
    const int i = base + threadIdx.x;
    const float s = warp_sum(i < n ? v[i] * v[i] : 0.f);
    if ((threadIdx.x & 31) == 0 && i < n) red[i / 32] = s;
  }
  __syncthreads();
  for (int h = threadIdx.x; h < n / G; h += NT) {
    float s = 0.f;
    for (int w = h * (G / 32); w < (h + 1) * (G / 32); ++w) s += red[w];
    hs[h] = s;
  }
  __syncthreads();
}

// Broadcast value y of index n into buf[n] of every CTA of the cluster (lanes 0..nc-1 each write one replica).
__device__ __forceinline__ void bcast(cg::cluster_group& cl, float* buf, int n, float y, int nc, int dbg) {
  const int lane = threadIdx.x & 31;
  if (dbg & 4) {
    if (lane == 0) buf[n] = y;
    return;
  }
  if (lane < nc) *cl.map_shared_rank(buf + n, lane) = y;
}

__device__ __forceinline__ void csync(cg::cluster_group& cl, int dbg) {
  if (dbg & 2) __syncthreads(); else cl.sync();
}

extern "C" __global__ void __launch_bounds__(NT, 1) cluster_decode_kernel(const __grid_constant__ DecodeParams p) {
  extern __shared__ __align__(128) unsigned char sm[];
  cg::cluster_group cl = cg::this_cluster();
  const int r = (int)cl.block_rank(), nc = p.nc;
  const int t = threadIdx.x, lane = t & 31;
  if (p.smem_bytes > 0 && t == 0) {
    uint32_t dyn;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
    if (dyn < (uint32_t)p.smem_bytes) __trap();
  }
  uint64_t* bars = (uint64_t*)sm;
  float* xs = (float*)(sm + p.o_xs);
  float* xn = (float*)(sm + p.o_xn);
  float* proj = (float*)(sm + p.o_proj);
  float* o = (float*)(sm + p.o_o);
  float* a = (float*)(sm + p.o_a);
  float* hid = (float*)(sm + p.o_hid);
  float* prm = (float*)(sm + p.o_prm);
  float* tail_s = (float*)(sm + p.o_tail);
  float* g_s = (float*)(sm + p.o_g);
  float* red = (float*)(sm + p.o_red);
  float* col = (float*)(sm + p.o_col);
  float* hs = (float*)(sm + p.o_hs);
  long long* coff = (long long*)(sm + p.o_coff);
  int* cbytes = (int*)(sm + p.o_cbytes);
  const Ring ring{sm + p.o_ring, bars, p.stream, coff, cbytes, p.slot, p.slots};

  const int D = p.D, NP = p.NP, C = p.C, R = p.R, H = p.H, DK = p.DK, DV = p.DV, F = p.F, V = p.V;
  const int tw = p.KW - 1, HDV = H * DV;
  // this CTA's rows of each stage
  const int loA = NP * r / nc, nA = NP * (r + 1) / nc - loA;
  const int loD = D * r / nc, nD = D * (r + 1) / nc - loD;
  const int loF = F * r / nc, nF = F * (r + 1) / nc - loF;
  const int loV = V * r / nc, nV = V * (r + 1) / nc - loV;
  // mixer: state columns [mlo, mlo + ncols) of the flat H * DV; thread t: column c, rows rg * rpt ...
  const int ncols = HDV / nc, mlo = r * ncols;
  const int c = t % ncols, rg = t / ncols, ngroups = NT / ncols, rpt = DK / ngroups;
  const int jcol = mlo + c, hj = jcol / DV, cj = jcol % DV, h0 = mlo / DV;
  const int nh = (mlo + ncols - 1) / DV - h0 + 1;

  // this CTA's chunk table and every layer's conv tail rows into shared memory (no global read on the chain)
  for (int i = t; i < p.chunk_stride; i += NT) {
    coff[i] = p.chunk_off[(size_t)r * p.chunk_stride + i];
    cbytes[i] = p.chunk_bytes[(size_t)r * p.chunk_stride + i];
  }
  if (t == 0) {
    for (int s = 0; s < p.slots; ++s) mbar_init(&bars[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (t == 0)
    for (int s = 0; s < p.slots; ++s) ring.issue(s);
  for (int i = t; i < p.L * nA * tw; i += NT) {
    const int l = i / (nA * tw), k = i % (nA * tw), n = loA + k / tw;
    tail_s[i] = n < C ? p.tails[l][(size_t)n * tw + k % tw] : 0.f;
  }
  const long long tok = p.tokens[0];
  for (int i = t; i < D; i += NT) xs[i] = bf16f(p.embed[tok * D + i]);
  __syncthreads();
  int ci = 0;

  for (int l = 0; l < p.L; ++l) {
    float* tails = p.tails[l];
    float* S = p.states[l];
    const float* tl_s = tail_s + l * nA * tw;
    float sreg[MAXR];
#pragma unroll
    for (int ii = 0; ii < MAXR; ++ii)
      if (ii < rpt) sreg[ii] = (p.debug & 8) ? 0.f : S[((size_t)hj * DK + rg * rpt + ii) * DV + cj];
    {  // this layer's parameters (one chunk)
      const uint4* src = (const uint4*)ring.wait(ci);
      for (int i = t; i < ring.bytes[ci] / 16; i += NT) ((uint4*)prm)[i] = src[i];
      ring.release(ci);
      ++ci;
    }
    const float* attn_norm = prm;
    const float* mlp_norm = prm + D;
    const float* bias_in = prm + 2 * D;
    const float* conv_w = bias_in + nA;
    const float* up_b = conv_w + nA * p.KW;
    const float* skip = up_b + nh * DK;
    const float* out_norm = skip + ncols;

    // A: input projection, conv step, SiLU
    rms_norm(xs, attn_norm, xn, D, p.eps, red);
    ci = GEMV_D(false, ring, ci, nA, D, xn, [&](int row, float y, float) {
      const int n = loA + row;
      y += bias_in[row];
      if (n < C) {
        const float* cw = conv_w + row * p.KW;
        const float* ts = tl_s + row * tw;
        float z = cw[tw] * y;
        for (int j = 0; j < tw; ++j) z += ts[j] * cw[j];
        if (lane < tw) tails[(size_t)n * tw + lane] = lane == tw - 1 ? y : ts[lane + 1];
        y = z * sigm(z);
      }
      bcast(cl, proj, n, y, nc, p.debug);
    }, p.debug);
    csync(cl, p.debug);

    // B: mixer
    if (p.delta) {
      group_sq_sums(proj, 2 * H * DK, DK, hs, red);   // hs[0..H): |q_h|^2, hs[H..2H): |k_h|^2
    }
    {
      int done = 0;
      const int rb = R * 2;
      while (done < nh * DK) {
        const unsigned char* buf = ring.wait(ci);
        const int rows_c = ring.bytes[ci] / rb;
        for (int i = t; i < rows_c; i += NT) {
          const unsigned short* w = (const unsigned short*)(buf + (size_t)i * rb);
          float acc = up_b[done + i];
          for (int m = 0; m < R; ++m) acc = fmaf(bf16f(w[m]), proj[C + m], acc);
          g_s[done + i] = p.g_min * sigm(acc);
        }
        ring.release(ci);
        ++ci;
        done += rows_c;
      }
    }
    {
      const float* q = proj + hj * DK;
      const float* k = proj + H * DK + hj * DK;
      const float v = proj[2 * H * DK + jcol];
      const float beta = sigm(proj[C + R + hj]);
      const float qs = p.delta ? 1.f / fmaxf(sqrtf(hs[hj]), 1e-6f) : 1.f;
      const float ks = p.delta ? 1.f / fmaxf(sqrtf(hs[H + hj]), 1e-6f) : 1.f;
      const float* g = g_s + (hj - h0) * DK;
      float u = v;
      float part = 0.f;
#pragma unroll
      for (int ii = 0; ii < MAXR; ++ii)
        if (ii < rpt) {
          const int i = rg * rpt + ii;
          sreg[ii] *= expf(g[i]);
          part += k[i] * ks * sreg[ii];
        }
      if (p.delta) {
        red[t] = part;
        __syncthreads();
        if (rg == 0) {
          float s = 0.f;
          for (int gi = 0; gi < ngroups; ++gi) s += red[gi * ncols + c];
          col[c] = s;
        }
        __syncthreads();
        u = v - col[c];
        __syncthreads();
      }
      part = 0.f;
#pragma unroll
      for (int ii = 0; ii < MAXR; ++ii)
        if (ii < rpt) {
          const int i = rg * rpt + ii;
          sreg[ii] = fmaf(beta * k[i] * ks, u, sreg[ii]);
          if (!(p.debug & 8)) S[((size_t)hj * DK + i) * DV + cj] = sreg[ii];
          part += q[i] * qs * sreg[ii];
        }
      red[t] = part;
      __syncthreads();
      if (rg == 0) {
        float s = 0.f;
        for (int gi = 0; gi < ngroups; ++gi) s += red[gi * ncols + c];
        const float out = p.scale * s + skip[c] * v;
        if (p.debug & 4) o[jcol] = out;
        else for (int d = 0; d < nc; ++d) *cl.map_shared_rank(o + jcol, d) = out;
      }
    }
    csync(cl, p.debug);

    // C: per-head RMSNorm * SiLU(out_gate), out_proj, residual
    group_sq_sums(o, HDV, DV, hs + 2 * H, red);
    {
      const int gate_off = C + R + H;
      for (int i = t; i < HDV; i += NT) {
        const float gt = proj[gate_off + i];
        a[i] = o[i] * rsqrtf(hs[2 * H + i / DV] / DV + p.eps) * out_norm[i % DV] * gt * sigm(gt);
      }
      __syncthreads();
    }
    ci = GEMV_HDV(false, ring, ci, nD, HDV, a, [&](int row, float y, float) {
      const int n = loD + row;
      const float xn_new = xs[n] + y;
      __syncwarp();                                   // every lane has read xs[n] before one overwrites it
      bcast(cl, xs, n, xn_new, nc, p.debug);
    }, p.debug);
    csync(cl, p.debug);

    // D: RMSNorm, SwiGLU
    rms_norm(xs, mlp_norm, xn, D, p.eps, red);
    ci = GEMV_D(true, ring, ci, nF, D, xn, [&](int row, float gt, float up) {
      bcast(cl, hid, loF + row, gt * sigm(gt) * up, nc, p.debug);
    }, p.debug);
    csync(cl, p.debug);

    // E: down, residual
    ci = GEMV_F(false, ring, ci, nD, F, hid, [&](int row, float y, float) {
      const int n = loD + row;
      const float xn_new = xs[n] + y;
      __syncwarp();                                   // every lane has read xs[n] before one overwrites it
      bcast(cl, xs, n, xn_new, nc, p.debug);
    }, p.debug);
    csync(cl, p.debug);
  }

  {  // final norm (one chunk of parameters), logits
    const uint4* src = (const uint4*)ring.wait(ci);
    for (int i = t; i < ring.bytes[ci] / 16; i += NT) ((uint4*)prm)[i] = src[i];
    ring.release(ci);
    ++ci;
  }
  rms_norm(xs, prm, xn, D, p.eps, red);
  GEMV_D(false, ring, ci, nV, D, xn, [&](int row, float y, float) {
    if (lane == 0) p.logits[loV + row] = y;
  }, p.debug);
  // no CTA may exit while others can still write into its shared memory: the last writes were before the last
  // cl.sync(), so exiting here is safe
}

// Host: launch one step (cluster of nc CTAs) on `stream`; params points to a DecodeParams in host memory.
int cluster_decode_launch(const void* params, int nc, int smem_bytes, cudaStream_t stream) {
  static int configured_smem = -1;
  cudaError_t e;
  if (configured_smem != smem_bytes) {
    e = cudaFuncSetAttribute(cluster_decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (e != cudaSuccess) return (int)e;
    e = cudaFuncSetAttribute(cluster_decode_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (e != cudaSuccess) return (int)e;
    configured_smem = smem_bytes;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(nc);
  cfg.blockDim = dim3(NT);
  cfg.dynamicSmemBytes = smem_bytes;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = nc;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  DecodeParams p = *(const DecodeParams*)params;
  e = cudaLaunchKernelEx(&cfg, cluster_decode_kernel, p);
  return (int)e;
}

// Host: how many clusters of nc CTAs with smem_bytes each can be resident at once (0: this launch cannot run).
int cluster_decode_max_clusters(int nc, int smem_bytes) {
  cudaError_t e = cudaFuncSetAttribute(cluster_decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (e != cudaSuccess) return -(int)e;
  e = cudaFuncSetAttribute(cluster_decode_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (e != cudaSuccess) return -(int)e;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(nc);
  cfg.blockDim = dim3(NT);
  cfg.dynamicSmemBytes = smem_bytes;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = nc;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int n = 0;
  e = cudaOccupancyMaxActiveClusters(&n, cluster_decode_kernel, &cfg);
  if (e != cudaSuccess) return -(int)e;
  return n;
}
