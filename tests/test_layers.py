"""The package in layers: stages on top, shared layers below that never import a stage, no circles.

Reads every module of ``lori`` with :mod:`ast` (nothing is imported), so the graph includes
imports inside functions. ``python -m tests.test_layers`` prints the package drawing that
docs/architecture.md shows; a test keeps the two equal.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lori"
STAGES = ("prepare_data", "convert_model", "teacher_sft", "teacher_cot", "dump_hidden", "factorize", "targets",
          "distill", "evaluate", "report")
TOOLS = ("inspect", "compare", "thoughts", "probe", "answer", "harness", "__main__")
#: bottom to top; a module may import its own layer and the ones below, never one above
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # artifacts.store is the generic I/O every layer writes through (atomic writes, zarr helpers, ArtifactError)
    ("ground", ("lori", "lori.errors", "lori.hub", "lori.progress", "lori.sweep", "lori.config", "lori.artifacts.store")),
    ("data", ("lori.data",)),
    ("lowrank", ("lori.lowrank",)),
    ("artifacts", ("lori.artifacts",)),
    ("model", ("lori.model",)),
    ("training", ("lori.training",)),
    ("analysis", ("lori.analysis",)),
    ("cli", ("lori.cli",)),
    ("stages and tools", tuple(f"lori.{m}" for m in STAGES + TOOLS)),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> dict[str, bool]:
    """lori modules ``path`` imports -> whether the import is inside a function."""
    tree = ast.parse(path.read_text())
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested |= {id(n) for n in ast.walk(node) if n is not node}
    out: dict[str, bool] = {}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from lori.x import y`: y may be a submodule
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        for name in names:
            if name.split(".")[0] == "lori" and name in known:
                out[name] = out.get(name, True) and id(node) in nested
    return out


def graph() -> dict[str, dict[str, bool]]:
    mods = modules()
    return {m: {d: f for d, f in imports(p, set(mods)).items() if d != m} for m, p in mods.items()}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py: place it")
    return rank


def cycles(g: dict[str, dict[str, bool]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in g:
        if v not in index:
            visit(v)
    return out


def package_of(module: str) -> str:
    return LAYERS[layer_of(module)][0]


def drawing() -> str:
    """The package drawing (Mermaid): one box per layer, an arrow per layer that imports another."""
    g = graph()
    edges = sorted({(package_of(m), package_of(d)) for m, deps in g.items() for d in deps
                    if package_of(m) != package_of(d)}, key=lambda e: ([n for n, _ in LAYERS].index(e[0]),
                                                                        [n for n, _ in LAYERS].index(e[1])))
    ids = {name: name.replace(" ", "_") for name, _ in LAYERS}
    lines = ["flowchart TD"]
    for name, prefixes in reversed(LAYERS):
        members = sorted({m.removeprefix("lori.") for m in g if package_of(m) == name})
        label = f"{name}: " + ", ".join(members) if name in ("ground", "stages and tools", "cli") else \
            f"lori/{name}/: " + ", ".join(m.split(".", 1)[1] for m in members if "." in m)
        lines.append(f'    {ids[name]}["{label}"]')
    lines += [f"    {ids[a]} --> {ids[b]}" for a, b in reversed(edges)]
    return "\n".join(lines)


# ---------------------------------------------------------------- tests
def test_every_module_has_a_layer():
    for m in modules():
        layer_of(m)


def test_no_module_imports_a_layer_above_it():
    """Shared layers never import a stage (nor analysis a stage's helpers, nor data a model)."""
    g = graph()
    wrong = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
             for m, deps in g.items() for d in deps if layer_of(d) > layer_of(m)]
    assert not wrong, "\n".join(wrong)


def test_no_stage_imports_another_stage():
    g = graph()
    stages = {f"lori.{s}" for s in STAGES}
    wrong = [f"{m} imports {d}" for m in stages for d in g[m] if d in stages]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_cycle_check_can_fail():
    assert cycles({"a": {"b": False}, "b": {"c": False}, "c": {"a": False}, "d": {}}) == [["a", "b", "c"]]


def test_the_documented_drawing_is_current():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert drawing() in doc, "docs/architecture.md: regenerate the drawing with `python -m tests.test_layers`"


if __name__ == "__main__":
    print(drawing())
