"""The import graph: layers import only downward, no module imports itself back through others,
and the project's own modules are imported at the top of files (at most MAX_LATE imports sit
inside functions, each with a comment saying why).

The layers, ground up (shared/DESIGN.md): a module may import its own layer and the ones below.
Importing ``a.b.c`` also runs ``a/b/__init__.py``, so a package's ``__init__`` counts as imported
too (the root ``threedgen/__init__.py``, the public API, is the top layer and imports lazily).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [  # (module prefixes) ground up
    ("threedgen.schedules", "threedgen.files", "threedgen.progress"),
    ("threedgen.cameras", "threedgen.render"),
    ("threedgen.priors",),
    ("threedgen.representations",),
    ("threedgen.guidance", "threedgen.export.mesh", "threedgen.export.splat", "threedgen.export.views",
     "threedgen.export.formats", "threedgen.export"),
    ("threedgen.world",),
    ("threedgen.registry",),
    ("threedgen.config",),
    ("threedgen.prompts", "threedgen.runs", "threedgen.evaluate", "threedgen.export.run", "threedgen.report",
     "threedgen.amortized"),
    ("threedgen.cli", "threedgen.api", "threedgen.batch", "threedgen.systems", "threedgen.benchmarks", "threedgen"),
]
MAX_LATE = 5


def layer_of(module: str, layers=LAYERS) -> int:
    """The layer of the longest prefix naming ``module`` (a prefix matches whole dotted parts)."""
    best = (-1, None)
    for i, prefixes in enumerate(layers):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best[0]:
                best = (len(p), i)
    if best[1] is None:
        raise KeyError(f"{module}: in no layer; add it to LAYERS")
    return best[1]


def modules(root: Path, packages) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the top-level folders ``packages``
    (a folder name, or folder -> the package it installs as: systems/ is threedgen.systems)."""
    found = {}
    for folder, pkg in (packages.items() if isinstance(packages, dict) else ((p, p) for p in packages)):
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            name = ".".join([pkg, *(parts[:-1] if parts[-1] == "__init__" else parts)])
            found[name] = path
    return found


def _targets(node, module: str, is_package: bool, known: dict) -> list[str]:
    """The project modules an import statement names (``from a import b``: a.b if it is a
    module, else a)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[:len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    out = []
    for a in node.names:
        if f"{source}.{a.name}" in known:
            out.append(f"{source}.{a.name}")
        elif source in known:
            out.append(source)
    return out


def with_parents(module: str, known: dict, root_package: str) -> list[str]:
    """``a.b.c`` and the packages whose ``__init__`` importing it runs (but the root API)."""
    parts = module.split(".")
    chain = [".".join(parts[:i]) for i in range(2, len(parts))] + [module]
    return [m for m in chain if m in known and m != root_package]


def import_graph(root: Path, packages, root_package: str = "threedgen"):
    """(edges {module: {imported module: first line}}, late imports [(module, line, target,
    commented)]) of the project's own modules."""
    known = modules(root, packages)
    edges, late = {m: {} for m in known}, []
    for module, path in known.items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = _targets(node, module, path.name == "__init__.py", known)
            for t in targets:
                for m in with_parents(t, known, root_package):
                    if m != module:
                        edges[module].setdefault(m, node.lineno)
            if targets and id(node) not in top:
                above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                commented = "#" in lines[node.lineno - 1] or above.startswith("#")
                late.append((module, node.lineno, targets[0], commented))
    return edges, late


def cycles(edges: dict) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def upward(edges: dict, layers=LAYERS) -> list[str]:
    """'a (layer i) -> b (layer j > i), line n' for each import that goes up."""
    return [f"{a} (layer {layer_of(a, layers) + 1}) imports {b} (layer {layer_of(b, layers) + 1}), line {line}"
            for a, targets in edges.items() for b, line in targets.items()
            if layer_of(b, layers) > layer_of(a, layers)]


# folder -> installed package (pyproject.toml's package-dir)
PACKAGES = {"threedgen": "threedgen", "systems": "threedgen.systems", "benchmarks": "threedgen.benchmarks"}


def test_no_import_circle():
    edges, _ = import_graph(ROOT, PACKAGES)
    assert len(edges) > 50  # the whole project was read
    assert cycles(edges) == []


def test_layers_import_only_downward():
    edges, _ = import_graph(ROOT, PACKAGES)
    assert upward(edges) == []


def test_few_project_imports_inside_functions_each_explained():
    _, late = import_graph(ROOT, PACKAGES)
    assert len(late) <= MAX_LATE, "\n".join(f"{m}:{n} imports {t}" for m, n, t, _ in late)
    assert [f"{m}:{n}" for m, n, _, commented in late if not commented] == []


# --- the checks fire ---------------------------------------------------------------------------
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checks_fire_on_a_planted_cycle_upward_import_and_late_import(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "from pkg import high\n",  # a cycle, and an upward import
        "pkg/high.py": "from pkg.low import thing\n\n\ndef f():\n    from pkg import mid\n",  # late, no comment
        "pkg/mid.py": "import os\n",
        "pkg/sub/__init__.py": "from pkg import high\n",  # importing pkg.sub.x runs this
        "pkg/sub/x.py": "",
        "pkg/uses_sub.py": "from pkg.sub import x\n",
    })
    edges, late = import_graph(root, ("pkg",), root_package="pkg")
    assert cycles(edges) == [["pkg.high", "pkg.low"]]
    layers = [("pkg.low", "pkg.mid", "pkg.sub", "pkg.uses_sub"), ("pkg.high", "pkg")]
    assert upward(edges, layers) == [
        "pkg.low (layer 1) imports pkg.high (layer 2), line 1",
        "pkg.sub (layer 1) imports pkg.high (layer 2), line 1",
    ]
    assert edges["pkg.uses_sub"] == {"pkg.sub": 1, "pkg.sub.x": 1}  # the package's __init__ runs too
    assert late == [("pkg.high", 5, "pkg.mid", False)]
    with pytest.raises(KeyError, match="in no layer"):
        layer_of("elsewhere.module", layers)
