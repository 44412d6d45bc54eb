"""Probe: what does one dependent stage of batch-1 decode cost, apart from the decoder's own code? Times a CUDA graph of
36 chained launches (the `small` preset's count) of a synthetic stage, written twice, in CUDA C++ and in Triton:

- `empty`: the kernel only waits for the previous one and writes one value, the cost of the chain itself;
- `gemv`: each program loads its rows of a [2048, 512] bf16 weight before it waits (as the fused decoder does),
  then reads the previous stage's 512 outputs, takes their RMS, and writes its rows' dot products; `hot`: every
  stage reads the same weight (it stays in L2), `cold`: each stage its own (36 x 2 MB, more than L2 holds, as in
  decode);
- CUDA only: the same without weights (`x only`), with the weights loaded after the wait, and with each stage
  prefetching into L2 the weights of the stage 2 or 4 launches on.

With and without programmatic dependent launch (PDL), at 64, 128 and 256 programs per stage. The fused decoder
itself (`FusedDecoder`, `small`, batch 1) is timed in the same run for reference. Needs an sm 9.0 GPU, nvcc and
ninja (torch's cpp_extension builds the CUDA part).

    python benchmarks/pdl_chain_probe.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import triton
import triton.language as tl
from torch.utils.cpp_extension import load_inline
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from config_timing import replay_us, run_meta

N_ROWS, K = 2048, 512
# (name, kernel mode, each stage its own weight (cold: 36 x 2 MB > L2) or all one (hot in L2), L2 prefetch distance)
CUDA_STAGES = (("empty", 0, False, 0), ("gemv hot", 1, False, 0), ("x only", 2, False, 0),
               ("gemv hot, weights after wait", 3, False, 0), ("gemv cold", 1, True, 0),
               ("gemv cold, weights after wait", 3, True, 0), ("gemv cold, L2 prefetch 2 ahead", 1, True, 2),
               ("gemv cold, L2 prefetch 4 ahead", 1, True, 4))
TRITON_STAGES = (("empty", False, False), ("gemv hot", True, False), ("gemv cold", True, True))

CUDA = r"""
#include <cuda_runtime.h>
#include <torch/extension.h>

__device__ __forceinline__ float bf_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// 8 warps; warp w of CTA b owns rows (8 b + w) RPW ... + RPW - 1 of this stage's [N, 512] bf16 weight (64 uint4
// per row). MODE 0: wait, then one value; 1: weights loaded before the wait, then RMS and dot products; 2: the same
// without weights (dot with ones); 3: weights loaded after the wait. ahead > 0: before its wait, each warp also
// prefetches into L2 its rows of the weight `ahead` stages on (wnext; null: none).
template <int RPW, int MODE>
__global__ void __launch_bounds__(256) stage_kernel(const float* x, float* y, const uint4* __restrict__ w,
                                                    const uint4* __restrict__ wnext) {
  asm volatile("griddepcontrol.launch_dependents;");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = (blockIdx.x * 8 + warp) * RPW;
  uint4 wr[RPW][2];
  if (MODE == 1) {
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
      for (int i = 0; i < 2; ++i) wr[r][i] = w[(size_t)(row0 + r) * 64 + lane + 32 * i];
  }
  if (wnext != nullptr && lane < 8) {
#pragma unroll
    for (int r = 0; r < RPW; ++r)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(wnext + (size_t)(row0 + r) * 64 + 8 * lane));
  }
  asm volatile("griddepcontrol.wait;" ::: "memory");
  if (MODE == 0) {
    if (threadIdx.x == 0) y[blockIdx.x] = x[blockIdx.x] + 1.f;
    return;
  }
  if (MODE == 3) {
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
      for (int i = 0; i < 2; ++i) wr[r][i] = w[(size_t)(row0 + r) * 64 + lane + 32 * i];
  }
  if (MODE == 2) {
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
      for (int i = 0; i < 2; ++i) wr[r][i] = make_uint4(0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u);
  }
  __shared__ float red[8];
  float xr[16];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float4 a = *(const float4*)(x + 8 * (lane + 32 * i));
    const float4 b = *(const float4*)(x + 8 * (lane + 32 * i) + 4);
    xr[8 * i] = a.x; xr[8 * i + 1] = a.y; xr[8 * i + 2] = a.z; xr[8 * i + 3] = a.w;
    xr[8 * i + 4] = b.x; xr[8 * i + 5] = b.y; xr[8 * i + 6] = b.z; xr[8 * i + 7] = b.w;
  }
  float ss = 0.f;
#pragma unroll
  for (int e = 0; e < 16; ++e) ss += xr[e] * xr[e];
  ss = warp_sum(ss);
  if (lane == 0) red[warp] = ss;
  __syncthreads();
  float tot = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) tot += red[i];
  const float rstd = rsqrtf(tot / 512.f + 1e-6f);
#pragma unroll
  for (int r = 0; r < RPW; ++r) {
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint4 u = wr[r][i];
      const float* xx = xr + 8 * i;
      acc += bf_lo(u.x) * xx[0] + bf_hi(u.x) * xx[1] + bf_lo(u.y) * xx[2] + bf_hi(u.y) * xx[3] +
             bf_lo(u.z) * xx[4] + bf_hi(u.z) * xx[5] + bf_lo(u.w) * xx[6] + bf_hi(u.w) * xx[7];
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row0 + r] = acc * rstd;
  }
}

template <int RPW>
static void launch(int mode, const float* x, float* y, const uint4* w, const uint4* wnext, int n_rows, bool pdl,
                   cudaStream_t st) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(n_rows / (8 * RPW)); cfg.blockDim = dim3(256); cfg.stream = st;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at; cfg.numAttrs = pdl ? 1 : 0;
  cudaError_t e;
  switch (mode) {
    case 0: e = cudaLaunchKernelEx(&cfg, stage_kernel<RPW, 0>, x, y, w, wnext); break;
    case 1: e = cudaLaunchKernelEx(&cfg, stage_kernel<RPW, 1>, x, y, w, wnext); break;
    case 2: e = cudaLaunchKernelEx(&cfg, stage_kernel<RPW, 2>, x, y, w, wnext); break;
    default: e = cudaLaunchKernelEx(&cfg, stage_kernel<RPW, 3>, x, y, w, wnext); break;
  }
  TORCH_CHECK(e == cudaSuccess, "launch");
}

// stages launches, each reading the previous one's output (buf holds two [n_rows] float buffers), captured in one
// graph; returns the mean us per replay over reps replays. distinct: stage s reads weight s of w ([stages, N,
// 512]: cold, as in decode); else every stage reads weight 0 (hot in L2). ahead: L2 prefetch distance (0: none).
double chain(torch::Tensor w, torch::Tensor buf, int64_t stages, int64_t rpw, int64_t mode, bool pdl, int64_t reps,
             bool distinct, int64_t ahead) {
  const int n = (int)(buf.numel() / 2);
  TORCH_CHECK(w.numel() >= (distinct ? stages : 1) * n * 512, "weight buffer too small");
  float* b0 = buf.data_ptr<float>();
  const uint4* wp = (const uint4*)w.data_ptr();
  const size_t per = (size_t)n * 64;
  cudaStream_t st;
  cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
  cudaGraph_t g;
  cudaGraphExec_t ge;
  TORCH_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess, "capture");
  for (int s = 0; s < stages; ++s) {
    const float* x = b0 + (s & 1) * n;
    float* y = b0 + ((s + 1) & 1) * n;
    const uint4* ws = wp + (distinct ? s * per : 0);
    const uint4* wn = ahead > 0 ? wp + (distinct ? ((s + ahead) % stages) * per : 0) : nullptr;
    if (rpw == 1) launch<1>((int)mode, x, y, ws, wn, n, pdl, st);
    else if (rpw == 2) launch<2>((int)mode, x, y, ws, wn, n, pdl, st);
    else launch<4>((int)mode, x, y, ws, wn, n, pdl, st);
  }
  TORCH_CHECK(cudaStreamEndCapture(st, &g) == cudaSuccess, "end capture");
  TORCH_CHECK(cudaGraphInstantiate(&ge, g, 0) == cudaSuccess, "instantiate");
  for (int i = 0; i < 20; ++i) cudaGraphLaunch(ge, st);
  cudaEvent_t a, b;
  cudaEventCreate(&a); cudaEventCreate(&b);
  cudaEventRecord(a, st);
  for (int i = 0; i < reps; ++i) cudaGraphLaunch(ge, st);
  cudaEventRecord(b, st);
  cudaEventSynchronize(b);
  float ms;
  cudaEventElapsedTime(&ms, a, b);
  TORCH_CHECK(cudaGetLastError() == cudaSuccess, "replay failed");
  cudaGraphExecDestroy(ge); cudaGraphDestroy(g); cudaStreamDestroy(st);
  cudaEventDestroy(a); cudaEventDestroy(b);
  return ms * 1000.0 / reps;
}
"""


@triton.jit
def _stage_kernel(x, y, w, K: tl.constexpr, BN: tl.constexpr, WORK: tl.constexpr):
    gdc_launch_dependents()
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    cols = tl.arange(0, K)
    if WORK:
        wt = tl.load(w + rows[:, None] * K + cols[None, :]).to(tl.float32)
    gdc_wait()
    if WORK:
        xv = tl.load(x + cols)
        rstd = 1.0 / tl.sqrt(tl.sum(xv * xv) / K + 1e-6)
        tl.store(y + rows, tl.sum(wt * xv[None, :], axis=1) * rstd)
    else:
        tl.store(y + pid, tl.load(x + pid) + 1.0)


def triton_chain(w: torch.Tensor, buf: torch.Tensor, stages: int, programs: int, work: bool, pdl: bool,
                 reps: int, distinct: bool) -> float:
    """The same chain with the Triton stage, captured with torch.cuda.graph: mean us per replay. distinct: stage s
    reads w[s], else every stage w[0]."""
    n = buf.numel() // 2
    bn = n // programs
    opts = dict(launch_pdl=True) if pdl else {}

    def run():
        for s in range(stages):
            _stage_kernel[(programs,)](buf[(s & 1) * n:], buf[((s + 1) & 1) * n:], w[s if distinct else 0], K=K,
                                       BN=bn, WORK=work, num_warps=8 if bn * K >= 8192 else 4, **opts)

    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return replay_us(graph.replay, reps)


def fused_decoder_us(reps: int) -> float:
    """The shipped FusedDecoder (`small`, batch 1, bf16, defaults): mean us per graph replay."""
    from seqedge.config import SequentialAttentionConfig
    from seqedge.kernels.decode_fused import FusedDecoder
    from seqedge.model import SequentialAttentionModel

    torch.manual_seed(0)
    model = SequentialAttentionModel(SequentialAttentionConfig.preset("small")).to("cuda", torch.bfloat16).eval()
    dec = FusedDecoder(model, batch_size=1)
    dec.step(torch.zeros(1, dtype=torch.long, device="cuda"))
    return replay_us(dec.graph.replay, reps)


def write_markdown(results: dict, path: str) -> None:
    """The rows as a table: us per stage (and per graph of --stages launches) by kernel, stage, PDL and programs."""
    m = results["meta"]
    lines = ["# Cost of one dependent stage: a chain of synthetic launches (`benchmarks/pdl_chain_probe.py`)\n",
             f"- card: {m['card']}", f"- date (UTC): {m['date']}", f"- versions: {m['versions']}",
             f"- command: `{m['command']}`", f"- shapes: {m['shapes']}\n",
             "| kernel | stage | PDL | programs | us per stage | us per graph |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['impl']} | {r['stage']} | {'on' if r['pdl'] else 'off'} | {r['programs']} | "
              f"{r['us_per_stage']:.2f} | {r['us_per_graph']:.1f} |" for r in results["rows"]]
    ref = results["fused_decoder"]
    lines.append(f"\nFor reference, the same run: `FusedDecoder` (`small`, batch 1, defaults) "
                 f"{ref['us_per_graph']:.1f} us per token, {ref['us_per_stage']:.2f} us per launch over its 36.")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for pdl_chain_probe.json and .md")
    ap.add_argument("--stages", type=int, default=36, help="launches per graph (default: 36, small's count)")
    ap.add_argument("--reps", type=int, default=300, help="graph replays timed per row (default: 300)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    mod = load_inline("pdl_chain_probe", cpp_sources="double chain(torch::Tensor w, torch::Tensor buf, "
                      "int64_t stages, int64_t rpw, int64_t mode, bool pdl, int64_t reps, bool distinct, "
                      "int64_t ahead);", cuda_sources=CUDA,
                      functions=["chain"], extra_cuda_cflags=["-O3", "-gencode=arch=compute_90a,code=sm_90a"])
    torch.manual_seed(0)
    w = (torch.randn(args.stages, N_ROWS, K, device="cuda") * 0.05).to(torch.bfloat16)
    buf = torch.randn(2 * N_ROWS, device="cuda")
    rows = []

    def record(row: dict, us: float) -> None:
        row.update(stages=args.stages, us_per_graph=us, us_per_stage=us / args.stages)
        rows.append(row)
        print(row, flush=True)

    for stage, mode, distinct, ahead in CUDA_STAGES:
        for pdl in (True, False):
            for programs in (64, 128, 256):
                us = mod.chain(w, buf, args.stages, N_ROWS // (8 * programs), mode, pdl, args.reps, distinct, ahead)
                record(dict(impl="cuda", stage=stage, pdl=pdl, programs=programs), us)
    for stage, work, distinct in TRITON_STAGES:
        for pdl in (True, False):
            for programs in (64, 128, 256):
                us = triton_chain(w, buf, args.stages, programs, work, pdl, args.reps, distinct)
                record(dict(impl="triton", stage=stage, pdl=pdl, programs=programs), us)
    ref = dict(impl="FusedDecoder small B=1", us_per_graph=fused_decoder_us(args.reps), stages=36)
    ref["us_per_stage"] = ref["us_per_graph"] / 36
    print(ref, flush=True)
    meta = run_meta(f"{args.stages} chained launches per graph; gemv: [{N_ROWS}, {K}] bf16 weight per stage")
    results = dict(meta=meta, rows=rows, fused_decoder=ref)
    with open(os.path.join(args.out, "pdl_chain_probe.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_markdown(results, os.path.join(args.out, "pdl_chain_probe.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
