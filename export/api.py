"""``export_model``: a model -> one artifact directory with every requested target and quantization.

    manifest = export_model(model, "out/", ["onnx"], ["none", "int8"])

The artifact is built in a temporary directory next to ``out_dir`` and renamed into place only when every
requested target succeeded: an interrupted (Ctrl-C or SIGTERM) or failed export leaves nothing at ``out_dir``
and no temp dir; temp dirs of a killed export (SIGKILL) are swept by the next export to the same place once
they are stale. ``overwrite`` replaces only a directory whose manifest parses as a seqedge artifact, and only when
it holds nothing but the files its manifest lists.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import seqedge
from seqedge.artifact import (
    ARTIFACT_FORMAT,
    ARTIFACT_FORMAT_VERSION,
    MANIFEST_FILE,
    ArtifactError,
    Manifest,
    Variant,
    file_record,
    read_manifest,
    write_manifest,
)
from seqedge.fsutil import (
    foreign_entries,
    make_temp_dir,
    replace_dir,
    sweep_stale_temp_dirs,
    terminate_as_interrupt,
)
from seqedge.quiet import quiet_libraries
from seqedge.state import state_nbytes

from .base import DEFAULT_MAX_BATCH, TARGETS, ExportContext, check_max_batch, get_target
from .entry_points import ENTRY_POINTS, input_names, output_names
from .quantization import RECIPES, QuantizationRecipe, int4_selection, make_recipe

TARGET_ORDER = tuple(TARGETS)        # the registry's order: tensorrt comes after onnx, whose variant it builds from

# verify(artifact_root, say) -> {variant name: report with "failures"}: runs on the finished temporary artifact,
# before it is renamed into place, so a failed check leaves nothing at the destination
Verifier = Callable[[Path, Callable[[str], None]], dict]


class VerificationFailed(RuntimeError):
    """The finished artifact failed its ``verify`` step: the work's verdict, so nothing was written."""


def export_model(model, out_dir: str | os.PathLike, targets: Sequence[str] | str,
                 quantize: Sequence[str] = ("none",), *, progress: bool | Callable[[str], None] = True,
                 overwrite: bool = False, group_size: int = 32, max_batch: int = DEFAULT_MAX_BATCH,
                 verify: Verifier | None = None) -> Manifest:
    """Export ``model`` (a SequentialAttentionModel or a checkpoint directory) to ``out_dir``.

    ``targets``: names from ``TARGETS`` (an empty list writes only the torch variant) or ``"all"`` (every target whose library works here; the others are
    skipped and listed in the manifest's ``skipped`` with the reason). An explicitly requested target whose
    library is missing raises ImportError with the exact ``pip install``. ``tensorrt`` pulls in ``onnx``.
    ``max_batch``: the largest batch the executorch and tensorrt variants take (1: single-stream programs with
    the least memory, for an app that runs one sequence; ONNX graphs take any batch).
    ``quantize``: recipe names from :data:`~seqedge.export.quantization.RECIPES` (fp32, fp16, int8-dynamic,
    int4-mlp, int4-all; the 0.1 names none, int8, int4 still work); the manifest records each recipe's name.
    A ``torch`` variant (``config.json`` + ``model.safetensors``) is always written: it is the float64
    reference for parity and what the torch runtime runs. ``verify`` (see
    :func:`seqedge.evaluate.export_check.export_verified`) checks the finished artifact before it is moved into
    place; its report is stored as the manifest's ``parity`` and any failure aborts the export.
    """
    say = _progress_fn(progress)
    out = Path(out_dir)
    _check_destination(out, overwrite)
    recipes = _recipes(quantize, group_size)
    check_max_batch(max_batch)
    plan, skipped = _plan(targets, recipes, say)
    model = _as_model(model)
    _check_int4_policy(model, recipes)
    for stale in sweep_stale_temp_dirs(out):
        say(f"removed {stale}, left by an export that was killed")
    with terminate_as_interrupt():
        return _build(model, out, plan, recipes, skipped, say, verify, max_batch)


def _check_int4_policy(model, recipes) -> None:
    """Refuse, before anything is written, an int4 recipe whose module policy selects no weight matrix of
    ``model`` (int4-mlp on a model without MLPs, such as an imported Mamba2)."""
    for recipe in recipes:
        if recipe.scheme == "int4" and not int4_selection(model, recipe)[0]:
            raise ValueError(f"the {recipe.name} recipe quantizes {list(recipe.int4_modules)} and this model "
                             f"has no such linear (mixer.mlp is {model.config.mixer.mlp}); use int4-all (every "
                             f"linear of the blocks), int8-dynamic or fp16")


def _build(model, out: Path, plan, recipes, skipped, say, verify: Verifier | None, max_batch: int) -> Manifest:
    tmp = make_temp_dir(out)
    try:
        variants = [_export_torch(model, tmp, say)]
        for name, target, recipe in plan:
            start = time.perf_counter()
            say(f"{name}/{recipe.tag}: exporting")
            ctx = ExportContext(model, tmp, recipe, say, list(variants), max_batch)
            with quiet_libraries():
                variant = target.export(ctx)
            variants.append(variant)
            say(f"{name}/{recipe.tag}: done in {time.perf_counter() - start:.1f}s "
                f"({sum(f['bytes'] for f in variant.files.values()) / 2**20:.2f} MiB)")
        data = _manifest_data(model, variants, recipes, skipped, _write_tokenizer(model, tmp))
        write_manifest(tmp, data)
        if verify is not None:
            data["parity"] = verify(tmp, say)
            write_manifest(tmp, data)
            failed = {k: v["failures"] for k, v in data["parity"].items() if v.get("failures")}
            if failed:
                raise VerificationFailed(f"export parity check failed: {failed}; nothing was written to {out}")
        owned = read_manifest(out).files() if (out / MANIFEST_FILE).exists() else []
        replace_dir(tmp, out, owned)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"artifact written to {out}")
    return read_manifest(out)


# planning -----------------------------------------------------------------------------------------------
def _progress_fn(progress: bool | Callable[[str], None]) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress:
        return lambda message: print(f"[seqedge export] {message}", file=sys.stderr, flush=True)
    return lambda message: None


def _recipes(quantize: Sequence[str] | str, group_size: int) -> list[QuantizationRecipe]:
    names = [quantize] if isinstance(quantize, str) else list(quantize)
    if not names:
        raise ValueError(f"quantize must name at least one recipe ({', '.join(RECIPES)})")
    recipes: list[QuantizationRecipe] = []
    for name in names:
        recipe = make_recipe(name, group_size)     # recipe names and the 0.1 scheme names
        if recipe in recipes:
            continue
        same_tag = [r.name for r in recipes if r.tag == recipe.tag]
        if same_tag:
            raise ValueError(f"the recipes {same_tag[0]} and {recipe.name} both write the {recipe.tag} variant; "
                             f"export them to separate artifacts")
        recipes.append(recipe)
    return recipes


def _plan(targets: Sequence[str] | str, recipes: list[QuantizationRecipe], say):
    """[(name, target, recipe)] to export, and [{target, quantization, reason}] skipped (only with "all")."""
    explicit = targets != "all" and list(targets) != ["all"]
    names = [targets] if isinstance(targets, str) and explicit else (list(targets) if explicit else list(TARGETS))
    if not names:
        return [], []               # only the torch variant
    for n in names:
        if n not in TARGETS:
            raise ValueError(f"unknown export target {n!r}; valid targets are {sorted(TARGETS)} or 'all'")
    if "tensorrt" in names and "onnx" not in names:
        say("tensorrt builds its engine from the onnx variant: exporting onnx too")
        names.append("onnx")
    names = sorted(set(names), key=TARGET_ORDER.index)
    plan, skipped = [], []
    for name in names:
        try:
            with quiet_libraries():
                target = get_target(name)
                target.check_available()
        except (ImportError, RuntimeError, OSError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if explicit:
                raise ImportError(reason) from None
            skipped.append({"target": name, "quantization": "*", "reason": reason})
            say(f"skipping {name}: {reason}")
            continue
        for recipe in recipes:
            if recipe.scheme not in target.schemes:
                reason = f"{name} does not support quantize={recipe.scheme!r} (it supports {list(target.schemes)})"
                if explicit:
                    raise ValueError(reason)
                skipped.append({"target": name, "quantization": recipe.scheme, "reason": reason})
                say(f"skipping {name}/{recipe.tag}: {reason}")
                continue
            plan.append((name, target, recipe))
    if not plan and not explicit:
        raise RuntimeError("no export target can run here: " + "; ".join(s["reason"] for s in skipped))
    if any(n == "tensorrt" for n, _, _ in plan) and not any(n == "onnx" for n, _, _ in plan):
        raise RuntimeError("tensorrt builds from the onnx variant, but the onnx target cannot run here")
    return plan, skipped


def _as_model(model):
    from seqedge.model import SequentialAttentionModel, load_pretrained

    if isinstance(model, (str, os.PathLike)):
        model = load_pretrained(model)
    if not isinstance(model, SequentialAttentionModel):
        raise TypeError(f"model must be a SequentialAttentionModel or a checkpoint directory, got "
                        f"{type(model).__name__}")
    return model.float().cpu().eval()


def _check_destination(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, to write where something that is not ours would be replaced."""
    if not out.exists() and not out.is_symlink():
        existing = next(p for p in out.absolute().parents if p.exists())
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "cannot create the artifact under a file", str(existing))
        return
    if out.is_symlink() or not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory; choose another --out")
    if not (out / MANIFEST_FILE).exists():
        if any(out.iterdir()):
            raise ArtifactError(f"{out} exists and is not a seqedge artifact; refusing to replace it (choose "
                                "another --out or remove it)")
        return
    try:
        existing = read_manifest(out)
    except ArtifactError as err:
        raise ArtifactError(f"{out} has a {MANIFEST_FILE} that is not a valid seqedge artifact manifest; refusing "
                            f"to replace it (choose another --out): {err}") from None
    if not overwrite:
        raise ArtifactError(f"{out} already holds an artifact; pass overwrite=True (--overwrite) to replace it")
    foreign = foreign_entries(out, existing.files())
    if foreign:
        raise ArtifactError(f"{out} holds files its manifest does not list ({', '.join(foreign[:3])}"
                            f"{', ...' if len(foreign) > 3 else ''}); refusing to replace it (move them away)")


# writing ------------------------------------------------------------------------------------------------
def _export_torch(model, root: Path, say) -> Variant:
    from seqedge.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_pretrained

    say("torch/fp32: writing config.json + model.safetensors (the float64 reference)")
    directory = root / "torch" / "fp32"
    save_pretrained(model, directory)
    files = {"config": file_record(root, directory / CONFIG_FILE), "weights": file_record(root, directory / WEIGHTS_FILE)}
    return Variant("torch", QuantizationRecipe("none").to_dict(), files, {"format": "safetensors"})


def _io(specs, entry: str, chunk: int) -> dict[str, Any]:
    tokens_shape = ["batch"] if entry == "step" else ["batch", chunk]
    logits_shape = ["batch", "vocab"] if entry == "step" else ["batch", chunk, "vocab"]
    inputs = [{"name": "tokens", "shape": tokens_shape, "dtype": "int64"}]
    inputs += [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in specs]
    outputs = [{"name": "logits", "shape": logits_shape, "dtype": "float32"}]
    outputs += [{"name": f"new_{s.name}", "shape": list(s.shape), "dtype": s.dtype} for s in specs]
    assert [i["name"] for i in inputs] == input_names(specs) and [o["name"] for o in outputs] == output_names(specs)
    return {"inputs": inputs, "outputs": outputs}


def _write_tokenizer(model, root: Path) -> dict[str, Any]:
    """The manifest's tokenizer record; an imported model's ``tokenizer.json`` is copied to the artifact's root
    and recorded with its size and sha256 like every other file."""
    from seqedge.checkpoint import TOKENIZER_FILE
    from seqedge.tokenizer import ByteTokenizer

    if model.tokenizer is None:
        return ByteTokenizer().to_dict()
    model.tokenizer.check_fits(model.config.vocab_size, "the model's tokenizer")
    (root / TOKENIZER_FILE).write_bytes(model.tokenizer.data)
    return {**model.tokenizer.to_dict(), "file": file_record(root, root / TOKENIZER_FILE)}


def _manifest_data(model, variants: list[Variant], recipes, skipped, tokenizer: dict[str, Any]) -> dict[str, Any]:
    import torch

    config, specs = model.config, model.state_specs
    vocab = {"vocab": config.vocab_size}
    entry_points = {e: _io(specs, e, config.chunk_size) for e in ENTRY_POINTS}
    for e in entry_points.values():
        for item in e["inputs"] + e["outputs"]:
            item["shape"] = [vocab.get(d, d) for d in item["shape"]]
    return {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_FORMAT_VERSION,
        "seqedge_version": seqedge.__version__,
        "torch_version": torch.__version__,
        "model": config.to_dict(),
        "fingerprint": model.fingerprint,
        "num_parameters": model.num_parameters(),
        "tokenizer": tokenizer,
        "state": [s.to_dict() for s in specs],
        "state_bytes_per_sequence": state_nbytes(specs),
        "entry_points": entry_points,
        "chunk_size": config.chunk_size,
        "prefill": "floor(N / chunk_size) chunk calls, then the remaining tokens as step calls",
        "quantization": [r.to_dict() for r in recipes],
        "variants": [v.to_dict() for v in variants],
        "skipped": skipped,
    }
