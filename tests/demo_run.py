"""The session's shared demo run (built once, read by the explorer, browser and demo tests) and a small PNG."""
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


def shared_run_dir(factory: pytest.TempPathFactory) -> Path:
    """Build the session's demo run once (the test files share it); ``steps.json`` records how it went."""
    base = factory.getbasetemp() / "convlens-demo-run"
    run = base / "run"
    if not (base / "steps.json").exists():
        t0, cpu0 = time.perf_counter(), time.process_time()
        out = io.StringIO()
        if FASHION_MNIST_DIR.exists():
            with contextlib.redirect_stdout(out):
                code = main(["demo", "--quick", "--out", str(run)])
            how = "demo --quick"
        else:
            data = make_synthetic_dataset(base / "data", classes=3, per_class=12, size=36)
            code = 0 if run_demo(run, plan=PLANS["tiny"], dataset=str(data), echo=print).report else 1
            how = "tiny plan"
        info = {"how": how, "code": code, "seconds": round(time.perf_counter() - t0, 1),
                "cpu_seconds": round(time.process_time() - cpu0, 1), "stdout": out.getvalue()}
        (base / "steps.json").write_text(json.dumps(info, indent=1))
    return run


def run_info(run: Path) -> dict:
    return json.loads((run.parent / "steps.json").read_text())


def png_bytes(size: tuple[int, int] = (40, 48), color: tuple[int, int, int] = (180, 40, 90)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    img.paste((20, 200, 60), (8, 8, 24, 30))
    img.save(buf, format="PNG")
    return buf.getvalue()
