"""Reading a run directory without torch: its config, training curve and analysis results.

A run directory (``convlens train --out RUN``, see ``docs/DESIGN.md``) holds ``config.json``,
``metrics.csv`` (one row per epoch), ``checkpoints/`` and one folder per analysis, each with a
``result.json`` (schema ``convlens.result/1``) written by :func:`convlens.io.artifacts.write_result`.
This module turns those files into plain frozen dataclasses for the static report and the
explorer. It imports only the standard library, so ``convlens.report`` never pulls in torch.

Nothing here raises on a malformed file: problems become human-readable ``warnings`` on the
:class:`Run`, so that a report can show them instead of crashing.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KIND_ORDER",
    "SCHEMA",
    "Figure",
    "Result",
    "Run",
    "Table",
    "inside",
    "load_run",
    "read_metrics",
    "read_result",
]

SCHEMA = "convlens.result/1"
# The paper's order (Sec. 2-5): architecture, Fig. 2, 4, 5, 6, 7, Table 1, Tables 2-3, 4-7, projections;
# then what goes beyond the paper (feature visualization by optimization).
KIND_ORDER = (
    "summary", "mine", "evolution", "invariance", "diagnose", "occlusion", "correspond",
    "ablate", "transfer", "project", "featvis",
)


@dataclass(frozen=True)
class Figure:
    """One image of a result; ``path`` is absolute (resolved inside the result's folder)."""

    path: Path
    caption: str = ""
    group: str = ""


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Result:
    """A parsed ``result.json``. ``dir`` is the folder that holds it; ``name`` its path in the run."""

    kind: str
    title: str
    summary: str
    params: dict[str, Any]
    figures: tuple[Figure, ...]
    tables: tuple[Table, ...]
    data: dict[str, Any]
    dir: Path
    name: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Run:
    root: Path
    config: dict[str, Any] | None
    metrics: tuple[dict[str, float], ...]
    results: tuple[Result, ...]
    checkpoints: tuple[Path, ...]
    warnings: tuple[str, ...] = field(default=())

    def of_kind(self, kind: str) -> list[Result]:
        return [r for r in self.results if r.kind == kind]

    def first(self, kind: str) -> Result | None:
        found = self.of_kind(kind)
        return found[0] if found else None


def inside(root: Path, rel: str | Path) -> Path | None:
    """``root / rel`` resolved, or None if it escapes ``root`` (``..``, absolute paths, symlinks out)."""
    root = Path(root).resolve()
    try:
        target = (root / rel).resolve()
    except (OSError, ValueError):
        return None
    return target if target.is_relative_to(root) else None


def _cell(v: Any) -> str:
    if v is None:  # JSON null: write_json stores NaN as null
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _table(raw: Any) -> Table:
    if not isinstance(raw, dict) or not isinstance(raw.get("rows", []), list):
        raise ValueError("a table must be an object with 'title', 'columns' and 'rows' (a list)")
    rows = tuple(tuple(_cell(c) for c in (r if isinstance(r, list) else [r])) for r in raw.get("rows", []))
    return Table(str(raw.get("title", "")), tuple(str(c) for c in raw.get("columns", [])), rows)


def _figures(raw: Any, folder: Path, name: str, warnings: list[str]) -> tuple[Figure, ...]:
    out = []
    for f in raw if isinstance(raw, list) else []:
        if not isinstance(f, dict) or not isinstance(f.get("path"), str):
            warnings.append(f"{name}: figure entry without a 'path' string skipped: {str(f)[:80]}")
            continue
        path = inside(folder, f["path"])
        if path is None:
            warnings.append(f"{name}: figure path {f['path']!r} points outside its folder; skipped")
        elif not path.is_file():
            warnings.append(f"{name}: figure {f['path']!r} is missing")
        else:
            out.append(Figure(path, str(f.get("caption", "")), str(f.get("group", ""))))
    return tuple(out)


def read_result(path: Path, root: Path | None = None) -> Result:
    """Parse one ``result.json``.

    Args:
        path: the ``result.json`` file.
        root: the run directory, used to name the result (default: the file's grandparent).

    Raises:
        ValueError: the file is not valid JSON or lacks ``kind`` (message names the file).
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent.parent
    name = path.parent.relative_to(root).as_posix() if path.parent.is_relative_to(root) else str(path.parent)
    name = "" if name == "." else name
    where = name or "."
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}/result.json is not readable JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
        raise ValueError(f"{where}/result.json has no 'kind' string; expected schema {SCHEMA}")
    warnings: list[str] = []
    if raw.get("schema", SCHEMA) != SCHEMA:
        warnings.append(f"{where}: schema {raw.get('schema')!r}, expected {SCHEMA!r}; shown as far as possible")
    tables = []
    for t in raw.get("tables") or []:
        try:
            tables.append(_table(t))
        except ValueError as exc:
            warnings.append(f"{where}: {exc}")
    figures = _figures(raw.get("figures"), path.parent, where, warnings)
    params, data = raw.get("params"), raw.get("data")
    return Result(
        kind=raw["kind"], title=str(raw.get("title") or raw["kind"]), summary=str(raw.get("summary") or ""),
        params=params if isinstance(params, dict) else {}, figures=figures, tables=tuple(tables),
        data=data if isinstance(data, dict) else {}, dir=path.parent, name=name, warnings=tuple(warnings),
    )


def read_metrics(path: Path) -> list[dict[str, float]]:
    """``metrics.csv`` as one dict per epoch (numbers as floats; blanks and junk as NaN)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            parsed = {}
            for key, value in row.items():
                if key is None:
                    continue
                try:
                    parsed[key.strip()] = float(value) if value not in (None, "") else math.nan
                except ValueError:
                    parsed[key.strip()] = math.nan
            rows.append(parsed)
    return rows


def _order(r: Result) -> tuple[int, str]:
    if r.kind == "train":
        return (-1, r.name)
    return (KIND_ORDER.index(r.kind) if r.kind in KIND_ORDER else len(KIND_ORDER), r.name)


def _result_files(root: Path) -> list[Path]:
    # RUN/result.json (training), RUN/<kind>/result.json, and one level deeper
    # (RUN/occlusion/<image>/result.json, RUN/ablate/<variant>/result.json); not the report.
    found = list(root.glob("*/result.json")) + list(root.glob("*/*/result.json"))
    found = [p for p in found if p.parent.relative_to(root).parts[0] not in ("report", "checkpoints")]
    return ([root / "result.json"] if (root / "result.json").is_file() else []) + sorted(found)


def load_run(run_dir: str | Path) -> Run:
    """Read everything a run directory holds (no torch).

    Raises:
        NotADirectoryError: ``run_dir`` is not a directory.

    Example:
        >>> run = load_run("runs/demo")
        >>> [r.kind for r in run.results]
        ['mine', 'evolution', 'occlusion']
    """
    root = Path(run_dir).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"run directory {str(run_dir)!r} does not exist; run 'convlens train --out RUN' first")
    warnings: list[str] = []
    config = None
    if (root / "config.json").is_file():
        try:
            config = json.loads((root / "config.json").read_text(encoding="utf-8"))
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
        except (ValueError, OSError) as exc:
            warnings.append(f"config.json is malformed ({exc}); architecture summary skipped")
            config = None
    metrics: list[dict[str, float]] = []
    if (root / "metrics.csv").is_file():
        try:
            metrics = read_metrics(root / "metrics.csv")
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            warnings.append(f"metrics.csv is malformed ({exc}); training curves skipped")
    results = []
    for path in _result_files(root):
        try:
            results.append(read_result(path, root))
        except ValueError as exc:
            warnings.append(str(exc))
    checkpoints = tuple(sorted((root / "checkpoints").glob("*.pt"))) if (root / "checkpoints").is_dir() else ()
    return Run(root, config, tuple(metrics), tuple(sorted(results, key=_order)), checkpoints, tuple(warnings))
