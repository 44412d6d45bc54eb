"""The int4 module policy: one decision in ``QuantizationRecipe``, applied by every target to exactly its modules.

ONNX: the MatMuls of the selected modules become MatMulNBits and every other constant-weight MatMul stays a plain
float32 MatMul; the graph's weights are mapped back to modules by value, because the step graph's node names drop
the ``attn`` scope (``/blocks.0/gate_up/MatMul`` there is the attention's ``gate_up``, not the MLP's).
ExecuTorch: torchao quantizes exactly the selected linears and the export records which and why the others stay.
The parity of the quantized variants at their budgets is tested in test_export_onnx.py / test_executorch.py.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from _artifacts import EXPORT_DIMS, onnx_artifact, tiny_model

from seqedge.artifact import read_manifest
from seqedge.config import SequentialAttentionConfig
from seqedge.export.quantization import MLP_MODULES, QuantizationRecipe, WeightIndex, int4_selection
from seqedge.model import SequentialAttentionModel

ATTENTION = ("qkv", "gate_down", "gate_up", "beta", "out_gate", "out_proj")


def _mlp(num_layers: int) -> list[str]:
    return sorted(f"blocks.{i}.mlp.{m}" for i in range(num_layers) for m in ("gate_up", "down"))


def _kept(num_layers: int, head: str = "embed") -> list[str]:
    return sorted([f"blocks.{i}.attn.{m}" for i in range(num_layers) for m in ATTENTION] + [head])


# the policy ---------------------------------------------------------------------------------------------------
def test_default_policy_selects_exactly_the_mlp_linears():
    model = tiny_model("gated")
    selected, kept = int4_selection(model, QuantizationRecipe("int4"))
    assert sorted(selected) == _mlp(2)
    assert sorted(kept) == _kept(2)          # attention projections and the tied embedding/head stay float


def test_policy_on_the_bundled_model_and_an_untied_head():
    from seqedge.defaults import load_default

    model = load_default()
    selected, kept = int4_selection(model, QuantizationRecipe("int4"))
    assert sorted(selected) == _mlp(model.config.num_layers) and sorted(kept) == _kept(model.config.num_layers)
    torch.manual_seed(0)
    untied = SequentialAttentionModel(SequentialAttentionConfig(**EXPORT_DIMS, tie_embeddings=False))
    selected, kept = int4_selection(untied, QuantizationRecipe("int4"))
    assert sorted(selected) == _mlp(2) and sorted(kept) == _kept(2, head="head")


def test_int4_all_selects_every_linear_and_the_head():
    from seqedge.export.quantization import make_recipe

    model = tiny_model("gated")
    selected, kept = int4_selection(model, make_recipe("int4-all"))
    assert sorted(selected) == sorted(_mlp(2) + _kept(2)) and kept == []            # the tied head: "embed"
    torch.manual_seed(0)
    untied = SequentialAttentionModel(SequentialAttentionConfig(**EXPORT_DIMS, tie_embeddings=False))
    selected, kept = int4_selection(untied, make_recipe("int4-all"))
    assert sorted(selected) == sorted(_mlp(2) + _kept(2, head="head")) and kept == []


def test_int4_all_packs_a_model_without_mlps(tmp_path):
    """int4-mlp selects nothing in a model without MLP blocks (an imported Mamba2) and is refused up front;
    int4-all packs its mixer projections and the tied head (ONNX MatMulNBits) while the embedding table, under
    packed_table's size floor, stays float32, and the variant stays within the int4 budget."""
    from seqedge.evaluate.export_check import export_verified
    from seqedge.export.api import export_model

    model = tiny_model("gated", seed=4, mixer=dict(mlp=False))
    with pytest.raises(ValueError, match="int4-mlp recipe quantizes"):
        export_model(model, tmp_path / "mlp", ["onnx"], ["int4-mlp"], progress=False)
    assert not (tmp_path / "mlp").exists()
    manifest = export_verified(model, tmp_path / "all", ["onnx"], ["int4-all"], progress=False)  # within budget
    variant = manifest.variant("onnx", "int4")
    assert variant.quantization["recipe"] == "int4-all"
    assert variant.info["int4"]["quantized_modules"] == sorted(int4_selection(model, variant_recipe(variant))[0])
    assert all(m.startswith("blocks.") and ".mlp." not in m for m in variant.info["int4"]["quantized_modules"][:-1])
    assert variant.info["int4"]["quantized_modules"][-1] == "embed"
    graph = onnx.load(str(manifest.path(variant, "step")))
    table = {n.input[0] for n in graph.graph.node if n.op_type == "Gather"} & {t.name for t in graph.graph.initializer}
    assert [t.data_type for t in graph.graph.initializer if t.name in table] == [onnx.TensorProto.FLOAT]
    assert manifest.data["parity"]["onnx/int4"]["top1"] > 0


def variant_recipe(variant) -> QuantizationRecipe:
    return QuantizationRecipe.from_dict(variant.quantization)


def test_two_recipes_of_one_variant_are_refused_before_writing(tmp_path):
    from seqedge.export.api import export_model

    with pytest.raises(ValueError, match="int4-mlp and int4-all both write the int4 variant"):
        export_model(tiny_model("gated"), tmp_path / "a", ["onnx"], ["int4-mlp", "int4-all"], progress=False)
    assert not (tmp_path / "a").exists()


def test_policy_applies_only_to_int4_and_is_configurable():
    name = "blocks.3.mlp.down"
    assert QuantizationRecipe("int4").int4_applies(name)
    assert not any(QuantizationRecipe(s).int4_applies(name) for s in ("none", "fp16", "int8"))
    assert not QuantizationRecipe("int4").int4_applies("blocks.3.attn.out_proj")
    assert not QuantizationRecipe("int4").int4_applies("embed")
    everything = QuantizationRecipe("int4", int4_modules=("*",))
    assert everything.int4_applies("embed") and everything.int4_applies("blocks.0.attn.qkv")
    assert QuantizationRecipe("int4", int4_modules=["blocks.*.mlp.down"]).int4_modules == ("blocks.*.mlp.down",)
    for bad in ((), ("",), (3,)):
        with pytest.raises(ValueError, match="int4_modules"):
            QuantizationRecipe("int4", int4_modules=bad)


def test_recipe_metadata_round_trip():
    recipe = QuantizationRecipe("int4", 64)
    data = recipe.to_dict()
    assert data == {"recipe": "int4-mlp", "scheme": "int4", "group_size": 64, "int4_modules": list(MLP_MODULES)}
    assert QuantizationRecipe.from_dict(data) == recipe
    assert "int4_modules" not in QuantizationRecipe("int8").to_dict()
    # an int4 artifact written before the policy existed packed every matrix: read it as such
    assert QuantizationRecipe.from_dict({"scheme": "int4", "group_size": 32}).int4_modules == ("*",)


def test_weight_index_finds_modules_by_value():
    model = tiny_model("gated")
    index = WeightIndex(model)
    w = model.blocks[1].mlp.down.weight.detach().numpy()
    assert index.lookup(np.ascontiguousarray(w.T)) == ["blocks.1.mlp.down"]         # ONNX: transposed, float32
    assert index.lookup(w.astype(np.float16)) == ["blocks.1.mlp.down"]              # Core ML: float16
    assert index.lookup(model.embed.weight.detach().numpy().T.copy()) == ["embed"]   # the tied head
    assert index.lookup(w + np.float32(1e-3)) == []                                  # values, not shapes
    assert index.lookup(w.astype(np.float64)) == [] and index.lookup(w[0]) == []


# ONNX ---------------------------------------------------------------------------------------------------------
def _modules_of(graph, model) -> dict[str, list[str]]:
    from seqedge.export.onnx_target import matmul_modules

    return matmul_modules(graph, model)


@pytest.mark.parametrize("rule", ["gated", "delta"])
def test_onnx_int4_packs_the_mlp_and_keeps_the_rest_float32(tmp_path_factory, rule):
    artifact = onnx_artifact(tmp_path_factory, rule)
    model = tiny_model(rule)
    manifest = read_manifest(artifact)
    for entry in ("step", "chunk"):
        fp32 = onnx.load(str(artifact / "onnx" / "fp32" / f"{entry}.onnx")).graph
        int4 = onnx.load(str(artifact / "onnx" / "int4" / f"{entry}.onnx")).graph
        source = _modules_of(fp32, model)
        # the tied head reads the embedding table itself in both (export/tied_head.py), not a MatMul weight
        kept = [m for m in _kept(2) if m != "embed"]
        assert sorted(n for names in source.values() for n in names) == sorted(_mlp(2) + kept)
        packed = {n.name.removesuffix("_Q4") for n in int4.node if n.op_type == "MatMulNBits"}
        assert sorted(source[n][0] for n in packed) == _mlp(2)
        # the MatMuls left are the kept modules, with their weights untouched (float32, equal to the model's)
        assert sorted(n for names in _modules_of(int4, model).values() for n in names) == kept
        for graph in (fp32, int4):
            head = {n.op_type for n in graph.node if "model.embed.weight" in n.input}
            assert head == {"Gather", "Gemm" if entry == "step" else "Transpose"}, (entry, head)
        assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in int4.initializer)
    # the step graph's scope-dropped name is the attention's gate_up, and it stays a plain MatMul
    step = onnx.load(str(artifact / "onnx" / "int4" / "step.onnx")).graph
    assert {n.op_type for n in step.node if n.name.startswith("/blocks.0/gate_up/MatMul")} == {"MatMul"}
    info = manifest.variant("onnx", "int4").info["int4"]
    assert info["quantized_modules"] == _mlp(2) and info["float32_modules"] == _kept(2)
    assert info["policy"] == list(MLP_MODULES)
    assert manifest.variant("onnx", "int4").quantization["int4_modules"] == list(MLP_MODULES)


def test_onnx_int4_follows_another_policy(tmp_path):
    """The target packs whatever the recipe selects (here one attention projection and the tied head)."""
    from seqedge.export.api import export_model
    from seqedge.export.base import ExportContext
    from seqedge.export.onnx_target import OnnxTarget

    model = tiny_model("gated", seed=1)
    fp32 = export_model(model, tmp_path / "art", ["onnx"], ["none"], progress=False)
    recipe = QuantizationRecipe("int4", 16, ("blocks.*.attn.out_proj", "embed"))
    variant = OnnxTarget().export(ExportContext(model, fp32.root, recipe, variants=list(fp32.variants)))
    want = ["blocks.0.attn.out_proj", "blocks.1.attn.out_proj", "embed"]
    assert variant.info["int4"]["quantized_modules"] == want
    for entry in ("step", "chunk"):
        graph = onnx.load(str(fp32.root / variant.files[entry]["path"])).graph
        nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
        assert len(nbits) == 3
        assert all(onnx.helper.get_attribute_value(a) == 16 for n in nbits for a in n.attribute
                   if a.name == "block_size")
        assert sorted(n for names in _modules_of(graph, model).values() for n in names) == sorted(
            set(_mlp(2) + _kept(2)) - set(want))


def test_onnx_int4_refuses_a_policy_that_selects_nothing(tmp_path):
    from seqedge.export.api import export_model
    from seqedge.export.base import ExportContext
    from seqedge.export.onnx_target import OnnxTarget

    model = tiny_model("gated", seed=2)
    fp32 = export_model(model, tmp_path / "art", ["onnx"], ["none"], progress=False)
    recipe = QuantizationRecipe("int4", int4_modules=("no.such.module",))
    with pytest.raises(ValueError, match="selects no MatMul"):
        OnnxTarget().export(ExportContext(model, fp32.root, recipe, variants=list(fp32.variants)))


# ExecuTorch (torchao; no lowering here, see test_executorch.py for the program) ------------------------------
def test_executorch_int4_quantizes_exactly_the_selected_linears():
    pytest.importorskip("torchao", reason="torchao is not installed (pip install executorch==1.5.1 torchao==0.18.0)")
    from seqedge.export.executorch_target import prepare_model

    model = tiny_model("gated")
    before = copy.deepcopy(model.state_dict())
    quantized, info = prepare_model(model, QuantizationRecipe("int4"))
    assert sorted(info["quantized_modules"]) == _mlp(2) and info["quantized_linears"] == 4
    assert info["float32_linears"] == _kept(2)[:-1]          # every attention linear (the embedding is no linear)
    assert set(info["float32_reasons"].values()) == {"not selected by the recipe's int4 policy"}
    assert info["float32_modules"] == ["embed (tied head)"] and info["policy"] == list(MLP_MODULES)
    for name, module in quantized.named_modules():
        if isinstance(module, torch.nn.Linear):
            plain = type(module.weight) is torch.nn.Parameter and type(module.weight.data) is torch.Tensor
            assert plain is (name not in info["quantized_modules"]), name
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())       # the input is untouched
    # every linear: the attention's narrow gate_up (input width 4) cannot be grouped by 32 and says so
    _, every = prepare_model(model, QuantizationRecipe("int4", int4_modules=("*",)))
    assert every["float32_linears"] == ["blocks.0.attn.gate_up", "blocks.1.attn.gate_up"]
    assert "not a multiple of group_size 32" in every["float32_reasons"]["blocks.0.attn.gate_up"]
    _, int8 = prepare_model(model, QuantizationRecipe("int8"))          # every linear and the tied head's copy
    assert int8["quantized_linears"] == 17 and int8["float32_linears"] == [] and "head" in int8["quantized_modules"]
    assert "untied_head" in int8 and int8["float32_modules"] == ["embed"]
    # int4-all: the tied head gets a packed copy; the model's logits keep their float32 table
    from seqedge.export.quantization import make_recipe

    untied, info = prepare_model(model, make_recipe("int4-all"))
    assert "head" in info["quantized_modules"] and "untied_head" in info
    assert type(untied.embed.weight.data) is torch.Tensor and model.head is None
    torch.testing.assert_close(untied.embed.weight, model.embed.weight)
