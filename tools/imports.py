"""The import graph of src/convlens: arrows between modules, circles, and arrows that point up.

Usage: python tools/imports.py [--list]   (exit 1 when there is a circle or more than one arrow up)

Every ``import`` / ``from ... import`` naming a convlens module counts, at module level or inside a
function (a lazy import is still a dependency). Layers, from the bottom: the foundations (``io``,
``core``, ``nets``, ``images``), the paper's sections, then the readers and the command line. An
arrow "points up" when a module imports one of a higher layer, or, among the foundations and among
the sections, one later in the order below.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# bottom to top; within a tier, a package may import the ones before it
ORDER = [
    "io", "core", "images", "nets",                                        # foundations
    "deconv", "training", "topk", "evolution", "invariance", "diagnose",   # sections (paper order,
    "occlusion", "correspondence", "transfer", "featvis", "units",         # then what goes beyond it)
    "report", "explorer", "demo", "commands", "cli", "__main__",            # readers and the command line
]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "convlens"


def imports_of(path: Path, mod: str, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n != mod and n.startswith("convlens"):
                out.add(n)
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (SRC / "convlens").rglob("*.py")}
    known = set(files)
    return {m: imports_of(p, m, known) for m, p in sorted(files.items())}


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return out


def rank(mod: str) -> int:
    pkg = package_of(mod)
    return ORDER.index(pkg) if pkg in ORDER else -1   # convlens/__init__ (lazy re-exports): no rank


def arrows_up(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [(a, b) for a, targets in g.items() for b in sorted(targets)
            if rank(a) >= 0 and rank(b) > rank(a)]


def main(argv: list[str]) -> int:
    g = graph()
    n_arrows = sum(len(v) for v in g.values())
    circ = circles(g)
    up = arrows_up(g)
    unranked = sorted({package_of(m) for m in g if rank(m) < 0} - {"convlens"})
    print(f"{len(g)} modules, {n_arrows} import arrows, {len(circ)} circles, {len(up)} arrows up")
    for c in circ:
        print("circle:", " <-> ".join(c))
    for a, b in up:
        print(f"up: {a} -> {b}")
    if unranked:
        print("packages missing from ORDER:", ", ".join(unranked))
    if "--list" in argv:
        for a, targets in g.items():
            for b in sorted(targets):
                print(f"{a} -> {b}")
    return 1 if circ or len(up) > 1 or unranked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
