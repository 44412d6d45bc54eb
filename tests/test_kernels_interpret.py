"""The Triton kernels' own code on CPU: forward, backward and decode step run in Triton's interpreter.

The GPU tests (test_kernels_gpu.py) check compiled kernels on a card; this checks the same kernel source, every
config, against the float64 forms on any machine with triton installed (CI installs it), so a wrong index or
formula in a kernel fails here before a GPU is ever involved. float32 only (see kernels_interpret_check.py).
"""

from __future__ import annotations

import importlib.util

import pytest

from _kernel_cases import run_in_interpreter

HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton for its CPU interpreter (pip install triton==3.6.0)")
def test_kernels_in_triton_interpreter():
    proc = run_in_interpreter("kernels_interpret_check.py")
    assert proc.stdout.count("\n") > 40        # every case printed a line: nothing was silently skipped
