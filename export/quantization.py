"""Quantization recipes: what to quantize. Each export target maps the scheme onto its own packing (how).

The int4 module policy lives here and only here: :meth:`QuantizationRecipe.int4_applies` says, for a module's
qualified name in :class:`~seqedge.model.SequentialAttentionModel` (``blocks.0.mlp.gate_up``, ``embed``, ...),
whether its weight matrix gets 4-bit weights; :func:`int4_selection` applies it to a whole model, and
:class:`WeightIndex` maps a weight found in an exported graph back to the module it came from, so each target
can check that exactly the selected matrices were packed.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SCHEMES = ("none", "fp16", "int8", "int4")

# The default int4 policy: the two SwiGLU matrices of every block (see QuantizationRecipe's docstring for why).
MLP_MODULES = ("blocks.*.mlp.gate_up", "blocks.*.mlp.down")
# Every linear layer of the blocks (mixer projections and MLP).
BLOCK_LINEARS = ("blocks.*",)
TIED_HEAD = "embed"        # the weight-matrix name of the output head when it is tied to the embedding
# Every linear layer: the blocks' and the output head (tied or not). A tied head gets its own packed copy (ONNX,
# ExecuTorch); where the table is large, ONNX embeds the tokens from that copy's blocks (packed_table) and
# ExecuTorch packs the table for its lookup kernels (executorch_embedding); Core ML packs the one table both read.
EVERY_LINEAR = BLOCK_LINEARS + (TIED_HEAD, "head")


@dataclass(frozen=True)
class RecipeInfo:
    """A named recipe users pick (``seqedge export --quantize NAME``): the scheme it sets, what it does in one
    line, and how each target packs it."""

    name: str
    scheme: str
    summary: str
    per_target: dict[str, str]
    int4_modules: tuple[str, ...] = MLP_MODULES     # the int4 policy (int4 recipes only)


# Recipe names say what they do; the variant tag in an artifact (fp32, fp16, int8, int4) stays the scheme's.
RECIPES: dict[str, RecipeInfo] = {r.name: r for r in (
    RecipeInfo("fp32", "none", "float32 weights and compute (the reference format)",
               {"onnx": "float32", "onnx-ort": "float32", "executorch": "float32 (XNNPACK)", "coreml": "float32",
                "tensorrt": "float32"}),
    RecipeInfo("fp16", "fp16", "float16 weights and compute; state I/O stays float32",
               {"onnx": "float16 graph, float32 state I/O", "onnx-ort": "float16 graph",
                "executorch": "float16 program (XNNPACK)", "coreml": "float16 compute",
                "tensorrt": "float16 engine"}),
    RecipeInfo("int8-dynamic", "int8", "int8 weights of every linear layer; activations quantized to int8 per "
               "token at run time where the target can (Core ML: weights only)",
               {"onnx": "MatMulNBits (8 bits, symmetric blocks of 128 along K), int8 activations at run time; "
                        "a tied head's blocks also embed the tokens where the table is 1 MiB or more",
                "onnx-ort": "as onnx, with the fused LinearAttention scan",
                "executorch": "torchao int8 weights per output channel, int8 dynamic activations per token (a "
                              "tied head gets a packed copy, and a table of 1 MiB or more int8 rows for the lookup)",
                "coreml": "int8 weights per output channel, float16 compute (no activation quantization)"}),
    RecipeInfo("int4-mlp", "int4", "int4 weights in groups (--group-size) for the MLP linears only; attention "
               "projections and the tied head keep the float format",
               {"onnx": "MatMulNBits (4 bits, uint8 zero points); int8 activations in the step, and in the chunk "
                        "from 512 wide on (float below)",
                "onnx-ort": "as onnx, with the fused LinearAttention scan",
                "executorch": "torchao 8da4w: int4 grouped weights, int8 dynamic activations per token",
                "coreml": "int4 weights per block, float16 compute"}),
    RecipeInfo("int4-all", "int4", "int4 weights in groups (--group-size) for every linear layer: mixer "
               "projections, MLP and the output head; a tied table of 1 MiB or more is read in 4 bits by the "
               "token lookup too (ONNX: the head's blocks; ExecuTorch: a packed copy of its own). Writes the "
               "same int4 variant as int4-mlp: one of the two per artifact",
               {"onnx": "MatMulNBits (4 bits, uint8 zero points); int8 activations in the step, and in the chunk "
                        "from 512 wide on (float below); a tied head's blocks also embed the tokens where the "
                        "table is 1 MiB or more",
                "onnx-ort": "as onnx, with the fused LinearAttention scan",
                "executorch": "torchao 8da4w: int4 grouped weights, int8 dynamic activations per token; a tied "
                              "head is untied into a packed copy, and a table of 1 MiB or more packed in 4-bit "
                              "groups for the lookup",
                "coreml": "int4 weights per block, float16 compute; a tied table is packed for both its "
                          "readers"}, int4_modules=EVERY_LINEAR),
)}
# The names of seqedge 0.1, still accepted (the CLI prints a deprecation line).
RECIPE_ALIASES: dict[str, str] = {"none": "fp32", "int8": "int8-dynamic", "int4": "int4-mlp"}
_TAG_OF_SCHEME = {"none": "fp32", "fp16": "fp16", "int8": "int8", "int4": "int4"}


def canonical_recipe(name: str) -> str:
    """The recipe name ``name`` stands for (a recipe name as is, a 0.1 name through :data:`RECIPE_ALIASES`, a
    variant tag such as ``int8``); ValueError listing the recipes otherwise."""
    name = name.strip()
    if name in RECIPES:
        return name
    if name in RECIPE_ALIASES:
        return RECIPE_ALIASES[name]
    raise ValueError(f"quantize must be one of the recipes {', '.join(RECIPES)} (0.1 names "
                     f"{', '.join(RECIPE_ALIASES)} still work), got {name!r}; `seqedge export --list-recipes` "
                     "describes them")


def recipe_tag(name: str) -> str:
    """The variant tag (fp32, fp16, int8, int4) of recipe ``name`` (or of an alias, or of a tag)."""
    return _TAG_OF_SCHEME[RECIPES[canonical_recipe(name)].scheme]


def make_recipe(name: str, group_size: int = 32) -> "QuantizationRecipe":
    """The :class:`QuantizationRecipe` that recipe ``name`` (or a 0.1 name) means, with its name recorded."""
    info = RECIPES[canonical_recipe(name)]
    return QuantizationRecipe(info.scheme, group_size, int4_modules=info.int4_modules, name=info.name)


def _default_name(scheme: str, int4_modules: tuple[str, ...]) -> str:
    """The recipe name of a scheme (with, for int4, its module policy); another int4 policy is ``int4-custom``."""
    if scheme == "int4":
        return next((r.name for r in RECIPES.values() if r.scheme == "int4"
                     and r.int4_modules == tuple(int4_modules)), "int4-custom")
    return next((r.name for r in RECIPES.values() if r.scheme == scheme), scheme)


@dataclass(frozen=True)
class QuantizationRecipe:
    """``scheme`` for the weight matrices; state I/O stays float32.

    - ``fp16``: weights and compute in float16.
    - ``int8``: 8-bit weights of every linear layer, dynamic 8-bit activations where the target supports them.
    - ``int4``: 4-bit grouped weights (``group_size`` input columns share a scale) for the modules matching
      ``int4_modules`` (``fnmatch`` patterns over qualified module names); every other weight matrix keeps the
      precision of the float variant (float32; float16 where a target computes in float16). Activations per target.

    Why int4 covers only the MLP by default: on a small model the attention projections (``qkv``, the
    forget-gate ``gate_down``/``gate_up``, ``beta``, ``out_gate``, ``out_proj``) and the tied embedding/head are the
    matrices most sensitive to 4-bit error (a likely reason, not isolated here: their error enters the gates and
    the recurrent state, which carry it along the stream, or the logits directly). On the bundled model every
    matrix in int4, and the attention projections alone, miss the parity budget; the MLP linears meet it
    (``benchmarks/results/int4_policy.md``). Pass ``int4_modules=("*",)`` for every weight matrix a target can pack.
    """

    scheme: str = "none"
    group_size: int = 32
    int4_modules: tuple[str, ...] = MLP_MODULES
    name: str = ""          # the recipe name recorded in the manifest (default: the one the scheme stands for)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"quantize must be one of {list(SCHEMES)}, got {self.scheme!r}")
        if self.group_size not in (16, 32, 64, 128, 256):
            raise ValueError(f"group_size must be one of 16, 32, 64, 128, 256, got {self.group_size}")
        patterns = (self.int4_modules,) if isinstance(self.int4_modules, str) else tuple(self.int4_modules)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"int4_modules must be a non-empty sequence of module-name patterns (e.g. "
                             f"{list(MLP_MODULES)}), got {self.int4_modules!r}")
        object.__setattr__(self, "int4_modules", patterns)
        expected = _default_name(self.scheme, patterns)
        if not self.name:
            object.__setattr__(self, "name", expected)
        elif self.name != expected:
            raise ValueError(f"name {self.name!r} does not describe scheme {self.scheme!r} with int4_modules "
                             f"{list(patterns)} (expected {expected!r})")

    @property
    def tag(self) -> str:
        """Short name used in file names and reports (``none`` -> ``fp32``)."""
        return "fp32" if self.scheme == "none" else self.scheme

    def int4_applies(self, module_name: str) -> bool:
        """Whether the weight matrix of ``module_name`` (a qualified name in the model, e.g.
        ``blocks.0.mlp.down``; ``embed`` for the tied head) gets 4-bit weights under this recipe."""
        return self.scheme == "int4" and any(fnmatch.fnmatchcase(module_name, p) for p in self.int4_modules)

    def to_dict(self) -> dict[str, Any]:
        data = {"recipe": self.name, **asdict(self)}
        del data["name"]
        if self.scheme == "int4":
            data["int4_modules"] = list(self.int4_modules)
        else:
            del data["int4_modules"]          # meaningless for the other schemes
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantizationRecipe":
        data = dict(data)
        data["name"] = data.pop("recipe", "")      # checked against scheme and policy in __post_init__
        if data.get("scheme") == "int4" and "int4_modules" not in data:
            data["int4_modules"] = ("*",)    # written before the policy existed: every matrix was packed
        if (data["name"], tuple(data.get("int4_modules", ()))) == ("int4-all", BLOCK_LINEARS):
            data["name"] = ""                # int4-all before it packed the head: the policy as recorded
        return cls(**data)


def weight_matrices(model) -> dict[str, Any]:
    """``{module name: weight [out, in]}`` of every matrix a target may quantize: each ``nn.Linear`` and the
    output head (the embedding table ``[V, D]`` when tied, named ``embed``; ``head`` otherwise)."""
    import torch.nn as nn

    found = {name: m.weight for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if getattr(model, "head", None) is None:
        found[TIED_HEAD] = model.embed.weight
    return found


def int4_split(recipe: QuantizationRecipe, found: dict[str, list[str]], where: str) -> tuple[list[str], list[str]]:
    """``(selected, kept)`` keys of ``found`` (``{graph weight name: module names}``, from :class:`WeightIndex`)
    under ``recipe``'s int4 policy. Raises if one weight stands for modules the policy treats differently (a
    shared weight cannot be both packed and kept)."""
    for key, modules in found.items():
        if len({recipe.int4_applies(m) for m in modules}) > 1:
            raise RuntimeError(f"{where} {key!r}: modules {modules} have identical weights but the int4 policy "
                               f"treats them differently; one shared weight cannot be both")
    selected = [key for key, modules in found.items() if recipe.int4_applies(modules[0])]
    return selected, [key for key in found if key not in selected]


def int4_selection(model, recipe: QuantizationRecipe) -> tuple[list[str], list[str]]:
    """``(selected, kept)`` module names of ``model``'s weight matrices under ``recipe``'s int4 policy."""
    names = list(weight_matrices(model))
    return [n for n in names if recipe.int4_applies(n)], [n for n in names if not recipe.int4_applies(n)]


class WeightIndex:
    """Finds which module of ``model`` a weight array in an exported graph came from, by value.

    Exporters rename weights (``onnx::MatMul_368``, ``model_blocks_0_mlp_down_weight_to_fp16``) and drop module
    scopes, so names are not a reliable key; the values are: a constant-folded transpose or a cast to the graph's
    float dtype is exact. An array matches a module when it equals the module's weight (or its transpose) cast to
    the array's dtype, bit for bit.
    """

    def __init__(self, model) -> None:
        self._weights = {n: w.detach().float().cpu().numpy() for n, w in weight_matrices(model).items()}
        self._index: dict[tuple, set[str]] = {}
        for dtype in (np.float32, np.float16):
            for name, w in self._weights.items():
                for arr in (w, w.T):
                    self._index.setdefault(self._key(arr.astype(dtype)), set()).add(name)

    @staticmethod
    def _key(arr: np.ndarray) -> tuple:
        arr = np.ascontiguousarray(arr)
        return arr.dtype.str, arr.shape, hashlib.sha256(arr.tobytes()).hexdigest()

    def has_shape(self, shape: tuple[int, ...]) -> bool:
        """Whether some weight matrix (or its transpose) has this shape."""
        return any(tuple(shape) in (w.shape, w.T.shape) for w in self._weights.values())

    def lookup(self, arr: np.ndarray) -> list[str]:
        """The module names whose weight equals ``arr`` (usually one; several if weights are identical)."""
        if arr.dtype not in (np.float32, np.float16) or arr.ndim != 2:
            return []
        return sorted(self._index.get(self._key(arr), ()))
