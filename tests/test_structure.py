"""The code's map: no import cycles between robench's modules (lazy imports included) and no
private name imported from another module. Read from the source with ast; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"robench": "robench", "attacks": "robench.attacks", "defenses": "robench.defenses",
            "reports": "robench.reports"}  # folder -> import name (setup.cfg's package_dir)


def module_files() -> Dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = path
    return out


MODULES = module_files()


def owner(name: str) -> str:
    """The robench module a dotted name lives in (``robench.attacks.create_attack`` -> ``robench.attacks``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports(module: str) -> List[ast.ImportFrom | ast.Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def edges() -> Dict[str, Set[str]]:
    """module -> the robench modules it imports, at import time or inside functions.

    Imports of the root package itself (``from robench import __version__``) are left out: a
    package is always initialised before its submodules, so they cannot form a cycle.
    """
    out: Dict[str, Set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for node in imports(module):
            if isinstance(node, ast.ImportFrom):
                if not (node.module or "").startswith("robench") or node.level:
                    continue
                targets = {owner(f"{node.module}.{a.name}") for a in node.names}
            else:
                targets = {owner(a.name) for a in node.names if a.name.startswith("robench")}
            out[module] |= {t for t in targets if t and t != "robench" and t != module}
    return out


def test_the_module_map_was_read():
    assert {"robench.runner", "robench.config", "robench.attacks.pgd", "robench.reports.tables"} <= set(MODULES)
    assert "robench.validation" in edges()["robench.runner"]


def test_no_import_cycles():
    graph, cycles = edges(), []
    state: Dict[str, int] = {}

    def visit(node: str, path: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_names_imported_across_modules():
    found = []
    for module in MODULES:
        for node in imports(module):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("robench"):
                source = owner(node.module)
                inside = source == module
                found += [f"{module}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__") and not inside]
    assert not found, found
