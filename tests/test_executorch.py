"""ExecuTorch target and runtime: one ``.pte`` with ``step`` and ``chunk`` on XNNPACK, against the float64 model.

Lowering is slow (ExecuTorch re-traces every XNNPACK partition through ~20 passes),
so the model has one layer, each (rule, scheme) is exported once per module, and the default suite exports two
programs: float32 for the delta rule (the larger chunk graph) and int4 for the gated rule; the other (rule,
scheme) pairs and a two-layer model are ``slow``.

What is asserted:
Every stream (two chunk calls, a 5-token tail of steps, then 20 steps; batch 2, state carried) is scored row by
row by the one parity harness, ``seqedge.evaluate.parity.compare``, against the float64 model.
- float32: the harness's fp32 budget (max |logit diff| <= 1e-4) and the final state's relative error <= 1e-5.
- int8 / int4: (a) the program matches torchao's eager quantized model of the same recipe (the lowering is
  faithful): relative RMS logit error <= 1e-2; (b) against the float64 model: relative RMS logit error within
  the scheme's budget, top-1 agreement >= 95% (the harness's budget; weak for a random tiny model whose
  logits are nearly flat, so (b)'s error bound is the real check) and the state finite float32.
  Budget: the relative RMS noise of b-bit symmetric rounding of a Gaussian group whose max is ~3 sigma,
  2^-(b-1) * 3 / sqrt(12): int8 0.68%, int4 10.8%. The layers' noise reaches the logits attenuated (the float32
  embedding dominates the residual stream), so int4 (the MLP only) gets one layer's noise; int8 also packs the tied
  head, whose rounding reaches the logits undiminished, so it gets that plus one layer's, in quadrature (x sqrt 2).
- fp16: relative RMS logit error <= 5e-3 (fp16 rounding 2^-11 ~ 4.9e-4 per op, ~10 ops along the path) and
  top-1 >= 99% where the reference's top-1/top-2 margin exceeds 1e-2 x its logit scale.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.runtime", reason="ExecuTorch is not installed (pip install executorch==1.5.1 "
                                                  "torchao==0.18.0)")
pytest.importorskip("torchao", reason="torchao is not installed (pip install executorch==1.5.1 torchao==0.18.0)")

from _artifacts import tiny_model  # noqa: E402
from _donation import assert_streams_in_turn_match_alone  # noqa: E402
from seqedge.artifact import ARTIFACT_FORMAT, ARTIFACT_FORMAT_VERSION, write_manifest  # noqa: E402
from seqedge.export.base import ExportContext, get_target  # noqa: E402
from seqedge.evaluate import parity  # noqa: E402
from seqedge.export.quantization import QuantizationRecipe  # noqa: E402
from seqedge.model import SequentialAttentionModel  # noqa: E402
from seqedge.runtimes import load  # noqa: E402
from seqedge.state import State  # noqa: E402

PREFILL, STEPS, BATCH = 2 * 16 + 5, 20, 2
RELATIVE_BUDGET = {"int8": math.sqrt(2) * 2.0 ** -7 * 3 / math.sqrt(12), "int4": 2.0 ** -3 * 3 / math.sqrt(12),
                   "fp16": 5e-3}
slow = pytest.mark.slow


def write_artifact(root: Path, model: SequentialAttentionModel, variants) -> Path:
    """The fields ``read_manifest`` requires, as the export orchestrator writes them."""
    config = model.config
    write_manifest(root, {"format": ARTIFACT_FORMAT, "format_version": ARTIFACT_FORMAT_VERSION,
                          "model": config.to_dict(), "fingerprint": model.fingerprint,
                          "num_parameters": model.num_parameters(),
                          "state": [s.to_dict() for s in model.state_specs], "chunk_size": config.chunk_size,
                          "variants": [v.to_dict() for v in variants]})
    return root


_ARTIFACTS: dict[tuple, tuple] = {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(rule, scheme, num_layers=1)`` -> (artifact dir, variant, model); each exported once."""

    def get(rule: str, scheme: str, num_layers: int = 1):
        key = (rule, scheme, num_layers)
        if key not in _ARTIFACTS:
            model = tiny_model(rule, num_layers=num_layers)
            root = tmp_path_factory.mktemp(f"et-{rule}-{scheme}-{num_layers}")
            variant = get_target("executorch").export(ExportContext(model, root, QuantizationRecipe(scheme)))
            _ARTIFACTS[key] = (write_artifact(root, model, [variant]), variant, model)
        return _ARTIFACTS[key]

    return get


def token_stream(seed: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (BATCH, PREFILL + STEPS), generator=gen)


def session_stream(session, tokens: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
    """The same stream through a Session: ``prefill`` (chunk calls + steps), then ``step`` per token."""
    state = session.init_state(tokens.shape[0])
    poison = np.full((tokens.shape[0], tokens.shape[1], session.vocab_size), np.nan, np.float32)
    logits, state = session.prefill(tokens[:, :PREFILL].numpy(), state)
    poison[:, :PREFILL] = logits
    for t in range(PREFILL, tokens.shape[1]):
        poison[:, t], state = session.step(tokens[:, t].numpy(), state)
    return poison, state.numpy()


def scored_stream(session, model, tokens: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray], list]:
    """The stream through ``session`` (batch rows together, state carried), each row then scored by the one
    parity harness (``seqedge.evaluate.parity.compare``) against the float64 model: (logits, state, reports)."""
    logits, state = session_stream(session, tokens)
    reports = []
    for b in range(tokens.shape[0]):
        row = tokens[b].numpy()
        reference = parity.reference_stream(model, row, PREFILL)
        test = parity.StreamResult(logits[b].astype(np.float64), [s[b:b + 1] for s in state])
        reports.append(parity.compare(test, reference, row, prefill=PREFILL, tag=session.variant.tag))
    return logits, state, reports


# float32 ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule,num_layers", [("delta", 1), pytest.param("gated", 1, marks=slow),
                                             pytest.param("delta", 2, marks=slow)])
def test_float32_stream_matches_float64_model(exported, rule, num_layers):
    artifact, variant, model = exported(rule, "none", num_layers)
    session = load(artifact, runtime="executorch")
    logits, state, reports = scored_stream(session, model, token_stream())
    assert np.isfinite(logits).all() and all(s.dtype == np.float32 for s in state)
    for report in reports:
        assert report.passed, f"{rule}: {report.failures}"          # the fp32 budget: max |logit diff| <= 1e-4
        assert report.state_rel_err <= 1e-5, f"{rule}: final state relative error {report.state_rel_err:.2e}"


def test_variant_info_records_program_and_delegation(exported):
    artifact, variant, _ = exported("delta", "none")
    assert variant.target == "executorch" and variant.tag == "fp32"
    assert (artifact / variant.files["program"]["path"]).suffix == ".pte"
    info = variant.info
    assert info["methods"] == ["step", "chunk"] and info["state_io"] == "float32"
    assert info["batch"]["min"] == 1 and info["batch"]["max"] >= BATCH
    for entry in ("step", "chunk"):
        counts = info["delegation"][entry]
        assert counts["delegated_nodes"] > 0 and counts["delegated_subgraphs"] > 0
        assert counts["portable_nodes"] == sum(counts["portable_ops"].values())
    json.dumps(info)                                        # the manifest stores it as JSON


def test_program_reads_its_inputs_where_the_caller_keeps_them(exported):
    """Token and state inputs are outside the memory plan (no copy into the arena per call); outputs are planned,
    and the session copies them out (test_outputs_are_owned)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    artifact, variant, _ = exported("delta", "none")
    loaded = deserialize_pte_binary((artifact / variant.files["program"]["path"]).read_bytes())
    plans = getattr(loaded, "program", loaded).execution_plan
    assert sorted(p.name for p in plans) == ["chunk", "step"]
    for plan in plans:
        assert all(plan.values[i].val.allocation_info is None for i in plan.inputs), plan.name
        assert all(plan.values[i].val.allocation_info is not None for i in plan.outputs), plan.name
    # read in place, never written: the caller's arrays are as they were after the calls
    session = load(artifact, runtime="executorch")
    rng = np.random.default_rng(0)
    state = session.init_state(2).with_tensors([rng.standard_normal(s.shape).astype(np.float32)
                                                for s in session.init_state(2).numpy()])
    kept = [a.copy() for a in state.numpy()]
    session.step(np.array([3, 4]), state)
    session.prefill(np.ones((2, session.chunk_size), np.int64), state)
    for now, before in zip(state.numpy(), kept):
        np.testing.assert_array_equal(now, before)


def test_batch_range_and_bad_input_leave_session_usable(exported):
    artifact, variant, model = exported("delta", "none")
    session = load(artifact, runtime="executorch")
    too_big = variant.info["batch"]["max"] + 1
    with pytest.raises(ValueError, match=r"batch size .* outside the range \[1, \d+\]"):
        session.step(np.zeros(too_big, np.int64), session.init_state(too_big))
    with pytest.raises(ValueError, match="token ids"):
        session.step(np.array([300]), session.init_state(1))
    # batch 1 after the failures: the dynamic batch works below the traced example's batch (2), state carried
    tokens = token_stream()[:1, :PREFILL]
    logits, _ = session.prefill(tokens.numpy(), session.init_state(1))
    ref = copy.deepcopy(model).double()(tokens)[0].detach().numpy()
    assert float(np.abs(logits - ref).max()) <= 1e-4


def test_tampered_program_is_refused(exported, tmp_path):
    import shutil

    from seqedge.artifact import ArtifactError

    artifact, variant, _ = exported("delta", "none")
    copy_dir = tmp_path / "copy"
    shutil.copytree(artifact, copy_dir)
    program = copy_dir / variant.files["program"]["path"]
    program.write_bytes(program.read_bytes()[:-16])
    with pytest.raises(ArtifactError, match="sha256"):
        load(copy_dir, runtime="executorch")


@pytest.mark.parametrize("change,message", [
    (dict(conv_kernel=3), r"input 1 \(state.0\) has size 3 on axis 2, expected 2"),
    (dict(vocab_size=300), r"output 0 \(logits\) has size 259 on axis 1, expected 300"),
])
def test_program_of_another_model_is_refused_at_load(exported, tmp_path, change, message):
    """A manifest consistent with itself but not with the program: refused at load, naming the tensor."""
    import shutil

    from _hardening import consistent_config_change, edit_manifest

    from seqedge.artifact import ArtifactError

    artifact, _, _ = exported("delta", "none")
    copy_dir = tmp_path / "copy"
    shutil.copytree(artifact, copy_dir)
    edit_manifest(copy_dir, lambda data: consistent_config_change(data, **change))
    with pytest.raises(ArtifactError, match=message):
        load(copy_dir, runtime="executorch")


def test_read_only_state_runs_without_warnings(exported):
    """States from ONNX Runtime are read-only views; ExecuTorch takes them without torch's not-writable warning."""
    import warnings

    artifact, _, _ = exported("delta", "none")
    session = load(artifact, runtime="executorch")
    arrays = [a.copy() for a in session.init_state(1)]
    for a in arrays:
        a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logits, _ = session.step(np.array([1]), session.init_state(1).with_tensors(arrays))
    assert np.isfinite(logits).all()


# quantized --------------------------------------------------------------------------------------------------
def _torchao_eager_logits(model, scheme: str, tokens: torch.Tensor) -> np.ndarray:
    """The same recipe applied by torchao to the eager model, run through the same stream in float32."""
    from seqedge.export.executorch_target import prepare_model

    quantized, _ = prepare_model(model, QuantizationRecipe(scheme))
    with torch.no_grad():
        logits, state = quantized(tokens[:, :PREFILL])
        out = [logits]
        for t in range(PREFILL, tokens.shape[1]):
            step_logits, state = quantized.step(tokens[:, t], state)
            out.append(step_logits[:, None])
    return torch.cat(out, 1).numpy()


@pytest.mark.parametrize("rule,scheme", [("gated", "int4"), pytest.param("delta", "int4", marks=slow),
                                         pytest.param("gated", "int8", marks=slow),
                                         pytest.param("delta", "int8", marks=slow)])
def test_quantized_stream_within_scheme_budget(exported, rule, scheme):
    artifact, variant, model = exported(rule, scheme)
    session = load(artifact, runtime="executorch", quantization=scheme)
    tokens = token_stream()
    logits, state, reports = scored_stream(session, model, tokens)
    assert all(np.isfinite(s).all() and s.dtype == np.float32 for s in state), "state not finite float32"
    info = variant.info["quantization"]
    assert info["quantized_linears"] > 0 and info["activations"] == "int8 dynamic per token"
    if scheme == "int4":      # the recipe's int4 policy: the MLP linears only, recorded in the variant
        from seqedge.export.quantization import int4_selection

        assert sorted(info["quantized_modules"]) == sorted(int4_selection(model, QuantizationRecipe("int4"))[0])
        assert sorted(info["quantized_modules"]) == ["blocks.0.mlp.down", "blocks.0.mlp.gate_up"]
    faithful = parity.relative_rms(logits, _torchao_eager_logits(model, scheme, tokens))
    assert faithful <= 1e-2, f"{scheme}: program vs torchao eager model, relative RMS {faithful:.2e}"
    for r in reports:
        assert r.rel_rms <= RELATIVE_BUDGET[scheme], (f"{scheme}: relative RMS logit error {r.rel_rms:.3f} > "
                                                      f"budget {RELATIVE_BUDGET[scheme]:.3f} (top-1 {r.top1:.1%})")
        assert r.top1 >= parity.BUDGETS[scheme].min_top1, f"{scheme}: top-1 agreement {r.top1:.1%}"


@slow
def test_fp16_stream(exported):
    artifact, variant, model = exported("gated", "fp16")
    session = load(artifact, runtime="executorch", quantization="fp16")
    tokens = token_stream()
    logits, state, reports = scored_stream(session, model, tokens)
    assert all(np.isfinite(s).all() and s.dtype == np.float32 for s in state)
    for r in reports:
        assert r.rel_rms <= RELATIVE_BUDGET["fp16"], f"fp16: relative RMS logit error {r.rel_rms:.2e}"
    # top-1 only where the reference's top-2 margin is clear (the harness's top-1 counts near-ties too)
    ref_logits = np.stack([parity.reference_stream(model, row.numpy(), PREFILL).logits for row in tokens])
    top2 = np.sort(ref_logits, -1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-2 * np.abs(ref_logits).max()
    agree = (logits.argmax(-1) == ref_logits.argmax(-1))[clear].mean()
    assert agree >= 0.99, f"fp16 top-1 agreement {agree:.1%} on {clear.sum()} clear positions"


# availability -----------------------------------------------------------------------------------------------
def test_importing_the_modules_does_not_import_executorch():
    code = ("import sys, seqedge.export.executorch_target, seqedge.runtimes.executorch_runtime; "
            "print([m for m in ('executorch', 'torchao') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tempfile.gettempdir(), check=True)  # installed package, not ./seqedge
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_missing_library_names_the_exact_install(monkeypatch):
    from seqedge.runtimes.executorch_runtime import ExecuTorchRuntime

    target = get_target("executorch")
    assert target.name == "executorch" and target.schemes == ("none", "fp16", "int8", "int4")
    monkeypatch.setitem(sys.modules, "executorch.exir", None)
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)
    hint = "pip install executorch==1.5.1 torchao==0.18.0"
    with pytest.raises(ImportError, match=hint):
        target.check_available()
    with pytest.raises(ImportError, match=hint):
        ExecuTorchRuntime().check_available()


def copying(artifact, copies: str):
    """A session whose outputs leave the program's memory through torch's copies (a small model's) or through
    numpy (``copies="numpy"``: every output, as a real-size model's large ones do)."""
    session = load(artifact, runtime="executorch")
    if copies == "numpy":
        session.backend.numpy_copies_from = 0
    return session


def test_steps_copy_through_numpy_where_torch_would_copy_on_its_pool(exported):
    """Which steps copy their outputs through numpy: those with a tensor of torch's parallel grain or more (the
    logits or a state tensor of every sequence: the tiny model's step of one sequence does not); forced for every
    step, the numbers are torch's copies', bit for bit, through prefill, plain and donated steps."""
    from seqedge.runtimes.executorch_runtime import TORCH_PARALLEL_GRAIN

    artifact, _, _ = exported("delta", "none")
    torch_copies, numpy_copies = copying(artifact, "torch"), copying(artifact, "numpy")
    backend = torch_copies.backend
    assert backend.numpy_copies_from == TORCH_PARALLEL_GRAIN
    row = max([torch_copies.vocab_size] + [int(np.prod(s.concrete_shape(1))) for s in torch_copies.specs])
    enough = -(-TORCH_PARALLEL_GRAIN // row)                 # sequences whose step output reaches the grain
    assert not backend._numpy_copies(np.zeros(enough - 1, np.int64))
    assert backend._numpy_copies(np.zeros(enough, np.int64))
    tokens = np.random.default_rng(6).integers(0, 259, (2, 40))
    (a, sa), (b, sb) = (s.prefill(tokens[:, :35], s.init_state(2)) for s in (torch_copies, numpy_copies))
    np.testing.assert_array_equal(a, b)
    for t in range(35, 40):
        donate = t % 2 == 1
        (a, sa), (b, sb) = (s.step(tokens[:, t], st, donate=donate)
                            for s, st in ((torch_copies, sa), (numpy_copies, sb)))
        np.testing.assert_array_equal(a, b)
        assert all(isinstance(x, torch.Tensor) for x in sb.tensors)
    for x, y in zip(sa.numpy(), sb.numpy()):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("copies", ["torch", "numpy"])
def test_outputs_are_owned(exported, copies):
    """The arrays a step returns stay as they were after the next step (copies, not the program's reused
    buffers)."""
    artifact, _, _ = exported("delta", "none")
    session = copying(artifact, copies)
    state = session.init_state(1)
    logits, state = session.step(np.array([3]), state)
    kept = [logits.copy(), *(a.copy() for a in state.numpy())]
    session.step(np.array([5]), state)
    for now, before in zip([logits, *state.numpy()], kept):
        np.testing.assert_array_equal(now, before)


POOL_SCRIPT = """
import gc, sys
import numpy as np
from seqedge.runtimes import load
from seqedge.runtimes.executorch_pool import pool_size

def stream(session):
    state, out = session.init_state(1), []
    for token in (3, 5, 7, 11):
        logits, state = session.step(np.array([token]), state)
        out.append(logits)
    return np.stack(out)

def refused(match, **options):
    try:
        load(sys.argv[1], runtime="executorch", **options)
    except ValueError as err:
        assert match in str(err), err
    else:
        raise AssertionError(f"{options} was accepted")

small = load(sys.argv[1], runtime="executorch")
assert small.describe()["threads"] == 1 == pool_size(), small.describe()
one = stream(small)
refused("still open", threads=2)
assert load(sys.argv[1], runtime="executorch").describe()["threads"] == 1
assert load(sys.argv[1], runtime="executorch", threads=1).describe()["threads"] == 1
for bad in (0, -1, True, "2"):
    refused("threads must be a positive integer", threads=bad)
refused("unknown option", providers=["x"])
del small
gc.collect()
two = load(sys.argv[1], runtime="executorch", threads=2)
assert two.describe()["threads"] == 2 == pool_size(), two.describe()
np.testing.assert_allclose(stream(two), one, rtol=1e-5, atol=1e-5 * np.abs(one).max())
print("pool ok")
"""


def test_thread_pool_sized_per_model_and_on_request(exported):
    """XNNPACK's pool (one per process, so in a fresh one): one thread for a small model by default; another
    count is refused while a session runs on the pool and taken once none does, with the same logits; bad counts
    and unknown options are refused."""
    artifact, _, _ = exported("delta", "none")
    out = subprocess.run([sys.executable, "-c", POOL_SCRIPT, str(artifact)], capture_output=True, text=True,
                         cwd=tempfile.gettempdir(), timeout=300)
    assert out.returncode == 0 and "pool ok" in out.stdout, out.stdout + out.stderr[-3000:]


def test_own_state_tensors_go_back_as_they_are(exported, tmp_path):
    """A step's new state holds the program's output tensors (no numpy round trip per call); given back they run
    as they are, and the same values as numpy arrays (a saved and loaded state) give the same logits."""
    artifact, _, _ = exported("delta", "none")
    session = load(artifact, runtime="executorch")
    _, state = session.step(np.array([3]), session.init_state(1))
    assert all(isinstance(t, torch.Tensor) for t in state.tensors)
    state.save(tmp_path / "state.safetensors")
    loaded = State.load(tmp_path / "state.safetensors")
    assert all(isinstance(t, np.ndarray) for t in loaded.tensors)
    own, own_next = session.step(np.array([7]), state)
    fresh, fresh_next = session.step(np.array([7]), loaded)
    np.testing.assert_array_equal(own, fresh)
    for a, b in zip(own_next.numpy(), fresh_next.numpy()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("copies", ["torch", "numpy"])
def test_donated_steps_write_over_the_backends_own_state(exported, copies):
    """``step(..., donate=True)``: where the state is the one the backend returned last, the new state is copied
    over its tensors (the same tensors from the second donated step on) and the numbers are the plain steps', bit
    for bit; a donated state is spent; a state kept (not donated) is never written, and two streams donating in
    turn (neither state the last output) give what each gives alone."""
    artifact, _, _ = exported("delta", "none")
    session = copying(artifact, copies)
    tokens = np.random.default_rng(4).integers(0, 256, (2, 12))
    plain, donated = session.init_state(2), session.init_state(2)
    plain_logits = []
    for t in range(12):
        logits, plain = session.step(tokens[:, t], plain)
        plain_logits.append(logits)
    own = None
    for t in range(12):                          # apart from the plain loop: its steps would be the last output
        old = donated
        logits, donated = session.step(tokens[:, t], donated, donate=True)
        np.testing.assert_array_equal(logits, plain_logits[t])
        own = own or list(donated.tensors)
    assert all(a is b for a, b in zip(donated.tensors, own))
    for a, b in zip(plain.numpy(), donated.numpy()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="donated"):
        session.step(tokens[:, 0], old)

    s = session.init_state(1)
    for t in range(3):
        _, s = session.step(tokens[:1, t], s, donate=True)
    kept = s.numpy()
    branch_logits, branch = session.step(tokens[:1, 3], s)             # not donated: s stays live
    branch_values = branch.numpy()
    _, on = session.step(tokens[:1, 3], s, donate=True)
    for t in range(4, 12):
        _, on = session.step(tokens[:1, t], on, donate=True)
    for a, b in zip(branch.numpy(), branch_values):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(session.step(tokens[:1, 3], session.init_state(1).with_tensors(kept))[0],
                                  branch_logits)

    assert_streams_in_turn_match_alone(session, tokens)
