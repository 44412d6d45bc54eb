"""Compares the delta rule's kernel with fla's chunk_kda / chunk_gated_delta_rule on one CUDA card.

Started in a fresh process by tests/test_kernels_delta_gpu.py::test_delta_against_fla: inside the pytest process
the first call of ``seqedge::chunk_scan_delta`` after fla's import can end in a segmentation fault in torch's
dispatcher (benchmarks/results/gpu_tests.md), while the same calls in a fresh interpreter pass. fla is
imported first, as its own scripts do. Prints one JSON object: relative error per output and gradient; where fla's
backward refuses this Triton on this card (its gated backward on Hopper with Triton < 3.7.1), its message under
``fla_backward_refused`` and only o and the state are compared.

    python tests/delta_fla_check.py T PER_HEAD(0|1)
"""

from __future__ import annotations

import json
import sys

import torch


def main(T: int, per_head: bool) -> dict:
    if per_head:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_fn
    else:
        from fla.ops.kda import chunk_kda as fla_fn
    from seqedge.kernels import delta_scan

    B, H, D = 2, 4, 128
    gen = torch.Generator(device="cuda").manual_seed(T)
    r = lambda *s: torch.randn(*s, generator=gen, device="cuda")
    q = r(B, T, H, D).bfloat16()
    k = torch.nn.functional.normalize(r(B, T, H, D), dim=-1).bfloat16()
    v = r(B, T, H, D).bfloat16()
    g = -5.0 * torch.rand(B, T, H, 1 if per_head else D, generator=gen, device="cuda")
    beta = torch.rand(B, T, H, generator=gen, device="cuda")
    s0 = r(B, H, D, D)
    do = r(B, T, H, D).bfloat16()
    outs, refused = {}, None
    for name, fn, gate in (("fla", fla_fn, g[..., 0] if per_head else g), ("ours", delta_scan, g)):
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, gate, beta)]
        o, fin = fn(*leaves, initial_state=s0, output_final_state=True)
        outs[name] = (o, fin)
        if refused is None:
            try:
                outs[name] += tuple(torch.autograd.grad(o, leaves, do))
            except RuntimeError as err:      # fla's gated backward refuses some Triton versions on Hopper
                refused = str(err).splitlines()[0][:300]
    rel = {"fla_backward_refused": refused} if refused else {}
    for name, ours, theirs in zip(("o", "state", "dq", "dk", "dv", "dg", "dbeta"), outs["ours"], outs["fla"]):
        x, ref = ours.double(), theirs.double().reshape(ours.shape)
        rel[name] = float("inf") if torch.isnan(x).any() else float((x - ref).norm() / ref.norm().clamp_min(1e-30))
    return rel


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2] == "1")))
