"""Run-directory bookkeeping for :mod:`convlens.training.recipe`: metrics.csv, result.json, RNG states, and
holding back Ctrl-C while a checkpoint is written."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import os
import random
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.io.artifacts import write_result
from convlens.io.lock import LOCK_NAME, OutputLocked, lock_output, remove_stale_temporaries

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "METRICS_COLUMNS", "OutputLocked", "lock_output", "remove_stale_temporaries"]

METRICS_COLUMNS = ("epoch", "train_loss", "train_top1_err", "train_top5_err", "val_loss", "val_top1_err",
                   "val_top5_err", "lr")
"""The columns of ``metrics.csv``: deterministic numbers only (wall-clock seconds per epoch are in
``result.json``), so that the same command gives the same file, killed and resumed or not."""
RESULT_COLUMNS = (*METRICS_COLUMNS, "seconds")


@contextlib.contextmanager
def defer_sigint() -> Iterator[None]:
    """Hold back Ctrl-C until the block (a checkpoint write) finishes, then raise it."""
    if sys.platform == "win32" or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    hit: list[int] = []
    try:
        signal.signal(signal.SIGINT, lambda *_: hit.append(1))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hit:
        raise KeyboardInterrupt


def rng_state() -> dict[str, Any]:
    np_state: tuple[Any, ...] = np.random.get_state()  # type: ignore[assignment]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    """metrics.csv, one row per epoch (rewritten whole, atomically, so a resume never duplicates rows)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRICS_COLUMNS)
        for r in rows:
            writer.writerow([int(r["epoch"])] + [_fmt(r[c]) for c in METRICS_COLUMNS[1:]])
    os.replace(tmp, path)


def _fmt(v: float) -> str:
    return "" if v != v else f"{v:.6g}"  # NaN (no validation set) -> empty cell


def existing_run(out: Path) -> str:
    """What of a training run ``out`` holds (checkpoints, metrics rows), or "" when there is nothing
    that a new run would overwrite (a folder with only ``config.json``/``mean.pt`` from a run killed
    before its first checkpoint is not a run: starting over loses nothing)."""
    found = []
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.pt")) if (out / "checkpoints").is_dir() else []
    if ckpts:
        found.append("checkpoints/" + (", ".join(ckpts) if len(ckpts) <= 3 else f"{ckpts[0]} ... {ckpts[-1]}"))
    metrics = out / "metrics.csv"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append("metrics.csv")
    return " and ".join(found)


def find_resume_checkpoint(ckpt_dir: Path, map_location: str | torch.device = "cpu"
                           ) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run that loads: ``last.pt`` or the highest ``epoch_NNN.pt``,
    whichever holds the later epoch (a kill while ``last.pt`` is written leaves ``epoch_NNN.pt``);
    unreadable files are logged and passed over. None when there is none."""
    from convlens.nets.checkpoint import load_checkpoint

    if not ckpt_dir.is_dir():
        return None
    numbered = sorted((p for p in ckpt_dir.glob("epoch_*.pt") if p.stem[6:].isdigit()),
                      key=lambda p: int(p.stem[6:]), reverse=True)
    best: tuple[Path, dict[str, Any]] | None = None
    for path in [ckpt_dir / "last.pt", *numbered]:
        if not path.is_file():
            continue
        try:
            state = load_checkpoint(path, map_location=map_location)
            if "history" not in state or "optimizer" not in state or state.get("epoch") is None:
                raise ValueError("not a training checkpoint (no optimizer state or history)")
        except (ValueError, OSError, RuntimeError, EOFError) as exc:
            log.warning("resume: passing over %s (%s)", path, exc)
            continue
        if best is None or int(state["epoch"]) > int(best[1]["epoch"]):
            best = (path, state)
        if path.name != "last.pt":
            break  # the highest numbered file that loads; older ones cannot be newer
    return best


def write_train_result(out: Path, cfg: Any, rows: list[dict[str, float]], argv: list[str]) -> None:
    last = rows[-1] if rows else {}
    table = {"title": "Per-epoch metrics", "columns": list(RESULT_COLUMNS),
             "rows": [[int(r["epoch"])] + [_fmt(r.get(c, float("nan"))) for c in RESULT_COLUMNS[1:]] for r in rows]}
    summary = (f"{cfg.arch} on {cfg.dataset}, {len(rows)} epochs: val top-1 error "
               f"{last.get('val_top1_err', float('nan')):.4f}, top-5 {last.get('val_top5_err', float('nan')):.4f}")
    write_result(out, "train", title="Training (Sec. 3)", summary=summary, params=dataclasses.asdict(cfg),
                 figures=[], tables=[table], data={"final": last, "history": rows, "argv": argv})
