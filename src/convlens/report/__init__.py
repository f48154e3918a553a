"""The static HTML report of a run directory (everything the run holds, in the paper's order).

``build_report(run_dir)`` writes ``RUN/report/index.html`` plus ``RUN/report/assets/`` (copies of
the PNGs it shows), so the folder opens from disk with no server and no network. It reads only
JSON, CSV and PNG files through :mod:`convlens.io.manifest` and never imports torch. Feature
visualizations appear from ``convlens featvis --out RUN/...`` results and from the explorer's cache
(``RUN/<mine>/featvis``, :func:`convlens.io.featvis_files.cache_results`).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from convlens.io.featvis_files import cache_results
from convlens.io.manifest import load_run
from convlens.report.html import render_page

__all__ = ["build_report"]


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` and return the path of its ``index.html``.

    Args:
        run_dir: a run directory (``config.json``, ``metrics.csv``, ``<analysis>/result.json`` ...).
        out: the report folder (default ``run_dir/report``).

    Raises:
        NotADirectoryError: ``run_dir`` does not exist.

    Example:
        >>> index = build_report("runs/demo")
        >>> index.name
        'index.html'
    """
    from convlens import __version__

    run = load_run(run_dir)
    run = dataclasses.replace(run, results=(*run.results, *cache_results(run.root)))
    folder = Path(out) if out is not None else run.root / "report"
    folder.mkdir(parents=True, exist_ok=True)
    page = render_page(run, folder.resolve(), version=__version__)
    index = folder / "index.html"
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)
    return index
