"""Probe: can one thread-block cluster carry batch-1 decode? Measures (1) the latency of a cluster barrier with a
distributed-shared-memory store before it, for clusters of 2-16 CTAs, and (2) the weight intake of n CTAs that each
stream their own bytes through a shared-memory ring, with bulk copies (cp.async.bulk + mbarrier) or with cp.async
from every thread; cold (buffer >> L2) and warm (48 MB, the `small` preset's weights, re-read), launched spread
over the GPU or as clusters (one GPC each). Needs an sm 9.0 GPU, nvcc and ninja (torch's cpp_extension builds
it). kernels_decode_cluster.md says what the numbers meant for decode.

    python benchmarks/probes/cluster_probe.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from torch.utils.cpp_extension import load_inline

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))   # config_timing.py lives in benchmarks/
from config_timing import run_meta  # noqa: E402

CUDA = r"""
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_pipeline.h>
namespace cg = cooperative_groups;

__device__ __forceinline__ uint32_t sa(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint64_t* b, int n) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(sa(b)), "r"(n) : "memory"); }
__device__ __forceinline__ void mbar_expect(uint64_t* b, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(sa(b)), "r"(bytes) : "memory"); }
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* b) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               :: "r"(sa(dst)), "l"(src), "r"(bytes), "r"(sa(b)) : "memory"); }
__device__ __forceinline__ void mbar_wait(uint64_t* b, uint32_t phase) {
  uint32_t done = 0;
  while (!done) {
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(done) : "r"(sa(b)), "r"(phase) : "memory");
  }
}

__global__ void __launch_bounds__(256) intake_kernel(const unsigned char* __restrict__ w, long long per_cta,
                                                     int slot, int slots, float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  uint64_t* bars = (uint64_t*)smem;
  unsigned char* ring = smem + 128;
  const unsigned char* src = w + blockIdx.x * per_cta;
  int n = (int)(per_cta / slot), tid = threadIdx.x;
  if (tid == 0) {
    for (int s = 0; s < slots; ++s) mbar_init(&bars[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (tid == 0)
    for (int s = 0; s < slots && s < n; ++s) {
      mbar_expect(&bars[s], slot);
      bulk_load(ring + s * slot, src + (long long)s * slot, slot, &bars[s]);
    }
  float acc = 0.f;
  for (int c = 0; c < n; ++c) {
    int s = c % slots;
    mbar_wait(&bars[s], (c / slots) & 1);
    const uint4* p = (const uint4*)(ring + s * slot);
    for (int i = tid; i < slot / 16; i += 256) {
      uint4 v = p[i];
      acc += __uint_as_float(v.x << 16) + __uint_as_float(v.y & 0xffff0000u) + __uint_as_float(v.z << 16) +
             __uint_as_float(v.w & 0xffff0000u);   // read the slot as a GEMV would
    }
    __syncthreads();
    if (tid == 0 && c + slots < n) {
      mbar_expect(&bars[s], slot);
      bulk_load(ring + s * slot, src + (long long)(c + slots) * slot, slot, &bars[s]);
    }
  }
  out[blockIdx.x * 256 + tid] = acc;
}

// The same stream, loaded with cp.async (16 bytes per thread and copy, every thread of the CTA issuing) instead of
// bulk copies: one commit group per slot, waited with cp.async.wait_group.
__global__ void __launch_bounds__(256) intake_cpasync_kernel(const unsigned char* __restrict__ w, long long per_cta,
                                                             int slot, int slots, float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* ring = smem + 128;
  const unsigned char* src = w + blockIdx.x * per_cta;
  int n = (int)(per_cta / slot), tid = threadIdx.x;
  for (int s = 0; s < slots; ++s) {
    if (s < n)
      for (int i = tid; i < slot / 16; i += 256)
        __pipeline_memcpy_async(ring + s * slot + 16 * i, src + (long long)s * slot + 16 * i, 16);
    __pipeline_commit();
  }
  float acc = 0.f;
  for (int c = 0; c < n; ++c) {
    int s = c % slots;
    __pipeline_wait_prior(slots - 1);                   // this thread's copies of chunk c have landed
    __syncthreads();                                    // and every other thread's
    const uint4* p = (const uint4*)(ring + s * slot);
    for (int i = tid; i < slot / 16; i += 256) {
      uint4 v = p[i];
      acc += __uint_as_float(v.x << 16) + __uint_as_float(v.y & 0xffff0000u) + __uint_as_float(v.z << 16) +
             __uint_as_float(v.w & 0xffff0000u);
    }
    __syncthreads();
    if (c + slots < n)
      for (int i = tid; i < slot / 16; i += 256)
        __pipeline_memcpy_async(ring + s * slot + 16 * i, src + (long long)(c + slots) * slot + 16 * i, 16);
    __pipeline_commit();
  }
  out[blockIdx.x * 256 + tid] = acc;
}

__global__ void __launch_bounds__(256) csync_kernel(int iters, float* out) {
  __shared__ float buf[64];
  cg::cluster_group cl = cg::this_cluster();
  unsigned r = cl.block_rank(), n = cl.num_blocks();
  if (threadIdx.x < 64) buf[threadIdx.x] = 0.f;
  cl.sync();
  float acc = 0.f;
  for (int i = 0; i < iters; ++i) {
    if (threadIdx.x < n) { float* rem = cl.map_shared_rank(buf, threadIdx.x); rem[(i & 1) * 32 + r] = (float)i; }
    cl.sync();
    acc += buf[(i & 1) * 32 + (threadIdx.x % n)];
  }
  out[blockIdx.x * 256 + threadIdx.x] = acc;
}

double intake(torch::Tensor w, int64_t ctas, int64_t per_cta, int64_t slot, int64_t slots, int64_t reps,
              bool cold, int64_t cluster, bool cpasync) {
  auto kernel = cpasync ? intake_cpasync_kernel : intake_kernel;
  // cold: launch i reads the i-th window of ctas * per_cta bytes (each window read once); warm: the first window
  TORCH_CHECK(ctas * per_cta * (cold ? reps + 1 : 1) <= w.numel(), "buffer too small");
  int smem = 128 + slot * slots;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  auto out = torch::empty({ctas * 256}, w.options().dtype(torch::kFloat32));
  auto st = at::cuda::getCurrentCUDAStream();
  const unsigned char* p = (const unsigned char*)w.data_ptr();
  // cluster > 1: the CTAs launch as clusters of that size (a cluster's CTAs share one GPC)
  cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(ctas); cfg.blockDim = dim3(256); cfg.dynamicSmemBytes = smem; cfg.stream = st;
  cudaLaunchAttribute at[1]; at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = cluster; at[0].val.clusterDim.y = 1; at[0].val.clusterDim.z = 1;
  cfg.attrs = at; cfg.numAttrs = 1;
  float* o = out.data_ptr<float>();
  int sl = (int)slot, ns = (int)slots;
  TORCH_CHECK(cudaLaunchKernelEx(&cfg, kernel, p, (long long)per_cta, sl, ns, o) == cudaSuccess, "launch");
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  cudaEventRecord(a, st);
  for (int i = 0; i < reps; ++i)
    cudaLaunchKernelEx(&cfg, kernel, p + (cold ? (i + 1) * ctas * per_cta : 0), (long long)per_cta, sl, ns, o);
  cudaEventRecord(b, st); cudaEventSynchronize(b);
  float ms; cudaEventElapsedTime(&ms, a, b);
  TORCH_CHECK(cudaGetLastError() == cudaSuccess, "launch failed");
  return ms * 1000.0 / reps;
}

double csync(int64_t cluster, int64_t iters) {
  cudaFuncSetAttribute(csync_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  auto out = torch::empty({cluster * 256}, torch::dtype(torch::kFloat32).device(torch::kCUDA));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(cluster); cfg.blockDim = dim3(256); cfg.stream = at::cuda::getCurrentCUDAStream();
  cudaLaunchAttribute at[1]; at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = cluster; at[0].val.clusterDim.y = 1; at[0].val.clusterDim.z = 1;
  cfg.attrs = at; cfg.numAttrs = 1;
  int it = (int)iters;
  TORCH_CHECK(cudaLaunchKernelEx(&cfg, csync_kernel, 10, out.data_ptr<float>()) == cudaSuccess, "cluster launch");
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  cudaEventRecord(a, cfg.stream);
  cudaLaunchKernelEx(&cfg, csync_kernel, it, out.data_ptr<float>());
  cudaEventRecord(b, cfg.stream); cudaEventSynchronize(b);
  float ms; cudaEventElapsedTime(&ms, a, b);
  TORCH_CHECK(cudaGetLastError() == cudaSuccess, "csync failed");
  return ms * 1000.0 / iters;
}
"""

CPP = ("double intake(torch::Tensor w, int64_t ctas, int64_t per_cta, int64_t slot, int64_t slots, int64_t reps, "
       "bool cold, int64_t cluster, bool cpasync);\n"
       "double csync(int64_t cluster, int64_t iters);")


def main(argv: list[str] | None = None) -> None:
    """Build the probe, run every case, print a line per case and write cluster_probe.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/probes/results", help="folder for cluster_probe.json")
    args = ap.parse_args(argv)
    mod = load_inline("cluster_probe", CPP, cuda_sources=CUDA, functions=["intake", "csync"],
                      extra_cuda_cflags=["-gencode=arch=compute_90a,code=sm_90a", "-O3"], verbose=False)
    rows = {"meta": run_meta("clusters of 2-16 CTAs; 48 MB streamed by 1-132 CTAs"), "sync": [], "intake": []}
    for n in (2, 4, 8, 16):
        us = min(mod.csync(n, 20000) for _ in range(3))
        rows["sync"].append({"cluster": n, "us_per_sync": us})
        print(f"cluster {n:2d}: {us * 1000:.0f} ns per DSMEM store + cluster.sync()", flush=True)
    buf = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    total = 48 << 20                                   # the small preset's bf16 weights, about
    runs = [(cold, ctas, 1, slot, slots, False) for cold in (True, False) for ctas in (1, 8, 16, 132)
            for slot, slots in ((16384, 8), (32768, 6), (65536, 3))]
    runs += [(True, ctas, cluster, 65536, 3, False) for ctas, cluster in ((16, 16), (8, 8), (128, 16), (128, 8))]
    runs += [(True, ctas, cluster, slot, slots, True) for ctas, cluster in ((1, 1), (16, 1), (16, 16))
             for slot, slots in ((16384, 8), (32768, 6), (65536, 3))]
    for cold, ctas, cluster, slot, slots, cpasync in runs:
        name = "cold" if cold else "warm"
        per = (total // ctas) // slot * slot
        reps = min(5, buf.numel() // (ctas * per) - 1)
        us = mod.intake(buf, ctas, per, slot, slots, reps, cold, cluster, cpasync)
        gbs = ctas * per / us / 1e3
        copy = "cp.async" if cpasync else "bulk"
        rows["intake"].append(dict(mode=name, copy=copy, ctas=ctas, cluster=cluster, slot=slot, slots=slots,
                                   bytes_per_cta=per, us=us, GBps=gbs, GBps_per_cta=gbs / ctas))
        print(f"{name} {copy:8s} ctas {ctas:3d} cluster {cluster:2d} slot {slot:6d}x{slots}: "
              f"{ctas * per / 2**20:6.1f} MiB in {us:8.1f} us = {gbs:7.1f} GB/s ({gbs / ctas:6.1f} per CTA)",
              flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cluster_probe.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
