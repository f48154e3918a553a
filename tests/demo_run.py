"""The session's demo runs (each built once: the quick demo for the end-to-end test, the tiny plan for the
explorer's and the report's pages) and a small PNG."""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from convlens.cli import main
from convlens.demo import PLANS, make_synthetic_dataset, run_demo
from convlens.images.data import FASHION_MNIST_DIR


def _build(base: Path, how: str) -> Path:
    """Build a demo run under ``base/run`` once per session; ``steps.json`` records how it went."""
    run = base / "run"
    if not (base / "steps.json").exists():
        t0, cpu0 = time.perf_counter(), time.process_time()
        out = io.StringIO()
        if how == "demo --quick":
            with contextlib.redirect_stdout(out):
                code = main(["demo", "--quick", "--out", str(run)])
        else:
            data = make_synthetic_dataset(base / "data", classes=3, per_class=12, size=36)
            with contextlib.redirect_stdout(out):
                code = 0 if run_demo(run, plan=PLANS["tiny"], dataset=str(data), echo=print).report else 1
        info = {"how": how, "code": code, "seconds": round(time.perf_counter() - t0, 1),
                "cpu_seconds": round(time.process_time() - cpu0, 1), "stdout": out.getvalue()}
        (base / "steps.json").write_text(json.dumps(info, indent=1))
    return run


def shared_run_dir(factory: pytest.TempPathFactory) -> Path:
    """The session's ``convlens demo --quick`` run on Fashion-MNIST (~1 min of CPU; the tiny plan where
    Debian's copy is missing). Only the end-to-end demo test (marked slow) uses it."""
    how = "demo --quick" if FASHION_MNIST_DIR.exists() else "tiny plan"
    return _build(factory.getbasetemp() / "convlens-demo-run", how)


def pages_run_dir(factory: pytest.TempPathFactory) -> Path:
    """A small real run for the explorer's and the report's pages, built once per session: the demo's
    tiny plan (a 32 px ZFNet on 36 synthetic images, every step the demo runs) in ~10 s of CPU. Its
    files are written by the real commands, so the pages read exactly what users' runs hold."""
    return _build(factory.getbasetemp() / "convlens-pages-run", "tiny plan")


def run_info(run: Path) -> dict:
    return json.loads((run.parent / "steps.json").read_text())


def png_bytes(size: tuple[int, int] = (40, 48), color: tuple[int, int, int] = (180, 40, 90)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    img.paste((20, 200, 60), (8, 8, 24, 30))
    img.save(buf, format="PNG")
    return buf.getvalue()
