"""Packaging: every package folder is listed in pyproject.toml, under the one ``seqedge`` namespace."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
EXPECTED_MAPPING = {"seqedge": "seqedge", "seqedge.export": "export", "seqedge.runtimes": "runtimes",
                    "seqedge.kernels": "kernels"}


def package_folders() -> dict[str, Path]:
    """Dotted name -> folder, for every folder with an ``__init__.py`` under the mapped roots."""
    found = {}
    for package, folder in SETUPTOOLS["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts or any(part.startswith(".") for part in rel.parts):
                continue
            found[".".join((package, *rel.parts))] = init.parent
    return found


def test_folders_map_onto_the_seqedge_namespace():
    assert SETUPTOOLS["package-dir"] == EXPECTED_MAPPING


def test_every_package_folder_is_listed():
    missing = sorted(set(package_folders()) - set(SETUPTOOLS["packages"]))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"


def test_every_listed_package_exists():
    folders = package_folders()
    absent = sorted(set(SETUPTOOLS["packages"]) - set(folders))
    assert not absent, f"{absent} are listed in pyproject.toml but have no folder with an __init__.py"
    assert len(SETUPTOOLS["packages"]) == len(set(SETUPTOOLS["packages"]))


def test_nothing_generic_is_installed_top_level():
    assert all(p == "seqedge" or p.startswith("seqedge.") for p in SETUPTOOLS["packages"])


def test_console_script_and_readme():
    assert PYPROJECT["project"]["scripts"] == {"seqedge": "seqedge.cli.main:main"}
    assert (ROOT / PYPROJECT["project"]["readme"]).is_file()


def test_installed_packages_come_from_this_tree():
    """The mapped packages are this tree's folders: imported from it (pip install -e .) or copied (pip install .)."""
    import seqedge.export
    import seqedge.kernels
    import seqedge.runtimes

    for module, folder in ((seqedge.export, "export"), (seqedge.kernels, "kernels"),
                           (seqedge.runtimes, "runtimes")):
        installed = Path(module.__file__).resolve().parent
        for source in (ROOT / folder).glob("*.py"):
            assert (installed / source.name).read_bytes() == source.read_bytes(), f"{folder}/{source.name}"


def test_readme_python_snippet_runs(tmp_path, monkeypatch, capsys):
    """The README's Python API example is real code: it runs as written (files land in a temp dir)."""
    snippets = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert snippets, "README.md has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(snippets[0], "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "state.safetensors").is_file() and (tmp_path / "tiny-model" / "config.json").is_file()


def test_readme_test_command_is_what_ci_runs():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^(pytest [^#\n]*?)\s*(#.*)?$", readme, re.M).group(1)
    assert re.search(rf"^{re.escape(command)}( \|\||$)", ci, re.M), f"{command!r} is not run by .ci/run"
