"""The delta rule's Triton kernels on CPU: prep, scan and backward in Triton's interpreter against float64.

tests/test_kernels_delta_gpu.py checks the compiled kernels on a card; this checks the same kernel source on any
machine with triton installed (CI installs it). float32 only (see delta_interpret_check.py).
"""

from __future__ import annotations

import importlib.util

import pytest

from _kernel_cases import run_in_interpreter

HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton for its CPU interpreter (pip install triton==3.6.0)")
def test_delta_kernels_in_triton_interpreter():
    proc = run_in_interpreter("delta_interpret_check.py")
    assert proc.stdout.count("\n") > 16        # every case printed a line: nothing was silently skipped
