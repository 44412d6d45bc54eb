"""Importing seqedge is light: no torch, no optional runtime, no CUDA (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import tempfile
import sys

import pytest

HEAVY = ("torch", "onnx", "onnxruntime", "executorch", "coremltools", "tensorrt", "tensorrt_rtx_bindings", "triton")


def modules_loaded_by(statement: str) -> list[str]:
    """Top-level names of the heavy modules present in ``sys.modules`` after running ``statement``."""
    code = (f"import sys, json\n{statement}\n"
            f"heavy = {HEAVY!r}\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tempfile.gettempdir(), timeout=120)  # installed package, not ./seqedge
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("statement", [
    "import seqedge",
    "import seqedge; seqedge.SequentialAttentionConfig.preset('tiny'); seqedge.ByteTokenizer().encode('hi')",
    "import seqedge.runtimes",
    "from seqedge.cli.main import build_parser; build_parser()",     # `seqedge --help` starts fast
])
def test_import_is_light(statement):
    assert modules_loaded_by(statement) == []


def test_the_check_can_see_heavy_imports():
    assert "torch" in modules_loaded_by("import seqedge; seqedge.SequentialAttentionModel")
