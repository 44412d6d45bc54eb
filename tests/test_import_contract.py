"""The layering of DESIGN §2, checked on the source: which package may import which, no private names across
modules, no import cycles between modules. Lazy imports inside functions count as imports.

    core (seqedge/, seqedge.scan, seqedge.training) <- kernels, export
    runtimes -> the artifact format, the state and a few torch-free core modules only
    evaluate -> export, runtimes, core;   cli, serve -> anything
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"seqedge": ROOT / "seqedge", "seqedge.export": ROOT / "export", "seqedge.runtimes": ROOT / "runtimes",
           "seqedge.kernels": ROOT / "kernels"}
TOP = ("seqedge.cli", "seqedge.serve")
LAYERS = ("seqedge.export", "seqedge.runtimes", "seqedge.kernels", "seqedge.evaluate", *TOP)

# core modules a runtime may use: torch-free, about the artifact and the state, never the model or training
RUNTIME_CORE = {"seqedge", "seqedge.artifact", "seqedge.state", "seqedge.config", "seqedge.sampling",
                "seqedge.tokenizer", "seqedge.quiet", "seqedge.registry", "seqedge.tensorrt_api"}
# runtimes that run the model itself, and what they may use beyond RUNTIME_CORE
MODEL_RUNTIMES = {"seqedge.runtimes.torch_runtime": {"seqedge.model"},
                  "seqedge.runtimes.cuda_runtime": {"seqedge.model", "seqedge.kernels"}}
# the core's one way into the GPU kernels: the sequence scan picks the Triton kernel on CUDA tensors
CORE_TO_KERNELS = {"seqedge.scan.dispatch"}


def layer(module: str) -> str:
    for name in LAYERS:
        if module == name or module.startswith(name + "."):
            return name
    return "core"


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if package == "seqedge" and layer(name) in ("seqedge.export", "seqedge.runtimes", "seqedge.kernels"):
                continue
            found[name] = path
    return found


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) of every import in the file, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return [(m, names, line) for m, names, line in out if m == "seqedge" or m.startswith("seqedge.")]


ALL = modules()


def allowed(importer: str, imported: str) -> bool:
    src, dst = layer(importer), layer(imported)
    if src == dst or src in TOP:
        return True
    if src == "core":
        return dst == "seqedge.kernels" and importer in CORE_TO_KERNELS
    if src in ("seqedge.export", "seqedge.kernels"):
        return dst == "core"
    if src == "seqedge.runtimes":
        extra = MODEL_RUNTIMES.get(importer, set())
        return imported in RUNTIME_CORE or any(imported == e or imported.startswith(e + ".") for e in extra)
    if src == "seqedge.evaluate":
        return dst in ("core", "seqedge.export", "seqedge.runtimes")
    return False


def test_the_tree_is_found():
    assert {"seqedge.model", "seqedge.artifact", "seqedge.export.api", "seqedge.runtimes.session",
            "seqedge.evaluate.parity", "seqedge.kernels.ops", "seqedge.cli.main"} <= set(ALL)


@pytest.mark.parametrize("name", sorted(ALL))
def test_layers(name):
    bad = [f"line {line}: {m}" for m, _, line in imports(name, ALL[name]) if not allowed(name, m)]
    assert not bad, f"{name} ({layer(name)}) imports across the layering: {bad}"


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_private_names_from_other_modules(name):
    bad = [f"line {line}: {n} from {m}" for m, names, line in imports(name, ALL[name])
           for n in names if n.startswith("_") and not n.startswith("__") and m != name]
    assert not bad, f"{name} imports private names of other modules: {bad}"


def test_no_import_cycles():
    """Between modules (a package's __init__ re-exporting its own modules is not a cycle)."""
    graph: dict[str, set[str]] = {}
    for name, path in ALL.items():
        deps = set()
        for m, names, _ in imports(name, path):
            for candidate in [f"{m}.{n}" for n in names] + [m]:
                if candidate in ALL:
                    deps.add(candidate)
                    break
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    # an __init__ that only gathers its submodules is a namespace, not a participant in a cycle
    packages = {n for n, p in ALL.items() if p.name == "__init__.py"}
    graph = {n: {d for d in deps if d not in packages} for n, deps in graph.items()}

    visiting, done, cycles = [], set(), []

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append(visiting[visiting.index(node):] + [node])
            return
        visiting.append(node)
        for dep in sorted(graph.get(node, ())):
            visit(dep)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert not cycles, f"import cycles: {[' -> '.join(c) for c in cycles]}"


def test_a_back_edge_is_caught():
    assert not allowed("seqedge.export.api", "seqedge.runtimes.session")
    assert not allowed("seqedge.runtimes.session", "seqedge.model")
    assert not allowed("seqedge.model", "seqedge.evaluate.parity")
    assert allowed("seqedge.evaluate.export_check", "seqedge.export.api")
