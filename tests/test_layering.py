"""Dependency direction (STYLE 3.1): the report layer reads JSON and PNGs and never imports torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, timeout=60, cwd=SRC.parent)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_import_report_does_not_import_torch() -> None:
    mods = _modules_after("import convlens.report, convlens.io.manifest, convlens.commands.report")
    assert "torch" not in mods, (
        "importing convlens.report pulled in torch; if it comes from convlens/__init__.py, make its "
        "re-exports lazy (module __getattr__, PEP 562)"
    )


def test_report_package_itself_is_torch_free() -> None:
    # Load convlens.report with an empty stand-in for the top-level package, so that this checks
    # only the report layer's own imports (manifest, report.*), whatever convlens/__init__ does.
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('convlens'); pkg.__path__ = [{str(SRC / 'convlens')!r}]; pkg.__version__ = 'x'\n"
        "sys.modules['convlens'] = pkg\n"
        "import convlens.report, convlens.report.html, convlens.report.svg, convlens.io.manifest\n"
    )
    mods = _modules_after(code)
    assert "convlens.report.html" in mods
    assert not {"torch", "numpy", "matplotlib", "flask"} & mods


def _import_graph() -> tuple[dict[str, set[str]], object]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("convlens_tools_imports", SRC.parent / "tools" / "imports.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.graph(), mod


def test_import_graph_points_down_without_circles() -> None:
    g, tool = _import_graph()
    assert len(g) > 100 and sum(len(v) for v in g.values()) > 200   # it read the package
    assert tool.circles(g) == []  # type: ignore[attr-defined]
    # the one arrow up: the demo runs each documented command through the CLI's dispatch
    assert tool.arrows_up(g) == [("convlens.demo", "convlens.cli")]  # type: ignore[attr-defined]
    unranked = {tool.package_of(m) for m in g if tool.rank(m) < 0} - {"convlens"}  # type: ignore[attr-defined]
    assert unranked == set(), f"packages missing from tools/imports.py ORDER: {sorted(unranked)}"
    assert "convlens.training.config" in g["convlens.training.recipe"]
