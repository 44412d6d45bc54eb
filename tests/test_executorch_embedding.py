"""``export.executorch_embedding``: an int8 or int4 ExecuTorch program's embedding table packed for ExecuTorch's
quantized lookup kernels. The packing rounds each value to its row's or group's nearest code (half a step at most),
lays 4-bit codes out as the kernel reads them (checked by decoding the bytes by hand, and by a lowered program
whose lookups the ExecuTorch runtime answers with the eager rows), and is applied only where the head has its own
copy and the table is large; a tied export with a large table then stores no float32 table and keeps its parity
budget (slow: two lowerings)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.runtime", reason="ExecuTorch is not installed (pip install executorch==1.5.1 "
                                                  "torchao==0.18.0)")

from _artifacts import tiny_model  # noqa: E402
from seqedge.export.executorch_embedding import MIN_TABLE_BYTES, PackedEmbedding, pack_embedding  # noqa: E402


def _table(V: int = 37, D: int = 64, seed: int = 0) -> torch.Tensor:
    table = torch.randn(V, D, generator=torch.Generator().manual_seed(seed))
    table[3, :5] *= 30                                       # outliers: their rows' and groups' scales grow
    table[4] = 0                                             # an all-zero row: scale 0, codes 0
    return table


def test_eight_bit_rows_are_the_table_to_half_a_step():
    table = _table()
    packed = PackedEmbedding(table, 8)
    rows = packed.dequantized()
    assert torch.all((rows - table).abs() <= packed.scales[:, None] / 2 + 1e-6)
    assert torch.equal(rows[4], torch.zeros(64))
    tokens = torch.tensor([[0, 3, 36], [4, 4, 1]])
    assert torch.equal(packed(tokens), rows[tokens])


@pytest.mark.parametrize("group", [16, 64])
def test_four_bit_groups_take_the_scale_of_least_error(group):
    table = _table()
    packed = PackedEmbedding(table, 4, group)
    rows = packed.dequantized()
    V, D = table.shape
    blocks, got = table.reshape(V, D // group, group), rows.reshape(V, D // group, group)
    error = ((got - blocks) ** 2).sum(2)
    never_clipped = blocks.abs().amax(2, keepdim=True) / 7               # the scale that clips nothing
    plain = ((torch.round(blocks / never_clipped.clamp_min(1e-30)).clamp(-8, 7) * never_clipped - blocks) ** 2).sum(2)
    assert torch.all(error <= plain * (1 + 1e-6) + 1e-12) and error.sum() < plain.sum()
    scales = packed.scales.repeat_interleave(group, dim=1)
    assert torch.all((rows - table).abs() <= torch.maximum(scales / 2, table.abs() - 7 * scales) + 1e-6)
    assert torch.equal(rows[4], torch.zeros(64))
    tokens = torch.tensor([[0, 3, 36], [4, 4, 1]])
    assert torch.equal(packed(tokens), rows[tokens])


def test_four_bit_codes_sit_as_the_kernel_reads_them():
    table = _table(V=5, D=32)
    packed = PackedEmbedding(table, 4, 16)
    byte = packed.weight.to(torch.int32)
    high, low = (byte >> 4) - 8, (byte & 15) - 8               # column 2i in the high nibble, 2i + 1 in the low
    codes = torch.stack([high, low], -1).reshape(5, 32).float()
    by_hand = codes * packed.scales.repeat_interleave(16, dim=1)
    assert torch.equal(by_hand, packed.dequantized())
    with pytest.raises(ValueError, match="divide the width"):
        PackedEmbedding(table, 4, 24)


def test_only_a_large_table_beside_a_head_of_its_own_is_packed():
    big = MIN_TABLE_BYTES // (4 * 32) + 8
    tied = tiny_model("gated", vocab_size=big)
    assert tied.head is None and pack_embedding(tied, 8) is None            # the head reads the table itself
    small = tiny_model("gated")
    small.head = torch.nn.Linear(32, small.config.vocab_size, bias=False)
    assert pack_embedding(small, 8) is None                                  # under the size floor
    untied = tiny_model("gated", vocab_size=big)
    untied.head = torch.nn.Linear(32, big, bias=False)
    info = pack_embedding(untied, 4, 24)                                     # 24 does not divide 32: 8 bits
    assert info["bits"] == 8 and isinstance(untied.embed, PackedEmbedding) and untied.embed.weight.dtype == torch.int8
    assert untied.embed.weight.device == untied.head.weight.device


@pytest.mark.parametrize("bits, group", [(8, None), (4, 16)])
def test_the_runtime_kernels_read_the_packed_table(tmp_path, bits, group):
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from seqedge.runtimes.executorch_runtime import _import_runtime

    _import_runtime()                                         # registers the quantized kernels
    packed = PackedEmbedding(_table(), bits, group).eval()
    tokens = torch.tensor([[0, 3, 36, 4, 17]])
    program = to_edge_transform_and_lower(torch.export.export(packed, (tokens,), strict=False),
                                          compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch()
    path = tmp_path / "embedding.pte"
    path.write_bytes(program.buffer)
    method = Runtime.get().load_program(path).load_method("forward")
    torch.testing.assert_close(method.execute([tokens])[0], packed(tokens), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_quantized_program_stores_no_float_table(tmp_path):
    from seqedge.artifact import read_manifest
    from seqedge.evaluate.export_check import export_verified
    from seqedge.runtimes import load

    vocab = MIN_TABLE_BYTES // (4 * 32) + 64                 # hidden 32: a table just over the floor
    model = tiny_model("gated", vocab_size=vocab)
    export_verified(model, tmp_path / "art", ["executorch"], ["int8-dynamic", "int4-all"], progress=False)
    manifest = read_manifest(tmp_path / "art")
    parity = json.loads((tmp_path / "art" / "manifest.json").read_text())["parity"]
    for tag, bits in (("int8", 8), ("int4", 4)):
        variant = manifest.variant("executorch", tag)
        quantization = variant.info["quantization"]
        assert quantization["packed_embedding"]["bits"] == bits and quantization["float32_modules"] == []
        assert variant.files["program"]["bytes"] < vocab * 32 * 4            # less than the float32 table alone
        assert parity[f"executorch/{tag}"]["passed"], parity
        session = load(tmp_path / "art", "executorch", quantization=tag)
        tokens = np.random.default_rng(0).integers(0, vocab, (2, 20))
        logits, _ = session.prefill(tokens, session.init_state(2))
        assert np.isfinite(logits).all()
