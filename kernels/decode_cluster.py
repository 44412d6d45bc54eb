"""Batch-1 whole-model decode as one launch of one thread-block cluster (CUDA C++, sm 9.0+): ``cluster_decode.cu``.

:class:`~seqedge.kernels.decode_fused.FusedDecoder` runs a decode step as 5 launches per layer; at batch 1 each
costs ~2-2.5 us of dependent latency (the previous kernel completing, then its activations read back from L2),
and the 36 stages of ``small`` add up to 4-7x the bandwidth floor. Here the same stages run inside one cluster
of NC CTAs (16 where the card allows, one per SM):

- every CTA keeps the activations (x, the projections, the mixer output, the SwiGLU hidden) in its own shared
  memory, writes each value it computes into all NC copies (distributed shared memory), and a hardware cluster
  barrier (~0.5 us for 16 CTAs) ends each stage instead of a kernel boundary;
- each CTA's weights are packed once, at construction, into one stream in the order it uses them; bulk copies
  bring the stream through a ring of shared-memory slots, running ahead of the computation across stages and
  layers as far as the ring allows, so the weights stream at the CTAs' intake rate (~100 GB/s each, measured by
  ``benchmarks/cluster_probe.py``) while the dependent chain runs.

The math is FusedDecoder's (DESIGN §1, ``model.step``): float32 activations and sums, bf16 weights. Batch 1 and
bf16 weights only; ``FusedDecoder`` takes everything else. The kernel is compiled on first use with
``torch.utils.cpp_extension.load_inline`` (needs nvcc and ninja; cached by torch afterwards).

    >>> dec = ClusterDecoder(model)                          # bf16 model on an sm 9.0+ GPU; weights packed here
    >>> dec.reset()
    >>> logits = dec.step(torch.tensor([72], device="cuda"))   # [1, V] float32; a view of a static buffer
"""

from __future__ import annotations

import ctypes
import functools
import pathlib
from dataclasses import dataclass

import torch

from .decode_graph import StaticDecoder
from .decode_pack import Layer, pack_layer

THREADS = 512          # per CTA (NT in cluster_decode.cu)
MAX_STATE_ROWS = 16    # MAXR in cluster_decode.cu
MAX_GEMV_INPUT = 2048  # the widest GEMV input the kernel holds in registers
MAX_LAYERS = 64        # MAXL in cluster_decode.cu
_SOURCE = pathlib.Path(__file__).with_name("cluster_decode.cu")


class _Params(ctypes.Structure):
    """``DecodeParams`` of cluster_decode.cu, field for field."""

    _fields_ = [(name, ctypes.c_void_p) for name in
                ("stream", "chunk_off", "chunk_bytes", "tokens", "embed", "logits")] + \
               [("tails", ctypes.c_void_p * MAX_LAYERS), ("states", ctypes.c_void_p * MAX_LAYERS)] + \
               [(name, ctypes.c_int) for name in
                ("chunk_stride", "D", "NP", "C", "R", "H", "DK", "DV", "F", "V", "KW", "L", "delta", "nc",
                 "slot", "slots", "o_ring", "o_xs", "o_xn", "o_proj", "o_o", "o_a", "o_hid", "o_prm", "o_tail",
                 "o_g", "o_red", "o_col", "o_hs", "o_coff", "o_cbytes", "smem_bytes")] + \
               [(name, ctypes.c_float) for name in ("eps", "g_min", "scale")] + [("debug", ctypes.c_int)]


def _tile(width: int) -> int:
    """Register tiles per lane (8 values each, 32 lanes) for a GEMV input of ``width``, as the kernel's switch."""
    n = -(-width // 256)
    return n if n <= 4 else 6 if n <= 6 else 8


@functools.lru_cache(maxsize=None)
def _extension(widths: tuple[int, int, int]):
    """The kernel compiled for GEMV inputs of widths (D, H * DV, F): one GEMV body per call site (built on first
    use, then loaded from torch's extension cache)."""
    from torch.utils.cpp_extension import load_inline

    cpp = ("int cd_launch(int64_t params, int64_t nc, int64_t smem, int64_t stream);\n"
           "int cd_max_clusters(int64_t nc, int64_t smem);\n")
    cuda = _SOURCE.read_text() + """
int cd_launch(int64_t params, int64_t nc, int64_t smem, int64_t stream) {
  return cluster_decode_launch((const void*)params, (int)nc, (int)smem, (cudaStream_t)stream);
}
int cd_max_clusters(int64_t nc, int64_t smem) { return cluster_decode_max_clusters((int)nc, (int)smem); }
"""
    d, hdv, f = (_tile(w) for w in widths)
    return load_inline(f"seqedge_cluster_decode_{d}_{hdv}_{f}", cpp, cuda_sources=cuda,
                       functions=["cd_launch", "cd_max_clusters"], verbose=False,
                       extra_cuda_cflags=["-O3", f"-DCD_NI_D={d}", f"-DCD_NI_HDV={hdv}", f"-DCD_NI_F={f}"])


def _split(n: int, r: int, nc: int) -> tuple[int, int]:
    """Rows [lo, hi) of CTA r when n rows are dealt to nc CTAs (as the kernel computes them)."""
    return n * r // nc, n * (r + 1) // nc


@dataclass(frozen=True)
class ClusterPlan:
    """Shapes and the per-CTA partition of one model at cluster size ``nc`` (host-side, no GPU needed)."""

    D: int
    NP: int
    C: int
    R: int
    H: int
    DK: int
    DV: int
    F: int
    V: int
    KW: int
    L: int
    nc: int

    @classmethod
    def of(cls, config, nc: int) -> "ClusterPlan":
        c = config
        n_in = c.conv_channels + c.gate_rank + c.num_heads + c.value_size
        return cls(c.hidden_size, n_in, c.conv_channels, c.gate_rank, c.num_heads, c.head_k_dim, c.head_v_dim,
                   c.mlp_hidden_size, c.vocab_size, c.conv_kernel, c.num_layers, nc)

    @property
    def ncols(self) -> int:
        """State columns (of the flat H * DV) per CTA in the mixer."""
        return self.H * self.DV // self.nc

    def heads(self, r: int) -> tuple[int, int]:
        """(first head, number of heads) that CTA r's mixer columns touch."""
        lo = r * self.ncols
        h0 = lo // self.DV
        return h0, (lo + self.ncols - 1) // self.DV - h0 + 1

    def problems(self) -> list[str]:
        """Why the kernel cannot take these shapes (empty: it can)."""
        out = []
        HDV = self.H * self.DV
        if HDV % self.nc or THREADS % max(self.ncols, 1) or self.ncols == 0:
            out.append(f"num_heads * head_v_dim = {HDV} must split into {self.nc} column blocks that divide "
                       f"{THREADS}")
        elif self.DK % (THREADS // self.ncols) or self.DK // (THREADS // self.ncols) > MAX_STATE_ROWS:
            out.append(f"head_k_dim = {self.DK} must be a multiple of {THREADS // self.ncols} and at most "
                       f"{MAX_STATE_ROWS * (THREADS // self.ncols)} at cluster size {self.nc}")
        if self.L > MAX_LAYERS:
            out.append(f"num_layers = {self.L} is more than the kernel's {MAX_LAYERS}")
        if self.DK % 32 or self.DV % 32:
            out.append(f"head dims must be multiples of 32, got {self.DK}, {self.DV}")
        for name, width in (("hidden_size", self.D), ("value size", HDV), ("mlp hidden size", self.F),
                            ("gate_rank", self.R)):
            if width % 8:
                out.append(f"{name} = {width} must be a multiple of 8 (16-byte rows)")
        for name, width in (("hidden_size", self.D), ("value size", HDV), ("mlp hidden size", self.F)):
            if width > MAX_GEMV_INPUT:
                out.append(f"{name} = {width} is wider than the kernel's {MAX_GEMV_INPUT}")
        return out

    def param_floats(self, r: int) -> int:
        """Float32 parameters of one layer for CTA r (norms, biases, conv taps, gate bias, skip, out_norm)."""
        lo, hi = _split(self.NP, r, self.nc)
        return _pad32(2 * self.D + (hi - lo) * (1 + self.KW) + self.heads(r)[1] * self.DK + self.ncols + self.DV)

    def smem_layout(self, slots: int, limit: int, chunks: int) -> dict[str, int]:
        """Byte offsets of the kernel's shared-memory buffers and the ring's slot size, for ``limit`` bytes and a
        chunk table of ``chunks`` rows."""
        HDV = self.H * self.DV
        n_a = max(_split(self.NP, r, self.nc)[1] - _split(self.NP, r, self.nc)[0] for r in range(self.nc))
        n_g = max(self.heads(r)[1] for r in range(self.nc)) * self.DK
        prm = max(max(self.param_floats(r) for r in range(self.nc)), _pad32(self.D))
        floats = dict(o_xs=self.D, o_xn=self.D, o_proj=self.NP, o_o=HDV, o_a=HDV, o_hid=self.F, o_prm=prm,
                      o_tail=self.L * n_a * (self.KW - 1), o_g=n_g, o_red=THREADS, o_col=THREADS, o_hs=3 * self.H,
                      o_coff=2 * chunks, o_cbytes=chunks)
        rest = sum(16 * -(-4 * n // 16) for n in floats.values())
        slot = (limit - 128 - rest) // slots // 128 * 128   # slots and chunks 128-byte aligned: bulk copies
                                                             # run several times slower on 16-byte alignment
        out, at = {"o_ring": 128, "slot": slot, "slots": slots}, 128 + slots * slot
        for name, n in floats.items():
            out[name] = at
            at += 16 * -(-4 * n // 16)
        out["smem_bytes"] = at
        return out


def _pad32(n: int) -> int:
    """n rounded up to 32 floats (128 bytes)."""
    return -(-n // 32) * 32


def _rows_u8(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8).reshape(-1)


def pack_stream(layers: list[Layer], final_norm: torch.Tensor, head: torch.Tensor, plan: ClusterPlan,
                slot: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every CTA's weights and parameters as one byte stream, in the order the kernel consumes them.

    Returns (stream uint8, chunk offsets [nc, stride] int64, chunk bytes [nc, stride] int32): chunk j of CTA r is
    ``stream[off[r, j]:off[r, j] + bytes[r, j]]``, whole rows of one segment, at most ``slot`` bytes; rows of zero
    bytes end the table (``stride`` leaves room past the last chunk for the ring's look-ahead).
    """
    p = plan
    pieces: list[torch.Tensor] = []
    tables: list[list[tuple[int, int]]] = []
    at = 0

    def put(t: torch.Tensor, row_bytes: int | None, table: list[tuple[int, int]]) -> None:
        nonlocal at
        data = _rows_u8(t)
        if row_bytes is None:                                   # a parameter block: one chunk
            if data.numel() > slot:
                raise ValueError(f"a parameter block of {data.numel()} bytes does not fit a {slot}-byte slot")
            table.append((at, data.numel()))
        else:
            rows = data.numel() // row_bytes
            per = slot // row_bytes
            for start in range(0, rows, per):
                table.append((at + start * row_bytes, min(per, rows - start) * row_bytes))
        pieces.append(data)
        at += data.numel()
        if at % 128:                                            # every segment starts 128-byte aligned
            pieces.append(data.new_zeros(128 - at % 128))
            at += pieces[-1].numel()

    for r in range(p.nc):
        table: list[tuple[int, int]] = []
        lo_a, hi_a = _split(p.NP, r, p.nc)
        lo_d, hi_d = _split(p.D, r, p.nc)
        lo_f, hi_f = _split(p.F, r, p.nc)
        lo_v, hi_v = _split(p.V, r, p.nc)
        h0, nh = p.heads(r)
        mlo = r * p.ncols
        for L in layers:
            dev = L.w_in.device
            conv = torch.zeros(p.NP, p.KW, dtype=torch.float32, device=dev)
            conv[:p.C] = L.conv_w.float()
            prm = torch.cat([L.attn_norm.float(), L.mlp_norm.float(), L.b_in[lo_a:hi_a].float(),
                             conv[lo_a:hi_a].reshape(-1), L.up_b[h0 * p.DK:(h0 + nh) * p.DK].float(),
                             L.skip[mlo:mlo + p.ncols].float(), L.out_norm.float()])
            put(torch.cat([prm, prm.new_zeros(p.param_floats(r) - prm.numel())]), None, table)
            put(L.w_in[lo_a:hi_a], 2 * p.D, table)
            put(L.up_w[h0 * p.DK:(h0 + nh) * p.DK], 2 * p.R, table)
            put(L.w_out[lo_d:hi_d], 2 * p.H * p.DV, table)
            put(torch.cat([L.w_mlp[lo_f:hi_f], L.w_mlp[p.F + lo_f:p.F + hi_f]], dim=1), 4 * p.D, table)
            put(L.w_down[lo_d:hi_d], 2 * p.F, table)
        fn = final_norm.float()
        put(torch.cat([fn, fn.new_zeros(_pad32(p.D) - p.D)]), None, table)
        put(head[lo_v:hi_v], 2 * p.D, table)
        tables.append(table)
    stride = max(len(t) for t in tables) + 16                   # the ring looks at most `slots` (< 16) ahead
    off = torch.zeros(p.nc, stride, dtype=torch.int64)
    nbytes = torch.zeros(p.nc, stride, dtype=torch.int32)
    for r, table in enumerate(tables):
        off[r, :len(table)] = torch.tensor([o for o, _ in table], dtype=torch.int64)
        nbytes[r, :len(table)] = torch.tensor([b for _, b in table], dtype=torch.int32)
    return torch.cat(pieces), off, nbytes


def cluster_sizes(config) -> list[int]:
    """Cluster sizes the kernel can take for this model, preferred first (more CTAs: more weight intake)."""
    return [nc for nc in (16, 8) if not ClusterPlan.of(config, nc).problems()]


class ClusterDecoder(StaticDecoder):
    """One-launch-per-token decoder for a bf16 :class:`seqedge.model.SequentialAttentionModel` at batch 1.

    Same interface as :class:`~seqedge.kernels.decode_fused.FusedDecoder` (``reset``, ``step``, ``state``,
    ``states``, ``logits``, ``graph``). ``cluster``: CTAs in the cluster (default: 16 where the card can place
    such a cluster, else 8); ``slots``: shared-memory slots of the weight ring (each as large as fits). The
    weights are packed at construction (a second copy on the GPU): build a new decoder after changing them.
    """

    launches_per_step = 1

    def __init__(self, model, batch_size: int = 1, warmup: int = 2, capture: bool = True,
                 cluster: int | None = None, slots: int = 3) -> None:
        c = model.config
        device, dtype = model.embed.weight.device, model.embed.weight.dtype
        if batch_size != 1:
            raise ValueError(f"ClusterDecoder runs batch 1, got batch_size={batch_size}; use FusedDecoder")
        if device.type != "cuda" or torch.cuda.get_device_capability(device) < (9, 0):
            raise ValueError(f"ClusterDecoder needs a GPU of sm 9.0 or newer (thread-block clusters), the model is "
                             f"on {device}; use FusedDecoder")
        if dtype != torch.bfloat16:
            raise ValueError(f"ClusterDecoder reads bf16 weights, the model is {dtype}; use FusedDecoder")
        sizes = cluster_sizes(c) if cluster is None else [cluster]
        if not sizes:
            raise ValueError("ClusterDecoder cannot take this model: "
                             + "; ".join(ClusterPlan.of(c, 16).problems()) + "; use FusedDecoder")
        problems = ClusterPlan.of(c, sizes[0]).problems()
        if problems:
            raise ValueError(f"ClusterDecoder at cluster size {sizes[0]}: " + "; ".join(problems))
        if not 2 <= slots <= 8:
            raise ValueError(f"slots must be in [2, 8], got {slots}")
        ext = _extension((c.hidden_size, c.value_size, c.mlp_hidden_size))
        limit = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
        layers = [pack_layer(block) for block in model.blocks]
        head = model.embed.weight if model.head is None else model.head.weight
        for nc in sizes:
            plan = ClusterPlan.of(c, nc)
            chunks = 0
            while True:                 # the table takes shared memory from the ring: size both until they agree
                layout = plan.smem_layout(slots, limit, chunks)
                stream, off, nbytes = pack_stream(layers, model.norm.weight.detach(), head.detach().contiguous(),
                                                  plan, layout["slot"])
                if off.shape[1] <= chunks:
                    break
                chunks = off.shape[1]
            if ext.cd_max_clusters(nc, layout["smem_bytes"]) > 0:
                break
        else:
            raise RuntimeError(f"this GPU cannot place a cluster of {sizes} CTAs with {layout['smem_bytes']} bytes "
                               f"of shared memory each; use FusedDecoder")
        self.plan, self.layout, self._ext = plan, layout, ext
        self._static_buffers(model, 1, device)
        self.embed = model.embed.weight.detach().contiguous()
        self.stream, self.chunk_off, self.chunk_bytes = stream, off.to(device), nbytes.to(device)
        self.logits = torch.zeros(1, c.vocab_size, dtype=torch.float32, device=device)
        p = self._params = _Params()
        for name, t in (("stream", self.stream), ("chunk_off", self.chunk_off), ("chunk_bytes", self.chunk_bytes),
                        ("tokens", self.tokens), ("embed", self.embed), ("logits", self.logits)):
            setattr(p, name, t.data_ptr())
        for i in range(c.num_layers):
            p.tails[i], p.states[i] = self.states[2 * i].data_ptr(), self.states[2 * i + 1].data_ptr()
        p.chunk_stride = off.shape[1]
        for name in ("D", "NP", "C", "R", "H", "DK", "DV", "F", "V", "KW", "L", "nc"):
            setattr(p, name, getattr(plan, name))
        p.delta = int(c.update_rule == "delta")
        for name, value in layout.items():
            setattr(p, name, value)
        p.eps, p.g_min, p.scale = c.norm_eps, c.g_min, c.head_k_dim ** -0.5
        if capture:
            self._capture(warmup)

    @property
    def scratch(self) -> tuple[torch.Tensor, ...]:
        """Buffers every step rewrites before reading (tests poison them with NaN)."""
        return (self.logits,)

    def _body(self) -> torch.Tensor:
        """One launch: tokens -> logits ``[1, V]`` (the static buffer), states updated in place."""
        err = self._ext.cd_launch(ctypes.addressof(self._params), self.plan.nc, self.layout["smem_bytes"],
                                  torch.cuda.current_stream().cuda_stream)
        if err:
            raise RuntimeError(f"cluster decode launch failed with CUDA error {err}")
        return self.logits
