"""``convlens demo``: the quick end-to-end run on Fashion-MNIST, and how a failing step is handled."""
from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import pytest

from convlens.data import FASHION_MNIST_DIR
from convlens.demo import Step, _argv, _run_step, _subcommands, _Tee, make_synthetic_dataset


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason=f"{FASHION_MNIST_DIR} missing (apt-get install dataset-fashion-mnist)")
def test_demo_quick_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from convlens.cli import main

    t0 = time.perf_counter()
    assert main(["demo", "--quick", "--strict", "--out", str(tmp_path / "demo")]) == 0
    seconds = time.perf_counter() - t0
    out = capsys.readouterr().out
    index = tmp_path / "demo" / "report" / "index.html"
    assert f"[demo] report: {index.resolve()}" in out
    assert " failed " not in out, out
    html = index.read_text()
    for section in ("training", "summary", "mine", "evolution", "invariance", "diagnose", "occlusion",
                    "ablate", "transfer", "project"):
        assert f'<section id="{section}"' in html, section
    assert seconds < 240, f"demo --quick took {seconds:.0f} s"


def test_failing_or_missing_step_is_logged_and_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    notes: list[str] = []
    cmds = _subcommands()
    assert {"report", "serve", "demo"} <= set(cmds)
    argv = _argv("report", ["RUN"], {"--out": "X", "--no-such-flag": 3, "--skip-me": None}, cmds["report"], notes)
    assert argv == ["report", "RUN", "--out", "X"] and notes == ["'report' has no --no-such-flag; left out"]
    lines: list[str] = []
    with contextlib.redirect_stderr(_Tee(io.StringIO())):
        step = Step("bad", ["report", "/nonexistent/run"])
        _run_step(step, lines.append)
        assert step.status == "failed" and "does not exist" in step.message and lines[-1].startswith("[demo] bad")
        step = Step("unknown flag", ["report", "RUN", "--bogus"])
        _run_step(step, lines.append)
        assert step.status == "failed" and "--bogus" in step.message


def test_synthetic_dataset(tmp_path: Path) -> None:
    from convlens.data import open_raw

    root = make_synthetic_dataset(tmp_path / "syn", classes=2, per_class=3, size=20)
    raw = open_raw(str(root), "test", size=20)
    assert len(raw) == 6 and raw[0][0].shape == (3, 20, 20)
