"""float16 <-> float32 casts lowered into XNNPACK delegates (export/xnnpack_cast.py).

A module that casts both ways around float16 work is lowered with the executorch target's partitioner: no cast
may stay on the portable kernels, the program must run (loaded from a file, as on a device) and agree with eager
PyTorch to float16 rounding (XNNPACK's float16 kernels may accumulate in float16). A dropped cast fails the
lowering itself (as XNNPACK's copy-removal pass can drop one: the next op then sees float32 where it was built
for float16). Copies the original ExecuTorch code handles (channels-last conversions around a conv2d) must lower and
run as before.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

pytest.importorskip("executorch", reason="needs executorch (pip install executorch==1.5.1)")

from seqedge.export import executorch_target as et  # noqa: E402
from seqedge.export.xnnpack_cast import _is_float_cast  # noqa: E402


class HalfSandwich(nn.Module):
    """float32 in -> float16 linear and product -> float32 sigmoid gate -> float16 linear -> float32 out."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(48, 40).half()
        self.b = nn.Linear(40, 24).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.half())
        h = h * h
        hf = h.float()
        hf = hf * torch.sigmoid(hf - 1.0)
        return self.b(hf.half()).float() + x[..., :24]


class ChannelsLastConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) + 1.0


def _lower_and_run(module: nn.Module, x: torch.Tensor, tmp_path) -> tuple[torch.Tensor, dict]:
    from executorch import exir
    from executorch.runtime import Runtime

    with torch.no_grad():
        program = torch.export.export(module.eval(), (x,), strict=False)
    edge = exir.to_edge_transform_and_lower({"forward": program}, partitioner=[et._partitioner()],
                                            compile_config=exir.EdgeCompileConfig(_check_ir_validity=False))
    counts = et.delegation_counts(edge.exported_program("forward").graph_module)
    path = tmp_path / "model.pte"
    path.write_bytes(edge.to_executorch(et.backend_config(exir)).buffer)
    method = Runtime.get().load_program(str(path)).load_method("forward")
    return method.execute([x])[0], counts


def test_float_casts_are_delegated_and_kept(tmp_path):
    torch.manual_seed(0)
    module, x = HalfSandwich(), 3 * torch.randn(4, 48)
    out, counts = _lower_and_run(module, x, tmp_path)
    assert not any("copy" in op and "dim_order" in op or op == "_to_copy.default"
                   for op in counts["portable_ops"]), counts
    assert counts["portable_nodes"] == 0 and counts["delegated_subgraphs"] == 1, counts
    with torch.no_grad():
        expected = module(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    scale = expected.abs().max()
    err = float((out - expected).abs().max() / scale)
    print(f'max error / max |expected|: {err:.2e}')
    assert err <= 5e-3, err


def test_channels_last_copies_lower_as_before(tmp_path):
    torch.manual_seed(0)
    module, x = ChannelsLastConv(), torch.randn(2, 3, 6, 5)
    out, counts = _lower_and_run(module, x, tmp_path)
    assert counts["portable_nodes"] == 0, counts
    with torch.no_grad():
        expected = module(x)
    assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_only_contiguous_float16_float32_casts_qualify():
    graph = torch.fx.Graph()
    src = graph.placeholder("x")

    def cast(src_val: torch.Tensor, dst_val: torch.Tensor, **kwargs) -> bool:
        src.meta["val"] = src_val
        node = graph.call_function(torch.ops.aten._to_copy.default, (src,), kwargs)
        node.meta["val"] = dst_val
        return _is_float_cast(node)

    f32, f16 = torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float16)
    assert cast(f32, f16) and cast(f16, f32) and cast(f32, f16, dim_order=[0, 1])
    assert not cast(f32, f32)                                             # a memory-format copy: upstream's
    assert not cast(f32, torch.zeros(2, 3, dtype=torch.bfloat16))
    assert not cast(f32, torch.zeros(2, 3, dtype=torch.int32))
    assert not cast(f32, f16, dim_order=[1, 0])
    assert not cast(f32, f16, memory_format=torch.channels_last)
