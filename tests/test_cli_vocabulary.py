"""One CLI vocabulary: -m/--model everywhere, the 0.1 spellings as deprecated aliases, recipe and runtime names
from one table each, shared sampling defaults; and the small helpers behind it (atomic JSON, run metadata)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from seqedge.cli.main import main
from seqedge.export.quantization import (BLOCK_LINEARS, EVERY_LINEAR, MLP_MODULES, RECIPE_ALIASES, RECIPES, QuantizationRecipe,
                                         canonical_recipe, make_recipe, recipe_tag)
from seqedge.targets import RUNTIME_OF_TARGET, RUNTIMES, TARGETS, resolve_runtime, resolve_runtimes

DEPRECATION = "seqedge: note: "


def test_target_and_runtime_tables_agree_with_the_registries():
    from seqedge.export.base import TARGETS as EXPORT_TARGETS
    from seqedge.runtimes.base import RUNTIMES as RUNTIME_REGISTRY, get_runtime

    assert set(TARGETS) == set(EXPORT_TARGETS)
    assert set(RUNTIMES) == set(RUNTIME_REGISTRY)
    for target, runtime in RUNTIME_OF_TARGET.items():
        assert get_runtime(runtime).target == target


def test_a_target_name_names_its_runtime():
    assert resolve_runtime("onnx") == "onnxruntime" and resolve_runtime("onnx-ort") == "onnxruntime-fused"
    assert resolve_runtimes(["onnx", "onnxruntime", "torch"]) == ["onnxruntime", "torch"]
    with pytest.raises(ValueError, match=r"unknown runtime\(s\) \['tflite'\]; valid runtimes are"):
        resolve_runtime("tflite")


def test_recipes_map_to_schemes_and_the_manifest_records_the_name():
    assert list(RECIPES) == ["fp32", "fp16", "int8-dynamic", "int4-mlp", "int4-all"]
    for old, new in RECIPE_ALIASES.items():
        assert canonical_recipe(old) == new and make_recipe(old) == make_recipe(new)
    assert [recipe_tag(n) for n in RECIPES] == ["fp32", "fp16", "int8", "int4", "int4"]
    recipe = make_recipe("int4-mlp", 64)
    assert recipe.scheme == "int4" and recipe.int4_modules == MLP_MODULES and recipe.to_dict()["recipe"] == "int4-mlp"
    assert QuantizationRecipe.from_dict(recipe.to_dict()) == recipe
    every = make_recipe("int4-all")             # every linear, the output head included
    assert every.int4_modules == EVERY_LINEAR and every.to_dict()["recipe"] == "int4-all"
    assert QuantizationRecipe.from_dict(every.to_dict()) == every and every != make_recipe("int4-mlp")
    assert QuantizationRecipe("int4", int4_modules=EVERY_LINEAR).name == "int4-all"
    # a manifest of int4-all before it packed the head reads back as the policy it recorded
    earlier = QuantizationRecipe.from_dict({"recipe": "int4-all", "scheme": "int4", "group_size": 32,
                                            "int4_modules": list(BLOCK_LINEARS)})
    assert earlier.int4_modules == BLOCK_LINEARS and earlier.name == "int4-custom"
    assert QuantizationRecipe("int4", int4_modules=("*",)).name == "int4-custom"     # not int4-mlp: says so
    with pytest.raises(ValueError, match="does not describe"):
        QuantizationRecipe("int8", name="int4-mlp")
    with pytest.raises(ValueError, match="quantize must be one of the recipes"):
        canonical_recipe("int3")


def test_list_recipes_describes_each_with_its_per_target_packing(capsys):
    assert main(["export", "--list-recipes"]) == 0
    out = capsys.readouterr().out
    for name, info in RECIPES.items():
        assert f"{name} " in out and info.summary in out
    assert "MLP linears only" in out and "0.1 name: int4" in out


@pytest.mark.parametrize("argv, old", [
    (["info", "{ckpt}"], "a positional DIR"),
    (["generate", "--checkpoint", "{ckpt}", "-p", "Hi", "-n", "2", "-q"], "--checkpoint"),
])
def test_old_spellings_work_with_one_deprecation_line(tiny_checkpoint, capsys, argv, old):
    assert main([a.format(ckpt=tiny_checkpoint) for a in argv]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith(DEPRECATION)]
    assert len(notes) == 1 and old in notes[0] and "-m/--model" in notes[0]


def test_the_model_named_twice_is_a_usage_error(tiny_checkpoint, capsys):
    assert main(["info", tiny_checkpoint, "-m", tiny_checkpoint]) == 2
    assert "named twice" in capsys.readouterr().err


def test_generate_refuses_artifact_flags_for_a_checkpoint(tiny_checkpoint, capsys):
    assert main(["generate", "-m", tiny_checkpoint, "-p", "x", "--runtime", "onnx"]) == 2
    assert "--runtime applies to an exported artifact" in capsys.readouterr().err


def test_generate_json_is_the_greedy_library_output(tiny_checkpoint, capsys):
    import torch

    from seqedge.model import load_pretrained
    from seqedge.tokenizer import ByteTokenizer

    assert main(["generate", "-m", tiny_checkpoint, "-p", "Hi", "-n", "5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    tok = ByteTokenizer()
    with torch.no_grad():
        ids = list(load_pretrained(tiny_checkpoint).eval().generate(tok.encode("Hi", add_bos=True), 5,
                                                                    stop_tokens=(tok.eos_id,)))
    assert data["text"] == tok.decode(ids) and data["tokens"] == len(ids) and data["prompt"] == "Hi"


def test_cli_and_api_share_sampling_defaults():
    from seqedge.cli.generate import DEFAULTS
    from seqedge.model import SequentialAttentionModel
    from seqedge.runtimes.session import Session
    from seqedge.sampling import DEFAULT_MAX_NEW_TOKENS, SamplingConfig

    assert DEFAULTS == SamplingConfig()
    for fn in (SequentialAttentionModel.generate, Session.generate):
        params = inspect.signature(fn).parameters
        for name in ("temperature", "top_k", "top_p", "seed"):
            assert params[name].default == getattr(DEFAULTS, name), (fn.__qualname__, name)
    assert inspect.signature(Session.generate).parameters["max_new_tokens"].default == DEFAULT_MAX_NEW_TOKENS


def test_info_json_and_quiet(tiny_checkpoint, capsys):
    assert main(["info", "-m", tiny_checkpoint, "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["info", "-m", tiny_checkpoint, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == tiny_checkpoint


def test_write_json_atomic_replaces_whole_files(tmp_path):
    from seqedge.fsutil import write_json_atomic

    path = tmp_path / "sub" / "report.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": [1, 2]})
    assert json.loads(path.read_text()) == {"b": [1, 2]} and [p.name for p in path.parent.iterdir()] == [path.name]
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"b": [1, 2]} and [p.name for p in path.parent.iterdir()] == [path.name]


def test_run_metadata_names_machine_versions_commit_and_command():
    from seqedge.evaluate.run_info import metadata_markdown, run_metadata

    meta = run_metadata(note="x")
    machine = meta["machine"]
    assert machine["cores"] >= 1 and machine["memory_bytes"] > 0 and len(machine["load_average"]) == 3
    assert "seqedge" in machine["libraries"] and meta["note"] == "x" and meta["date"].endswith("+00:00")
    text = "\n".join(metadata_markdown(meta))
    assert machine["cpu"] in text and "commit:" in text and meta["command"] in text


def test_latency_stats_report_median_and_spread():
    from seqedge.evaluate.latency import latency_stats

    samples = np.arange(1, 101) * 1_000_000          # 1..100 ms
    stats = latency_stats(samples)
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["iqr_ms"] == pytest.approx(49.5)


def test_quiet_hides_listed_library_warnings_by_message_only():
    import warnings

    from seqedge.quiet import quiet_libraries

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_libraries():
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
            warnings.warn("'has_cuda' is deprecated, please use 'torch.backends.cuda.is_built()'", UserWarning)
            warnings.warn("Core ML: state shapes are not Neural-Engine friendly", UserWarning)      # seqedge's own
            warnings.warn("some other library deprecation", DeprecationWarning)
    assert [str(w.message) for w in caught] == ["Core ML: state shapes are not Neural-Engine friendly",
                                                "some other library deprecation"]


def test_generate_says_when_sampling_flags_have_no_effect(tiny_checkpoint, capsys):
    assert main(["generate", "-m", tiny_checkpoint, "-p", "x", "-n", "1", "--seed", "3", "-q"]) == 0
    assert "--seed has no effect at temperature 0" in capsys.readouterr().err
    assert main(["generate", "-m", tiny_checkpoint, "-p", "x", "-n", "1", "--seed", "3", "-t", "0.5", "-q"]) == 0
    assert "no effect" not in capsys.readouterr().err


@pytest.mark.parametrize("command, lists", [
    ("generate", ("runtimes", "recipes")), ("serve", ("runtimes", "recipes")), ("validate", ("runtimes",)),
    ("bench", ("runtimes", "recipes")), ("export", ("recipes",)),
])
def test_help_lists_every_runtime_and_recipe_from_their_tables(capsys, command, lists):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())        # argparse wraps lines
    names = {"runtimes": RUNTIMES, "recipes": tuple(RECIPES)}
    for kind in lists:
        assert ", ".join(names[kind]) in text, (command, kind)


def test_serve_takes_the_recipe_like_every_command_and_its_old_flag_with_a_note(capsys):
    from types import SimpleNamespace

    from seqedge.cli.serve import _variant_tag

    assert _variant_tag(SimpleNamespace(quantize="int8-dynamic", legacy_quantization=None)) == "int8"
    assert _variant_tag(SimpleNamespace(quantize=None, legacy_quantization=None)) is None
    assert _variant_tag(SimpleNamespace(quantize=None, legacy_quantization="int4")) == "int4"
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith(DEPRECATION)]
    assert len(notes) == 1 and "--quantization" in notes[0] and "--quantize" in notes[0]
    with pytest.raises(ValueError, match="either --quantize or --quantization"):
        _variant_tag(SimpleNamespace(quantize="fp32", legacy_quantization="fp32"))
