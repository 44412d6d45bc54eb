"""The Triton kernels' own code on CPU: forward, backward and decode step run in Triton's interpreter.

The GPU tests (test_kernels_gpu.py) check compiled kernels on a card; this checks the same kernel source, every
config, against the float64 forms on any machine with triton installed (CI installs it), so a wrong index or
formula in a kernel fails here before a GPU is ever involved. float32 only (see kernels_interpret_check.py).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton for its CPU interpreter (pip install triton==3.6.0)")
def test_kernels_in_triton_interpreter():
    script = Path(__file__).with_name("kernels_interpret_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600,
                          cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ALL OK" in proc.stdout
    assert proc.stdout.count("\n") > 40        # every case printed a line: nothing was silently skipped
