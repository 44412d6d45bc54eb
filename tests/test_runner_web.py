"""The JavaScript runner (runners/web) against the Python session on the bundled model's onnx-ort graphs.

Node.js on onnxruntime-node and on onnxruntime-web's WASM build (the browser's kernels): logits of a prefill +
steps stream, the final state, and states handed between Python and JavaScript both ways. The browser page on
onnxruntime-web (WASM) in headless Chromium, driven by playwright-core: its greedy completion equals the Python
session's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import seqedge
from seqedge.defaults import default_checkpoint_dir
from seqedge.evaluate.parity import BUDGETS, StreamResult, compare, reference_stream, run_stream, text_tokens
from seqedge.state import State

WEB = Path(__file__).resolve().parents[1] / "runners" / "web"
CHROMIUM = "/usr/bin/chromium"
TOKENS = 256
PREFILL = 150                   # two chunks of 64 and a 22-token tail as steps, then 106 steps
PROMPT = "def parse_args(self, args=None):\n"


def _require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js >= 20 is not installed (apt-get install -y nodejs); the JS runner cannot run")
    if not (WEB / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip(f"the JS runner's dependencies are not installed: run `npm ci` in {WEB}")
    return node


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """The bundled model with onnx-ort at fp32 and int8."""
    _require_node()
    from seqedge.export.api import export_model

    out = tmp_path_factory.mktemp("web") / "art"
    export_model(default_checkpoint_dir(), out, ["onnx-ort"], ["none", "int8"], progress=False)
    return out


def _node(*args: str) -> dict:
    proc = subprocess.run([_require_node(), str(WEB / "cli.mjs"), *args, "--json"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _node_stream(artifact: Path, tmp_path: Path, tokens, prefill: int, quantization: str = "fp32",
                 state_in: Path | None = None, backend: str = "node") -> StreamResult:
    """Logits [T, V] and final state of ``tokens`` run by the Node CLI (prefill, then one step each)."""
    (tmp_path / "tokens.json").write_text(json.dumps([int(t) for t in tokens]))
    extra = ["--state-in", str(state_in)] if state_in else []
    extra += ["--backend", backend]
    _node(str(artifact), "--tokens", str(tmp_path / "tokens.json"), "--prefill", str(prefill), "--quantization",
          quantization, "--dump-logits", str(tmp_path / "logits.f32"), "--state-out", str(tmp_path / "state.st"),
          *extra)
    logits = np.fromfile(tmp_path / "logits.f32", dtype="<f4").reshape(len(tokens), -1)
    state = State.load(tmp_path / "state.st")
    return StreamResult(logits.astype(np.float64), [np.asarray(s, np.float64) for s in state.numpy()])


def _max_state_rel(a: StreamResult, b: StreamResult) -> float:
    return max(float(np.linalg.norm(x - y) / np.linalg.norm(y)) for x, y in zip(a.state, b.state))


@pytest.mark.parametrize("backend", ["node", "web"])
def test_fp32_logits_and_state_match_python(artifact, tmp_path, backend):
    tokens = text_tokens(TOKENS)
    python = run_stream(seqedge.load(artifact, "onnxruntime-fused"), tokens, PREFILL)
    node = _node_stream(artifact, tmp_path, tokens, PREFILL, backend=backend)
    report = compare(node, python, tokens, prefill=PREFILL, tag="fp32")
    assert report.max_abs <= BUDGETS["fp32"].max_abs, report.max_abs
    assert report.top1 == 1.0
    assert _max_state_rel(node, python) < 1e-5


def test_node_int8_within_the_int8_budget(artifact, tmp_path):
    """Same int8 graph in two ONNX Runtime builds: held to the int8 budget, and much closer than int8 error."""
    tokens = text_tokens(TOKENS)
    python = run_stream(seqedge.load(artifact, "onnxruntime-fused", quantization="int8"), tokens, PREFILL)
    node = _node_stream(artifact, tmp_path, tokens, PREFILL, quantization="int8")
    report = compare(node, python, tokens, prefill=PREFILL, tag="int8")
    assert report.passed, report.failures
    assert report.top1 >= 0.99 and report.max_abs <= 1e-2, (report.top1, report.max_abs)


def test_wasm_int8_within_the_int8_budget(artifact, tmp_path):
    """The browser's int8 kernels (onnxruntime-web WASM) against the float64 reference over 1,024 tokens: the
    length the int8 budget is defined on (seqedge validate)."""
    tokens = text_tokens(1024)
    prefill = 982                                            # 15 chunks of 64, 22 steps, then 42 steps
    wasm = _node_stream(artifact, tmp_path, tokens, prefill, quantization="int8", backend="web")
    report = compare(wasm, reference_stream(artifact, tokens, prefill), tokens, prefill=prefill, tag="int8")
    assert report.passed, report.failures


def test_state_moves_between_python_and_node_both_ways(artifact, tmp_path):
    tokens = text_tokens(TOKENS)
    session = seqedge.load(artifact, "onnxruntime-fused")
    head, tail = tokens[:100], tokens[100:]
    _, state = session.prefill(head[None], session.init_state(1))
    state.save(tmp_path / "python.st")
    continued = _python_continue(session, tail, state)
    node = _node_stream(artifact, tmp_path, tail, 70, state_in=tmp_path / "python.st")
    np.testing.assert_allclose(node.logits, continued.logits, rtol=0, atol=1e-4)
    assert _max_state_rel(node, continued) < 1e-5
    # and back: the state the Node run saved continues in Python as Node's own next step would
    back = State.load(tmp_path / "state.st")
    logits, _ = session.step(np.asarray([65]), back)
    expected, _ = session.step(np.asarray([65]), _continued_state(session, continued))
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def _python_continue(session, tokens, state) -> StreamResult:
    logits, state = session.prefill(np.asarray(tokens)[None, :70], state)
    pieces = [logits[0]]
    for t in tokens[70:]:
        step, state = session.step(np.asarray([t]), state)
        pieces.append(step)
    return StreamResult(np.concatenate(pieces).astype(np.float64), [np.asarray(s, np.float64) for s in state.numpy()])


def _continued_state(session, result: StreamResult) -> State:
    return State([s.astype(np.float32) for s in result.state], session.specs, session.fingerprint)


def test_browser_greedy_text_equals_python(artifact):
    node = _require_node()
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium); the page cannot run")
    from seqedge.tokenizer import ByteTokenizer

    expected = ByteTokenizer().decode(seqedge.load(artifact, "onnxruntime-fused").generate(PROMPT, 48))
    proc = subprocess.run([node, str(WEB / "drive.mjs"), str(artifact), "-p", PROMPT, "-n", "48", "--query",
                           "ep=wasm", "--chromium", CHROMIUM], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = json.loads(proc.stdout)
    assert page["status"].startswith("onnx-ort/fp32 on onnxruntime-web"), page["status"]
    assert page["text"] == expected
    assert page["tokens_per_s"] > 0


def test_serve_web_serves_the_page_and_artifact(artifact):
    import re
    import sys
    import urllib.request

    _require_node()
    proc = subprocess.Popen([sys.executable, "-m", "seqedge.cli.main", "serve-web", "-m", str(artifact), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://\S+/", line).group(0)
        with urllib.request.urlopen(url, timeout=30) as page:
            assert b"seqedge in the browser" in page.read()
        with urllib.request.urlopen(url + "artifact/manifest.json", timeout=30) as manifest:
            assert json.loads(manifest.read())["fingerprint"] == seqedge.load(artifact, "onnxruntime-fused").fingerprint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_web_refuses_a_folder_that_is_no_artifact(tmp_path, capsys):
    from seqedge.cli.main import main

    assert main(["serve-web", "-m", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqedge serve-web: error: ") and "manifest.json" in err[0]
