"""``convlens demo``: the quick end-to-end run on Fashion-MNIST, and how a failing step is handled."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from convlens.demo import Step, _argv, _run_step, _subcommands, _Tee, make_synthetic_dataset
from convlens.images.data import FASHION_MNIST_DIR
from demo_run import run_info, shared_run_dir


# The one end-to-end run of the demo (~1 min of CPU): slow, run by 'make test' after the default suite.
# On a heavily shared machine its wall time can pass the suite's 300 s per-test default.
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(),
                    reason=f"{FASHION_MNIST_DIR} missing (apt-get install dataset-fashion-mnist)")
def test_demo_quick_end_to_end(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = shared_run_dir(tmp_path_factory)  # 'convlens demo --quick', run once per session
    info = run_info(run)
    index = run / "report" / "index.html"
    assert info["how"] == "demo --quick" and info["code"] == 0
    assert f"[demo] report: {index.resolve()}" in info["stdout"]
    assert not re.search(r"^\[demo\] .* failed ", info["stdout"], re.M), info["stdout"]
    html = index.read_text()
    for section in ("summary", "training", "mine", "evolution", "invariance", "diagnose", "occlusion",
                    "ablate", "transfer", "project"):
        assert f'<section id="{section}"' in html, section
    # CPU time, not wall time: on a shared machine the wall time says more about the neighbours.
    assert info["cpu_seconds"] < 240, f"demo --quick took {info['cpu_seconds']} s of CPU ({info['seconds']} s wall)"


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
    from convlens.images.data import open_raw

    root = make_synthetic_dataset(tmp_path / "syn", classes=2, per_class=3, size=20)
    raw = open_raw(str(root), "test", size=20)
    assert len(raw) == 6 and raw[0][0].shape == (3, 20, 20)
